"""The layer-wise SlimGPT pipeline (spec §6): calibrate, prune each layer in order, shrink.

For each decoder layer i = 0..L-1, with the calibration activations X (N × T × D) at its input:

1. attention pass: run the attention half only up to the head outputs A = heads(norm(X)),
   accumulate the statistics of o_proj's input (H_o = 2AᵀA/n, mean, variance);
   select + compensate heads (a `methods.METHODS` step; SlimGPT: grouped-Cholesky greedy, one
   head per iteration, OBS update of o_proj) and shrink q/k/v/o from the recorded indices;
2. FFN pass: h = X + o_proj(A[kept heads]) (the pruned attention), written over X in place;
   accumulate the statistics of down_proj's input F = act(norm(h)); select + compensate
   channels (SlimGPT: dynamic group size, OBS update of down_proj) and shrink gate/up/down;
3. propagate: X ← h + down_proj_new(F[kept channels]). down_proj's inputs do not change when
   down_proj is pruned, so F is reused, not recomputed.

A and F are cached between the passes when they fit in `cache_mb` (then each layer's attention
and FFN run exactly once); otherwise they are recomputed from X, so memory stays at one copy of
the model plus one layer boundary (N × T × D float32) plus per-batch temporaries.

Hessians: each batch's XᵀX is a float32 GEMM over at most batch·T tokens (relative error
~√(batch·T)·6e-8), added into a float64 running sum; H = 2·sum/n is handed to the backend in
float64. float32 GEMMs keep accumulation at ~1/3 of the forward cost; the float64 sum keeps
the 16k–260k-token total exact to ~1e-7, far below the damping (1e-2·mean diag). TF32 is off.

Counts (spec §5): per-layer ratios r_i from IPR; heads round(n_h·r_i) (Python round, half to
even), rounded to the GQA mode's granularity; FFN channels start from round(m·r_i) but are
re-apportioned online so that the pruned decoder parameters hit `ratio × (prunable decoder
parameters)` within one FFN channel (3·D parameters): before pruning layer i's FFN, the
remaining budget (target − pruned so far − planned heads of later layers) is split over layers
i..L-1 in proportion to m_j·r_j, and layer i takes its share. Heads are coarse (a SmolLM2 head
is 73,728 parameters, 42.7 channels); channels absorb their rounding.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from slimgpt import methods as M
from slimgpt.model import LlamaForCausalLM
from slimgpt.shrink import remove_channels, remove_heads, sync_config, uniform_biases

GQA_MODES = ("query", "group", "balanced")
SCHEDULES = ("log", "linear", "uniform", "log-decrease", "linear-decrease")


class PruneError(ValueError):
    pass


@dataclass
class PruneSettings:
    ratio: float | None = 0.2          # global target: fraction of prunable decoder parameters
    schedule: str = "log"               # IPR strategy (spec §5.2)
    first: float | None = None          # explicit first/last ratios instead of a target
    last: float | None = None
    n_samples: int = 64
    seqlen: int = 256
    seed: int = 0
    gqa: str = "query"                  # query | group | balanced (docs/pipeline.md)
    method: str = "slimgpt"
    percdamp: float = 0.01
    backend: str | None = None          # reference | cpu | cuda | None (fastest available)
    gcd: bool = True
    compensate: bool = True
    hit_target: bool = True
    batch_size: int = 8
    cache_mb: float = 2048.0
    shrink: bool = True                 # False: keep full size, pruned columns zero (masked model)
    method_options: dict = field(default_factory=dict)

    def validate(self):
        if self.ratio is not None and not (0.0 <= self.ratio < 1.0):
            raise PruneError(f"--ratio must be in [0, 1), got {self.ratio}")
        for name in ("first", "last"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 1.0):
                raise PruneError(f"--{name} must be in [0, 1), got {v}")
        if self.ratio is None and self.first is None:
            raise PruneError("give a target --ratio or explicit --first/--last ratios")
        if self.schedule not in SCHEDULES:
            raise PruneError(f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.gqa not in GQA_MODES:
            raise PruneError(f"--gqa must be one of {GQA_MODES}, got {self.gqa!r}")
        if self.method not in M.METHODS:
            raise PruneError(f"unknown --method {self.method!r}; registered: {sorted(M.METHODS)}")
        if self.percdamp < 0:
            raise PruneError("--percdamp must be >= 0")
        if self.n_samples < 1 or self.seqlen < 2 or self.batch_size < 1:
            raise PruneError("--nsamples, --seqlen and batch size must be positive (seqlen >= 2)")


# ----------------------------------------------------------------------------------------------
# Schedule and counts

def layer_ratios(n_layers: int, s: PruneSettings) -> list[float]:
    from slimgpt import reference as R

    if s.first is not None:
        last = s.first if s.last is None else s.last
        strategy = "uniform" if s.schedule == "uniform" else s.schedule
        return [float(r) for r in R.ipr_ratios(n_layers, s.first, last, strategy)]
    if s.ratio == 0:
        return [0.0] * n_layers
    return [float(r) for r in R.ipr_for_target(n_layers, s.ratio, strategy=s.schedule)]


def param_costs(cfg) -> dict:
    """Parameters that leave with one structure."""
    D, d = cfg.hidden_size, cfg.head_dim
    b = 1 if cfg.attention_bias else 0
    return {"q_head": 2 * D * d + b * d, "kv_head": 2 * D * d + 2 * b * d, "channel": 3 * D}


def prunable_params(cfg, i: int) -> int:
    c = param_costs(cfg)
    return (cfg.layer_heads[i] * c["q_head"] + cfg.layer_kv_heads[i] * c["kv_head"]
            + cfg.layer_intermediate[i] * c["channel"])


def planned_heads(cfg, i: int, r: float, mode: str) -> tuple[int, int]:
    """(query heads to prune, KV heads that will go with them if known) for layer i at ratio r."""
    H, K = cfg.layer_heads[i], cfg.layer_kv_heads[i]
    if H == 0 or r == 0:
        return 0, 0
    if mode == "query":
        return min(round(H * r), H), 0
    if H % K:
        raise PruneError(f"layer {i}: --gqa {mode} needs equal query heads per KV head ({H} over {K})")
    n_rep = H // K
    if mode == "group":
        g = min(round(K * r), K)
        return g * n_rep, g
    per = min(round(n_rep * r), n_rep)
    return per * K, (K if per == n_rep else 0)


# ----------------------------------------------------------------------------------------------
# Input statistics

class _Stats:
    """Streaming mean / M2 (Chan et al.) and, optionally, H = 2XᵀX/n of a projection's inputs."""

    def __init__(self, N: int, hessian: bool, device):
        self.n = 0
        self.mean = torch.zeros(N, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(N, dtype=torch.float64, device=device)
        self.xtx = torch.zeros(N, N, dtype=torch.float64, device=device) if hessian else None

    @torch.no_grad()
    def add(self, x: torch.Tensor):
        x = x.reshape(-1, x.shape[-1])
        nb = x.shape[0]
        if nb == 0:
            return
        if self.xtx is not None:
            self.xtx += (x.T @ x).double()            # float32 GEMM, float64 running sum
        # per-batch moments in float32 (at most batch·T tokens), merged in float64
        mb32 = x.mean(0)
        m2b = ((x - mb32) ** 2).sum(0).double()
        mb = mb32.double()
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * (nb / n)
        self.m2 += m2b + delta ** 2 * (self.n * nb / n)
        self.n = n

    def result(self) -> M.InputStats:
        H = None if self.xtx is None else self.xtx * (2.0 / self.n)
        return M.InputStats(self.n, self.mean, self.m2, H)


@contextlib.contextmanager
def _no_tf32():
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def _add_bias(lin: torch.nn.Linear, delta: torch.Tensor):
    if lin.bias is None:
        lin.bias = torch.nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
    lin.bias.data += delta.to(lin.bias.dtype)


# ----------------------------------------------------------------------------------------------
# The pipeline

@dataclass
class PruneResult:
    model: LlamaForCausalLM
    layers: list            # one dict per layer (the per-layer log; pruned indices included)
    summary: dict


def _block(idx, d):
    return (torch.as_tensor(idx, dtype=torch.long)[:, None] * d + torch.arange(d)).reshape(-1)


@torch.no_grad()
def prune_model(model: LlamaForCausalLM, calib: torch.Tensor, settings: PruneSettings,
                log=None, progress: bool = True, counts: list | None = None) -> PruneResult:
    """Prune `model` in place with calibration token windows `calib` (N × T int64).

    `counts`, when given, overrides the schedule: one (heads, channels) pair per layer (heads in
    query heads; for --gqa group/balanced they must fit the mode's granularity). Baselines with
    a global plan (FLAP) use it.
    """
    s = settings
    s.validate()
    method = M.METHODS[s.method]
    opts = M.MethodOptions(percdamp=s.percdamp, backend=s.backend, gcd=s.gcd, compensate=s.compensate,
                           extra=dict(s.method_options))
    cfg = model.config
    L, D, d = cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim
    log = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    cost = param_costs(cfg)

    ratios = layer_ratios(L, s)
    plan = [planned_heads(cfg, i, r, s.gqa) for i, r in enumerate(ratios)]
    if counts is not None:
        if len(counts) != L:
            raise PruneError(f"counts must have {L} (heads, channels) pairs")
        plan = [(int(h), 0) for h, _ in counts]
    P = [prunable_params(cfg, i) for i in range(L)]
    if s.ratio is not None and s.first is None:
        target = round(s.ratio * sum(P))
    else:
        target = round(sum(r * p for r, p in zip(ratios, P)))
    params_before = model.num_parameters()

    dev = next(model.parameters()).device
    N, T = calib.shape
    bs = s.batch_size
    X = torch.empty(N, T, D, dtype=torch.float32, device=dev)       # one layer boundary
    for b in range(0, N, bs):
        X[b:b + bs] = model.embed(calib[b:b + bs].to(dev)).float()
    cos, sin = model.rope(T, dev, torch.float32)

    records, pruned_so_far = [], 0
    it = range(L)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"prune {s.method}", unit="layer", file=sys.stderr)
    with _no_tf32():
        for i in it:
            layer = model.model.layers[i]
            attn, mlp = layer.self_attn, layer.mlp
            t0 = time.perf_counter()
            rec = {"layer": i, "ratio": ratios[i], "heads_before": attn.n_heads, "kv_before": attn.n_kv,
                   "channels_before": mlp.down_proj.in_features}
            cache_bytes = N * T * (attn.n_heads * d + mlp.down_proj.in_features) * 4
            cache = cache_bytes <= s.cache_mb * 2 ** 20

            # -- 1. attention pass: statistics of o_proj's input
            st = _Stats(attn.n_heads * d, method.needs_hessian, dev)
            A = torch.empty(N, T, attn.n_heads * d, device=dev) if cache else None
            for b in range(0, N, bs):
                a = attn.heads(layer.input_layernorm(X[b:b + bs]), cos, sin)
                st.add(a)
                if cache:
                    A[b:b + bs] = a
            t_fwd = time.perf_counter() - t0

            # -- select + compensate heads
            t1 = time.perf_counter()
            n_heads_prune = plan[i][0]
            head_dim, head_groups, n_struct = d, None, n_heads_prune
            if s.gqa == "group" and n_heads_prune:
                n_rep = attn.n_heads // attn.n_kv
                if attn.kv_map.tolist() != [h // n_rep for h in range(attn.n_heads)]:
                    raise PruneError(f"layer {i}: --gqa group needs contiguous equal KV groups")
                head_dim, n_struct = n_rep * d, n_heads_prune // n_rep
            elif s.gqa == "balanced" and n_heads_prune:
                head_groups = attn.kv_map.tolist()
            sel = method.fn("heads", attn.o_proj.weight.data, st.result(), n_struct, head_dim,
                            head_groups=head_groups, layer=layer, options=opts)
            del st
            if s.gqa == "group" and n_heads_prune:
                n_rep = head_dim // d
                heads_pruned = sorted(g * n_rep + k for g in sel.pruned for k in range(n_rep))
            else:
                heads_pruned = list(sel.pruned)
            if sel.bias_delta is not None:
                _add_bias(attn.o_proj, sel.bias_delta)
            keep_cols = _block([h for h in range(attn.n_heads) if h not in set(heads_pruned)], d)
            if s.shrink:
                kv_pruned = remove_heads(layer, heads_pruned, sel.W)
            else:
                attn.o_proj.weight.data.copy_(sel.W)
                kv_left = {attn.kv_map[h].item() for h in range(attn.n_heads) if h not in set(heads_pruned)}
                kv_pruned = [k for k in range(attn.n_kv) if k not in kv_left]
            rec.update(heads_pruned=heads_pruned, kv_pruned=kv_pruned,
                       heads_kept=rec["heads_before"] - len(heads_pruned),
                       kv_kept=rec["kv_before"] - len(kv_pruned),
                       attn_error=sel.info.get("error"), attn_percdamp=sel.info.get("percdamp"),
                       attn_info={k: v for k, v in sel.info.items() if k not in ("error", "percdamp")})
            pruned_so_far += len(heads_pruned) * cost["q_head"] + len(kv_pruned) * cost["kv_head"]
            t_sel = time.perf_counter() - t1

            # -- 2. FFN pass: pruned attention, statistics of down_proj's input
            t2 = time.perf_counter()
            Mw = mlp.down_proj.in_features
            st = _Stats(Mw, method.needs_hessian, dev)
            F = torch.empty(N, T, Mw, device=dev) if cache else None
            for b in range(0, N, bs):
                x = X[b:b + bs]
                if cache:
                    a = A[b:b + bs].index_select(-1, keep_cols) if s.shrink else A[b:b + bs]
                else:
                    a = attn.heads(layer.input_layernorm(x), cos, sin)
                h = x + attn.o_proj(a)
                X[b:b + bs] = h
                f = mlp.act(layer.post_attention_layernorm(h))
                st.add(f)
                if cache:
                    F[b:b + bs] = f
            del A
            t_fwd += time.perf_counter() - t2

            # -- select + compensate channels; counts re-apportioned to hit the target
            t3 = time.perf_counter()
            if counts is not None:
                n_ch = int(counts[i][1])
            elif not s.hit_target:
                n_ch = round(Mw * ratios[i])
            else:
                future = sum(plan[j][0] * cost["q_head"] + plan[j][1] * cost["kv_head"] for j in range(i + 1, L))
                budget = (target - pruned_so_far - future) / cost["channel"]
                w = [cfg.layer_intermediate[j] * ratios[j] if j > i else Mw * ratios[i] for j in range(i, L)]
                share = budget * w[0] / sum(w) if sum(w) > 0 else budget if i == L - 1 else 0.0
                n_ch = round(share)
            n_ch = max(0, min(Mw, n_ch))
            sel = method.fn("channels", mlp.down_proj.weight.data, st.result(), n_ch, 1,
                            head_groups=None, layer=layer, options=opts)
            del st
            if sel.bias_delta is not None:
                _add_bias(mlp.down_proj, sel.bias_delta)
            ch_pruned = list(sel.pruned)
            keep_ch = torch.tensor([c for c in range(Mw) if c not in set(ch_pruned)], dtype=torch.long, device=dev)
            if s.shrink:
                remove_channels(layer, ch_pruned, sel.W)
            else:
                mlp.down_proj.weight.data.copy_(sel.W)
            pruned_so_far += len(ch_pruned) * cost["channel"]
            rec.update(channels_pruned=ch_pruned, channels_kept=Mw - len(ch_pruned),
                       channels_planned=round(Mw * ratios[i]),
                       ffn_error=sel.info.get("error"), ffn_percdamp=sel.info.get("percdamp"),
                       ffn_info={k: v for k, v in sel.info.items() if k not in ("error", "percdamp")})
            t_sel += time.perf_counter() - t3

            # -- 3. propagate: reuse down_proj's inputs
            t4 = time.perf_counter()
            for b in range(0, N, bs):
                h = X[b:b + bs]
                if cache:
                    f = F[b:b + bs].index_select(-1, keep_ch) if s.shrink else F[b:b + bs]
                else:
                    f = mlp.act(layer.post_attention_layernorm(h))
                X[b:b + bs] = h + mlp.down_proj(f)
            del F
            if not torch.isfinite(X).all():
                raise FloatingPointError(f"layer {i}: non-finite activations after pruning")
            t_fwd += time.perf_counter() - t4
            rec.update(seconds_forward=t_fwd, seconds_select=t_sel, seconds=time.perf_counter() - t0,
                       cached=cache)
            records.append(rec)
            log(_layer_line(rec))

    if s.shrink:
        sync_config(model)
    else:
        cfg.o_proj_bias, cfg.mlp_bias = uniform_biases(model)
    seconds = time.perf_counter() - t_start
    params_after = model.num_parameters() if s.shrink else params_before - pruned_so_far
    summary = {
        "method": s.method, "settings": asdict(s), "ratios": ratios,
        "params_before": params_before, "params_after": params_after,
        "prunable_before": sum(P), "pruned_params": pruned_so_far, "target_pruned_params": target,
        "pruned_fraction_of_prunable": pruned_so_far / sum(P) if sum(P) else 0.0,
        "pruned_fraction_of_total": pruned_so_far / params_before,
        "heads_kept": [r["heads_kept"] for r in records], "kv_kept": [r["kv_kept"] for r in records],
        "channels_kept": [r["channels_kept"] for r in records],
        "seconds": seconds, "calibration": {"n_samples": N, "seqlen": T, "seed": s.seed},
    }
    return PruneResult(model, records, summary)


def _layer_line(r: dict) -> str:
    def err(e):
        return "-" if e is None else f"{e:.3e}"
    damp = [f"{k}={r[k]:g}" for k in ("attn_percdamp", "ffn_percdamp") if r.get(k) is not None]
    return (f"layer {r['layer']:3d}  r={r['ratio']:.4f}  heads {r['heads_kept']}/{r['heads_before']}"
            f"  kv {r['kv_kept']}/{r['kv_before']}  ffn {r['channels_kept']}/{r['channels_before']}"
            f"  err attn {err(r['attn_error'])} ffn {err(r['ffn_error'])}"
            f"  {r['seconds']:.1f}s (fwd {r['seconds_forward']:.1f} sel {r['seconds_select']:.1f})"
            + (f"  damping retry: {' '.join(damp)}" if damp else ""))


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

    from slimgpt.baselines_methods import PLANNERS  # global planners of baselines (FLAP)

    settings.validate()
    loaded = load_model(name_or_dir)
    calib = calibration_windows(loaded.tokenizer, settings.n_samples, settings.seqlen, settings.seed)
    planner = PLANNERS.get(settings.method)
    counts = planner(loaded.model, calib, settings) if planner is not None else None
    return loaded, prune_model(loaded.model, calib, settings, log=log, progress=progress, counts=counts)
