"""slimgpt.ops at the edges, alike on every backend, the reference included: finite input whose
Hessian overflows float64 is a clear ValueError (it was an all-Inf H with no error), lists are
read as the reference reads them (the cpu backend said "got shape ()" for a 40 x 8 list), and a
wrong type of any array or size argument is one ValueError (never TypeError, AttributeError or
IndexError)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from slimgpt import ops
from slimgpt._native import has_cuda
from slimgpt.testing import assert_close

BACKENDS = ["reference", "cpu", "torch",
            pytest.param("cuda", marks=pytest.mark.skipif(not has_cuda(), reason="no CUDA build or device"))]
OVERFLOW = "overflows float64"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ops.ExperimentalWarning)
        yield


def _np(A):
    return A.detach().cpu().numpy() if hasattr(A, "detach") else np.asarray(A)


def _inputs(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, 8))
    return X * scale, 2.0 * X.T @ X / 40 + 0.1 * np.eye(8), rng.standard_normal((4, 8))


def _on(A, backend):
    if backend != "cuda":
        return A
    import torch
    return torch.from_numpy(np.ascontiguousarray(A)).cuda()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e155, 1e200, 1e300])
def test_overflowing_hessian_is_an_error(backend, scale):
    X, H, _ = _inputs(scale=scale)
    assert np.all(np.isfinite(X))
    with pytest.raises(ValueError, match=OVERFLOW):
        ops.hessian(_on(X, backend), backend=backend)
    with pytest.raises(ValueError, match=OVERFLOW):
        ops.accumulate_hessian(None, 0, _on(X, backend), backend=backend)
    with pytest.raises(ValueError, match=OVERFLOW):            # into a running mean, in place or not
        ops.accumulate_hessian(_on(H.copy(), backend), 40, _on(X, backend), backend=backend)
    with pytest.raises(ValueError, match=OVERFLOW):
        ops.accumulate_hessian(_on(H.copy(), backend), 40, _on(X, backend), backend=backend, overwrite_H=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_largest_hessian_that_fits_agrees(backend):
    """Just below the overflow (|x|² · 2 near float64's max, H finite) every backend returns the
    reference's H: the check refuses only what overflowed."""
    X, _, _ = _inputs(scale=1e151)
    want = ops.hessian(X, backend="reference")
    assert np.all(np.isfinite(want)) and np.max(np.abs(want)) > 1e302
    assert_close(_np(ops.hessian(_on(X, backend), backend=backend)), want, "float32", err_msg=backend)


@pytest.mark.parametrize("backend", BACKENDS[:3])
def test_lists_are_read_like_arrays(backend):
    X, H, W = _inputs()
    for f, args in ((ops.hessian, (X,)), (ops.accumulate_hessian, (H, 40, X)),
                    (ops.prune_columns, (W, H, [1, 3])), (ops.head_errors, (W, np.linalg.inv(H), 2)),
                    (ops.prune_heads, (W, H, 1, 2)), (ops.prune_channels, (W, H, 3))):
        want = f(*args, backend=backend)
        got = f(*[a.tolist() if isinstance(a, np.ndarray) else a for a in args], backend=backend)
        for a, b in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            assert isinstance(b, (np.ndarray, int)), (f.__name__, type(b))
            np.testing.assert_array_equal(b, a, err_msg=f"{f.__name__} {backend}")


ODD = {"float": 2.5, "bool": True, "str": "ab", "object": object(), "dict": {}, "nan": float("nan"),
       "0-d array": np.array(2.0), "ragged": [[1.0, 2.0], [3.0]]}


@pytest.mark.parametrize("backend", BACKENDS[:3])
@pytest.mark.parametrize("odd", list(ODD))
def test_wrong_types_are_one_value_error(backend, odd):
    X, H, W = _inputs()
    o = ODD[odd]
    calls = {"hessian X": lambda: ops.hessian(o, backend=backend),
             "accumulate H": lambda: ops.accumulate_hessian(o, 40, X, backend=backend),
             "accumulate X": lambda: ops.accumulate_hessian(H, 40, o, backend=backend),
             "prune_columns W": lambda: ops.prune_columns(o, H, [1], backend=backend),
             "prune_columns H": lambda: ops.prune_columns(W, o, [1], backend=backend),
             "prune_heads H": lambda: ops.prune_heads(W, o, 1, 2, backend=backend),
             "head_errors Hinv": lambda: ops.head_errors(W, o, 2, backend=backend),
             "prune_channels H": lambda: ops.prune_channels(W, o, 2, backend=backend)}
    for name, call in calls.items():
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"{name}: {odd} accepted")


@pytest.mark.parametrize("backend", BACKENDS[:3])
@pytest.mark.parametrize("sizes,message", [
    (2.5, "group_sizes must be an integer, got 2.5"), (True, "group_sizes must be an integer, got the boolean"),
    (np.bool_(False), "group_sizes must be an integer, got the boolean"), (float("nan"), "must be an integer"),
    (object(), "group_sizes must be an integer, got <object"), ([1, 2.5], "group_sizes entry must be an integer"),
    (0, r"group_sizes must be in \[1, ")])
def test_group_sizes_of_a_wrong_type(backend, sizes, message):
    """Issue: a float or boolean group_sizes gave "TypeError: 'float' object is not iterable"."""
    _, H, W = _inputs()
    with pytest.raises(ValueError, match=message):
        ops.prune_channels(W, H, 3, group_sizes=sizes, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS[:3])
def test_integral_float_group_size_is_that_integer(backend):
    _, H, W = _inputs()
    a = ops.prune_channels(W, H, 3, group_sizes=2, backend=backend)
    b = ops.prune_channels(W, H, 3, group_sizes=2.0, backend=backend)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
