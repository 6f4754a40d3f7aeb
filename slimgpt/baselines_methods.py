"""Baselines as layer-level steps: scores for heads and channels of a LLaMA-style decoder layer,
the FLAP global plan, FLAP's bias compensation, and input-statistics hooks.

What this file is: the glue between the pure criteria of `slimgpt.baselines` and a decoder layer
with Hugging Face-style names (`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, all
`nn.Linear`, weights out × in). What it is not: it does not pick per-layer counts (the schedule
does) and it does not shrink the layer (the pipeline's surgery does); it returns indices.

Attention structures: `n_struct` consecutive equal blocks of o_proj input columns and q_proj
rows; with `kv_in_struct=True` (MHA, or pruning whole GQA groups) the same blocks of k/v rows
leave with them and count in the magnitude score.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from slimgpt import baselines as B

METHODS = ("magnitude", "wanda-sp", "flap")


# ----------------------------------------------------------------------------------------------
# Input statistics through forward pre-hooks


@contextmanager
def input_stats(modules: dict[str, nn.Module]) -> Iterator[dict[str, B.ActivationStats]]:
    """Collect ActivationStats of each module's input while the block runs.

    >>> with input_stats({"o": layer.self_attn.o_proj}) as st: layer(x)
    >>> st["o"].var
    """
    stats = {name: B.ActivationStats(m.in_features) for name, m in modules.items()}
    handles = []
    for name, m in modules.items():
        def hook(_mod, args, _name=name):
            stats[_name].add(args[0])
        handles.append(m.register_forward_pre_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------------------------
# Scores of one layer


def attention_parts(attn: nn.Module, *, kv_in_struct: bool) -> list[tuple[torch.Tensor, int]]:
    """Weights that lose a slice with each attention structure: q rows, (k, v rows), o columns."""
    parts = [(attn.q_proj.weight, 0)]
    if kv_in_struct:
        parts += [(attn.k_proj.weight, 0), (attn.v_proj.weight, 0)]
    parts.append((attn.o_proj.weight, 1))
    return parts


def mlp_parts(mlp: nn.Module) -> list[tuple[torch.Tensor, int]]:
    """Weights that lose a slice with each FFN channel: gate row, up row, down column."""
    return [(mlp.gate_proj.weight, 0), (mlp.up_proj.weight, 0), (mlp.down_proj.weight, 1)]


def head_column_scores(method: str, o_proj: nn.Linear, stats: B.ActivationStats | None) -> torch.Tensor:
    """Per-input-column score of o_proj (or down_proj) for the activation-aware methods."""
    if method == "wanda-sp":
        return B.wanda_sp_column_scores(o_proj.weight, stats.sq_norm)
    if method == "flap":
        return B.fluctuation_column_scores(o_proj.weight, stats.var)
    raise ValueError(f"no column scores for method {method!r}")


def head_scores(method: str, attn: nn.Module, n_struct: int, stats: B.ActivationStats | None = None,
                *, kv_in_struct: bool = True) -> torch.Tensor:
    """Score of each attention structure in one layer (lowest are pruned) for magnitude / Wanda-sp.

    FLAP's scores are not per layer (they are standardized, then compared across layers): use
    `flap_plan`.
    """
    if method == "magnitude":
        return B.magnitude_scores(attention_parts(attn, kv_in_struct=kv_in_struct), n_struct)
    if method == "wanda-sp":
        return B.sum_per_structure(head_column_scores(method, attn.o_proj, stats), n_struct)
    raise ValueError(f"head_scores: method must be magnitude or wanda-sp, got {method!r}")


def channel_scores(method: str, mlp: nn.Module, stats: B.ActivationStats | None = None) -> torch.Tensor:
    """Score of each FFN channel in one layer (lowest are pruned) for magnitude / Wanda-sp."""
    n = mlp.down_proj.in_features
    if method == "magnitude":
        return B.magnitude_scores(mlp_parts(mlp), n)
    if method == "wanda-sp":
        return head_column_scores(method, mlp.down_proj, stats)
    raise ValueError(f"channel_scores: method must be magnitude or wanda-sp, got {method!r}")


# ----------------------------------------------------------------------------------------------
# FLAP: global plan over all layers


def flap_plan(o_col_scores: Sequence[torch.Tensor], n_struct: Sequence[int],
              down_col_scores: Sequence[torch.Tensor], head_cost: Sequence[float] | float,
              channel_cost: Sequence[float] | float, budget: float, *, min_keep: int = 1
              ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """FLAP's adaptive structure (AL-AM): which heads and channels each layer loses.

    o_col_scores[i] / down_col_scores[i]: layer i's fluctuation column scores of o_proj /
    down_proj (`baselines.fluctuation_column_scores`). Attention scores are squared (FLAP's
    code), standardized per layer and averaged per head; channel scores standardized per layer;
    then one global selection weighted by each structure's parameter cost removes `budget`
    parameters (`baselines.global_select`).

    Returns (pruned heads per layer, pruned channels per layer), int64 index tensors.
    """
    L = len(o_col_scores)
    hc = [float(head_cost)] * L if isinstance(head_cost, (int, float)) else [float(c) for c in head_cost]
    cc = [float(channel_cost)] * L if isinstance(channel_cost, (int, float)) else [float(c) for c in channel_cost]
    heads = [B.flap_structure_scores(o_col_scores[i], n_struct[i], square=True) for i in range(L)]
    chans = [B.flap_structure_scores(down_col_scores[i], down_col_scores[i].numel()) for i in range(L)]
    chosen = B.global_select(heads + chans, hc + cc, budget, min_keep=min_keep)
    return chosen[:L], chosen[L:]


def structure_columns(structs: torch.Tensor, width: int) -> torch.Tensor:
    """Input-column indices of structures of `width` consecutive columns (ascending)."""
    structs = torch.as_tensor(structs, dtype=torch.int64).reshape(-1)
    if structs.numel() == 0:
        return structs
    return (structs[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


@torch.no_grad()
def add_bias_compensation(linear: nn.Linear, mean_x: torch.Tensor, pruned_cols: torch.Tensor) -> torch.Tensor:
    """FLAP: b ← b + W[:, P] μ_P on `linear` (creating a zero bias if it has none). Returns Δb."""
    delta = B.bias_compensation(linear.weight, mean_x, pruned_cols)
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                               device=linear.weight.device), requires_grad=False)
    linear.bias.add_(delta)
    return delta


# ----------------------------------------------------------------------------------------------
# Registry steps for the layer-wise pipeline (slimgpt.methods / slimgpt.pipeline)
#
# Signature (methods.py): fn(kind, W, stats, n_prune, head_dim, *, head_groups, layer, options)
# -> Selection. kind "heads": W is o_proj, structures are blocks of `head_dim` columns (d for
# query heads, n_rep·d for whole GQA groups); kind "channels": W is down_proj, head_dim 1.


def select_lowest_grouped(scores: torch.Tensor, n_prune: int, head_groups=None) -> torch.Tensor:
    """n_prune lowest scores; with head_groups (GQA "balanced"), the same number from each group."""
    if head_groups is None:
        return B.select_lowest(scores, n_prune)
    groups = torch.as_tensor(head_groups, dtype=torch.int64)
    ids = torch.unique(groups)
    if n_prune % ids.numel():
        raise ValueError(f"balanced GQA: {n_prune} structures do not split over {ids.numel()} groups")
    per = n_prune // ids.numel()
    out = []
    for g in ids.tolist():
        members = torch.nonzero(groups == g).reshape(-1)
        out.append(members[B.select_lowest(scores[members], per)])
    return torch.sort(torch.cat(out)).values if out else torch.zeros(0, dtype=torch.int64)


def _kv_in_struct(layer, head_dim: int) -> bool:
    """Do a structure's k/v rows leave with it? MHA heads and whole GQA groups: yes."""
    attn = layer.self_attn
    per = head_dim // attn.head_dim
    return attn.n_kv * per == attn.n_heads and attn.kv_map.tolist() == [h // per for h in range(attn.n_heads)]


def _structure_scores(method: str, kind: str, W, stats, head_dim: int, layer) -> torch.Tensor:
    n_struct = W.shape[1] // head_dim
    if method == "magnitude":
        if kind == "heads":
            return B.magnitude_scores(attention_parts(layer.self_attn, kv_in_struct=_kv_in_struct(layer, head_dim)),
                                      n_struct)
        return B.magnitude_scores([(layer.mlp.gate_proj.weight, 0), (layer.mlp.up_proj.weight, 0), (W, 1)], n_struct)
    if method == "wanda-sp":
        return B.sum_per_structure(B.wanda_sp_column_scores(W, stats.sq_norm), n_struct)
    if method == "flap":
        f = B.fluctuation_column_scores(W, stats.var)
        # Within one layer FLAP's standardization is an increasing affine map, so ranking by
        # the mean of f² (heads) or f (channels) is FLAP's within-layer ranking.
        return B.mean_per_structure(f ** 2 if kind == "heads" else f, n_struct)
    raise ValueError(method)


def _make_step(method: str):
    def step(kind, W, stats, n_prune, head_dim, *, head_groups=None, layer=None, options=None):
        from slimgpt.methods import Selection

        W_new = W.detach().clone()
        flap_bias = method == "flap" and (options is None or options.compensate)
        if n_prune == 0:
            # FLAP: a zero bias all the same, so every layer of the model has one (one config flag).
            zero = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device) if flap_bias else None
            return Selection(W_new, [], bias_delta=zero, info={"method": method})
        scores = _structure_scores(method, kind, W, stats, head_dim, layer)
        pruned = select_lowest_grouped(scores, n_prune, head_groups)
        cols = structure_columns(pruned, head_dim)
        bias = None
        if flap_bias:
            bias = B.bias_compensation(W, stats.mean, cols)
        W_new[:, cols] = 0
        return Selection(W_new, pruned.tolist(), bias_delta=bias, info={"method": method})
    step.__name__ = f"{method.replace('-', '_')}_select"
    step.__doc__ = f"{method}: per-layer selection step of the baseline (see module docs); no OBS update."
    return step


