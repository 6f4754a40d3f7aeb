"""The benchmark baseline: a faithful torch float32 copy of the published SlimGPT loop.

Not part of the package and not a test: benchmarks/bench_core.py times it against the C++
core. It follows spec §3.3 (heads) and §4.2 (FFN channels, DGS) step by step, including what
makes it slow: G = H⁻¹ is recomputed from scratch (torch.linalg.cholesky then
torch.cholesky_inverse) every iteration, the reordered G gets a full N x N Cholesky, one head
per iteration, and the local loop walks the pruned columns one at a time.

`max_iters` stops after that many iterations (to extrapolate the 7B FFN case, whose full run
takes hours on 2 CPU cores); `timings` collects per-iteration seconds split into
"inverse" (steps 1 and 4: the two N x N factorisations and the inverse) and "rest".
"""
from __future__ import annotations

import time

import torch


def _prepare(W, H, percdamp):
    W, H = W.clone(), H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if percdamp > 0:
        H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    return W, H


def _obs_step(W, Hinv, perm, g, n_done):
    """Steps 4-7: reorder, Cholesky of the reordered H⁻¹, local loop over the first g columns,
    global update of the surviving columns [g, N - n_done), restore the order."""
    N = W.shape[1]
    W = W[:, perm]
    U = torch.linalg.cholesky(Hinv[perm][:, perm], upper=True)[:g]
    t_inv = time.perf_counter()
    W1 = W[:, :g].clone()
    Err = torch.zeros_like(W1)
    for i in range(g):  # local loop (spec §2.3 step 3)
        e = W1[:, i] / U[i, i]
        W1[:, i:] -= e[:, None] * U[i, i:g][None, :]
        Err[:, i] = e
    W[:, :g] = 0
    end = N - n_done
    W[:, g:end] -= Err @ U[:, g:end]  # global update
    inv = torch.argsort(perm)
    return W[:, inv], t_inv


def prune_heads(W, H, n_prune, head_dim, percdamp=0.0, max_iters=None, timings=None):
    """Spec §3.3, one head per iteration. Returns (W, sorted pruned heads)."""
    W, H = _prepare(W, H, percdamp)
    N, d = W.shape[1], head_dim
    nh = N // d
    pruned = torch.zeros(nh, dtype=torch.bool)
    it = 0
    while int(pruned.sum()) < n_prune and (max_iters is None or it < max_iters):
        t0 = time.perf_counter()
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))                       # 1.
        blocks = torch.stack([Hinv[j * d:(j + 1) * d, j * d:(j + 1) * d] for j in range(nh)])
        g = torch.diagonal(torch.linalg.cholesky(blocks), dim1=-2, dim2=-1) ** 2      # 2. Eq. 5
        err = ((W ** 2).sum(0).reshape(nh, d) / g).sum(1)
        err[pruned] = float("inf")
        order = torch.argsort(err)                                                     # 3.
        perm = (order[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
        t1 = time.perf_counter()
        W, t_inv = _obs_step(W, Hinv, perm, d, int(pruned.sum()) * d)                 # 4.-7.
        j = int(order[0])
        C = torch.arange(j * d, (j + 1) * d)
        H[C, :] = 0                                                                    # 8.
        H[:, C] = 0
        H[C, C] = 1
        pruned[j] = True
        t2 = time.perf_counter()
        if timings is not None:
            timings.append({"inverse": (t_inv - t1) + (t1 - t0), "rest": t2 - t_inv, "g": d})
        it += 1
    return W, torch.nonzero(pruned).flatten()


def prune_channels(W, H, group_sizes, percdamp=0.0, max_iters=None, timings=None):
    """Spec §4.2 with the given group sizes. Returns (W, sorted pruned channels)."""
    W, H = _prepare(W, H, percdamp)
    N = W.shape[1]
    pruned = torch.zeros(N, dtype=torch.bool)
    n_done = 0
    for it, g in enumerate(group_sizes):
        if max_iters is not None and it >= max_iters:
            break
        t0 = time.perf_counter()
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))                       # 1.
        err = (W ** 2).sum(0) / torch.diag(Hinv)                                      # 2.
        err[pruned] = float("inf")
        perm = torch.argsort(err)                                                      # 3.
        t1 = time.perf_counter()
        W, t_inv = _obs_step(W, Hinv, perm, g, n_done)                                 # 5.-6.
        P = perm[:g]
        H[P, :] = 0                                                                    # 7.
        H[:, P] = 0
        H[P, P] = 1
        pruned[P] = True
        n_done += g
        t2 = time.perf_counter()
        if timings is not None:
            timings.append({"inverse": (t_inv - t1) + (t1 - t0), "rest": t2 - t_inv, "g": g})
    return W, torch.nonzero(pruned).flatten()
