"""The layer-wise objective (paper Eq. 1) and its Hessian H = 2 XᵀX / n.

What this is: the NumPy float64 specification of Hessian accumulation from calibration inputs
and of the reconstruction error that every pruning step minimises. What it is not: a fast
path; cpp/hessian_cpu.cpp mirrors `hessian` and `accumulate_hessian` (same names).

Shapes: X (n, d_in) calibration inputs, one token per row (or (batch, seq, d_in), read as
batch·seq tokens); W, W_new (d_out, d_in) in torch layout; H (d_in, d_in).

Units: n counts **tokens**. The published code (GPTQ's add_batch) counts sequences, so its H is
ours times the sequence length; no selection or compensation depends on the scale of H
(spec §1.2), only the reported reconstruction error does.
"""
from __future__ import annotations

import numpy as np

from . import _checks


def hessian(X) -> np.ndarray:
    """Hessian of the layer objective for calibration inputs X.

    Paper: Eq. (1): the objective ||W X - W' X||² has Hessian 2 X Xᵀ per output row (paper
    layout, X is d_in x n); we normalise by the number of tokens (spec §1.2).

        H = 2 XᵀX / n        (X here is n x d_in, one token per row)

    Parameters
    ----------
    X : array (n, d_in) or (batch, seq, d_in)
        Calibration inputs of the linear layer; n = batch·seq tokens, n >= 1.

    Returns
    -------
    H : float64 array (d_in, d_in)
        Symmetric positive semi-definite.
    """
    X = _checks.as_tokens("X", X)
    if X.shape[0] == 0:
        raise ValueError("X has no tokens (n = 0): the Hessian is undefined")
    with np.errstate(over="ignore"):
        return _finite(2.0 * (X.T @ X) / X.shape[0], X)


def accumulate_hessian(H, n_seen: int, X) -> tuple[np.ndarray, int]:
    """Add a chunk of calibration inputs to a running-mean Hessian.

    Paper: Eq. (1); the streaming form of GPTQ's add_batch (spec §1.2).

        H_new = (n_seen · H + 2 XᵀX) / (n_seen + n)

    so that feeding chunks X_1, X_2, ... gives exactly hessian(concatenation of the chunks).

    Parameters
    ----------
    H : array (d_in, d_in) or None
        The Hessian of the n_seen tokens seen so far; None (or ignored) when n_seen == 0.
    n_seen : int
        Number of tokens already in H (tokens, not sequences).
    X : array (n, d_in) or (batch, seq, d_in)
        The new chunk, n = batch·seq tokens; n = 0 leaves H unchanged.

    Returns
    -------
    H : float64 array (d_in, d_in)
        The Hessian of all n_seen + n tokens (a new array).
    n_seen : int
        n_seen + n.
    """
    X = _checks.as_tokens("X", X)
    n, d_in = X.shape
    # n_seen + n must fit in int64, as in every implementation that counts tokens in int64
    n_seen = _checks.count("n_seen", n_seen, 0, np.iinfo(np.int64).max - n)
    if n_seen == 0:
        if H is not None:
            _square("H", _checks.as_matrix("H", H), d_in)
        return hessian(X), n
    if H is None:
        raise ValueError(f"H is None but n_seen = {n_seen} > 0")
    H = _square("H", _checks.as_matrix("H", H), d_in)
    # Running mean: the old mean weighs n_seen tokens, the chunk n tokens.
    with np.errstate(over="ignore"):
        return _finite((n_seen * H + 2.0 * (X.T @ X)) / (n_seen + n), X), n_seen + n


def reconstruction_error(W, W_new, H) -> float:
    """The layer objective of Eq. (1) for a pruned weight, written through H.

    Paper: Eq. (1).

        err = ½ tr((W - W_new) H (W - W_new)ᵀ)

    For H = 2 XᵀX / n this equals ||(W - W_new) Xᵀ||_F² / n, the mean squared output change
    per token; OBS's per-column losses ½ ||e_i||² add up to it (spec §2.3).

    Parameters
    ----------
    W, W_new : arrays (d_out, d_in)
        Original and pruned weights.
    H : array (d_in, d_in)
        Hessian of the same layer.

    Returns
    -------
    err : float
    """
    W = _checks.as_matrix("W", W)
    W_new = _checks.as_matrix("W_new", W_new)
    if W_new.shape != W.shape:
        raise ValueError(f"W_new has shape {W_new.shape} but W has shape {W.shape}")
    H = _square("H", _checks.as_matrix("H", H), W.shape[1])
    D = W - W_new
    return 0.5 * float(np.sum((D @ H) * D))


def _finite(H: np.ndarray, X: np.ndarray) -> np.ndarray:
    """H, or ValueError when finite inputs overflowed it (|x| beyond about 1e154)."""
    if not np.all(np.isfinite(H)):
        raise ValueError(_checks.hessian_overflow(float(np.max(np.abs(X)))))
    return H


def _square(name: str, H: np.ndarray, d_in: int) -> np.ndarray:
    if H.shape != (d_in, d_in):
        raise ValueError(f"{name} must be {d_in} x {d_in} to match the inputs, got {H.shape}")
    return H
