"""Dead inputs, damping and a Cholesky factorisation that never returns NaN silently.

What this is: the preparation of H that every OBS step shares (spec §2.4, published code) and
the retry policy for a Hessian that is not positive definite. What it is not: part of the
paper, which mentions neither dead inputs nor damping. The C++ core mirrors `prepare_hessian`
(cpp/obs_cpu.cpp, prepare_inverse); the damping is decided here, in float64, for every path
(`choose_percdamp`), and `retry_with_damping` is the one driver that reference, twin, slimgpt.ops
and the auto schedule run their attempts through.

Shapes: W (d_out, d_in); H (d_in, d_in).
"""
from __future__ import annotations

import warnings
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")

# Damping fractions tried, in order, after the requested one fails (spec §2.4 uses one fixed
# percdamp; the ladder is ours). Each adds percdamp · mean(diag H) to the diagonal.
RETRY_PERCDAMP = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class DampingWarning(UserWarning):
    """H was not positive definite at the requested damping; a larger one was used.

    Attributes
    ----------
    percdamp : float
        The damping fraction actually used.
    requested : float
        The damping fraction the caller asked for.
    """

    def __init__(self, message: str, percdamp: float, requested: float):
        super().__init__(message)
        self.percdamp = percdamp
        self.requested = requested


class NotPositiveDefiniteError(ValueError):
    """A Cholesky factorisation failed and no damping on the retry ladder repaired it."""


def prepare_hessian(W: np.ndarray, H: np.ndarray, percdamp: float) -> tuple[np.ndarray, np.ndarray]:
    """Handle dead inputs, then damp H, as the published code does before its loop.

    Paper: not in the paper; spec §2.4 (published code, as in GPTQ/SparseGPT).

        dead = {j : H[j,j] == 0};  H[j,j] = 1 and W[:,j] = 0 for j in dead
        H += percdamp · mean(diag H) · I

    A dead input never reaches the output, so zeroing its column changes nothing on the
    calibration data; with H[j,j] = 1 it then costs 0 and is pruned first.

    Parameters
    ----------
    W : float64 array (d_out, d_in)
    H : float64 array (d_in, d_in)
    percdamp : float
        Damping fraction >= 0 (the published command-line default is 0.01, the README's 0).

    Returns
    -------
    W, H : new float64 arrays of the same shapes.
    """
    W, H = W.copy(), H.copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    # The mean is taken after the dead entries became 1, as in the published code.
    H[np.diag_indices_from(H)] += percdamp * np.mean(np.diag(H))
    return W, H


def cholesky(A: np.ndarray, what: str = "matrix") -> np.ndarray:
    """Lower Cholesky factor L (A = L Lᵀ); NotPositiveDefiniteError instead of NaN or LinAlgError.

    Paper: Eq. (3) through a Cholesky factor, as in GPTQ (used throughout).

    Parameters
    ----------
    A : float64 array (N, N), symmetric
    what : str
        Name used in the error message.

    Returns
    -------
    L : float64 array (N, N), lower triangular with a positive diagonal.
    """
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise NotPositiveDefiniteError(f"{what} is not positive definite (Cholesky failed)") \
            from None
    if not np.all(np.isfinite(L)) or np.any(np.diag(L) <= 0):
        raise NotPositiveDefiniteError(f"{what} is not positive definite (Cholesky gave NaN/Inf/0)")
    return L


def cholesky_inverse(H: np.ndarray) -> np.ndarray:
    """G = H⁻¹ through the Cholesky factor, as torch.cholesky_inverse in the published code.

    Paper: Algorithm 1, H⁻¹ at the start of each greedy iteration (spec §3.3 step 1).

        H = L Lᵀ,  G = L⁻ᵀ L⁻¹

    Parameters
    ----------
    H : float64 array (N, N), symmetric positive definite

    Returns
    -------
    G : float64 array (N, N), symmetric.
    """
    Linv = np.linalg.inv(cholesky(H, "H"))
    return Linv.T @ Linv


# Below this damping the float64 decision also demands a margin (choose_percdamp). At or above
# it the damping alone keeps every pivot² of a positive semi-definite H above
# percdamp · mean(diag H), far above the margin, so the float64 factorisation is skipped (it would
# cost a Cholesky per call at the pipeline's default 0.01) and only a failed attempt climbs.
MARGIN_BELOW = 1e-2


def damping_ladder(percdamp: float) -> list[float]:
    """The damping fractions tried, in order: the requested one, then each larger RETRY_PERCDAMP
    (spec §2.4; the retry is this project's, not the paper's)."""
    return [percdamp] + [p for p in RETRY_PERCDAMP if p > percdamp]


