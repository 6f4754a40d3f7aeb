"""Load a Hugging Face-style folder (config.json + safetensors) without transformers.

Handles LLaMA (incl. LLaMA-3.x `rope_type: llama3` scaling), Mistral, Qwen2 and Qwen3 configs
(`model_type` llama | mistral | qwen2 | qwen3), single-file `model.safetensors` or a sharded
`model.safetensors.index.json`, tied or untied embeddings, and slimgpt's own pruned checkpoints
(the same layout plus per-layer shapes in config.json under "slimgpt_layers"). The tokenizer is
read from tokenizer.json when present; tokenizer_config.json (special tokens, chat template,
add_bos_token, model_max_length; a chat_template.jinja / chat_template.json or
special_tokens_map.json beside it is folded in) and generation_config.json are kept as the
tokenizer metadata a checkpoint carries on.

Not supported (a clear error rather than a silently wrong model): rope scaling other than
llama3 (linear, dynamic, yarn, longrope, ...), activations other than SiLU, sliding-window
attention switched on (Qwen2/Qwen3 `use_sliding_window: true`), other architectures. Mistral's
sliding window is ignored, which is exact for sequences shorter than the window (4096+).

Every field, file name and tensor is validated (slimgpt/loaders/validate.py): a bad folder raises
one `CheckpointError` line naming the file and the field or tensor. The order keeps it cheap:
config.json → tokenizer.json → the safetensors headers (names, shapes, dtypes) checked against
the config → only then the weights, each checked for NaN/Inf as it is read.
"""
from __future__ import annotations

import json
import os

import torch

from slimgpt.loaders.validate import (CONFIG_LIMITS, SPECIAL_TOKENS, CheckpointError, Fields, check_finite,
                                      check_generation_config, check_tokenizer_config, check_tokenizer_fits,
                                      check_weight_shapes, kind_of, make_config, one_line, relative_file,
                                      storage_dtype)
from slimgpt.model import ROPE_SCALING_KEYS, LlamaConfig, build_model

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "slimgpt-llama")
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")

__all__ = ["CheckpointError", "read_config", "hf_config_dict", "read_safetensors", "load_hf_folder",
           "read_hf_folder", "read_tokenizer_meta", "SUPPORTED"]


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable {what} ({one_line(e)})") from None


