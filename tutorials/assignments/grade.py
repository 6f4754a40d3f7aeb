"""Grade a SlimGPT assignment: run a student's module on the golden cases, task by task.

Run:
    python tutorials/assignments/grade.py tutorials/assignments/student.py   # Tasks 1-6, 100 points
    python tutorials/assignments/grade.py my_solution.py --unit 2            # one unit of the course
    python tutorials/assignments/grade.py my_solution.py --task 3 -v --hints 1
    python tutorials/assignments/grade.py my_solution.py --gradescope results.json

Prints, per task, the cases passed, the points, and the failures in dependency order (cases that
show the same mistake on one line): which output, the max error against the tolerance, which
indices differed, and a hint at --hints LEVEL chosen from what the output shows (_diagnose.py).
Exits 0 when the score reaches --pass-score percent of the graded points (default 100), 1
otherwise, 2 on bad command-line input (one line on stderr).

How a submission is run (README.md, "How the grader runs your code"): in a separate Python
process (_runner.py, `python -I -S`) in a private file tree without slimgpt or the expected
outputs where the machine allows it (_sandbox.py), guarded by an audit hook everywhere, on
input-only copies of the cases; it hands back the returned arrays, the exceptions and the
warnings, and this process compares them with the expected outputs (slimgpt.oracle). Each call
gets --timeout seconds; a hang or a crash fails the case it was running and a fresh worker runs
the others. Besides the values, Task 2 checks that the factor of the reordered H⁻¹ carries the
result (the Cholesky form of docs/spec.md §2.3), every case checks DampingWarning (spec §2.4), and
each task with weights checks that removed columns are exactly zero.

The expected outputs come from slimgpt.reference (float64): the oracle's cases (docs/oracle.md),
the grader's own (course_cases.py) and the course's questions and operations (units.py).
"""
from __future__ import annotations

import argparse
import ast
import difflib
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

import _diagnose
import _sandbox
import course_cases
import units
from slimgpt import oracle, reference
from slimgpt.reference.damping import NotPositiveDefiniteError, cholesky_inverse, prepare_hessian, retry_with_damping
from slimgpt.testing import tolerance

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "_runner.py"
REFERENCE_DIR = Path(reference.__file__).parent
REPOSITORY = HERE.parents[1]
DEFAULT_TIMEOUT = 60.0          # seconds per call (and for importing the submission)
STARTUP_ALLOWANCE = 60.0        # seconds for the worker to start Python and import NumPy/SciPy

# (number, title, operations, points), in the order of README.md; within a task the operations are
# in dependency order (later ones may call earlier ones), which is also the order failures are listed.
TASKS = [
    (1, "Hessian (Eq. 1)", ["hessian", "accumulate_hessian"], 10),
    (2, "Column OBS and the Cholesky form (Eqs. 3-4)", ["prune_columns_naive", "prune_columns_cholesky",
                                                        "prune_columns", "reconstruction_error"], 25),
    (3, "Head errors with the grouped Cholesky (Eq. 5)", ["head_errors"], 15),
    (4, "Batched greedy head pruning (Algorithm 1)", ["prune_heads"], 20),
    (5, "Dynamic Group Size and channel pruning", ["dgs_group_sizes", "prune_channels"], 20),
    (6, "Incremental Pruning Ratio (Eq. 6)", ["ipr_ratios", "ipr_for_target"], 10),
    # the course's units (units.py): questions, a constructed input, the fast algorithm
    (7, "Unit 1 questions (ANSWERS 1.x)", ["answers.q1."], 15),
    (8, "Unit 2: when the grouped Cholesky matters, questions", ["gcd_counterexample", "answers.q2."], 15),
    (9, "Unit 3 questions (ANSWERS 3.x)", ["answers.q3."], 10),
    (10, "One inverse, then exact set downdates (spec §3.4)", ["remove_set", "prune_heads_fast",
                                                               "prune_channels_fast"], 30),
    (11, "The layer-wise pipeline on a trained model (spec §6, Eq. 6)", ["model_perplexity", "prune_llama"], 30),
    (12, "The lazy L^-1 form of the C++ core, timed (spec §3.4, docs/cpp.md)",
     ["prune_heads_lazy", "prune_channels_lazy", "prune_heads.timing", "prune_heads_lazy.timing"], 20),
]
ASSIGNMENT = [1, 2, 3, 4, 5, 6]   # what a plain `grade.py SUBMISSION` grades: 100 points

