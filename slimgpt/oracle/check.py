"""Check an implementation against exported golden cases.

What this is: `check(dir, impl)` runs another implementation (a module with functions named like
the reference's, or any shape described by an ORACLE_MAP, adapter.py) over the exported cases
and reports, per case, pass / FAIL / ADAPTER / not implemented / skipped, with the max abs and
rel errors, the case's description and a message that names the wrong output and where. What it
is not: the case table (cases.py) or the file format (files.py).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from slimgpt.oracle.adapter import (Adapter, AdapterProblem, NotSupported, implementation_traceback,
                                    load_implementation, raised_at_call, where)
from slimgpt.oracle.files import (PROFILE_SKIP_TAGS, PROFILE_TOLERANCES, PROFILES, OracleFormatError, copy_args,
                                  load_case, read_index, to_numpy)
from slimgpt.oracle.operations import OPERATIONS

PASS, FAIL, NOT_IMPLEMENTED, SKIPPED, ADAPTER = "pass", "FAIL", "not implemented", "skipped", "ADAPTER"


@dataclass
class CaseResult:
    id: str
    operation: str
    status: str                        # PASS | FAIL | ADAPTER | NOT_IMPLEMENTED | SKIPPED
    message: str = ""
    max_abs_err: float = float("nan")  # over the case's float outputs
    max_rel_err: float = float("nan")  # max abs err / max|expected|, per output, maximised
    seconds: float = 0.0
    description: str = ""
    warnings: list = field(default_factory=list)


@dataclass
class CheckResult:
    impl: str
    profile: str
    cases: list[CaseResult]
    # adapter problems of the whole map (warnings); keyword-only so that subclasses (the course
    # grader's GradeResult) keep adding positional fields after `cases`
    problems: list[str] = field(default_factory=list, kw_only=True)

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
        """True when at least one case was checked and none failed or had an adapter problem."""
        return self.failed == 0 and self.count(ADAPTER) == 0 and self.passed > 0

    def by_operation(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for c in self.cases:
            row = table.setdefault(c.operation, {PASS: 0, FAIL: 0, ADAPTER: 0, NOT_IMPLEMENTED: 0, SKIPPED: 0})
            row[c.status] += 1
        return table

    def table(self, verbose: bool = False) -> str:
        lines = [f"oracle check of {self.impl} (profile {self.profile})", "",
                 f"{'case':<44} {'status':<16} {'max abs err':>11} {'max rel err':>11} {'time':>7}"]
        for c in self.cases:
            if c.status in (NOT_IMPLEMENTED, SKIPPED, ADAPTER) and not verbose:
                continue
            err = "" if np.isnan(c.max_abs_err) else f"{c.max_abs_err:11.2e}"
            rel = "" if np.isnan(c.max_rel_err) else f"{c.max_rel_err:11.2e}"
            lines.append(f"{c.id:<44} {c.status:<16} {err:>11} {rel:>11} {c.seconds:6.2f}s")
            if c.status in (FAIL, ADAPTER) or (verbose and c.message and c.status != PASS):
                lines.append(f"    case: {c.description}")
                lines += [f"    {line}" for line in c.message.splitlines()]
            lines += [f"    warning: {w}" for w in c.warnings]
        adapter = [c for c in self.cases if c.status == ADAPTER]
        if self.problems:
            lines += ["", "adapter warnings (the map):"] + [f"  {p}" for p in self.problems]
        if adapter and not verbose:
            lines += ["", "adapter problems (the call or the result does not fit; not a numeric failure):"]
            lines += _grouped_problems(adapter)
        lines.append("")
        for op, row in self.by_operation().items():
            if row[NOT_IMPLEMENTED] and not (row[PASS] or row[FAIL] or row[ADAPTER]):
                lines.append(f"{op}: not implemented ({row[NOT_IMPLEMENTED]} cases)")
            elif row[SKIPPED] and not (row[PASS] or row[FAIL] or row[ADAPTER]):
                lines.append(f"{op}: skipped ({row[SKIPPED]} cases)")
        lines.append(f"{self.passed} passed, {self.failed} failed, {self.count(ADAPTER)} adapter problems, "
                     f"{self.count(NOT_IMPLEMENTED)} not implemented, {self.count(SKIPPED)} skipped")
        if self.passed + self.failed + self.count(ADAPTER) == 0:
            lines.append("no case was checked: FAIL")
        return "\n".join(lines)


def _grouped_problems(cases: list[CaseResult]) -> list[str]:
    """One entry per operation and message, naming the cases that share it (a map's mistake
    repeats over every case of its operation)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for c in cases:
        groups.setdefault((c.operation, c.message), []).append(c.id.removeprefix(f"{c.operation}."))
    lines = []
    for (op, message), names in groups.items():
        first, *rest = message.splitlines()
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        lines.append(f"  {op}, {len(names)} case{'s' * (len(names) > 1)} ({shown}): {first}")
        lines += [f"    {line}" for line in rest]
    return lines


