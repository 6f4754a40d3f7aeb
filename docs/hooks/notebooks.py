"""Tutorials for the site: a `# %%` script -> a notebook (download) and its executed Markdown page.

Used by docs/hooks/course.py; plain functions, no MkDocs. A tutorial runs in a Jupyter kernel
(nbclient) in fast mode, in a temporary folder, the way tests/test_tutorials.py runs it as a
script: SLIMGPT_TUTORIAL_FAST=1, plots written under that folder. Each figure the script saves
with `savefig` is also shown inline in the cell that saved it. A cell that raises fails the
build; `sys.exit(0)` (tutorial 06 without a GPU) ends the tutorial cleanly at that cell.
"""
from __future__ import annotations

import base64
import os
import re
import tempfile
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TIMEOUT_S = 600  # per cell; a fast-mode tutorial takes under a minute in all

# Runs in the kernel before the tutorial's first cell, and is not shown: slimgpt is imported from
# the checkout being documented, the tutorials' helper `_tutorial` from their own folder; they read
# --fast/--out from sys.argv and write their figures with savefig (they never call plt.show()),
# so each saved figure is displayed too.
SETUP = """\
import sys
sys.argv = [{script!r}]
sys.path[:0] = [{folder!r}, {root!r}]
import IPython.display, matplotlib.figure
_savefig = matplotlib.figure.Figure.savefig
def _savefig_and_display(self, fname, *args, **kwargs):
    _savefig(self, fname, *args, **kwargs)
    IPython.display.display(IPython.display.Image(filename=str(fname)))
matplotlib.figure.Figure.savefig = _savefig_and_display
"""

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class TutorialFailed(RuntimeError):
    pass


def notebook_of(script: Path) -> nbformat.NotebookNode:
    """The `# %%` script as a notebook (what the site offers for download), without outputs."""
    nb = jupytext.read(script, fmt="py:percent")
    nb.metadata.pop("jupytext", None)   # a plain notebook, not one paired with the script
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(script: Path) -> nbformat.NotebookNode:
    """Run the tutorial in fast mode in a fresh kernel; return the notebook with its outputs.

    Raises TutorialFailed with the cell and the error when a cell fails.
    """
    nb = notebook_of(script)
    setup = SETUP.format(script=str(script), folder=str(script.parent), root=str(script.parent.parent))
    nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
    env = dict(os.environ, SLIMGPT_TUTORIAL_FAST="1", SLIMGPT_TUTORIAL_OUT="out", MPLBACKEND="Agg",
               OPENBLAS_NUM_THREADS="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    with tempfile.TemporaryDirectory(prefix="slimgpt-site-") as cwd:
        client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": cwd}},
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])  # not its TCP notice
        with client.setup_kernel(env=env, cwd=cwd):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as err:
                    if err.ename == "SystemExit" and err.evalue in ("0", "None", ""):
                        cell.outputs = [o for o in cell.outputs if o.output_type != "error"
                                        and "To exit: use 'exit'" not in o.get("text", "")]  # IPython's note
                        cell.metadata["stopped"] = True  # the script ended here, exit status 0
                        break
                    raise TutorialFailed(f"{script.name}, cell {index}:\n{ANSI.sub('', str(err))}") from None
    nb.cells.pop(0)
    return nb


def to_markdown(nb: nbformat.NotebookNode, stem: str) -> tuple[str, dict[str, bytes]]:
    """The executed notebook as Markdown, and its figures {file name: PNG bytes}.

    Text cells stay as written; code cells become Python blocks followed by their printed output
    and figures. Cells after a clean `sys.exit(0)` are shown, marked as not run.
    """
    parts, figures, stopped = [], {}, False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source)
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        parts.append(f"```python\n{cell.source}\n```")
        if stopped:
            parts.append("*Not run in this build: the tutorial stopped at an earlier cell.*")
            continue
        text = ""  # consecutive printed output, shown as one block
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if out.output_type == "stream" or ("text/plain" in data and "image/png" not in data):
                text += out.text if out.output_type == "stream" else data["text/plain"] + "\n"
                continue
            if text:
                parts.append(_text_block(text))
                text = ""
            if "image/png" in data:
                name = f"{stem}_{len(figures) + 1}.png"
                figures[name] = base64.b64decode(data["image/png"])
                parts.append(f"![Figure {len(figures)} of {stem}]({stem}_files/{name})")
        if text:
            parts.append(_text_block(text))
        if cell.metadata.get("stopped"):
            parts.append("*The tutorial ends here in this build (it exited with status 0).*")
            stopped = True
    return "\n\n".join(parts) + "\n", figures


def _text_block(text: str) -> str:
    text = ANSI.sub("", text).rstrip("\n")
    fence = "````" if "```" in text else "```"
    return f'{fence}text title="output"\n{text}\n{fence}'
