"""Validation of untrusted model inputs, in one place for both loaders (HF folders and GGUF files).

A model file is input from outside: it may be corrupt, truncated, hand-edited or hostile. Every
problem becomes ONE line naming the file and the field, raised as `CheckpointError` (a
ValueError), never a traceback from deep inside a parser and never a silently wrong or NaN model:

- `Fields`: typed readers over one JSON object or GGUF metadata table. Integers must be integers
  (a float with a fraction, a boolean or a string is refused; 64.0 is read as 64), within the
  sane maxima of `slimgpt.model.CONFIG_LIMITS`; reals must be finite and > 0 where they divide
  or exponentiate (rope_theta, rms_norm_eps); booleans must be JSON true/false (the string
  "false" is truthy in Python and would silently tie the embeddings).
- `expected_shapes` / `check_weight_shapes`: the tensor names and shapes a config implies, compared
  with what the files actually hold (from their headers) before anything is allocated, so a
  config claiming 10⁹ layers fails on arithmetic, not on memory.
- `check_finite`: every weight tensor is finite (one exact pass per tensor, ~0.07 s for 135M weights).
- `relative_file`: a file named inside a folder (shard index) must stay inside it.
- `check_tokenizer_fits`: the tokenizer's largest id is below the model's vocab_size.
- `check_tokenizer_config` / `check_generation_config`: the fields of tokenizer_config.json and
  generation_config.json that slimgpt uses (special tokens, chat template, add_bos_token, token
  ids) have the types transformers gives them.
- `storage_dtype`: the dtype an input stores its weights in (float32, bfloat16, float16, float64,
  or "quantized" for a GGUF file with quantized tensors).

The structural invariants of a config (divisibility, per-layer maps) are `LlamaConfig.validate`;
the loaders turn its ValueError into a CheckpointError naming the file.
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch

from slimgpt.model import CONFIG_LIMITS, LlamaConfig, _show

REQUIRED = object()


class CheckpointError(ValueError):
    """A model file or folder that cannot be loaded (missing, corrupt, truncated, inconsistent)."""


class Fields:
    """Typed, range-checked reads of one mapping; every error names `source` and the key.

    A key that is absent or null takes its default; a required key (no default) must be present.
    """

    def __init__(self, data, source: str, what: str = "a JSON object", prefix: str = ""):
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected {what}, got {kind_of(data)}")
        self.data, self.source, self.prefix = data, source, prefix

    def fail(self, key: str, msg: str):
        raise CheckpointError(f"{self.source}: {self.prefix}{key} {msg}")

    def sub(self, key: str) -> "Fields":
        """The nested object under `key` (absent or null: empty); errors name `key.field`."""
        return Fields(self.mapping(key), self.source, prefix=f"{self.prefix}{key}.")

    def raw(self, key: str, default=REQUIRED):
        v = self.data.get(key)
        if v is None:
            if default is REQUIRED:
                self.fail(key, "is missing")
            return default
        return v

    def integer(self, key: str, default=REQUIRED, lo: int = 1, hi: int | None = None, limit: str | None = None):
        """An integer in [lo, hi]; hi defaults to CONFIG_LIMITS[limit or key] when there is one."""
        if hi is None:
            hi = CONFIG_LIMITS.get(limit or key)
        if self.data.get(key) is None and default is not REQUIRED:
            return default
        return as_int(self.raw(key), lambda msg: self.fail(key, msg), lo, hi)

    def real(self, key: str, default=REQUIRED, positive: bool = True) -> float:
        if self.data.get(key) is None and default is not REQUIRED:
            return default
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or (positive and v <= 0):
            self.fail(key, f"must be a finite number{' > 0' if positive else ''}, got {_show(v)}")
        return float(v)

    def boolean(self, key: str, default=REQUIRED) -> bool:
        if self.data.get(key) is None and default is not REQUIRED:
            return default
        v = self.raw(key)
        if not isinstance(v, bool):
            self.fail(key, f"must be true or false (a JSON boolean), got {_show(v)}")
        return v

    def string(self, key: str, default=REQUIRED):
        if self.data.get(key) is None and default is not REQUIRED:
            return default
        v = self.raw(key)
        if not isinstance(v, str):
            self.fail(key, f"must be a string, got {_show(v)}")
        return v

    def mapping(self, key: str) -> dict:
        v = self.raw(key, {})
        if not isinstance(v, dict):
            self.fail(key, f"must be an object or null, got {kind_of(v)} {_show(v)}")
        return v

    def token_id(self, key: str):
        """None, a token id >= 0, or a non-empty list of them (the first one is used)."""
        v = self.raw(key, None)
        if isinstance(v, list):
            if not v:
                self.fail(key, "is an empty list (give a token id, a list of token ids, or null)")
            ids = [as_int(x, lambda msg: self.fail(key, f"entries {msg}"), 0, None) for x in v]
            return ids[0]
        return v if v is None else as_int(v, lambda msg: self.fail(key, msg), 0, None)

    def int_list(self, key: str, n: int, lo: int = 0, hi: int | None = None):
        """None (absent) or a list of exactly n integers in [lo, hi]."""
        v = self.raw(key, None)
        if v is None:
            return None
        if not isinstance(v, list) or len(v) != n:
            self.fail(key, f"must be a list of {n} integers (one per layer), got {_show(v)}")
        return [as_int(x, lambda msg, i=i: self.fail(f"{key}[{i}]", msg), lo, hi) for i, x in enumerate(v)]

    def int_lists(self, key: str, n: int, hi: int | None = None):
        """None (absent) or a list of n lists of integers in [0, hi] (slimgpt_layers.kv_map)."""
        v = self.raw(key, None)
        if v is None:
            return None
        if not isinstance(v, list) or len(v) != n:
            self.fail(key, f"must be a list of {n} lists (one per layer), got {_show(v)}")
        out = []
        for i, m in enumerate(v):
            if not isinstance(m, list):
                self.fail(f"{key}[{i}]", f"must be a list of integers, got {_show(m)}")
            out.append([as_int(x, lambda msg, i=i: self.fail(f"{key}[{i}]", f"entries {msg}"), 0, hi) for x in m])
        return out


def as_int(v, fail, lo: int = 1, hi: int | None = None) -> int:
    """v as an int if it is an integer (or an integral float) in [lo, hi]; else fail(message)."""
    rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        fail(f"must be an integer {rng}, got {_show(v)}")
    if not isinstance(v, numbers.Integral):
        if not math.isfinite(v) or not float(v).is_integer():
            fail(f"must be an integer {rng}, got {_show(v)}")
    if v < lo or (hi is not None and v > hi):
        fail(f"must be an integer {rng}, got {_show(v)}")
    return int(v)


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception from a third-party parser as one short line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def kind_of(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, numbers.Number):
        return "a number"
    return type(v).__name__


def make_config(source: str, **kw) -> LlamaConfig:
    """LlamaConfig(**kw), its structural errors as one CheckpointError line naming `source`."""
    try:
        return LlamaConfig(**kw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: inconsistent config ({e})") from None


def relative_file(folder: str, name, source: str, key: str) -> str:
    """`folder/name` for a file named by a model file (a shard index); it must stay in the folder.

    Only the name is checked (no symlink resolution: Hugging Face cache snapshots link their
    files into a blobs/ folder next to them, which is fine)."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{source}: {key} must be a file name, got {_show(name)}")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise CheckpointError(f"{source}: {key} points outside the model folder ({name!r}); "
                              "shard names must be relative paths inside it")
    return os.path.join(folder, name)


