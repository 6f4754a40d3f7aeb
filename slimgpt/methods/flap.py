"""FLAP (An et al., AAAI 2024): fluctuation scores, one global threshold, bias compensation.

- Score ("WIFV"): column score f_j = Var(X_j) · ||W[:, j]||² of o_proj / down_proj inputs
  (sample variance over calibration tokens); for attention FLAP's code squares it (f_j²).
- Structure ("AL-AM"): each layer's column scores are standardised per module ((f − mean)/std),
  a head's score is the mean of its columns'; one global threshold over all layers and both
  modules, weighted by each structure's parameter cost, meets the parameter budget. This is
  `plan`: a dense pass over the calibration windows (dense propagation, as FLAP's code) gives
  per-layer counts; within each layer the pipeline then prunes the lowest-scoring structures
  (standardisation is an increasing affine map inside a layer, so the ranking is the same).
- Compensation: b ← b + W[:, P] · mean(X_P), so the layer keeps its mean output
  (`bias_compensation`; off with options.compensate=False).

Hand-checked in tests/test_methods.py.
"""
from __future__ import annotations

from typing import Sequence

import torch

from slimgpt.methods.base import Method, MethodOptions, Selection, per_block, zero_lowest
from slimgpt.schedule import LayerPlan, PruneError, Schedule, param_costs, prunable_params
from slimgpt.stats import ActivationStats


def fluctuation_column_scores(W: torch.Tensor, var_x: torch.Tensor) -> torch.Tensor:
    """FLAP's WIFV column score: f_j = Var(X_j) · ||W[:, j]||₂²."""
    W = W.detach().to(torch.float64)
    return var_x.to(device=W.device, dtype=torch.float64) * (W ** 2).sum(dim=0)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """(x − mean(x)) / std(x), std with Bessel's correction (torch.std, as FLAP); a constant
    vector (std 0) maps to zeros rather than NaN."""
    x = x.to(torch.float64)
    if x.numel() < 2:
        return torch.zeros_like(x)
    sd = x.std()
    if not torch.isfinite(sd) or sd == 0:
        return torch.zeros_like(x)
    return (x - x.mean()) / sd


def structure_scores(col_scores: torch.Tensor, n_struct: int, *, square: bool = False) -> torch.Tensor:
    """FLAP's AL-AM score of each structure of one layer and module: (square,) standardise over
    the layer's columns, average per structure."""
    f = col_scores.to(torch.float64)
    return per_block(standardize(f ** 2 if square else f), n_struct, "mean")


def global_select(scores: Sequence[torch.Tensor], costs: Sequence[float], budget: float,
                  *, min_keep: int = 1) -> list[torch.Tensor]:
    """One global threshold over groups of structures with different parameter costs.

    Structures of all groups are visited from the lowest score up (ties: lower group, then lower
    index). A structure is removed if its cost still fits the remaining budget and its group
    keeps at least `min_keep` structures; one that would overshoot is skipped and the walk goes
    on, so cheaper structures fill the remainder. The removed parameters are <= budget and,
    while a structure of cost c is still available, within c of it. This is FLAP's AL-AM
    selection made exact for a given budget (FLAP's own cut is the argmin of |kept − target|).

    Returns, per group, the removed indices ascending (int64).
    """
    if len(scores) != len(costs):
        raise ValueError("one cost per group of scores")
    if not scores:
        return []
    flat = torch.cat([s.reshape(-1).to(torch.float64).cpu() for s in scores])
    group = torch.cat([torch.full((s.numel(),), g, dtype=torch.int64) for g, s in enumerate(scores)])
    index = torch.cat([torch.arange(s.numel()) for s in scores])
    left = float(budget)
    room = [max(s.numel() - min_keep, 0) for s in scores]
    chosen: list[list[int]] = [[] for _ in scores]
    # a stable sort on the score keeps (group, index) order among ties: the concatenation is sorted by both
    for k in torch.sort(flat, stable=True).indices.tolist():
        if left < min(costs):
            break
        g = int(group[k])
        if room[g] == 0 or costs[g] > left:
            continue
        chosen[g].append(int(index[k]))
        room[g] -= 1
        left -= costs[g]
    return [torch.tensor(sorted(c), dtype=torch.int64) for c in chosen]


