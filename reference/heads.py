"""Attention heads: grouped-Cholesky head errors (Eq. 5) and Batched Greedy Pruning.

What this is: the NumPy float64 specification of how SlimGPT scores and removes whole heads
(blocks of head_dim consecutive input columns of o_proj), as published: one head per greedy
iteration (spec §3). What it is not: the per-layer pipeline, or a fast path; cpp/obs_cpu.cpp
mirrors `head_errors` and `prune_heads` (same names).

Shapes: W (d_out, d_in), d_in = n_heads · head_dim; H, Hinv (d_in, d_in); head j owns the
columns C_j = j·head_dim .. (j+1)·head_dim - 1.
"""
from __future__ import annotations

import numpy as np

from . import _checks
from .damping import NotPositiveDefiniteError, cholesky, cholesky_inverse, objective, result, solve_with_damping
from .obs import prune_columns_cholesky, remove_from_hessian


def grouped_cholesky_diag(Hinv, head_dim: int) -> np.ndarray:
    """The downdated diagonal of H⁻¹ inside each head, from one batched Cholesky.

    Paper: Batched Greedy Pruning, Eq. (5) with Lemmas (i)-(ii): the leading block of a
    Cholesky factor is the factor of the leading block, so the Eq. (3) downdates over a head's
    own columns are the squared diagonal of the factor of its diagonal block.

        L_j = chol(G[C_j, C_j]),   ĝ[j, k] = L_j[k, k]²

    Parameters
    ----------
    Hinv : array (d_in, d_in)
        G = H⁻¹.
    head_dim : int

    Returns
    -------
    g : float64 array (n_heads, head_dim)
    """
    G = np.asarray(Hinv, dtype=np.float64)
    n_heads = G.shape[0] // head_dim
    # the n_heads diagonal blocks, stacked (n_heads, head_dim, head_dim)
    idx = np.arange(G.shape[0]).reshape(n_heads, head_dim)
    blocks = G[idx[:, :, None], idx[:, None, :]]
    L = np.stack([cholesky(B, f"H⁻¹ block of head {j}") for j, B in enumerate(blocks)])
    return np.diagonal(L, axis1=1, axis2=2) ** 2


def grouped_cholesky_diag_naive(Hinv, head_dim: int) -> np.ndarray:
    """Oracle for grouped_cholesky_diag: Eq. (3) downdates, one column at a time, per head.

    Paper: Eq. (3) applied over the columns of C_j in order (Appendix D.1).

        for each head j, G' = G, and for the k-th column q of C_j:
            ĝ[j, k] = G'[q, q];   G' -= G'[:, q] G'[q, :] / G'[q, q]

    Parameters
    ----------
    Hinv : array (d_in, d_in)
    head_dim : int

    Returns
    -------
    g : float64 array (n_heads, head_dim)
    """
    G0 = np.asarray(Hinv, dtype=np.float64)
    n_heads = G0.shape[0] // head_dim
    g = np.zeros((n_heads, head_dim))
    for j in range(n_heads):
        G = G0.copy()
        for k, q in enumerate(range(j * head_dim, (j + 1) * head_dim)):
            g[j, k] = G[q, q]
            G = G - np.outer(G[:, q], G[q, :]) / G[q, q]
    return g


def head_errors(W, Hinv, head_dim: int, *, gcd: bool = True) -> np.ndarray:
    """Estimated cost of removing each head: the grouped-Cholesky head error.

    Paper: Batched Greedy Pruning, Eq. (5); Algorithm 1 step 1 (E = W² / Diag(Ĥ⁻¹)²).

        E_j = Σ_k ||W[:, j·d + k]||² / ĝ[j, k],   ĝ = grouped_cholesky_diag(Hinv, d)

    W is not updated between the columns of the estimate, so it is exact for d = 1 or a
    diagonal block G[C_j, C_j], and close otherwise (spec §3.2). gcd=False is the paper's
    "-GCD" ablation: the plain diagonal ĝ[j, k] = G[j·d+k, j·d+k] (Table 5).

    Parameters
    ----------
    W : array (d_out, d_in)
    Hinv : array (d_in, d_in)
        G = H⁻¹ (symmetric positive definite).
    head_dim : int
        d, dividing d_in.
    gcd : bool

    Returns
    -------
    errors : float64 array (n_heads,)
    """
    W, G = _checks.weight_and_hessian(W, Hinv, H_name="Hinv")
    d = _checks.head_dim(head_dim, W.shape[1])
    if gcd:
        g = grouped_cholesky_diag(G, d)
    else:
        g = np.diag(G).reshape(-1, d)
        if np.any(g <= 0):
            raise NotPositiveDefiniteError("Hinv has a diagonal entry <= 0: not positive definite")
    colsq = np.sum(W ** 2, axis=0).reshape(-1, d)
    return np.sum(colsq / g, axis=1)