def compare_output(name: str, compare: str, actual, expected: np.ndarray, tol: dict | None,
                   exact_zero_columns=None, dead_inputs=()):
    """Compare one output. Returns (ok, message, max_abs_err, max_rel_err). `exact_zero_columns`:
    columns of a pruned weight the reference removed, which must be exactly 0.0 (spec §2.1; dead
    inputs among them, `dead_inputs`, spec §2.4)."""
    try:
        a = to_numpy(actual)
    except Exception as exc:  # noqa: BLE001
        return False, f"{name}: cannot convert the result to an array ({exc})", np.nan, np.nan
    if compare == "index_sets":
        if a.ndim != 2 or a.shape[0] != expected.shape[0]:
            return False, f"{name}: expected {expected.shape[0]} rows of indices, got shape {a.shape}", np.nan, np.nan
        rows = [(row, compare_output(f"{name}[{row}]", "index_set", ar, er, None)[1])
                for row, (ar, er) in enumerate(zip(a, expected))]
        bad = [(row, msg) for row, msg in rows if msg]
        if bad:
            return False, "\n".join([f"{name}: {len(bad)} of {len(rows)} rows (layers) differ, the first "
                                     f"diverging is {bad[0][0]}"] + [msg for _, msg in bad]), np.nan, np.nan
        return True, "", np.nan, np.nan
    if compare == "index_set":
        a = a.astype(np.int64).ravel() if a.size else np.zeros(0, np.int64)
        e = expected.astype(np.int64).ravel()
        if len(np.unique(a)) != len(a):
            return False, f"{name}: duplicate indices in {a.tolist()}", np.nan, np.nan
        missing = sorted(set(e.tolist()) - set(a.tolist()))
        extra = sorted(set(a.tolist()) - set(e.tolist()))
        if missing or extra:
            both = (f"expected indices {sorted(e.tolist())}, got {sorted(a.tolist())}; "
                    if max(len(e), len(a)) <= _SHORT else "")  # whole sets only while they are short
            return False, (f"{name}: {both}{len(missing)} of the {len(e)} expected indices missing {_short(missing)}, "
                           f"{len(extra)} unexpected {_short(extra)}"), np.nan, np.nan
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
    max_rel = max_abs / scale if scale > 0 else np.nan  # all-zero expected output: no relative error
    msgs = []
    if exact_zero_columns:
        cols = np.asarray(exact_zero_columns, dtype=np.int64)
        nonzero = cols[np.any(a[:, cols] != 0.0, axis=0)]
        dead = np.isin(nonzero, np.asarray(dead_inputs, dtype=np.int64))
        for which, section, what in ((~dead, "§2.1", "columns the reference removed"),
                                     (dead, "§2.4", "dead inputs (diag H = 0), which the reference zeroed,")):
            if which.any():
                cols_ = nonzero[which]
                msgs.append(f"{name}: {what} must be exactly 0.0, but {_short(cols_.tolist())} are not "
                            f"(largest |value| {float(np.max(np.abs(a[:, cols_]))):.3e}; spec {section})")
    allowed = tol["atol"] + tol["rtol"] * np.abs(np.where(fin, expected, 0.0))
    over = diff > allowed
    if over.any():
        worst = np.unravel_index(int(np.argmax(diff - allowed)), diff.shape)
        where_ = tuple(int(i) for i in worst)
        msgs.append(f"{name}: {int(over.sum())} of {diff.size} entries out of tolerance; "
                    f"max abs err {max_abs:.3e} (allowed there {float(allowed[worst]):.3e} = atol {tol['atol']:.2e} "
                    f"+ rtol {tol['rtol']:.0e} * |expected|), "
                    f"{'expected all 0.0' if np.isnan(max_rel) else f'max rel err {max_rel:.3e}'}; "
                    f"worst at {where_}: expected {expected[worst]:.10g}, got {a[worst]:.10g}")
    return not msgs, "\n".join(msgs), max_abs, max_rel


