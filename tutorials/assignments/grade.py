"""Grade a SlimGPT assignment: run a student's module on the golden cases, task by task.

Run:
    python tutorials/assignments/grade.py tutorials/assignments/student.py
    python tutorials/assignments/grade.py my_solution.py --cases golden/     # reuse exported cases
    python tutorials/assignments/grade.py my_solution.py --task 3 -v         # one task, all messages

Prints, per task, the cases passed, the points, and for each failure what went wrong (which
output, max error against the tolerance, which indices differed) plus a hint. Exits 0 when the
score reaches --pass-score (default 100), 1 otherwise, 2 on bad command-line input.

How a submission is run (README.md, "How the grader runs your code"): in a separate Python
process (_runner.py, `python -I -S`) that cannot import slimgpt or read the repository, on
input-only copies of the cases in a fresh temporary directory; it hands back the returned arrays,
the exceptions and the warnings, and this process compares them with the expected outputs
(slimgpt.oracle.compare_output). Each call gets --timeout seconds; a hang or a crash of the
worker fails the case it was running and the worker is restarted for the others. Besides the
outputs, Task 2 checks that prune_columns and prune_columns_cholesky factor the reordered H⁻¹
(the Cholesky form of docs/spec.md §2.3), and every case checks DampingWarning (spec §2.4).

The expected outputs come from slimgpt.reference (float64); see docs/oracle.md for the format.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimgpt import oracle
from slimgpt.reference.damping import prepare_hessian
from slimgpt.testing import TOLERANCES

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "_runner.py"
REPOSITORY = HERE.parents[1]
DEFAULT_TIMEOUT = 60.0          # seconds per call (and for importing the submission)
STARTUP_ALLOWANCE = 60.0        # seconds for the worker to start Python and import NumPy/SciPy

# (number, title, operations, points), in the order of README.md
TASKS = [
    (1, "Hessian (Eq. 1)", ["hessian", "accumulate_hessian"], 10),
    (2, "Column OBS and the Cholesky form (Eqs. 3-4)", ["prune_columns_naive", "prune_columns",
                                                        "prune_columns_cholesky", "reconstruction_error"], 25),
    (3, "Head errors with the grouped Cholesky (Eq. 5)", ["head_errors"], 15),
    (4, "Batched greedy head pruning (Algorithm 1)", ["prune_heads"], 20),
    (5, "Dynamic Group Size and channel pruning", ["dgs_group_sizes", "prune_channels"], 20),
    (6, "Incremental Pruning Ratio (Eq. 6)", ["ipr_ratios", "ipr_for_target"], 10),
]

# Operations whose compensating cases must use the Cholesky form (spec §2.3).
CHOLESKY_OPS = ("prune_columns", "prune_columns_cholesky")

# Hints for a failed case, matched by case-id fragments; the first match wins.
HINTS = [
    ("correlated_head_no_gcd", "with gcd=False use the plain diagonal G[c, c] of H^-1"),
    ("correlated_head", "summing single-column errors with the plain diag(H^-1) is the -GCD ablation; "
                        "use L_j = chol(G[C_j, C_j]) and divide by L_j[k, k]^2 (Eq. 5)"),
    ("gcd_matters", "head selection must use the grouped-Cholesky head error (Eq. 5), recomputed "
                    "from a fresh H^-1 every iteration"),
    ("no_compensate", "compensate=False: zero the pruned columns (and dead inputs), leave the others"),
    ("dead", "dead inputs (diag H == 0): set H[q,q] = 1 and W[:, q] = 0 before anything else"),
    ("damping_retry", "when the Cholesky fails, retry with the next RETRY_PERCDAMP and warn "
                      "DampingWarning(message, percdamp=the damping used, requested=the one asked for)"),
    ("not_positive_definite", "raise NotPositiveDefiniteError when no damping on the ladder helps"),
    ("damped", "damping adds percdamp * mean(diag H) to the diagonal (after the dead-input fix)"),
    ("gqa", "head_groups: every KV group loses n_prune / n_groups heads; skip groups at quota"),
    ("scaled_H", "the result must not depend on the scale of H"),
    ("reconstruction_error", "1/2 tr((W - W_new) H (W - W_new)^T)"),
    ("accumulate", "running mean: (n_seen * H + 2 X^T X) / (n_seen + n); H=None starts fresh"),
    ("dgs_group_sizes", "b0 = (T - 512) // 2; g = min(T - done, max(b, 64), 1024); b = (b - 512) // 2"),
    ("fixed_group", "group_sizes as an int g means groups of g, the last one smaller"),
    ("ipr_for_target", "last = first + (target - first) / c, c = lgamma(n + 1) / (n log n) for log, 1/2 linear"),
    ("first_above_last", "raise ValueError when first > last"),
    ("ipr_ratios", "Eq. (6) divides by log(n_layers); decrease strategies reverse the list"),
    ("head_errors", "E_j = sum_k ||W[:, j*d + k]||^2 / L_j[k, k]^2 with L_j = chol(G[C_j, C_j]), G = Hinv (Eq. 5)"),
    ("hessian", "H = 2 X^T X / n with X (n, d_in), float64"),
    ("prune_heads", "one head per iteration: fresh H^-1, head errors of the current W, remove the "
                    "cheapest head with the Cholesky update, then identity rows/columns in H"),
    ("prune_channels", "each group: fresh H^-1, errors ||W[:,c]||^2 / G[c,c], the g smallest jointly"),
    ("prune_columns_cholesky.survivors", "survivors=K: only K gets the global update; columns in neither "
                                         "S nor K are left as they are"),
    ("prune_columns_cholesky", "spec §2.3 on the given G: order = S then K, U = chol(G[order, order])^T, "
                               "e_i = W[:, s_i] / U[i, i], losses[i] = ||e_i||^2 (in the order of S)"),
    ("prune_columns", "OBS: W -= (W[:, q] / G[q, q]) outer G[q, :], then downdate G (Eq. 3)"),
]
CHOLESKY_HINT = ("the Cholesky form of docs/spec.md §2.3 is required: put S first (in the given order), "
                 "factor the reordered H^-1 (or its leading block G[S, S]) with np.linalg.cholesky or "
                 "scipy.linalg.cholesky, then the local loop and one global update; the explicit inverse "
                 "with rank-1 downdates (prune_columns_naive) does not count")
WARNING_HINT = ("spec §2.4: warn DampingWarning(message, percdamp=the damping used, requested=the one asked "
                "for) exactly when the requested damping failed and a larger one on RETRY_PERCDAMP worked")


class GradingError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


@dataclass
class GradedCase(oracle.CaseResult):
    hint: str = ""


@dataclass
class GradeResult(oracle.CheckResult):
    load_error: str = ""   # set when nothing could be graded (the submission did not load)


@dataclass
class TaskScore:
    number: int
    title: str
    passed: int
    total: int
    points: float
    max_points: int
    failures: list  # GradedCase
    not_implemented: int


def hint(case_id: str) -> str:
    return next((h for key, h in HINTS if key in case_id), "")


def task_operations(tasks=None) -> list[str]:
    return [op for number, _, ops, _ in TASKS if not tasks or number in tasks for op in ops]


# ------------------------------------------------------------------------------------------------
# Grading


def grade(student, cases_dir=None, tasks=None, timeout: float = DEFAULT_TIMEOUT):
    """Return (score out of 100, [TaskScore], GradeResult). GradingError for bad input."""
    student = Path(student)
    if not student.is_file():
        raise GradingError(f"{student}: no such file (give the path to your .py file)")
    if student.suffix != ".py":
        raise GradingError(f"{student}: not a .py file")
    ops = task_operations(tasks)
    with tempfile.TemporaryDirectory(prefix="slimgpt-grade-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        if cases_dir is None:
            cases = [c for c in oracle.build_cases() if c.operation in ops]
            items = [(c.id, c.operation, oracle.SIGNATURES[c.operation], _export_args(c.args)) for c in cases]
            guard_cases, digest = [], None
        else:
            cases_dir = Path(cases_dir)
            try:
                entries = [e for e in oracle.read_index(cases_dir)["cases"] if e["operation"] in ops]
                items = [(e["id"], e["operation"], e["positional"], _input_args(cases_dir, e)) for e in entries]
            except (oracle.OracleFormatError, KeyError, TypeError) as e:
                raise GradingError(f"{cases_dir}: not a usable oracle export ({e})") from None
            guard_cases, digest = [str(cases_dir.resolve())], _digest(cases_dir, entries)
        keys = _write_inputs(work, student, items)
        worker = _run_worker(work, work / "submission" / student.name, keys, timeout, _guard(guard_cases))
        if digest is not None and _digest(cases_dir, entries) != digest:
            worker = {"load_error": f"the files in {cases_dir} changed while the submission ran; not graded",
                      "done": {}, "problems": {}}
        if worker["load_error"]:
            results = [GradedCase(case_id, op, oracle.FAIL, "not run: the submission could not be graded")
                       for case_id, op, *_ in items]
        else:
            if cases_dir is None:
                expected_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="expected-"))  # made after the worker ended
                oracle.export(expected_dir, cases=cases)
            else:
                expected_dir = cases_dir
            try:
                loaded = {entry["id"]: (entry, args, expected) for entry, args, expected
                          in oracle.load_cases(expected_dir) if entry["operation"] in ops}
            except oracle.OracleFormatError as e:
                raise GradingError(str(e)) from None
            results = [_judge_safely(*loaded[case_id], worker, key, work) for key, (case_id, *_) in zip(keys, items)]
    result = GradeResult(str(student), "float64", results, worker["load_error"] or "")
    scores = []
    for number, title, task_ops, points in TASKS:
        if tasks and number not in tasks:
            continue
        mine = [c for c in results if c.operation in task_ops]
        passed = sum(c.status == oracle.PASS for c in mine)
        scores.append(TaskScore(number, title, passed, len(mine), points * passed / max(len(mine), 1), points,
                                [c for c in mine if c.status == oracle.FAIL] if not result.load_error else [],
                                sum(c.status == oracle.NOT_IMPLEMENTED for c in mine)))
    total = sum(s.points for s in scores) * 100 / max(sum(s.max_points for s in scores), 1)
    return total, scores, result


def _export_args(args: dict) -> dict:
    """A case's arguments with arrays in the exported dtypes (int64 indices, float64 otherwise)."""
    return {k: ((v.astype(np.int64) if v.dtype.kind in "iu" else v.astype(np.float64))
                if isinstance(v, np.ndarray) else v) for k, v in args.items()}


