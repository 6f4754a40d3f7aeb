"""Check an implementation against exported golden cases.

What this is: `check(dir, impl)` runs another implementation (a Python module with functions
named like the reference's; a subset is fine) over the exported cases and reports, per case,
pass / FAIL / not implemented / skipped with the max abs and rel errors and a message that names
the wrong output and where. What it is not: the case table (cases.py) or the file format
(files.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimgpt.oracle.files import PROFILES, as_outputs, call, copy_args, load_cases, to_numpy

PASS, FAIL, NOT_IMPLEMENTED, SKIPPED = "pass", "FAIL", "not implemented", "skipped"


@dataclass
class CaseResult:
    id: str
    operation: str
    status: str                        # PASS | FAIL | NOT_IMPLEMENTED | SKIPPED
    message: str = ""
    max_abs_err: float = float("nan")  # over the case's float outputs
    max_rel_err: float = float("nan")  # max abs err / max|expected|, per output, maximised
    seconds: float = 0.0


@dataclass
class CheckResult:
    impl: str
    profile: str
    cases: list[CaseResult]

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cases)

    @property
    def passed(self) -> int:
        return self.count(PASS)

    @property
    def failed(self) -> int:
        return self.count(FAIL)

    @property
    def ok(self) -> bool:
        """True when at least one case was checked and none failed."""
        return self.failed == 0 and self.passed > 0

    def by_operation(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for c in self.cases:
            row = table.setdefault(c.operation, {PASS: 0, FAIL: 0, NOT_IMPLEMENTED: 0, SKIPPED: 0})
            row[c.status] += 1
        return table

    def table(self, verbose: bool = False) -> str:
        lines = [f"oracle check of {self.impl} (profile {self.profile})", "",
                 f"{'case':<44} {'status':<16} {'max abs err':>11} {'max rel err':>11} {'time':>7}"]
        for c in self.cases:
            if c.status in (NOT_IMPLEMENTED, SKIPPED) and not verbose:
                continue
            err = "" if np.isnan(c.max_abs_err) else f"{c.max_abs_err:11.2e}"
            rel = "" if np.isnan(c.max_rel_err) else f"{c.max_rel_err:11.2e}"
            lines.append(f"{c.id:<44} {c.status:<16} {err:>11} {rel:>11} {c.seconds:6.2f}s")
            if c.status == FAIL:
                lines += [f"    {line}" for line in c.message.splitlines()]
        lines.append("")
        for op, row in self.by_operation().items():
            if row[NOT_IMPLEMENTED] and not (row[PASS] or row[FAIL]):
                lines.append(f"{op}: not implemented ({row[NOT_IMPLEMENTED]} cases)")
            elif row[SKIPPED] and not (row[PASS] or row[FAIL]):
                lines.append(f"{op}: skipped ({row[SKIPPED]} cases)")
        lines.append(f"{self.passed} passed, {self.failed} failed, {self.count(NOT_IMPLEMENTED)} not implemented, "
                     f"{self.count(SKIPPED)} skipped")
        if self.passed + self.failed == 0:
            lines.append("no case was checked: FAIL")
        return "\n".join(lines)


def compare_output(name: str, compare: str, actual, expected: np.ndarray, tol: dict | None):
    """Compare one output. Returns (ok, message, max_abs_err, max_rel_err)."""
    try:
        a = to_numpy(actual)
    except Exception as exc:  # noqa: BLE001
        return False, f"{name}: cannot convert the result to an array ({exc})", np.nan, np.nan
    if compare == "index_set":
        a = a.astype(np.int64).ravel() if a.size else np.zeros(0, np.int64)
        e = expected.astype(np.int64).ravel()
        if len(np.unique(a)) != len(a):
            return False, f"{name}: duplicate indices in {a.tolist()}", np.nan, np.nan
        missing = sorted(set(e.tolist()) - set(a.tolist()))
        extra = sorted(set(a.tolist()) - set(e.tolist()))
        if missing or extra:
            return False, (f"{name}: expected indices {sorted(e.tolist())}, got {sorted(a.tolist())}; "
                           f"missing {missing}, unexpected {extra}"), np.nan, np.nan
        return True, "", np.nan, np.nan
    if compare == "exact":
        a_list = np.asarray(a).astype(np.int64).ravel().tolist() if np.asarray(a).size else []
        e_list = expected.astype(np.int64).ravel().tolist()
        if a_list != e_list:
            diff = next((i for i, (x, y) in enumerate(zip(a_list, e_list)) if x != y), min(len(a_list), len(e_list)))
            return False, (f"{name}: expected {_short(e_list)}, got {_short(a_list)} "
                           f"(first difference at position {diff})"), np.nan, np.nan
        return True, "", np.nan, np.nan
    # float (0-d results are compared as 1-element arrays)
    a = np.atleast_1d(a.astype(np.float64))
    expected = np.atleast_1d(expected)
    if a.shape != expected.shape:
        return False, f"{name}: expected shape {expected.shape}, got {a.shape}", np.nan, np.nan
    if expected.size == 0:
        return True, "", 0.0, 0.0
    fin = np.isfinite(expected)
    if not np.array_equal(np.isfinite(a), fin) or not np.array_equal(a[~fin], expected[~fin]):
        bad = np.argwhere((np.isfinite(a) != fin) | (~fin & (a != expected)))[:5]
        return False, f"{name}: non-finite entries differ at {bad.tolist()}", np.nan, np.nan
    diff = np.abs(a - expected)
    diff[~fin] = 0.0
    scale = float(np.max(np.abs(expected[fin]))) if fin.any() else 0.0
    max_abs = float(diff.max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    allowed = tol["atol"] + tol["rtol"] * np.abs(np.where(fin, expected, 0.0))
    over = diff > allowed
    if over.any():
        worst = np.unravel_index(int(np.argmax(diff - allowed)), diff.shape)
        where = tuple(int(i) for i in worst)
        return False, (f"{name}: {int(over.sum())} of {diff.size} entries out of tolerance; "
                       f"max abs err {max_abs:.3e} (allowed there {float(allowed[worst]):.3e} = atol {tol['atol']:.2e} "
                       f"+ rtol {tol['rtol']:.0e} * |expected|), max rel err {max_rel:.3e}; "
                       f"worst at {where}: expected {expected[worst]:.10g}, got {a[worst]:.10g}"), max_abs, max_rel
    return True, "", max_abs, max_rel


def _short(values: list, n: int = 12) -> str:
    return str(values) if len(values) <= n else f"[{', '.join(map(str, values[:n]))}, ... ({len(values)} values)]"


class ImplementationError(ValueError):
    """The implementation to check cannot be loaded (missing module, syntax error, ...)."""


def _load_impl(impl):
    """A module object, an object with attributes, a dict of functions, a module name, or a path
    to a .py file."""
    if isinstance(impl, dict):
        return type("Impl", (), {k: staticmethod(v) for k, v in impl.items()})(), "dict"
    if not isinstance(impl, (str, Path)):
        return impl, getattr(impl, "__name__", type(impl).__name__)
    text = str(impl)
    try:
        if text.endswith(".py") or Path(text).is_file():
            path = Path(text).resolve()
            name = f"_oracle_impl_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ImportError(f"no such file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module, str(path)
        return importlib.import_module(text), text
    except Exception as e:  # noqa: BLE001 - whatever the implementation raises while importing
        raise ImplementationError(f"cannot load the implementation {text!r}: {type(e).__name__}: {e}") from e


def check(directory, impl, *, profile: str = "float64", operations=None, backend: str | None = None) -> CheckResult:
    """Run `impl`'s functions over the exported cases in `directory`.

    impl: module, module name, path to a .py file, or dict of functions named like the reference.
    profile: "float64" (each case's tolerance) or "float32" (looser; float64-only cases skipped).
    operations: optional subset of operation names. backend: passed as backend=... when given
    (for slimgpt.ops). A missing function or one that raises NotImplementedError counts as not
    implemented; any other exception is a failure with its message.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    cases = load_cases(directory)
    known = sorted({entry["operation"] for entry, _, _ in cases})
    unknown = sorted(set(operations or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown operation(s) {', '.join(unknown)}; the cases cover {', '.join(known)}")
    module, label = _load_impl(impl)
    if backend is not None:
        label += f" (backend={backend})"
    extra = {"backend": backend} if backend is not None else {}
    results = [_check_case(entry, args, expected, module, label, profile, extra)
               for entry, args, expected in cases if operations is None or entry["operation"] in operations]
    return CheckResult(label, profile, results)


def _check_case(entry, args, expected, module, label, profile, extra) -> CaseResult:
    """Run one case and compare every output."""
    op = entry["operation"]
    res = CaseResult(entry["id"], op, PASS)
    fn = getattr(module, op, None)
    if fn is None or not callable(fn):
        res.status, res.message = NOT_IMPLEMENTED, f"{label} has no function {op}"
        return res
    if profile not in entry["profiles"]:
        res.status, res.message = SKIPPED, f"case is float64-only (not in profile {profile})"
        return res
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call(fn, op, copy_args(args), extra)
    except NotImplementedError as exc:
        res.status, res.message = NOT_IMPLEMENTED, f"{op} raised NotImplementedError {exc}".strip()
        return res
    except Exception as exc:  # noqa: BLE001 - reported per case
        res.seconds = time.perf_counter() - t0
        if "raises" in entry and entry["raises"] in [c.__name__ for c in type(exc).__mro__]:
            return res  # the expected error
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        res.status = FAIL
        res.message = (f"raised {type(exc).__name__}: {exc} (at {Path(tb.filename).name}:{tb.lineno})"
                       + (f"; expected {entry['raises']}" if "raises" in entry else ""))
        return res
    res.seconds = time.perf_counter() - t0
    if "raises" in entry:
        res.status, res.message = FAIL, f"expected {entry['raises']} to be raised, but the call returned"
        return res
    try:
        outs = as_outputs(op, result)
    except TypeError as exc:
        res.status, res.message = FAIL, str(exc)
        return res
    msgs, abs_errs, rel_errs = [], [], []
    for o, value in zip(entry["outputs"], outs):
        tol = o.get("tolerances", {}).get(profile)
        ok, msg, ea, er = compare_output(o["name"], o["compare"], value, expected[o["name"]], tol)
        if not ok:
            msgs.append(msg)
        if not np.isnan(ea):
            abs_errs.append(ea)
            rel_errs.append(er)
    if abs_errs:
        res.max_abs_err, res.max_rel_err = max(abs_errs), max(rel_errs)
    if msgs:
        res.status, res.message = FAIL, "\n".join(msgs)
    return res
