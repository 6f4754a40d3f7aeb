"""The schedules: how the budget is spread over the layers, one registry like slimgpt.methods.

    log, linear, uniform,     the Incremental Pruning Ratio (spec §5.2, Eq. 6): a ratio per layer
    log-decrease, ...         from a formula; heads rounded as published, channels by the Budget
    flap                      FLAP's per-layer counts (its global threshold, methods/flap.py)

Each entry is a `schedule.Schedule`; the pipeline calls `plan` and never names one. A
schedule of your own: subclass `Schedule` and `register(MySchedule())`.
"""
from __future__ import annotations

from slimgpt import align, gqa, reference
from slimgpt.methods import METHODS, Method
from slimgpt.methods.flap import FLAPSchedule
from slimgpt.schedule import LayerPlan, Schedule, layer_ratios


class RatioSchedule(Schedule):
    """A ratio per layer from an IPR strategy (or the explicit per-layer / --first..--last ratios),
    or the method's own whole-model plan when it has one (FLAP's)."""

    def __init__(self, name: str):
        self.name = name

    def plan(self, cfg, model, calib, s, method):
        L = cfg.num_hidden_layers
        ratios = [float(r) for r in s.ratios] if s.ratios is not None else \
            layer_ratios(L, s.ratio, self.name, s.first, s.last)
        plans = method.plan(model, calib, s) if model is not None else None
        return ratios, plans or [layer_counts(cfg, i, r, s) for i, r in enumerate(ratios)]


def layer_counts(cfg, i: int, r: float, s) -> LayerPlan:
    """Layer i's counts from its ratio: heads rounded as published (gqa.planned_heads), channels by
    the Budget (or round(m · r) without hit_target)."""
    H, K = cfg.layer_heads[i], cfg.layer_kv_heads[i]
    heads, kv = gqa.planned_heads(H, K, r, align.head_mode(s.gqa, H, K, s.align, s.align_heads), i)
    return LayerPlan(heads, kv, None if s.hit_target else round(cfg.layer_intermediate[i] * r))


SCHEDULES: dict[str, Schedule] = {s.name: s for s in (RatioSchedule(n) for n in reference.ipr.STRATEGIES)}
SCHEDULES.update(flap=FLAPSchedule())


def register(schedule: Schedule) -> None:
    """Make `schedule` available to the pipeline and the CLI under `schedule.name`."""
    if not isinstance(schedule, Schedule) or not schedule.name:
        raise ValueError("register a Schedule instance with a name")
    SCHEDULES[schedule.name] = schedule


def chosen(s) -> Schedule:
    """The schedule of settings `s`: explicit per-layer or --first/--last ratios make any schedule a
    ratio schedule (--first/--last interpolate with the named strategy)."""
    if s.ratios is not None or s.first is not None:
        return RatioSchedule(s.schedule)
    return SCHEDULES[s.schedule]


def plan(cfg, model, calib, s, method) -> tuple[list, list]:
    """(ratios, plans) of settings `s`: the chosen schedule's plan."""
    return chosen(s).plan(cfg, model, calib, s, method)


__all__ = ["SCHEDULES", "RatioSchedule", "Schedule", "chosen", "layer_counts", "plan", "register"]


def whole_model_plan(schedule: str, method_name: str) -> bool:
    """Whether the counts come from a whole-model plan (the schedule's own, or the method's, such
    as FLAP's) rather than the per-layer schedule and Budget that --align shapes."""
    method = METHODS.get(method_name)
    return (getattr(SCHEDULES.get(schedule), "whole_model_plan", False)
            or (method is not None and type(method).plan is not Method.plan))


def default_align(schedule: str, method_name: str) -> int:
    """--align when the user gives none: align.CLI_DEFAULT, or 1 where a whole-model plan sets
    the counts."""
    return 1 if whole_model_plan(schedule, method_name) else align.CLI_DEFAULT
