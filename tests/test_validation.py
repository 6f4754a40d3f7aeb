"""Hostile model inputs: every damaged config, index, tokenizer, weight file or GGUF file is ONE
CheckpointError line naming the file and the field or tensor; bad calibration is one
CalibrationError line. One table row per hostile input (damage → expected message fragment).
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from slimgpt.checkpoint import save_pretrained
from slimgpt.loaders import CheckpointError, ModelNotFoundError, load_model
from slimgpt.loaders.gguf_loader import load_gguf
from slimgpt.loaders.tiny import TINY_CONFIGS, byte_tokenizer, tiny_config, tiny_model
from slimgpt.loaders.hf_folder import hf_config_dict
from slimgpt.loaders.validate import expected_shapes
from slimgpt.model import build_model
from slimgpt.testing import assert_close, quiet_prune
from slimgpt.textdata import CalibrationError, calibration_windows, check_calibration

pytestmark = pytest.mark.usefixtures("no_grad")
IDS = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(5))
DROP = object()


# ----------------------------------------------------------------------------------------------
# Bases: tiny models written once per session, copied per test

@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for name in ("tiny-llama", "tiny-hetero"):
        out[name] = save_pretrained(tiny_model(name, seed=3), root / name, byte_tokenizer())
    out["sharded"] = _write_sharded(tiny_model("tiny-gqa", seed=3), root / "sharded")
    return out


def _write_sharded(model, folder, shards=2):
    """A Mistral-typed HF folder in `shards` safetensors files + model.safetensors.index.json
    (tests run with --import-mode=importlib, so test_loaders' _write_hf cannot be imported)."""
    os.makedirs(folder)
    c = dict(hf_config_dict(model.config), model_type="mistral")
    (folder / "config.json").write_text(json.dumps(c))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()
          if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    keys, wm = sorted(sd), {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: sd[k] for k in keys[s::shards]}, str(folder / fn))
        wm.update({k: fn for k in keys[s::shards]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return str(folder)


def _copy(bases, base, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(bases[base], dst)
    return dst


def cfg(**changes):
    """Damage: set (or with DROP, delete) config.json keys; dotted keys reach into objects."""
    def damage(folder):
        c = json.loads((folder / "config.json").read_text())
        for key, v in changes.items():
            *outer, last = key.split("__")
            d = c
            for k in outer:
                d = d[k]
            if v is DROP:
                d.pop(last, None)
            else:
                d[last] = v
        (folder / "config.json").write_text(json.dumps(c))
    return damage


def text(filename, content):
    def damage(folder):
        (folder / filename).write_text(content)
    return damage


def weights(fn):
    """Damage: rewrite model.safetensors through fn(state dict) (in place)."""
    def damage(folder):
        sd = load_file(str(folder / "model.safetensors"))
        fn(sd)
        save_file(sd, str(folder / "model.safetensors"))
    return damage


def index(fn):
    def damage(folder):
        p = folder / "model.safetensors.index.json"
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))
    return damage


def tokenizer(build):
    def damage(folder):
        build().save(str(folder / "tokenizer.json"))
    return damage


def _big_tokenizer():
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(byte_tokenizer().to_str())
    tok.add_tokens([f"<extra_{i}>" for i in range(44)])           # ids 256..299 > vocab_size 256
    return tok


def _empty_tokenizer():
    from tokenizers import Tokenizer, models
    return Tokenizer(models.BPE(vocab={}, merges=[]))


def _set(key, value):
    def fn(sd):
        t = sd[key].clone()
        t.view(-1)[3] = value
        sd[key] = t
    return fn


def _untie(sd):
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 1.0


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}