_SHORT = 12  # values listed in a message before it is cut


def _short(values: list, n: int = _SHORT) -> str:
    return str(values) if len(values) <= n else f"[{', '.join(map(str, values[:n]))}, ... ({len(values)} values)]"


def check(directory, impl, *, profile: str = "float64", operations=None, backend: str | None = None,
          tags=None, skip_tags=None, case_ids=None, debug: bool = False) -> CheckResult:
    """Run `impl`'s functions over the exported cases in `directory`.

    impl: module, module name, path to a .py file, or dict of functions (reference names, or the
    shape its ORACLE_MAP declares). profile: "float64" (each case's tolerance), "float32" (looser;
    float64-only cases skipped) or "published-code" (float32, cases tagged project skipped).
    operations / tags: only cases of these operations / with at least one of these tags;
    skip_tags: leave out cases with any of these tags; case_ids: only these cases. backend: passed as backend=... (slimgpt.ops).
    debug: failures carry the implementation's own traceback. A missing function, one that raises
    NotImplementedError or a setting the map declares unsupported counts as not implemented.
    Only the selected cases' files are read; a damaged one is that case's FAIL. Filters that
    together leave no case to check are a ValueError, like unknown names.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    entries = _entries(directory)
    _check_names("operation", operations, {e["operation"] for e in entries})
    known_tags = {t for e in entries for t in e["tags"]}
    _check_names("tag", tags, known_tags)
    _check_names("tag", skip_tags, known_tags)
    _check_names("case", case_ids, {e["id"] for e in entries})
    skip = set(skip_tags or ()) | set(PROFILE_SKIP_TAGS[profile])
    module, label = load_implementation(impl)
    if backend is not None:
        label += f" (backend={backend})"
    adapter = Adapter(module, label, {"backend": backend} if backend is not None else {})
    selected = [e for e in entries if (operations is None or e["operation"] in operations)
                and (not tags or set(tags) & set(e["tags"])) and (case_ids is None or e["id"] in case_ids)]
    if not any(set(e["tags"]).isdisjoint(skip) for e in selected):
        filters = [f"{flag} {v}" for flag, given in (("--op", operations), ("--tag", tags), ("--skip-tag", skip_tags),
                                                      ("case", case_ids), ("--profile", [profile] if
                                                                           PROFILE_SKIP_TAGS[profile] else []))
                   for v in sorted(given or ())]
        raise ValueError(f"the filters ({', '.join(filters)}) match no case to check" if filters
                         else f"{directory} holds no case to check")
    return CheckResult(label, profile, [_check_case(e, directory, adapter, profile, skip, debug) for e in selected],
                       problems=adapter.problems)


def _entries(directory) -> list[dict]:
    """The index's case entries (their arrays are read only for the cases checked)."""
    entries = read_index(directory)["cases"]
    if not all(isinstance(e, dict) and isinstance(e.get("id"), str) and e.get("operation") in OPERATIONS
               and isinstance(e.get("tags"), list) for e in entries):
        raise OracleFormatError(f"{directory}/index.json is damaged (a case without an id, a known operation "
                                f"or tags); export the cases again")
    return entries


