"""The plug-in point of the pipeline: what a structured-pruning method provides.

What this is: the `Method` protocol, the `Selection` it returns, and the small selection
helpers the score-based baselines share. The layer-wise pipeline (pipeline.py) calls, for each
decoder layer, once for attention and once for the FFN:

    sel = method.select(kind, W, stats, blocks, layer=layer, options=options)

- kind:    "heads" (W is o_proj) or "channels" (W is down_proj);
- W:       the float32 weight (out × in) at the layer's current width; do not modify it;
- stats:   `slimgpt.stats.ActivationStats` of that projection's inputs over all calibration
           tokens (n, mean, var, sq_norm, and H = 2XᵀX/n when the method `needs_hessian`);
- blocks:  `slimgpt.gqa.Blocks`: remove `blocks.n_prune` structures of `blocks.width`
           consecutive input columns (heads, whole KV groups, or width-1 channels); with
           `blocks.groups`, every group loses the same number;
- layer:   the `DecoderLayer` (read-only; magnitude reads q/k/v and gate/up rows);
- options: `MethodOptions` (percdamp, backend, gcd, compensate, extra).

It returns the new W (pruned columns zero) and the pruned structure indices; the pipeline then
applies the mean-shift bias when the method asks for it (`bias_compensation`) and shrinks the
layer from the indices. A method may also make a whole-model `plan` (per-layer counts) instead
of following the schedule. What this is not: the schedule, GQA bookkeeping or model surgery.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MethodOptions:
    percdamp: float = 0.01
    backend: str | None = None
    gcd: bool = True                    # grouped-Cholesky head scores (False: the −GCD ablation)
    compensate: bool = True             # the method's compensation (OBS update, FLAP's bias)
    extra: dict = field(default_factory=dict)


@dataclass
class Selection:
    W: torch.Tensor                     # new weight, same shape as the input W
    pruned: list[int]                   # pruned structure indices, ascending
    info: dict = field(default_factory=dict)   # goes into the per-layer log ("error", "percdamp", ...)


class Method:
    """A structured-pruning method for the layer-wise pipeline (see the module docstring)."""

    name: str = ""
    needs_hessian: bool = False         # the pipeline accumulates H of the projection's inputs
    bias_compensation: bool = False     # b += (W − W_new) · mean(x): keep the mean output (FLAP)

    def plan(self, model, calib: torch.Tensor, settings):
        """Optional whole-model plan: a list of schedule.LayerPlan (query heads and channels per
        layer), or None to follow the per-layer schedule."""
        return None

    def select(self, kind: str, W: torch.Tensor, stats, blocks, *, layer, options: MethodOptions) -> Selection:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Helpers of score-based methods: the lowest-scoring blocks go

def select_lowest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Indices of the n_prune lowest scores, ascending by index; ties go to the lower index."""
    if not 0 <= n_prune <= scores.numel():
        raise ValueError(f"n_prune={n_prune} outside [0, {scores.numel()}]")
    order = torch.sort(scores.to(torch.float64), stable=True).indices
    return torch.sort(order[:n_prune]).values


def select_lowest_grouped(scores: torch.Tensor, n_prune: int, groups=None) -> torch.Tensor:
    """n_prune lowest scores; with `groups` (a group id per block), the same number from each."""
    if groups is None:
        return select_lowest(scores, n_prune)
    groups = torch.as_tensor(groups, dtype=torch.int64)
    ids = torch.unique(groups)
    if n_prune % ids.numel():
        raise ValueError(f"{n_prune} blocks do not split evenly over {ids.numel()} groups")
    per = n_prune // ids.numel()
    picked = [members[select_lowest(scores[members], per)]
              for members in (torch.nonzero(groups == g).reshape(-1) for g in ids.tolist())]
    return torch.sort(torch.cat(picked)).values


def block_columns(blocks, width: int, device=None) -> torch.Tensor:
    """Input-column indices of blocks of `width` consecutive columns (ascending)."""
    blocks = torch.as_tensor(blocks, dtype=torch.int64, device=device).reshape(-1)
    return (blocks[:, None] * width + torch.arange(width, device=blocks.device)[None, :]).reshape(-1)


def per_block(col_scores: torch.Tensor, n_blocks: int, reduce: str = "sum") -> torch.Tensor:
    """(d_in,) column scores → (n_blocks,) sums or means over each block's consecutive columns."""
    blocks = col_scores.reshape(n_blocks, -1)
    return blocks.sum(dim=1) if reduce == "sum" else blocks.mean(dim=1)


def zero_lowest(W: torch.Tensor, scores: torch.Tensor, blocks) -> Selection:
    """The selection of a score-based method without weight updates: the lowest-scoring blocks
    (per group when blocks.groups is set) are zeroed."""
    pruned = select_lowest_grouped(scores, blocks.n_prune, blocks.groups)
    W_new = W.detach().clone()
    W_new[:, block_columns(pruned, blocks.width, W.device)] = 0
    return Selection(W_new, pruned.tolist())
