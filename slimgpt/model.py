"""A readable LLaMA-family decoder in torch whose every layer may have its own shape.

What this file is: the model the pipeline prunes and the checkpoints store. It covers LLaMA
(incl. LLaMA-3.x rope scaling), Mistral, SmolLM2, Qwen2 and Qwen3-style models: RMSNorm, rotary
embeddings (HF `rotate_half` convention, configurable theta, optional `llama3` frequency
scaling), SwiGLU MLP, grouped-query attention, tied or untied embeddings, optional biases (q/k/v
as in Qwen2; o_proj and down_proj for bias-compensating baselines) and optional per-head q/k
RMSNorm (Qwen3's q_norm / k_norm: one weight of head_dim shared by all heads of a layer).

What makes it different from a stock LLaMA: each decoder layer i has its own
- number of query heads  `layer_heads[i]`,
- number of KV heads     `layer_kv_heads[i]`,
- explicit query→KV map  `layer_kv_map[i]` (query head h reads KV head kv_map[h]),
- FFN width              `layer_intermediate[i]`,
so a model pruned at query-head granularity (uneven heads per KV group, KV heads dropped when all
their query heads are gone) is a normal model of this class. A layer may have 0 heads or 0 FFN
channels; its half then contributes only its bias (or nothing).

Parameter names follow Hugging Face (`model.layers.{i}.self_attn.q_proj.weight`, ...), so HF
folders load without renaming and checkpoints stay familiar. Weights are out × in (nn.Linear).

Shape letters: B batch, T sequence, D hidden, H query heads, K KV heads, d head_dim, M FFN width,
S tokens seen so far (KV cache). Positions are 0..T-1 for every sequence (no padding); with a
`KVCache` (generation) the new tokens take positions S..S+T-1 and attend to the cached keys.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------
# Configuration

# Sane maxima for the integer fields: far above any released LLaMA-family model (LLaMA-3.1-405B:
# D 16,384, 126 layers, 128 heads, M 53,248; vocabularies <= 262,144), low enough that a hostile
# config (num_hidden_layers 1e9) is refused before anything is allocated from it.
CONFIG_LIMITS = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "intermediate_size": 1 << 20,
    "head_dim": 1024,
    "max_position_embeddings": 1 << 26,
}


def _show(v) -> str:
    """A short description of a bad value for an error message."""
    if isinstance(v, (list, tuple)):
        return f"a list of {len(v)}" if len(v) > 8 else repr(list(v))
    if isinstance(v, dict):
        return "an object"
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _check_int(name: str, v, lo: int, hi: int | None) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not (lo <= v and (hi is None or v <= hi)):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}, got {_show(v)}")
    return int(v)


def _layer_int(name: str, i: int, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name}[{i}] entries must be integers, got {_show(v)}")
    return int(v)


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int                    # D
    num_hidden_layers: int              # L
    num_attention_heads: int            # dense query heads per layer (before pruning)
    num_key_value_heads: int            # dense KV heads per layer
    intermediate_size: int              # dense FFN width M
    head_dim: int | None = None         # d; default D // num_attention_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False        # q/k/v biases (Qwen2)
    o_proj_bias: bool = False           # o_proj bias (bias-compensating baselines, e.g. FLAP)
    mlp_bias: bool = False              # down_proj bias (same reason); gate/up never get one
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Per-layer shapes; None means "dense everywhere". Filled by __post_init__.
    layer_heads: list[int] | None = None
    layer_kv_heads: list[int] | None = None
    layer_kv_map: list[list[int]] | None = None
    layer_intermediate: list[int] | None = None
    architecture: str = "llama"         # informational: llama | mistral | qwen2 | qwen3 | smollm2 | tiny
    rope_scaling: dict | None = None    # None, or LLaMA-3.x frequency scaling (see check_rope_scaling)
    qk_norm: bool = False               # Qwen3: RMSNorm(head_dim) on each q and k head before RoPE
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self._check_scalars()             # before anything divides by, or allocates from, them
        L = self.num_hidden_layers
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                                 f"({self.num_attention_heads}), or set head_dim")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        for name in ("layer_heads", "layer_kv_heads", "layer_intermediate", "layer_kv_map"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (list, tuple)) or len(v) != L):
                raise ValueError(f"{name} must be a list of {L} entries (one per layer), got {_show(v)}")
        if self.layer_heads is None:
            self.layer_heads = [self.num_attention_heads] * L
        if self.layer_kv_heads is None:
            self.layer_kv_heads = [self.num_key_value_heads] * L
        if self.layer_intermediate is None:
            self.layer_intermediate = [self.intermediate_size] * L
        for name in ("layer_heads", "layer_kv_heads", "layer_intermediate"):
            setattr(self, name, [_layer_int(name, i, x) for i, x in enumerate(getattr(self, name))])
        if self.layer_kv_map is None:
            # Hugging Face's repeat_kv convention: query head h uses KV head h // n_rep.
            self.layer_kv_map = []
            for h, k in zip(self.layer_heads, self.layer_kv_heads):
                if k == 0 or h % k:
                    raise ValueError("layer_kv_map is required when heads are not a multiple of KV heads")
                self.layer_kv_map.append([j // (h // k) for j in range(h)])
        maps = []
        for i, m in enumerate(self.layer_kv_map):
            if not isinstance(m, (list, tuple)):
                raise ValueError(f"layer_kv_map[{i}] must be a list of KV head indices, got {_show(m)}")
            maps.append([_layer_int("layer_kv_map", i, x) for x in m])
        self.layer_kv_map = maps
        self.validate()

    def _check_scalars(self):
        """Types and ranges of the dense fields (each error names its field)."""
        for name, lo in (("vocab_size", 1), ("hidden_size", 1), ("num_hidden_layers", 0),
                         ("num_attention_heads", 1), ("num_key_value_heads", 1), ("intermediate_size", 1),
                         ("max_position_embeddings", 1)):
            setattr(self, name, _check_int(name, getattr(self, name), lo, CONFIG_LIMITS[name]))
        if self.head_dim is not None:
            self.head_dim = _check_int("head_dim", self.head_dim, 2, CONFIG_LIMITS["head_dim"])
            if self.head_dim % 2:
                raise ValueError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        if self.num_key_value_heads > self.num_attention_heads:
            raise ValueError(f"num_key_value_heads ({self.num_key_value_heads}) must not exceed "
                             f"num_attention_heads ({self.num_attention_heads})")
        for name in ("rope_theta", "rms_norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {_show(v)}")
            setattr(self, name, float(v))
        for name in ("tie_word_embeddings", "attention_bias", "o_proj_bias", "mlp_bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {_show(getattr(self, name))}")
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self, name) is not None:
                setattr(self, name, _check_int(name, getattr(self, name), 0, None))
        if not isinstance(self.architecture, str):
            raise ValueError(f"architecture must be a string, got {_show(self.architecture)}")
        if self.rope_scaling is not None:
            self.rope_scaling = check_rope_scaling(self.rope_scaling)

    def validate(self):
        self._check_scalars()
        L = self.num_hidden_layers
        for name in ("layer_heads", "layer_kv_heads", "layer_kv_map", "layer_intermediate"):
            if len(getattr(self, name)) != L:
                raise ValueError(f"{name} must have {L} entries, got {len(getattr(self, name))}")
        for i in range(L):
            h, k, kv_map = self.layer_heads[i], self.layer_kv_heads[i], self.layer_kv_map[i]
            if not 0 <= h <= CONFIG_LIMITS["num_attention_heads"]:
                raise ValueError(f"layer {i}: layer_heads {h} out of range")
            if not 0 <= k <= max(h, 0):
                raise ValueError(f"layer {i}: layer_kv_heads {k} must lie in [0, {h}] (the layer's query heads)")
            if len(kv_map) != h:
                raise ValueError(f"layer {i}: kv_map has {len(kv_map)} entries for {h} query heads")
            if any(not 0 <= j < k for j in kv_map):
                raise ValueError(f"layer {i}: kv_map entries must lie in [0, {k})")
            if h and sorted(set(kv_map)) != list(range(k)):
                raise ValueError(f"layer {i}: every KV head must serve at least one query head")
            if h == 0 and k != 0:
                raise ValueError(f"layer {i}: a layer without query heads keeps no KV heads")
            if self.layer_intermediate[i] < 0:
                raise ValueError(f"layer {i}: negative FFN width")
            if self.layer_intermediate[i] > CONFIG_LIMITS["intermediate_size"]:
                raise ValueError(f"layer {i}: FFN width {self.layer_intermediate[i]} out of range")

    @property
    def is_uniform(self) -> bool:
        """True when every layer has the dense shape (a stock LLaMA could hold it)."""
        return (set(self.layer_heads) == {self.num_attention_heads}
                and set(self.layer_kv_heads) == {self.num_key_value_heads}
                and set(self.layer_intermediate) == {self.intermediate_size})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


# ----------------------------------------------------------------------------------------------
# Building blocks

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # normalise in float32 (as HF LLaMA does), then scale
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_rope_scaling(scaling) -> dict:
    """The one rope scaling this model implements, normalised: LLaMA-3.x's
    {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}. Anything else is a ValueError naming the field."""
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be an object or null, got {_show(scaling)}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: llama3, or no scaling)")
    out = {"rope_type": "llama3"}
    for name in ROPE_SCALING_KEYS[:3]:
        v = scaling.get(name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"rope_scaling.{name} must be a finite number > 0, got {_show(v)}")
        out[name] = float(v)
    if out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError(f"rope_scaling.high_freq_factor ({out['high_freq_factor']}) must be larger than "
                         f"low_freq_factor ({out['low_freq_factor']})")
    v = scaling.get("original_max_position_embeddings")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    out["original_max_position_embeddings"] = _check_int("rope_scaling.original_max_position_embeddings", v, 1,
                                                         CONFIG_LIMITS["max_position_embeddings"])
    return out


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None, device=None) -> torch.Tensor:
    """The d/2 rotary frequencies theta^(-2i/d), float32; with `scaling` (LLaMA-3.x, rope_type
    llama3) rescaled exactly as transformers' `_compute_llama3_parameters`: wavelengths 2π/f
    shorter than original_max_position_embeddings / high_freq_factor are kept, those longer than
    original_max_position_embeddings / low_freq_factor are divided by `factor`, and the ones in
    between are interpolated with s = (original / wavelength − low) / (high − low):
    f' = (1 − s)·f/factor + s·f."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    if scaling is None:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(T: int, head_dim: int, theta: float, device=None, dtype=torch.float32, scaling: dict | None = None):
    """cos, sin of shape (T, d) for positions 0..T-1 (HF convention: frequencies repeated twice)."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling, device)
    pos = torch.arange(T, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)                  # (T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)             # (T, d)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin               # x: (B, heads, T, d); cos/sin: (T, d)


def _linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    # Built on the meta device and materialised empty: initialisation is the caller's job
    # (loaders assign real weights; tiny configs draw seeded random ones).
    with warnings.catch_warnings():       # "Initializing zero-element tensors is a no-op"
        warnings.simplefilter("ignore", UserWarning)
        lin = nn.Linear(n_in, n_out, bias=bias, device="meta")
    return lin.to_empty(device="cpu")


class KVCache:
    """The keys (after RoPE) and values of the tokens seen so far, for generation.

    Per layer i, k[i] and v[i] are (B, K_i, capacity, d) buffers of that layer's own KV heads
    (K_i may differ per layer, and be 0); the first `length` positions are filled. A forward
    with the cache runs only the new tokens, at positions length..length+T-1, and appends their
    keys and values. Nothing else is kept: the model and its weights are unchanged."""

    def __init__(self, config: LlamaConfig, capacity: int, batch: int = 1, device=None, dtype=torch.float32):
        d = config.head_dim
        self.k = [torch.empty(batch, k, capacity, d, device=device, dtype=dtype) for k in config.layer_kv_heads]
        self.v = [torch.empty_like(k) for k in self.k]
        self.capacity, self.length = capacity, 0

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor):
        """Store layer i's new keys/values (B, K, T, d) after the cached ones; return all of them
        (B, K, length + T, d). `length` itself advances once per forward (LlamaForCausalLM)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions; {end} were asked for")
        self.k[i][:, :, start:end] = k
        self.v[i][:, :, start:end] = v
        return self.k[i][:, :, :end], self.v[i][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, i: int):
        super().__init__()
        D, d = cfg.hidden_size, cfg.head_dim
        self.layer_idx = i
        self.n_heads, self.n_kv, self.head_dim = cfg.layer_heads[i], cfg.layer_kv_heads[i], d
        self.q_proj = _linear(D, self.n_heads * d, cfg.attention_bias)
        self.k_proj = _linear(D, self.n_kv * d, cfg.attention_bias)
        self.v_proj = _linear(D, self.n_kv * d, cfg.attention_bias)
        self.o_proj = _linear(self.n_heads * d, D, cfg.o_proj_bias)
        if cfg.qk_norm:      # Qwen3: one RMSNorm(d) shared by all heads, so pruning heads leaves it as it is
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.register_buffer("kv_map", torch.tensor(cfg.layer_kv_map[i], dtype=torch.long), persistent=False)

    def heads(self, x, cos, sin, cache: KVCache | None = None):
        """The concatenated head outputs (B, T, H·d): the input of o_proj, where SlimGPT's H_o lives.

        With `cache`, x holds only the new tokens (cos/sin at their positions); their keys and
        values are appended to the cache and the queries attend to all cached positions."""
        B, T, _ = x.shape
        H, K, d = self.n_heads, self.n_kv, self.head_dim
        if H == 0:
            return x.new_zeros(B, T, 0)
        q = self.q_proj(x).view(B, T, H, d)
        k = self.k_proj(x).view(B, T, K, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)              # (B, H, T, d), (B, K, T, d)
        v = self.v_proj(x).view(B, T, K, d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)            # (B, K, past + T, d)
            if past and T == 1:
                causal = False                                   # one new token sees every cached one
            elif past:                                           # new token t sees positions <= past + t
                causal, mask = False, torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        if not (K == H and bool((self.kv_map == torch.arange(H)).all())):
            k = k.index_select(1, self.kv_map)                   # (B, H, S, d): explicit query→KV map
            v = v.index_select(1, self.kv_map)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, H, T, d)
        return y.transpose(1, 2).reshape(B, T, H * d)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        return self.o_proj(self.heads(x, cos, sin, cache))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig, i: int):
        super().__init__()
        D, M = cfg.hidden_size, cfg.layer_intermediate[i]
        self.gate_proj = _linear(D, M, False)
        self.up_proj = _linear(D, M, False)
        self.down_proj = _linear(M, D, cfg.mlp_bias)

    def act(self, x):
        """SwiGLU activations (B, T, M): the input of down_proj, where SlimGPT's H_dn lives."""
        return F.silu(self.gate_proj(x)) * self.up_proj(x)

    def forward(self, x):
        return self.down_proj(self.act(x))


