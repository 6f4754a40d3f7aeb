"""How the oracle calls an implementation in its own shape: loading, maps, adapter diagnostics.

What this is: `load_implementation` (a module, a module name, a .py path or a dict of functions)
and `Adapter`, which turns one case into one call of the implementation and its result back
into the operation's outputs, through the maps an implementation may declare as `ORACLE_MAP`:

    ORACLE_MAP = {
        "operations": {"prune_heads": "prune_attention_heads"},         # oracle op -> name or callable
        "arguments": {"prune_heads": {"W": "weight", "H": "hessian", "gcd": None}},  # None: not supported
        "positional": {"prune_heads": ["weight", "hessian"]},           # the rest goes by keyword
        "outputs": {"prune_heads": ["pruned_heads", "W_new"]},          # return order (or a dict name -> key)
        "errors": {"numpy.linalg.LinAlgError": "not_positive_definite"},  # class or dotted name -> kind
        "inputs": "torch",                                              # arrays as float64/int64 tensors
    }

Without a map, functions are looked up by the reference's names (the shim interface). Problems
of the adapter (a signature that does not fit, a wrong number or kind of results, boolean
masks for indices) raise AdapterProblem, reported apart from numeric failures. What it is not:
the comparison of numbers (check.py).
"""
from __future__ import annotations

import builtins
import importlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from slimgpt.oracle.operations import ERROR_KINDS, OPERATIONS

MAP_KEYS = ("operations", "arguments", "positional", "outputs", "errors", "inputs")
_ORACLE_DIR = str(Path(__file__).resolve().parent)
_FILE_PREFIX = "_oracle_impl_"  # a .py path is imported under this prefix, beside the user's own modules


class ImplementationError(ValueError):
    """The implementation to check cannot be loaded (missing module, syntax error, bad map)."""


class AdapterProblem(Exception):
    """The implementation cannot be called the way its signature or map says, or its result does
    not have the shape of the operation's outputs: a problem of the adapter, not of the numbers."""


class NotSupported(Exception):
    """The case needs a setting that the implementation's map declares unsupported."""


def load_implementation(impl):
    """(object with the functions, label) from a module, an object with attributes, a dict of
    functions, a module name, or a path to a .py file."""
    if isinstance(impl, dict):
        return type("Impl", (), {k: staticmethod(v) for k, v in impl.items()})(), "dict"
    if not isinstance(impl, (str, Path)):
        return impl, getattr(impl, "__name__", type(impl).__name__)
    text = str(impl)
    try:
        if text.endswith(".py") or Path(text).is_file():
            path = Path(text).resolve()
            if not path.is_file():
                raise ImportError(f"no such file {path}")
            name = f"{_FILE_PREFIX}{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module, str(path)
        return importlib.import_module(text), text
    except Exception as e:  # noqa: BLE001 - whatever the implementation raises while importing
        raise ImplementationError(f"cannot load the implementation {text!r}: {type(e).__name__}: {e}") from e


def user_name(module) -> str:
    """The module's name as the user wrote it: `my_slimgpt` for a file imported as
    `_oracle_impl_my_slimgpt` from my_slimgpt.py."""
    name = getattr(module, "__name__", "")
    return name[len(_FILE_PREFIX):] if name.startswith(_FILE_PREFIX) else name


