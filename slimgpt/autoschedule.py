"""The data-driven schedule (`--schedule auto`): per-layer head and channel counts from the
calibration data, at the same parameter budget as the hand-set schedules. Beyond the paper.

SlimGPT (paper §3.3) gives every layer a ratio from a formula, the log-increasing Incremental
Pruning Ratio, and names better non-uniform strategies as future work. This module chooses the
counts of every layer and module from measured costs instead, and leaves the pruning itself
(SlimGPT's layer-wise OBS selection and compensation) unchanged:

1. One dense pass over the calibration windows (the model is not changed): for every layer,
   the Hessians H = 2XᵀX/n of o_proj's and down_proj's inputs (what SlimGPT's OBS sees), and the
   second moments G = E[g gᵀ] of the loss gradient g at the residual stream where each
   projection writes (one backward pass of the next-token loss, activation gradients only).
2. Error curves on the dense model: for each layer and module, greedy OBS removal as SlimGPT
   does it (heads one at a time by block error; channels in blocks of `channel_block` by the
   plain-diagonal error, as the published Dynamic Group Size does at these widths), recording
   after every step the parameters removed and the *loss-weighted* OBS error
       ΔL ≈ ½ tr(G · ΔW Σ ΔWᵀ) = ½ tr(G · W_P (H⁻¹_PP)⁻¹ W_Pᵀ) per removed set P,
   a Kronecker-factored (K-FAC) second-order estimate of the loss increase. The OBS update is
   the same for every output metric G (it is row-wise), so this only re-weights the errors of
   the curve: the weighting G makes errors of different layers and modules comparable (a raw
   OBS error is in the units of the residual stream, which grows with depth). The steps of
   the greedy OBS are H-orthogonal, so the weighted errors add up along the curve.
3. One global threshold: over the lower convex hulls of all curves, the cheapest loss per
   removed parameter goes first until the budget (ratio × prunable parameters) is met;
   heads are atomic, channels are split to the last one. The attention/FFN split may differ per
   layer; every layer keeps at least one head (one KV group under --gqa group, one head per
   group under balanced) and `min_keep_channels` of its channels.

The plan fixes the heads of every layer; the FFN channels are handed to the pipeline's Budget
as per-layer ratios r_i = channels_i / m_i (the pipeline re-apportions channels in proportion
to m_i · r_i), so the pipeline reproduces these counts and absorbs what the plan could not
foresee (heads' rounding, a KV head that leaves with its last query head under --gqa query):
the pruned total hits the target within one channel, like every other schedule. The `ratios`
returned (recorded as summary["ratios"] and in the manifest) are therefore the FFN channel
fractions; the head counts are in the plan and in the per-layer log (heads_kept, kv_kept).

Cost: one forward with a backward (activation gradients only) of the dense model over at most
`fisher_tokens` calibration tokens, the Hessians of the same pass, and the OBS curves (float64
on the CPU; the channel curve of a 1536-wide FFN is ~50 block downdates): about one plain
prune on SmolLM2-135M (measured in docs/study.md). Deterministic: it depends on the model and
the calibration windows only (which `seed` draws), no random numbers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from slimgpt import gqa, torch_ops
from slimgpt.ops import resolve_backend
from slimgpt.reference.damping import retry_with_damping
from slimgpt.schedule import LayerPlan, PruneError, Schedule, param_costs, prunable_params
from slimgpt.stats import ActivationStats


WEIGHTINGS = ("fisher", "output", "relative", "none")


@dataclass
class AutoOptions:
    channel_block: int = 32             # channels removed per step of the FFN error curve
    fisher_tokens: int = 4096           # calibration tokens of the gradient pass (weighting "fisher")
    weighting: str = "fisher"           # fisher | output (error / E||W x||²) | relative (error / E||h||²) | none
    min_keep_channels: float = 0.05     # every FFN keeps at least this fraction (and one channel)
    max_curve: float = 0.95             # the FFN curve stops at this fraction of the channels
    batch_tokens: int = 512             # tokens per batch of the dense pass (at least one window)


@dataclass
class Curve:
    """One module of one layer: cumulative (parameters removed, estimated loss) after each step,
    and the structures removed at each step (heads or channels)."""
    layer: int
    kind: str                           # "heads" | "channels"
    params: list = field(default_factory=lambda: [0])
    loss: list = field(default_factory=lambda: [0.0])
    units: list = field(default_factory=lambda: [0])     # cumulative heads / channels removed
    kv: list = field(default_factory=lambda: [0])        # cumulative KV heads freed (heads curves)

    def add(self, params: float, loss: float, units: int, kv: int = 0):
        self.params.append(self.params[-1] + params)
        self.loss.append(self.loss[-1] + max(float(loss), 0.0))
        self.units.append(self.units[-1] + units)
        self.kv.append(self.kv[-1] + kv)


def auto_plan(model, calib: torch.Tensor, settings, options: AutoOptions | None = None,
              info: dict | None = None):
    """(ratios, plan) for `model` at settings.ratio from the calibration windows (module doc).

    `info`, when given, receives the curves, the chosen counts and the timings."""
    opt = options or AutoOptions(**dict(settings.method_options.get("auto", {})))
    if opt.weighting not in WEIGHTINGS:
        raise PruneError(f"auto schedule: weighting must be one of {WEIGHTINGS}, got {opt.weighting!r}")
    if opt.channel_block < 1:
        raise PruneError("auto schedule: channel_block must be >= 1")
    if settings.ratio is None:
        raise PruneError("--schedule auto needs a target --ratio")
    if model is None:
        raise PruneError("--schedule auto needs the whole model in memory (its dense pass reads every layer)")
    cfg = model.config
    L = cfg.num_hidden_layers
    t0 = time.perf_counter()
    if not settings.ratio:
        plan = [LayerPlan(0, 0, 0 if not settings.hit_target else None) for _ in range(L)]
        return [0.0] * L, plan
    stats = _dense_pass(model, calib, settings, opt)
    t_pass = time.perf_counter() - t0
    curves = []
    for i, layer in enumerate(model.model.layers):
        st = stats[i]
        curves.append(_head_curve(layer, i, st, settings, opt, cfg))
        curves.append(_channel_curve(layer, i, st, settings, opt, cfg))
    t_curves = time.perf_counter() - t0 - t_pass
    budget = settings.ratio * sum(prunable_params(cfg, i) for i in range(L))
    take = allocate(curves, budget, param_costs(cfg)["channel"])
    heads = [0] * L
    channels = [0] * L
    kv = [0] * L
    for c, k in zip(curves, take):
        if c.kind == "heads":
            heads[c.layer], kv[c.layer] = c.units[k], c.kv[k]
        else:
            channels[c.layer] = k
    plan, ratios = [], []
    for i in range(L):
        m = cfg.layer_intermediate[i]
        known_kv = kv[i] if settings.gqa == "group" else 0
        plan.append(LayerPlan(heads[i], known_kv, None if settings.hit_target else channels[i]))
        ratios.append(channels[i] / m if m else 0.0)
    if info is not None:
        info.update(curves=curves, heads=heads, channels=channels, kv=kv,
                    seconds_pass=t_pass, seconds_curves=t_curves, seconds=time.perf_counter() - t0,
                    options=opt)
    return ratios, plan


class AutoSchedule(Schedule):
    """`--schedule auto`: the plan of auto_plan (the module docstring)."""
    name = "auto"
    needs_backward = True
    whole_model_plan = True

    def plan(self, cfg, model, calib, settings, method):
        return auto_plan(model, calib, settings)


# ----------------------------------------------------------------------------------------------
# 1. The dense pass: Hessians of the projections' inputs and gradient second moments

class _LayerStats:
    def __init__(self, n_o, n_d, D, dev, backend):
        self.o = ActivationStats(n_o, hessian=True, backend=backend, device=dev)
        self.d = ActivationStats(n_d, hessian=True, backend=backend, device=dev)
        self.G_o = torch.zeros(D, D, dtype=torch.float64, device=dev)    # E[g gᵀ] where o_proj writes
        self.G_d = torch.zeros(D, D, dtype=torch.float64, device=dev)    # ... where down_proj writes
        self.n_g = 0
        self.energy_o = 0.0         # E||h||² of the residual stream where o_proj / down_proj write
        self.energy_d = 0.0
        self.n_e = 0


def _dense_pass(model, calib, settings, opt: AutoOptions) -> list[_LayerStats]:
    cfg = model.config
    dev = next(model.parameters()).device
    backend = resolve_backend(settings.backend)
    layers = model.model.layers
    stats = [_LayerStats(l.self_attn.o_proj.in_features, l.mlp.down_proj.in_features, cfg.hidden_size, dev, backend)
             for l in layers]
    cos, sin = model.rope(calib.shape[1], dev, torch.float32)
    T = calib.shape[1]
    n_grad = 0 if opt.weighting != "fisher" else min(calib.shape[0], max(1, math.ceil(opt.fisher_tokens / T)))
    bw = max(1, opt.batch_tokens // T)
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for b in range(0, calib.shape[0], bw):
            ids = calib[b:b + bw].to(dev)
            grad = b < n_grad
            with torch.enable_grad() if grad else torch.no_grad():
                x0 = model.embed(ids).float()
                if grad:
                    x0.requires_grad_(True)
                x = x0
                for i, layer in enumerate(layers):
                    st, t = stats[i], layer.taps(x, cos, sin)
                    st.o.add(t.a.detach())
                    st.d.add(t.f.detach())
                    st.energy_o += float((t.h.detach().double() ** 2).sum())
                    st.energy_d += float((t.y.detach().double() ** 2).sum())
                    st.n_e += t.h.shape[0] * t.h.shape[1]
                    if grad:
                        # h = x + o_proj(a) and y = h + down_proj(f): the loss gradient at h (at y)
                        # is the one at o_proj's (down_proj's) output
                        t.h.register_hook(_accumulate(st, "G_o"))
                        t.y.register_hook(_accumulate(st, "G_d"))
                    x = t.y
                if grad:
                    logits = model.head(x)
                    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                           ids[:, 1:].reshape(-1), reduction="sum")
                    torch.autograd.backward(loss, inputs=[x0])
                    for st in stats:
                        st.n_g += ids.shape[0] * ids.shape[1]
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    for st in stats:
        if st.n_g:
            st.G_o /= st.n_g
            st.G_d /= st.n_g
    return stats


def _accumulate(st: _LayerStats, name: str):
    def hook(g):
        g = g.detach().reshape(-1, g.shape[-1]).double()
        getattr(st, name).add_(g.T @ g)
    return hook


def _metric(st: _LayerStats, kind: str, opt: AutoOptions, W: torch.Tensor, H: torch.Tensor):
    """The output metric of the errors: G (fisher), I / E||W x||² (output: the error relative to
    the module's own output energy, scale-free like FLAP's standardised scores), I / E||h||²
    (relative: to the residual stream's energy) or I (none); a (D, D) matrix or a scalar."""
    if opt.weighting == "fisher":
        return st.G_o if kind == "heads" else st.G_d
    if opt.weighting == "output":
        W = W.double()
        return 2.0 / max(float(((W @ H.to(W)) * W).sum()), 1e-30)      # E||W x||² = ½ tr(W H Wᵀ)
    if opt.weighting == "relative":
        e = (st.energy_o if kind == "heads" else st.energy_d) / max(st.n_e, 1)
        return 1.0 / max(e, 1e-30)
    return 1.0


def _weighted(metric, E: torch.Tensor) -> float:
    """½ tr(M · E Eᵀ) = ½ tr(M · W_P (H⁻¹_PP)⁻¹ W_Pᵀ) for the scaled errors E of a removed set P
    (torch_ops.remove_set) and a metric M (matrix or scalar)."""
    if isinstance(metric, torch.Tensor):
        return 0.5 * float(((metric @ E) * E).sum())
    return 0.5 * metric * float((E * E).sum())


def _inverse(W: torch.Tensor, H: torch.Tensor, percdamp: float):
    """(W, H⁻¹) after the published preparation (dead inputs, damping; spec §2.4) at the damping
    every path uses (reference.damping.retry_with_damping: decided in float64, DampingWarning
    when it is not the requested one)."""
    W = W.clone()
    (_, G), _ = retry_with_damping(lambda p: torch_ops.prepare_inverse(W, H, p), H.detach().double().cpu().numpy(),
                                   percdamp)
    return W, G


# ----------------------------------------------------------------------------------------------
# 2. The error curves

def _head_curve(layer, i: int, st: _LayerStats, settings, opt: AutoOptions, cfg) -> Curve:
    """Greedy OBS removal of query heads (or whole KV groups, or one head per group), keeping
    the granularity of settings.gqa and at least one head per layer (per group: balanced)."""
    attn = layer.self_attn
    c = Curve(i, "heads")
    nh, d = attn.n_heads, attn.head_dim
    if nh == 0:
        return c
    cost = param_costs(cfg)
    kv_map = attn.kv_map.tolist()
    n_kv = attn.n_kv
    mode = settings.gqa
    n_rep = gqa.equal_groups(nh, n_kv, mode, i)
    if mode == "group":
        gqa.contiguous_groups(kv_map, n_rep, i)
    metric = _metric(st, "heads", opt, attn.o_proj.weight.detach(), st.o.H)
    W, G = _inverse(attn.o_proj.weight.detach().double(), st.o.H, settings.percdamp)
    alive = list(range(nh))

    def cols(heads):
        return torch.tensor([h * d + k for h in heads for k in range(d)], dtype=torch.long)

    def block_error(heads):
        """tr(W_P (H⁻¹_PP)⁻¹ W_Pᵀ): the exact OBS error of removing the heads together."""
        return float((torch_ops.scaled_errors(W, G, cols(heads)) ** 2).sum())

    def remove(heads):
        """Remove the heads (W and G updated in place, Eqs. 3-4 for the set); their weighted loss."""
        return _weighted(metric, torch_ops.remove_set(W, G, cols(heads)))

    def freed(gone):
        return sum(1 for k in range(n_kv) if all(h in gone for h in range(nh) if kv_map[h] == k)
                   and any(kv_map[h] == k for h in range(nh)))

    gone: set = set()
    if mode == "group":
        groups = [[h for h in range(nh) if kv_map[h] == k] for k in range(n_kv)]
        left = list(range(n_kv))
        while len(left) > 1:
            best = min(left, key=lambda g: (block_error(groups[g]), g))
            loss = remove(groups[best])
            left.remove(best)
            c.add(len(groups[best]) * cost["q_head"] + cost["kv_head"], loss, len(groups[best]), 1)
        return c
    if mode == "balanced":
        per_group = [[h for h in range(nh) if kv_map[h] == k] for k in range(n_kv)]
        while min(len(g) for g in per_group) > 1:
            loss = 0.0
            for g in per_group:
                best = min(g, key=lambda h: (block_error([h]), h))
                loss += remove([best])
                g.remove(best)
            c.add(n_kv * cost["q_head"], loss, n_kv, 0)
        return c
    while len(alive) > 1:                                # query: one head at a time
        best = min(alive, key=lambda h: (block_error([h]), h))
        loss = remove([best])
        alive.remove(best)
        before = freed(gone)
        gone.add(best)
        new_kv = freed(gone) - before
        c.add(cost["q_head"] + new_kv * cost["kv_head"], loss, 1, new_kv)
    return c


def _channel_curve(layer, i: int, st: _LayerStats, settings, opt: AutoOptions, cfg) -> Curve:
    """Greedy OBS removal of FFN channels in blocks of opt.channel_block by the plain-diagonal
    error ||W_j||² / [H⁻¹]_jj (the published DGS criterion), shrinking H⁻¹ as channels go."""
    mlp = layer.mlp
    m = mlp.down_proj.in_features
    c = Curve(i, "channels")
    keep_min = max(1, math.ceil(opt.min_keep_channels * m))
    stop = min(m - keep_min, int(opt.max_curve * m))
    if stop <= 0:
        return c
    cost = param_costs(cfg)["channel"]
    metric = _metric(st, "channels", opt, mlp.down_proj.weight.detach(), st.d.H)
    W, G = _inverse(mlp.down_proj.weight.detach().double(), st.d.H, settings.percdamp)
    removed, pruned = 0, torch.zeros(m, dtype=torch.bool, device=W.device)
    while removed < stop:
        b = min(opt.channel_block, stop - removed)
        eps = (W ** 2).sum(0) / torch.diagonal(G)
        eps[pruned] = math.inf
        P = torch.sort(torch.argsort(eps, stable=True)[:b]).values
        loss = _weighted(metric, torch_ops.remove_set(W, G, P))
        pruned[P] = True
        removed += b
        c.add(b * cost, loss, b)
    return c


# ----------------------------------------------------------------------------------------------
# 3. The allocation: one threshold over the convex hulls of all curves

def _hull(c: Curve) -> list[int]:
    """Indices of the lower convex hull of the curve's points (params ascending)."""
    pts = list(range(len(c.params)))
    hull: list[int] = []
    for k in pts:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> k
            cross = (c.params[b] - c.params[a]) * (c.loss[k] - c.loss[a]) - \
                    (c.loss[b] - c.loss[a]) * (c.params[k] - c.params[a])
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def allocate(curves: list[Curve], budget: float, channel_cost: float) -> list[int]:
    """How far along each curve to go (an index into its points; for channel curves the number
    of channels) so that the removed parameters meet `budget` at the least total estimated loss:
    hull segments in ascending loss per parameter; a segment that does not fit is cut to the
    point that fits (channels: to the channel) and its curve closed. Deterministic (ties: curve
    order)."""
    segs = []
    for ci, c in enumerate(curves):
        h = _hull(c)
        for s, (a, b) in enumerate(zip(h, h[1:])):
            dp = c.params[b] - c.params[a]
            slope = (c.loss[b] - c.loss[a]) / dp if dp > 0 else math.inf
            segs.append((slope, ci, s, a, b))
    segs.sort(key=lambda t: (t[0], t[1], t[2]))
    pos = [0] * len(curves)                  # point index reached (heads) / channels (channel curves)
    closed = [False] * len(curves)
    left = float(budget)
    for slope, ci, s, a, b in segs:
        c = curves[ci]
        if closed[ci] or left <= 0:
            continue
        start = c.units[a] if c.kind == "channels" else a
        if (pos[ci] if c.kind == "channels" else pos[ci]) != start:
            closed[ci] = True                # an earlier segment of this curve was cut
            continue
        dp = c.params[b] - c.params[a]
        if dp <= left:
            pos[ci] = c.units[b] if c.kind == "channels" else b
            left -= dp
            continue
        closed[ci] = True
        if c.kind == "channels":             # take channels up to the budget
            n = int(left // channel_cost)
            pos[ci] = c.units[a] + min(n, c.units[b] - c.units[a])
            left -= (pos[ci] - c.units[a]) * channel_cost
        else:                                # heads: the furthest intermediate point that fits
            k = a
            while k + 1 <= b and c.params[k + 1] - c.params[a] <= left:
                k += 1
            left -= c.params[k] - c.params[a]
            pos[ci] = k
    return pos


def describe(info: dict, cfg) -> str:
    """A short text summary of an auto plan (for logs and the study)."""
    L = cfg.num_hidden_layers
    return ("auto schedule: heads kept " + " ".join(str(cfg.layer_heads[i] - info["heads"][i]) for i in range(L))
            + "; ffn kept " + " ".join(str(cfg.layer_intermediate[i] - info["channels"][i]) for i in range(L))
            + f"; {info['seconds']:.1f} s (dense pass {info['seconds_pass']:.1f} s, curves "
              f"{info['seconds_curves']:.1f} s)")


__all__ = ["AutoOptions", "AutoSchedule", "Curve", "allocate", "auto_plan", "describe"]
