"""Write a Hugging Face transformers folder from a slimgpt checkpoint.

Two layouts (docs/export.md):

- **plain** — every layer has the dense shape, HF's contiguous query→KV grouping and no
  o_proj/down_proj bias: a stock `LlamaForCausalLM` folder (model_type "llama"), or
  `Qwen2ForCausalLM` ("qwen2") when q/k/v carry biases, `Qwen3ForCausalLM` ("qwen3") with
  Qwen3's q/k norms, `MistralForCausalLM` ("mistral") for a Mistral source. No custom code; any
  LLaMA-family tool reads it. LLaMA-3.x rope scaling goes in `rope_parameters` (rope_type llama3).
- **per-layer** — anything else (pruned heads, KV heads, FFN widths, uneven query→KV maps,
  output biases): model_type "slimgpt_llama" with transformers' own `per_layer_config` (one
  entry per layer: `num_attention_heads`, `num_key_value_heads`, `intermediate_size` and, for an
  uneven layer, `kv_map`), plus `configuration_slimgpt_llama.py` / `modeling_slimgpt_llama.py`
  (auto_map; load with `trust_remote_code=True`), which build each layer from transformers'
  Llama classes with the layer's sizes. Needs transformers >= 5.14 (per_layer_config).

Both carry model.safetensors (HF parameter names; a tied lm_head is stored once, as the
embedding), config.json, generation_config.json and, when the checkpoint has a tokenizer,
tokenizer.json + tokenizer_config.json (special tokens, chat template when known).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from slimgpt.export.common import json_bytes

CODE_DIR = Path(__file__).resolve().parent / "hf_code"
CODE_FILES = ("configuration_slimgpt_llama.py", "modeling_slimgpt_llama.py")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def standard_kv_map(heads: int, kv_heads: int) -> list[int] | None:
    """HF's repeat_kv grouping (query head h reads KV head h // (H / K)), or None if K does not divide H."""
    if heads == 0 or kv_heads == 0 or heads % kv_heads:
        return None
    rep = heads // kv_heads
    return [h // rep for h in range(heads)]


def has_standard_map(cfg, i: int) -> bool:
    return cfg.layer_kv_map[i] == standard_kv_map(cfg.layer_heads[i], cfg.layer_kv_heads[i])


def is_plain(cfg) -> bool:
    """True when a stock HF LLaMA-family class holds the model exactly."""
    return (cfg.is_uniform and all(has_standard_map(cfg, i) for i in range(cfg.num_hidden_layers))
            and not cfg.o_proj_bias and not cfg.mlp_bias)


def family(cfg) -> str | None:
    """llama | qwen2 | qwen3 | mistral: the HF family of a plain export (None: no stock class fits)."""
    if cfg.qk_norm:
        return None if cfg.attention_bias else "qwen3"     # Qwen3's attention_bias would cover o_proj too
    if cfg.attention_bias:
        return "qwen2" if cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size else None
    if cfg.architecture == "mistral":
        return "mistral"
    return "llama"


def rope_parameters(cfg) -> dict:
    """transformers 5's rope_parameters (default RoPE, or LLaMA-3.x's llama3 frequency scaling)."""
    d = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        d.update(cfg.rope_scaling)
        d["rope_type"] = "llama3"
    return d


def _common_config(cfg, meta: dict, dtype: str) -> dict:
    ids = meta.get("ids", {})
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "intermediate_size": cfg.intermediate_size,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": rope_parameters(cfg),
        "rope_theta": cfg.rope_theta,      # for readers that predate rope_parameters
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": ids.get("bos", cfg.bos_token_id),
        "eos_token_id": ids.get("eos", cfg.eos_token_id),
        "pad_token_id": ids.get("pad"),
        "dtype": dtype,
    }


