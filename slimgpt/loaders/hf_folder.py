"""Load a Hugging Face-style folder (config.json + safetensors) without transformers.

Handles LLaMA, Mistral and Qwen2 configs (`model_type` llama | mistral | qwen2), single-file
`model.safetensors` or a sharded `model.safetensors.index.json`, tied or untied embeddings, and
slimgpt's own pruned checkpoints (the same layout plus per-layer shapes in config.json under
"slimgpt_layers"). The tokenizer is read from tokenizer.json when present.

Not supported (a clear error rather than a silently wrong model): rope scaling (LLaMA-3.1 style),
other architectures. Mistral's sliding window is ignored, which is exact for sequences shorter than
the window (4096+).
"""
from __future__ import annotations

import json
import os

import torch

from slimgpt.model import LlamaConfig, build_model

SUPPORTED = ("llama", "mistral", "qwen2", "slimgpt-llama")


class CheckpointError(ValueError):
    """A model folder that cannot be loaded (missing, corrupt, truncated or inconsistent)."""


def read_config(folder: str) -> LlamaConfig:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder}: no config.json (not a model folder)")
    try:
        with open(path, encoding="utf-8") as f:
            c = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from e
    mt = c.get("model_type")
    if mt not in SUPPORTED:
        raise CheckpointError(f"{path}: model_type {mt!r} is not supported (supported: {', '.join(SUPPORTED)})")
    for scaling in (c.get("rope_scaling") or {}, c.get("rope_parameters") or {}):
        if scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise CheckpointError(f"{path}: rope scaling {scaling!r} is not supported")
    theta = c.get("rope_theta", (c.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    try:
        n_head = int(c["num_attention_heads"])
        layers = c.get("slimgpt_layers") or {}
        cfg = LlamaConfig(
            vocab_size=int(c["vocab_size"]),
            hidden_size=int(c["hidden_size"]),
            num_hidden_layers=int(c["num_hidden_layers"]),
            num_attention_heads=n_head,
            num_key_value_heads=int(c.get("num_key_value_heads") or n_head),
            intermediate_size=int(c["intermediate_size"]),
            head_dim=c.get("head_dim"),
            rope_theta=float(theta),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            attention_bias=bool(c.get("attention_bias", mt == "qwen2")),
            o_proj_bias=bool(c.get("o_proj_bias", False)),
            mlp_bias=bool(c.get("mlp_bias", False)),
            max_position_embeddings=int(c.get("max_position_embeddings", 2048)),
            bos_token_id=c.get("bos_token_id"),
            eos_token_id=c.get("eos_token_id") if not isinstance(c.get("eos_token_id"), list) else c["eos_token_id"][0],
            layer_heads=layers.get("heads"),
            layer_kv_heads=layers.get("kv_heads"),
            layer_kv_map=layers.get("kv_map"),
            layer_intermediate=layers.get("intermediate"),
            architecture=c.get("slimgpt_architecture", mt),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: inconsistent config ({e})") from e
    return cfg


def hf_config_dict(cfg: LlamaConfig) -> dict:
    """config.json contents for a (possibly pruned) model of this class."""
    d = {
        "model_type": "llama" if cfg.is_uniform else "slimgpt-llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "intermediate_size": cfg.intermediate_size,
        "head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": cfg.attention_bias,
        "o_proj_bias": cfg.o_proj_bias, "mlp_bias": cfg.mlp_bias,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": "silu",
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "torch_dtype": "float32", "slimgpt_architecture": cfg.architecture,
    }
    if not cfg.is_uniform or cfg.o_proj_bias or cfg.mlp_bias:
        d["slimgpt_layers"] = {"heads": cfg.layer_heads, "kv_heads": cfg.layer_kv_heads,
                               "kv_map": cfg.layer_kv_map, "intermediate": cfg.layer_intermediate}
        d["model_type"] = "slimgpt-llama"
    return d


def read_safetensors(folder: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable shard index ({e})") from e
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    sd = {}
    for fn in files:
        path = os.path.join(folder, fn)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: shard listed in the index is missing")
        try:
            part = load_file(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
        sd.update(part)
    return sd


def load_hf_folder(folder: str):
    """(model, tokenizer or None, config) from a Hugging Face-style folder, weights in float32."""
    cfg = read_config(folder)
    sd = {k: v.float() for k, v in read_safetensors(folder).items()}
    # HF stores rotary buffers in some old checkpoints; they are recomputed here.
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    if not cfg.tie_word_embeddings and "lm_head.weight" not in sd:
        raise CheckpointError(f"{folder}: untied config but no lm_head.weight")
    try:
        model = build_model(cfg, sd)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: weights do not match config.json ({e})") from e
    tok = None
    tj = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(tj):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tj)
    return model, tok, cfg
