"""One inverse, then exact block downdates: the algorithm of the fast path, in float64 NumPy.

What this is: the readable twin of the C++ core (cpp/obs_cpu.cpp; the CUDA path runs the same
steps). `prune_columns`, `prune_heads` and `prune_channels` here take the same arguments and
give the same results as the re-inverting ones in obs.py, heads.py and channels.py, but
G = H⁻¹ is computed once and, after each removed set S, downdated exactly (spec §3.4):

    G ← G − G[:,S] (G_SS)⁻¹ G[S,:]            Eq. (3) for a set: the inverse of H without S
    W_K ← W_K − W_S (G_SS)⁻¹ G_SK             Eq. (4) for a set: the optimal compensation

computed through L_S = chol(G_SS): Ut = L_S⁻¹ G[S,:] are the first |S| rows of the published
code's Cholesky factor U of the reordered G, and E = W_S L_S⁻ᵀ are its scaled errors e_i, so
the local loop plus global update of the Cholesky form is the one product W −= E Ut.
What it is not: the published loop (heads.py and channels.py re-invert H every iteration, as
the authors' code does) or a fast path; tests/test_reference_downdate.py proves the two equal
in float64, and tests/test_ops.py checks the C++ core against both.

Shapes: W (d_out, d_in); H, G (d_in, d_in); S the removed columns (s,).
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

from .channels import _channels_arguments
from .damping import cholesky, cholesky_inverse, objective, result, solve_with_damping
from .heads import _heads_arguments, head_errors
from .obs import _columns_arguments, zero_columns


def remove_set(W, G, S, *, compensate: bool = True, downdate: bool = True):
    """Remove the column set S from W and from G = H⁻¹: exact OBS for a set, in block form.

    Paper: Eqs. (3)-(4) applied to a set; Lemma (ii) (the leading block of a Cholesky factor is
    the factor of the leading block) identifies the pieces with the Cholesky form (spec §3.4).

        L_S = chol(G_SS)                        G_SS = L_S L_Sᵀ
        Ut  = L_S⁻¹ G[S, :]                     first |S| rows of U, G_perm = UᵀU
        E   = W[:, S] L_S⁻ᵀ                     the scaled errors e_i (columns of E)
        W  −= E Ut;  W[:, S] = 0                Eq. (4) for the set
        G  −= Utᵀ Ut                            Eq. (3) for the set
        G[S, :] = G[:, S] = 0, G[S, S] = I      (S is gone; never read again)

    Rows and columns of G that belong to earlier removed sets are zero, so W's columns there
    stay zero.

    Parameters
    ----------
    W : float64 array (d_out, d_in)
    G : float64 array (d_in, d_in)
        The current H⁻¹ (already downdated for earlier sets).
    S : int array (s,)
    compensate : bool
        False: only zero W[:, S] (G is still downdated when `downdate`).
    downdate : bool
        False: leave G unchanged (the last set of a run needs no downdate).

    Returns
    -------
    W_new, G_new : new float64 arrays
    loss : float
        ½ ||E||_F² = ½ tr(W_S (G_SS)⁻¹ W_Sᵀ), the Eq. (1) cost of this set (0 without
        compensation: the caller measures the zeroed columns instead).
    """
    W, G = np.array(W, dtype=np.float64), np.array(G, dtype=np.float64)
    S = np.asarray(S, dtype=np.int64)
    loss = 0.0
    if compensate or downdate:
        L = cholesky(G[np.ix_(S, S)], "H⁻¹ block of the removed set")
        Ut = solve_triangular(L, G[S, :], lower=True)
        if compensate:
            E = solve_triangular(L, W[:, S].T, lower=True).T
            W -= E @ Ut
            loss = 0.5 * float(np.sum(E ** 2))
        if downdate:
            G -= Ut.T @ Ut
            G[S, :] = 0.0
            G[:, S] = 0.0
            G[S, S] = 1.0
    W[:, S] = 0.0
    return W, G, loss


def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True, return_loss=False, return_damping=False):
    """Remove the given input columns of W: one inverse, one block removal (spec §3.4).

    Paper: Eqs. (3)-(4) for a set. Same arguments and result as obs.prune_columns.

        G = (dead handling, damped H)⁻¹;   W, _, loss = remove_set(W, G, S)

    Parameters and returns as obs.prune_columns.
    """
    W, H, S, percdamp = _columns_arguments(W, H, columns, percdamp)
    if S.size == 0:
        return result((W,), 0.0, percdamp, return_loss, return_damping)
    if not compensate:
        W_new, loss = zero_columns(W, H, S, percdamp)
        return result((W_new,), loss, percdamp, return_loss, return_damping)

    def solve(W, H):
        W_new, _, loss = remove_set(W, cholesky_inverse(H), S, downdate=False)
        return W_new, loss

    (W_new, loss), p = solve_with_damping(W, H, percdamp, solve, warn=not return_damping)
    return result((W_new,), loss, p, return_loss, return_damping)


def prune_heads(W, H, n_prune: int, head_dim: int, *, percdamp=0.0, gcd=True, compensate=True,
                head_groups=None, return_loss=False, return_damping=False):
    """Batched Greedy Pruning of heads, one head per iteration, with one inverse (spec §3.4).

    Paper: Algorithm 1 and Eq. (5). Same arguments and result as heads.prune_heads.

        G = (dead handling, damped H)⁻¹                         (once)
        repeat n_prune times:
            j = argmin_j E_j(W, G) over eligible heads          (Eq. 5; pruned heads +inf)
            W, G = remove_set(W, G, C_j)                        (Eqs. 3-4 for the set C_j)

    Parameters and returns as heads.prune_heads.
    """
    W, H, d, n_heads, n_prune, percdamp, groups, quota = _heads_arguments(W, H, n_prune, head_dim, percdamp,
                                                                         head_groups)
    if n_prune == 0:
        return result((W, np.zeros(0, dtype=np.int64)), 0.0, percdamp, return_loss, return_damping)

    def greedy(W, H):
        W0, G, loss = W.copy(), cholesky_inverse(H), 0.0
        pruned = np.zeros(n_heads, dtype=bool)
        for it in range(n_prune):
            E = head_errors(W, G, d, gcd=gcd)
            full = np.bincount(groups[pruned], minlength=groups.max() + 1) >= quota
            E[pruned | full[groups]] = np.inf
            j = int(np.argmin(E))
            W, G, loss_j = remove_set(W, G, np.arange(j * d, (j + 1) * d), compensate=compensate,
                                      downdate=it + 1 < n_prune)
            loss += loss_j
            pruned[j] = True
        if not compensate:
            loss = objective(W0, W, H, np.repeat(pruned, d).nonzero()[0])
        return W, np.flatnonzero(pruned).astype(np.int64), loss

    (W_new, heads, loss), p = solve_with_damping(W, H, percdamp, greedy, warn=not return_damping)
    return result((W_new, heads), loss, p, return_loss, return_damping)


def prune_channels(W, H, n_prune: int, *, percdamp=0.0, group_sizes=None, compensate=True,
                   return_loss=False, return_damping=False):
    """Batched Greedy Pruning of FFN channels in DGS groups, with one inverse (spec §3.4).

    Paper: Dynamic Group Size, Eqs. (3)-(4). Same arguments and result as
    channels.prune_channels.

        G = (dead handling, damped H)⁻¹                         (once)
        for g in group sizes:
            ε_c = ||W[:, c]||² / G[c, c]   (pruned channels +inf)
            S = the g smallest ε, ascending (ties: lower index)
            W, G = remove_set(W, G, S)

    Parameters and returns as channels.prune_channels.
    """
    W, H, n_prune, percdamp, sizes = _channels_arguments(W, H, n_prune, percdamp, group_sizes)
    if n_prune == 0:
        return result((W, np.zeros(0, dtype=np.int64)), 0.0, percdamp, return_loss, return_damping)

    def greedy(W, H):
        W0, G, loss = W.copy(), cholesky_inverse(H), 0.0
        pruned = np.zeros(W.shape[1], dtype=bool)
        for k, g in enumerate(sizes):
            eps = np.sum(W ** 2, axis=0) / np.diag(G)
            eps[pruned] = np.inf
            S = np.argsort(eps, kind="stable")[:g]
            W, G, loss_k = remove_set(W, G, S, compensate=compensate, downdate=k + 1 < len(sizes))
            loss += loss_k
            pruned[S] = True
        channels = np.flatnonzero(pruned).astype(np.int64)
        if not compensate:
            loss = objective(W0, W, H, channels)
        return W, channels, loss

    (W_new, channels, loss), p = solve_with_damping(W, H, percdamp, greedy, warn=not return_damping)
    return result((W_new, channels), loss, p, return_loss, return_damping)
