"""Dead inputs, damping and a Cholesky factorisation that never returns NaN silently.

What this is: the preparation of H that every OBS step shares (spec §2.4, published code) and
the retry policy for a Hessian that is not positive definite. What it is not: part of the
paper, which mentions neither dead inputs nor damping. The C++ core mirrors `prepare_hessian`
(cpp/obs_cpu.cpp, prepare_inverse) and the retry lives in slimgpt/ops.py for the fast paths.

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


def retry_with_damping(attempt: Callable[[float], T], percdamp: float, *, what: str = "") -> T:
    """Run `attempt(p)` for p = percdamp and then each larger RETRY_PERCDAMP until one does not
    raise NotPositiveDefiniteError.

    Paper: not in the paper; spec §2.4 damping, plus our retry so that an H that is not
    positive definite (float32 accumulation, too few tokens) never yields NaN silently.
    Every implementation (this reference, its block-downdate twin, slimgpt.ops around the C++
    and CUDA cores) goes through this one function, so all of them damp alike.

    A retry warns with DampingWarning(percdamp=p); when every p fails,
    NotPositiveDefiniteError is raised, naming the ladder and `what` (e.g. mean(diag H)).

    Parameters
    ----------
    attempt : callable p -> result
        One whole pruning run at damping fraction p; raises NotPositiveDefiniteError on failure.
    percdamp : float
        The requested damping fraction.
    what : str
        Extra context for the final error message.

    Returns
    -------
    Whatever `attempt` returns for the first damping that works.
    """
    ladder = [percdamp] + [p for p in RETRY_PERCDAMP if p > percdamp]
    for p in ladder:
        try:
            result = attempt(p)
        except NotPositiveDefiniteError as failure:
            last = failure
            continue
        if p != percdamp:
            warnings.warn(DampingWarning(
                f"H is not positive definite with percdamp={percdamp:g}; used percdamp={p:g} "
                f"(adds {p:g} x mean(diag H) to the diagonal)", p, percdamp), stacklevel=4)
        return result
    raise NotPositiveDefiniteError(
        f"H is not positive definite even with percdamp={ladder[-1]:g} x mean(diag H) "
        f"(tried {', '.join(f'{p:g}' for p in ladder)}{'; ' + what if what else ''}). "
        f"Check the calibration inputs. Last failure: {last}")


def solve_with_damping(W: np.ndarray, H: np.ndarray, percdamp: float,
                       solve: Callable[[np.ndarray, np.ndarray], T]) -> T:
    """Run `solve(W, H_prepared)` and, if a Cholesky fails, rerun it with more damping.

    Paper: not in the paper; spec §2.4.

        for p in [percdamp, then each RETRY_PERCDAMP > percdamp]:
            W', H' = prepare_hessian(W, H, p);  return solve(W', H') unless it fails

    Parameters
    ----------
    W : float64 array (d_out, d_in)
    H : float64 array (d_in, d_in)
    percdamp : float
        The requested damping fraction.
    solve : callable (W, H) -> result
        The whole pruning run on the prepared W and H; it raises NotPositiveDefiniteError
        when any of its factorisations fails.

    Returns
    -------
    Whatever `solve` returns for the first damping that works.
    """
    return retry_with_damping(lambda p: solve(*prepare_hessian(W, H, p)), percdamp,
                              what=f"mean(diag H) = {np.mean(np.diag(H)):.3g}")


def objective(W0: np.ndarray, W_new: np.ndarray, H: np.ndarray, columns: np.ndarray) -> float:
    """½ tr(ΔW H ΔWᵀ) when only `columns` of W changed (ΔW = W0 − W_new is zero elsewhere).

    Paper: Eq. (1) written through H (spec §1.2), restricted to the changed columns; the
    loss of pruning without compensation, where no OBS errors e_i are formed.
    """
    D = W0[:, columns] - W_new[:, columns]
    return 0.5 * float(np.sum((D @ H[np.ix_(columns, columns)]) * D))
