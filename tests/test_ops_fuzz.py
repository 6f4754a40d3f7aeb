"""A hypothesis fuzz of slimgpt.ops: both backends accept and refuse the same inputs, and
nothing returns NaN from finite input.

What this is: random calls of every operation with random shapes, dtypes (floating, integer,
bool, complex), read-only flags, values (huge, tiny, subnormal, NaN), counts (negative, huge,
bool, fractional) and Hessians (well-conditioned, singular, indefinite, dead inputs), each made
with backend="reference", "cpu" and "torch". The contract: either both refuse
(ValueError or TypeError; NotPositiveDefiniteError is a ValueError) or both return, and then
every output is finite, W keeps its shape and indices are sorted, unique and in range. What it
is not: a check of the numbers (tests/test_ops.py compares them on well-separated inputs).

The session runs in a subprocess with faulthandler, so a crash fails the test with its output
instead of killing pytest; the default suite runs a few hundred derandomized cases, `pytest -m
fuzz` many more.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

QUICK_CASES = 300
LONG_CASES = 5000


def _in_subprocess(n_cases: int, randomize: bool, timeout: float) -> None:
    cmd = [sys.executable, "-X", "faulthandler", __file__, str(n_cases)] + (["--random"] if randomize else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"fuzz failed ({proc.returncode}):\n{proc.stdout[-20000:]}\n{proc.stderr[-20000:]}"


def test_fuzz_ops_backends_agree():
    _in_subprocess(QUICK_CASES, randomize=False, timeout=600)


@pytest.mark.fuzz
def test_fuzz_ops_backends_agree_long():
    _in_subprocess(LONG_CASES, randomize=True, timeout=3600)


# --- the session (runs in the subprocess) -----------------------------------------------------

def _outcome(call):
    """('ok', outputs) or ('refused', exception type name); anything else propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", call()
        except (ValueError, TypeError) as e:
            return "refused", type(e).__name__


def _check_outputs(name, out, W_shape, n_cols):
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        a = np.asarray(o, dtype=np.float64)
        assert np.all(np.isfinite(a)), f"{name}: non-finite output"
    if W_shape is not None:
        assert np.asarray(outs[0]).shape == W_shape, f"{name}: W shape changed"
    if len(outs) > 1 and n_cols is not None:
        idx = np.asarray(outs[1])
        assert np.all(np.diff(idx) > 0) and (idx.size == 0 or (idx.min() >= 0 and idx.max() < n_cols)), idx


def session(n_cases: int, randomize: bool) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from slimgpt import ops
    from slimgpt.testing import calibration, hessian_of, indefinite

    DTYPES = ["float64", "float32", "float16", "int64", "uint8", "bool", "complex128"]
    COUNTS = st.one_of(st.integers(-3, 12), st.sampled_from([True, False, 2.0, 2.5, -1, 2 ** 40, np.int64(3)]))

    @st.composite
    def problem(draw):
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        d_out = draw(st.integers(1, 6))
        n_heads, d = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 3]))
        N = n_heads * d
        kind = draw(st.sampled_from(["good", "singular", "indefinite", "dead", "zero"]))
        if kind == "good":
            H = hessian_of(calibration(rng, 4 * N, N))
        elif kind == "singular":
            H = hessian_of(calibration(rng, max(1, N // 2), N))
        elif kind == "indefinite":
            H = indefinite(rng, N, neg=draw(st.sampled_from([3e-3, 1.0])))
        elif kind == "dead":
            H = hessian_of(calibration(rng, 4 * N, N, dead=[0]))
        else:
            H = np.zeros((N, N))
        W = rng.standard_normal((d_out, N))
        scale = draw(st.sampled_from([1.0, 1e-30, 1e25, 1e-40]))
        which = draw(st.sampled_from(["W", "H", "both"]))
        W = W * (scale if which in ("W", "both") else 1.0)
        H = H * (scale if which in ("H", "both") else 1.0)
        if draw(st.booleans()):
            with np.errstate(all="ignore"):      # casting 1e25 to float16 gives inf: part of the fuzz
                W = W.astype(draw(st.sampled_from(DTYPES)))
        if draw(st.integers(0, 9)) == 0:
            W = np.where(W > 0, np.nan, W)
        for A in (W, H):
            A.flags.writeable = draw(st.booleans())
        return W, H, d

    @settings(max_examples=n_cases, derandomize=not randomize, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(problem(), st.sampled_from(["columns", "heads", "channels", "head_errors", "hessian"]), COUNTS,
           st.sampled_from([0.0, 0.01, -1.0, float("nan"), None, True]))
    def check(prob, op, count, percdamp):
        W, H, d = prob
        N = H.shape[0]
        calls = {
            "columns": lambda b: ops.prune_columns(W, H, [0] if count is True else list(range(min(abs(int(count)) if
                                                    isinstance(count, (int, np.integer)) else 1, N))),
                                                   percdamp=percdamp, return_loss=True, backend=b),
            "heads": lambda b: ops.prune_heads(W, H, count, d, percdamp=percdamp, return_loss=True, backend=b),
            "channels": lambda b: ops.prune_channels(W, H, count, percdamp=percdamp, return_loss=True, backend=b),
            "head_errors": lambda b: ops.head_errors(W, np.linalg.pinv(H) if np.all(np.isfinite(H)) else H, d,
                                                     backend=b),
            "hessian": lambda b: ops.hessian(W, backend=b),
        }
        (ra, va) = _outcome(lambda: calls[op]("reference"))
        for b in ("cpu", "torch"):
            ca, vb = _outcome(lambda: calls[op](b))
            if op == "head_errors" and {ra, ca} == {"ok", "refused"} and "ValueError" not in (va, vb):
                continue   # a given near-singular H⁻¹ (no damping retry here): float32 and float64 Cholesky
                #            may decide differently; what matters is that nothing is NaN
            assert ra == ca, f"{op}: reference {ra} {va if ra == 'refused' else ''} but {b} {ca} {vb if ca == 'refused' else ''}"
            if ra == "ok":
                shape = W.shape if op in ("columns", "heads", "channels") else None
                ncols = (N // d if op == "heads" else N) if op in ("heads", "channels") else None
                _check_outputs(op, va, shape, ncols)
                _check_outputs(op, vb, shape, ncols)

    check()


if __name__ == "__main__":
    session(int(sys.argv[1]), "--random" in sys.argv)
    print("ok")
