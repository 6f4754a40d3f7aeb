"""Checkpoints: save → load round trip, atomic writes, refusal to overwrite, input untouched."""
import hashlib
import json
import os

import pytest
import torch

from slimgpt.checkpoint import OutputExistsError, check_output_dir, load_pretrained, save_pretrained
from slimgpt.loaders import CheckpointError, load_model
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.textdata import calibration_windows
from slimgpt.testing import assert_close, quiet_prune

pytestmark = pytest.mark.usefixtures("no_grad")
IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


def pruned(name="tiny-gqa", ratio=0.5, **kw):
    m = tiny_model(name)
    res = quiet_prune(m, calibration_windows(byte_tokenizer(), 8, 32, 0), ratio=ratio, backend=None, **kw)
    return m, res


def _tree_digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-hetero", "tiny-qwen2", "tiny-qwen3", "tiny-llama3"])
def test_save_load_same_logits(tmp_path, name):
    m, res = pruned(name)
    out = save_pretrained(m, tmp_path / "out", byte_tokenizer(), {"layers": res.layers})
    m2, tok, manifest = load_pretrained(out)
    assert m2.config.layer_heads == m.config.layer_heads
    assert m2.config.layer_kv_map == m.config.layer_kv_map
    assert m2.config.layer_intermediate == m.config.layer_intermediate
    assert m2.num_parameters() == m.num_parameters()
    assert_close(m2(IDS), m(IDS), "logits")
    assert manifest["layers"][0]["heads_pruned"] == res.layers[0]["heads_pruned"]
    assert "torch" in manifest["versions"]
    assert (m2.config.qk_norm, m2.config.rope_scaling) == (m.config.qk_norm, m.config.rope_scaling)


def test_qwen3_norms_are_shared_and_survive_head_pruning():
    """q_norm / k_norm are one RMSNorm(head_dim) per layer, shared by all heads: pruning heads
    leaves them as they are."""
    dense = tiny_model("tiny-qwen3")
    m, res = pruned("tiny-qwen3", ratio=0.5)
    assert sum(len(r["heads_pruned"]) for r in res.layers) > 0
    for a, b in zip(m.model.layers, dense.model.layers):
        assert torch.equal(a.self_attn.q_norm.weight, b.self_attn.q_norm.weight)
        assert torch.equal(a.self_attn.k_norm.weight, b.self_attn.k_norm.weight)
        assert a.self_attn.q_norm.weight.shape == (24,)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints(tmp_path, dtype):
    """--dtype changes only the file: weights stored in 16 bits, loaded back to float32, logits
    within the rounding of the stored weights ("half_storage" row of slimgpt.testing)."""
    from safetensors import safe_open
    m, _ = pruned("tiny-hetero")
    f32 = save_pretrained(m, tmp_path / "f32", byte_tokenizer())
    out = save_pretrained(m, tmp_path / dtype, byte_tokenizer(), {"note": 1}, dtype=dtype)
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as st:
        assert {str(st.get_slice(k).get_dtype()) for k in st.keys()} == {"BF16" if dtype == "bfloat16" else "F16"}
    assert json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == dtype
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["dtype"] == dtype and manifest["note"] == 1
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    assert size < 0.55 * os.path.getsize(os.path.join(f32, "model.safetensors"))
    L = load_model(out)
    assert L.source_dtype == dtype and next(L.model.parameters()).dtype == torch.float32
    assert_close(L.model(IDS), m(IDS), "half_storage", err_msg=dtype)
    # a 16-bit input is saved in its own dtype by default (the CLI's rule) and stays one
    from slimgpt.checkpoint import default_dtype
    assert default_dtype(L.source_dtype) == dtype and default_dtype("quantized") == "float32"
    assert default_dtype("float64") == "float32"


@pytest.mark.parametrize("bad", ["float8", "int8", "", None, 16])
def test_bad_dtype_is_refused_before_writing(tmp_path, bad):
    m, _ = pruned()
    with pytest.raises(ValueError, match="is not supported: expected one of float32, bfloat16, float16"):
        save_pretrained(m, tmp_path / "out", None, dtype=bad)
    assert os.listdir(tmp_path) == []