class Taps(NamedTuple):
    """What pruning reads from one decoder layer's forward (spec §6): (B, T, ·) each."""
    a: torch.Tensor         # o_proj's input, the concatenated head outputs (H_o, FLAP's attention scores)
    h: torch.Tensor         # the residual stream after attention, x + o_proj(a)
    f: torch.Tensor         # down_proj's input, the SwiGLU activations (H_dn, FLAP's FFN scores)
    y: torch.Tensor         # the layer's output, h + down_proj(f)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, i: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, i)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, i)

    def attn_input(self, x, cos, sin):
        """o_proj's input for the layer input x: the tap of the attention's statistics."""
        return self.self_attn.heads(self.input_layernorm(x), cos, sin)

    def ffn_input(self, h):
        """down_proj's input for the post-attention stream h: the tap of the FFN's statistics."""
        return self.mlp.act(self.post_attention_layernorm(h))

    def taps(self, x, cos, sin, a=None) -> Taps:
        """The layer's forward with every pruning tap (Taps); `a` given (a cached attn_input, or one
        restricted to the kept heads) is used instead of recomputing it."""
        a = self.attn_input(x, cos, sin) if a is None else a
        h = x + self.self_attn.o_proj(a)
        f = self.ffn_input(h)
        return Taps(a, h, f, h + self.mlp.down_proj(f))

    def attn_half(self, x, cos, sin, cache: KVCache | None = None):
        return x + self.self_attn(self.input_layernorm(x), cos, sin, cache)

    def ffn_half(self, h):
        return h + self.mlp(self.post_attention_layernorm(h))

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        return self.ffn_half(self.attn_half(x, cos, sin, cache))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device="meta").to_empty(device="cpu")
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Embeddings → L decoder layers → RMSNorm → lm_head. `forward(ids)` returns float logits;
    `forward(ids, cache)` runs only the new tokens `ids` after those in the KVCache."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size, False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rope_cache: dict = {}

    def rope(self, T: int, device=None, dtype=torch.float32):
        """cos, sin (T, d) for positions 0..T-1. The table is kept for the longest T asked so far
        (per device and dtype) and sliced: every entry depends on its position only, so a slice
        equals the table computed for T itself."""
        key = (str(device), dtype)
        table = self._rope_cache.get(key)
        if table is None or table[0].shape[0] < T:
            table = rope_cos_sin(T, self.config.head_dim, self.config.rope_theta, device, dtype,
                                 self.config.rope_scaling)
            self._rope_cache = {key: table}
        return table[0][:T], table[1][:T]

    def embed(self, input_ids):
        return self.model.embed_tokens(input_ids)

    def head(self, x):
        return self.lm_head(self.model.norm(x))

    def forward(self, input_ids, cache: KVCache | None = None, last_only: bool = False):
        """Logits (B, T, V) of `input_ids` (B, T); `last_only`: of the last position only (B, 1, V).

        With `cache` the tokens continue those already in it (positions cache.length...), and
        their keys and values are added to it."""
        x = self.embed(input_ids)                                # (B, T, D)
        start = 0 if cache is None else cache.length
        cos, sin = self.rope(start + input_ids.shape[1], x.device, x.dtype)
        cos, sin = cos[start:], sin[start:]
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.head(x[:, -1:] if last_only else x)         # (B, T, V)

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def num_parameters(self) -> int:
        """Parameters counted once (a tied lm_head is not counted twice)."""
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------------------------
# Counting and construction helpers