def _input_args(cases_dir: Path, entry: dict) -> dict:
    """Only the inputs of an exported case: the `in.*` arrays its arguments name, never `out.*`."""
    args, refs = {}, {}
    for name, value in entry["arguments"].items():
        if isinstance(value, dict):
            if not str(value.get("array", "")).startswith("in."):
                raise oracle.OracleFormatError(f"case {entry['id']}: argument {name} is not an in.* array")
            refs[name] = value["array"]
        else:
            args[name] = value
    arrays = oracle.read_arrays(cases_dir, entry, "in.")
    try:
        args.update({name: arrays[key] for name, key in refs.items()})
    except KeyError as e:
        raise oracle.OracleFormatError(f"case {entry['id']} is damaged ({e})") from None
    return args


def _digest(cases_dir: Path, entries: list) -> str:
    h = hashlib.sha256()
    for path in [cases_dir / "index.json"] + [p for e in entries for p in oracle.case_files(cases_dir, e)]:
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"\0missing\0" + str(path).encode())
    return h.hexdigest()


def _write_inputs(work: Path, student: Path, items: list) -> list[str]:
    """The worker's view of the cases: opaque keys, the arguments, no outputs and no tolerances;
    and a copy of the submission (so that its own folder is not on any path)."""
    (work / "cases").mkdir()
    (work / "out").mkdir()
    (work / "submission").mkdir()
    shutil.copyfile(student, work / "submission" / student.name)
    index, keys = [], []
    for i, (case_id, op, positional, args) in enumerate(items):
        key = f"c{i:03d}"
        arrays, arguments = {}, {}
        for name, value in args.items():
            if isinstance(value, np.ndarray):
                arrays[f"in.{name}"] = value
                arguments[name] = {"array": f"in.{name}"}
            else:
                arguments[name] = value
        np.savez(work / "cases" / f"{key}.npz", **arrays)
        record = None
        if op in CHOLESKY_OPS and "columns" in args:
            record = int(np.asarray(args["columns"]).size)
        index.append({"key": key, "operation": op, "positional": list(positional), "arguments": arguments,
                      "outputs": [name for name, _ in oracle.OUTPUTS[op]], "file": f"{key}.npz",
                      "record_block": record})
        keys.append(key)
    (work / "cases" / "index.json").write_text(json.dumps({"cases": index}))
    return keys


