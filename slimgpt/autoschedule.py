"""The searched schedule (`--schedule auto`): the paper's log schedule, FLAP's per-layer counts, or
a blend of the two, whichever the run's own pruning leaves with the lowest calibration loss.
Beyond the paper.

Why: the paper sets every layer's ratio by a formula, the log-increasing Incremental Pruning Ratio
(spec §5.2, Eq. 6), and names better non-uniform allocations as future work. On SmolLM2-135M
(docs/study.md) neither hand-made allocation is best everywhere: FLAP's global threshold over
standardised fluctuation scores (methods/flap.py) beats the log schedule at small ratios and
collapses at large ones, where the log schedule wins. So `auto` does not model the allocation; it
measures it, with the pipeline's own pruning, among a few plans between the two:

1. The endpoints, both at the run's parameter budget: the log IPR counts (`--schedule log`) and
   FLAP's counts (`--schedule flap`).
2. Candidates c(t) = (1 − t)·c_log + t·c_flap for t in `blends` (default 0, ½, 1), per layer:
   query heads rounded (whole KV groups under --gqa group), FFN ratios r_i(t) = (1 − t)·r_log,i +
   t·r_flap,i handed to the Budget, so every candidate removes exactly the target (t = 0 is
   `--schedule log`, t = 1 is `--schedule flap`).
3. The pipeline (`pipeline.choose_plan`) prunes each candidate with the run's method on a copy of
   the dense model and the run's calibration windows, scores the copy by its mean next-token loss
   on those windows, and keeps the lowest (ties: the smaller t, the paper's side). The choice and
   every candidate's loss are in the summary and the manifest (`schedule_search`).

The score is in-sample (the windows OBS compensated on), the same for every candidate; the study
shows how well it ranks the candidates on WikiText-2. Cost: FLAP's plan pass (one forward), then
len(blends) prunes and loss passes on copies, then the run's own prune of the chosen plan:
about (len(blends) + 1)× a plain prune, and one extra copy of the model in memory (streaming
refuses it). Both ratios hold at any size, since every candidate is one more plain prune: for
LLaMA-7B in float32 that is 4× the plain prune's time and a second 27 GB copy of the weights.
Deterministic: it depends on the model and the calibration windows (the seed) only.
"""
from __future__ import annotations

from slimgpt.methods import METHODS, Method
from slimgpt.methods.flap import FLAPSchedule
from slimgpt.schedule import Candidate, LayerPlan, PruneError, Schedule  # noqa: F401 (LayerPlan: for callers)

BLENDS = (0.0, 0.5, 1.0)


def blend(cfg, settings, log_plan: tuple, flap_plan: tuple, t: float) -> Candidate:
    """c(t) = (1 − t)·c_log + t·c_flap per layer (step 2 of the module doc); `*_plan` = (ratios, plans)."""
    (r0, p0), (r1, p1) = log_plan, flap_plan
    ratios, plans = [], []
    for i, (a, b) in enumerate(zip(p0, p1)):
        r = (1 - t) * r0[i] + t * r1[i]
        rep = cfg.layer_heads[i] // max(cfg.layer_kv_heads[i], 1) if settings.gqa == "group" else 1
        units = round(((1 - t) * a.heads + t * b.heads) / rep)      # query heads, or whole KV groups
        channels = None if settings.hit_target else round(cfg.layer_intermediate[i] * r)
        ratios.append(r)
        plans.append(LayerPlan(units * rep, units if settings.gqa == "group" else 0, channels))
    return Candidate(f"t={t:g}", ratios, plans, {"t": t})


class AutoSchedule(Schedule):
    """`--schedule auto`: candidates between the log schedule and FLAP's counts (module doc);
    `--auto-blends` (method_options["auto"]["blends"]) sets the t values. `log` is the registry's
    log schedule (schedules.py builds this entry with it)."""
    name = "auto"
    needs_whole_model = True
    whole_model_plan = True

    def __init__(self, log: Schedule):
        self.log = log

    def validate(self, settings) -> None:
        if type(METHODS[settings.method]).plan is not Method.plan:
            raise PruneError(f"--schedule auto searches the allocation for a layer-wise method; --method "
                             f"{settings.method} has its own plan")
        if settings.ratio is None:
            raise PruneError("--schedule auto needs a target --ratio")
        blends = settings.method_options.get("auto", {}).get("blends", BLENDS)
        if not blends or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1
                             for t in blends):
            raise PruneError(f"--auto-blends takes values in [0, 1], got {list(blends)}")

    def candidates(self, cfg, model, calib, settings, method) -> list[Candidate]:
        if model is None:
            raise PruneError("--schedule auto needs the whole model in memory (it prunes copies of it)")
        blends = settings.method_options.get("auto", {}).get("blends", BLENDS)
        log = self.log.plan(cfg, model, calib, settings, method)
        flap = FLAPSchedule().plan(cfg, model, calib, settings, method)
        return [blend(cfg, settings, log, flap, float(t)) for t in sorted(set(blends))]

    def plan(self, cfg, model, calib, settings, method):
        raise PruneError("--schedule auto is searched by pipeline.choose_plan (its candidates), not planned")