FOLDER_CASES = [
    # defect 1: NaN models
    ("rope_theta_zero", "tiny-llama", cfg(rope_theta=0), "config.json: rope_theta must be a finite number > 0"),
    ("rope_theta_negative", "tiny-llama", cfg(rope_theta=-10000.0), "config.json: rope_theta must be a finite"),
    ("rope_theta_nan", "tiny-llama", cfg(rope_theta=float("nan")), "config.json: rope_theta must be a finite"),
    ("rope_theta_inf", "tiny-llama", cfg(rope_theta=float("inf")), "config.json: rope_theta must be a finite"),
    ("rope_theta_string", "tiny-llama", cfg(rope_theta="1e4"), "config.json: rope_theta must be a finite"),
    ("rope_parameters_theta_zero", "tiny-llama", cfg(rope_theta=DROP, rope_parameters={"rope_theta": 0}),
     "config.json: rope_parameters.rope_theta must be a finite number > 0"),
    ("eps_negative", "tiny-llama", cfg(rms_norm_eps=-1e-6), "config.json: rms_norm_eps must be a finite number > 0"),
    ("eps_nan", "tiny-llama", cfg(rms_norm_eps=float("nan")), "config.json: rms_norm_eps must be a finite"),
    ("eps_zero", "tiny-llama", cfg(rms_norm_eps=0), "config.json: rms_norm_eps must be a finite"),
    ("max_position_negative", "tiny-llama", cfg(max_position_embeddings=-1),
     "config.json: max_position_embeddings must be an integer in [1,"),
    ("weight_nan", "tiny-llama", weights(_set("model.layers.3.mlp.up_proj.weight", float("nan"))),
     "model.safetensors: model.layers.3.mlp.up_proj.weight contains NaN"),
    ("weight_inf", "tiny-llama", weights(_set("model.embed_tokens.weight", float("-inf"))),
     "model.safetensors: model.embed_tokens.weight contains Inf"),
    ("weight_nan_in_shard", "sharded", lambda f: [weights_shard(f, n, _set("model.norm.weight", float("nan")))
                                                  for n in _shards(f)],
     "model.norm.weight contains NaN"),
    # defect 2: silently wrong models (booleans)
    ("tie_string_false", "tiny-llama", cfg(tie_word_embeddings="false"),
     "config.json: tie_word_embeddings must be true or false"),
    ("tie_number", "tiny-llama", cfg(tie_word_embeddings=0), "config.json: tie_word_embeddings must be true or false"),
    ("attention_bias_string", "tiny-llama", cfg(attention_bias="true"), "config.json: attention_bias must be true"),
    ("tied_but_lm_head_differs", "tiny-llama", lambda f: (cfg(tie_word_embeddings=True)(f), weights(_untie)(f)),
     "tie_word_embeddings true, but the weights hold an lm_head.weight that differs"),
    ("hidden_act_gelu", "tiny-llama", cfg(hidden_act="gelu"), "config.json: hidden_act 'gelu' is not supported"),
    ("quantized", "tiny-llama", cfg(quantization_config={"quant_method": "gptq", "bits": 4}),
     "config.json: quantization_config is set"),
    # defect 3: tracebacks → one line (config shape and types)
    ("config_list", "tiny-llama", text("config.json", "[]"),
     "config.json: expected a JSON object of model settings, got a list"),
    ("config_null", "tiny-llama", text("config.json", "null"),
     "config.json: expected a JSON object of model settings, got null"),
    ("config_string", "tiny-llama", text("config.json", '"llama"'), "config.json: expected a JSON object"),
    ("config_truncated", "tiny-llama", text("config.json", '{"model_type": "lla'), "config.json: unreadable config"),
    ("config_not_utf8", "tiny-llama", lambda f: (f / "config.json").write_bytes(b'{"a": "\xff"}'),
     "config.json: unreadable config"),
    ("model_type_list", "tiny-llama", cfg(model_type=["llama"]), "config.json: model_type ['llama'] is not supported"),
    ("slimgpt_layers_list", "tiny-hetero", cfg(slimgpt_layers=[[8, 5, 3]]),
     "config.json: slimgpt_layers must be an object or null, got a list"),
    ("slimgpt_layers_short", "tiny-hetero", cfg(slimgpt_layers__heads=[8, 5]),
     "config.json: slimgpt_layers.heads must be a list of 3 integers"),
    ("slimgpt_layers_float", "tiny-hetero", cfg(slimgpt_layers__heads=[8, 5.5, 3]),
     "config.json: slimgpt_layers.heads[1] must be an integer"),
    ("slimgpt_layers_string", "tiny-hetero", cfg(slimgpt_layers__intermediate=[96, "70", 33]),
     "config.json: slimgpt_layers.intermediate[1] must be an integer"),
    ("slimgpt_layers_kv_map_not_list", "tiny-hetero", cfg(slimgpt_layers__kv_map=[[0] * 8, 3, [0, 0, 0]]),
     "config.json: slimgpt_layers.kv_map[1] must be a list"),
    ("slimgpt_layers_kv_map_range", "tiny-hetero", cfg(slimgpt_layers__kv_map=[[0] * 8, [0, 1, 1, 2, 2], [0, 0, 0]]),
     "config.json: inconsistent config (layer 0: every KV head must serve"),
    ("rope_scaling_string", "tiny-llama", cfg(rope_scaling="linear"),
     "config.json: rope_scaling must be an object or null, got a string"),
    ("rope_scaling_yarn", "tiny-llama", cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
     "config.json: rope_scaling"),
    ("rope_scaling_linear", "tiny-llama", cfg(rope_scaling={"type": "linear", "factor": 2.0}),
     "config.json: rope_scaling {'type': 'linear', 'factor': 2.0} is not supported (supported rope scaling: llama3"),
    ("rope_parameters_dynamic", "tiny-llama", cfg(rope_parameters={"rope_type": "dynamic", "factor": 2.0}),
     "config.json: rope_parameters {'rope_type': 'dynamic', 'factor': 2.0} is not supported"),
    ("llama3_factor_string", "tiny-llama", cfg(rope_scaling=dict(LLAMA3, factor="8")),
     "config.json: rope_scaling.factor must be a finite number > 0"),
    ("llama3_missing_original", "tiny-llama", cfg(rope_scaling={k: v for k, v in LLAMA3.items()
                                                                if k != "original_max_position_embeddings"}),
     "config.json: rope_scaling.original_max_position_embeddings is missing"),
    ("llama3_original_fraction", "tiny-llama", cfg(rope_scaling=dict(LLAMA3, original_max_position_embeddings=8.5)),
     "config.json: rope_scaling.original_max_position_embeddings must be an integer"),
    ("llama3_high_not_above_low", "tiny-llama", cfg(rope_scaling=dict(LLAMA3, high_freq_factor=0.5)),
     "config.json: inconsistent config (rope_scaling.high_freq_factor (0.5) must be larger than low_freq_factor"),
    ("qwen3_sliding_window", "tiny-llama", cfg(model_type="qwen3", use_sliding_window=True),
     "config.json: use_sliding_window is true; sliding-window attention is not supported"),
    ("qk_norm_string", "tiny-llama", cfg(qk_norm="yes"), "config.json: qk_norm must be true or false"),
    ("qwen3_without_norm_weights", "tiny-llama", cfg(model_type="qwen3"),
     "missing model.layers.0.self_attn.q_norm.weight"),
    # tokenizer metadata
    ("tokenizer_config_list", "tiny-llama", text("tokenizer_config.json", "[]"),
     "tokenizer_config.json: expected a JSON object of tokenizer settings, got a list"),
    ("tokenizer_config_truncated", "tiny-llama", text("tokenizer_config.json", '{"bos_token": "<'),
     "tokenizer_config.json: unreadable tokenizer config"),
    ("chat_template_number", "tiny-llama", text("tokenizer_config.json", '{"chat_template": 3}'),
     "tokenizer_config.json: chat_template must be a string (a Jinja template), got a number"),
    ("chat_template_bad_list", "tiny-llama", text("tokenizer_config.json", '{"chat_template": [{"name": "x"}]}'),
     "tokenizer_config.json: chat_template[0] must be an object {\"name\": string, \"template\": string}"),
    ("bos_token_number", "tiny-llama", text("tokenizer_config.json", '{"bos_token": 1}'),
     "tokenizer_config.json: bos_token must be a string, got 1"),
    ("eos_token_object_without_content", "tiny-llama", text("tokenizer_config.json", '{"eos_token": {"x": 1}}'),
     "tokenizer_config.json: eos_token must be a string or an object with a \"content\" string"),
    ("add_bos_token_string", "tiny-llama", text("tokenizer_config.json", '{"add_bos_token": "true"}'),
     "tokenizer_config.json: add_bos_token must be true or false"),
    ("chat_template_jinja_not_utf8", "tiny-llama", lambda f: (f / "chat_template.jinja").write_bytes(b"\xff{{"),
     "chat_template.jinja: unreadable chat template"),
    ("generation_config_eos_negative", "tiny-llama", text("generation_config.json", '{"eos_token_id": [2, -1]}'),
     "generation_config.json: eos_token_id entries must be an integer >= 0"),
    ("generation_config_string", "tiny-llama", text("generation_config.json", '"greedy"'),
     "generation_config.json: expected a JSON object of generation settings, got a string"),
    ("special_tokens_map_bad", "tiny-llama", text("special_tokens_map.json", '{"pad_token": ["<pad>"]}'),
     "special_tokens_map.json: pad_token must be a string"),
    ("eos_empty_list", "tiny-llama", cfg(eos_token_id=[]), "config.json: eos_token_id is an empty list"),
    ("eos_list_of_strings", "tiny-llama", cfg(eos_token_id=["</s>"]),
     "config.json: eos_token_id entries must be an integer"),
    ("bos_negative", "tiny-llama", cfg(bos_token_id=-1), "config.json: bos_token_id must be an integer >= 0"),
    ("head_dim_fraction", "tiny-llama", cfg(head_dim=8.5), "config.json: head_dim must be an integer"),
    ("head_dim_odd", "tiny-llama", cfg(head_dim=7), "head_dim must be even"),
    ("layers_1e9", "tiny-llama", cfg(num_hidden_layers=1e9),
     "config.json: num_hidden_layers must be an integer in [1, 1024]"),
    ("layers_fraction", "tiny-llama", cfg(num_hidden_layers=4.5), "config.json: num_hidden_layers must be an integer"),
    ("layers_bool", "tiny-llama", cfg(num_hidden_layers=True), "config.json: num_hidden_layers must be an integer"),
    ("layers_string", "tiny-llama", cfg(num_hidden_layers="4"), "config.json: num_hidden_layers must be an integer"),
    ("layers_missing", "tiny-llama", cfg(num_hidden_layers=DROP), "config.json: num_hidden_layers is missing"),
    ("hidden_huge", "tiny-llama", cfg(hidden_size=10 ** 12),
     "config.json: hidden_size must be an integer in [1, 65536]"),
    ("vocab_negative", "tiny-llama", cfg(vocab_size=-5), "config.json: vocab_size must be an integer"),
    ("intermediate_zero", "tiny-llama", cfg(intermediate_size=0), "config.json: intermediate_size must be an integer"),
    ("heads_zero", "tiny-llama", cfg(num_attention_heads=0),
     "config.json: num_attention_heads must be an integer in [1,"),
    ("kv_heads_zero", "tiny-llama", cfg(num_key_value_heads=0), "config.json: num_key_value_heads must be an integer"),
    ("heads_not_multiple_of_kv", "tiny-llama", cfg(num_key_value_heads=3),
     "config.json: inconsistent config (num_attention_heads (8) must be a multiple of num_key_value_heads (3))"),
    ("hidden_not_divisible", "tiny-llama", cfg(hidden_size=65, head_dim=DROP),
     "config.json: inconsistent config (hidden_size (65) must be divisible by num_attention_heads (8)"),
    ("layers_more_than_weights", "tiny-llama", cfg(num_hidden_layers=1000),
     "weights do not match config.json (config.json describes"),
    ("width_disagrees_with_weights", "tiny-llama", cfg(intermediate_size=4096),
     "model.layers.0.mlp.gate_proj.weight has shape [96, 64] in model.safetensors, config.json implies [4096, 64]"),
    ("untied_without_lm_head", "tiny-llama", lambda f: weights(lambda sd: sd.pop("lm_head.weight"))(f),
     "tie_word_embeddings false but the weights have no lm_head.weight"),
    ("integer_weights", "tiny-llama",
     weights(lambda sd: sd.update({"model.norm.weight": torch.ones(64, dtype=torch.int64)})),
     "model.safetensors: model.norm.weight has dtype I64"),
    # tokenizer
    ("tokenizer_empty_file", "tiny-llama", text("tokenizer.json", ""), "tokenizer.json: unreadable tokenizer"),
    ("tokenizer_corrupt", "tiny-llama", text("tokenizer.json", '{"model": {"type": "BPE"'),
     "tokenizer.json: unreadable tokenizer"),
    ("tokenizer_empty_vocab", "tiny-llama", tokenizer(_empty_tokenizer),
     "tokenizer.json: the tokenizer has an empty vocabulary"),
    ("tokenizer_larger_than_vocab", "tiny-llama", tokenizer(_big_tokenizer),
     "tokenizer.json: the tokenizer's vocabulary (300 ids) is larger than the model's vocab_size (256)"),
    # shard index
    ("index_not_object", "sharded", text("model.safetensors.index.json", "[]"),
     "model.safetensors.index.json: expected a JSON object with a weight_map"),
    ("index_weight_map_list", "sharded", index(lambda d: d.update(weight_map=list(d["weight_map"]))),
     "model.safetensors.index.json: weight_map must be a non-empty object"),
    ("index_value_not_string", "sharded", index(lambda d: d["weight_map"].update({"model.norm.weight": 3})),
     "model.safetensors.index.json: weight_map['model.norm.weight'] must be a file name"),
    ("index_dotdot", "sharded", index(lambda d: d["weight_map"].update({"model.norm.weight": "../secret.safetensors"})),
     "model.safetensors.index.json: weight_map['model.norm.weight'] points outside the model folder"),
    ("index_absolute", "sharded", index(lambda d: d["weight_map"].update({"model.norm.weight": "/etc/passwd"})),
     "points outside the model folder"),
    ("index_wrong_shard", "sharded", lambda f: _move_in_index(f, "model.norm.weight"),
     "the shard index lists model.norm.weight in this file, but it is in"),
    ("shard_truncated", "sharded", lambda f: _truncate(f / _shards(f)[0]), "corrupt or truncated safetensors file"),
]


