"""Optimal Brain Surgeon for whole input columns, in the Cholesky form (paper Eqs. 2-4).

What this is: the NumPy float64 specification of removing a set S of input columns of W with
optimal compensation of the others, plus the textbook oracle it must equal. What it is not:
the selection of S (heads.py, channels.py) or a fast path; cpp/obs_cpu.cpp mirrors
`prune_columns` (same name), computing the same W by block downdates instead.

Shapes: W (d_out, d_in) in torch layout, pruning removes input columns; H, Hinv (d_in, d_in);
S the removed columns (s,), K the surviving ones.
"""
from __future__ import annotations

import numpy as np

from . import _checks
from .damping import cholesky, cholesky_inverse, objective, prepare_hessian, result, solve_with_damping


def prune_columns_cholesky(W, Hinv, columns, *, survivors=None) -> tuple[np.ndarray, np.ndarray]:
    """Remove columns S of W given G = H⁻¹: the Cholesky form of sequential column OBS.

    Paper: Algorithm 1 step 2 and Fig. 1 (Eq. (3) downdates and Eq. (4) updates, computed
    through a Cholesky factor as in GPTQ); spec §2.3.

        order = S (in the given order), then K;  G[order, order] = Uᵀ U  (U upper)
        for i = 0..s-1:  e_i = W[:, S_i] / U[i,i]            # scaled error of column S_i
                         W[:, S_i..] -= e_i U[i, i..s-1]      # local update inside S
        W[:, K] -= E U[:s, s:]                                 # one global update, E = [e_i]
        W[:, S] = 0

    Row i of U is row S_i of G after the Eq. (3) downdates of S_0..S_{i-1}, divided by
    sqrt of its diagonal; so each step is exactly Eq. (4) for one column, and the result is
    the joint optimum W_K - W_S (G_SS)⁻¹ G_SK whatever the order of S (spec §2.2).

    Parameters
    ----------
    W : array (d_out, d_in)
    Hinv : array (d_in, d_in)
        G = H⁻¹, symmetric positive definite on S ∪ K.
    columns : int array (s,)
        S, removed in this order.
    survivors : int array or None
        K, the columns to compensate; None means every column not in S. Columns in neither
        (already pruned ones) are left untouched.

    Returns
    -------
    W_new : float64 array (d_out, d_in)
        W with W[:, S] = 0 and W[:, K] compensated.
    losses : float64 array (s,)
        ||e_i||² = the Eq. (4) cost of each removal; ½ Σ losses is the reconstruction error
        (Eq. 1) when G = H⁻¹ exactly.
    """
    W = np.array(W, dtype=np.float64)
    G = np.asarray(Hinv, dtype=np.float64)
    S = np.asarray(columns, dtype=np.int64)
    s = S.size
    if survivors is None:
        K = np.setdiff1d(np.arange(W.shape[1]), S)
    else:
        K = np.asarray(survivors, dtype=np.int64)
    order = np.concatenate([S, K])
    # G_perm = Uᵀ U; only the first s rows of U are needed (Lemma ii: the leading block).
    U = cholesky(G[np.ix_(order, order)], "H⁻¹ reordered").T
    E = np.zeros((W.shape[0], s))
    for i in range(s):
        # Eq. (4): the error of removing column S_i, scaled by 1/U[i,i]
        E[:, i] = W[:, S[i]] / U[i, i]
        # local update of the pruned columns still to come (zeroes column S_i)
        W[:, S[i:]] -= np.outer(E[:, i], U[i, i:s])
    # global update of every survivor at once
    W[:, K] -= E @ U[:s, s:]
    W[:, S] = 0.0
    return W, np.sum(E ** 2, axis=0)


def remove_from_hessian(H, columns) -> np.ndarray:
    """Remove columns from H by replacing their rows and columns with identity.

    Paper: not written out in the paper; spec §3.3 step 8 (published code).

        H[S, :] = 0;  H[:, S] = 0;  H[S, S] = I

    Then (H_new)⁻¹ restricted to K equals (H_KK)⁻¹, the Eq. (3) downdate of H⁻¹ over S.

    Parameters
    ----------
    H : array (d_in, d_in)
    columns : int array (s,)

    Returns
    -------
    H_new : float64 array (d_in, d_in)
    """
    H = np.array(H, dtype=np.float64)
    S = np.asarray(columns, dtype=np.int64)
    H[S, :] = 0.0
    H[:, S] = 0.0
    H[S, S] = 1.0
    return H


