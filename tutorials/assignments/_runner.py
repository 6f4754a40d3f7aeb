"""The grader's worker: runs a student's submission on input-only cases, in its own process.

grade.py starts this script as `python -I -S _runner.py CONFIG.json` in a fresh temporary
directory and reads back what it writes there. It is deliberately standalone: it imports only
the standard library, NumPy and (when installed) SciPy, never slimgpt, and it makes sure the
submission cannot either:

- sys.path holds the standard library and the site-packages folders of NumPy/SciPy, never the
  repository (-I: no PYTHON* variables, no user site, no script folder; -S: no .pth files, so
  no editable-install hook);
- a sys.meta_path finder, first in line, refuses `slimgpt` and every `slimgpt.*` name, and any
  module whose file lies in the slimgpt package, the repository or the reference folder;
- an audit hook (sys.addaudithook: it cannot be removed) refuses to open, list, link or rename
  files there or in the grader's case directory, to load extension modules from there, to
  import slimgpt by any route, to start processes, to send signals and to use ctypes.

The case directory it is given holds only the inputs (`in.*` arrays and the arguments), so the
expected outputs are nowhere in reach. For every case it writes one JSON line to the progress
file ("start", then "done" with the status, the exception or the warnings) and the returned
arrays to out/<key>.npz (numeric arrays only, no pickles); grade.py compares them.

While prune_columns and prune_columns_cholesky run, the matrices handed to numpy.linalg.cholesky,
scipy.linalg.cholesky and scipy.linalg.cho_factor are watched for one whose leading block is
G[S, S] (grade.py writes that target, derived from the inputs, beside the case); the call is then
repeated with those factorisations given a matrix whose leading block is damped, so that grade.py
can check that the output moved exactly as the factor's values predict (the Cholesky form of
docs/spec.md §2.3), not only that a factorisation happened.

This is a guard against re-exporting the library and against reading the answers, not a
security sandbox: code that sets out to defeat this very script (rewriting the modules it
relies on, for instance) is not stopped by it.
"""
import functools
import importlib.abc
import importlib.util
import json
import numbers
import os
import sys
import time
import traceback
import warnings

NOT_ALLOWED = "imports slimgpt, which is not allowed in a submission"
MAX_WARNINGS = 20          # warnings reported per case


class SubmissionRuleError(PermissionError):
    """Raised (by the audit hook and the import guard) when a submission does what it may not."""


class SubmissionImportError(ImportError):
    """Raised when a submission imports slimgpt."""


# ------------------------------------------------------------------------------------------------
# Paths


def _under(path, roots, _sep=os.sep):
    for root in roots:
        if path == root or path.startswith(root.rstrip(_sep) + _sep):
            return True
    return False


# ------------------------------------------------------------------------------------------------
# Output


class Progress:
    """JSON lines to the progress file, flushed one by one."""

    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8")

    def emit(self, **event):
        self.f.write(json.dumps(event, default=str) + "\n")
        self.f.flush()


def _text(obj, limit=400):
    try:
        s = str(obj)
    except Exception:  # noqa: BLE001 - a __str__ that raises
        s = f"<{type(obj).__name__} whose str() failed>"
    return s if len(s) <= limit else s[:limit] + " ..."


def _error(exc, submission_file):
    """type, MRO names, message and the line of the submission (or the last line) that raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if os.path.realpath(f.filename) == submission_file]
    where = (mine or frames or [None])[-1]
    where = f"{os.path.basename(where.filename)}:{where.lineno}" if where else ""
    if isinstance(exc, SyntaxError) and exc.filename:  # raised by the compiler: the line is in the exception
        where = f"{os.path.basename(exc.filename)}:{exc.lineno}"
    return {"type": type(exc).__name__,
            "mro": [c.__name__ for c in type(exc).__mro__],
            "message": _text(exc.msg if isinstance(exc, SyntaxError) and exc.msg else exc),
            "where": where}


def _numeric(name, value, np):
    """The value as a real numeric NumPy array; ValueError naming the output otherwise."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{name}: cannot convert the result to an array ({_text(e)})") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got {type(value).__name__} (dtype {arr.dtype})")
    return np.ascontiguousarray(arr)


# ------------------------------------------------------------------------------------------------
# The guard


