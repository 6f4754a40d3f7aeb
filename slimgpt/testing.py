"""Shared test helpers: the one tolerance table and the synthetic-problem generators.

What this is: the numbers and inputs that the test suite, the golden-case oracle
(slimgpt.oracle), the tutorials and the benchmarks all use, so that a tolerance or a generator
has exactly one definition. What it is not: test code (tests/ holds the tests) or an oracle of
the algorithms (slimgpt.reference is).

Shapes: W (d_out, d_in), X (n, d_in) one token per row, H = 2 XᵀX / n (d_in, d_in).
"""
from __future__ import annotations

import numpy as np

# kind: (rtol, atol relative to max|desired|). Each row says why it is as loose as it is.
TOLERANCES: dict[str, tuple[float, float]] = {
    # Two float64 formulas of the same quantity (Cholesky form vs naive inverse, grouped
    # Cholesky vs sequential downdates, block downdates vs re-inversion): only rounding differs,
    # on well-conditioned H.
    "float64": (1e-9, 1e-10),
    # float64 least-squares / normal-equation identities on H = 2 XᵀX / n with n >= 4 d_in, or
    # one extra solve or damping retry: condition numbers up to ~1e4 on the test matrices.
    "float64_solve": (1e-7, 1e-8),
    # The float32 C++/CUDA core against a float64 reference on the same inputs: ~6e-8 unit
    # roundoff times condition numbers ~1e2..1e3 of the synthetic H.
    "float32": (1e-4, 2e-4),
    # The float32 core on a singular H rescued by the retry ladder's smallest damping (1e-4 of the
    # mean diagonal): condition numbers ~1e5, so ~1e5 · 6e-8 relative rounding. (Without the
    # float64 damping decision the two differed by 145%.)
    "float32_singular": (1e-2, 1e-2),
    # torch float32 model forwards compared after algebraically equal rewrites (masked vs
    # shrunk weights, save/load, cached vs uncached): summation order changes only.
    "logits": (1e-4, 1e-4),
    # Whole tiny models pruned with the float32 core vs the float64 reference: the same pruned
    # indices (checked exactly), but OBS-compensated weights differ at ~1e-6 relative per layer
    # and the differences propagate through 3-4 layers of calibration activations.
    "backend_logits": (2e-3, 2e-3),
    # A float32 model against the same model saved in bfloat16 / float16 and loaded back into
    # float32: every weight rounded once to 8 (bf16) or 11 (f16) significant bits (relative error
    # up to 2^-9 resp. 2^-12 per weight), accumulated over the layers of a tiny model. Measured on
    # the six tiny configs: max error 1.2e-2 of max|logit| for bf16, 1.4e-3 for f16; bf16 binds.
    "half_storage": (2e-2, 3e-2),
}


def tolerance(kind: str, desired, floor: float = 0.0) -> tuple[float, float]:
    """(rtol, atol) of row `kind` for an expected array `desired`: atol scales with the larger of
    max|desired| and `floor`, the scale of the inputs the output is made of (e.g. max|W| for a
    pruned weight), so an all-zero expected output is not judged at atol 0, where any rounding
    fails. (Exact zeros, such as removed columns, are a separate, exact assertion.)"""
    rtol, atol_rel = TOLERANCES[kind]
    desired = np.asarray(desired, dtype=np.float64)
    finite = desired[np.isfinite(desired)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    return rtol, atol_rel * max(scale, floor, 1e-300)


def assert_close(actual, desired, kind: str, err_msg: str = "") -> None:
    """assert_allclose at row `kind`; the reference goes in `desired` (the check is asymmetric)."""
    rtol, atol = tolerance(kind, desired)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(desired, dtype=np.float64),
                               rtol=rtol, atol=atol, err_msg=f"[{kind}] {err_msg}")


# ----------------------------------------------------------------------------------------------
# Synthetic problems

def calibration(rng, n: int, d_in: int, *, dead=(), mix: float = 0.3) -> np.ndarray:
    """X (n, d_in): correlated Gaussian inputs (so H is not diagonal); `dead` columns are zero."""
    A = np.eye(d_in) + mix * rng.standard_normal((d_in, d_in)) / np.sqrt(d_in)
    X = rng.standard_normal((n, d_in)) @ A
    X[:, list(dead)] = 0.0
    return X