def hf_config(cfg, meta: dict, dtype: str) -> tuple[dict, str]:
    """(config.json contents, layout name) for a slimgpt config."""
    d = _common_config(cfg, meta, dtype)
    if cfg.rope_scaling is not None:
        d["rope_scaling"] = dict(rope_parameters(cfg))     # the pre-rope_parameters spelling
    if is_plain(cfg):
        fam = family(cfg)
        if fam == "llama":
            d.update(model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=False, mlp_bias=False,
                     pretraining_tp=1)
            return d, "plain-llama"
        if fam == "qwen2":
            d.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=False,
                     sliding_window=None, max_window_layers=cfg.num_hidden_layers,
                     layer_types=["full_attention"] * cfg.num_hidden_layers)
            return d, "plain-qwen2"
        if fam == "qwen3":
            d.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], attention_bias=False,
                     use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_hidden_layers,
                     layer_types=["full_attention"] * cfg.num_hidden_layers)
            return d, "plain-qwen3"
        if fam == "mistral":
            d.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
            return d, "plain-mistral"
    L = cfg.num_hidden_layers
    width = len(str(max(L - 1, 0)))
    per_layer = {}
    for i in range(L):
        entry = {"num_attention_heads": cfg.layer_heads[i], "num_key_value_heads": cfg.layer_kv_heads[i],
                 "intermediate_size": cfg.layer_intermediate[i]}
        if cfg.layer_heads[i] and not has_standard_map(cfg, i):
            entry["kv_map"] = list(cfg.layer_kv_map[i])
        per_layer[str(i).zfill(width)] = entry
    d.update(
        model_type="slimgpt_llama",
        architectures=["SlimGPTLlamaForCausalLM"],
        auto_map={"AutoConfig": "configuration_slimgpt_llama.SlimGPTLlamaConfig",
                  "AutoModelForCausalLM": "modeling_slimgpt_llama.SlimGPTLlamaForCausalLM"},
        attention_bias=False, mlp_bias=False, pretraining_tp=1,
        qkv_bias=cfg.attention_bias, o_proj_bias=cfg.o_proj_bias, down_proj_bias=cfg.mlp_bias,
        qk_norm=cfg.qk_norm, kv_map=None,
        slimgpt_family=family(cfg) or ("qwen3" if cfg.qk_norm else "qwen2"),
        per_layer_config=per_layer,
    )
    return d, "per-layer"


def tokenizer_config(cfg, meta: dict) -> dict:
    t = meta.get("tokens", {})
    d = {
        # transformers 5 loads tokenizer.json as is with this class (no re-derived pre-tokenizer)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": bool(meta.get("add_bos_token") or False),
        "add_eos_token": bool(meta.get("add_eos_token") or False),
    }
    for name in ("bos", "eos", "pad", "unk"):
        if name in t:
            d[f"{name}_token"] = t[name]
    if meta.get("chat_template"):
        d["chat_template"] = meta["chat_template"]
    return d


def generation_config(cfg, meta: dict) -> dict | None:
    g = dict(meta.get("generation_config") or {})
    g.pop("transformers_version", None)
    ids = meta.get("ids", {})
    for key, name, fallback in (("bos_token_id", "bos", cfg.bos_token_id), ("eos_token_id", "eos", cfg.eos_token_id),
                                ("pad_token_id", "pad", None)):
        v = ids.get(name, fallback)
        if key not in g and v is not None:
            g[key] = v
    return g or None


def state_dict(model, dtype: str) -> dict:
    """HF-named tensors (lm_head dropped when tied), contiguous, in `dtype`."""
    td = TORCH_DTYPES[dtype]
    sd = {k: v.detach().to("cpu", td).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def write_hf(source, out: Path, dtype: str, log=None) -> dict:
    from safetensors.torch import save_file

    log = log or (lambda s: None)
    cfg, meta = source.config, source.meta
    conf, layout = hf_config(cfg, meta, dtype)
    out = Path(out)
    save_file(state_dict(source.model, dtype), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_bytes(json_bytes(conf))
    gen = generation_config(cfg, meta)
    if gen:
        (out / "generation_config.json").write_bytes(json_bytes(gen))
    if source.tokenizer is not None:
        source.tokenizer.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_bytes(json_bytes(tokenizer_config(cfg, meta)))
    if layout == "per-layer":
        for f in CODE_FILES:
            shutil.copyfile(CODE_DIR / f, out / f)
    log(f"hf: {layout} layout ({conf['model_type']}), {dtype}")
    return {"layout": layout, "model_type": conf["model_type"], "trust_remote_code": layout == "per-layer",
            "params": source.model.num_parameters(), "metadata_sources": meta.get("sources", []),
            "chat_template": bool(meta.get("chat_template"))}
