"""Physical shrinking of a decoder layer from the **recorded pruned indices**.

SlimGPT prunes by zeroing input columns of o_proj / down_proj and compensating the rest; the
pruned model is then exported by removing those columns and the same-indexed rows of q/k/v and
gate/up (spec §6.4-6.5). The published exporter finds them as "columns that are all zero"; here
they always come from the indices the selection step returned, so a dead input column (all zero
but not selected) can never cut a head in half.

GQA: a query head's q rows and o_proj columns go with it; a KV head's k/v rows go only when no
remaining query head reads it, and the query→KV map is renumbered (model.py keeps it explicit).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from slimgpt.model import DecoderLayer, LlamaForCausalLM


def _meta_linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    with warnings.catch_warnings():       # "Initializing zero-element tensors is a no-op"
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(n_in, n_out, bias=bias, device="meta")


def _rows(lin: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = _meta_linear(lin.in_features, keep.numel(), lin.bias is not None)
    new.weight = nn.Parameter(lin.weight.data.index_select(0, keep).clone())
    if lin.bias is not None:
        new.bias = nn.Parameter(lin.bias.data.index_select(0, keep).clone())
    return new


def _cols(lin: nn.Linear, keep: torch.Tensor, weight: torch.Tensor | None = None) -> nn.Linear:
    W = lin.weight.data if weight is None else weight
    new = _meta_linear(keep.numel(), lin.out_features, lin.bias is not None)
    new.weight = nn.Parameter(W.index_select(1, keep).clone().to(lin.weight.dtype))
    if lin.bias is not None:
        new.bias = nn.Parameter(lin.bias.data.clone())
    return new


def _block_index(blocks: list[int], d: int, device) -> torch.Tensor:
    """Column (or row) indices of blocks of d, on the weights' device."""
    return (torch.tensor(blocks, dtype=torch.long, device=device)[:, None] * d
            + torch.arange(d, device=device)).reshape(-1)


def freed_kv_heads(attn, pruned_heads) -> list[int]:
    """The KV heads that no remaining query head reads once `pruned_heads` are gone."""
    pruned = set(int(h) for h in pruned_heads)
    kept = {int(k) for h, k in enumerate(attn.kv_map.tolist()) if h not in pruned}
    return [k for k in range(attn.n_kv) if k not in kept]


@torch.no_grad()
def add_bias(linear: nn.Linear, delta: torch.Tensor) -> None:
    """linear.bias += delta, creating a zero bias first (bias-compensating methods, e.g. FLAP)."""
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                               device=linear.weight.device))
    linear.bias.data += delta.to(device=linear.bias.device, dtype=linear.bias.dtype)


@torch.no_grad()
def apply_heads(layer: DecoderLayer, pruned_heads, o_weight: torch.Tensor, *, physical: bool = True) -> list[int]:
    """Put the compensated o_proj weight in place and remove `pruned_heads`: physically
    (remove_heads) or, with physical=False, by leaving their o_proj columns zero (the masked
    model, spec §6.4). Returns the KV heads that went with them."""
    if physical:
        return remove_heads(layer, pruned_heads, o_weight)
    layer.self_attn.o_proj.weight.data.copy_(o_weight)
    return freed_kv_heads(layer.self_attn, pruned_heads)


@torch.no_grad()
def apply_channels(layer: DecoderLayer, pruned_channels, down_weight: torch.Tensor, *, physical: bool = True) -> None:
    """As apply_heads, for FFN channels and down_proj."""
    if physical:
        remove_channels(layer, pruned_channels, down_weight)
    else:
        layer.mlp.down_proj.weight.data.copy_(down_weight)


