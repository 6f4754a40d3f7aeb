"""Checkpoints: save → load round trip, atomic writes, refusal to overwrite, input untouched."""
import hashlib
import json
import os

import pytest
import torch

from slimgpt.checkpoint import OutputExistsError, check_output_dir, load_pretrained, save_pretrained
from slimgpt.loaders import CheckpointError, load_model
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.pipeline import PruneSettings, prune_model
from slimgpt.textdata import calibration_windows
from slimgpt.testing import assert_close

torch.set_grad_enabled(False)
IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


def pruned(name="tiny-gqa", ratio=0.5, **kw):
    m = tiny_model(name)
    res = prune_model(m, calibration_windows(byte_tokenizer(), 8, 32, 0),
                      PruneSettings(ratio=ratio, backend=None, **kw), progress=False, log=lambda s: None)
    return m, res


def _tree_digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-hetero", "tiny-qwen2"])
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
    prune_model(loaded.model, calibration_windows(loaded.tokenizer, 8, 32, 0),
                PruneSettings(ratio=0.5), progress=False, log=lambda s: None)
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
