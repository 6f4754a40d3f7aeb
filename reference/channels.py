"""FFN channels: Batched Greedy Pruning with Dynamic Group Size (DGS).

What this is: the NumPy float64 specification of how SlimGPT removes FFN channels (input
columns of down_proj) in groups of decreasing size, with the published schedule (spec §4).
What it is not: the per-layer pipeline, or a fast path; cpp/obs_cpu.cpp mirrors
`dgs_group_sizes` and `prune_channels` (same names).

Shapes: W (d_out, d_in) with d_in = m FFN channels; H (d_in, d_in); T = n_prune channels.
"""
from __future__ import annotations

import numpy as np

from . import _checks
from .damping import cholesky_inverse, objective, result, solve_with_damping
from .obs import prune_columns_cholesky, remove_from_hessian

# The published schedule's constants (spec §4.2).
DGS_OFFSET = 512     # b_0 = (T - 512) // 2, b_{k+1} = (b_k - 512) // 2
DGS_MIN = 64         # smallest group (the paper's prose says "a small number like 8")
DGS_MAX = 1024       # largest group


def dgs_group_sizes(n_prune: int) -> list[int]:
    """The published Dynamic Group Size schedule for pruning T channels.

    Paper: Batched Greedy Pruning, "Dynamic Group Size" (prose only: "start with larger group
    size such as 1024 ... gradually decrease the group size to a small number like 8"); the
    formula below is the published code's (spec §4.2), whose smallest group is 64, not 8.

        b_0 = (T - 512) // 2;   b_{k+1} = (b_k - 512) // 2      (floor division, may go < 0)
        g_k = min(T - Σ_{i<k} g_i, max(b_k, 64), 1024)

    T = 2752 gives [1024, 304, 64 x 22, 16]; T = 688 gives [88, 64 x 9, 24].

    Parameters
    ----------
    n_prune : int
        T >= 0.

    Returns
    -------
    group_sizes : list of int, summing to T (empty for T = 0).
    """
    T = _checks.count("n_prune", n_prune, 0, _checks.MAX_COLUMNS)
    sizes, b, remaining = [], (T - DGS_OFFSET) // 2, T
    while remaining > 0 and b > DGS_MIN:
        g = min(remaining, b, DGS_MAX)
        sizes.append(g)
        remaining -= g
        b = (b - DGS_OFFSET) // 2
    # from here on b <= DGS_MIN: groups of DGS_MIN, the last one smaller (the loop's tail, in one step)
    full, rest = divmod(remaining, DGS_MIN)
    return sizes + [DGS_MIN] * full + ([rest] if rest else [])


def prune_channels(W, H, n_prune: int, *, percdamp=0.0, group_sizes=None,
                   compensate=True, return_loss=False, return_damping=False):
    """Batched Greedy Pruning of FFN channels in groups (DGS), as published.

    Paper: Batched Greedy Pruning, "Dynamic Group Size", Eqs. (3)-(4) per group; spec §4.2.

        H ← dead handling, + percdamp · mean(diag H) · I           (once)
        for g in group sizes:
            G = H⁻¹                                               (from scratch)
            ε_c = ||W[:, c]||² / G[c, c]   (pruned channels +inf)  (Eq. 4 cost, plain diagonal)
            S = the g channels of smallest ε, in ascending-ε order
            W = prune_columns_cholesky(W, G, S)                   (Eqs. 3-4)
            H = remove_from_hessian(H, S)

    The survivors equal the least-squares optimum W H[:, K] (H_KK)⁻¹ for the damped H.
    Ties in ε go to the lower channel index (a stable sort).

    Parameters
    ----------
    W : array (d_out, d_in)
        down_proj weight, one column per FFN channel.
    H : array (d_in, d_in)
        Hessian of its inputs (any positive scale).
    n_prune : int
        Channels to remove, in [0, d_in]; the caller rounds m · r (Python round).
    percdamp : float
    group_sizes : None, int, or sequence of int
        None: dgs_group_sizes(n_prune). An int g: fixed groups of g, the last one smaller
        (the paper's "-DGS" ablation uses 128). A sequence: explicit positive sizes summing
        to n_prune.
    compensate : bool
        False: selection as usual, but W is only zeroed at pruned channels (and dead inputs).
    return_loss : bool
        Also return the loss, as in prune_heads.
    return_damping : bool
        Also return the damping fraction used, as in prune_heads.

    Returns
    -------
    W_new : float64 array (d_out, d_in)
    pruned_channels : int64 array (n_prune,), sorted ascending.
    loss : float, only with return_loss
    percdamp : float, only with return_damping
    """
    W, H, n_prune, percdamp, sizes = _channels_arguments(W, H, n_prune, percdamp, group_sizes)
    if n_prune == 0:
        return result((W, np.zeros(0, dtype=np.int64)), 0.0, percdamp, return_loss, return_damping)

    def greedy(W, H):
        W0, H0, loss = W.copy(), H.copy(), 0.0
        pruned = np.zeros(W.shape[1], dtype=bool)
        for g in sizes:
            G = cholesky_inverse(H)
            # Eq. (4) cost of each channel alone, from the plain (un-downdated) diagonal
            eps = np.sum(W ** 2, axis=0) / np.diag(G)
            eps[pruned] = np.inf
            S = np.argsort(eps, kind="stable")[:g]
            if compensate:
                alive = ~pruned
                alive[S] = False
                W, losses = prune_columns_cholesky(W, G, S, survivors=np.flatnonzero(alive))
                loss += 0.5 * float(np.sum(losses))
            else:
                W[:, S] = 0.0
            H = remove_from_hessian(H, S)
            pruned[S] = True
        channels = np.flatnonzero(pruned).astype(np.int64)
        if not compensate:
            loss = objective(W0, W, H0, channels)
        return W, channels, loss

    (W_new, channels, loss), p = solve_with_damping(W, H, percdamp, greedy, warn=not return_damping)
    return result((W_new, channels), loss, p, return_loss, return_damping)


def _channels_arguments(W, H, n_prune, percdamp, group_sizes):
    """Checked arguments of prune_channels (shared with downdate.prune_channels)."""
    W, H = _checks.weight_and_hessian(W, H)
    n_prune = _checks.count("n_prune", n_prune, 0, W.shape[1])
    return W, H, n_prune, _checks.percdamp(percdamp), resolve_group_sizes(group_sizes, n_prune)


def resolve_group_sizes(group_sizes, n_prune: int) -> list[int]:
    """Resolve the group_sizes argument of prune_channels to a list summing to n_prune: Dynamic
    Group Size (spec §4.2) when None, else the given fixed groups (the paper's -DGS ablation)."""
    if group_sizes is None:
        return dgs_group_sizes(n_prune)
    if np.ndim(group_sizes) == 0:           # one size: count() refuses booleans, 2.5, objects in one line
        g = _checks.count("group_sizes", group_sizes, 1, np.iinfo(np.int64).max)
        return [g] * (n_prune // g) + ([n_prune % g] if n_prune % g else [])
    sizes = [_checks.count("group_sizes entry", s, 1, n_prune) for s in group_sizes]
    if sum(sizes) != n_prune:
        raise ValueError(f"group_sizes sum to {sum(sizes)}, not n_prune={n_prune}")
    return sizes
