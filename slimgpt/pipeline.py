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

One loop serves every way of running it: `setup` (ratios, plan, target, options, budget) →
`prune_layers` (a layer source, `prune_layer`, a sink) → `summarize`. `prune_model` is the
in-memory run (the model's own layers, pruned in place; X one tensor, `activations.Resident`);
`streaming.prune_streaming` reads one layer at a time, writes each when it is done and keeps a
resumable state (X in memory or `activations.OnDisk`). With torch.distributed each rank runs the
same loop on its shard of the windows: `_collect` sums the statistics over the ranks and the
selection runs on rank 0 and is broadcast (`run.comm`, distributed.py).

Where things live: the per-layer plans in schedules.py (a registry, as methods/ is), the parameter
budget in schedule.py, GQA granularity
in gqa.py, the selection and compensation in methods/, the statistics in stats.py, the removal
of rows and columns in shrink.py. This file is the data path.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from slimgpt import align, distributed, gqa, methods, schedule, schedules
from slimgpt.activations import Resident
from slimgpt.evaluate import check_activations
from slimgpt.methods import MethodOptions
from slimgpt.model import LlamaForCausalLM, rope_cos_sin
from slimgpt.ops import resolve_backend
from slimgpt.schedule import Budget, LayerPlan, PruneError, layer_ratios, param_costs  # noqa: F401 (re-exported)
from slimgpt.shrink import add_bias, apply_channels, apply_heads, sync_config, uniform_biases
from slimgpt.stats import ActivationStats
from slimgpt.textdata import check_calibration

GQA_MODES = gqa.GQA_MODES
planned_heads = gqa.planned_heads


@dataclass
class PruneSettings:
    ratio: float | None = 0.2          # global target: fraction of prunable decoder parameters
    schedule: str = "log"               # a name in schedules.SCHEDULES (IPR strategies, flap)
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
    align: int = 1                      # kept FFN widths a multiple of this, balanced heads (align.py)
    align_heads: bool = True            # under align > 1, balance the query heads too (False: FFN only)

    def validate(self):
        n = self.align
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise PruneError(f"--align must be a positive integer (1: the paper's exact counts), got {n!r}")
        if not isinstance(self.align_heads, bool):
            raise PruneError(f"--align-ffn-only: align_heads must be True or False, got {self.align_heads!r}")
        if not self.align_heads and n == 1:
            raise PruneError("--align-ffn-only needs --align N with N > 1")
        if n > 1 and schedules.whole_model_plan(self.schedule, self.method):
            raise PruneError(f"--align {n} needs per-layer counts from an IPR schedule (--schedule log, linear, ...) "
                             f"and a method without its own plan; use --align 1 with --schedule {self.schedule} "
                             f"--method {self.method}")
        if self.ratio is not None and not (0.0 <= self.ratio < 1.0):
            raise PruneError(f"--ratio must be in [0, 1), got {self.ratio}")
        for name in ("first", "last"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 1.0):
                raise PruneError(f"--{name} must be in [0, 1), got {v}")
        if self.ratio is None and self.first is None and self.ratios is None:
            raise PruneError("give a target --ratio, explicit --first/--last ratios or per-layer ratios")
        if self.last is not None and self.first is None:
            raise PruneError("--last needs --first")
        if self.first is not None and self.ratio is not None:
            raise PruneError("give either --ratio or --first/--last, not both (ratio=None with first)")
        g = self.method_options.get("group_sizes")
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise PruneError("--fixed-group must be a positive group size")
        if self.ratios is not None and not all(0.0 <= r < 1.0 for r in self.ratios):
            raise PruneError(f"per-layer ratios must lie in [0, 1), got {self.ratios}")
        if self.schedule not in schedules.SCHEDULES:
            raise PruneError(f"--schedule must be one of {tuple(schedules.SCHEDULES)}, got {self.schedule!r}")
        if self.method in methods.METHODS:
            schedules.chosen(self).validate(self)
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
    """What every layer step needs: settings, method, options, RoPE tables, the budget, and the
    collective steps (distributed.LOCAL in a single process)."""
    settings: PruneSettings
    method: methods.Method
    options: MethodOptions
    cos: torch.Tensor
    sin: torch.Tensor
    budget: Budget
    comm: object = distributed.LOCAL


@dataclass
class Job:
    """The shared set-up of a run (in memory or streamed): ratios, plan, target and the _Run."""
    settings: PruneSettings
    config: object
    ratios: list
    plan: list
    target: int
    prunable: int
    run: _Run
    t_start: float


# ----------------------------------------------------------------------------------------------
# The loop

@torch.no_grad()
def prune_model(model: LlamaForCausalLM, calib: torch.Tensor, settings: PruneSettings,
                log=None, progress: bool = True, comm=distributed.LOCAL) -> PruneResult:
    """Prune `model` in place with calibration token windows `calib` (N × T int64). With a
    distributed `comm`, this rank forwards only its shard of the windows (distributed.py)."""
    settings.validate()
    check_calibration(calib, model, allow_long_context=True)   # the caller decides about the context
    model.to(torch.device(settings.device))
    job = setup(model.config, model, calib, settings, comm=comm)
    params_before = model.num_parameters()
    X = Resident(embed_calibration(model.embed, comm.shard(calib), settings))   # one layer boundary
    records = prune_layers(job, lambda i: model.model.layers[i], X, log=log, progress=progress)
    if settings.shrink:
        sync_config(model)
    else:
        model.config.o_proj_bias, model.config.mlp_bias = uniform_biases(model)
    after = model.num_parameters() if settings.shrink else params_before - job.run.budget.pruned
    return PruneResult(model, records, summarize(job, records, params_before, after, calib.shape))


def setup(cfg, model, calib: torch.Tensor, settings: PruneSettings, *, comm=distributed.LOCAL,
          saved: tuple | None = None) -> Job:
    """Per-layer ratios and plan (the schedule's, on rank 0 over all windows; `saved` = (ratios,
    plan) of a resumed run), the target, the method options, the RoPE tables and the budget.
    `model` is only read, by whole-model plans."""
    s, t_start = settings, time.perf_counter()
    s.validate()
    method, dev, L = methods.METHODS[s.method], torch.device(s.device), cfg.num_hidden_layers
    if s.ratios is not None and len(s.ratios) != L:
        raise PruneError(f"{len(s.ratios)} per-layer ratios for a model of {L} layers")
    if saved is None:
        saved = comm.broadcast_object(schedules.plan(cfg, model, calib, s, method) if comm.is_root else None)
    ratios, plan = saved
    prunable = sum(schedule.prunable_params(cfg, i) for i in range(L))
    explicit = s.ratios is not None or s.first is not None
    target = round(sum(r * schedule.prunable_params(cfg, i) for i, r in enumerate(ratios))) if explicit \
        else round(s.ratio * prunable)
    options = MethodOptions(percdamp=s.percdamp, backend=resolve_backend(s.backend, torch.empty(0, device=dev)),
                            gcd=s.gcd, compensate=s.compensate, extra=dict(s.method_options))
    cos, sin = rope_cos_sin(calib.shape[1], cfg.head_dim, cfg.rope_theta, dev, torch.float32, cfg.rope_scaling)
    run = _Run(s, method, options, cos, sin, Budget(cfg, ratios, plan, target, s.align), comm)
    return Job(s, cfg, ratios, plan, target, prunable, run, t_start)


def embed_calibration(embed, calib: torch.Tensor, s: PruneSettings, into=None) -> torch.Tensor | None:
    """The layer-0 inputs: float32 embeddings of the windows (N × T × D) on the device; with
    `into` (an activations.OnDisk), written batch by batch into its input slot instead."""
    dev, parts = torch.device(s.device), []
    for b, ids in zip(range(0, calib.shape[0], s.batch_size), calib.split(s.batch_size)):
        x = embed(ids.to(dev)).float()
        check_activations(x, "the token embedding of the calibration windows")
        if into is None:
            parts.append(x)
        else:
            into.write_input(b, x)
    return torch.cat(parts) if into is None else None


def prune_layers(job: Job, layer_at, X, *, start: int = 0, before=None, after=None, log=None,
                 progress: bool = True) -> list:
    """Layers start..L−1 in order: layer_at(i) gives the layer, `before(i, layer)` sees it dense,
    prune_layer prunes it in place and advances the boundary X, `after(i, layer, rec)` sees it
    pruned (the streaming sink writes it there). Returns the records."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    layers = range(start, job.config.num_hidden_layers)
    if progress:
        from tqdm import tqdm
        layers = tqdm(layers, desc=f"prune {job.settings.method}", unit="layer", file=sys.stderr,
                      initial=start, total=job.config.num_hidden_layers)
    records = []
    with _no_tf32():
        for i in layers:
            layer = layer_at(i)
            if before is not None:
                before(i, layer)
            records.append(prune_layer(layer, i, X, job.ratios[i], job.plan[i], job.run))
            if after is not None:
                after(i, layer, records[-1])
            log(_layer_line(records[-1]))
    return records


def summarize(job: Job, records: list, params_before: int, params_after: int, calib_shape) -> dict:
    s, pruned = job.settings, job.run.budget.pruned
    return {
        "method": s.method, "settings": asdict(s), "ratios": job.ratios,
        "params_before": params_before, "params_after": params_after,
        "prunable_before": job.prunable, "pruned_params": pruned, "target_pruned_params": job.target,
        "pruned_fraction_of_prunable": pruned / job.prunable if job.prunable else 0.0,
        "pruned_fraction_of_total": pruned / params_before,
        "heads_kept": [r["heads_kept"] for r in records], "kv_kept": [r["kv_kept"] for r in records],
        "channels_kept": [r["channels_kept"] for r in records],
        "seconds": time.perf_counter() - job.t_start,
        "calibration": {"n_samples": calib_shape[0], "seqlen": calib_shape[1], "seed": s.seed},
    }


# ----------------------------------------------------------------------------------------------
# One layer

def prune_layer(layer, i: int, X, ratio: float, plan: LayerPlan, run: _Run) -> dict:
    """Prune decoder layer i in place (attention, then FFN) and advance the boundary X
    (activations.Resident or OnDisk) from its inputs to its outputs."""
    attn, mlp, s = layer.self_attn, layer.mlp, run.settings
    rec = {"layer": i, "ratio": ratio, "heads_before": attn.n_heads, "kv_before": attn.n_kv,
           "channels_before": mlp.down_proj.in_features}
    t0 = time.perf_counter()
    N, T = X.shape[:2]
    cache = N * T * (attn.o_proj.in_features + mlp.down_proj.in_features) * 4 <= s.cache_mb * 2 ** 20

    # 1. attention: statistics of o_proj's input, then heads
    stats, A = _collect(f"layer {i} o_proj", attn.o_proj.in_features, X,
                        lambda x, b: layer.attn_input(x, run.cos, run.sin), run, cache)
    t_fwd, t_hess = time.perf_counter() - t0 - stats.seconds, stats.seconds
    mode = align.head_mode(s.gqa, attn.n_heads, attn.n_kv, s.align, s.align_heads)
    blocks = gqa.head_blocks(attn.n_heads, attn.kv_map.tolist(), attn.head_dim, plan.heads, mode, i)
    heads, kv, t_sel = _prune_heads(layer, stats, blocks, run, rec)
    keep_cols = _kept(rec["heads_before"] * attn.head_dim, heads, attn.head_dim, run.cos.device) if s.shrink else None
    run.budget.remove(heads=len(heads), kv_heads=len(kv))
    distributed.test_fault(run.comm.rank, f"layer{i}")

    # 2. FFN: h = X + o_proj(pruned attention), written to X's outputs; statistics of down_proj's input
    t1 = time.perf_counter()

    def ffn_input(x, b):
        a = _cached(A, b, x.shape[0], keep_cols) if cache else layer.attn_input(x, run.cos, run.sin)
        h = x + attn.o_proj(a)
        X.write(b, h)
        return layer.ffn_input(h)

    stats, F = _collect(f"layer {i} down_proj", mlp.down_proj.in_features, X, ffn_input, run, cache)
    del A
    t_fwd, t_hess = t_fwd + time.perf_counter() - t1 - stats.seconds, t_hess + stats.seconds
    width = mlp.down_proj.in_features
    n_ch = run.budget.channels(i, width) if plan.channels is None else \
        align.channels_to_prune(width, plan.channels, s.align)
    channels, dt = _prune_channels(layer, stats, gqa.Blocks(1, n_ch), run, rec)
    t_sel += dt
    run.budget.remove(channels=len(channels))

    # 3. propagate: X ← h + down_proj(F[kept channels]) (down_proj's inputs did not change)
    t2 = time.perf_counter()
    keep_ch = _kept(rec["channels_before"], channels, 1, run.cos.device) if s.shrink else None
    for b in range(0, N, s.batch_size):
        h = X.output(b, s.batch_size)
        f = _cached(F, b, h.shape[0], keep_ch) if cache else layer.ffn_input(h)
        h += mlp.down_proj(f)
        check_activations(h, f"layer {i} output after pruning")
        X.write(b, h)
    X.advance()
    t_fwd += time.perf_counter() - t2
    rec.update(seconds_forward=t_fwd, seconds_hessian=t_hess, seconds_select=t_sel,
               seconds=time.perf_counter() - t0, cached=cache, channels_planned=round(rec["channels_before"] * ratio))
    return rec


def _prune_heads(layer, stats, blocks, run: _Run, rec: dict):
    """Select + compensate heads, apply the bias and the removal; fill the record."""
    t = time.perf_counter()
    attn = layer.self_attn
    W = attn.o_proj.weight.data
    sel = run.comm.selection(lambda: run.method.select("heads", W, stats, blocks, layer=layer, options=run.options), W)
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
    W = down.weight.data
    sel = run.comm.selection(lambda: run.method.select("channels", W, stats, blocks, layer=layer, options=run.options), W)
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

def _collect(where: str, n_features: int, X, inputs, run: _Run, cache: bool):
    """ActivationStats of inputs(x_batch, start) over all batches of X's inputs (summed over the
    ranks), and the inputs themselves (N × T × n_features) when `cache`. Non-finite inputs stop
    the run, naming `where` (e.g. "layer 3 o_proj"). stats.seconds: time in the statistics."""
    dev = run.cos.device
    stats = ActivationStats(n_features, hessian=run.method.needs_hessian, backend=run.options.backend, device=dev)
    N, T = X.shape[:2]
    kept = torch.empty(N, T, n_features, device=dev) if cache else None
    for b in range(0, N, run.settings.batch_size):
        x = X.read(b, run.settings.batch_size)
        a = inputs(x, b)
        check_activations(a, f"{where} inputs")
        stats.add(a)
        if cache:
            kept[b:b + x.shape[0]] = a
    run.comm.reduce_stats(stats)
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
            f"  {r['seconds']:.1f}s (fwd {r['seconds_forward']:.1f} hess {r.get('seconds_hessian', 0.0):.1f}"
            f" sel {r['seconds_select']:.1f})"
            + (f"  damping retry: {' '.join(damp)}" if damp else ""))


# ----------------------------------------------------------------------------------------------
# Entry points

# Measured constants of the estimate (docs/scale.md, "Memory model"): the resident set of the
# process once torch, NumPy, tokenizers, slimgpt and the C++ core are imported; what the
# tokenizer and the tokenized C4 / WikiText-2 streams add (SmolLM2's 49,152-token BPE); the GGUF
# loader's peak relative to the float32 model it returns.
RUNTIME_BYTES = 250 * 2 ** 20
TEXT_BYTES = 256 * 2 ** 20
GGUF_LOAD_FACTOR = 1.6


def estimate(cfg, n_samples: int, seqlen: int, batch_size: int = 8, cache_mb: float = 2048.0, *,
             eval_tokens: int = 0, eval_seqlen: int = 128, device: str = "cpu", streamed: bool = False,
             ranks: int = 1, source_kind: str = "folder", stored_bytes: int = 2) -> dict:
    """Peak memory and work of a run before it starts (printed by the CLI; docs/scale.md).

    Memory is the largest of three phases, each the sum of what is resident then:
    - loading (in memory): runtime + the loader's peak (GGUF: 1.6× the float32 model; a folder:
      the float32 model + its stored tensors, whose mapped pages count until the file closes);
    - pruning: runtime + tokenizer and token streams + the model (in memory: float32, counted
      twice because shrinking allocates every weight anew and the allocator keeps the freed
      blocks; streamed: one layer, twice likewise) + the boundary N·T·D·4 (this rank's share)
      + the caches of A and F (when within cache_mb) + the widest projection's statistics: H in
      float64 (updated in place on the CPU; on a GPU twice while a batch is added) and the
      core's float32 copy and scratch (N_in² · (8 or 16, + 8)) + one batch of temporaries
      (batch · T · (3m + 4D) floats);
    - evaluating the quick perplexity: a batch of logits (1024 tokens × V, three float32 copies:
      logits, the shifted copy, log-softmax) on top of the pruning phase (in memory: its blocks
      stay resident) or, streamed, beside the float32 lm_head and the evaluation's hidden states.
    On a CUDA device the model, activations and statistics count against the GPU and the
    runtime, text and loading against host RAM; `memory_bytes` is then the device's figure.
    Time: forward FLOPs (2 per weight per token, once per layer with caches, ~1.7× without; the
    streamed perplexity adds two passes of the evaluation tokens) and the Hessians (2·n·N² per
    projection) at an assumed 60 GFLOP/s (a 2-core CPU), divided over the ranks.
    """
    from slimgpt.model import layer_param_count, param_count
    D, d, L, V = cfg.hidden_size, cfg.head_dim, cfg.num_hidden_layers, cfg.vocab_size
    n = n_samples * seqlen
    n_local = -(-n_samples // max(ranks, 1)) * seqlen
    m_max = max(cfg.layer_intermediate) if L else 0
    h_max = max(cfg.layer_heads) * d if L else 0
    width = max(m_max, h_max)
    model_b = param_count(cfg) * 4
    layer_b = max((layer_param_count(cfg, i) for i in range(L)), default=0) * 4
    boundary = n_local * D * 4
    cache_b = n_local * (h_max + m_max) * 4
    cached = cache_b <= cache_mb * 2 ** 20
    on_gpu = torch.device(device).type == "cuda"
    hess, obs = (16 if on_gpu else 8) * width ** 2, 8 * width ** 2
    batch = batch_size * seqlen * (m_max * 3 + D * 4) * 4
    ev_tokens = (eval_tokens // eval_seqlen) * eval_seqlen if eval_tokens > 0 else 0
    logits = 3 * min(1024, ev_tokens) * V * 4
    host = 0 if on_gpu else RUNTIME_BYTES + TEXT_BYTES
    resident = 2 * (layer_b if streamed else model_b)
    prune_phase = host + resident + boundary + (cache_b if cached else 0) + hess + obs + batch
    if streamed:
        load = V * D * 4 + boundary                        # the embedding, read once for the layer-0 inputs
        eval_phase = host + (V * D * 4 + logits + 2 * ev_tokens * D * 4 if ev_tokens else 0)
    else:
        load = model_b * (GGUF_LOAD_FACTOR if source_kind == "gguf" else 1 + stored_bytes / 4)
        eval_phase = prune_phase + logits if ev_tokens else 0
    phases = {"load": (0 if on_gpu else RUNTIME_BYTES) + load, "prune": prune_phase, "eval": eval_phase}
    layer_params = param_count(cfg) - V * D * (1 if cfg.tie_word_embeddings else 2)
    flops = 2 * layer_params * n * (1.0 if cached else 1.7)
    flops += sum(2 * n * ((cfg.layer_heads[i] * d) ** 2 + cfg.layer_intermediate[i] ** 2) for i in range(L))
    if streamed and ev_tokens:
        flops += 2 * 2 * layer_params * ev_tokens
    return {"memory_bytes": max(phases.values()), "phases": phases, "runtime_bytes": host,
            "model_bytes": resident, "activation_bytes": boundary, "cache_bytes": cache_b if cached else 0,
            "hessian_bytes": hess, "obs_bytes": obs, "batch_bytes": batch, "eval_bytes": logits,
            "load_bytes": load, "forward_flops": flops, "seconds_at_60gflops": flops / 60e9 / max(ranks, 1),
            "cached": cached, "streamed": streamed}


def prune(name_or_dir: str, settings: PruneSettings, log=None, progress: bool = True):
    """Load a model, draw calibration windows, prune. Returns (Loaded, PruneResult)."""
    from slimgpt.loaders import load_model
    from slimgpt.textdata import calibration_windows

    settings.validate()
    loaded = load_model(name_or_dir)
    calib = calibration_windows(loaded.tokenizer, settings.n_samples, settings.seqlen, settings.seed, model=loaded.model)
    return loaded, prune_model(loaded.model, calib, settings, log=log, progress=progress)