# ----------------------------------------------------------------------------------------------
# Weights

def expected_shapes(cfg: LlamaConfig) -> dict:
    """{HF tensor name: shape} of a model of this config, without building it. A tied lm_head is
    not listed (it is the embedding). Matches `build_model(cfg).state_dict()` (tested)."""
    D, d, V = cfg.hidden_size, cfg.head_dim, cfg.vocab_size
    out = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (V, D)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        H, K, M = cfg.layer_heads[i] * d, cfg.layer_kv_heads[i] * d, cfg.layer_intermediate[i]
        out[p + "input_layernorm.weight"] = (D,)
        out[p + "post_attention_layernorm.weight"] = (D,)
        for name, shape in (("q", (H, D)), ("k", (K, D)), ("v", (K, D))):
            out[p + f"self_attn.{name}_proj.weight"] = shape
            if cfg.attention_bias:
                out[p + f"self_attn.{name}_proj.bias"] = shape[:1]
        if cfg.qk_norm:
            out[p + "self_attn.q_norm.weight"] = (d,)
            out[p + "self_attn.k_norm.weight"] = (d,)
        out[p + "self_attn.o_proj.weight"] = (D, H)
        if cfg.o_proj_bias:
            out[p + "self_attn.o_proj.bias"] = (D,)
        out[p + "mlp.gate_proj.weight"] = (M, D)
        out[p + "mlp.up_proj.weight"] = (M, D)
        out[p + "mlp.down_proj.weight"] = (D, M)
        if cfg.mlp_bias:
            out[p + "mlp.down_proj.bias"] = (D,)
    return out


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def check_weight_shapes(cfg: LlamaConfig, found: dict, source: str, where: dict | None = None,
                        config_name: str = "config.json") -> None:
    """Compare the tensors a config implies with those the files hold ({name: shape}, read from
    their headers), before any weight is read or allocated. `where` maps a name to its file.

    A tied config may find lm_head.weight too (it is then compared with the embedding at load)."""
    expected = expected_shapes(cfg)
    found = dict(found)
    if cfg.tie_word_embeddings:
        found.pop("lm_head.weight", None)
    n_exp = sum(_numel(s) for s in expected.values())
    n_found = sum(_numel(s) for s in found.values())
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = sorted(k for k in found if k not in expected)
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    bad = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    for k in bad[:2]:
        at = f" in {os.path.basename(where[k])}" if where and k in where else ""
        problems.append(f"{k} has shape {list(found[k])}{at}, {config_name} implies {list(expected[k])}")
    if len(bad) > 2:
        problems.append(f"{len(bad) - 2} more shape mismatches")
    if problems:
        size = (f"{config_name} describes {n_exp:,} parameters, the weights hold {n_found:,}; "
                if n_exp != n_found else "")
        raise CheckpointError(f"{source}: weights do not match {config_name} ({size}{'; '.join(problems)})")


