"""The golden-case files: write them from the reference, read them back, call an implementation.

What this is: the on-disk format of docs/oracle.md (an index.json plus one plain .npz per case,
no pickles) and the calling convention shared by export and check. What it is not: the case
table (cases.py) or the comparison (check.py).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slimgpt.oracle.cases import OUTPUTS, SIGNATURES, Case, build_cases
from slimgpt.testing import TOLERANCES

FORMAT = "slimgpt-oracle"
FORMAT_VERSION = 1

# Profiles: how strict a check is. "float64" uses each case's own row ("float64" or
# "float64_solve"); "float32" uses the float32 row and skips cases tagged float64-only.
PROFILES = ("float64", "float32")


def call(fn: Callable, operation: str, args: dict[str, Any], extra: dict[str, Any] | None = None):
    """Call `fn` with the case's arguments: the operation's positional ones in order, the rest
    by keyword (plus `extra`, e.g. backend=...)."""
    pos = [args[name] for name in SIGNATURES[operation]]
    kw = {k: v for k, v in args.items() if k not in SIGNATURES[operation]}
    kw.update(extra or {})
    return fn(*pos, **kw)


def as_outputs(operation: str, result) -> list:
    """The result of an operation as a list of its named outputs (OUTPUTS order)."""
    n = len(OUTPUTS[operation])
    if n == 1:
        return [result]
    if not isinstance(result, (tuple, list)) or len(result) != n:
        raise TypeError(f"{operation} must return a tuple of {n} values "
                        f"({', '.join(o for o, _ in OUTPUTS[operation])}), got {type(result).__name__}")
    return list(result)


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def copy_args(args: dict[str, Any]) -> dict[str, Any]:
    """Fresh copies so an implementation that writes into its inputs cannot corrupt a case."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else (list(v) if isinstance(v, list) else v))
            for k, v in args.items()}


# ------------------------------------------------------------------------------------------------
# Export

def export(directory, *, cases: list[Case] | None = None, reference=None) -> dict:
    """Write every case's inputs and the reference's outputs to `directory`; return the index."""
    if reference is None:
        from slimgpt import reference
    directory = Path(directory)
    (directory / "cases").mkdir(parents=True, exist_ok=True)
    entries = [_export_case(directory, case, reference) for case in (build_cases() if cases is None else cases)]
    from slimgpt import __version__
    index = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "generator": f"slimgpt {__version__} (slimgpt.reference, float64)",
        "paper": "SlimGPT, Ling et al., NeurIPS 2024, arXiv 2412.18110",
        "profiles": {"float64": "each case's own float64 tolerance",
                     "float32": "rtol 1e-4, atol 2e-4 * max|expected|; float64-only cases skipped"},
        "cases": entries,
    }
    (directory / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _export_case(directory: Path, case: Case, reference) -> dict:
    """Run the reference on one case, write its npz, return its index entry."""
    arrays, arguments = {}, {}
    for name, value in case.args.items():
        if isinstance(value, np.ndarray):
            arrays[f"in.{name}"] = value.astype(np.int64) if value.dtype.kind in "iu" else value.astype(np.float64)
            arguments[name] = {"array": f"in.{name}"}
        else:
            arguments[name] = value
    entry = {
        "id": case.id, "operation": case.operation, "description": case.description,
        "tags": case.tags, "file": f"cases/{case.id}.npz",
        "positional": SIGNATURES[case.operation], "arguments": arguments,
        "profiles": ["float64", "float32"] if case.float32 else ["float64"], "outputs": [],
    }
    fn = getattr(reference, case.operation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outs = as_outputs(case.operation, call(fn, case.operation, copy_args(case.args)))
        except Exception as exc:  # noqa: BLE001 - an expected error is part of the case
            if not case.raises:
                raise RuntimeError(f"the reference failed on case {case.id}: {exc!r}") from exc
            entry["raises"] = type(exc).__name__
            outs = None
    entry["warns"] = sorted({w.category.__name__ for w in caught})
    damping = [w.message.percdamp for w in caught if hasattr(w.message, "percdamp")]
    if damping:
        entry["percdamp_used"] = max(damping)
    if case.raises and outs is not None:
        raise RuntimeError(f"case {case.id} expects an error but the reference returned")
    for (name, kind), value in zip(OUTPUTS[case.operation], outs or []):
        arr = to_numpy(value)
        arr = arr.astype(np.float64) if kind == "float" else arr.astype(np.int64)
        arrays[f"out.{name}"] = arr
        out = {"name": name, "key": f"out.{name}", "compare": kind}
        if kind == "float":
            finite = arr[np.isfinite(arr)]
            scale = float(np.max(np.abs(finite))) if finite.size else 0.0
            out["tolerances"] = {}
            for profile in entry["profiles"]:
                rtol, atol_rel = TOLERANCES[case.tolerance if profile == "float64" else profile]
                out["tolerances"][profile] = {"rtol": rtol, "atol": atol_rel * scale}
        entry["outputs"].append(out)
    np.savez(directory / entry["file"], **arrays)
    return entry


# ------------------------------------------------------------------------------------------------
# Reading

class OracleFormatError(ValueError):
    """A directory that is not a readable export (missing, damaged or of another format)."""


def read_index(directory) -> dict:
    """index.json of an exported directory, checked for format and version."""
    path = Path(directory) / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise OracleFormatError(f"{path} not found: export the cases first (slimgpt oracle export DIR)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OracleFormatError(f"{path}: unreadable ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("cases"), list):
        raise OracleFormatError(f"{path} is not a {FORMAT} index")
    if index.get("version") != FORMAT_VERSION:
        raise OracleFormatError(f"{path} has format version {index.get('version')!r}; this slimgpt reads "
                                f"version {FORMAT_VERSION} (export the cases again)")
    return index


def load_cases(directory) -> list[tuple[dict, dict[str, Any], dict[str, np.ndarray]]]:
    """Read an exported directory: [(index entry, arguments with arrays filled in, expected outputs)]."""
    directory = Path(directory)
    out = []
    for entry in read_index(directory)["cases"]:
        try:
            with np.load(directory / entry["file"], allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
            args = {name: (data[v["array"]] if isinstance(v, dict) else v) for name, v in entry["arguments"].items()}
            expected = {o["name"]: data[o["key"]] for o in entry["outputs"]}
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise OracleFormatError(f"{directory}: case {entry.get('id', '?')!r} is damaged ({e})") from None
        out.append((entry, args, expected))
    return out