def _check_names(what: str, given, known: set) -> None:
    unknown = sorted(set(given or ()) - known)
    if unknown:
        raise ValueError(f"unknown {what}(s) {', '.join(unknown)}; the cases have {', '.join(sorted(known))}")


def _check_case(entry, directory, adapter: Adapter, profile, skip, debug) -> CaseResult:
    """Load one case, run it and compare every output; damaged files are this case's failure."""
    op = entry["operation"]
    res = CaseResult(entry["id"], op, PASS, description=entry.get("description", ""))
    fn = adapter.function(op)
    if fn is None:
        res.status, res.message = NOT_IMPLEMENTED, f"{adapter.label} has no function for {op}"
        return res
    numeric = PROFILE_TOLERANCES[profile]
    if numeric not in entry["profiles"] or skip & set(entry["tags"]):
        why = (f"tagged {', '.join(sorted(skip & set(entry['tags'])))}" if skip & set(entry["tags"])
               else f"float64-only (not in profile {profile})")
        res.status, res.message = SKIPPED, f"case is {why}"
        return res
    try:
        args, expected = load_case(directory, entry)
    except OracleFormatError as e:
        res.status, res.message = FAIL, f"{e}: export the cases again"
        return res
    try:
        pos, kw = adapter.bind(op, fn, copy_args(args))
    except NotSupported as e:
        res.status, res.message = NOT_IMPLEMENTED, str(e)
        return res
    except AdapterProblem as e:
        res.status, res.message = ADAPTER, str(e)
        return res
    before = _array_snapshots(adapter.positional_names(op), pos, kw)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn(*pos, **kw)
    except NotImplementedError as exc:
        res.status, res.message = NOT_IMPLEMENTED, f"{op} raised NotImplementedError {exc}".strip()
        return res
    except Exception as exc:  # noqa: BLE001 - reported per case
        res.seconds = time.perf_counter() - t0
        return _raised(res, entry, adapter, exc, debug)
    res.seconds = time.perf_counter() - t0
    res.warnings += [f"modified input {name}: the implementation wrote into an array it was given (a caller's "
                     f"weights or Hessian would change under it)" for name, value, copy in before
                     if not np.array_equal(to_numpy(value), copy, equal_nan=copy.dtype.kind == "f")]
    if "raises" in entry:
        res.status, res.message = FAIL, f"expected an error of kind {_kind(entry)} to be raised, but the call returned"
        return res
    try:
        outs = adapter.outputs(op, result)
        _check_kinds(entry, outs, expected)
    except AdapterProblem as e:
        res.status, res.message = ADAPTER, str(e)
        return res
    return _compare_outputs(res, entry, args, outs, expected, numeric, profile)


def _compare_outputs(res: CaseResult, entry: dict, args: dict, outs: list, expected: dict, numeric: str,
                     profile: str):
    """Judge every output with its comparison and tolerance; warn on non-float64 results (float64 profile).
    A wrong selection is reported first: the weights then differ because of it."""
    msgs, abs_errs, rel_errs = [], [], []
    for o, value in zip(entry["outputs"], outs):
        tol = o.get("tolerances", {}).get(numeric)
        ok, msg, ea, er = compare_output(o["name"], o["compare"], value, expected[o["name"]], tol,
                                         o.get("exact_zero_columns"), _dead_inputs(args))
        if not ok:
            msgs.append((o["compare"] not in ("index_set", "index_sets"), msg))
        if not np.isnan(ea):
            abs_errs.append(ea)
        if not np.isnan(er):
            rel_errs.append(er)
        dtype = getattr(value, "dtype", None)
        if profile == "float64" and o["compare"] == "float" and dtype is not None and str(dtype) not in (
                "float64", "torch.float64"):
            res.warnings.append(f"{o['name']} is {dtype}, not float64: the float64 profile expects float64 results "
                                f"(a float32 implementation: --profile float32)")
    if abs_errs:
        res.max_abs_err = max(abs_errs)
    if rel_errs:
        res.max_rel_err = max(rel_errs)
    if msgs:
        res.status, res.message = FAIL, "\n".join(m for _, m in sorted(msgs, key=lambda m: m[0]))
    return res


