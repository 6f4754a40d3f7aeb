"""The course site (mkdocs.yml, docs/hooks/): it builds in strict mode, its HTML holds what a
reader needs, and the build fails on a broken link or a failing tutorial.

Needs the docs extra (`pip install ".[docs]"`); skipped without it. The browser check runs where
Chromium is installed (`apt-get install chromium`) and is skipped elsewhere.
"""
from __future__ import annotations

import html.parser
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "jupytext", "nbclient", "nbformat", "ipykernel",
               "mathjax"):
    pytest.importorskip(module, reason='the docs extra is not installed (pip install ".[docs]")')
import nbformat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


def build(project: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"),
                           "-d", str(out)], cwd=project, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = build(ROOT, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


class Page(html.parser.HTMLParser):
    """The links, ids, images and text (outside code) of one HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.links, self.ids, self.images, self.prose, self._code = [], set(), [], [], 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag in ("code", "pre", "script", "style"):
            self._code += 1
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])
        if tag == "img":
            self.images.append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("code", "pre", "script", "style"):
            self._code -= 1

    def handle_data(self, data):
        if not self._code:
            self.prose.append(data)


def pages(site: Path) -> dict[str, Page]:
    return {p.relative_to(site).as_posix(): Page(p.read_text()) for p in site.rglob("*.html")}


def test_every_tutorial_page_shows_its_output_figures_and_notebook(site):
    assert TUTORIALS
    for script in TUTORIALS:
        page_path = site / "tutorials" / f"{script.stem}.html"
        text = page_path.read_text()
        page = Page(text)
        assert 'class="filename">output<' in text, f"{script.name}: no printed output on its page"
        if "The tutorial ends here in this build" not in text:   # 06 without a GPU stops at sys.exit(0)
            figures = [src for src in page.images if f"{script.stem}_files/" in src]
            assert figures, f"{script.name}: no figure on its page"
            for src in figures:
                assert (page_path.parent / src).stat().st_size > 1000, src
        notebook = json.loads((site / "tutorials" / f"{script.stem}.ipynb").read_text())
        nbformat.validate(nbformat.from_dict(notebook))
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert len(code) == script.read_text().count("\n# %%\n") + script.read_text().startswith("# %%\n")
        assert all(not c["outputs"] for c in code), "the download is the script, not a run of it"
        assert f"{script.stem}.ipynb" in page.links


def test_course_pages_are_present(site):
    for page in ("index.html", "spec.html", "oracle.html", "export.html", "assignments/index.html",
                 "api/reference.html", "api/ops.html", "api/pipeline.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "reference.html").read_text()
    for module, name in (("obs", "prune_columns"), ("heads", "prune_heads"), ("channels", "prune_channels"),
                         ("ipr", "ipr_ratios"), ("hessian", "hessian"), ("downdate", "prune_heads")):
        assert f'id="slimgpt.reference.{module}.{name}"' in api, name
    assert 'id="slimgpt.ops.prune_heads"' in (site / "api" / "ops.html").read_text()
    for name in ("prune_model", "PruneSettings"):
        assert f'id="slimgpt.pipeline.{name}"' in (site / "api" / "pipeline.html").read_text(), name
    if (ROOT / "docs" / "learn.md").is_file():
        assert (site / "learn.html").is_file()
    assert not [p for p in site.rglob("*") if "solution" in p.relative_to(site).as_posix().lower()]


def test_math_is_converted_and_served_from_the_site(site):
    all_pages = pages(site)
    for name, page in all_pages.items():
        text = "".join(page.prose)
        assert "$$" not in text, f"{name}: raw $$ outside code"
    math = (site / "site.html").read_text()
    assert '<div class="arithmatex">\\[' in math and '<span class="arithmatex">\\(' in math
    assert (site / "assets" / "mathjax" / "tex-svg-full.js").stat().st_size > 1_000_000
    for name, page in all_pages.items():   # nothing fetched from elsewhere at view time
        external = [u for u in page.links if re.match(r"^https?://", u) and re.search(r"\.(js|css|woff2?)(\?|$)", u)]
        assert not external, (name, external)


def test_every_internal_link_resolves(site):
    all_pages = pages(site)
    checked = 0
    for name, page in all_pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "data:")):
                continue
            path = unquote(parts.path)
            if path.startswith("/"):   # only 404.html, which may be served from any folder
                target = path.lstrip("/")
            else:
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), path)) if path else name
            assert (site / target).exists(), f"{name}: {link} -> {target} does not exist"
            if parts.fragment and target.endswith(".html"):
                assert parts.fragment in all_pages[target].ids, f"{name}: {link}: no #{parts.fragment}"
            checked += 1
    assert checked > 500


TINY_TUTORIAL = '''# %% [markdown]
# # Tutorial 1: tiny
# A tiny tutorial for the build test.

# %%
import matplotlib.pyplot as plt
print("hello from the tiny tutorial")
fig, ax = plt.subplots()
ax.plot([0, 1], [1, 0])
fig.savefig("tiny.png")
'''


@pytest.fixture
def small_copy(tmp_path) -> Path:
    """mkdocs.yml and the hooks of this repository, with two pages and one tiny tutorial."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs" / "hooks", tmp_path / "docs" / "hooks")
    shutil.copytree(ROOT / "docs" / "javascripts", tmp_path / "docs" / "javascripts")
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [the spec](spec.md) and $x^2$.\n")
    (tmp_path / "docs" / "spec.md").write_text("# Spec\n\nBack [home](index.md).\n")
    (tmp_path / "tutorials").mkdir()
    (tmp_path / "tutorials" / "01_tiny.py").write_text(TINY_TUTORIAL)
    return tmp_path