def head_cost_exact(W, Hinv, head_dim: int) -> np.ndarray:
    """Oracle for head_errors: the exact OBS cost of removing each head on its own.

    Paper: the joint (set) form of the OBS Eq. (2) for the columns of a head (spec §2.2).

        cost_j = tr(W_C (G_CC)⁻¹ W_Cᵀ),   C = C_j

    Parameters
    ----------
    W : array (d_out, d_in)
    Hinv : array (d_in, d_in)
    head_dim : int

    Returns
    -------
    costs : float64 array (n_heads,)
    """
    W, G = _checks.weight_and_hessian(W, Hinv, H_name="Hinv")
    d = _checks.head_dim(head_dim, W.shape[1])
    costs = []
    for j in range(W.shape[1] // d):
        C = np.arange(j * d, (j + 1) * d)
        WC = W[:, C]
        costs.append(np.trace(WC @ np.linalg.inv(G[np.ix_(C, C)]) @ WC.T))
    return np.array(costs)


def prune_heads(W, H, n_prune: int, head_dim: int, *, percdamp=0.0, gcd=True, compensate=True,
                head_groups=None, return_loss=False, return_damping=False):
    """Batched Greedy Pruning of attention heads, as published: one head per iteration.

    Paper: Batched Greedy Pruning, Algorithm 1 (step 1: grouped Cholesky, head errors,
    reorder; step 2: Cholesky of the reordered H⁻¹, local and global update, restore);
    spec §3.3.

        H ← dead handling, + percdamp · mean(diag H) · I         (once)
        repeat n_prune times:
            G = H⁻¹                                             (from scratch)
            j = argmin_j E_j  over eligible heads              (Eq. 5; pruned heads +inf)
            W = prune_columns_cholesky(W, G, C_j)               (Eqs. 3-4)
            H = remove_from_hessian(H, C_j)

    The survivors equal the least-squares optimum W H[:, K] (H_KK)⁻¹ for the damped H.
    Ties in E go to the lower head index (the published torch.argsort leaves them open).

    Parameters
    ----------
    W : array (d_out, d_in)
        o_proj weight; d_in = n_heads · head_dim.
    H : array (d_in, d_in)
        Hessian of its inputs (any positive scale).
    n_prune : int
        Heads to remove, in [0, n_heads]; the caller rounds n_heads · r (Python round).
    head_dim : int
        Columns per head; a whole GQA group is head_dim = n_rep · d (spec §6.6 option A).
    percdamp : float
    gcd : bool
        False: the "-GCD" ablation (see head_errors).
    compensate : bool
        False: selection as usual, but W is only zeroed at pruned heads (and dead inputs).
    head_groups : None, int, or int array (n_heads,)
        GQA option B (spec §6.6): a group id per head, or a number of contiguous equal groups
        (query head h in group h // (n_heads / groups), Hugging Face's repeat_kv). Every group
        loses exactly n_prune / n_groups heads; a head is eligible only while its group is
        under that quota.
    return_loss : bool
        Also return the loss: ½ Σ ||e_i||² over every removed column (the Eq. (1) objective
        of W_new in the metric of the prepared H, spec §2.3), or the objective of the zeroed
        columns when compensate=False.
    return_damping : bool
        Also return the damping fraction used (spec §2.4), instead of warning DampingWarning.

    Returns
    -------
    W_new : float64 array (d_out, d_in)
    pruned_heads : int64 array (n_prune,), sorted ascending.
    loss : float, only with return_loss
    percdamp : float, only with return_damping
    """
    W, H, d, n_heads, n_prune, percdamp, groups, quota = _heads_arguments(W, H, n_prune, head_dim, percdamp,
                                                                         head_groups)
    if n_prune == 0:
        return result((W, np.zeros(0, dtype=np.int64)), 0.0, percdamp, return_loss, return_damping)

    def greedy(W, H):
        return _greedy_heads(W, H, d, n_prune, groups, quota, gcd, compensate)

    (W_new, heads, loss), p = solve_with_damping(W, H, percdamp, greedy, warn=not return_damping)
    return result((W_new, heads), loss, p, return_loss, return_damping)


def _greedy_heads(W, H, d, n_prune, groups, quota, gcd, compensate):
    """Algorithm 1's loop for the prepared (damped) H: (W_new, pruned heads, loss) of prune_heads;
    head errors Eq. (5), removal and compensation Eqs. (3)-(4), spec §3.3."""
    n_heads = W.shape[1] // d
    W0, H0, loss = W.copy(), H.copy(), 0.0
    pruned = np.zeros(n_heads, dtype=bool)
    for _ in range(n_prune):
        G = cholesky_inverse(H)
        E = head_errors(W, G, d, gcd=gcd)
        # already pruned heads and heads of groups at quota are not candidates
        full = np.bincount(groups[pruned], minlength=groups.max() + 1) >= quota
        E[pruned | full[groups]] = np.inf
        j = int(np.argmin(E))
        C = np.arange(j * d, (j + 1) * d)
        if compensate:
            alive = np.repeat(~pruned, d)
            alive[C] = False
            W, losses = prune_columns_cholesky(W, G, C, survivors=np.flatnonzero(alive))
            loss += 0.5 * float(np.sum(losses))
        else:
            W[:, C] = 0.0
        H = remove_from_hessian(H, C)
        pruned[j] = True
    heads = np.flatnonzero(pruned).astype(np.int64)
    if not compensate:
        loss = objective(W0, W, H0, np.repeat(pruned, d).nonzero()[0])
    return W, heads, loss


def _heads_arguments(W, H, n_prune, head_dim, percdamp, head_groups):
    """Checked arguments of prune_heads (shared with downdate.prune_heads): W, H, d, n_heads,
    n_prune, percdamp, the group id of each head and the per-group quota."""
    W, H = _checks.weight_and_hessian(W, H)
    d = _checks.head_dim(head_dim, W.shape[1])
    n_heads = W.shape[1] // d
    n_prune = _checks.count("n_prune", n_prune, 0, n_heads)
    groups, quota = head_group_ids(head_groups, n_heads, n_prune)
    return W, H, d, n_heads, n_prune, _checks.percdamp(percdamp), groups, quota


def head_group_ids(head_groups, n_heads: int, n_prune: int) -> tuple[np.ndarray, int]:
    """Group id per head (n_heads,) and the per-group quota under GQA (spec §6.6); one group when
    head_groups is None."""
    if head_groups is None:
        return np.zeros(n_heads, dtype=np.int64), n_prune
    if np.ndim(head_groups) == 0:
        n_groups = _checks.count("head_groups", head_groups, 1, n_heads)
        if n_heads % n_groups:
            raise ValueError(f"head_groups={n_groups} does not divide n_heads={n_heads}")
        groups = np.arange(n_heads) // (n_heads // n_groups)
    else:
        ids = np.asarray(head_groups)
        if ids.shape != (n_heads,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"head_groups must be {n_heads} integer group ids, got "
                             f"shape {ids.shape} dtype {ids.dtype}")
        _, groups = np.unique(ids, return_inverse=True)
    n_groups = int(groups.max()) + 1
    if n_prune % n_groups:
        raise ValueError(f"n_prune={n_prune} is not a multiple of the {n_groups} head groups")
    quota = n_prune // n_groups
    if np.bincount(groups).min() < quota:
        raise ValueError(f"a head group has fewer than n_prune / n_groups = {quota} heads")
    return groups.astype(np.int64), quota
