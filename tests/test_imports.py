"""The package's import graph has no cycles (issue 19).

Every `import` and `from ... import` of a slimgpt module counts, at module top or inside a
function: an import moved into a function to dodge a cycle still makes one, it only hides it
until the first call. Compiled modules (slimgpt._core) have no source and no imports of ours.
"""
import ast
import importlib.util
import os
from pathlib import Path

import slimgpt

ROOT = Path(slimgpt.__file__).parent


def _modules() -> dict:
    """Module name -> source file; slimgpt/reference may be a link to the repository's reference/."""
    mods = {}
    for folder, _, files in os.walk(ROOT, followlinks=True):
        for f in sorted(Path(folder) / n for n in files if n.endswith(".py")):
            parts = ("slimgpt",) + f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _edges(name: str, f: Path, mods: dict) -> set:
    """The slimgpt modules that module `name` (file f) imports anywhere in its body."""
    package = name if f.name == "__init__.py" else name.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods or _compiled(f"{base}.{a.name}") else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t.startswith("slimgpt") and t not in mods and not _compiled(t):
                t = t.rpartition(".")[0]
            if t in mods and t != name:
                deps.add(t)
    return deps


def _compiled(name: str) -> bool:
    return name.startswith("slimgpt.") and name.rpartition(".")[2].startswith("_core") and \
        importlib.util.find_spec(name) is not None


def _cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    mods = _modules()
    graph = {name: _edges(name, f, mods) for name, f in mods.items()}
    assert "slimgpt.reference.damping" in graph and graph["slimgpt.ops"]    # the walk saw the package
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