def test_repository_links_point_into_the_site(small_copy, tmp_path_factory):
    """Links written for the repository (GitHub) lead to the site's page or a copy of the file."""
    (small_copy / "README.md").write_text("# readme\n")
    (small_copy / "tutorials" / "README.md").write_text("# tutorials\n")
    (small_copy / "docs" / "tutorials.md").write_text("# Tutorials\n")
    (small_copy / "tutorials" / "assignments").mkdir()
    (small_copy / "tutorials" / "assignments" / "README.md").write_text("# Assignment\n\n[skeleton](student.py)\n")
    (small_copy / "tutorials" / "assignments" / "student.py").write_text("def f():\n    raise NotImplementedError\n")
    (small_copy / "tutorials" / "assignments" / "solution.py").write_text("def f():\n    return 1\n")
    (small_copy / "docs" / "spec.md").write_text(
        "# Spec\n\n## Part two\nText [paper][derived].\n"
        "- [tutorial](../tutorials/01_tiny.py)\n- [folder](../tutorials/)\n- [readme](../README.md)\n"
        "- [assignment](../tutorials/assignments/README.md#assignment)\n- [home](index.md)\n"
        "- [part two](#part-two)\n")
    out = tmp_path_factory.mktemp("out")
    proc = build(small_copy, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    links = Page((out / "spec.html").read_text()).links
    for href in ("tutorials/01_tiny.html", "tutorials.html", "index.html", "assignments/index.html#assignment",
                 "#part-two"):
        assert href in links, href
    assert "../source/tutorials/assignments/student.py" in Page((out / "assignments" / "index.html").read_text()).links
    assert (out / "source" / "tutorials" / "assignments" / "student.py").is_file()
    assert not list(out.rglob("solution*"))
    assert "[paper][derived]" in (out / "spec.html").read_text()
    html_tutorial = (out / "tutorials" / "01_tiny.html").read_text()
    assert "hello from the tiny tutorial" in html_tutorial and "01_tiny_files/01_tiny_1.png" in html_tutorial


def test_broken_link_fails_the_build(small_copy, tmp_path_factory):
    (small_copy / "docs" / "spec.md").write_text("# Spec\n\nSee [the missing page](missing.md).\n")
    proc = build(small_copy, tmp_path_factory.mktemp("out"))
    assert proc.returncode != 0
    assert "missing.md" in proc.stderr and "not found" in proc.stderr


def test_failing_tutorial_fails_the_build(small_copy, tmp_path_factory):
    (small_copy / "tutorials" / "01_tiny.py").write_text(
        TINY_TUTORIAL + '\n# %%\nraise SystemExit("check failed: the lesson did not show")\n')
    proc = build(small_copy, tmp_path_factory.mktemp("out"))
    assert proc.returncode != 0
    assert "tutorial failed: 01_tiny.py" in proc.stderr and "check failed" in proc.stderr


@pytest.mark.skipif(not any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                    reason="no Chromium (apt-get install chromium)")
def test_site_in_a_real_browser(site, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "browser_check.py"), "--site", str(site),
                           "--shots", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(tmp_path.glob("*.png"))) == 4