def read_config(folder: str) -> LlamaConfig:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder}: no config.json (not a model folder)")
    f = Fields(_read_json(path, "config"), path, "a JSON object of model settings")
    mt = f.raw("model_type", None)
    if not isinstance(mt, str) or mt not in SUPPORTED:
        raise CheckpointError(f"{path}: model_type {mt!r} is not supported (supported: {', '.join(SUPPORTED)})")
    rope_parameters = f.sub("rope_parameters")
    scaling = _rope_scaling(f)
    if mt in ("qwen2", "qwen3") and f.boolean("use_sliding_window", False):
        raise CheckpointError(f"{path}: use_sliding_window is true; sliding-window attention is not supported")
    if f.raw("quantization_config", None) is not None:
        raise CheckpointError(f"{path}: quantization_config is set; quantized checkpoints (GPTQ, AWQ, bitsandbytes) "
                              "are not supported (use the float16/bfloat16/float32 weights)")
    act = f.string("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise CheckpointError(f"{path}: hidden_act {act!r} is not supported (LLaMA-family models use silu)")
    theta = f.real("rope_theta", None)
    if theta is None:
        theta = rope_parameters.real("rope_theta", 10000.0)
    n_layers = f.integer("num_hidden_layers")
    n_head = f.integer("num_attention_heads")
    layers = f.sub("slimgpt_layers")
    return make_config(
        path,
        vocab_size=f.integer("vocab_size"),
        hidden_size=f.integer("hidden_size"),
        num_hidden_layers=n_layers,
        num_attention_heads=n_head,
        num_key_value_heads=f.integer("num_key_value_heads", n_head),
        intermediate_size=f.integer("intermediate_size"),
        head_dim=f.integer("head_dim", None, lo=2),
        rope_theta=theta,
        rms_norm_eps=f.real("rms_norm_eps", 1e-6),
        tie_word_embeddings=f.boolean("tie_word_embeddings", False),
        attention_bias=f.boolean("attention_bias", mt == "qwen2"),
        qk_norm=f.boolean("qk_norm", mt == "qwen3"),
        rope_scaling=scaling,
        o_proj_bias=f.boolean("o_proj_bias", False),
        mlp_bias=f.boolean("mlp_bias", False),
        max_position_embeddings=f.integer("max_position_embeddings", 2048),
        bos_token_id=f.token_id("bos_token_id"),
        eos_token_id=f.token_id("eos_token_id"),
        layer_heads=layers.int_list("heads", n_layers, 0, CONFIG_LIMITS["num_attention_heads"]),
        layer_kv_heads=layers.int_list("kv_heads", n_layers, 0, CONFIG_LIMITS["num_key_value_heads"]),
        layer_kv_map=layers.int_lists("kv_map", n_layers, CONFIG_LIMITS["num_key_value_heads"]),
        layer_intermediate=layers.int_list("intermediate", n_layers, 0, CONFIG_LIMITS["intermediate_size"]),
        architecture=f.string("slimgpt_architecture", mt),
    )


def _rope_scaling(f: Fields):
    """The rope scaling of config.json (`rope_scaling`, or transformers 5's `rope_parameters`):
    None for none / "default", the checked llama3 parameters, or one line refusing the rest."""
    for key in ("rope_scaling", "rope_parameters"):
        scaling = f.mapping(key)
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            continue
        if kind != "llama3":
            raise CheckpointError(f"{f.source}: {key} {scaling!r} is not supported (supported rope scaling: "
                                  "llama3, or none)")
        sub = f.sub(key)
        out = {"rope_type": "llama3"}
        for name in ROPE_SCALING_KEYS[:3]:
            out[name] = sub.real(name)
        out["original_max_position_embeddings"] = sub.integer("original_max_position_embeddings",
                                                              limit="max_position_embeddings")
        return out
    return None


def hf_config_dict(cfg: LlamaConfig, dtype: str = "float32") -> dict:
    """config.json contents for a (possibly pruned) model of this class whose weights are stored
    in `dtype` (recorded as torch_dtype, as transformers does)."""
    qwen3 = cfg.qk_norm
    d = {
        "model_type": ("qwen3" if qwen3 else "llama") if cfg.is_uniform else "slimgpt-llama",
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "intermediate_size": cfg.intermediate_size,
        "head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": cfg.attention_bias,
        "o_proj_bias": cfg.o_proj_bias, "mlp_bias": cfg.mlp_bias,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": "silu",
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "torch_dtype": dtype, "slimgpt_architecture": cfg.architecture,
    }
    if qwen3:
        d["qk_norm"] = True
    if cfg.rope_scaling is not None:
        d["rope_scaling"] = dict(cfg.rope_scaling)
    if not cfg.is_uniform or cfg.o_proj_bias or cfg.mlp_bias:
        d["slimgpt_layers"] = {"heads": cfg.layer_heads, "kv_heads": cfg.layer_kv_heads,
                               "kv_map": cfg.layer_kv_map, "intermediate": cfg.layer_intermediate}
        d["model_type"] = "slimgpt-llama"
    return d


def weight_files(folder: str) -> tuple[list[str], dict | None]:
    """The safetensors files of a folder and, when sharded, the index's {tensor: file path}."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        f = Fields(_read_json(index, "shard index"), index, "a JSON object with a weight_map")
        wm = f.raw("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise CheckpointError(f"{index}: weight_map must be a non-empty object "
                                  f"{{tensor name: file name}}, got {kind_of(wm) if wm else 'an empty one'}")
        where = {name: relative_file(folder, fn, index, f"weight_map[{name!r}]") for name, fn in wm.items()}
        files = sorted(set(where.values()))
        for path in files:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: shard listed in the index is missing")
        return files, where
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return [os.path.join(folder, "model.safetensors")], None
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def read_headers(files: list[str], index: dict | None = None) -> tuple[dict, dict]:
    """({tensor: shape}, {tensor: file}) from the safetensors headers only (nothing is read or
    allocated). Refuses corrupt or truncated files, non-float tensors, duplicates across shards and
    index entries that their file does not hold."""
    from safetensors import safe_open

    shapes, where = {}, {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as st:
                for k in st.keys():
                    if k.endswith("rotary_emb.inv_freq"):     # old HF checkpoints store it; recomputed
                        continue
                    sl = st.get_slice(k)
                    dtype = sl.get_dtype()
                    if dtype not in FLOAT_DTYPES:
                        raise CheckpointError(f"{path}: {k} has dtype {dtype}; model weights must be "
                                              f"floating point ({', '.join(FLOAT_DTYPES)})")
                    if k in where:
                        raise CheckpointError(f"{path}: {k} is also in {os.path.basename(where[k])} "
                                              "(a tensor must be in one shard)")
                    shapes[k], where[k] = tuple(sl.get_shape()), path
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({one_line(e)})") from None
    if index is not None:
        for k, path in index.items():
            if not k.endswith("rotary_emb.inv_freq") and where.get(k) != path:
                raise CheckpointError(f"{path}: the shard index lists {k} in this file, but it "
                                      + ("is not there" if k not in where else f"is in {os.path.basename(where[k])}"))
    return shapes, where


def read_safetensors(folder: str, cfg: LlamaConfig | None = None, dtype_counts: dict | None = None) -> dict:
    """{name: float32 tensor} of a folder's weights, every tensor checked for NaN/Inf. With `cfg`,
    names and shapes are checked against it from the headers before any weight is read. With
    `dtype_counts`, {stored torch dtype: number of values} is added to it."""
    from safetensors import safe_open

    files, index = weight_files(folder)
    shapes, where = read_headers(files, index)
    if cfg is not None:
        if not cfg.tie_word_embeddings and "lm_head.weight" not in shapes:
            raise CheckpointError(f"{folder}: config.json has tie_word_embeddings false but the weights "
                                  "have no lm_head.weight")
        check_weight_shapes(cfg, shapes, folder, where)
    sd = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as st:
                for k in st.keys():
                    if k in shapes and where[k] == path:
                        t = st.get_tensor(k)
                        if dtype_counts is not None:
                            dtype_counts[t.dtype] = dtype_counts.get(t.dtype, 0) + t.numel()
                        sd[k] = t if t.dtype == torch.float32 else t.float()
                        check_finite(k, sd[k], path)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({one_line(e)})") from None
    return sd


def load_hf_folder(folder: str):
    """(model, tokenizer or None, config) from a Hugging Face-style folder, weights in float32."""
    r = read_hf_folder(folder)
    return r["model"], r["tokenizer"], r["config"]


def read_hf_folder(folder: str) -> dict:
    """Everything slimgpt keeps of a folder: {"model" (float32), "tokenizer" (or None), "config",
    "source_dtype" (what the weights are stored in), "tokenizer_config", "generation_config"
    (dicts, empty when the folder has none)}."""
    cfg = read_config(folder)
    tok = read_tokenizer(folder, cfg)
    tokenizer_config, generation_config = read_tokenizer_meta(folder)
    counts: dict = {}
    sd = read_safetensors(folder, cfg, counts)
    if cfg.tie_word_embeddings and "lm_head.weight" in sd:
        if not torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"]):
            raise CheckpointError(f"{folder}: config.json says tie_word_embeddings true, but the weights hold an "
                                  "lm_head.weight that differs from model.embed_tokens.weight")
        del sd["lm_head.weight"]
    try:
        model = build_model(cfg, sd)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: weights do not match config.json ({one_line(e)})") from None
    return {"model": model, "tokenizer": tok, "config": cfg, "source_dtype": storage_dtype(counts),
            "tokenizer_config": tokenizer_config, "generation_config": generation_config}


def read_tokenizer_meta(folder: str) -> tuple[dict, dict]:
    """(tokenizer_config, generation_config) of a folder, each {} when absent.

    tokenizer_config.json is kept whole (its special tokens, chat_template, add_bos_token and
    model_max_length are what slimgpt and the exporters read); a chat template stored beside it
    (chat_template.jinja, or chat_template.json {"chat_template": ...}, as newer transformers
    save it) and special tokens only in special_tokens_map.json are folded into it."""
    def optional(name, what):
        path = os.path.join(folder, name)
        return (_read_json(path, what), path) if os.path.isfile(path) else (None, path)

    tc, path = optional("tokenizer_config.json", "tokenizer config")
    tc = dict(check_tokenizer_config(tc, path)) if tc is not None else {}
    jinja = os.path.join(folder, "chat_template.jinja")
    if tc.get("chat_template") is None and os.path.isfile(jinja):
        try:
            with open(jinja, encoding="utf-8") as f:
                tc["chat_template"] = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{jinja}: unreadable chat template ({one_line(e)})") from None
    ct, path = optional("chat_template.json", "chat template")
    if tc.get("chat_template") is None and ct is not None:
        tc["chat_template"] = Fields(ct, path, 'a JSON object {"chat_template": ...}').raw("chat_template")
        check_tokenizer_config(tc, path)
    stm, path = optional("special_tokens_map.json", "special tokens map")
    if stm is not None:
        check_tokenizer_config({k: v for k, v in Fields(stm, path).data.items() if k in SPECIAL_TOKENS}, path)
        for name in SPECIAL_TOKENS:
            if tc.get(name) is None and stm.get(name) is not None:
                tc[name] = stm[name]
    gc, path = optional("generation_config.json", "generation config")
    gc = dict(check_generation_config(gc, path)) if gc is not None else {}
    return tc, gc


def read_tokenizer(folder: str, cfg: LlamaConfig):
    """The folder's tokenizer.json as a `tokenizers.Tokenizer` (None when absent), checked to fit
    the model's vocabulary."""
    tj = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(tj):
        return None
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_file(tj)
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise CheckpointError(f"{tj}: unreadable tokenizer ({one_line(e)})") from None
    check_tokenizer_fits(tok, cfg, tj)
    return tok
