"""The package's structure (issue 19): its import graph has no cycles, and no function is over
80 lines.

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


# ----------------------------------------------------------------------------------------------
# Function length

MAX_FUNCTION_LINES = 80
# argparse declarations: one add_argument per option, read as a table; splitting them by
# subcommand would only scatter the CLI's option list
LONG_FUNCTIONS_ALLOWED = {("slimgpt/cli.py", "build_parser")}


def _long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list:
    """(qualified name, lines) of every function, method or nested function longer than `limit`
    lines, counted from its `def` (decorators excluded) to its last line, docstring included."""
    found = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}" if prefix else child.name
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = child.end_lineno - child.lineno + 1
                if lines > limit:
                    found.append((name, lines))
            walk(child, name)

    walk(ast.parse(source), "")
    return found


def test_no_function_over_80_lines():
    """Every function of the package, the NumPy specification (slimgpt/reference, a link to
    reference/) included, docstrings counted."""
    long, allowed_seen = [], set()
    for f in sorted(ROOT.rglob("*.py")):
        rel = f"slimgpt/{f.relative_to(ROOT).as_posix()}"
        for name, lines in _long_functions(f.read_text(encoding="utf-8")):
            if (rel, name) in LONG_FUNCTIONS_ALLOWED:
                allowed_seen.add((rel, name))
            else:
                long.append(f"{rel}:{name} ({lines} lines)")
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines: {long}"
    assert allowed_seen == LONG_FUNCTIONS_ALLOWED      # every allowed entry still exists and is long


def test_the_length_check_sees_methods_and_nested_functions():
    def body(n, indent):
        return "".join(f"{indent}x{i} = {i}\n" for i in range(n))
    source = ("def ok():\n" + body(79, "    ")                          # 80 lines: allowed
              + "class C:\n    @staticmethod\n    def method():\n" + body(80, " " * 8)
              + "def outer():\n    async def inner():\n" + body(80, " " * 8) + "    return inner\n")
    assert _long_functions(source) == [("C.method", 81), ("outer", 83), ("outer.inner", 81)]
