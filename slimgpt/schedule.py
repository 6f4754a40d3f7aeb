"""How much each layer loses: per-layer ratios, parameter costs, and the global budget.

What this is: the bookkeeping between a global target ("remove 20% of the prunable decoder
parameters") and per-layer counts of heads and FFN channels (spec §5, §6.3). The per-layer
ratios come from the Incremental Pruning Ratio of slimgpt.reference (Eq. 6); heads are rounded
as published (Python round, half to even) and FFN channels absorb the rounding so that the
pruned parameters hit the target within one channel. What it is not: the GQA granularity of
heads (gqa.py) or the selection of which heads and channels (methods/).
"""
from __future__ import annotations

from dataclasses import dataclass

from slimgpt import reference
from slimgpt.align import channels_to_prune

SCHEDULES = reference.ipr.STRATEGIES


class PruneError(ValueError):
    """Settings or a model that the pipeline cannot prune (one clear message)."""


def layer_ratios(n_layers: int, ratio: float | None, schedule: str = "log", first: float | None = None,
                 last: float | None = None) -> list[float]:
    """Per-layer pruning ratios: explicit `first`..`last` endpoints, or a `schedule` whose mean is
    `ratio` (reference.ipr_for_target with the published first = 0.3125 · ratio)."""
    if first is not None:
        last = first if last is None else last
        return [float(r) for r in reference.ipr_ratios(n_layers, first, last, schedule)]
    if not ratio:
        return [0.0] * n_layers
    return [float(r) for r in reference.ipr_for_target(n_layers, ratio, strategy=schedule)]


def param_costs(cfg) -> dict:
    """Parameters that leave with one structure: a query head (its q rows and o_proj columns),
    a KV head (its k and v rows), an FFN channel (gate and up rows, a down_proj column)."""
    D, d = cfg.hidden_size, cfg.head_dim
    b = 1 if cfg.attention_bias else 0
    return {"q_head": 2 * D * d + b * d, "kv_head": 2 * D * d + 2 * b * d, "channel": 3 * D}


def prunable_params(cfg, i: int) -> int:
    """Parameters of layer i that pruning can remove (its heads, KV heads and FFN channels)."""
    c = param_costs(cfg)
    return (cfg.layer_heads[i] * c["q_head"] + cfg.layer_kv_heads[i] * c["kv_head"]
            + cfg.layer_intermediate[i] * c["channel"])


class Schedule:
    """A per-layer allocation of the budget: the second plug-in axis of the pipeline, beside the
    methods (registry: slimgpt/schedules.py; the pipeline never asks which schedule it runs).

    plan(cfg, model, calib, settings, method) -> (ratios, plans): a ratio per layer (recorded in
    the summary and the manifest; the Budget re-apportions FFN channels in proportion to m_i · r_i)
    and a LayerPlan per layer. `model` is the dense model (None on a resumed streamed run, which
    reads its saved plan); `method` the run's Method, whose own whole-model plan a schedule may
    follow (a ratio schedule does). whole_model_plan: the plan sets every layer's counts itself, so
    the Budget and --align do not shape them.
    """

    name: str = ""
    whole_model_plan: bool = False      # sets every layer's counts itself (no per-layer budget, no --align)

    def plan(self, cfg, model, calib, settings, method) -> tuple[list, list]:
        raise NotImplementedError

    def validate(self, settings) -> None:
        """Refuse settings this schedule cannot plan (PruneError), before any work is done."""


@dataclass
class LayerPlan:
    """What layer i will lose: query heads, the KV heads known to go with them, and FFN
    channels (None: decided by the budget when the layer is reached)."""
    heads: int
    kv_heads: int = 0
    channels: int | None = None


class Budget:
    """The global parameter target and the online re-apportioning of FFN channels.

    Before layer i's FFN is pruned, the parameters still to remove (target − pruned so far −
    the heads planned for later layers) are split over layers i..L−1 in proportion to m_j · r_j,
    and layer i takes its share, rounded. Heads are coarse (a SmolLM2 head is 73,728
    parameters, 42.7 channels); the channels absorb their rounding, so the total lands within
    one channel (3·D parameters) of the target.
    """

    def __init__(self, cfg, ratios: list[float], plan: list[LayerPlan], target: int, align: int = 1):
        self.cfg, self.ratios, self.plan, self.target = cfg, ratios, plan, target
        self.align = align              # kept channels a multiple of this (align.py; 1: exact counts)
        self.cost = param_costs(cfg)
        self.pruned = 0

    def remove(self, heads: int = 0, kv_heads: int = 0, channels: int = 0) -> None:
        """Record structures that were removed."""
        c = self.cost
        self.pruned += heads * c["q_head"] + kv_heads * c["kv_head"] + channels * c["channel"]

    def channels(self, i: int, width: int) -> int:
        """FFN channels layer i (now `width` wide) should lose."""
        L = len(self.plan)
        later_heads = sum(p.heads * self.cost["q_head"] + p.kv_heads * self.cost["kv_head"]
                          for p in self.plan[i + 1:])
        left = (self.target - self.pruned - later_heads) / self.cost["channel"]
        weights = [width * self.ratios[i]] + [self.cfg.layer_intermediate[j] * self.ratios[j] for j in range(i + 1, L)]
        share = left * weights[0] / sum(weights) if sum(weights) > 0 else (left if i == L - 1 else 0.0)
        return channels_to_prune(width, share, self.align)