def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True, return_loss=False, return_damping=False):
    """Remove the given input columns of W with optimal OBS compensation of the others.

    Paper: Eqs. (3)-(4) in the Cholesky form (Algorithm 1 step 2); spec §2.2-2.4.

        H ← dead handling, + percdamp · mean(diag H) · I;   G = H⁻¹
        W_new[:, S] = 0,   W_new[:, K] = W_K - W_S (G_SS)⁻¹ G_SK = W H[:, K] (H_KK)⁻¹

    The survivors are the least-squares optimum for the (damped) H. An H that is not
    positive definite is retried with more damping (DampingWarning).

    Parameters
    ----------
    W : array (d_out, d_in)
    H : array (d_in, d_in)
        Hessian 2 XᵀX / n (any positive scale gives the same W_new).
    columns : int array (s,)
        Distinct columns to remove, any order; empty is a no-op.
    percdamp : float
        Damping fraction (spec §2.4).
    compensate : bool
        False: only zero the columns (the published --no_compensate); survivors are
        untouched except dead inputs, which are always zeroed (spec §2.4).
    return_loss : bool
        Also return the loss (see Returns).
    return_damping : bool
        Also return the damping fraction used (spec §2.4), instead of warning DampingWarning.

    Returns
    -------
    W_new : float64 array (d_out, d_in)
    loss : float, only with return_loss
        The Eq. (1) objective ½ tr(ΔW H ΔWᵀ) of the result in the metric of the prepared
        (dead-handled, damped) H: ½ Σ ||e_i||² when compensating (spec §2.3), the objective of
        the zeroed columns otherwise.
    percdamp : float, only with return_damping
    """
    W, H, S, percdamp = _columns_arguments(W, H, columns, percdamp)
    if S.size == 0:
        return result((W,), 0.0, percdamp, return_loss, return_damping)
    if not compensate:
        W_new, loss = zero_columns(W, H, S, percdamp)
        return result((W_new,), loss, percdamp, return_loss, return_damping)

    def solve(W, H):
        W_new, losses = prune_columns_cholesky(W, cholesky_inverse(H), S)
        return W_new, 0.5 * float(np.sum(losses))

    (W_new, loss), p = solve_with_damping(W, H, percdamp, solve, warn=not return_damping)
    return result((W_new,), loss, p, return_loss, return_damping)


def _columns_arguments(W, H, columns, percdamp):
    """Checked arguments of prune_columns (shared with downdate.prune_columns)."""
    W, H = _checks.weight_and_hessian(W, H)
    return W, H, _checks.columns(columns, W.shape[1]), _checks.percdamp(percdamp)


def zero_columns(W, H, S, percdamp: float) -> tuple[np.ndarray, float]:
    """The published --no_compensate: dead inputs handled, columns S zeroed, nothing else moved.

    Paper: not in the paper (spec §2.4, §9). Returns (W_new, ½ tr(ΔW H ΔWᵀ)) for the prepared H.
    """
    W0, Hp = prepare_hessian(W, H, percdamp)
    W_new = W0.copy()
    W_new[:, S] = 0.0
    return W_new, objective(W0, W_new, Hp, S)


def prune_columns_naive(W, H, columns, *, percdamp=0.0) -> np.ndarray:
    """Oracle for prune_columns: textbook single-column OBS with an explicit inverse.

    Paper: Eq. (4) for one column and Eq. (3) for the inverse downdate, applied one removed
    column at a time; no Cholesky trick (spec §2.1).

        G = inv(H)
        for q in S:   W -= (W[:, q] / G[q,q]) G[q, :]         # Eq. (4)
                      G -= G[:, q] G[q, :] / G[q,q]           # Eq. (3), then drop q

    Dead inputs and damping are handled as in prune_columns, and the damping is chosen by
    the same rule (a Cholesky of the damped H must succeed), so the two are comparable.

    Parameters
    ----------
    W : array (d_out, d_in)
    H : array (d_in, d_in)
    columns : int array (s,)
    percdamp : float

    Returns
    -------
    W_new : float64 array (d_out, d_in)
    """
    W, H = _checks.weight_and_hessian(W, H)
    S = _checks.columns(columns, W.shape[1])
    percdamp = _checks.percdamp(percdamp)
    if S.size == 0:
        return W

    def naive(W, H):
        cholesky(H, "H")  # only the positive-definiteness test; the inverse is explicit
        G = np.linalg.inv(H)
        alive = np.ones(W.shape[1], dtype=bool)
        for q in S:
            W -= np.outer(W[:, q] / G[q, q], G[q, :])
            G -= np.outer(G[:, q], G[q, :]) / G[q, q]
            alive[q] = False
            G[~alive, :] = 0.0  # drop the removed rows and columns
            G[:, ~alive] = 0.0
        W[:, S] = 0.0
        return W

    return solve_with_damping(W, H, percdamp, naive)[0]
