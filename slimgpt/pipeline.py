"""The layer-wise SlimGPT pipeline (spec §6): calibrate, prune each layer in order, shrink.

For each decoder layer, with the calibration activations X (N × T × D) at its input:

1. attention pass: A = heads(norm(X)), the input of o_proj; its statistics (H_o = 2AᵀA/n,
   mean, variance); the method selects and compensates heads; q/k/v/o shrink from the indices;
2. FFN pass: h = X + o_proj(A[kept heads]) (the pruned attention), written over X; the
   statistics of F = act(norm(h)), the input of down_proj; the method selects and compensates
   channels; gate/up/down shrink;
3. propagate: X ← h + down_proj(F[kept channels]). down_proj's inputs do not change when
   down_proj is pruned, so F is reused, not recomputed.

A and F are cached between the passes when they fit in `cache_mb` (then each layer's attention
and FFN run once); otherwise they are recomputed from X, so memory stays at one copy of the
model plus one layer boundary (N × T × D float32) plus per-batch temporaries.

Where things live: per-layer counts and the parameter budget in schedule.py, GQA granularity
in gqa.py, the selection and compensation in methods/, the statistics in stats.py, the removal
of rows and columns in shrink.py. This file is the data path.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from slimgpt import gqa, methods, schedule
from slimgpt.evaluate import NonFiniteError
from slimgpt.methods import MethodOptions
from slimgpt.model import LlamaForCausalLM
from slimgpt.ops import resolve_backend
from slimgpt.schedule import Budget, LayerPlan, PruneError
from slimgpt.shrink import add_bias, apply_channels, apply_heads, sync_config, uniform_biases
from slimgpt.stats import ActivationStats
from slimgpt.textdata import check_calibration

GQA_MODES = gqa.GQA_MODES
SCHEDULES = schedule.SCHEDULES + ("auto",)      # "auto": chosen from the calibration data (autoschedule.py)


@dataclass
class PruneSettings:
    ratio: float | None = 0.2          # global target: fraction of prunable decoder parameters
    schedule: str = "log"               # IPR strategy (spec §5.2)
    first: float | None = None          # explicit first/last ratios instead of a target
    last: float | None = None
    ratios: list | None = None          # explicit per-layer ratios (instead of a schedule)
    n_samples: int = 64
    seqlen: int = 256
    seed: int = 0
    gqa: str = "query"                  # query | group | balanced (gqa.py)
    method: str = "slimgpt"
    percdamp: float = 0.01
    backend: str | None = None          # reference | cpu | cuda | None (fastest available)
    gcd: bool = True
    compensate: bool = True
    hit_target: bool = True
    batch_size: int = 8
    cache_mb: float = 2048.0
    shrink: bool = True                 # False: keep full size, pruned columns zero (masked model)
    bias_compensation: bool | None = None   # mean-shift bias b += (W − W_new)·mean(x); None: the method's default
    device: str = "cpu"                 # where the model, the activations and the statistics live
    method_options: dict = field(default_factory=dict)

    def validate(self):
        if self.ratio is not None and not (0.0 <= self.ratio < 1.0):
            raise PruneError(f"--ratio must be in [0, 1), got {self.ratio}")
        for name in ("first", "last"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 1.0):
                raise PruneError(f"--{name} must be in [0, 1), got {v}")
        if self.ratio is None and self.first is None and self.ratios is None:
            raise PruneError("give a target --ratio, explicit --first/--last ratios or per-layer ratios")
        if self.ratios is not None and not all(0.0 <= r < 1.0 for r in self.ratios):
            raise PruneError(f"per-layer ratios must lie in [0, 1), got {self.ratios}")
        if self.schedule not in SCHEDULES:
            raise PruneError(f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.gqa not in GQA_MODES:
            raise PruneError(f"--gqa must be one of {GQA_MODES}, got {self.gqa!r}")
        if self.method not in methods.METHODS:
            raise PruneError(f"unknown --method {self.method!r}; registered: {sorted(methods.METHODS)}")
        if self.percdamp < 0:
            raise PruneError("--percdamp must be >= 0")
        if self.n_samples < 1 or self.seqlen < 2 or self.batch_size < 1:
            raise PruneError("--nsamples, --seqlen and batch size must be positive (seqlen >= 2)")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise PruneError(f"--device must be cpu or cuda[:N], got {self.device!r}") from None
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise PruneError(f"--device {self.device}: no such CUDA device is visible")
        if dev.type not in ("cpu", "cuda"):
            raise PruneError(f"--device must be cpu or cuda[:N], got {self.device!r}")


@dataclass
class PruneResult:
    model: LlamaForCausalLM
    layers: list            # one dict per layer (the per-layer log; pruned indices included)
    summary: dict


@dataclass
class _Run:
    """What every layer step needs: settings, method, options, RoPE tables, the budget."""
    settings: PruneSettings
    method: methods.Method
    options: MethodOptions
    cos: torch.Tensor
    sin: torch.Tensor
    budget: Budget


# ----------------------------------------------------------------------------------------------
# The loop

@torch.no_grad()
def prune_model(model: LlamaForCausalLM, calib: torch.Tensor, settings: PruneSettings,
                log=None, progress: bool = True) -> PruneResult:
    """Prune `model` in place with calibration token windows `calib` (N × T int64)."""
    s = settings
    s.validate()
    check_calibration(calib, model, allow_long_context=True)   # the caller decides about the context
    log = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    method = methods.METHODS[s.method]
    dev = torch.device(s.device)
    model.to(dev)
    cfg = model.config
    L = cfg.num_hidden_layers
    if s.ratios is not None and len(s.ratios) != L:
        raise PruneError(f"{len(s.ratios)} per-layer ratios for a model of {L} layers")
    if s.schedule == "auto" and s.ratios is None and s.first is None:
        from slimgpt.autoschedule import auto_plan
        ratios, plan = auto_plan(model, calib, s)
    else:
        ratios = [float(r) for r in s.ratios] if s.ratios is not None else \
            schedule.layer_ratios(L, s.ratio, s.schedule, s.first, s.last)
        plan = method.plan(model, calib, s) or [_scheduled(cfg, i, r, s) for i, r in enumerate(ratios)]
    prunable = sum(schedule.prunable_params(cfg, i) for i in range(L))
    explicit = s.ratios is not None or s.first is not None
    target = round(sum(r * schedule.prunable_params(cfg, i) for i, r in enumerate(ratios))) if explicit \
        else round(s.ratio * prunable)
    options = MethodOptions(percdamp=s.percdamp, backend=resolve_backend(s.backend, next(model.parameters())), gcd=s.gcd,
                            compensate=s.compensate, extra=dict(s.method_options))
    run = _Run(s, method, options, *model.rope(calib.shape[1], dev, torch.float32), Budget(cfg, ratios, plan, target))
    params_before = model.num_parameters()

    X = torch.cat([model.embed(b.to(dev)).float() for b in calib.split(s.batch_size)])   # one layer boundary
    if not torch.isfinite(X).all():
        raise NonFiniteError("the token embedding of the calibration windows is not finite")
    layers = range(L)
    if progress:
        from tqdm import tqdm
        layers = tqdm(layers, desc=f"prune {s.method}", unit="layer", file=sys.stderr)
    records = []
    with _no_tf32():
        for i in layers:
            records.append(prune_layer(model.model.layers[i], i, X, ratios[i], plan[i], run))
            log(_layer_line(records[-1]))
    if s.shrink:
        sync_config(model)
    else:
        cfg.o_proj_bias, cfg.mlp_bias = uniform_biases(model)
    pruned = run.budget.pruned
    summary = {
        "method": s.method, "settings": asdict(s), "ratios": ratios,
        "params_before": params_before,
        "params_after": model.num_parameters() if s.shrink else params_before - pruned,
        "prunable_before": prunable, "pruned_params": pruned, "target_pruned_params": target,
        "pruned_fraction_of_prunable": pruned / prunable if prunable else 0.0,
        "pruned_fraction_of_total": pruned / params_before,
        "heads_kept": [r["heads_kept"] for r in records], "kv_kept": [r["kv_kept"] for r in records],
        "channels_kept": [r["channels_kept"] for r in records],
        "seconds": time.perf_counter() - t_start,
        "calibration": {"n_samples": calib.shape[0], "seqlen": calib.shape[1], "seed": s.seed},
    }
    return PruneResult(model, records, summary)


def _scheduled(cfg, i: int, r: float, s: PruneSettings) -> LayerPlan:
    """Layer i's counts from its ratio: heads rounded as published, channels by the budget
    (or round(m · r) without --hit-target)."""
    heads, kv = gqa.planned_heads(cfg.layer_heads[i], cfg.layer_kv_heads[i], r, s.gqa, i)
    return LayerPlan(heads, kv, None if s.hit_target else round(cfg.layer_intermediate[i] * r))


# ----------------------------------------------------------------------------------------------
# One layer

def prune_layer(layer, i: int, X: torch.Tensor, ratio: float, plan: LayerPlan, run: _Run) -> dict:
    """Prune decoder layer i in place (attention, then FFN) and advance X to its output."""
    attn, mlp, s = layer.self_attn, layer.mlp, run.settings
    rec = {"layer": i, "ratio": ratio, "heads_before": attn.n_heads, "kv_before": attn.n_kv,
           "channels_before": mlp.down_proj.in_features}
    t0 = time.perf_counter()
    cache = X.shape[0] * X.shape[1] * (attn.o_proj.in_features + mlp.down_proj.in_features) * 4 <= s.cache_mb * 2 ** 20

    # 1. attention: statistics of o_proj's input, then heads
    stats, A = _collect(f"layer {i} o_proj", attn.o_proj.in_features, X,
                        lambda x, b: attn.heads(layer.input_layernorm(x), run.cos, run.sin), run, cache)
    t_fwd = time.perf_counter() - t0
    blocks = gqa.head_blocks(attn.n_heads, attn.kv_map.tolist(), attn.head_dim, plan.heads, s.gqa, i)
    heads, kv, t_sel = _prune_heads(layer, stats, blocks, run, rec)
    keep_cols = _kept(rec["heads_before"] * attn.head_dim, heads, attn.head_dim, X.device) if s.shrink else None
    run.budget.remove(heads=len(heads), kv_heads=len(kv))

    # 2. FFN: X ← h = X + o_proj(pruned attention); statistics of down_proj's input, then channels
    t1 = time.perf_counter()

    def ffn_input(x, b):
        a = _cached(A, b, x.shape[0], keep_cols) if cache else attn.heads(layer.input_layernorm(x), run.cos, run.sin)
        h = x + attn.o_proj(a)
        x.copy_(h)
        return mlp.act(layer.post_attention_layernorm(h))

    stats, F = _collect(f"layer {i} down_proj", mlp.down_proj.in_features, X, ffn_input, run, cache)
    del A
    t_fwd += time.perf_counter() - t1
    width = mlp.down_proj.in_features
    n_ch = max(0, min(width, plan.channels if plan.channels is not None else run.budget.channels(i, width)))
    channels, dt = _prune_channels(layer, stats, gqa.Blocks(1, n_ch), run, rec)
    t_sel += dt
    run.budget.remove(channels=len(channels))

    # 3. propagate: X ← h + down_proj(F[kept channels]) (down_proj's inputs did not change)
    t2 = time.perf_counter()
    keep_ch = _kept(rec["channels_before"], channels, 1, X.device) if s.shrink else None
    for b, x in _batches(X, s.batch_size):
        f = _cached(F, b, x.shape[0], keep_ch) if cache else mlp.act(layer.post_attention_layernorm(x))
        x += mlp.down_proj(f)
    if not torch.isfinite(X).all():
        raise NonFiniteError(f"layer {i}: non-finite activations after pruning")
    t_fwd += time.perf_counter() - t2
    rec.update(seconds_forward=t_fwd, seconds_select=t_sel, seconds=time.perf_counter() - t0, cached=cache,
               channels_planned=round(rec["channels_before"] * ratio))
    return rec


def _prune_heads(layer, stats, blocks, run: _Run, rec: dict):
    """Select + compensate heads, apply the bias and the removal; fill the record."""
    t = time.perf_counter()
    attn = layer.self_attn
    sel = run.method.select("heads", attn.o_proj.weight.data, stats, blocks, layer=layer, options=run.options)
    heads = blocks.query_heads(sel.pruned)
    _compensate_bias(attn.o_proj, attn.o_proj.weight.data, sel, stats, run)
    kv = apply_heads(layer, heads, sel.W, physical=run.settings.shrink)
    rec.update(heads_pruned=heads, kv_pruned=kv, heads_kept=rec["heads_before"] - len(heads),
               kv_kept=rec["kv_before"] - len(kv), attn_error=sel.info.get("error"),
               attn_percdamp=sel.info.get("percdamp"),
               attn_info={k: v for k, v in sel.info.items() if k not in ("error", "percdamp")})
    return heads, kv, time.perf_counter() - t


def _prune_channels(layer, stats, blocks, run: _Run, rec: dict):
    """Select + compensate FFN channels, apply the bias and the removal; fill the record."""
    t = time.perf_counter()
    down = layer.mlp.down_proj
    sel = run.method.select("channels", down.weight.data, stats, blocks, layer=layer, options=run.options)
    _compensate_bias(down, down.weight.data, sel, stats, run)
    apply_channels(layer, sel.pruned, sel.W, physical=run.settings.shrink)
    rec.update(channels_pruned=list(sel.pruned), channels_kept=rec["channels_before"] - len(sel.pruned),
               ffn_error=sel.info.get("error"), ffn_percdamp=sel.info.get("percdamp"),
               ffn_info={k: v for k, v in sel.info.items() if k not in ("error", "percdamp")})
    return list(sel.pruned), time.perf_counter() - t


def _compensate_bias(linear, W, sel, stats, run: _Run) -> None:
    """Mean-shift compensation b += (W − W_new) · mean(x), for methods that ask for it (FLAP) or
    when the settings do: the projection keeps its mean output over the calibration tokens. Every
    layer gets a bias (zero when nothing was pruned), so one config flag describes the model."""
    wanted = run.settings.bias_compensation
    if not ((run.method.bias_compensation if wanted is None else wanted) and run.options.compensate):
        return
    delta = (W.double() - sel.W.double()) @ stats.mean.to(W.device)
    add_bias(linear, delta.to(W.dtype))


# ----------------------------------------------------------------------------------------------
# Data-path helpers

def _batches(X: torch.Tensor, bs: int):
    """(start, view) over batches of the calibration boundary X; views write through to X."""
    for b in range(0, X.shape[0], bs):
        yield b, X[b:b + bs]


def _collect(where: str, n_features: int, X: torch.Tensor, inputs, run: _Run, cache: bool):
    """ActivationStats of inputs(x_batch) over all batches of X, and the inputs themselves
    (N × T × n_features) when `cache`. `inputs(x, start)` may also write into the batch view.
    Non-finite inputs stop the run, naming `where` (e.g. "layer 3 o_proj")."""
    stats = ActivationStats(n_features, hessian=run.method.needs_hessian, backend=run.options.backend,
                            device=X.device)
    kept = torch.empty(X.shape[0], X.shape[1], n_features, device=X.device) if cache else None
    for b, x in _batches(X, run.settings.batch_size):
        a = inputs(x, b)
        if not torch.isfinite(a).all():
            raise NonFiniteError(f"{where}: the calibration activations are not finite (the model's weights "
                                 f"or config are broken)")
        stats.add(a)
        if cache:
            kept[b:b + x.shape[0]] = a
    return stats, kept


def _cached(cache: torch.Tensor, b: int, n: int, keep: torch.Tensor | None) -> torch.Tensor:
    """Rows b..b+n of a cached activation, restricted to the kept columns after shrinking."""
    rows = cache[b:b + n]
    return rows if keep is None else rows.index_select(-1, keep)


def _kept(width: int, pruned_blocks, block: int, device) -> torch.Tensor:
    """Indices of the columns that survive when `pruned_blocks` (of `block` columns) go."""
    gone = set(int(p) for p in pruned_blocks)
    return torch.tensor([c for c in range(width) if c // block not in gone], dtype=torch.long, device=device)


@contextlib.contextmanager
def _no_tf32():
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def _layer_line(r: dict) -> str:
    def err(e):
        return "-" if e is None else f"{e:.3e}"
    damp = [f"{k}={r[k]:g}" for k in ("attn_percdamp", "ffn_percdamp") if r.get(k) is not None]
    return (f"layer {r['layer']:3d}  r={r['ratio']:.4f}  heads {r['heads_kept']}/{r['heads_before']}"
            f"  kv {r['kv_kept']}/{r['kv_before']}  ffn {r['channels_kept']}/{r['channels_before']}"
            f"  err attn {err(r['attn_error'])} ffn {err(r['ffn_error'])}"
            f"  {r['seconds']:.1f}s (fwd {r['seconds_forward']:.1f} sel {r['seconds_select']:.1f})"
            + (f"  damping retry: {' '.join(damp)}" if damp else ""))


# ----------------------------------------------------------------------------------------------
# Entry points

def estimate(cfg, n_samples: int, seqlen: int, batch_size: int = 8, cache_mb: float = 2048.0) -> dict:
    """Memory and time estimate of a run before it starts (printed by the CLI).

    Memory: float32 model + one boundary N·T·D + caches (if within cache_mb) + the largest H
    (float64 m²) + one batch of activations. Time: forward FLOPs (2 per weight per token, once
    per layer with caches, ~1.7× without) at an assumed 60 GFLOP/s (a 2-core CPU; measured in
    docs/results-smollm2.md) plus H accumulation (2·n·N² per projection).
    """
    from slimgpt.model import param_count
    D, d = cfg.hidden_size, cfg.head_dim
    n = n_samples * seqlen
    m_max = max(cfg.layer_intermediate) if cfg.num_hidden_layers else 0
    h_max = max(cfg.layer_heads) * d if cfg.num_hidden_layers else 0
    model_b = param_count(cfg) * 4
    boundary = n * D * 4
    cache_b = n * (h_max + m_max) * 4
    cached = cache_b <= cache_mb * 2 ** 20
    hess = 8 * max(m_max, h_max) ** 2 * 2
    batch = batch_size * seqlen * (m_max * 3 + D * 4) * 4
    layer_params = param_count(cfg) - cfg.vocab_size * D * (1 if cfg.tie_word_embeddings else 2)
    flops = 2 * layer_params * n * (1.0 if cached else 1.7)
    flops += sum(2 * n * ((cfg.layer_heads[i] * d) ** 2 + cfg.layer_intermediate[i] ** 2)
                 for i in range(cfg.num_hidden_layers))
    return {"memory_bytes": model_b + boundary + (cache_b if cached else 0) + hess + batch,
            "model_bytes": model_b, "activation_bytes": boundary, "cache_bytes": cache_b if cached else 0,
            "hessian_bytes": hess, "forward_flops": flops, "seconds_at_60gflops": flops / 60e9,
            "cached": cached}


def prune(name_or_dir: str, settings: PruneSettings, log=None, progress: bool = True):
    """Load a model, draw calibration windows, prune. Returns (Loaded, PruneResult)."""
    from slimgpt.loaders import load_model
    from slimgpt.textdata import calibration_windows

    settings.validate()
    loaded = load_model(name_or_dir)
    calib = calibration_windows(loaded.tokenizer, settings.n_samples, settings.seqlen, settings.seed, model=loaded.model)
    return loaded, prune_model(loaded.model, calib, settings, log=log, progress=progress)