def _shards(folder):
    return sorted(p for p in os.listdir(folder) if p.startswith("model-") and p.endswith(".safetensors"))


def weights_shard(folder, name, fn):
    sd = load_file(str(folder / name))
    if "model.norm.weight" in sd:
        fn(sd)
        save_file(sd, str(folder / name))


def _move_in_index(folder, key):
    p = folder / "model.safetensors.index.json"
    d = json.loads(p.read_text())
    other = [fn for fn in _shards(folder) if fn != d["weight_map"][key]][0]
    d["weight_map"][key] = other
    p.write_text(json.dumps(d))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_hostile_folder_is_one_clear_line(bases, tmp_path, case):
    _, base, damage, fragment = case
    folder = _copy(bases, base, tmp_path)
    damage(folder)
    with pytest.raises(CheckpointError) as e:
        load_model(str(folder))
    msg = str(e.value)
    assert fragment in msg, msg
    assert "\n" not in msg and str(folder) in msg, msg


@pytest.mark.parametrize("damage", [
    cfg(eos_token_id=[2, 7]),                                 # list of ids: the first is used
    cfg(num_key_value_heads=None),                            # null: MHA, as in HF
    cfg(hidden_size=64.0, rope_theta=10000),                  # integral float, integer theta
    cfg(rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    weights(lambda sd: sd.update({k: v.to(torch.bfloat16) for k, v in sd.items()})),
    cfg(rope_scaling=dict(LLAMA3, original_max_position_embeddings=256.0, factor=8)),
    text("tokenizer_config.json", '{"chat_template": null, "bos_token": null, "model_max_length": 1e30}'),
], ids=["eos_list", "kv_null", "integral_float", "rope_default", "bf16", "llama3_integral", "null_fields"])
def test_tolerated_variants_still_load(bases, tmp_path, damage):
    folder = _copy(bases, "tiny-llama", tmp_path)
    damage(folder)
    m = load_model(str(folder)).model
    assert torch.isfinite(m(IDS)).all()


def test_hf_cache_layout_with_symlinked_shards_loads(bases, tmp_path):
    """HF cache snapshots link each file into ../blobs: names stay inside, targets need not."""
    src = _copy(bases, "sharded", tmp_path)
    snap, blobs = tmp_path / "snap", tmp_path / "blobs"
    snap.mkdir()
    blobs.mkdir()
    for fn in os.listdir(src):
        os.replace(src / fn, blobs / fn)
        os.symlink(os.path.join("..", "blobs", fn), snap / fn)
    ref = tiny_model("tiny-gqa", seed=3)
    assert_close(load_model(str(snap)).model(IDS), ref(IDS), "logits")


def test_tied_config_with_identical_lm_head_loads(bases, tmp_path):
    folder = _copy(bases, "tiny-hetero", tmp_path)
    weights(lambda sd: sd.update({"lm_head.weight": sd["model.embed_tokens.weight"].clone()}))(folder)
    ref = tiny_model("tiny-hetero", seed=3)
    assert_close(load_model(str(folder)).model(IDS), ref(IDS), "logits")


def test_load_model_refuses_non_paths():
    with pytest.raises(ModelNotFoundError, match="a model is a name or a path"):
        load_model(None)


# ----------------------------------------------------------------------------------------------
# LlamaConfig: the structural invariants, whoever builds the config

@pytest.mark.parametrize("bad,fragment", [
    (dict(rope_theta=float("nan")), "rope_theta must be a finite number > 0"),
    (dict(rope_theta=0.0), "rope_theta must be a finite number > 0"),
    (dict(rms_norm_eps=-1.0), "rms_norm_eps must be a finite number > 0"),
    (dict(tie_word_embeddings="false"), "tie_word_embeddings must be true or false"),
    (dict(head_dim=7), "head_dim must be even"),
    (dict(head_dim=8.5), "head_dim must be an integer"),
    (dict(num_hidden_layers=10 ** 9), "num_hidden_layers must be an integer in [0, 1024]"),
    (dict(num_attention_heads=0), "num_attention_heads must be an integer in [1,"),
    (dict(num_key_value_heads=0), "num_key_value_heads must be an integer in [1,"),
    (dict(num_key_value_heads=16), "num_key_value_heads (16) must not exceed num_attention_heads (8)"),
    (dict(max_position_embeddings=-1), "max_position_embeddings must be an integer in [1,"),
    (dict(eos_token_id=-1), "eos_token_id must be an integer >= 0"),
    (dict(layer_heads=[8, 8, 8, True]), "layer_heads[3] entries must be integers"),
    (dict(layer_intermediate=[96, 96, 96, 2.5]), "layer_intermediate[3] entries must be integers"),
    (dict(layer_kv_heads=[8, 8, 8, 10 ** 12], layer_kv_map=[list(range(8))] * 4),
     "layer 3: layer_kv_heads 1000000000000 must lie in [0, 8]"),
    (dict(layer_heads=(8, 8)), "layer_heads must be a list of 4 entries"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else None)
def test_llama_config_refuses(bad, fragment):
    with pytest.raises(ValueError) as e:
        tiny_config("tiny-llama", **bad)
    assert fragment in str(e.value), str(e.value)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
@pytest.mark.parametrize("biases", [False, True])
def test_expected_shapes_match_the_model(name, biases):
    c = tiny_config(name, o_proj_bias=biases, mlp_bias=biases)
    sd = build_model(c).state_dict()
    if c.tie_word_embeddings:
        sd.pop("lm_head.weight")
    assert expected_shapes(c) == {k: tuple(v.shape) for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------
# GGUF: a tiny model written with gguf.GGUFWriter (q/k rows permuted as llama.cpp's converter does)

def _permute(w, n_head):
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


_GGUF_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def _gguf_tensors(model):
    c = model.config
    out = {}
    for k, v in model.state_dict().items():
        w = v.numpy().astype(np.float32)
        if k == "model.embed_tokens.weight":
            out["token_embd.weight"] = w
        elif k == "model.norm.weight":
            out["output_norm.weight"] = w
        elif k == "lm_head.weight":
            if not c.tie_word_embeddings:
                out["output.weight"] = w
        else:
            _, _, i, rest = k.split(".", 3)
            mod, suffix = rest.rsplit(".", 1)
            if mod == "self_attn.q_proj":
                w = _permute(w, c.num_attention_heads)
            elif mod == "self_attn.k_proj":
                w = _permute(w, c.num_key_value_heads)
            out[f"blk.{i}.{_GGUF_BLOCK[mod]}.{suffix}"] = np.ascontiguousarray(w)
    return out


def _gguf_meta(model):
    import gguf
    c = model.config
    tokens = sorted(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet())
    return {
        "llama.block_count": c.num_hidden_layers, "llama.context_length": c.max_position_embeddings,
        "llama.embedding_length": c.hidden_size, "llama.feed_forward_length": c.intermediate_size,
        "llama.attention.head_count": c.num_attention_heads, "llama.attention.head_count_kv": c.num_key_value_heads,
        "llama.rope.freq_base": float(c.rope_theta), "llama.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        "llama.rope.dimension_count": c.head_dim, "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [int(gguf.TokenType.NORMAL)] * len(tokens),
    }


def write_gguf(path, model, meta=None, tensors=None):
    """A GGUF of `model`; `meta` overrides keys (DROP deletes; int → uint32, float → float32,
    str → string, list → array), `tensors` is fn(dict of numpy arrays) applied before writing."""
    import gguf
    m = _gguf_meta(model)
    m.update(meta or {})
    ts = _gguf_tensors(model)
    if tensors:
        tensors(ts)
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in m.items():
        if v is DROP:
            continue
        if k == "general.architecture":
            from gguf.gguf_writer import GGUFValue
            w.kv_data[0][k] = GGUFValue(value=v, type=gguf.GGUFValueType.STRING)
        elif isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, v)
    for k, v in ts.items():
        w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-llama"])
def test_gguf_round_trip(tmp_path, name):
    """The un-permutation and the metadata mapping give back the model that was written."""
    m = tiny_model(name, seed=2)
    L = load_model(write_gguf(tmp_path / "m.gguf", m))
    assert L.kind == "gguf" and L.model.config.tie_word_embeddings == m.config.tie_word_embeddings
    assert_close(L.model(IDS), m(IDS), "logits")
    assert L.tokenizer.encode("hello").ids == byte_tokenizer().encode("hello").ids


def test_gguf_tokenizer_metadata_and_dtype(tmp_path):
    """bos/eos/pad/unk ids become token strings, the chat template and add_bos_token are kept;
    an F32 file is float32, an F16 one float16 (the default --dtype of a pruned copy)."""
    tok = sorted(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet())
    meta = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
            "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    m = tiny_model("tiny-gqa", seed=2)
    L = load_model(write_gguf(tmp_path / "m.gguf", m, meta))
    assert L.source_dtype == "float32"
    assert L.tokenizer_config == {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok[1],
                                  "eos_token": tok[2], "pad_token": tok[2], "unk_token": tok[0],
                                  "add_bos_token": True, "chat_template": meta["tokenizer.chat_template"],
                                  "model_max_length": 512}
    assert L.generation_config == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    half = load_model(write_gguf(tmp_path / "h.gguf", m, meta,
                                 lambda ts: ts.update({k: v.astype(np.float16) for k, v in ts.items() if v.ndim == 2})))
    assert half.source_dtype == "float16"
    bare = load_model(write_gguf(tmp_path / "b.gguf", m))
    assert bare.tokenizer_config == {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512}
    assert bare.generation_config == {}


def test_gguf_chat_template_survives_prune_save_load(tmp_path):
    from slimgpt.generate import render_chat
    meta = {"tokenizer.ggml.eos_token_id": 5, "tokenizer.chat_template": "{% for m in messages %}<{{ m['content'] }}>"
                                                                           "{% endfor %}{{ eos_token }}"}
    L = load_model(write_gguf(tmp_path / "m.gguf", tiny_model("tiny-gqa", seed=2), meta))
    quiet_prune(L.model, calibration_windows(L.tokenizer, 4, 32), ratio=0.3)
    out = save_pretrained(L.model, tmp_path / "p", L.tokenizer, tokenizer_config=L.tokenizer_config,
                          generation_config=L.generation_config, inputs=(str(tmp_path / "m.gguf"),))
    P = load_model(out)
    assert P.tokenizer_config == L.tokenizer_config and P.generation_config == {"eos_token_id": 5}
    assert render_chat(P.tokenizer_config, [{"role": "user", "content": "hi"}]) == "<hi>" + P.tokenizer.id_to_token(5)


def _patch(offset, fmt, value):
    import struct

    def damage(path):
        data = bytearray(open(path, "rb").read())
        struct.pack_into(fmt, data, offset, value)
        open(path, "wb").write(bytes(data))
    return damage


def _cut(keep):
    """Damage: keep the first `keep` bytes (negative: drop the last -keep)."""
    def damage(path):
        data = open(path, "rb").read()
        open(path, "wb").write(data[:keep])
    return damage


def _nan_up(ts):
    ts["blk.1.ffn_up.weight"] = ts["blk.1.ffn_up.weight"].copy()
    ts["blk.1.ffn_up.weight"][0, 0] = np.nan


GGUF_CASES = [
    # (id, meta overrides, tensor edit, file damage, fragment)
    ("head_count_zero", {"llama.attention.head_count": 0}, None, None,
     "llama.attention.head_count must be an integer in [1, 1024], got 0"),
    ("head_count_array", {"llama.attention.head_count": [8, 8, 8, 8]}, None, None,
     "llama.attention.head_count must be an integer"),
    ("head_count_missing", {"llama.attention.head_count": DROP}, None, None, "llama.attention.head_count is missing"),
    ("head_count_kv_not_divisor", {"llama.attention.head_count_kv": 3}, None, None,
     "must be a multiple of num_key_value_heads (3)"),
    ("freq_base_zero", {"llama.rope.freq_base": 0.0}, None, None, "llama.rope.freq_base must be a finite number > 0"),
    ("freq_base_nan", {"llama.rope.freq_base": float("nan")}, None, None, "llama.rope.freq_base must be a finite"),
    ("eps_negative", {"llama.attention.layer_norm_rms_epsilon": -1e-5}, None, None,
     "llama.attention.layer_norm_rms_epsilon must be a finite number > 0"),
    ("block_count_huge", {"llama.block_count": 4_000_000_000}, None, None,
     "llama.block_count must be an integer in [1, 1024]"),
    ("block_count_more_than_tensors", {"llama.block_count": 6}, None, None,
     "weights do not match the GGUF metadata (the GGUF metadata describes"),
    ("partial_rotary", {"llama.attention.key_length": 8, "llama.rope.dimension_count": 4}, None, None,
     "partial rotary embeddings are not supported"),
    ("architecture_gpt2", {"general.architecture": "gpt2"}, None, None, "GGUF architecture 'gpt2' is not supported"),
    ("tokens_missing", {"tokenizer.ggml.tokens": DROP, "tokenizer.ggml.token_type": DROP}, None, None,
     "tokenizer.ggml.tokens is missing"),
    ("tokenizer_model_llama", {"tokenizer.ggml.model": "llama"}, None, None,
     "tokenizer.ggml.model 'llama' is not supported"),
    ("bad_merge", {"tokenizer.ggml.merges": ["Ġ"]}, None, None, "tokenizer.ggml.merges entry 'Ġ' is not two tokens"),
    ("token_type_length", {"tokenizer.ggml.token_type": [1, 1, 1]}, None, None,
     "tokenizer.ggml.token_type must be 256 integers"),
    ("weight_nan", {}, _nan_up, None, "model.layers.1.mlp.up_proj.weight contains NaN"),
    ("unexpected_tensor", {}, lambda ts: ts.update({"blk.0.attn_qkv.weight": np.zeros((4, 64), np.float32)}), None,
     "unexpected tensor 'blk.0.attn_qkv.weight'"),
    ("same_tensor_twice", {}, lambda ts: ts.update({"blk.01.attn_norm.weight": ts["blk.1.attn_norm.weight"]}), None,
     "tensors blk.1.attn_norm.weight and blk.01.attn_norm.weight are both model.layers.1.input_layernorm.weight"),
    ("integer_tensor", {}, lambda ts: ts.update({"output_norm.weight": np.ones(64, np.int32)}), None,
     "tensor output_norm.weight has integer type I32"),
    ("tensor_of_missing_layer", {}, lambda ts: ts.update({"blk.9.attn_norm.weight": np.ones(64, np.float32)}), None,
     "unexpected tensor 'blk.9.attn_norm.weight'"),
    ("wrong_shape", {}, lambda ts: ts.update({"blk.2.ffn_up.weight": np.zeros((80, 64), np.float32)}), None,
     "model.layers.2.mlp.up_proj.weight has shape [80, 64], the GGUF metadata implies [96, 64]"),
    ("not_gguf", {}, None, _patch(0, "<4s", b"GGML"), "not a GGUF file"),
    ("version_1", {}, None, _patch(4, "<I", 1), "GGUF version 1 is not supported"),
    ("big_endian", {}, None, _patch(4, ">I", 3), "big-endian GGUF files are not supported"),
    ("absurd_tensor_count", {}, None, _patch(8, "<Q", 2 ** 62), "tensors and"),
    ("absurd_kv_count", {}, None, _patch(16, "<Q", 2 ** 40), "metadata entries cannot fit"),
    ("absurd_key_length", {}, None, _patch(24, "<Q", 2 ** 60), "truncated or corrupt GGUF header"),
    ("header_truncated", {}, None, _cut(200), "cannot fit in a 200-byte file"),
    ("header_truncated_in_tokens", {}, None, _cut(2000), "truncated or corrupt GGUF header: tokenizer.ggml.tokens"),
    ("file_tiny", {}, None, _cut(10), "truncated GGUF file (10 bytes"),
    ("tensor_truncated", {}, None, _cut(-100), "is truncated"),
    ("pad_id_outside_vocab", {"tokenizer.ggml.padding_token_id": 300}, None, None,
     "tokenizer.ggml.padding_token_id 300 is not a token id (the vocabulary has 256 tokens)"),
    ("chat_template_not_string", {"tokenizer.chat_template": [1, 2]}, None, None,
     "tokenizer.chat_template must be a string"),
    ("add_bos_not_bool", {"tokenizer.ggml.add_bos_token": 1}, None, None,
     "tokenizer.ggml.add_bos_token must be true or false"),
    ("rope_scaling_linear", {"llama.rope.scaling.type": "linear"}, None, None,
     "rope scaling (linear) is not supported in GGUF files"),
    ("rope_freqs_tensor", {}, lambda ts: ts.update({"rope_freqs.weight": np.ones(4, np.float32)}), None,
     "rope scaling (rope_freqs.weight) is not supported in GGUF files"),
]


@pytest.mark.parametrize("case", GGUF_CASES, ids=[c[0] for c in GGUF_CASES])
def test_hostile_gguf_is_one_clear_line(tmp_path, case):
    _, meta, tensors, damage, fragment = case
    path = write_gguf(tmp_path / "m.gguf", tiny_model("tiny-llama", seed=1), meta, tensors)
    if damage:
        damage(path)
    with pytest.raises(CheckpointError) as e:
        load_gguf(path)
    msg = str(e.value)
    assert fragment in msg, msg
    assert "\n" not in msg and msg.startswith(path), msg


# ----------------------------------------------------------------------------------------------
# Calibration

@pytest.mark.parametrize("args,fragment", [
    ((True, 16), "n_samples must be an integer >= 1, got True"),
    ((2.5, 16), "n_samples must be an integer >= 1, got 2.5"),
    (("4", 16), "n_samples must be an integer >= 1"),
    ((0, 16), "n_samples must be an integer >= 1, got 0"),
    ((4, 8.5), "seqlen must be an integer >= 2, got 8.5"),
    ((4, False), "seqlen must be an integer >= 2, got False"),
])
def test_calibration_counts_must_be_integers(args, fragment):
    with pytest.raises(CalibrationError) as e:
        calibration_windows(byte_tokenizer(), *args)
    assert fragment in str(e.value)


def test_calibration_ids_beyond_the_model_vocabulary():
    m = tiny_model("tiny-llama", vocab_size=200)
    with pytest.raises(CalibrationError, match=r"the tokenizer \(256 tokens\) produced token id 2\d\d, but the tiny "
                                               r"model has vocab_size 200"):
        calibration_windows(byte_tokenizer(), 4, 64, model=m)


def test_calibration_longer_than_the_context():
    m = tiny_model("tiny-llama")                              # max_position_embeddings 512
    with pytest.raises(CalibrationError, match=r"windows of 600 tokens are longer than the context .* "
                                               r"\(max_position_embeddings 512\)"):
        calibration_windows(byte_tokenizer(), 2, 600, model=m)
    assert calibration_windows(byte_tokenizer(), 2, 600, model=m, allow_long_context=True).shape == (2, 600)
    assert calibration_windows(byte_tokenizer(), 2, 512, model=m.config).shape == (2, 512)


def test_empty_calibration():
    from tokenizers import Tokenizer, models
    with pytest.raises(CalibrationError, match="produced no tokens"):
        calibration_windows(Tokenizer(models.BPE(vocab={}, merges=[])), 4, 16)
    for bad, fragment in ((torch.zeros(0, 16, dtype=torch.long), "empty or too short"),
                          (torch.zeros(4, 1, dtype=torch.long), "empty or too short"),
                          (torch.zeros(4, 16), "2-D integer tensor"),
                          (torch.zeros(16, dtype=torch.long), "2-D integer tensor"),
                          (torch.full((2, 4), -1), "negative token id")):
        with pytest.raises(CalibrationError, match=fragment):
            check_calibration(bad, tiny_model("tiny-llama"))


def test_stream_cache_is_not_fooled_by_a_reused_id():
    """Token streams are cached per tokenizer object; a tokenizer that gets a dead one's id must not
    be handed that one's tokens (ids beyond its vocabulary, or simply the wrong text)."""
    from slimgpt import textdata
    tok = byte_tokenizer()
    textdata._STREAMS.pop(("c4", id(tok)), None)
    textdata._STREAMS[("c4", id(tok))] = (object(), torch.tensor([999, 999, 999]))   # a dead tokenizer's entry
    stream = textdata.c4_calibration_tokens(tok)
    assert len(stream) > 3 and int(stream.max()) < 256
