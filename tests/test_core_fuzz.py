"""A hypothesis fuzz of every function of slimgpt._core.

What this is: random calls with random shapes (zero sizes included), dtypes, layouts (strided,
Fortran order, transposed), read-only flags, index arrays (out of range, repeated, huge,
negative, wrong dtype), counts (negative, huge, beyond int64, bools, floats) and values (NaN,
Inf, subnormal, huge, indefinite and dead-input Hessians). The contract: every call either
returns finite outputs (W, H, err and the loss finite; indices sorted, unique, in range; DGS
sizes positive and summing to T) without writing into its inputs, or raises TypeError or
ValueError (NotPositiveDefiniteError is one); it never crashes, hangs or returns NaN.
What it is not: a check of the numbers (tests/test_core_bindings.py compares them with the
reference).

The hypothesis session runs in a subprocess with faulthandler, so a segfault or abort fails
the test with its output instead of killing pytest. The default suite runs a few hundred
derandomized cases; `pytest -m fuzz` runs many more, freshly random. Run the file directly to
fuzz in the foreground: `python tests/test_core_fuzz.py N_CASES [--random]`.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

QUICK_CASES = 600
LONG_CASES = 30000


def fuzz_in_subprocess(n_cases: int, randomize: bool, timeout: float) -> None:
    cmd = [sys.executable, "-X", "faulthandler", __file__, str(n_cases)] + (["--random"] if randomize else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"fuzz session failed (exit code {proc.returncode}):\n"
                                  f"{proc.stdout[-20000:]}\n{proc.stderr[-20000:]}")


def test_fuzz_core():
    fuzz_in_subprocess(QUICK_CASES, randomize=False, timeout=300)


@pytest.mark.fuzz
def test_fuzz_core_long():
    fuzz_in_subprocess(LONG_CASES, randomize=True, timeout=3600)


# --- the session (runs in the subprocess) -----------------------------------------------------

def session(n_cases: int, randomize: bool) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from slimgpt._native import core
    from slimgpt.testing import calibration, hessian_of, indefinite

    C = core()
    DTYPES = ["float16", "float64", "float32", "int32", "int64", "bool", "complex64", "uint8"]
    SPECIAL = [np.nan, np.inf, -np.inf, 1e-42, -1e-45, 3e38, -3e38]
    HUGE = [2 ** 31 - 1, 2 ** 31, 2 ** 62, 2 ** 63 - 1, -2 ** 63, -1]
    NOT_COUNTS = HUGE + [2 ** 63, 2 ** 64, -2 ** 70, True, False, np.True_, 2.0, None, "3", np.uint64(2 ** 64 - 1)]

    def pick(rng, options):
        return options[int(rng.integers(len(options)))]

    def values(rng, shape, bad):
        """Finite float64 values (PSD Hessians when square) at some scale; NaN/Inf etc. when bad."""
        kind = pick(rng, ["normal", "psd", "psd", "psd", "indefinite", "zeros"])
        scale = pick(rng, [1.0, 1.0, 1.0, 1.0, 1e-40, 1e-30, 1e-8, 1e20, 1e30, 3e38])
        if len(shape) == 2 and shape[0] == shape[1] and shape[0] > 0 and kind in ("psd", "indefinite"):
            N = shape[0]
            A = (hessian_of(calibration(rng, 4 * N + 1, N, dead=pick(rng, [(), (), (0,), (N - 1,)])))
                 if kind == "psd" else indefinite(rng, N, neg=pick(rng, [3e-3, 1.0])))
        else:
            A = np.zeros(shape) if kind == "zeros" else rng.standard_normal(shape)
        A = np.array(A * scale, dtype=np.float64)
        if bad and A.size:
            A.flat[rng.integers(0, A.size, size=int(rng.integers(1, 4)))] = pick(rng, SPECIAL)
        return A

    def array(rng, shape, dtype, bad, out=False):
        """A `dtype` array of `shape` (writable when out, sometimes read-only otherwise); when
        bad: special values, another dtype, shape or layout, read-only, or not an array."""
        how = pick(rng, ["values", "values", "dtype", "shape", "fortran", "strided", "transposed", "readonly",
                         "list", "scalar", "none"]) if bad else "ok"
        if how == "shape":
            shape = tuple(int(rng.integers(0, 7)) for _ in range(int(rng.integers(0, 4))))
        with np.errstate(all="ignore"):
            A = values(rng, shape, how == "values").astype(pick(rng, DTYPES) if how == "dtype" else dtype)
        if how == "fortran":
            A = np.asfortranarray(A)
        elif how == "strided" and A.ndim:
            A = np.repeat(A, 2, axis=-1)[..., ::2]
        elif how == "transposed":
            A = A.T
        if how == "readonly" or (not out and rng.random() < 0.5):
            A.setflags(write=False)
        return {"list": A.tolist(), "scalar": 1.0, "none": None}.get(how, A)

    def indices(rng, n, bad, length=None):
        """Distinct int64 indices in [0, n) (read-only half the time); when bad: out of range,
        repeated, huge, negative, another dtype or shape, strided, or a list."""
        length = int(rng.integers(0, n + 1)) if length is None else length
        idx = rng.permutation(n)[:length].astype(np.int64)
        how = pick(rng, ["range", "repeat", "huge", "negative", "int32", "float", "2d", "list", "strided"]) if bad \
            else "ok"
        if how in ("range", "huge", "negative", "repeat") and idx.size:
            idx[rng.integers(0, idx.size)] = {"range": n, "huge": pick(rng, HUGE), "negative": -1,
                                              "repeat": int(idx[0])}[how]
        idx = {"int32": lambda: idx.astype(np.int32), "float": lambda: idx.astype(np.float64),
               "2d": lambda: idx.reshape(1, -1), "strided": lambda: np.repeat(idx, 2)[::2],
               "list": lambda: idx.tolist()}.get(how, lambda: idx)()
        if isinstance(idx, np.ndarray) and rng.random() < 0.5:
            idx.setflags(write=False)
        return idx

    def count(rng, valid, bad):
        return pick(rng, NOT_COUNTS) if bad else pick(rng, [int(v) for v in valid] + [np.int64(valid[-1])])

    def real(rng, bad):
        return pick(rng, [-1.0, np.nan, np.inf, 1e39, 2 ** 1100, True, np.True_, "0.01", None, 1j]) if bad \
            else pick(rng, [0.0, 0.0, 0.01, 0.1, 0, 1e-4, np.float32(0.01), np.int64(0), 1e-300])

    def flag(rng, bad):
        return pick(rng, [1, 0, None, np.True_, "yes"]) if bad else pick(rng, [True, False])

    def sizes_for(rng, N, bad):
        """Positive group sizes summing to at most N; when bad: zero, negative, overflowing, too many."""
        total, sizes = int(rng.integers(0, N + 1)), []
        while total > 0:
            sizes.append(int(rng.integers(1, total + 1)))
            total -= sizes[-1]
        if bad:
            sizes += pick(rng, [[0], [-3], [2 ** 63 - 1, 2 ** 63 - 1], [N + 1], [1, 2 ** 63 - 1]])
        return np.array(sizes, dtype=np.int64)

    @st.composite
    def calls(draw):
        """(name, args, kwargs, outputs): outputs are the arguments the call may write. About
        half the calls are valid; the others have one bad argument."""
        name = draw(st.sampled_from(["hessian", "accumulate_hessian", "prune_columns", "head_errors",
                                     "prune_heads", "prune_channels", "dgs_group_sizes", "has_cuda"]))
        d_out, N, n = draw(st.integers(1, 7)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        if rng.random() < 0.05:  # empty matrices
            d_out, N, n = pick(rng, [(0, N, n), (d_out, 0, n), (d_out, N, 0)])
        bad_arg = int(rng.integers(0, 8)) if rng.random() < 0.5 else -1
        bad = [i == bad_arg for i in range(8)]
        if name == "has_cuda":
            return name, (), {}, ()
        if name == "dgs_group_sizes":
            return name, (count(rng, [0, 1, 64, 100, 700, 3000, 2 ** 20], bad[0]),), {}, ()
        if name in ("hessian", "accumulate_hessian"):
            H = array(rng, (N, N), np.float64, bad[0], out=True)
            args = (H, array(rng, (n, N), np.float32, bad[1]))
            if name == "accumulate_hessian":
                args += (count(rng, [0, 1, 7, 1000, 2 ** 62], bad[2]),)
            return name, args, {}, (H,)
        W_out = name != "head_errors"
        W = array(rng, (d_out, N), np.float32, bad[1] if name == "head_errors" else bad[0], out=W_out)
        H = array(rng, (N, N), np.float32, bad[2] if name == "head_errors" else bad[1])
        head_dim = pick(rng, [d for d in range(1, N + 1) if N % d == 0] or [1])
        n_heads = N // head_dim if N else 0
        if name == "prune_columns":
            args, opts = (W, H, indices(rng, N, bad[2])), {"percdamp": real(rng, bad[3]),
                                                          "compensate": flag(rng, bad[4])}
        elif name == "head_errors":
            err = array(rng, (n_heads,), np.float32, bad[0], out=True)
            args, opts = (err, W, H, count(rng, [head_dim], bad[3])), {"gcd": flag(rng, bad[4])}
        elif name == "prune_heads":
            n_prune = count(rng, list(range(n_heads + 1)), bad[2])
            head_groups = None
            if rng.random() < 0.4 and n_heads:
                head_groups = (indices(rng, n_heads, True, n_heads) if bad[7]
                               else rng.integers(0, n_heads, n_heads) if rng.random() < 0.5
                               else np.arange(n_heads) // max(1, n_heads // pick(rng, [1, 2, n_heads])))
            args, opts = (W, H, n_prune, count(rng, [head_dim], bad[3])), {
                "percdamp": real(rng, bad[4]), "gcd": flag(rng, bad[5]), "compensate": flag(rng, bad[6]),
                "head_groups": head_groups}
        else:
            args, opts = (W, H, sizes_for(rng, N, bad[2])), {"percdamp": real(rng, bad[3]),
                                                            "compensate": flag(rng, bad[4])}
        # optional arguments: positional, keyword or left out; rarely an unknown keyword
        keys = list(opts)
        n_positional = int(rng.integers(0, len(keys) + 1))
        args += tuple(opts[k] for k in keys[:n_positional])
        kwargs = {k: opts[k] for k in keys[n_positional:] if rng.random() < 0.7}
        if rng.random() < 0.02:
            kwargs["bogus"] = 1
        return name, args, kwargs, ((W,) if W_out else (args[0],))

    def snapshot(args, outputs):
        return [(a, a.copy()) for a in args if isinstance(a, np.ndarray) and not any(a is o for o in outputs)]

    def check(call):
        name, args, kwargs, outputs = call
        inputs = snapshot(args, outputs)
        try:
            result = getattr(C, name)(*args, **kwargs)
        except (TypeError, ValueError):  # NotPositiveDefiniteError is a ValueError
            return
        for a, before in inputs:  # inputs are only read
            assert np.array_equal(a, before, equal_nan=a.dtype.kind in "fc"), f"{name} wrote into an input"
        for out in outputs:
            assert np.all(np.isfinite(out)), f"{name} returned a non-finite output"
        if name in ("prune_columns", "prune_heads", "prune_channels"):
            loss = result if name == "prune_columns" else result[1]
            assert isinstance(loss, float) and np.isfinite(loss), f"{name} returned the loss {loss!r}"
        if name in ("prune_heads", "prune_channels"):
            idx = result[0]
            width = args[0].shape[1] // (args[3] if name == "prune_heads" else 1)
            assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0) and np.all((idx >= 0) & (idx < width)), idx
        if name == "dgs_group_sizes":
            assert np.all(result > 0) and int(result.sum()) == int(args[0]), result

    settings(max_examples=n_cases, deadline=None, database=None, derandomize=not randomize, print_blob=True,
             suppress_health_check=list(HealthCheck))(given(calls())(check))()


if __name__ == "__main__":
    session(int(sys.argv[1]), "--random" in sys.argv[2:])