def _dead_inputs(args: dict) -> np.ndarray:
    """Input columns with diag H = 0 (an all-zero column of X): zeroed as dead inputs (spec §2.4)."""
    H, X = args.get("H"), args.get("X")
    if isinstance(H, np.ndarray) and H.ndim == 2:
        return np.flatnonzero(np.diag(H) == 0)
    if isinstance(X, np.ndarray) and X.ndim == 2:
        return np.flatnonzero(np.all(X == 0, axis=0))
    return np.zeros(0, dtype=np.int64)


def _array_snapshots(pos_names: list, pos: list, kw: dict) -> list:
    """(name, value, copy) for every array argument of a call (dicts of arrays entry by entry)."""
    out = []
    for name, value in [*zip(pos_names, pos), *kw.items()]:
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, v in items:
            if isinstance(v, np.ndarray) or hasattr(v, "detach"):
                out.append((name if key is None else f"{name}[{key!r}]", v, to_numpy(v).copy()))
    return out


def _kind(entry: dict) -> str:
    return entry.get("error_kind") or entry["raises"]


def _raised(res: CaseResult, entry: dict, adapter: Adapter, exc: Exception, debug: bool) -> CaseResult:
    """The implementation raised: the expected error, an adapter problem, or a failure."""
    if raised_at_call(exc):
        res.status = ADAPTER
        res.message = f"signature mismatch: calling {entry['operation']} raised TypeError: {exc}"
        return res
    if "raises" in entry and (adapter.error_kind(exc) == _kind(entry) or entry["raises"] in
                              [c.__name__ for c in type(exc).__mro__]):
        return res  # the expected error
    res.status = FAIL
    res.message = (f"raised {type(exc).__name__}: {exc} (at {where(exc)})"
                   + (f"; expected an error of kind {_kind(entry)} (map {type(exc).__name__} to it in "
                      f"ORACLE_MAP['errors'] if it is one)" if "raises" in entry else ""))
    if debug:
        res.message += "\n" + implementation_traceback(exc)
    return res


def _check_kinds(entry: dict, outs: list, expected: dict) -> None:
    """Index outputs given as boolean masks, integer outputs as floats, or values that are not arrays
    at all: adapter problems."""
    for o, value in zip(entry["outputs"], outs):
        if value is None:
            raise AdapterProblem(f"{o['name']}: the implementation returned None")
        try:
            a = to_numpy(value)
        except Exception as e:  # noqa: BLE001
            raise AdapterProblem(f"{o['name']}: cannot convert {type(value).__name__} to an array ({e})") from None
        if a.dtype == object:
            raise AdapterProblem(f"{o['name']}: {type(value).__name__} is not a numeric array")
        if o["compare"] in ("index_set", "index_sets"):
            e = expected[o["name"]]
            mask_like = a.dtype == bool or (a.size > max(e.size, 2) and set(np.unique(a).tolist()) <= {0, 1})
            if mask_like:
                raise AdapterProblem(f"{o['name']}: got a boolean mask of {a.size} values; return the indices "
                                     f"(e.g. np.flatnonzero(mask)), {e.size} expected here")
        if o["compare"] != "float" and a.size and a.dtype.kind not in "iu":
            raise AdapterProblem(f"{o['name']}: got {a.dtype} values; return integers (int64"
                                 f"{', 0-based indices' if o['compare'] != 'exact' else ''})")
