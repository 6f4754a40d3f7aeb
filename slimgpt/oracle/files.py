"""The golden-case files: write them from the reference, read them back, call an implementation.

What this is: the on-disk format of docs/oracle.md (an index.json, and one folder per case with a
case.json and plain version-1.0 .npy files; version 1's one-npz-per-case is still read) and the
calling convention shared by export and check. What it is not: the case table (cases.py) or the
comparison (check.py).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slimgpt.oracle.cases import Case, build_cases
from slimgpt.oracle.operations import ERROR_KINDS, OPERATIONS
from slimgpt.testing import tolerance

FORMAT = "slimgpt-oracle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# Profiles: which tolerance row a float output is judged with, and which cases are left out.
# "float64": each case's own row ("float64" or "float64_solve"); "float32": the float32 row,
# float64-only cases skipped; "published-code": float32 as the authors' code, and without the
# project's own behaviour (damping retry, GQA quotas, tie rule, H per token): tag "project" skipped.
PROFILES = ("float64", "float32", "published-code")
PROFILE_TOLERANCES = {"float64": "float64", "float32": "float32", "published-code": "float32"}
PROFILE_SKIP_TAGS = {"float64": [], "float32": [], "published-code": ["project"]}

TAGS = {
    "paper": "behaviour the paper defines",
    "published-code": "behaviour the authors' published code defines (where it differs from the paper, the code)",
    "project": "behaviour only this project defines: damping retry, GQA quotas, the tie rule, H per token",
    "edge": "degenerate or boundary inputs: empty sets, all heads, one head, head_dim=1, errors",
}


def call(fn: Callable, operation: str, args: dict[str, Any], extra: dict[str, Any] | None = None):
    """Call `fn` with the case's arguments: the operation's positional ones in order, the rest
    by keyword (plus `extra`, e.g. backend=...)."""
    positional = OPERATIONS[operation].positional
    pos = [args[name] for name in positional]
    kw = {k: v for k, v in args.items() if k not in positional}
    kw.update(extra or {})
    return fn(*pos, **kw)


def as_outputs(operation: str, result) -> list:
    """The result of an operation as a list of its named outputs (OUTPUTS order)."""
    names = [name for name, _ in OPERATIONS[operation].outputs]
    n = len(names)
    if n == 1:
        return [result]
    if not isinstance(result, (tuple, list)) or len(result) != n:
        got = f"a {type(result).__name__} of {len(result)}" if isinstance(result, (tuple, list)) \
            else type(result).__name__
        raise TypeError(f"{operation} must return a tuple of {n} values "
                        f"({', '.join(names)}), got {got}")
    return list(result)


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def copy_args(args: dict[str, Any]) -> dict[str, Any]:
    """Fresh copies so an implementation that writes into its inputs cannot corrupt a case."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else list(v) if isinstance(v, list)
                else copy_args(v) if isinstance(v, dict) else v) for k, v in args.items()}


def full_arguments(case: Case) -> tuple[dict[str, Any], list[str]]:
    """Every argument of the case, defaults filled in, and the names that came from a default."""
    keywords = OPERATIONS[case.operation].keywords
    defaults = [k for k in keywords if k not in case.args]
    return {**case.args, **{k: keywords[k] for k in defaults}}, defaults


def error_kind(exc_type: type) -> str | None:
    """The expected-error kind of an exception class of the reference (ERROR_KINDS), via its MRO."""
    return next((ERROR_KINDS[c.__name__] for c in exc_type.__mro__ if c.__name__ in ERROR_KINDS), None)


def output_floor(operation: str, name: str, args: dict[str, Any]) -> float:
    """The inputs' scale of an output, the floor of its absolute tolerance (so an all-zero expected
    output is not judged at atol 0): max|W| for W_new, the error of zeroing W for an error or a loss."""
    W = args.get("W")
    if name == "W_new" and W is not None:
        return float(np.max(np.abs(W))) if np.size(W) else 0.0
    if name == "error":
        return 0.5 * float(np.sum((W @ args["H"]) * W))
    if name == "loss" and "X" in args:   # the layer operations (the course's remove_set has no X)
        from slimgpt.oracle.layers import output_change
        return output_change(args["X"], W, np.zeros_like(W))
    return 0.0


# ------------------------------------------------------------------------------------------------
# Export

