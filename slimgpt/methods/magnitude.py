"""Magnitude ("mag-sp"): prune the structures whose weights are smallest; no calibration.

Score of a structure: Σ of the squared entries of every weight that leaves with it (a head:
its q rows, its o_proj columns, and its k/v rows when it owns its KV head: MHA, or a whole GQA
group; an FFN channel: its gate and up rows and its down_proj column). FLAP's mag_sp uses the
o_proj / down_proj column norm only; the full structure norm needs no calibration either. No
weight update: the lowest structures are zeroed. Hand-checked in tests/test_methods.py.
"""
from __future__ import annotations

import torch

from slimgpt.methods.base import Method, MethodOptions, Selection, zero_lowest


def magnitude_scores(parts, n_struct: int) -> torch.Tensor:
    """Σ over `parts` of ||W[block_s]||_F² per structure s.

    parts: (W, dim) pairs, each weight that loses a slice with a structure and the dimension it
    loses it along (0: rows, e.g. q/k/v or gate/up; 1: columns, e.g. o_proj or down_proj); W's
    `dim` splits into n_struct equal consecutive blocks.
    """
    total = torch.zeros(n_struct, dtype=torch.float64)
    for W, dim in parts:
        W = W.detach().to(torch.float64)
        if W.shape[dim] % n_struct:
            raise ValueError(f"dimension {dim} of size {W.shape[dim]} does not split into {n_struct} structures")
        total += (W.transpose(0, dim).reshape(n_struct, -1) ** 2).sum(dim=1).cpu()
    return total


def owns_kv(attn, width: int) -> bool:
    """Do a block's k/v rows leave with it? MHA heads and whole GQA groups: yes."""
    per = width // attn.head_dim
    return attn.n_kv * per == attn.n_heads and attn.kv_map.tolist() == [h // per for h in range(attn.n_heads)]


class Magnitude(Method):
    name = "magnitude"

    def select(self, kind, W, stats, blocks, *, layer, options: MethodOptions) -> Selection:
        n_struct = W.shape[1] // blocks.width
        if kind == "heads":
            attn = layer.self_attn
            parts = [(attn.q_proj.weight, 0)]
            if owns_kv(attn, blocks.width):
                parts += [(attn.k_proj.weight, 0), (attn.v_proj.weight, 0)]
            parts.append((W, 1))
        else:
            parts = [(layer.mlp.gate_proj.weight, 0), (layer.mlp.up_proj.weight, 0), (W, 1)]
        return zero_lowest(W, magnitude_scores(parts, n_struct), blocks)