class FLAP(Method):
    name = "flap"
    bias_compensation = True

    def select(self, kind, W, stats, blocks, *, layer, options: MethodOptions) -> Selection:
        f = fluctuation_column_scores(W, stats.var)
        # within a layer the standardisation is increasing and affine: rank by the mean of f² / f
        scores = per_block(f ** 2 if kind == "heads" else f, W.shape[1] // blocks.width, "mean")
        return zero_lowest(W, scores, blocks)

    @torch.no_grad()
    def plan(self, model, calib: torch.Tensor, settings) -> list[LayerPlan]:
        """Per-layer (query heads, channels) for the budget ratio × (prunable decoder parameters).

        Query heads (`--gqa query`) cost 2·D·d, 4·D·d under MHA where the KV head goes too (under
        GQA a KV head whose query heads all go is a bonus the budget does not foresee); whole KV
        groups (`--gqa group`) cost n_rep · 2·D·d + 2·D·d. Every layer keeps at least one head
        and one channel.
        """
        if settings.gqa not in ("query", "group"):
            raise PruneError("FLAP's plan (--method flap, --schedule flap) supports --gqa query or group")
        cfg = model.config
        cost = param_costs(cfg)
        dev = next(model.parameters()).device
        cos, sin = model.rope(calib.shape[1], dev, torch.float32)
        X = torch.cat([model.embed(b.to(dev)).float() for b in calib.split(settings.batch_size)])
        head_scores, chan_scores, head_cost, n_rep = [], [], [], []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            st_o, st_d = ActivationStats(attn.o_proj.in_features, device=dev), ActivationStats(mlp.down_proj.in_features,
                                                                                                 device=dev)
            for b in range(0, X.shape[0], settings.batch_size):
                t = layer.taps(X[b:b + settings.batch_size], cos, sin)
                st_o.add(t.a)
                st_d.add(t.f)
                X[b:b + settings.batch_size] = t.y
            rep = attn.n_heads // max(attn.n_kv, 1) if settings.gqa == "group" else 1
            n_rep.append(rep)
            head_scores.append(structure_scores(fluctuation_column_scores(attn.o_proj.weight, st_o.var),
                                                attn.n_heads // rep, square=True))
            chan_scores.append(structure_scores(fluctuation_column_scores(mlp.down_proj.weight, st_d.var),
                                                mlp.down_proj.in_features))
            if settings.gqa == "group":
                head_cost.append(rep * cost["q_head"] + cost["kv_head"])
            else:   # MHA: a query head owns its KV head, which leaves with it
                head_cost.append(cost["q_head"] + (cost["kv_head"] if attn.n_kv == attn.n_heads else 0))
        L = cfg.num_hidden_layers
        budget = round(settings.ratio * sum(prunable_params(cfg, i) for i in range(L)))
        chosen = global_select(head_scores + chan_scores, head_cost + [cost["channel"]] * L, budget)
        group = settings.gqa == "group"         # whole KV groups leave with their query heads
        return [LayerPlan(heads=int(chosen[i].numel()) * n_rep[i], kv_heads=int(chosen[i].numel()) if group else 0,
                          channels=int(chosen[L + i].numel())) for i in range(L)]


class FLAPSchedule(Schedule):
    """`--schedule flap`: FLAP's allocation (its global threshold over standardised fluctuation
    scores) for any method's selection. Its heads are kept; its FFN fractions become the ratios
    the Budget apportions channels by, so the run removes exactly the target like every other
    schedule (FLAP's threshold may also free KV heads that no plan foresees)."""
    name = "flap"
    whole_model_plan = True

    def plan(self, cfg, model, calib, settings, method):
        plans = FLAP().plan(model, calib, settings)
        return ([p.channels / cfg.layer_intermediate[i] for i, p in enumerate(plans)],
                [LayerPlan(p.heads, p.kv_heads, None if settings.hit_target else p.channels) for p in plans])
