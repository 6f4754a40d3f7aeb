"""MkDocs hook: the course site from the repository as it is (docs/site.md explains the choices).

- every `tutorials/NN_*.py` is executed in fast mode and becomes a page with its output and
  figures, plus its notebook for download (made here, never committed);
- the assignments' Markdown pages (tutorials/assignments/*.md) become pages; nothing with
  "solution" in its path is published;
- MathJax is copied from the installed `django-static-mathjax` package: no CDN at view time;
- the navigation is built from the pages present, so a page added or removed elsewhere in the
  repository neither breaks the build nor goes missing;
- relative links are resolved as in the repository (where the Markdown files live), then pointed
  at the site's page for that file (a folder: its README.md; README.md files without a page: see
  ALIASES), or at a plain copy of the file for sources such as `tutorials/assignments/student.py`;
  a link to nothing stays broken and fails `--strict`.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import posixpath
import re
import sys
import time
from pathlib import Path

import jupytext
import mathjax
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebooks  # noqa: E402  (beside this file; MkDocs loads hooks by path, not as a package)

MATHJAX = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg-full.js"
PUBLISHED_SOURCES = {".py", ".toml", ".txt", ".json", ".cpp", ".h", ".cu", ".sh", ".yml", ".yaml", ".cfg"}
LINK = re.compile(r"(\]\()([^)\s]+)(\s+\"[^\"]*\")?(\))")   # [text](target "title")
FENCE = re.compile(r"^(```|~~~)", re.M)
LIST_ITEM = re.compile(r"^ {0,3}([-*+]|\d+\.) ")
CODE_SPAN = re.compile(r"(`+[^`]*`+)")
TAG_PAIR = re.compile(r"\[([^\]\n]+)\]\[([^\]\n]+)\]")   # [paper][derived]

# Section order in the navigation; a docs/ page not named here goes under "More".
NAV = [
    ("Home", ["index.md"]),
    ("Learning path", ["learn.md"]),
    ("Specification", ["spec.md", "equations.md", "reference.md"]),
    ("Tutorials", ["tutorials.md", "tutorials/*"]),
    ("Assignments", ["assignments/*"]),
    ("Check your implementation", ["oracle.md"]),
    ("Use it", ["pipeline.md", "export.md", "scale.md", "inference.md"]),
    ("Design and results", ["architecture.md", "cpp.md", "benchmark-core.md", "results-smollm2.md", "study.md"]),
    ("API reference", ["api/reference.md", "api/ops.md", "api/pipeline.md", "api/*"]),
    ("About this site", ["site.md"]),
]

# Repository files with no page of their own, and the page that stands for them.
ALIASES = {"README.md": "docs/index.md", "tutorials/README.md": "docs/tutorials.md"}

log = logging.getLogger("mkdocs.hooks.course")
_repo_path: dict[str, str] = {}   # site src_uri -> the repository file it was made from


def on_files(files, config):
    root = Path(config.config_file_path).parent
    docs = Path(config.docs_dir)
    _repo_path.clear()
    for f in files.documentation_pages():
        _repo_path[f.src_uri] = (docs / f.src_uri).relative_to(root).as_posix()
    _add_tutorials(files, config, root)
    for md in sorted((root / "tutorials" / "assignments").rglob("*.md")):
        rel = md.relative_to(root / "tutorials" / "assignments").as_posix()
        if "solution" in rel.lower():
            continue
        uri = "assignments/" + re.sub(r"(^|/)README\.md$", r"\1index.md", rel)
        _add(files, config, uri, md.read_text(), md.relative_to(root).as_posix())
    files.append(File.generated(config, "assets/mathjax/tex-svg-full.js", abs_src_path=str(MATHJAX)))
    config.nav = _nav(files)
    return files


def _add_tutorials(files, config, root: Path) -> None:
    scripts = sorted((root / "tutorials").glob("[0-9][0-9]_*.py"))
    workers = max(1, min(len(scripts), os.cpu_count() or 1))
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:   # each runs in its own kernel process
        executed = dict(zip(scripts, pool.map(_execute, scripts)))
    log.info(f"executed {len(scripts)} tutorials in fast mode, {workers} at a time, in {time.perf_counter() - start:.1f} s")
    for script, nb in executed.items():
        stem, rel = script.stem, script.relative_to(root).as_posix()
        body, figures = notebooks.to_markdown(nb, stem)
        title, _, rest = body.partition("\n")
        note = (f'!!! info "Run it yourself"\n'
                f"    This page was executed when the site was built, in fast mode, on a CPU. "
                f"[Download it as a notebook]({stem}.ipynb) (made from `{rel}`; open it from the "
                f"repository's `tutorials/` folder, where it finds `_tutorial.py`) or run "
                f"`python {rel} --fast`.\n")
        _add(files, config, f"tutorials/{stem}.md", f"{title}\n\n{note}{rest}", rel)
        files.append(File.generated(config, f"tutorials/{stem}.ipynb",
                                    content=jupytext.writes(notebooks.notebook_of(script), fmt="ipynb")))
        for name, png in figures.items():
            files.append(File.generated(config, f"tutorials/{stem}_files/{name}", content=png))


def _execute(script: Path):
    try:
        return notebooks.execute(script)
    except notebooks.TutorialFailed as err:
        raise PluginError(f"tutorial failed: {err}") from None


def _add(files, config, uri: str, content: str, repo_path: str) -> None:
    files.append(File.generated(config, uri, content=content))
    _repo_path[uri] = repo_path


def _nav(files) -> list:
    pages = [f.src_uri for f in files.documentation_pages()]
    placed, nav = set(), []
    for section, patterns in NAV:
        entries = []
        for pattern in patterns:
            matches = [p for p in pages if p == pattern or (pattern.endswith("/*") and p.startswith(pattern[:-1]))]
            entries += sorted(set(matches) - placed, key=lambda p: (not p.endswith("index.md"), p))
            placed.update(matches)
        if entries:
            nav.append({section: entries[0]} if len(entries) == 1 else {section: entries})
    more = sorted(set(pages) - placed)
    if more:
        nav.append({"More": more})
    return nav


def on_page_markdown(markdown, page, config, files):
    """Point each relative link at what it names in the repository (see the module docstring)."""
    here = _repo_path.get(page.file.src_uri)
    if here is None:
        return markdown
    root = Path(config.config_file_path).parent
    site_of = {repo: uri for uri, repo in _repo_path.items()}

    def relink(m):
        target = m.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target):   # URL, anchor on this page, absolute
            return m.group(0)
        path, hash_, anchor = target.partition("#")
        repo = posixpath.normpath(posixpath.join(posixpath.dirname(here), path))
        if (root / repo).is_dir() and (root / repo / "README.md").is_file():
            repo = posixpath.join(repo, "README.md").removeprefix("./")
        repo = ALIASES.get(repo, repo)
        uri = site_of.get(repo) or _publish_source(files, config, root, repo)
        if uri is None:
            return m.group(0)   # left as written: MkDocs reports it, and --strict fails
        link = posixpath.relpath(uri, posixpath.dirname(page.file.src_uri) or ".")
        return f"{m.group(1)}{link}{hash_}{anchor}{m.group(3) or ''}{m.group(4)}"

    defined = set(re.findall(r"^ {0,3}\[([^\]]+)\]:", markdown, re.M))

    def prose(text: str) -> str:
        # Two bracketed tags in a row ("[paper][derived]", spec.md's sources) read as a
        # reference link to the autorefs plugin, which warns; unless defined, escape the second.
        text = TAG_PAIR.sub(lambda m: m.group(0) if m.group(2) in defined else f"[{m.group(1)}]\\[{m.group(2)}]", text)
        return LINK.sub(relink, text)

    out, in_fence = [], False
    for i, chunk in enumerate(FENCE.split(_blank_line_before_lists(markdown))):   # odd items are the fence markers
        if i % 2:
            in_fence = not in_fence
            out.append(chunk)
        elif in_fence:
            out.append(chunk)
        else:   # leave inline code spans alone
            out += [c if j % 2 else prose(c) for j, c in enumerate(CODE_SPAN.split(chunk))]
    return "".join(out)


def _blank_line_before_lists(markdown: str) -> str:
    """GitHub starts a list right after a paragraph line; Python-Markdown needs a blank line."""
    out, in_list, in_fence = [], False, False
    for line in markdown.split("\n"):
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
        is_item = not in_fence and LIST_ITEM.match(line)
        if is_item and not in_list and out and out[-1].strip() and not out[-1].lstrip().startswith("|"):
            out.append("")
        in_list = bool(is_item) or (in_list and line.strip() != "")
        out.append(line)
    return "\n".join(out)


def _publish_source(files, config, root: Path, repo: str) -> str | None:
    """A plain copy of a repository source file at source/<path>; None if not publishable."""
    src = root / repo
    if (repo.startswith("..") or not src.is_file() or src.suffix not in PUBLISHED_SOURCES
            or "solution" in repo.lower()):
        return None
    uri = f"source/{repo}"
    if files.get_file_from_path(uri) is None:
        files.append(File.generated(config, uri, abs_src_path=str(src)))
    return uri
