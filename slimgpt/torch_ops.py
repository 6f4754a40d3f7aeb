"""The block-downdate algorithm in torch, on any device: the `backend="torch"` of slimgpt.ops.

What this is: the operations of `slimgpt.reference.downdate` (one inverse, then exact block
downdates, spec §3.4), line for line, in torch in the dtype and on the device of the inputs. It
is the fallback for a model on a GPU when the CUDA core is not built, and runs on the CPU in the
tests. What it is not: a fast path (the C++/CUDA core is) or a new algorithm: every function here
has its twin of the same name in reference/downdate.py, and tests/test_ops.py (backend "torch")
holds them to it. The prune functions take the C++ core's arguments in its order and update W in
place as it does, so slimgpt.ops calls either the same way. Argument checks and the damping
(reference.damping.retry_with_damping) are slimgpt.ops's.

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
    """reference.damping.prepare_hessian, then G = H⁻¹ (spec §2.4): dead inputs (diag H = 0)
    get diag 1 and a zero column of W (in place), then percdamp · mean(diag H) on the diagonal.
    Returns (the prepared H, G)."""
    H = H.clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * torch.diagonal(H).mean())
    return H, torch.cholesky_inverse(_cholesky(H, "H"))


def scaled_errors(W: torch.Tensor, G: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """E = W_S L_S⁻ᵀ with L_S = chol(G_SS): the scaled OBS errors of removing the set S without
    removing it; ½‖E‖² = ½ tr(W_S (G_SS)⁻¹ W_Sᵀ) is its Eq. (1) cost (remove_set's E)."""
    L = _cholesky(G[S][:, S], "H⁻¹ block of the removed set")
    return torch.linalg.solve_triangular(L, W[:, S].T, upper=False).T


def remove_set(W: torch.Tensor, G: torch.Tensor, S: torch.Tensor, compensate: bool = True, downdate: bool = True):
    """reference.downdate.remove_set: W −= E·Ut, G −= UtᵀUt with L_S = chol(G_SS),
    Ut = L_S⁻¹G[S,:], E = W_S L_S⁻ᵀ. Updates W and G in place; returns E (None without
    compensation): ½‖E‖² is the loss of the set."""
    E = None
    if compensate or downdate:
        L = _cholesky(G[S][:, S], "H⁻¹ block of the removed set")
        Ut = torch.linalg.solve_triangular(L, G[S, :], upper=False)
        if compensate:
            E = torch.linalg.solve_triangular(L, W[:, S].T, upper=False).T
            W -= E @ Ut
        if downdate:
            G -= Ut.T @ Ut
            G[S, :] = 0.0
            G[:, S] = 0.0
            G[S, S] = 1.0
    W[:, S] = 0.0
    return E


def _loss(E) -> float:
    return 0.0 if E is None else 0.5 * float((E.double() ** 2).sum())


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


# The prune functions take the C++ core's arguments, in its order (outputs first: W is updated in
# place), and return what it returns: the loss (columns) or (pruned indices, loss).

def prune_columns(W, H, columns, percdamp: float, compensate: bool) -> float:
    """reference.downdate.prune_columns (W, H on any device; columns a host index array)."""
    S = torch.as_tensor(columns, dtype=torch.long, device=W.device)
    H0, G = prepare_inverse(W, H, percdamp)
    if not compensate:
        W0 = W.clone()
        W[:, S] = 0.0
        return objective(W0, W, H0, S)
    return _loss(remove_set(W, G, S, downdate=False))


def prune_heads(W, H, n_prune: int, head_dim: int, percdamp: float, gcd: bool, compensate: bool, head_groups=None):
    """reference.downdate.prune_heads; `head_groups` None or (n_heads,) group ids 0..n_groups-1,
    each group losing n_prune / n_groups heads."""
    H0, G = prepare_inverse(W, H, percdamp)
    W0 = W.clone()
    n_heads = W.shape[1] // head_dim
    groups = torch.zeros(n_heads, dtype=torch.long) if head_groups is None else torch.as_tensor(head_groups, dtype=torch.long)
    quota = n_prune // (int(groups.max()) + 1)
    pruned = torch.zeros(n_heads, dtype=torch.bool)
    loss = 0.0
    for it in range(n_prune):
        E = head_errors(W, G, head_dim, gcd).cpu()
        full = torch.bincount(groups[pruned], minlength=int(groups.max()) + 1) >= quota
        E[pruned | full[groups]] = float("inf")
        j = int(torch.argmin(E))          # ties: the first (lowest) index, as np.argmin
        S = torch.arange(j * head_dim, (j + 1) * head_dim, device=W.device)
        loss += _loss(remove_set(W, G, S, compensate, downdate=it + 1 < n_prune))
        pruned[j] = True
    heads = torch.nonzero(pruned).reshape(-1)
    if not compensate:
        loss = objective(W0, W, H0, (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1).to(W.device))
    return heads.numpy(), loss


def prune_channels(W, H, group_sizes, percdamp: float, compensate: bool):
    """reference.downdate.prune_channels with explicit group sizes."""
    H0, G = prepare_inverse(W, H, percdamp)
    W0 = W.clone()
    pruned = torch.zeros(W.shape[1], dtype=torch.bool, device=W.device)
    loss = 0.0
    for k, g in enumerate(group_sizes):
        eps = (W.double() ** 2).sum(0) / torch.diagonal(G).double()
        eps[pruned] = float("inf")
        S = torch.sort(eps, stable=True).indices[:int(g)]
        loss += _loss(remove_set(W, G, S, compensate, downdate=k + 1 < len(group_sizes)))
        pruned[S] = True
    channels = torch.nonzero(pruned).reshape(-1)
    if not compensate:
        loss = objective(W0, W, H0, channels)
    return channels.cpu().numpy(), loss
