"""An independent SlimGPT in PyTorch, in its own style, checked through a map (no wrappers).

    slimgpt oracle export golden/
    slimgpt oracle check golden/ --impl examples/oracle/torch_slimgpt.py --skip-tag project

Written from docs/spec.md without the reference: float64 tensors, its own names and argument
order, results as (selection, weight) or dicts, no damping retry (an H that is not positive
definite raises torch.linalg.LinAlgError). Compensation is the least-squares optimum of the
survivors, W_K = W H[:, K] (H_KK)⁻¹ (spec §2.2), recomputed after each greedy step, instead of
the Cholesky form: the same weights in exact arithmetic. ORACLE_MAP at the bottom tells the
oracle how to call it.
"""
from __future__ import annotations

import math

import torch


def gram(inputs: torch.Tensor) -> torch.Tensor:
    """H = 2 XᵀX / n for inputs (n, d)."""
    return 2.0 * inputs.T @ inputs / inputs.shape[0]


def running_gram(inputs: torch.Tensor, hessian: torch.Tensor | None, tokens_before: int):
    """The Hessian of tokens_before earlier tokens and the new inputs; (H, token count)."""
    n = inputs.shape[0]
    if tokens_before == 0:
        return gram(inputs), n
    return (tokens_before * hessian + 2.0 * inputs.T @ inputs) / (tokens_before + n), tokens_before + n


def _prepare(weight, hessian, damp):
    """Dead inputs get diag 1 and a zero weight column; then damp · mean(diag) on the diagonal."""
    weight, hessian = weight.clone(), hessian.clone()
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    weight[:, dead] = 0.0
    hessian += damp * torch.diagonal(hessian).mean() * torch.eye(len(hessian), dtype=hessian.dtype)
    return weight, hessian


def _least_squares(weight, hessian, keep: torch.Tensor):
    """Survivors at the optimum of Eq. (1): W[:, K] = W H[:, K] (H_KK)⁻¹; removed columns 0."""
    out = torch.zeros_like(weight)
    K = keep.nonzero().flatten()
    L = torch.linalg.cholesky(hessian[K][:, K])
    out[:, K] = torch.cholesky_solve((weight @ hessian[:, K]).T, L).T
    return out


def _inverse_without(hessian, removed: torch.Tensor):
    """(H with removed columns as identity rows/columns)⁻¹ (spec §3.3 steps 1 and 8)."""
    H = hessian.clone()
    H[removed, :] = 0.0
    H[:, removed] = 0.0
    H[removed, removed] = 1.0
    return torch.cholesky_inverse(torch.linalg.cholesky(H))


def remove_columns(weight, hessian, cols, damp=0.0):
    """Joint OBS removal of the columns `cols`."""
    weight, hessian = _prepare(weight, hessian, damp)
    keep = torch.ones(weight.shape[1], dtype=torch.bool)
    keep[cols] = False
    return _least_squares(weight, hessian, keep) if len(cols) else weight