def _guard(cases: list[str]) -> dict:
    """What the worker keeps the submission away from, and where NumPy/SciPy live."""
    import slimgpt
    from slimgpt import reference

    real = os.path.realpath
    package = {real(p) for p in slimgpt.__path__} | {real(Path(slimgpt.__file__).parent),
                                                     real(Path(reference.__file__).parent)}
    try:
        core = importlib.util.find_spec("slimgpt._core")
        if core is not None and core.origin:
            package.add(real(Path(core.origin).parent))
    except (ImportError, ValueError):
        pass
    repository = [real(REPOSITORY)] if (REPOSITORY / "reference").is_dir() or (REPOSITORY / "slimgpt").is_dir() else []
    site_dirs = []
    for name in ("numpy", "scipy"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            site_dirs.append(str(Path(spec.origin).resolve().parents[1]))
    site_dirs += [d for d in getattr(site, "getsitepackages", lambda: [])() if os.path.isdir(d)]
    site_dirs = list(dict.fromkeys(site_dirs))
    paths = sysconfig.get_paths()
    allowed = [real(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    allowed += [real(d) for d in site_dirs]
    return {"package": sorted(package), "repository": repository, "cases": cases,
            "allowed": list(dict.fromkeys(allowed)), "site_dirs": site_dirs}


# ------------------------------------------------------------------------------------------------
# The worker process


def _run_worker(work: Path, submission: Path, keys: list[str], timeout: float, guard: dict) -> dict:
    """Run the worker until every case is done, failed by a timeout or crash, or skipped.

    Returns {"done": key -> the worker's report, "problems": key -> message, "load_error": str}."""
    index = {c["key"]: c for c in json.loads((work / "cases" / "index.json").read_text())["cases"]}
    done, problems, load_error = {}, {}, ""
    todo, run = list(keys), 0
    while todo and not load_error:
        run += 1
        progress = work / f"progress{run}.jsonl"
        config = work / f"config{run}.json"
        config.write_text(json.dumps({
            "workdir": str(work), "submission": str(submission),
            "module": "_slimgpt_submission", "cases_dir": str(work / "cases"), "outputs_dir": str(work / "out"),
            "progress": str(progress), "todo": todo, "site_dirs": guard["site_dirs"],
            "guard": {k: guard[k] for k in ("package", "repository", "cases", "allowed")}}))
        events, outcome, current = _watch(work, config, progress, timeout)
        current = current if current in index else None
        loaded = any(e.get("event") == "loaded" for e in events)
        for e in events:
            if e.get("event") == "done" and e.get("key") in index:
                done[e["key"]] = e
            elif e.get("event") == "load_error" and isinstance(e.get("error"), dict):
                err = e["error"]
                load_error = (f"cannot load the submission: {err.get('type')}: {err.get('message')}"
                              + (f" (at {err['where']})" if err.get("where") else ""))
        if load_error or outcome == "finished":
            break
        if not loaded:
            load_error = ("importing the submission took longer than the time limit "
                          f"({timeout:g} s): an endless loop at module level?" if outcome == "timeout" else
                          f"the worker process ended while importing the submission ({outcome}): "
                          "sys.exit/os._exit/a crash at import time; nothing could be graded")
            break
        if current is not None:
            op = index[current]["operation"]
            if outcome == "timeout":
                problems[current] = (f"timed out after {timeout:g} s (an endless loop?); the other cases of "
                                     f"{op} were not run")
                for k in todo:
                    if k not in done and k != current and index[k]["operation"] == op:
                        problems[k] = f"not run: {op} timed out on an earlier case"
            else:
                problems[current] = (f"the worker process running {op} died ({outcome}): os._exit, a crash or "
                                     "running out of memory ends it")
        left = [k for k in todo if k not in done and k not in problems]
        if left == todo:  # died between cases: no progress, do not loop
            for k in left:
                problems[k] = f"not run: the worker process died ({outcome})"
            left = []
        todo = left
    return {"done": done, "problems": problems, "load_error": load_error}


def _watch(work: Path, config: Path, progress: Path, timeout: float):
    """Start one worker and follow its progress. Returns (events, outcome, key running at the end);
    outcome is "finished", "timeout" or how the process ended."""
    state = {"events": [], "current": None, "buffer": b"", "offset": 0, "outcome": None,
             "phase": time.monotonic(), "limit": STARTUP_ALLOWANCE + timeout}

    def read():
        if not progress.exists():
            return
        with open(progress, "rb") as f:
            f.seek(state["offset"])
            chunk = f.read()
        state["offset"] += len(chunk)
        *lines, state["buffer"] = (state["buffer"] + chunk).split(b"\n")
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if not isinstance(e, dict) or not isinstance(e.get("key", ""), str):
                continue
            state["events"].append(e)
            kind = e.get("event")
            if kind in ("armed", "loaded", "start", "done"):
                state["phase"], state["limit"] = time.monotonic(), timeout
            if kind == "start":
                state["current"] = e.get("key")
            elif kind == "done":
                state["current"] = None
            elif kind in ("finished", "load_error"):
                state["outcome"] = "finished"

    log = open(work / "worker.log", "ab")
    popen = dict(cwd=work, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    if os.name == "posix":
        popen["start_new_session"] = True  # its own process group, killed as a whole
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(RUNNER), str(config)], **popen)
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                rc = None
            read()
            if rc is not None:
                outcome = state["outcome"] or _describe_exit(rc, work / "worker.log")
                break
            if time.monotonic() - state["phase"] > state["limit"]:
                _kill(proc)
                read()  # what it managed to report before it was stopped
                outcome = state["outcome"] or "timeout"
                break
    finally:
        _kill(proc)
        log.close()
    return state["events"], outcome, state["current"]


def _kill(proc):
    """Kill the worker (and its process group) if it is still running; reap it."""
    if proc.poll() is None:
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _describe_exit(rc: int, log: Path) -> str:
    if rc < 0:
        try:
            what = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            what = f"killed by signal {-rc}"
    else:
        what = f"exit code {rc}"
    try:
        tail = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        tail = []
    if tail and ("error" in tail[-1].lower() or "fault" in tail[-1].lower()):
        what += f"; it said: {tail[-1][:200]}"
    return what


# ------------------------------------------------------------------------------------------------
# Judging one case


def _judge_safely(entry: dict, args: dict, expected: dict, worker: dict, key: str, work: Path) -> GradedCase:
    """_judge, with a report the worker garbled (the submission can write to its files) as a failure."""
    try:
        return _judge(entry, args, expected, worker, key, work)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        return GradedCase(entry["id"], entry["operation"], oracle.FAIL,
                          f"the worker's report for this case is malformed ({type(e).__name__}: {e})")


def _judge(entry: dict, args: dict, expected: dict, worker: dict, key: str, work: Path) -> GradedCase:
    op = entry["operation"]
    res = GradedCase(entry["id"], op, oracle.PASS)
    if key in worker["problems"]:
        res.status, res.message = oracle.FAIL, worker["problems"][key]
        return res
    rec = worker["done"].get(key)
    if rec is None:
        res.status, res.message = oracle.FAIL, "not run"
        return res
    status = rec.get("status")
    res.seconds = float(rec.get("seconds") or 0.0)
    if status == "missing":
        res.status, res.message = oracle.NOT_IMPLEMENTED, f"the submission has no function {op}"
        return res
    if status == "error":
        err = rec.get("error") or {}
        mro = err.get("mro") or []
        if "NotImplementedError" in mro:
            res.status, res.message = oracle.NOT_IMPLEMENTED, f"{op} raised NotImplementedError"
            return res
        if "raises" in entry and entry["raises"] in mro:
            return res  # the expected error
        res.status = oracle.FAIL
        res.message = (f"raised {err.get('type')}: {err.get('message')}"
                       + (f" (at {err['where']})" if err.get("where") else "")
                       + (f"; expected {entry['raises']}" if "raises" in entry else ""))
        res.hint = hint(res.id)
        return res
    if "raises" in entry:
        res.status, res.message = oracle.FAIL, f"expected {entry['raises']} to be raised, but the call returned"
        res.hint = hint(res.id)
        return res
    if status != "returned":
        res.status, res.message = oracle.FAIL, str(rec.get("message", "the worker reported no result"))
        return res
    try:
        with np.load(work / "out" / f"{key}.npz", allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        res.status, res.message = oracle.FAIL, f"the worker's result for this case is unreadable ({e})"
        return res
    output_msgs, abs_errs, rel_errs = [], [], []
    for o in entry["outputs"]:
        if f"out.{o['name']}" not in data:
            output_msgs.append(f"{o['name']}: missing from the result")
            continue
        ok, msg, ea, er = oracle.compare_output(o["name"], o["compare"], data[f"out.{o['name']}"],
                                                expected[o["name"]], o.get("tolerances", {}).get("float64"))
        if not ok:
            output_msgs.append(msg)
        if not np.isnan(ea):
            abs_errs.append(ea)
            rel_errs.append(er)
    if abs_errs:
        res.max_abs_err, res.max_rel_err = max(abs_errs), max(rel_errs)
    chol_msg = _cholesky_check(entry, args, data, rec)
    warn_msg = _warning_check(entry, args, rec)
    msgs = output_msgs + [m for m in (chol_msg, warn_msg) if m]
    if msgs:
        res.status, res.message = oracle.FAIL, "\n".join(msgs)
        res.hint = hint(res.id) if output_msgs else (CHOLESKY_HINT if chol_msg else WARNING_HINT)
    return res


def _cholesky_check(entry: dict, args: dict, data: dict, rec: dict) -> str:
    """'' when a factorisation of a matrix whose leading |S| x |S| block is G[S, S] (S in the given
    order) was recorded, or when the case needs none; the failure message otherwise."""
    op = entry["operation"]
    if op not in CHOLESKY_OPS or "raises" in entry or args.get("compensate", True) is False:
        return ""
    S = np.asarray(args["columns"], dtype=np.int64)
    if S.size == 0:
        return ""
    if op == "prune_columns_cholesky":
        G = np.asarray(args["Hinv"], dtype=np.float64)
        what = "G = Hinv"
    else:
        p = entry.get("percdamp_used", args.get("percdamp", 0.0))
        _, Hp = prepare_hessian(np.asarray(args["W"], dtype=np.float64), np.asarray(args["H"], dtype=np.float64), p)
        G = np.linalg.inv(Hp)
        what = f"G = H^-1 after the dead-input fix and damping {p:g}"
    want = G[np.ix_(S, S)]
    rtol, atol_rel = TOLERANCES["float32"]  # loose: only rounding may differ, G[S, S] or not is a big gap
    atol = atol_rel * float(np.max(np.abs(want)))
    blocks = [v for k, v in data.items() if k.startswith("chol.")]
    for b in blocks:
        if b.shape == want.shape and np.all(np.abs(b - want) <= atol + rtol * np.abs(want)):
            return ""
    seen = int(rec.get("factorisations") or 0)
    return (f"{op} did not use the Cholesky form: no Cholesky factorisation of G[S, S] ({what}, S = the "
            f"{S.size} pruned column(s) in the given order, as the leading block) was seen; "
            + (f"it factorised {seen} other matrix(es)" if seen else "it called no Cholesky at all"))


def _warning_check(entry: dict, args: dict, rec: dict) -> str:
    """'' when DampingWarning was warned exactly as the reference did (with the same percdamp)."""
    damping = [w for w in rec.get("warnings") or [] if isinstance(w, dict) and w.get("class") == "DampingWarning"]
    requested = args.get("percdamp", 0.0)
    if "DampingWarning" in entry.get("warns", []):
        want = entry.get("percdamp_used")
        if not damping:
            return (f"expected a DampingWarning with percdamp={want:g}: H is not positive definite at the "
                    f"requested percdamp={requested:g}, so the retry ladder (spec §2.4) must warn; none was warned")
        got = [w.get("percdamp") if isinstance(w.get("percdamp"), float) else None for w in damping]
        if want is not None and not any(isinstance(g, float) and math.isclose(g, want, rel_tol=1e-9, abs_tol=1e-15)
                                        for g in got):
            shown = ", ".join("no percdamp attribute" if g is None else f"{g:g}" for g in got)
            return (f"DampingWarning warned with percdamp = {shown}; expected percdamp={want:g} (the first "
                    f"damping on RETRY_PERCDAMP that works, as the attribute .percdamp)")
        return ""
    if damping:
        got = ", ".join(f"{w['percdamp']:g}" if isinstance(w.get("percdamp"), float) else "?" for w in damping)
        return (f"warned DampingWarning (percdamp={got}) but H is positive definite at the requested "
                f"percdamp={requested:g}: warn only when a retry was needed (spec §2.4)")
    return ""


# ------------------------------------------------------------------------------------------------
# Report and command line


def report(total, scores, verbose=False, load_error: str = "") -> str:
    lines = [load_error, ""] if load_error else []
    for s in scores:
        mark = "ok " if s.passed == s.total else ("-- " if s.passed == 0 and not s.failures else "XX ")
        lines.append(f"{mark}Task {s.number}: {s.title:<48} {s.passed:3d}/{s.total:<3d} cases  "
                     f"{s.points:5.1f}/{s.max_points} points")
        if s.not_implemented:
            lines.append(f"     {s.not_implemented} case(s) not implemented yet (NotImplementedError or missing)")
        for c in s.failures[: None if verbose else 3]:
            lines.append(f"     FAIL {c.id}")
            for m in c.message.splitlines():
                lines.append(f"          {m}")
            h = c.hint if isinstance(c, GradedCase) else hint(c.id)
            if h:
                lines.append(f"          hint: {h}")
        if not verbose and len(s.failures) > 3:
            lines.append(f"     ... and {len(s.failures) - 3} more failures (-v shows all)")
    lines.append(f"\nscore: {total:.1f} / 100")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("student", help="path to the student's .py file")
    p.add_argument("--cases", help="an exported oracle directory (default: the cases are built here)")
    p.add_argument("--task", type=int, action="append", help="grade only this task number (repeatable)")
    p.add_argument("--pass-score", type=float, default=100.0, help="exit 0 at or above this score")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds allowed per call and for importing the submission (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("-v", "--verbose", action="store_true", help="show every failure")
    args = p.parse_args(argv)
    known = {number for number, *_ in TASKS}
    try:
        if args.task and not set(args.task) <= known:
            raise GradingError(f"no task {sorted(set(args.task) - known)}; the tasks are {sorted(known)}")
        if not args.timeout > 0:
            raise GradingError(f"--timeout must be positive, got {args.timeout:g}")
        if args.cases is not None and not Path(args.cases).is_dir():
            raise GradingError(f"{args.cases}: no such directory (export one with `slimgpt oracle export DIR`)")
        total, scores, result = grade(args.student, args.cases, args.task, args.timeout)
    except GradingError as e:
        print(f"grade.py: error: {e}", file=sys.stderr)
        return 2
    print(report(total, scores, args.verbose, result.load_error))
    return 0 if total >= args.pass_score - 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
