"""The block-downdate algorithm in torch, on any device: the `backend="torch"` of slimgpt.ops.

What this is: the operations of `slimgpt.reference.downdate` (one inverse, then exact block
downdates, spec §3.4), line for line, in torch in the dtype and on the device of the inputs. It
is the fallback for a model on a GPU when the CUDA core is not built, and runs on the CPU in the
tests. What it is not: a fast path (the C++/CUDA core is) or a new algorithm: every function here
has its twin of the same name in reference/downdate.py, and tests/test_ops.py (backend "torch")
holds them to it. Argument checks, the damping retry and the float64 damping decision are slimgpt.ops's.

Shapes: W (d_out, d_in); H, G (d_in, d_in); S the removed columns (s,).
"""
from __future__ import annotations

import torch

from slimgpt.reference import NotPositiveDefiniteError


def _cholesky(A: torch.Tensor, what: str) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()) or not torch.isfinite(L).all():
        raise NotPositiveDefiniteError(f"{what} is not positive definite (Cholesky failed)")
    return L


def prepare_inverse(W: torch.Tensor, H: torch.Tensor, percdamp: float):
    """Dead inputs (diag H = 0: diag 1, W column 0), damping, then G = H⁻¹ (spec §2.4)."""
    W, H = W.clone(), H.clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * torch.diagonal(H).mean())
    return W, H, torch.cholesky_inverse(_cholesky(H, "H"))


def remove_set(W: torch.Tensor, G: torch.Tensor, S: torch.Tensor, compensate: bool = True, downdate: bool = True):
    """reference.downdate.remove_set: W −= E·Ut, G −= UtᵀUt with L_S = chol(G_SS),
    Ut = L_S⁻¹G[S,:], E = W_S L_S⁻ᵀ. Updates W and G in place; returns the loss ½‖E‖²."""
    loss = 0.0
    if compensate or downdate:
        L = _cholesky(G[S][:, S], "H⁻¹ block of the removed set")
        Ut = torch.linalg.solve_triangular(L, G[S, :], upper=False)
        if compensate:
            E = torch.linalg.solve_triangular(L, W[:, S].T, upper=False).T
            W -= E @ Ut
            loss = 0.5 * float((E.double() ** 2).sum())
        if downdate:
            G -= Ut.T @ Ut
            G[S, :] = 0.0
            G[:, S] = 0.0
            G[S, S] = 1.0
    W[:, S] = 0.0
    return loss


def objective(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor, cols: torch.Tensor) -> float:
    """½ tr(ΔW H ΔWᵀ) over the changed columns (reference.damping.objective)."""
    D = (W0[:, cols] - W[:, cols]).double()
    return 0.5 * float(((D @ H[cols][:, cols].double()) * D).sum())


def head_errors(W: torch.Tensor, G: torch.Tensor, head_dim: int, gcd: bool = True) -> torch.Tensor:
    """Eq. (5): Σ_k ||W[:, j·d+k]||² / L_j[k,k]², L_j = chol(G[C_j, C_j]) (gcd=False: G's diagonal)."""
    n_heads = W.shape[1] // head_dim
    if gcd:
        blocks = torch.stack([G[j * head_dim:(j + 1) * head_dim, j * head_dim:(j + 1) * head_dim]
                              for j in range(n_heads)])
        g = torch.diagonal(_cholesky(blocks, "an H⁻¹ head block"), dim1=1, dim2=2) ** 2
    else:
        g = torch.diagonal(G).reshape(n_heads, head_dim)
        if (g <= 0).any():
            raise NotPositiveDefiniteError("Hinv has a diagonal entry <= 0: not positive definite")
    return ((W.double() ** 2).sum(0).reshape(n_heads, head_dim) / g.double()).sum(1)


# Every prune function takes (W, H, percdamp, ...) and returns (W_new, pruned indices or None, loss).

def prune_columns(W, H, percdamp: float, columns, compensate: bool):
    """reference.downdate.prune_columns (W, H on any device; columns a host index array)."""
    S = torch.as_tensor(columns, dtype=torch.long, device=W.device)
    W0, H0, G = prepare_inverse(W, H, percdamp)
    W = W0.clone()
    if not compensate:
        W[:, S] = 0.0
        return W, None, objective(W0, W, H0, S)
    return W, None, remove_set(W, G, S, downdate=False)


def prune_heads(W, H, percdamp: float, n_prune: int, head_dim: int, gcd: bool, compensate: bool, groups, quota: int):
    """reference.downdate.prune_heads; `groups` (n_heads,) group ids 0..n_groups-1, `quota` per group."""
    W0, H0, G = prepare_inverse(W, H, percdamp)
    W = W0.clone()
    groups = torch.as_tensor(groups, dtype=torch.long)
    pruned = torch.zeros(W.shape[1] // head_dim, dtype=torch.bool)
    loss = 0.0
    for it in range(n_prune):
        E = head_errors(W, G, head_dim, gcd).cpu()
        full = torch.bincount(groups[pruned], minlength=int(groups.max()) + 1) >= quota
        E[pruned | full[groups]] = float("inf")
        j = int(torch.argmin(E))          # ties: the first (lowest) index, as np.argmin
        S = torch.arange(j * head_dim, (j + 1) * head_dim, device=W.device)
        loss += remove_set(W, G, S, compensate, downdate=it + 1 < n_prune)
        pruned[j] = True
    heads = torch.nonzero(pruned).reshape(-1)
    if not compensate:
        loss = objective(W0, W, H0, (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1).to(W.device))
    return W, heads.numpy(), loss


def prune_channels(W, H, percdamp: float, group_sizes, compensate: bool):
    """reference.downdate.prune_channels with explicit group sizes."""
    W0, H0, G = prepare_inverse(W, H, percdamp)
    W = W0.clone()
    pruned = torch.zeros(W.shape[1], dtype=torch.bool, device=W.device)
    loss = 0.0
    for k, g in enumerate(group_sizes):
        eps = (W.double() ** 2).sum(0) / torch.diagonal(G).double()
        eps[pruned] = float("inf")
        S = torch.sort(eps, stable=True).indices[:int(g)]
        loss += remove_set(W, G, S, compensate, downdate=k + 1 < len(group_sizes))
        pruned[S] = True
    channels = torch.nonzero(pruned).reshape(-1)
    if not compensate:
        loss = objective(W0, W, H0, channels)
    return W, channels.cpu().numpy(), loss