def make_classifier(package, repository, cases, allowed):
    """path -> None (allowed) or the reason it is off limits, checked in this order: the slimgpt
    package and the reference folder, the grader's case directory, then the allowed places (the
    work directory, the Python installation, NumPy's and SciPy's site folders, this process's
    /proc entry, /dev/null and the random devices: a virtual environment inside the repository
    stays usable), then the rest of the repository; everything else is refused too."""
    package, repository, cases = tuple(package), tuple(repository), tuple(cases)
    allowed = tuple(allowed) + (f"/proc/{os.getpid()}", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")

    def classify(target, _package=package, _repository=repository, _cases=cases, _allowed=allowed,
                 _realpath=os.path.realpath, _under=_under):
        path = _realpath(target)
        if _under(path, _package):
            return f"{path} is a file of slimgpt: a submission {NOT_ALLOWED}"
        if _under(path, _cases):
            return f"{path} belongs to the grader's expected outputs: reading it is not allowed in a submission"
        if _under(path, _allowed):
            return None
        if _under(path, _repository):
            return f"{path} is a file of the slimgpt repository: a submission {NOT_ALLOWED}"
        return (f"{path} is outside the submission's working directory and the Python installation: "
                f"a submission may not use files there")

    return classify


class SlimgptBlocker(importlib.abc.MetaPathFinder):
    """First in sys.meta_path: refuses slimgpt, and modules whose file is off limits."""

    def __init__(self, classify):
        self.classify = classify

    def find_spec(self, name, path=None, target=None):
        if name == "slimgpt" or name.startswith("slimgpt."):
            raise SubmissionImportError(f"{NOT_ALLOWED} (import of {name!r})")
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            places = [spec.origin] if spec.origin and spec.has_location else []
            places += list(spec.submodule_search_locations or [])
            for place in places:
                if self.classify(place):
                    raise SubmissionImportError(f"{NOT_ALLOWED} (module {name!r} is a file of slimgpt: {place})")
            return spec
        return None


def make_audit_hook(classify, workdir):
    """The audit hook. Everything it uses is bound now, as defaults, not looked up later."""
    blocked_prefixes = ("ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                        "os.system", "os.kill", "os.killpg", "signal.pthread_kill", "os.startfile",
                        "pty.", "winreg.", "_winapi.", "sys.remote_exec")
    path_events = frozenset({"open", "os.listdir", "os.scandir", "os.chdir", "os.rename", "os.link", "os.symlink",
                             "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown",
                             "os.utime", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod", "os.getxattr",
                             "os.listxattr", "os.removexattr", "os.setxattr", "os.fwalk"})

    def audit(event, args, _classify=classify, _workdir=(workdir,), _blocked=blocked_prefixes, _paths=path_events,
              _realpath=os.path.realpath, _fspath=os.fspath, _fsdecode=os.fsdecode, _isdir=os.path.isdir,
              _under=_under, _Error=SubmissionRuleError, _ImportError=SubmissionImportError, _str=str,
              _bytes=bytes, _isinstance=isinstance, _PathLike=os.PathLike, _getattr=getattr, _main=__name__):
        if event.startswith(_blocked):
            raise _Error(f"{event} is not allowed in a submission (no processes, signals or ctypes)")
        if event == "object.__setattr__":
            if _getattr(args[0], "__module__", None) == _main:
                raise _Error("changing the grader's own functions is not allowed in a submission")
            return
        if event == "import":
            name = args[0]
            if _isinstance(name, _str) and (name == "slimgpt" or name.startswith("slimgpt.")):
                raise _ImportError(f"{NOT_ALLOWED} (import of {name!r})")
            targets = args[1:2]
        elif event in _paths or event.startswith(("shutil.", "glob.", "pathlib.")):
            targets = args
        else:
            return
        for target in targets:
            if _isinstance(target, _PathLike):
                try:
                    target = _fspath(target)
                except Exception:  # noqa: BLE001
                    continue
            if _isinstance(target, _bytes):
                target = _fsdecode(target)
            if not _isinstance(target, _str) or not target:
                continue
            why = _classify(target)
            if why:
                raise _Error(why)
            if event == "open" and len(args) > 1 and args[1] is None and _isdir(target) \
                    and not _under(_realpath(target), _workdir):
                # os.open(directory): paths opened relative to its dir_fd never reach this hook whole
                raise _Error(f"os.open of the directory {_realpath(target)} is not allowed in a submission")

    return audit


def wrap_cholesky(np, recorder):
    """Replace numpy.linalg.cholesky and scipy.linalg.cholesky/cho_factor (in every module that
    holds them) by wrappers that record their input while `recorder.active`."""
    originals = {}
    candidates = [("numpy.linalg", "cholesky")]
    if "scipy.linalg" in sys.modules:
        candidates += [("scipy.linalg", "cholesky"), ("scipy.linalg", "cho_factor")]
    for mod_name, attr in candidates:
        fn = getattr(sys.modules[mod_name], attr, None)
        if fn is not None and fn not in originals:
            originals[fn] = _recording(fn, recorder)
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith(("numpy.linalg", "scipy.linalg")):
            continue
        namespace = getattr(mod, "__dict__", {})
        for attr, value in list(namespace.items()):
            try:
                wrapper = originals.get(value)
            except TypeError:  # unhashable
                continue
            if wrapper is not None:
                namespace[attr] = wrapper


def _recording(fn, recorder):
    @functools.wraps(fn)
    def wrapper(a, *args, **kwargs):
        if recorder.active and recorder.note(a) and recorder.perturb:
            a = recorder.perturbed(a)
        return fn(a, *args, **kwargs)
    return wrapper


class Recorder:
    """Watches the factorisations of one call: whether one was of a matrix whose leading block is
    the target G[S, S] (`matched`), and, in the probe run (`perturb`), hands those a copy whose
    leading block is damped (+ 0.1 mean(diag G[S, S]) on its diagonal, grade.py's PROBE_DAMPING) so
    that grade.py can check the output moved exactly as the Cholesky form predicts for that block."""

    def __init__(self, np):
        self.np, self.active, self.perturb, self.target, self.matched, self.seen = np, False, False, None, False, 0

    def start(self, target, perturb=False):
        self.active, self.perturb, self.target, self.matched, self.seen = target is not None, perturb, target, False, 0

    def stop(self):
        self.active = False

    def note(self, a):
        """True when `a` (a square matrix) has the target as its leading block."""
        np, t = self.np, self.target
        try:
            arr = np.asarray(a)
            if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < t.shape[0]:
                return False
            self.seen += 1
            lead = np.asarray(arr[: t.shape[0], : t.shape[0]], dtype=np.float64)
            hit = bool(np.all(np.abs(lead - t) <= 2e-4 * np.max(np.abs(t)) + 1e-4 * np.abs(t)))
        except Exception:  # noqa: BLE001 - recording must never change what the call does
            return False
        self.matched = self.matched or hit
        return hit

    def perturbed(self, a):
        np = self.np
        arr = np.array(a, dtype=np.result_type(np.asarray(a).dtype, np.float32))
        s = self.target.shape[0]
        arr[np.arange(s), np.arange(s)] += 0.1 * np.mean(np.diag(self.target))
        return arr


# ------------------------------------------------------------------------------------------------
# Main


def main(config_path):
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    workdir = os.path.realpath(config["workdir"])
    os.chdir(workdir)  # in the private tree the worker starts at its root
    guard = config["guard"]
    python = [os.path.realpath(p) for p in sys.path if p]  # -I -S: the standard library only
    classify = make_classifier(guard["package"], guard["repository"], guard["cases"],
                               guard["allowed"] + python + [workdir])
    # sys.path: the standard library, then NumPy's/SciPy's site folders; nothing off limits.
    sys.path[:] = [p for p in sys.path if p and not classify(p)]
    for d in config["site_dirs"]:
        if d not in sys.path and not classify(d):
            sys.path.append(d)
    progress = Progress(config["progress"])

    import numpy as np
    import numpy.linalg  # noqa: F401
    try:
        import scipy.linalg  # noqa: F401 - imported now so that its Cholesky is recorded too
    except ImportError:
        pass
    recorder = Recorder(np)
    wrap_cholesky(np, recorder)
    with open(os.path.join(config["cases_dir"], "index.json"), encoding="utf-8") as f:
        cases = {c["key"]: c for c in json.load(f)["cases"]}
    submission = os.path.realpath(config["submission"])

    # Arm the guard: from here on the submission's code runs.
    sys.meta_path.insert(0, SlimgptBlocker(classify))
    sys.addaudithook(make_audit_hook(classify, workdir))
    progress.emit(event="armed")

    name = config["module"]
    try:
        spec = importlib.util.spec_from_file_location(name, submission)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        progress.emit(event="load_error", error=_error(exc, submission))
        return 0
    progress.emit(event="loaded")

    for key in config["todo"]:
        case = cases[key]
        progress.emit(event="start", key=key)
        progress.emit(event="done", key=key, **run_case(case, module, config, recorder, submission, np))
    progress.emit(event="finished")
    return 0


def _argument(value, data):
    """{"array": KEY} is an array, {"arrays": {name: KEY}} a dict of arrays (a model's weights),
    anything else (a number, a list, a model's config) is passed as it is. Fresh copies each call."""
    if isinstance(value, dict) and set(value) == {"array"}:
        return data[value["array"]].copy()
    if isinstance(value, dict) and set(value) == {"arrays"}:
        return {name: data[key].copy() for name, key in value["arrays"].items()}
    return value


def run_case(case, module, config, recorder, submission, np):
    op = case["operation"]
    fn = getattr(module, op, None)
    if op == "answers":  # a question: the number in the submission's answers() (or ANSWERS)
        try:
            answers = _answers(module)
        except BaseException as exc:  # noqa: BLE001 - fails the questions only
            return {"status": "error", "error": _error(exc, submission), "seconds": 0.0, "warnings": []}
        question = case["arguments"].get("question")
        if not isinstance(answers, dict) or answers.get(question) is None:
            return {"status": "missing"}
        fn = lambda question: answers[question]  # noqa: E731
    if fn is None or not callable(fn):
        return {"status": "missing"}
    with np.load(os.path.join(config["cases_dir"], case["file"]), allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    args = {k: _argument(v, data) for k, v in case["arguments"].items()}
    pos = [args.pop(k) for k in case["positional"]]
    target = None
    if case.get("probe"):
        with np.load(os.path.join(config["cases_dir"], case["probe"]), allow_pickle=False) as npz:
            target = npz["in.G_SS"]
    recorder.start(target)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = fn(*pos, **args)
            finally:
                recorder.stop()
    except BaseException as exc:  # noqa: BLE001 - reported per case, SystemExit included
        return {"status": "error", "error": _error(exc, submission), "seconds": time.perf_counter() - t0,
                "warnings": _warnings(caught)}
    out = {"status": "returned", "seconds": time.perf_counter() - t0, "warnings": _warnings(caught),
           "factorisations": recorder.seen, "factor_matched": recorder.matched}
    names = case["outputs"]
    try:
        if len(names) == 1:
            values = [result]
        elif not isinstance(result, (tuple, list)) or len(result) != len(names):
            raise ValueError(f"{op} must return a tuple of {len(names)} values ({', '.join(names)}), "
                             f"got {type(result).__name__}"
                             + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""))
        else:
            values = list(result)
        arrays = {f"out.{n}": _numeric(n, v, np) for n, v in zip(names, values)}
    except Exception as exc:  # noqa: BLE001
        out.update(status="bad_return", message=_text(exc))
        return out
    if target is not None and recorder.matched:
        arrays.update(_probe(case, module, data, target, recorder, names, np))
    np.savez(os.path.join(config["outputs_dir"], case["key"] + ".npz"), **arrays)
    return out


def _answers(module, _cache={}):
    """The submission's answers: answers() called once, when the first question is graded (so an
    error in it fails the questions, not the whole submission), or the ANSWERS dict of earlier terms."""
    if "result" not in _cache:
        fn = getattr(module, "answers", None)
        try:
            _cache["result"] = (fn() if callable(fn) else getattr(module, "ANSWERS", None)), None
        except BaseException as exc:  # noqa: BLE001 - re-raised for every question
            _cache["result"] = None, exc
    answers, exc = _cache["result"]
    if exc is not None:
        raise exc
    return answers


def _probe(case, module, data, target, recorder, names, np):
    """The same call again with the matching factorisations perturbed: probe.<output> arrays, or
    {} when the second call fails (grade.py then reports the factor as unused)."""
    args = {k: _argument(v, data) for k, v in case["arguments"].items()}
    pos = [args.pop(k) for k in case["positional"]]
    recorder.start(target, perturb=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = getattr(module, case["operation"])(*pos, **args)
        values = [result] if len(names) == 1 else list(result)
        return {f"probe.{n}": _numeric(n, v, np) for n, v in zip(names, values)}
    except BaseException:  # noqa: BLE001 - e.g. a perturbed factor the submission rejects
        return {}
    finally:
        recorder.stop()


def _warnings(caught):
    found = []
    for w in caught[:MAX_WARNINGS]:
        p = getattr(w.message, "percdamp", None)
        found.append({"class": w.category.__name__,
                      "percdamp": float(p) if isinstance(p, numbers.Real) and not isinstance(p, bool) else None,
                      "has_percdamp": hasattr(w.message, "percdamp"),
                      "message": _text(w.message, 200)})
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
