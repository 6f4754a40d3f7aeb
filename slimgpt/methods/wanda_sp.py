"""Wanda-sp (FLAP's structured Wanda): weights times input norms, summed per structure.

Column score s_j = Σ_i |W_ij| · ||X_j||₂ on o_proj / down_proj inputs (FLAP's `prune_wanda_sp`
averages over rows i, a constant factor), summed over the columns of a structure; the lowest
structures are zeroed, no weight update. Hand-checked in tests/test_methods.py.
"""
from __future__ import annotations

import torch

from slimgpt.methods.base import Method, MethodOptions, Selection, per_block, zero_lowest


def wanda_sp_column_scores(W: torch.Tensor, sq_norm_x: torch.Tensor) -> torch.Tensor:
    """s_j = Σ_i |W_ij| · ||X_j||₂ for W (d_out, d_in) and sq_norm_x = Σ_t x_tj² (d_in,)."""
    W = W.detach().to(torch.float64)
    return W.abs().sum(dim=0) * sq_norm_x.to(device=W.device, dtype=torch.float64).clamp_min(0).sqrt()


class WandaSP(Method):
    name = "wanda-sp"

    def select(self, kind, W, stats, blocks, *, layer, options: MethodOptions) -> Selection:
        scores = per_block(wanda_sp_column_scores(W, stats.sq_norm), W.shape[1] // blocks.width)
        return zero_lowest(W, scores, blocks)