def layer_param_count(cfg: LlamaConfig, i: int) -> int:
    """Parameters of decoder layer i (projections, biases and its two norms)."""
    D, d = cfg.hidden_size, cfg.head_dim
    H, K, M = cfg.layer_heads[i], cfg.layer_kv_heads[i], cfg.layer_intermediate[i]
    n = D * H * d + 2 * D * K * d + H * d * D + 3 * D * M + 2 * D + 2 * d * cfg.qk_norm
    if cfg.attention_bias:
        n += H * d + 2 * K * d
    n += D * cfg.o_proj_bias + D * cfg.mlp_bias
    return n


def param_count(cfg: LlamaConfig) -> int:
    """Total parameters of a model with this config, without building it."""
    n = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2) + cfg.hidden_size
    return n + sum(layer_param_count(cfg, i) for i in range(cfg.num_hidden_layers))


def build_model(cfg: LlamaConfig, state_dict: dict | None = None) -> LlamaForCausalLM:
    """A model of this config; with `state_dict`, its tensors are used as the parameters (no copy).

    The state dict must have exactly the model's keys (lm_head.weight may be missing when tied).
    """
    model = LlamaForCausalLM(cfg)
    if state_dict is not None:
        sd = dict(state_dict)
        if cfg.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
            sd["lm_head.weight"] = sd.get("model.embed_tokens.weight")
        expected = set(model.state_dict().keys())
        missing, unexpected = expected - set(sd), set(sd) - expected
        if missing or unexpected:
            raise ValueError(f"state dict does not match the config: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        model.load_state_dict(sd, strict=True, assign=True)
        model.tie_weights()
    return model.eval()


def random_init_(model: LlamaForCausalLM, seed: int = 0, std: float = 0.02) -> LlamaForCausalLM:
    """Seeded N(0, std²) weights, unit norms, small random biases (for tiny test models)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model