def write_npy(path: Path, arr: np.ndarray, integer: bool | None = None) -> dict:
    """A version-1.0 .npy (little-endian, C order, data 64-byte aligned); its index record.
    integer: '<i8' (indices, counts, group sizes, even when empty) or '<f8'; None: from arr's dtype."""
    if integer is None:
        integer = arr.dtype.kind in "iub"
    arr = np.ascontiguousarray(arr, dtype="<i8" if integer else "<f8")
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=(1, 0), allow_pickle=False)
        offset = f.tell() - arr.nbytes
    return {"file": path.name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}


def export(directory, *, cases: list[Case] | None = None, reference=None) -> dict:
    """Write every case's inputs and the reference's outputs to `directory`; return the index."""
    from slimgpt.oracle.layers import expected_namespace

    if reference is None:
        from slimgpt import reference
    expected = expected_namespace(reference)
    directory = Path(directory)
    (directory / "cases").mkdir(parents=True, exist_ok=True)
    entries = [_export_case(directory, case, expected) for case in (build_cases() if cases is None else cases)]
    from slimgpt import __version__
    index = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "generator": f"slimgpt {__version__} (slimgpt.reference, float64)",
        "paper": "SlimGPT, Ling et al., NeurIPS 2024, arXiv 2412.18110",
        "profiles": {p: {"tolerances": PROFILE_TOLERANCES[p], "skip_tags": PROFILE_SKIP_TAGS[p]} for p in PROFILES},
        "tags": TAGS,
        "error_kinds": sorted(set(ERROR_KINDS.values())),
        "operations": {op: {"positional": o.positional, "keywords": o.keywords,
                            "outputs": [{"name": n, "compare": c} for n, c in o.outputs], "spec": o.spec}
                       for op, o in OPERATIONS.items()},
        "cases": entries,
    }
    (directory / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _export_case(directory: Path, case: Case, expected) -> dict:
    """Run the reference on one case, write its folder, return its index entry."""
    folder = directory / "cases" / case.id
    folder.mkdir(parents=True, exist_ok=True)
    args, defaults = full_arguments(case)
    arrays, arguments = {}, {}
    for name, value in args.items():
        if isinstance(value, np.ndarray):
            arrays[f"in.{name}"] = write_npy(folder / f"in.{name}.npy", value)
            arguments[name] = {"array": f"in.{name}"}
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            for key, v in value.items():  # a dict of arrays (a model's weights)
                arrays[f"in.{name}.{key}"] = write_npy(folder / f"in.{name}.{key}.npy", v)
            arguments[name] = {"arrays": {key: f"in.{name}.{key}" for key in value}}
        else:
            arguments[name] = value
    entry = {
        "id": case.id, "operation": case.operation, "description": case.description,
        "tags": case.tags, "spec": OPERATIONS[case.operation].spec, "folder": f"cases/{case.id}",
        "positional": OPERATIONS[case.operation].positional, "arguments": arguments, "defaults": defaults,
        "profiles": ["float64", "float32"] if case.float32 else ["float64"], "outputs": [],
    }
    fn = getattr(expected, case.operation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outs = as_outputs(case.operation, call(fn, case.operation, copy_args(case.args)))
        except Exception as exc:  # noqa: BLE001 - an expected error is part of the case
            if not case.raises:
                raise RuntimeError(f"the reference failed on case {case.id}: {exc!r}") from exc
            entry["raises"], entry["error_kind"] = type(exc).__name__, error_kind(type(exc))
            outs = None
    entry["warns"] = sorted({w.category.__name__ for w in caught})
    damping = [w.message.percdamp for w in caught if hasattr(w.message, "percdamp")]
    if damping:
        entry["percdamp_used"] = max(damping)
    if case.raises and outs is not None:
        raise RuntimeError(f"case {case.id} expects an error but the reference returned")
    for (name, kind), value in zip(OPERATIONS[case.operation].outputs, outs or []):
        arr = to_numpy(value)
        arrays[f"out.{name}"] = write_npy(folder / f"out.{name}.npy", arr, integer=kind != "float")
        out = {"name": name, "key": f"out.{name}", "compare": kind}
        if kind == "float":
            floor = output_floor(case.operation, name, args)
            out["tolerances"] = {}
            for profile in entry["profiles"]:
                rtol, atol = tolerance(case.tolerance if profile == "float64" else case.float32_tolerance, arr, floor)
                out["tolerances"][profile] = {"rtol": rtol, "atol": atol}
            if name == "W_new":
                out["exact_zero_columns"] = np.flatnonzero(np.all(arr == 0.0, axis=0)).tolist()
        entry["outputs"].append(out)
    entry["arrays"] = arrays
    (folder / "case.json").write_text(json.dumps(entry, indent=1) + "\n")
    (folder / "arrays.txt").write_text(arrays_manifest(arrays))
    return entry


def arrays_manifest(arrays: dict) -> str:
    """case.json's "arrays" as flat lines for readers without JSON (docs/oracle.md):
    `KEY FILE DTYPE OFFSET NDIM DIM...`, one array per line."""
    return "".join(" ".join(map(str, [key, r["file"], r["dtype"], r["offset"], len(r["shape"]), *r["shape"]])) + "\n"
                   for key, r in arrays.items())



# ------------------------------------------------------------------------------------------------
# Reading

class OracleFormatError(ValueError):
    """A directory that is not a readable export (missing, damaged or of another format)."""


def read_index(directory) -> dict:
    """index.json of an exported directory, checked for format and version."""
    path = Path(directory) / "index.json"
    if Path(directory).is_file():
        raise OracleFormatError(f"{directory} is a file, not an export folder (give the folder that holds "
                                f"index.json)")
    if not Path(directory).is_dir():
        raise OracleFormatError(f"{directory}: no such directory (export the cases first: slimgpt oracle export DIR)")
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise OracleFormatError(f"{directory} is not an oracle export (no index.json; "
                                f"make one with: slimgpt oracle export DIR)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OracleFormatError(f"{path}: unreadable ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("cases"), list):
        raise OracleFormatError(f"{path} is not a {FORMAT} index")
    if index.get("version") not in READABLE_VERSIONS:
        raise OracleFormatError(f"{path} has format version {index.get('version')!r}; this slimgpt reads "
                                f"versions {', '.join(map(str, READABLE_VERSIONS))} (export the cases again)")
    return index


def case_files(directory, entry: dict) -> list[Path]:
    """The files that hold one case's arrays (its .npy files, or its npz in format version 1)."""
    directory = Path(directory)
    if "file" in entry:
        return [directory / entry["file"]]
    return [directory / entry["folder"] / "case.json"] + [directory / entry["folder"] / a["file"]
                                                          for a in entry["arrays"].values()]


def read_arrays(directory, entry: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """The case's arrays whose key starts with `prefix` ("in." for inputs only), by key."""
    directory = Path(directory)
    try:
        if "file" in entry:  # format version 1: one npz per case
            with np.load(directory / entry["file"], allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files if k.startswith(prefix)}
        folder = directory / entry["folder"]
        return {key: np.load(folder / rec["file"], allow_pickle=False)
                for key, rec in entry["arrays"].items() if key.startswith(prefix)}
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise OracleFormatError(f"{directory}: case {entry.get('id', '?')!r} is damaged ({e})") from None


def _resolve(value, data: dict):
    """An argument of the index: {"array": KEY} and {"arrays": {name: KEY}} refer to arrays; any other
    value (a number, a string, a list, null, an object such as a model config) is passed as is."""
    if isinstance(value, dict) and set(value) == {"array"}:
        return data[value["array"]]
    if isinstance(value, dict) and set(value) == {"arrays"}:
        return {name: data[key] for name, key in value["arrays"].items()}
    return value


def load_case(directory, entry: dict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One case's arguments (arrays filled in) and expected outputs; OracleFormatError if damaged."""
    data = read_arrays(directory, entry)
    try:
        args = {name: _resolve(v, data) for name, v in entry["arguments"].items()}
        expected = {o["name"]: data[o["key"]] for o in entry["outputs"]}
    except (KeyError, TypeError) as e:
        raise OracleFormatError(f"{directory}: case {entry.get('id', '?')!r} is damaged ({e})") from None
    return args, expected


def load_cases(directory) -> list[tuple[dict, dict[str, Any], dict[str, np.ndarray]]]:
    """Read an exported directory: [(index entry, arguments with arrays filled in, expected outputs)]."""
    return [(entry, *load_case(directory, entry)) for entry in read_index(directory)["cases"]]