def _few(names, k: int = 3) -> str:
    more = f" (+{len(names) - k} more)" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def check_finite(name: str, t: torch.Tensor, source: str) -> None:
    """Refuse a tensor holding NaN or ±Inf; the message names the tensor and the file.

    Exact, one pass per tensor, in NumPy for CPU float tensors: ~0.07 s for all of SmolLM2's
    weights. (torch's `isfinite(t).all()` gives the same answer but dispatches each of the 272
    tensors to its thread pool; on a busy 2-core machine that took 3-8 s.)"""
    if not t.is_floating_point():
        return
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.float16):
        a = t.detach().numpy()
        if bool(np.isfinite(a).all()):
            return
        what = "NaN" if bool(np.isnan(a).any()) else "Inf"
    else:
        if bool(torch.isfinite(t).all()):
            return
        what = "NaN" if bool(torch.isnan(t).any()) else "Inf"
    raise CheckpointError(f"{source}: {name} contains {what}")


# ----------------------------------------------------------------------------------------------
# Tokenizers

def tokenizer_size(tok) -> int:
    """1 + the largest token id of a `tokenizers.Tokenizer` (added tokens included), 0 if empty."""
    vocab = tok.get_vocab(with_added_tokens=True)
    return max(vocab.values()) + 1 if vocab else 0


def check_tokenizer_fits(tok, cfg: LlamaConfig, source: str) -> None:
    n = tokenizer_size(tok)
    if n == 0:
        raise CheckpointError(f"{source}: the tokenizer has an empty vocabulary")
    if n > cfg.vocab_size:
        raise CheckpointError(f"{source}: the tokenizer's vocabulary ({n} ids) is larger than the model's "
                              f"vocab_size ({cfg.vocab_size}); tokenizer and model do not belong together")


# ----------------------------------------------------------------------------------------------
# Tokenizer metadata (tokenizer_config.json, generation_config.json) and storage dtype

SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


def check_tokenizer_config(tc, source: str) -> dict:
    """A tokenizer_config.json object, with the fields slimgpt reads type-checked: the special
    tokens (a string, an AddedToken-style object with a "content" string, or null), chat_template
    (a string, or a list of {"name", "template"} objects as transformers writes named templates),
    add_bos_token / add_eos_token (booleans). Other fields are kept as they are."""
    f = Fields(tc, source, "a JSON object of tokenizer settings")
    for name in SPECIAL_TOKENS:
        v = f.raw(name, None)
        if isinstance(v, dict):
            v = v.get("content")
            if not isinstance(v, str):
                f.fail(name, "must be a string or an object with a \"content\" string")
        elif v is not None and not isinstance(v, str):
            f.fail(name, f"must be a string, got {_show(v)}")
    for name in ("add_bos_token", "add_eos_token"):
        f.boolean(name, None)
    ct = f.raw("chat_template", None)
    if isinstance(ct, list):
        for i, t in enumerate(ct):
            if not (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)):
                f.fail(f"chat_template[{i}]", 'must be an object {"name": string, "template": string}')
    elif ct is not None and not isinstance(ct, str):
        f.fail("chat_template", f"must be a string (a Jinja template), got {kind_of(ct)}")
    return tc


def check_generation_config(gc, source: str) -> dict:
    """A generation_config.json object: bos/eos/pad_token_id null, an id or a list of ids."""
    f = Fields(gc, source, "a JSON object of generation settings")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = f.raw(name, None)
        for x in (v if isinstance(v, list) else [v] if v is not None else []):
            as_int(x, lambda msg: f.fail(name, msg if not isinstance(v, list) else f"entries {msg}"), 0, None)
    return gc


def special_token(tc: dict, name: str):
    """tokenizer_config's `name` ("bos_token", ...) as a string, or None."""
    v = tc.get(name)
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


STORAGE_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                  torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                  torch.float64: "float64"}


def storage_dtype(counts: dict) -> str:
    """The dtype holding most of an input's parameters, from {dtype: number of values} (keys as
    in STORAGE_DTYPES, anything else counts as "quantized"); any quantized tensor makes the
    whole input "quantized" (it loads as float32, which is what a pruned copy is then saved in)."""
    named: dict = {}
    for k, n in counts.items():
        name = STORAGE_DTYPES.get(k, "quantized")
        named[name] = named.get(name, 0) + n
    if not named:
        return "float32"
    if "quantized" in named:
        return "quantized"
    return max(sorted(named), key=lambda k: named[k])