def hessian_of(X) -> np.ndarray:
    """H = 2 XᵀX / n in float64 (spec §1.2), without the reference's checks."""
    X = np.asarray(X, dtype=np.float64)
    return 2.0 * X.T @ X / X.shape[0]


def weights(rng, d_out: int, d_in: int, *, block: int = 1, spread=(0.3, 3.0)) -> np.ndarray:
    """W (d_out, d_in) whose blocks of `block` columns have geometrically spaced scales in a
    random order, so float32 and float64 implementations cannot flip a near-tie in which heads
    or channels are selected (widen `spread` for many blocks)."""
    n_blocks = d_in // block
    scales = np.geomspace(spread[0], spread[1], n_blocks)[rng.permutation(n_blocks)]
    return rng.standard_normal((d_out, d_in)) * np.repeat(scales, block)[None, :]


def indefinite(rng, d_in: int, neg: float = 3e-3) -> np.ndarray:
    """An H with one slightly negative eigenvalue (−neg · mean diagonal), as float32
    accumulation can produce: its Cholesky fails at percdamp 0, 1e-4 and 1e-3 and the retry
    ladder succeeds at 1e-2, well away from the boundary."""
    H = hessian_of(calibration(rng, 4 * d_in, d_in))
    vals, vecs = np.linalg.eigh(H)
    vals[0] = -neg * float(np.mean(np.diag(H)))
    return (vecs * vals) @ vecs.T


def problem(seed: int, d_out: int = 12, d_in: int = 32, *, block: int = 1, n_per_input: int = 8, dead=(),
            spread=(0.3, 3.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W, X, H) for one pruning problem: `weights` with well-separated block scales,
    `calibration` with n = n_per_input · d_in tokens, H = 2 XᵀX / n."""
    rng = np.random.default_rng(seed)
    X = calibration(rng, n_per_input * d_in, d_in, dead=dead)
    W = weights(rng, d_out, d_in, block=block, spread=spread)
    return W, X, hessian_of(X)


# ----------------------------------------------------------------------------------------------
# Closed forms the tests compare against

def columns_of(blocks, width: int) -> np.ndarray:
    """Input columns of the given blocks of `width` consecutive columns (heads, KV groups)."""
    blocks = np.asarray(blocks, dtype=np.int64).reshape(-1)
    return (blocks[:, None] * width + np.arange(width)[None, :]).reshape(-1)


def damped(H, percdamp: float) -> np.ndarray:
    """H + percdamp · mean(diag H) · I (spec §2.4, without the dead-input step)."""
    H = np.asarray(H, dtype=np.float64)
    return H + percdamp * np.mean(np.diag(H)) * np.eye(len(H))


def least_squares(W, H, S) -> np.ndarray:
    """The optimum of Eq. (1) with columns S removed: W_K' = W H[:, K] (H_KK)⁻¹, W'[:, S] = 0
    (spec §2.2), by a direct solve."""
    W, H = np.asarray(W, dtype=np.float64), np.asarray(H, dtype=np.float64)
    K = np.setdiff1d(np.arange(W.shape[1]), np.asarray(S, dtype=np.int64))
    out = np.zeros_like(W)
    out[:, K] = np.linalg.solve(H[np.ix_(K, K)], (W @ H[:, K]).T).T
    return out


def quiet_prune(model, calib, **settings):
    """pipeline.prune_model(model, calib, PruneSettings(**settings)) in place, without a progress bar
    or a per-layer log: the one way the tests prune a tiny model. Returns the PruneResult."""
    from slimgpt.pipeline import PruneSettings, prune_model

    return prune_model(model, calib, PruneSettings(**settings), progress=False, log=lambda s: None)


def tiny_checkpoint(folder, tiny: str, ratio: float | None = None, *, overrides=None, **settings):
    """A saved slimgpt checkpoint of a tiny model (slimgpt.loaders.tiny), pruned by `ratio` with
    8 x 32 byte-level calibration windows on the reference backend when a ratio is given."""
    from slimgpt.checkpoint import save_pretrained
    from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
    from slimgpt.textdata import calibration_windows

    m = tiny_model(tiny, **(overrides or {}))
    if ratio:
        quiet_prune(m, calibration_windows(byte_tokenizer(), 8, 32, 0), ratio=ratio, backend="reference", **settings)
    return save_pretrained(m, folder, byte_tokenizer(), {"source_model": tiny})