def score_heads(weight, hinv, head_size, grouped=True):
    """Eq. (5): per head, Σ_k ||W[:, col_k]||² / L[k,k]², L the Cholesky factor of its H⁻¹ block."""
    n_heads = weight.shape[1] // head_size
    blocks = hinv.reshape(n_heads, head_size, n_heads, head_size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    diag = torch.linalg.cholesky(blocks).diagonal(dim1=1, dim2=2) ** 2 if grouped else blocks.diagonal(dim1=1, dim2=2)
    return ((weight ** 2).sum(0).reshape(n_heads, head_size) / diag).sum(1)


def prune_attention_heads(weight, hessian, head_size, how_many, damp=0.0):
    """One head per greedy step; returns (removed heads, new weight)."""
    W0, H = _prepare(weight, hessian, damp)
    n_heads = weight.shape[1] // head_size
    removed_heads = torch.zeros(n_heads, dtype=torch.bool)
    W = W0
    for _ in range(how_many):
        cols = removed_heads.repeat_interleave(head_size)
        scores = score_heads(W, _inverse_without(H, cols), head_size)
        scores[removed_heads] = math.inf
        removed_heads[int(torch.argmin(scores))] = True   # argmin: first (lowest) index on ties
        W = _least_squares(W0, H, ~removed_heads.repeat_interleave(head_size))
    return removed_heads.nonzero().flatten(), W


def group_schedule(total: int) -> list[int]:
    """Dynamic Group Size, as the published code (spec §4.2)."""
    sizes, b = [], (total - 512) // 2
    while sum(sizes) < total:
        sizes.append(min(total - sum(sizes), max(b, 64), 1024))
        b = (b - 512) // 2
    return sizes


def prune_ffn(weight, hessian, how_many, damp=0.0, groups=None):
    """Channels in groups (DGS unless `groups` gives sizes); returns {"weight", "channels"}."""
    W0, H = _prepare(weight, hessian, damp)
    W, removed = W0, torch.zeros(weight.shape[1], dtype=torch.bool)
    if groups is None:
        groups = group_schedule(how_many)
    elif isinstance(groups, int):   # fixed groups, the last one smaller (the -DGS ablation)
        groups = [groups] * (how_many // groups) + [how_many % groups] * (how_many % groups > 0)
    for g in groups:
        err = (W ** 2).sum(0) / torch.diagonal(_inverse_without(H, removed))
        err[removed] = math.inf
        removed[torch.argsort(err, stable=True)[:g]] = True
        W = _least_squares(W0, H, ~removed)
    return {"weight": W, "channels": removed.nonzero().flatten()}


def _output_mse(inputs, weight, new_weight):
    return torch.sum((inputs @ (new_weight - weight).T) ** 2) / inputs.shape[0]


def prune_o_proj(inputs, weight, how_many, head_size, damp=0.0):
    """A whole attention output projection from its calibration inputs."""
    heads, W = prune_attention_heads(weight, gram(inputs), head_size, how_many, damp)
    return {"weight": W, "heads": heads, "mse": _output_mse(inputs, weight, W)}


def prune_down_proj(inputs, weight, how_many, damp=0.0):
    """A whole FFN down projection from its calibration inputs."""
    out = prune_ffn(weight, gram(inputs), how_many, damp)
    return {**out, "mse": _output_mse(inputs, weight, out["weight"])}


def layer_error(weight, new_weight, hessian):
    """Eq. (1) through H: ½ tr(ΔW H ΔWᵀ)."""
    D = weight - new_weight
    return 0.5 * torch.sum((D @ hessian) * D)


def ipr(num_layers, r_first, r_last, kind="log"):
    """Eq. (6) and the linear / uniform / decreasing variants (spec §5.2)."""
    if r_first > r_last or (kind == "uniform" and r_first != r_last):
        raise ValueError("first must be <= last (and equal for uniform)")
    i = torch.arange(num_layers, dtype=torch.float64)
    base = kind.removesuffix("-decrease")
    if num_layers == 1 or base == "uniform":
        shape = torch.zeros(num_layers, dtype=torch.float64)
    else:
        shape = torch.log(i + 1) / math.log(num_layers) if base == "log" else i / (num_layers - 1)
    return r_first + (r_last - r_first) * (shape.flip(0) if kind.endswith("-decrease") else shape)


ORACLE_MAP = {
    "inputs": "torch",
    "operations": {
        "hessian": "gram", "accumulate_hessian": "running_gram", "prune_columns": "remove_columns",
        "head_errors": "score_heads", "prune_heads": "prune_attention_heads", "dgs_group_sizes": "group_schedule",
        "prune_channels": "prune_ffn", "reconstruction_error": "layer_error", "ipr_ratios": "ipr",
        "prune_attention_layer": "prune_o_proj", "prune_ffn_layer": "prune_down_proj",
    },
    "arguments": {
        "hessian": {"X": "inputs"},
        "accumulate_hessian": {"X": "inputs", "H": "hessian", "n_seen": "tokens_before"},
        "prune_columns": {"W": "weight", "H": "hessian", "columns": "cols", "percdamp": "damp", "compensate": None},
        "head_errors": {"W": "weight", "Hinv": "hinv", "head_dim": "head_size", "gcd": "grouped"},
        "prune_heads": {"W": "weight", "H": "hessian", "n_prune": "how_many", "head_dim": "head_size",
                        "percdamp": "damp", "gcd": None, "compensate": None, "head_groups": None},
        "dgs_group_sizes": {"n_prune": "total"},
        "prune_channels": {"W": "weight", "H": "hessian", "n_prune": "how_many", "percdamp": "damp",
                           "group_sizes": "groups", "compensate": None},
        "reconstruction_error": {"W": "weight", "W_new": "new_weight", "H": "hessian"},
        "ipr_ratios": {"n_layers": "num_layers", "first": "r_first", "last": "r_last", "strategy": "kind"},
        "prune_attention_layer": {"X": "inputs", "W": "weight", "n_prune": "how_many", "head_dim": "head_size",
                                  "percdamp": "damp", "head_groups": None},
        "prune_ffn_layer": {"X": "inputs", "W": "weight", "n_prune": "how_many", "percdamp": "damp",
                            "group_sizes": None},
    },
    "positional": {
        "accumulate_hessian": ["inputs", "hessian", "tokens_before"],
        "prune_heads": ["weight", "hessian", "head_size", "how_many"],
    },
    "outputs": {
        "prune_heads": ["pruned_heads", "W_new"],
        "prune_channels": {"W_new": "weight", "pruned_channels": "channels"},
        "prune_attention_layer": {"W_new": "weight", "pruned_heads": "heads", "loss": "mse"},
        "prune_ffn_layer": {"W_new": "weight", "pruned_channels": "channels", "loss": "mse"},
    },
    "errors": {"torch.linalg.LinAlgError": "not_positive_definite", "ValueError": "invalid_argument"},
}