magnitude_select = _make_step("magnitude")
wanda_sp_select = _make_step("wanda-sp")
flap_select = _make_step("flap")


@torch.no_grad()
def flap_counts(model, calib: torch.Tensor, settings) -> list[tuple[int, int]]:
    """FLAP's global plan: per-layer (query heads, channels) to prune for the pipeline's target.

    One dense pass over the calibration windows (dense propagation, as FLAP's code) collects the
    fluctuation of every o_proj / down_proj input; scores are squared for attention, standardized
    per layer and module, and one cost-weighted global selection (baselines.global_select) removes
    ratio × (prunable decoder parameters), each layer keeping at least one head and one channel.
    `--gqa query` (default) ranks query heads (cost 2·D·d, 4·D·d under MHA where the KV head
    goes too; under GQA a KV head whose query heads all go is a bonus the budget does not
    foresee); `--gqa group` whole KV groups
    (cost n_rep·2·D·d + 2·D·d). The per-layer selection and bias then run in the pipeline.
    """
    from slimgpt import pipeline as P

    if settings.gqa not in ("query", "group"):
        raise P.PruneError("--method flap supports --gqa query or group")
    cfg = model.config
    L, D, d = cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim
    cost = P.param_costs(cfg)
    dev = next(model.parameters()).device
    N, T = calib.shape
    bs = settings.batch_size
    X = torch.cat([model.embed(calib[b:b + bs].to(dev)).float() for b in range(0, N, bs)])
    cos, sin = model.rope(T, dev, torch.float32)
    o_scores, d_scores, n_struct, head_cost, chan_cost = [], [], [], [], []
    for layer in model.model.layers:
        attn = layer.self_attn
        with input_stats({"o": attn.o_proj, "d": layer.mlp.down_proj}) as st:
            for b in range(0, N, bs):
                X[b:b + bs] = layer(X[b:b + bs], cos, sin)
        f_o = B.fluctuation_column_scores(attn.o_proj.weight, st["o"].var)
        if settings.gqa == "group":
            n_rep = attn.n_heads // max(attn.n_kv, 1)
            n_struct.append(attn.n_kv)
            head_cost.append(n_rep * cost["q_head"] + cost["kv_head"])
        else:
            n_struct.append(attn.n_heads)
            # MHA: a query head owns its KV head, which leaves with it
            own_kv = attn.n_kv == attn.n_heads
            head_cost.append(cost["q_head"] + (cost["kv_head"] if own_kv else 0))
        o_scores.append(f_o)
        d_scores.append(B.fluctuation_column_scores(layer.mlp.down_proj.weight, st["d"].var))
        chan_cost.append(cost["channel"])
    budget = round(settings.ratio * sum(P.prunable_params(cfg, i) for i in range(L)))
    heads, chans = flap_plan(o_scores, n_struct, d_scores, head_cost, chan_cost, budget)
    per = [(attn_n_rep if settings.gqa == "group" else 1) for attn_n_rep in
           [ly.self_attn.n_heads // max(ly.self_attn.n_kv, 1) for ly in model.model.layers]]
    return [(int(h.numel()) * per[i], int(c.numel())) for i, (h, c) in enumerate(zip(heads, chans))]


def register_all() -> None:
    """Register magnitude, wanda-sp and flap in slimgpt.methods.METHODS (idempotent)."""
    from slimgpt.methods import register_method

    register_method("magnitude", magnitude_select, needs_hessian=False)
    register_method("wanda-sp", wanda_sp_select, needs_hessian=False)
    register_method("flap", flap_select, needs_hessian=False)


# Global planners: methods whose per-layer counts come from a whole-model plan, not the schedule.
PLANNERS = {"flap": flap_counts}