def choose_percdamp(H: np.ndarray, percdamp: float) -> float:
    """The damping every implementation uses: decided once, in float64, for all of them.

    Paper: not in the paper; spec §2.4 (our retry ladder, decided before any pruning).

        for p in [percdamp, then each RETRY_PERCDAMP > percdamp]:
            _, H_p = prepare_hessian(·, H, p);  L = chol(H_p)
            accept p if p >= MARGIN_BELOW, or L exists and min diag(L)² > √d_in · ε₃₂ · mean(diag H_p)

    The margin is what the float32 fast paths resolve: a numerically singular H whose float64
    Cholesky succeeds on rounding (pivot² ~ 1e-16 of the diagonal) would factor in one path and
    fail in another, so it is damped on the ladder instead, identically for the reference, its
    block-downdate twin and the C++/CUDA/torch paths of slimgpt.ops. Every rung p >= 1e-4 passes
    for a positive semi-definite H up to d_in ~ 7e5 (its pivots² are then >= p · mean(diag H)).

    Parameters
    ----------
    H : float64 array (d_in, d_in), finite; read only when percdamp < MARGIN_BELOW (may be None
        otherwise, so that a fast path need not copy a GPU Hessian to the host)
    percdamp : float
        The requested damping fraction (>= 0).

    Returns
    -------
    The first damping fraction on the ladder that passes; NotPositiveDefiniteError if none does.
    """
    ladder = damping_ladder(percdamp)
    for p in ladder:
        if p >= MARGIN_BELOW:
            return p
        H = np.asarray(H, dtype=np.float64)
        margin = np.sqrt(H.shape[0]) * np.finfo(np.float32).eps
        _, Hp = prepare_hessian(np.zeros((0, H.shape[0])), H, p)
        try:
            L = cholesky(Hp, "H")
        except NotPositiveDefiniteError:
            continue
        if np.min(np.diag(L)) ** 2 > margin * np.mean(np.diag(Hp)):
            return p
    raise NotPositiveDefiniteError(
        f"H is not positive definite even with percdamp={ladder[-1]:g} x mean(diag H) "
        f"(tried {', '.join(f'{p:g}' for p in ladder)}; mean(diag H) = {np.mean(np.diag(H)):.3g}). "
        f"Check the calibration inputs.")


def warn_damping(p: float, requested: float, *, stacklevel: int = 2) -> None:
    """Warn DampingWarning when the damping used, p, is not the requested one (spec §2.4)."""
    if p != requested:
        warnings.warn(DampingWarning(
            f"H is not positive definite with percdamp={requested:g}; used percdamp={p:g} "
            f"(adds {p:g} x mean(diag H) to the diagonal)", p, requested), stacklevel=stacklevel)


def retry_with_damping(attempt: Callable[[float], T], H: np.ndarray, percdamp: float, *,
                       warn: bool = True) -> tuple[T, float]:
    """Run `attempt(p)` at the damping choose_percdamp(H, percdamp) decided and, if it still
    raises NotPositiveDefiniteError, at each larger rung of the ladder. Returns (result, p).

    Paper: not in the paper; spec §2.4 damping, plus our retry so that an H that is not
    positive definite (float32 accumulation, too few tokens) never yields NaN silently.
    Every implementation (this reference, its block-downdate twin, slimgpt.ops around the C++,
    CUDA and torch paths, the auto schedule) goes through this one function, so all of them damp
    alike: the decision is float64 and shared; only a failure of an attempt's own factorisation
    (a float32 one, or a rung >= MARGIN_BELOW taken untested) climbs further.

    With `warn`, a damping other than the requested one warns DampingWarning(percdamp=p); a
    caller that takes p from the result passes warn=False. When every rung fails,
    NotPositiveDefiniteError names the ladder.

    Parameters
    ----------
    attempt : callable p -> result
        One whole pruning run at damping fraction p; raises NotPositiveDefiniteError on failure.
    H : float64 array (d_in, d_in), or None when percdamp >= MARGIN_BELOW (choose_percdamp)
        The Hessian as given (before dead inputs and damping).
    percdamp : float
        The requested damping fraction.
    warn : bool
        Warn DampingWarning when the damping used is not the requested one.

    Returns
    -------
    (whatever `attempt` returns for the first damping that works, that damping).
    """
    ladder = damping_ladder(choose_percdamp(H, percdamp))
    for p in ladder:
        try:
            result = attempt(p)
        except NotPositiveDefiniteError as failure:
            last = failure
            continue
        if warn:
            warn_damping(p, percdamp, stacklevel=5)
        return result, p
    raise NotPositiveDefiniteError(
        f"H is not positive definite even with percdamp={ladder[-1]:g} x mean(diag H) "
        f"(tried {', '.join(f'{p:g}' for p in damping_ladder(percdamp))}). Check the calibration "
        f"inputs. Last failure: {last}")


def solve_with_damping(W: np.ndarray, H: np.ndarray, percdamp: float,
                       solve: Callable[[np.ndarray, np.ndarray], T], *, warn: bool = True) -> tuple[T, float]:
    """Run `solve(W, H_prepared)` at the damping of retry_with_damping. Returns (result, p).

    Paper: not in the paper; spec §2.4.

        p = choose_percdamp(H, percdamp)   (then larger rungs only if solve still fails)
        W', H' = prepare_hessian(W, H, p);  return solve(W', H'), p

    Parameters
    ----------
    W : float64 array (d_out, d_in)
    H : float64 array (d_in, d_in)
    percdamp : float
        The requested damping fraction.
    solve : callable (W, H) -> result
        The whole pruning run on the prepared W and H; it raises NotPositiveDefiniteError
        when any of its factorisations fails.
    warn : bool
        As in retry_with_damping.

    Returns
    -------
    (whatever `solve` returns for the damping used, that damping).
    """
    return retry_with_damping(lambda p: solve(*prepare_hessian(W, H, p)), H, percdamp, warn=warn)


def result(main: tuple, loss: float, p: float, return_loss: bool, return_damping: bool) -> tuple:
    """A prune function's return value: `main` (W_new and the indices, or W_new alone), then the
    loss with return_loss, then the damping used with return_damping."""
    out = main + ((loss,) if return_loss else ()) + ((p,) if return_damping else ())
    return out[0] if len(out) == 1 else out


def objective(W0: np.ndarray, W_new: np.ndarray, H: np.ndarray, columns: np.ndarray) -> float:
    """½ tr(ΔW H ΔWᵀ) when only `columns` of W changed (ΔW = W0 − W_new is zero elsewhere).

    Paper: Eq. (1) written through H (spec §1.2), restricted to the changed columns; the
    loss of pruning without compensation, where no OBS errors e_i are formed.
    """
    D = W0[:, columns] - W_new[:, columns]
    return 0.5 * float(np.sum((D @ H[np.ix_(columns, columns)]) * D))
