"""Input validation shared by the reference functions.

What this is: the checks that turn bad input into a `ValueError` naming the problem (wrong
shape, NaN/Inf, index out of range, count out of range). What it is not: algorithm code; the
C++ core does the same checks in its binding layer (cpp/bindings.cpp).

Every helper returns a fresh float64 / int64 array, so the callers never mutate their inputs.
"""
from __future__ import annotations

import numbers

import numpy as np

# The largest number of input columns (d_in) or structures any implementation accepts: the
# C++ and CUDA cores call 32-bit-integer BLAS/LAPACK.
MAX_COLUMNS = 2 ** 31 - 1


def real_array(name: str, A) -> np.ndarray:
    """`A` as a NumPy array of a real number dtype (float, signed or unsigned int); ValueError
    for booleans, complex numbers, strings, dates and objects, which would be cast silently."""
    if type(A).__module__.startswith("torch"):
        A = A.detach().cpu()
        if str(A.dtype) == "torch.bfloat16":   # no NumPy dtype: widened to float32, exactly
            A = A.float()
        A = A.numpy()
    A = np.asarray(A)
    if A.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real floating-point or integer array, got dtype {A.dtype}")
    return A


def as_matrix(name: str, A, *, finite: bool = True) -> np.ndarray:
    """A float64 copy of the 2-D array `A`; ValueError if it is not 2-D, not real or not finite."""
    A = np.array(real_array(name, A), dtype=np.float64, copy=True)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got an array of shape {A.shape}")
    if finite and not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or Inf")
    return A


def as_tokens(name: str, X) -> np.ndarray:
    """Calibration inputs as a float64 (n_tokens, d_in) matrix; (batch, seq, d_in) is flattened."""
    X = np.array(real_array(name, X), dtype=np.float64, copy=True)
    if X.ndim == 3:
        X = X.reshape(-1, X.shape[-1])
    if X.ndim != 2:
        raise ValueError(f"{name} must be (n, d_in) or (batch, seq, d_in), got shape {X.shape}")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has no features (d_in = 0): there is no layer input to prune")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or Inf")
    return X


def hessian_overflow(x_max: float) -> str:
    """The one message every backend gives when finite inputs overflow H = 2 XᵀX / n."""
    return (f"X reaches |x| = {x_max:.3g}: the Hessian 2 XᵀX / n overflows float64 (|x| must stay below "
            f"about 1e154); scale the inputs down")


def weight_and_hessian(W, H, *, H_name: str = "H") -> tuple[np.ndarray, np.ndarray]:
    """Check W (d_out, d_in) and a symmetric-shaped H (d_in, d_in); return float64 copies."""
    W = as_matrix("W", W)
    H = as_matrix(H_name, H)
    check_shapes(W, H, H_name)
    return W, H


def check_shapes(W, H, H_name: str = "H") -> None:
    """W is (d_out, d_in) and H is (d_in, d_in); W and H may be NumPy arrays or torch tensors
    (the fast paths check shapes without copying to float64)."""
    for name, A in (("W", W), (H_name, H)):
        if not hasattr(A, "shape"):
            raise ValueError(f"{name} must be a NumPy array or a torch tensor, got {type(A).__name__}")
        if len(A.shape) != 2:
            raise ValueError(f"{name} must be a 2-D matrix, got an array of shape {tuple(A.shape)}")
    if H.shape[0] != H.shape[1]:
        raise ValueError(f"{H_name} must be square, got shape {tuple(H.shape)}")
    if H.shape[0] != W.shape[1]:
        raise ValueError(f"{H_name} is {H.shape[0]} x {H.shape[1]} but W has {W.shape[1]} input "
                         f"columns (W is d_out x d_in in torch layout)")


def count(name: str, n, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; ValueError otherwise (bools and non-integral floats rejected)."""
    if isinstance(n, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got the boolean {n!r}")
    if not isinstance(n, numbers.Integral):
        if isinstance(n, numbers.Real) and np.isfinite(n) and float(n).is_integer():
            n = int(n)
        else:
            raise ValueError(f"{name} must be an integer, got {n!r}")
    n = int(n)
    if not lo <= n <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {n}")
    return n


def columns(cols, d_in: int) -> np.ndarray:
    """Distinct column indices in [0, d_in) as int64, in the order given."""
    c = np.asarray(cols)
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.ndim != 1:
        raise ValueError(f"columns must be a 1-D list of indices, got shape {c.shape}")
    integral = np.issubdtype(c.dtype, np.integer) or (
        np.issubdtype(c.dtype, np.floating) and np.all(np.isfinite(c)) and np.all(c == np.round(c)))
    if c.dtype == bool or not integral:
        raise ValueError(f"columns must be integer indices, got dtype {c.dtype}")
    if c.min() < 0 or c.max() >= d_in:      # before the cast: huge floats or uint64 must not wrap
        raise ValueError(f"column indices must be in [0, {d_in}), got min {c.min()} max {c.max()}")
    c = c.astype(np.int64)
    if np.unique(c).size != c.size:
        raise ValueError("column indices must not repeat")
    return c


def percdamp(p) -> float:
    """A finite damping fraction >= 0."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise ValueError(f"percdamp must be a number >= 0, got {p!r}")
    p = float(p)
    if not np.isfinite(p) or p < 0:
        raise ValueError(f"percdamp must be a finite number >= 0, got {p}")
    return p


def head_dim(d: int, d_in: int) -> int:
    """A head size that divides d_in."""
    d = count("head_dim", d, 1, max(d_in, 1))
    if d_in % d:
        raise ValueError(f"head_dim={d} does not divide d_in={d_in}")
    return d


def ratio(name: str, r) -> float:
    """A pruning ratio in [0, 1)."""
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1), got {r!r}")
    r = float(r)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {r}")
    return r