def test_tokenizer_metadata_round_trips(tmp_path):
    """tokenizer_config.json / generation_config.json are written, listed in the manifest (so
    the folder is still slimgpt's for --force), and loaded back."""
    from slimgpt.checkpoint import is_checkpoint
    m, _ = pruned()
    tc = {"bos_token": "A", "eos_token": {"content": "B", "special": True}, "pad_token": "B",
          "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}", "add_bos_token": False,
          "model_max_length": 512, "tokenizer_class": "PreTrainedTokenizerFast"}
    gc = {"bos_token_id": 32, "eos_token_id": [33, 34], "pad_token_id": 33}
    out = save_pretrained(m, tmp_path / "out", byte_tokenizer(), tokenizer_config=tc, generation_config=gc)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert {"tokenizer_config.json", "generation_config.json"} <= set(manifest["files"])
    assert is_checkpoint(out)
    L = load_model(out)
    assert L.tokenizer_config == tc and L.generation_config == gc and L.chat_template == tc["chat_template"]
    again = save_pretrained(L.model, tmp_path / "out", L.tokenizer, force=True,
                            tokenizer_config=L.tokenizer_config, generation_config=L.generation_config)
    assert load_model(again).tokenizer_config == tc
    plain = save_pretrained(m, tmp_path / "plain", byte_tokenizer(), tokenizer_config={}, generation_config=None)
    assert sorted(os.listdir(plain)) == ["config.json", "manifest.json", "model.safetensors", "tokenizer.json"]
    assert load_model(plain).tokenizer_config == {}


def test_bias_compensated_model_round_trips(tmp_path):
    m = tiny_model("tiny-llama")
    with torch.no_grad():
        lin = m.model.layers[1].self_attn.o_proj
        lin.bias = torch.nn.Parameter(torch.full((lin.out_features,), 0.3))
    from slimgpt.shrink import sync_config
    sync_config(m)                                # gives every layer an o_proj bias (zeros)
    out = save_pretrained(m, tmp_path / "b", None)
    assert_close(load_model(out).model(IDS), m(IDS), "logits")


def test_interrupted_save_leaves_nothing_loadable(tmp_path):
    m, _ = pruned()

    def crash(tmp):
        assert os.path.isfile(os.path.join(tmp, "model.safetensors"))   # files were written ...
        raise KeyboardInterrupt("simulated crash before the rename")

    with pytest.raises(KeyboardInterrupt):
        save_pretrained(m, tmp_path / "out", None, {}, _before_rename=crash)
    assert os.listdir(tmp_path) == []                                   # ... and cleaned up
    with pytest.raises(ValueError):
        load_model(str(tmp_path / "out"))


def test_failed_safetensors_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch as st
    m, _ = pruned()

    def broken(sd, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(m, tmp_path / "out", None)
    assert os.listdir(tmp_path) == []


def test_refuses_non_empty_out_and_replaces_only_its_own(tmp_path):
    m, _ = pruned()
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for force in (False, True):                      # a folder slimgpt did not write: never replaced
        with pytest.raises(OutputExistsError):
            save_pretrained(m, out, None, force=force)
    assert (out / "precious.txt").read_text() == "keep me"
    ours = tmp_path / "ours"
    save_pretrained(m, ours, None)
    with pytest.raises(OutputExistsError):
        save_pretrained(m, ours, None)
    save_pretrained(m, ours, byte_tokenizer(), force=True)   # an earlier checkpoint: replaced
    assert (ours / "tokenizer.json").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_pruning_a_folder_model_leaves_its_files_untouched(tmp_path):
    src = save_pretrained(tiny_model("tiny-gqa"), tmp_path / "src", byte_tokenizer())
    before = _tree_digest(src)
    loaded = load_model(src)
    quiet_prune(loaded.model, calibration_windows(loaded.tokenizer, 8, 32, 0), ratio=0.5)
    save_pretrained(loaded.model, tmp_path / "dst", loaded.tokenizer)
    with pytest.raises(OutputExistsError):
        check_output_dir(src, True, inputs=(src,))
    assert _tree_digest(src) == before


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    m, _ = pruned()
    out = save_pretrained(m, tmp_path / "out", None)
    cfg = json.load(open(os.path.join(out, "config.json")))
    cfg["slimgpt_layers"]["intermediate"][0] += 1                       # config disagrees with weights
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(out)
