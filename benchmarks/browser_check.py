"""Open the built site in headless Chromium as a reader would, screenshot it, and fail on problems.

    mkdocs build --strict && python benchmarks/browser_check.py [--site site] [--shots docs/img]

Serves SITE on 127.0.0.1 and opens the home page, the spec, one tutorial and docs/site.md's page
(the page that shows an equation) in Chromium from the distribution's packages
(`apt-get install chromium`), driven over the DevTools protocol on a pipe (no extra Python
package). Fails, listing every problem, when a page:
- throws a JavaScript error or logs an error to the console;
- has a request that fails (a missing image, script or stylesheet) or an image that did not load;
- asks for anything not on 127.0.0.1 (the site must work with no network);
- leaves math unrendered (an .arithmatex element MathJax did not typeset, or `$` delimiters left
  in the text outside code).
Writes one screenshot per page (1280 x 900) to SHOTS. Exit status 0 if all is well, 1 if not,
2 when Chromium is not installed.
"""
from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGES = {  # screenshot name -> (page, what to scroll into view before the screenshot)
    "site_home.png": ("index.html", None),
    "site_spec.png": ("spec.html", None),
    "site_tutorial.png": ("tutorials/04_incremental_pruning_ratio.html", "article img"),
    "site_math.png": ("site.html", "article .arithmatex"),
}
WIDTH, HEIGHT = 1280, 900
TIMEOUT_S = 60

# Evaluated in each page once it has loaded and MathJax (where present) has finished.
INSPECT = r"""(async () => {
  if (window.MathJax && MathJax.startup) await MathJax.startup.promise;
  const math = [...document.querySelectorAll('.arithmatex')];
  // A block's own text, typeset math as "☃" and code left out: "$☃$" or "$x$" is a
  // dollar delimiter MathJax never saw.
  const prose = e => [...e.childNodes].map(n => n.nodeType === Node.TEXT_NODE ? n.textContent
    : n.nodeName === 'MJX-CONTAINER' ? '☃' : ['CODE', 'PRE'].includes(n.nodeName) ? ' '
    : n.nodeType === Node.ELEMENT_NODE ? prose(n) : '').join('');
  const blocks = [...document.querySelectorAll('article p, article li, article td, article h1, article h2, article h3')];
  return {
    images: document.images.length,
    broken_images: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    math: math.length,
    untypeset_math: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
    raw_dollars: blocks.map(prose).filter(t => /\$\$|\$☃|☃\$|\$[^\s$][^$]*[^\s$]\$/.test(t)).map(t => t.slice(0, 80)),
  };
})()"""


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Browser:
    """Chromium with the DevTools protocol on fds 3 (commands in) and 4 (replies and events out)."""

    def __init__(self, executable: str):
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def wire_fds():
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            self.events.append(self._receive())

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        os.close(self._write)
        os.close(self._read)


def check_page(browser: Browser, url: str, shot: Path, scroll_to: str | None) -> list[str]:
    """Load url in a fresh tab, save its screenshot to shot, return the problems found."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session)
    browser.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=HEIGHT,
                 deviceScaleFactor=1, mobile=False)
    browser.events.clear()
    browser.send("Page.navigate", session, url=url)
    browser.wait_for("Page.loadEventFired")
    found = browser.send("Runtime.evaluate", session, expression=INSPECT, awaitPromise=True,
                         returnByValue=True)["result"]["value"]
    if scroll_to:
        browser.send("Runtime.evaluate", session, expression=f"document.querySelector({scroll_to!r})"
                     ".scrollIntoView({block: 'center'})")
        time.sleep(1.0)   # the theme's header fades its title in after a scroll
    shot.write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", session, format="png")["data"]))
    browser.send("Target.closeTarget", targetId=target)

    problems = [f"image did not load: {src}" for src in found["broken_images"]]
    problems += [f"math left unrendered: {text!r}" for text in found["untypeset_math"]]
    problems += [f"math delimiters left in the text: {text!r}" for text in found["raw_dollars"]]
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append(f"JavaScript error: {params['exceptionDetails'].get('exception', {}).get('description') or params['exceptionDetails']['text']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            problems.append(f"console error: {[a.get('value', a.get('description')) for a in params['args']]}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            problems.append(f"browser error: {params['entry']['text']} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"request failed: {params['errorText']}")
        elif method == "Network.requestWillBeSent":
            request_url = params["request"]["url"]
            if not request_url.startswith(("http://127.0.0.1", "data:", "blob:", "about:")):
                problems.append(f"fetched from outside the site: {request_url}")
    print(f"  {url}: {found['images']} images, {found['math']} equations, {len(problems)} problems")
    return problems


def check_site(site: Path, shots: Path, executable: str) -> list[str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shots.mkdir(parents=True, exist_ok=True)
    browser = Browser(executable)
    problems = []
    try:
        for name, (page, scroll_to) in PAGES.items():
            url = f"http://127.0.0.1:{server.server_port}/{page}"
            problems += [f"{page}: {p}" for p in check_page(browser, url, shots / name, scroll_to)]
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
    return problems


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--site", type=Path, default=root / "site", help="the built site (default: site/)")
    p.add_argument("--shots", type=Path, default=root / "docs" / "img", help="screenshot folder (default: docs/img/)")
    args = p.parse_args(argv)
    executable = find_chromium()
    if executable is None:
        print("browser_check: Chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    if not (args.site / "index.html").is_file():
        print(f"browser_check: no built site in {args.site} (run: mkdocs build --strict)", file=sys.stderr)
        return 2
    problems = check_site(args.site, args.shots, executable)
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"{len(PAGES)} pages, {len(problems)} problems; screenshots in {args.shots}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