def _resolve_class(name: str, module):
    """The class a name in ORACLE_MAP['errors'] means, or None: a name of the implementation's own
    module as the user wrote it ("my_slimgpt.HessianNotPD", or just "HessianNotPD"), a builtin
    ("ValueError") or an importable dotted name ("numpy.linalg.LinAlgError")."""
    head, _, rest = name.partition(".")
    candidates = []
    if head == user_name(module) and rest:
        candidates.append((module, rest))
    candidates += [(module, name), (builtins, name)]
    for owner, path in candidates:
        obj = owner
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj
    parent, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(parent), attr) if parent else None
    except (ImportError, AttributeError, ValueError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


def _checked_map(module, label: str) -> dict:
    """The module's ORACLE_MAP ({} without one); ImplementationError naming what is wrong in it."""
    spec = getattr(module, "ORACLE_MAP", None) or {}
    if not isinstance(spec, dict) or set(spec) - set(MAP_KEYS):
        raise ImplementationError(f"{label}: ORACLE_MAP must be a dict with keys among {', '.join(MAP_KEYS)}")
    unknown = sorted(set().union(*[set(spec.get(k, {})) for k in ("operations", "arguments", "positional",
                                                                 "outputs")]) - set(OPERATIONS))
    if unknown:
        raise ImplementationError(f"{label}: ORACLE_MAP names unknown operation(s) {', '.join(unknown)}")
    for op, target in spec.get("operations", {}).items():
        if isinstance(target, str) and not callable(getattr(module, target, None)):
            raise ImplementationError(f"{label}: ORACLE_MAP sends {op} to {target!r}, which the module lacks")
    for op, names in spec.get("arguments", {}).items():
        arguments = set(OPERATIONS[op].positional) | set(OPERATIONS[op].keywords)
        if set(names) - arguments:
            raise ImplementationError(f"{label}: ORACLE_MAP arguments of {op} name {sorted(set(names) - arguments)}"
                                      f"; its arguments are {', '.join(sorted(arguments))}")
    kinds = set(ERROR_KINDS.values())
    bad = [v for v in spec.get("errors", {}).values() if v not in kinds]
    if bad:
        raise ImplementationError(f"{label}: ORACLE_MAP errors map to unknown kind(s) {bad}; "
                                  f"kinds are {', '.join(sorted(kinds))}")
    return spec


class Adapter:
    """Calls one implementation the way its ORACLE_MAP (if any) says."""

    def __init__(self, module, label: str, extra: dict | None = None):
        self.module, self.label, self.extra = module, label, dict(extra or {})
        self.map = _checked_map(module, label)
        self.errors = [(_resolve_class(k, module) if isinstance(k, str) else k, k, v)
                       for k, v in self.map.get("errors", {}).items()]
        # adapter problems of the whole map, reported once above the cases
        self.problems = [f"ORACLE_MAP['errors'] key {k!r} matches no exception class (not importable, not "
                         f"in {user_name(module)}, not a builtin); write it as module.Class or give the class"
                         for cls, k, _ in self.errors if cls is None]

    def function(self, op: str):
        """The implementation's function for `op`, or None."""
        target = self.map.get("operations", {}).get(op, op)
        fn = target if callable(target) else getattr(self.module, target, None)
        return fn if callable(fn) else None

    def bind(self, op: str, fn, args: dict[str, Any]) -> tuple[list, dict]:
        """(positional, keyword) arguments for the implementation's `fn` from the case's `args`."""
        names = self.map.get("arguments", {}).get(op, {})
        defaults = OPERATIONS[op].keywords
        renamed = {}
        for name, value in args.items():
            target = names.get(name, name)
            if target is None:
                if name in defaults and _same(value, defaults[name]):
                    continue
                raise NotSupported(f"the case needs {name}={value!r}, which the map declares unsupported")
            renamed[target] = self._convert(value)
        positional = self.positional_names(op)
        missing = [p for p in positional if p not in renamed]
        if missing:
            raise AdapterProblem(f"ORACLE_MAP positional for {op} names {missing}, which are not arguments of the case "
                                 f"(arguments: {', '.join(renamed)})")
        pos = [renamed.pop(p) for p in positional]
        kw = {**renamed, **self.extra}
        return pos, self._fit_signature(op, fn, pos, kw, {names.get(k, k): k for k in defaults})

    def positional_names(self, op: str) -> list[str]:
        """The implementation's names of the arguments it takes positionally, in order."""
        names = self.map.get("arguments", {}).get(op, {})
        return self.map.get("positional", {}).get(op, [names.get(n, n) for n in OPERATIONS[op].positional])

    def _fit_signature(self, op, fn, pos, kw, keyword_names) -> dict:
        """Drop keywords the function lacks when the case uses the default; otherwise a mismatch
        between the call and the signature is an AdapterProblem naming both."""
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return kw  # a builtin without a signature: call it and see
        params = sig.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for name in list(kw):
            if name not in params and not takes_any and name in keyword_names:
                default = OPERATIONS[op].keywords[keyword_names[name]]
                if _same(kw[name], default):
                    del kw[name]
                else:
                    raise AdapterProblem(f"signature mismatch: the case needs {name}={kw[name]!r} but "
                                         f"{_name(fn)}{sig} has no parameter {name!r}")
        try:
            sig.bind(*pos, **kw)
        except TypeError as e:
            raise AdapterProblem(f"signature mismatch: {_name(fn)}{sig} cannot take the case's arguments "
                                 f"({len(pos)} positional, keywords {sorted(kw)}): {e}") from None
        return kw

    def _convert(self, value):
        if self.map.get("inputs") == "torch" and isinstance(value, np.ndarray):
            import torch
            return torch.from_numpy(value.copy())
        return value

    def outputs(self, op: str, result) -> list:
        """The result as the operation's outputs in OUTPUTS order; AdapterProblem if it has the wrong
        number or kind of values."""
        names = [n for n, _ in OPERATIONS[op].outputs]
        order = self.map.get("outputs", {}).get(op)
        if isinstance(order, dict) or isinstance(result, dict):
            keys = order if isinstance(order, dict) else {n: n for n in names}
            try:
                return [result[keys[n]] if isinstance(result, dict) else getattr(result, keys[n]) for n in names]
            except (KeyError, AttributeError) as e:
                raise AdapterProblem(f"{op} returned {type(result).__name__} without {e} "
                                     f"(expected {', '.join(names)})") from None
        order = order or names
        if len(order) == 1:
            values = [result]
        elif not isinstance(result, (tuple, list)):
            raise AdapterProblem(f"{op} must return {len(order)} values ({', '.join(order)}), "
                                 f"got one {type(result).__name__}")
        elif len(result) != len(order):
            raise AdapterProblem(f"{op} must return {len(order)} values ({', '.join(order)}), "
                                 f"got {len(result)}")
        else:
            values = list(result)
        by_name = dict(zip(order, values))
        return [by_name[n] for n in names]

    def error_kind(self, exc: BaseException) -> str | None:
        """The expected-error kind of an exception the implementation raised: its map first, then
        the reference's class names anywhere in its MRO (NotPositiveDefiniteError, ValueError)."""
        mro = type(exc).__mro__
        for cls, key, kind in self.errors:
            if (cls is not None and isinstance(exc, cls)) or (isinstance(key, str) and any(
                    key in (c.__name__, f"{c.__module__}.{c.__qualname__}",
                            f"{user_name(sys.modules.get(c.__module__))}.{c.__qualname__}") for c in mro)):
                return kind
        return next((ERROR_KINDS[c.__name__] for c in mro if c.__name__ in ERROR_KINDS), None)


def _same(a, b) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def raised_at_call(exc: BaseException) -> bool:
    """True for a TypeError raised while binding the call's arguments (no frame of the
    implementation ran): an unexpected keyword, a missing or extra positional argument."""
    frames = traceback.extract_tb(exc.__traceback__)
    return isinstance(exc, TypeError) and all(f.filename.startswith(_ORACLE_DIR) for f in frames)


def where(exc: BaseException) -> str:
    """file:line of the innermost frame outside the oracle (the implementation's own code)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_ORACLE_DIR)]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def implementation_traceback(exc: BaseException) -> str:
    """The traceback of the implementation's error without the oracle's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_ORACLE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