# Operations whose compensating cases must use the Cholesky form (spec §2.3).
CHOLESKY_OPS = ("prune_columns", "prune_columns_cholesky")
PROBE_DAMPING = 0.1             # the probe adds this times mean(diag G[S, S]) to that block's diagonal (_runner.py)
# Outputs that are weights: their tolerance has a floor tied to max|W| of the input, and the
# columns the reference zeroes (removed columns, dead inputs) must be exactly zero.
WEIGHT_OUTPUTS = ("W_new",)
HINT_LEVELS = (0, 1, 2, 3)
TIMED = ".timing_"              # ids of the cases whose run times are compared (units.timing_cases)
# The lazy form's median time may be at most this times the re-inversion's: it is several times
# faster at units.TIMING_SIZE, so only a form that re-factors per head (or worse) fails, even on a
# loaded machine.
TIMING_MAX_RATIO = 1.0
units.register()

CHOLESKY_HINT = ("spec §2.3: the factor of the reordered H^-1 must carry the result; a Cholesky whose "
                 "result is not used, or the explicit inverse with rank-1 downdates, does not count")
WARNING_HINT = "spec §2.4: the damping retry and its DampingWarning"
ZEROS_HINT = "spec §2.3 and §2.4: a removed column (and a dead input) is exactly zero in W_new"


class GradingError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


@dataclass
class GradedCase(oracle.CaseResult):
    hint: str = ""
    pattern: str = ""     # the diagnosed mistake (_diagnose.PATTERNS), or ""
    kind: str = ""        # "output", "cholesky", "zeros", "warning", "error", "run"
    zeros: str = ""       # removed columns that are not exactly zero (its own assertion, per task)


@dataclass
class GradeResult(oracle.CheckResult):
    load_error: str = ""   # set when nothing could be graded (the submission did not load)
    isolation: str = ""
    note: str = ""         # for the instructor (copied_functions)


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
    cases: list = None  # every GradedCase of the task


def task_operations(tasks) -> list[str]:
    """The operations of these tasks (an entry "answers.q1." stands for the operation answers)."""
    return list(dict.fromkeys(op.split(".")[0] for number, _, ops, _ in TASKS if number in tasks for op in ops))


def _in_task(case_id: str, op: str, task_ops: list[str]) -> bool:
    """A case belongs to a task by its operation, or (questions, timing) by the prefix of its id;
    a timing case belongs only to the task that names its prefix."""
    return any(case_id.startswith(t) if "." in t else op == t and TIMED not in case_id for t in task_ops)


# ------------------------------------------------------------------------------------------------
# Grading