@torch.no_grad()
def remove_heads(layer: DecoderLayer, pruned_heads, o_weight: torch.Tensor | None = None) -> list[int]:
    """Remove query heads `pruned_heads` (indices in the layer's current numbering).

    `o_weight`, when given, is the compensated full-width o_proj weight to shrink (default: the
    current one). Returns the KV heads that were removed (current numbering).
    """
    attn = layer.self_attn
    H, d = attn.n_heads, attn.head_dim
    pruned = sorted(set(int(h) for h in pruned_heads))
    if any(not 0 <= h < H for h in pruned):
        raise ValueError(f"head indices must lie in [0, {H}), got {pruned}")
    keep_q = [h for h in range(H) if h not in pruned]
    old_map = attn.kv_map.tolist()
    gone_kv = freed_kv_heads(attn, pruned)
    keep_kv = [k for k in range(attn.n_kv) if k not in gone_kv]
    renum = {k: j for j, k in enumerate(keep_kv)}
    dev = attn.q_proj.weight.device
    attn.q_proj = _rows(attn.q_proj, _block_index(keep_q, d, dev))
    attn.k_proj = _rows(attn.k_proj, _block_index(keep_kv, d, dev))
    attn.v_proj = _rows(attn.v_proj, _block_index(keep_kv, d, dev))
    attn.o_proj = _cols(attn.o_proj, _block_index(keep_q, d, dev), o_weight)
    attn.n_heads, attn.n_kv = len(keep_q), len(keep_kv)
    attn.kv_map = torch.tensor([renum[old_map[h]] for h in keep_q], dtype=torch.long, device=dev)
    return gone_kv


@torch.no_grad()
def remove_channels(layer: DecoderLayer, pruned_channels, down_weight: torch.Tensor | None = None) -> None:
    """Remove FFN channels (gate/up rows, down_proj columns) at the given indices."""
    mlp = layer.mlp
    M = mlp.down_proj.in_features
    pruned = set(int(c) for c in pruned_channels)
    if any(not 0 <= c < M for c in pruned):
        raise ValueError(f"channel indices must lie in [0, {M})")
    keep = torch.tensor([c for c in range(M) if c not in pruned], dtype=torch.long, device=mlp.down_proj.weight.device)
    mlp.gate_proj = _rows(mlp.gate_proj, keep)
    mlp.up_proj = _rows(mlp.up_proj, keep)
    mlp.down_proj = _cols(mlp.down_proj, keep, down_weight)


def sync_config(model: LlamaForCausalLM) -> None:
    """Write the layers' current shapes back into model.config (after in-place shrinking)."""
    cfg = model.config
    for i, layer in enumerate(model.model.layers):
        cfg.layer_heads[i] = layer.self_attn.n_heads
        cfg.layer_kv_heads[i] = layer.self_attn.n_kv
        cfg.layer_kv_map[i] = layer.self_attn.kv_map.tolist()
        cfg.layer_intermediate[i] = layer.mlp.down_proj.in_features
    cfg.o_proj_bias, cfg.mlp_bias = uniform_biases(model)
    cfg.validate()


@torch.no_grad()
def uniform_biases(model: LlamaForCausalLM) -> tuple[bool, bool]:
    """If any layer's o_proj / down_proj got a bias (bias-compensating methods), give every
    layer one (zeros), so one config flag describes the model. Returns the two flags."""
    flags = []
    for get in (lambda l: l.self_attn.o_proj, lambda l: l.mlp.down_proj):
        lins = [get(l) for l in model.model.layers]
        has = any(lin.bias is not None for lin in lins)
        for lin in lins:
            if has and lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
        flags.append(has)
    return flags[0], flags[1]


@torch.no_grad()
def shrink_model(model: LlamaForCausalLM, layers_record: list[dict]) -> LlamaForCausalLM:
    """Shrink a masked full-size model in place from a pipeline record (one dict per layer with
    'heads_pruned' and 'channels_pruned' in the layer's numbering at pruning time)."""
    for layer, rec in zip(model.model.layers, layers_record):
        remove_heads(layer, rec.get("heads_pruned", []))
        remove_channels(layer, rec.get("channels_pruned", []))
    sync_config(model)
    return model