def grade(student, cases_dir=None, tasks=None, timeout: float = DEFAULT_TIMEOUT, hints: int = 0,
          isolation: str = "auto"):
    """Return (points, max points, [TaskScore], GradeResult). GradingError for bad input.

    isolation: "auto" (namespaces where this machine has them, see _sandbox.py) or "audit"."""
    student = Path(student)
    if student.is_dir():
        raise GradingError(f"{student}: is a directory (give the path to your .py file)")
    if not student.is_file():
        raise GradingError(f"{student}: no such file (give the path to your .py file)")
    if student.suffix != ".py":
        raise GradingError(f"{student}: not a .py file")
    how = _sandbox.mode() if isolation == "auto" else "audit"
    tasks = tasks or ASSIGNMENT
    ops = task_operations(tasks)
    chosen = [t for number, _, t, _ in TASKS if number in tasks]
    extra = [c for c in course_cases.build() + units.build(ops)
             if any(_in_task(c.id, c.operation, t) for t in chosen)]
    with tempfile.TemporaryDirectory(prefix="slimgpt-grade-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        if cases_dir is None:
            cases = [c for c in oracle.build_cases() if any(_in_task(c.id, c.operation, t) for t in chosen)]
            items = [(c.id, c.operation, oracle.SIGNATURES[c.operation], _export_args(c.args)) for c in cases]
            guard_cases, digest = [], None
        else:
            cases_dir = Path(cases_dir)
            try:
                entries = [e for e in oracle.read_index(cases_dir)["cases"]
                           if any(_in_task(e["id"], e["operation"], t) for t in chosen)]
                items = [(e["id"], e["operation"], e["positional"], _input_args(cases_dir, e)) for e in entries]
            except (oracle.OracleFormatError, KeyError, TypeError) as e:
                raise GradingError(f"{cases_dir}: not a usable oracle export ({e})") from None
            guard_cases, digest = [str(cases_dir.resolve())], _digest(cases_dir, entries)
        taken = {case_id for case_id, *_ in items}
        extra = [c for c in extra if c.id not in taken]  # an oracle case of the same name supersedes ours
        items += [(c.id, c.operation, oracle.SIGNATURES[c.operation], _export_args(c.args)) for c in extra]
        keys = _write_inputs(work, student, items)
        worker = _run_worker(work, work / "submission" / student.name, keys, timeout, _guard(guard_cases, how))
        if digest is not None and _digest(cases_dir, entries) != digest:
            worker = {"load_error": f"the files in {cases_dir} changed while the submission ran; not graded",
                      "done": {}, "problems": {}}
        if worker["load_error"]:
            results = [GradedCase(case_id, op, oracle.FAIL, "not run: the submission could not be graded", kind="run")
                       for case_id, op, *_ in items]
        else:
            # the expected outputs are made only after the worker has ended
            expected_dirs = [Path(tempfile.mkdtemp(dir=tmp, prefix="expected-course-"))]
            oracle.export(expected_dirs[0], cases=extra, reference=units.REFERENCE)
            if cases_dir is None:
                expected_dirs.append(Path(tempfile.mkdtemp(dir=tmp, prefix="expected-")))
                oracle.export(expected_dirs[-1], cases=cases, reference=units.REFERENCE)
            else:
                expected_dirs.append(cases_dir)
            loaded = {}
            for d in expected_dirs:
                try:
                    loaded.update({entry["id"]: (entry, args, exp) for entry, args, exp
                                   in oracle.load_cases(d) if entry["operation"] in ops})
                except oracle.OracleFormatError as e:
                    raise GradingError(str(e)) from None
            results = [_judge_safely(*loaded[case_id], worker, key, work, hints)
                       for key, (case_id, *_) in zip(keys, items)]
    result = GradeResult(str(student), "float64", results, worker["load_error"] or "", _sandbox.describe(how))
    scores = []
    for number, title, task_ops, points in TASKS:
        if number not in tasks:
            continue
        order = [t.split(".")[0] for t in task_ops]
        mine = sorted((c for c in results if _in_task(c.id, c.operation, task_ops)),
                      key=lambda c: order.index(c.operation))
        mine += _zeros_cases(mine, hints) + _timing_case(number, mine, hints)
        passed = sum(c.status == oracle.PASS for c in mine)
        scores.append(TaskScore(number, title, passed, len(mine), points * passed / max(len(mine), 1), points,
                                [c for c in mine if c.status == oracle.FAIL] if not result.load_error else [],
                                sum(c.status == oracle.NOT_IMPLEMENTED for c in mine), mine))
    return sum(s.points for s in scores), sum(s.max_points for s in scores), scores, result


def copied_functions(student: Path) -> list[str]:
    """The submission's functions whose code (docstrings and comments aside) is a near-verbatim copy
    of a function of slimgpt.reference: reported for the instructor, not graded."""
    def bodies(source: str) -> dict[str, str]:
        out = {}
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                body = node.body[1:] if (node.body and isinstance(node.body[0], ast.Expr)
                                         and isinstance(node.body[0].value, ast.Constant)) else node.body
                text = "\n".join(ast.unparse(b) for b in body)
                if text.count("\n") >= 4:  # a few lines are alike by necessity
                    out[node.name] = text
        return out

    try:
        mine = bodies(student.read_text(errors="replace"))
    except (SyntaxError, ValueError, OSError):
        return []
    theirs = [b for f in sorted(REFERENCE_DIR.glob("*.py")) for b in bodies(f.read_text()).values()]
    return [name for name, body in mine.items()
            if any(difflib.SequenceMatcher(None, body, ref, autojunk=False).ratio() >= 0.9
                   for ref in theirs if abs(len(ref) - len(body)) < 0.2 * len(ref))]


def _export_args(args: dict) -> dict:
    """A case's arguments with arrays in the exported dtypes (int64 indices, float64 otherwise)."""
    def exported(v):
        if isinstance(v, np.ndarray):
            return v.astype(np.int64) if v.dtype.kind in "iu" else v.astype(np.float64)
        if isinstance(v, dict) and v and all(isinstance(a, np.ndarray) for a in v.values()):
            return {k: exported(a) for k, a in v.items()}   # a model's weights
        return v

    return {k: exported(v) for k, v in args.items()}


def _input_args(cases_dir: Path, entry: dict) -> dict:
    """Only the inputs of an exported case: the `in.*` arrays its arguments name, never `out.*`."""
    args, refs = {}, {}
    for name, value in entry["arguments"].items():
        keys = ([value["array"]] if isinstance(value, dict) and set(value) == {"array"} else
                list(value["arrays"].values()) if isinstance(value, dict) and set(value) == {"arrays"} else [])
        if any(not str(key).startswith("in.") for key in keys):
            raise oracle.OracleFormatError(f"case {entry['id']}: argument {name} is not an in.* array")
        (refs if keys else args)[name] = value
    arrays = oracle.read_arrays(cases_dir, entry, "in.")
    try:
        args.update({name: arrays[value["array"]] if "array" in value else
                     {k: arrays[key] for k, key in value["arrays"].items()} for name, value in refs.items()})
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
    shutil.copyfile(RUNNER, work / RUNNER.name)  # the repository is not visible to the worker
    index, keys = [], []
    for i, (case_id, op, positional, args) in enumerate(items):
        key = f"c{i:03d}"
        arrays, arguments = {}, {}
        for name, value in args.items():
            if isinstance(value, np.ndarray):
                arrays[f"in.{name}"] = value
                arguments[name] = {"array": f"in.{name}"}
            elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
                arrays.update({f"in.{name}.{k}": v for k, v in value.items()})   # a model's weights
                arguments[name] = {"arrays": {k: f"in.{name}.{k}" for k in value}}
            else:
                arguments[name] = value
        np.savez(work / "cases" / f"{key}.npz", **arrays)
        target = _cholesky_target(op, args)
        if target is not None:
            np.savez(work / "cases" / f"{key}.probe.npz", **{"in.G_SS": target})
        index.append({"key": key, "operation": op, "positional": list(positional), "arguments": arguments,
                      "outputs": [name for name, _ in oracle.OUTPUTS[op]], "file": f"{key}.npz",
                      "probe": None if target is None else f"{key}.probe.npz"})
        keys.append(key)
    (work / "cases" / "index.json").write_text(json.dumps({"cases": index}))
    return keys


def _cholesky_problem(op: str, args: dict):
    """(W, G, S, K) of a case that must use the Cholesky form: W after the dead inputs, G the H^-1
    the reference factors (after the dead inputs, the damping and any retry), S the pruned columns
    in the given order, K the survivors (None: every other column); None for a case that needs no
    factorisation. It is derived from the inputs alone."""
    if op not in CHOLESKY_OPS or args.get("compensate", True) is False or "columns" not in args:
        return None
    S = np.asarray(args["columns"], dtype=np.int64)
    if S.size == 0:
        return None
    W = np.asarray(args["W"], dtype=np.float64)
    if op == "prune_columns_cholesky":
        K = args.get("survivors")
        return W, np.asarray(args["Hinv"], dtype=np.float64), S, None if K is None else np.asarray(K, dtype=np.int64)
    H = np.asarray(args["H"], dtype=np.float64)

    def inverse(p):
        W_p, H_p = prepare_hessian(W, H, p)
        return W_p, cholesky_inverse(H_p)
    try:
        (W, G), _ = retry_with_damping(inverse, H, float(args.get("percdamp", 0.0)), warn=False)
    except NotPositiveDefiniteError:
        return None
    return W, G, S, None


def _cholesky_target(op: str, args: dict):
    """G[S, S] (S in the given order) for a case that must use the Cholesky form, None otherwise;
    the worker may see it (it is derived from the inputs)."""
    problem = _cholesky_problem(op, args)
    return None if problem is None else problem[1][np.ix_(problem[2], problem[2])]


def _cholesky_prediction(op: str, args: dict) -> np.ndarray:
    """The weights the Cholesky form gives when every factorisation of G[S, S] is handed
    G[S, S] + delta I instead (what _runner.Recorder does in the probe run): the spec §2.3 formula
    W_K - W_S (G_SS + delta I)^-1 G_SK, computed by the reference with that G. A result that
    merely computes the factor, or adds a trace of it, does not move this way."""
    W, G, S, K = _cholesky_problem(op, args)
    G = G.copy()
    G[S, S] += PROBE_DAMPING * float(np.mean(np.diag(G)[S]))
    return reference.prune_columns_cholesky(W, G, S, survivors=K)[0]


def _guard(cases: list[str], isolation: str) -> dict:
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
            "allowed": list(dict.fromkeys(allowed)), "site_dirs": site_dirs, "isolation": isolation}


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
        events, outcome, current = _watch(work, config, progress, timeout, guard)
        current = current if current in index else None
        loaded = any(e.get("event") == "loaded" for e in events)
        for e in events:
            if e.get("event") == "done" and e.get("key") in index:
                done[e["key"]] = e
            elif e.get("event") == "load_error" and isinstance(e.get("error"), dict):
                err = e["error"]
                load_error = (f"cannot load the submission: {err.get('type')}: {err.get('message')}"
                              + (f" (at {err['where']})" if err.get("where") else "")
                              + "; an error while importing scores 0 on every task: compute the questions' "
                                "numbers in answers(), which the grader calls when it grades them")
        if load_error or outcome == "finished":
            break
        if not loaded:
            load_error = ("importing the submission took longer than the time limit "
                          f"({timeout:g} s): an endless loop or a long computation at module level (compute "
                          "the questions' numbers in answers(), not at import)?" if outcome == "timeout" else
                          f"the worker process ended while importing the submission ({outcome}): "
                          "sys.exit/os._exit/a crash at import time; nothing could be graded")
            break
        if current is not None:
            op = index[current]["operation"]
            if outcome == "timeout":
                problems[current] = (f"timed out after {timeout:g} s: the call exceeded the time limit (an "
                                     "endless loop, or a very large result to hand back?); the other cases of "
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


def _watch(work: Path, config: Path, progress: Path, timeout: float, guard: dict):
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
    progress.touch()
    argv = [os.path.realpath(sys.executable), "-I", "-S", str(work / RUNNER.name), str(config)]
    how = guard["isolation"]
    if how != "audit":
        _sandbox.prepare_workdir(work, [work / "out", progress], how)
        argv = _sandbox.command(how, argv, work, work.parent / "root",
                                guard["package"] + guard["repository"] + guard["cases"])
    proc = subprocess.Popen(argv, **popen)
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                rc = None
            read()
            if rc is not None:
                outcome = state["outcome"] or _describe_exit(_sandbox.exit_status(how, rc), work / "worker.log")
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


def _judge_safely(entry: dict, args: dict, expected: dict, worker: dict, key: str, work: Path,
                  hints: int) -> GradedCase:
    """_judge, with a report the worker garbled (the submission can write to its files) as a failure."""
    try:
        res = _judge(entry, args, expected, worker, key, work)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        res = GradedCase(entry["id"], entry["operation"], oracle.FAIL,
                         f"the worker's report for this case is malformed ({type(e).__name__}: {e})", kind="run")
    if res.status == oracle.FAIL:
        res.hint = _hint_text(res, hints)
    return res


def _hint_text(res: GradedCase, level: int) -> str:
    if res.kind == "cholesky":
        return CHOLESKY_HINT
    if res.kind == "warning":
        return WARNING_HINT
    if res.kind == "zeros":
        return ZEROS_HINT
    if res.kind == "run":
        return ""
    return _diagnose.hint(res.operation, res.pattern or None, level)


def _judge(entry: dict, args: dict, expected: dict, worker: dict, key: str, work: Path) -> GradedCase:
    op = entry["operation"]
    res = GradedCase(entry["id"], op, oracle.PASS)
    if key in worker["problems"]:
        res.status, res.message, res.kind = oracle.FAIL, worker["problems"][key], "run"
        return res
    rec = worker["done"].get(key)
    if rec is None:
        res.status, res.message, res.kind = oracle.FAIL, "not run", "run"
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
        res.status, res.kind = oracle.FAIL, "error"
        res.message = (f"raised {err.get('type')}: {err.get('message')}"
                       + (f" (at {err['where']})" if err.get("where") else "")
                       + (f"; expected {entry['raises']}" if "raises" in entry else ""))
        return res
    if "raises" in entry:
        res.status, res.kind = oracle.FAIL, "error"
        res.message = f"expected {entry['raises']} to be raised, but the call returned"
        return res
    if status != "returned":
        res.status, res.message, res.kind = oracle.FAIL, str(rec.get("message", "the worker reported no result")), "run"
        return res
    try:
        with np.load(work / "out" / f"{key}.npz", allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        res.status, res.message, res.kind = oracle.FAIL, f"the worker's result for this case is unreadable ({e})", "run"
        return res
    if op == "gcd_counterexample":  # any valid input with the property counts
        names = [o["name"] for o in entry["outputs"]]
        missing = [n for n in names if f"out.{n}" not in data]
        msg = (f"{', '.join(missing)}: missing from the result" if missing
               else units.counterexample_problem(*(data[f"out.{n}"] for n in names)))
        if msg:
            res.status, res.message, res.kind = oracle.FAIL, msg, "output"
        return res
    output_msgs, zero_msgs, abs_errs, rel_errs = [], [], [], []
    got = {}
    for o in entry["outputs"]:
        name = o["name"]
        if f"out.{name}" not in data:
            output_msgs.append(f"{name}: missing from the result")
            continue
        got[name] = data[f"out.{name}"]
        tol = _tolerance(name, o, args, expected[name])
        ok, msg, ea, er = oracle.compare_output(name, o["compare"], got[name], expected[name], tol)
        if not ok and op == "answers":  # the message would print the answer
            msg = (f"your answer {float(got[name])!r} is not the question's number to 4 significant figures"
                   if got[name].ndim == 0 else "give one number (a Python float), not an array")
        elif not ok and "hidden" in entry.get("tags", []):
            msg = f"{name}: differs from the expected value (a hidden case: its values are not shown)"
        elif not ok and o["compare"] in ("index_set", "exact"):
            msg = _difference(name, o["compare"], got[name], expected[name]) or msg
        if not ok:
            output_msgs.append(msg)
        elif name in WEIGHT_OUTPUTS:
            zero_msgs.append(_zeros_check(name, got[name], expected[name]))
        if not np.isnan(ea):
            abs_errs.append(ea)
            rel_errs.append(er)
    if abs_errs:
        res.max_abs_err, res.max_rel_err = max(abs_errs), max(rel_errs)
    if output_msgs:
        res.status, res.message, res.kind = oracle.FAIL, "\n".join(output_msgs), "output"
        res.pattern = _diagnose.diagnose(op, args, got) or ""
        return res
    res.zeros = next((m for m in zero_msgs if m), "")  # graded once per task (_zeros_case)
    first = entry["outputs"][0]
    for kind, msg in [("cholesky", _cholesky_check(entry, args, data, rec,
                                                   _tolerance(first["name"], first, args, expected[first["name"]]))),
                      ("warning", _warning_check(entry, args, rec))]:
        if msg:
            res.status, res.message, res.kind = oracle.FAIL, msg, kind
            return res
    return res


def _tolerance(name: str, out: dict, args: dict, expected: np.ndarray) -> dict:
    """The case's float64 tolerance, with atol at least rtol times the scale of the inputs the
    output is made of (max|W| for weights): an all-zero expected output (every column removed, an
    error of 0) then allows rounding instead of exactly 0."""
    tol = dict(out.get("tolerances", {}).get("float64") or {"rtol": 0.0, "atol": 0.0})
    if out["compare"] != "float":
        return tol
    W = args.get("W")
    if name in WEIGHT_OUTPUTS and isinstance(W, np.ndarray) and W.size:
        floor = tol["rtol"] * float(np.max(np.abs(W)))
    elif name == "error" and isinstance(W, np.ndarray) and W.size:
        floor = tol["rtol"] * float(np.max(np.abs(W))) ** 2 * float(np.max(np.abs(args["H"]))) * W.size
    else:
        floor = 0.0
    tol["atol"] = max(tol["atol"], floor)
    return tol


def _zeros_check(name: str, got: np.ndarray, expected: np.ndarray) -> str:
    """'' when every column that is exactly zero in the expected weights is exactly zero in `got`."""
    if expected.ndim != 2 or got.shape != expected.shape:
        return ""
    zero = np.flatnonzero(np.all(expected == 0, axis=0))
    bad = [int(c) for c in zero if np.any(got[:, c] != 0)]
    if not bad:
        return ""
    return (f"{name}: column(s) {_short_list(bad)} are removed (or dead inputs) and must be exactly 0; "
            f"max |{name}| there is {float(np.max(np.abs(got[:, bad]))):.3e}")


def _zeros_cases(cases: list, hints: int) -> list:
    """One assertion per function with weight outputs: every removed column (and dead input) is
    exactly zero, in every case of it whose values passed; one FAIL line per function, so the
    report's count of failures is the number of lines under it."""
    weighty = [c for c in cases if c.status == oracle.PASS and oracle.OUTPUTS[c.operation][0][0] in WEIGHT_OUTPUTS]
    results = []
    for op in dict.fromkeys(c.operation for c in weighty):
        mine = [c for c in weighty if c.operation == op]
        res = GradedCase(f"{op}.removed_columns_exactly_zero", op, oracle.PASS)
        bad = [c for c in mine if c.zeros]
        if bad:
            res.status, res.kind = oracle.FAIL, "zeros"
            res.hint = _hint_text(GradedCase("", "", "", kind="zeros"), hints)
            res.message = "\n".join([f"in {len(bad)} of its {len(mine)} cases:"]
                                     + [f"  {c.id}: {c.zeros}" for c in bad[:3]]
                                     + ([f"  ... and {len(bad) - 3} more cases"] if len(bad) > 3 else []))
        results.append(res)
    return results


def _difference(name: str, compare: str, got, expected: np.ndarray) -> str:
    """How discrete outputs differ, without the expected list itself: the missing and unexpected
    indices of a set, the first differing position of a list. '' when the oracle's own message
    (a shape, duplicates, a conversion) says it better."""
    try:
        a = np.asarray(got).astype(np.int64).ravel().tolist()
    except (TypeError, ValueError):
        return ""
    e = expected.astype(np.int64).ravel().tolist()
    if compare == "index_set":
        if expected.ndim != 1 or len(set(a)) != len(a):
            return ""
        missing, extra = sorted(set(e) - set(a)), sorted(set(a) - set(e))
        return (f"{name}: {len(missing)} index(es) missing from yours: {_short_list(missing)}; "
                f"unexpected: {_short_list(extra)}")
    k = next((i for i, (x, y) in enumerate(zip(a, e)) if x != y), min(len(a), len(e)))
    return (f"{name}: yours differs from position {k} on (yours there: {a[k] if k < len(a) else 'nothing'}; "
            f"yours has {len(a)} entries, the expected {len(e)})")


def _timing_case(task: int, cases: list, hints: int) -> list:
    """One assertion per task with timed cases: the median time of the lazy form is at most
    TIMING_MAX_RATIO times that of prune_heads, both correct on the timed layer. [] without them."""
    timed = [c for c in cases if TIMED in c.id]
    if not timed:
        return []
    res = GradedCase(f"task{task}.lazy_form_not_slower_than_reinversion", "timing", oracle.PASS)
    if any(c.status != oracle.PASS for c in timed) or {c.operation for c in timed} != {"prune_heads", "prune_heads_lazy"}:
        res.status, res.kind = oracle.FAIL, "output"
        res.message = "timing: prune_heads and prune_heads_lazy must both be correct on the timed cases first"
        return [res]
    median = {op: float(np.median([c.seconds for c in timed if c.operation == op]))
              for op in ("prune_heads", "prune_heads_lazy")}
    ratio = median["prune_heads_lazy"] / max(median["prune_heads"], 1e-9)
    if ratio > TIMING_MAX_RATIO:
        res.status, res.kind, res.hint = oracle.FAIL, "output", _diagnose.hint("timing", None, hints)
        res.message = (f"timing: prune_heads_lazy took {median['prune_heads_lazy']:.3f} s (median), prune_heads "
                       f"{median['prune_heads']:.3f} s: ratio {ratio:.2f}, allowed at most {TIMING_MAX_RATIO}")
    return [res]


def _short_list(values: list, n: int = 8) -> str:
    return str(values) if len(values) <= n else f"[{', '.join(map(str, values[:n]))}, ... ({len(values)} in all)]"


def _cholesky_check(entry: dict, args: dict, data: dict, rec: dict, tol: dict) -> str:
    """'' when a factorisation of G[S, S] (S in the given order, as the leading block) happened and
    its result reached the output (the probe run with that factor perturbed changed the result), or
    when the case needs no factorisation; the failure message otherwise."""
    op = entry["operation"]
    if "raises" in entry or _cholesky_target(op, args) is None:
        return ""
    S = np.asarray(args["columns"], dtype=np.int64)
    if not rec.get("factor_matched"):
        seen = int(rec.get("factorisations") or 0)
        return (f"{op} did not use the Cholesky form: no Cholesky factorisation of a matrix whose leading block is "
                f"G[S, S] (S = the {S.size} pruned column(s) in the given order) was seen; "
                + (f"it factorised {seen} other matrix(es)" if seen else "it called no Cholesky at all"))
    first = oracle.OUTPUTS[op][0][0]
    probe, normal = data.get(f"probe.{first}"), data[f"out.{first}"]
    # the change must exceed the output's own tolerance: a trace of the factor added below the
    # tolerance (W + 1e-300 * L[0, 0]) is not its use
    moved = (probe is not None and probe.shape == normal.shape
             and np.any(np.abs(probe - normal) > tol["atol"] + tol["rtol"] * np.abs(normal)))
    if not moved:
        return (f"{op} factorised G[S, S] but its result does not reach {first}: perturbing that factorisation "
                f"left the output unchanged (a factor computed and discarded is not the Cholesky form)")
    rtol, atol = tolerance("float64_solve", predicted := _cholesky_prediction(op, args))
    if not np.allclose(probe, predicted, rtol=rtol, atol=atol):
        return (f"{op} factorised G[S, S] but the factor's values do not drive {first}: handed the factor of a "
                f"differently damped G[S, S], the output did not change as the Cholesky form predicts "
                f"(W_K - W_S (G_SS)^-1 G_SK with that G_SS; max difference "
                f"{float(np.max(np.abs(probe - predicted))):.3e})")
    return ""


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


def _groups(failures: list) -> list[list]:
    """Failures in dependency order, cases of one operation with the same diagnosis together."""
    groups, index = [], {}
    for c in failures:
        if c.pattern or c.kind in ("cholesky", "warning", "zeros"):
            key = (c.operation, c.kind, c.pattern)
        elif c.kind in ("error", "run"):
            key = (c.operation, c.kind, c.message)
        else:
            key = id(c)
        if key in index:
            groups[index[key]].append(c)
        else:
            index[key] = len(groups)
            groups.append([c])
    return groups


def _task_lines(s: TaskScore, verbose: bool) -> list[str]:
    lines = []
    if s.not_implemented:
        lines.append(f"     {s.not_implemented} case(s) not implemented yet (NotImplementedError or missing)")
    groups = [[c] for c in s.failures] if verbose else _groups(s.failures)
    for group in groups[: None if verbose else 3]:
        c = group[0]
        if len(group) >= 3 and not verbose:
            names = ", ".join(g.id.split(".", 1)[1] for g in group)
            lines.append(f"     FAIL {c.operation}: {len(group)} cases show the same problem ({names}); the first:")
        else:
            lines.append(f"     FAIL {', '.join(g.id for g in group)}")
        lines += [f"          {m}" for m in c.message.splitlines()]
        if c.hint:
            lines.append(f"          hint: {c.hint}")
    if not verbose and len(groups) > 3:
        lines.append(f"     ... and {sum(map(len, groups[3:]))} more failures (-v shows all)")
    return lines


def report(points, max_points, scores, verbose=False, load_error: str = "", isolation: str = "",
           unit: int | None = None) -> str:
    lines = [f"isolation: {isolation}"] if isolation else []
    lines += [load_error, ""] if load_error else []
    for s in scores:
        mark = "ok " if s.passed == s.total else ("-- " if s.passed == 0 and not s.failures else "XX ")
        lines.append(f"{mark}Task {s.number}: {s.title:<48} {s.passed:3d}/{s.total:<3d} cases  "
                     f"{s.points:5.1f}/{s.max_points} points")
        lines += _task_lines(s, verbose)
    if [s.number for s in scores] == ASSIGNMENT:
        lines.append(f"\nscore: {points:.1f} / 100")
    elif unit is not None:
        lines.append(f"\nscore: {points:.1f} / {max_points} points (unit {unit}: {units.UNITS[unit][0]})")
    else:
        graded = ", ".join(str(s.number) for s in scores)
        plural = "s" if len(scores) > 1 else ""
        lines.append(f"\nscore: {points:.1f} / {max_points} points (task{plural} {graded} only)")
    return "\n".join(lines)


def gradescope(points, max_points, scores, result: GradeResult) -> dict:
    """Gradescope's autograder results (results.json): one test per task, its report as output."""
    tests = [{"name": f"Task {s.number}: {s.title}", "number": str(s.number), "score": round(s.points, 4),
              "max_score": s.max_points, "status": "passed" if s.passed == s.total else "failed",
              "output": "\n".join([f"{s.passed}/{s.total} cases passed"] + _task_lines(s, verbose=True)),
              "visibility": "visible"} for s in scores]
    output = "\n".join(x for x in (f"isolation: {result.isolation}", result.load_error, result.note) if x)
    return {"score": round(points, 4), "output": output, "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("student", help="path to the student's .py file")
    p.add_argument("--cases", help="an exported oracle directory (default: the cases are built here)")
    p.add_argument("--task", type=int, action="append", help="grade only this task number (repeatable)")
    p.add_argument("--unit", type=int, help="grade one unit of the course (README.md): its tasks and questions")
    p.add_argument("--pass-score", type=float, default=100.0,
                   help="exit 0 at or above this percentage of the graded points (default 100)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds allowed per call and for importing the submission (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--hints", type=int, default=0,
                   help="hint level: 0 what failed and where to read (default), 1 what your output shows, "
                        "2 why, 3 the step")
    p.add_argument("--gradescope", metavar="RESULTS_JSON", help="also write Gradescope's results.json here")
    p.add_argument("--isolation", choices=("auto", "audit"), default="auto",
                   help="auto: a private file tree (namespaces) where the machine allows it; "
                        "audit: the audit hook only")
    p.add_argument("-v", "--verbose", action="store_true", help="show every failure")
    args = p.parse_args(argv)
    known = {number for number, *_ in TASKS}
    try:
        if args.task and not set(args.task) <= known:
            raise GradingError(f"no task {sorted(set(args.task) - known)}; the tasks are {sorted(known)}")
        if args.unit is not None and args.unit not in units.UNITS:
            raise GradingError(f"no unit {args.unit}; the units are {sorted(units.UNITS)}")
        if args.unit is not None and args.task:
            raise GradingError("give --unit or --task, not both")
        tasks = units.UNITS[args.unit][1] if args.unit is not None else args.task
        if not args.timeout > 0:
            raise GradingError(f"--timeout must be positive, got {args.timeout:g}")
        if args.hints not in HINT_LEVELS:
            raise GradingError(f"--hints must be one of {', '.join(map(str, HINT_LEVELS))}, got {args.hints}")
        if args.cases is not None and not Path(args.cases).is_dir():
            raise GradingError(f"{args.cases}: no such directory (export one with `slimgpt oracle export DIR`)")
        if args.gradescope is not None and not Path(args.gradescope).resolve().parent.is_dir():
            raise GradingError(f"{args.gradescope}: its folder does not exist")
        points, max_points, scores, result = grade(args.student, args.cases, tasks, args.timeout,
                                                   args.hints, args.isolation)
    except GradingError as e:
        print(f"grade.py: error: {e}", file=sys.stderr)
        return 2
    copied = copied_functions(Path(args.student))
    result.note = (f"note: {len(copied)} function(s) are near-verbatim copies of slimgpt's reference "
                   f"({', '.join(copied[:6])}{', ...' if len(copied) > 6 else ''}); not graded down, but an "
                   "instructor may ask how they were written") if copied else ""
    print(report(points, max_points, scores, args.verbose, result.load_error, result.isolation, args.unit))
    if result.note:
        print(result.note)
    if args.gradescope:
        tmp = Path(args.gradescope).with_name(Path(args.gradescope).name + ".tmp")
        tmp.write_text(json.dumps(gradescope(points, max_points, scores, result), indent=1))
        os.replace(tmp, args.gradescope)
    return 0 if points >= max_points * args.pass_score / 100 - 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
