"""The `slimgpt` command line contract on a tiny model (in-process: main(argv) -> exit code)."""
import json
import os

import pytest

from slimgpt.cli import main


def test_prune_then_eval_json(tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["prune", "--model", "tiny-gqa", "--ratio", "0.3", "--nsamples", "8", "--seqlen", "32",
               "--backend", "reference", "--eval-tokens", "512", "--out", str(out), "--json", "--quiet"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["prune"]["params_after"] < rep["prune"]["params_before"]
    assert rep["dense"]["ppl"] > 0 and rep["pruned"]["ppl"] > 0
    assert sorted(os.listdir(out)) == ["config.json", "manifest.json", "model.safetensors", "tokenizer.json"]
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["settings"]["seed"] == 0 and len(manifest["layers"]) == 4
    assert "heads_pruned" in manifest["layers"][0] and "channels_pruned" in manifest["layers"][0]

    rc = main(["eval", str(out), "--seqlen", "64", "--max-tokens", "256", "--json", "--quiet"])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    assert {"ppl", "seqlen", "tokens", "params"} <= set(ev)
    assert ev["seqlen"] == 64 and ev["tokens"] == 4 * 63 and ev["params"] == rep["prune"]["params_after"]


@pytest.mark.parametrize("argv,msg", [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "tiny-gqa", "--ratio", "1.0"], "ratio"),
    (["--model", "tiny-gqa", "--ratio", "-0.2"], "ratio"),
    (["--model", "tiny-gqa", "--seqlen", "100000000"], "longer than"),
])
def test_prune_bad_input_exits_nonzero_and_writes_nothing(tmp_path, capsys, argv, msg):
    out = tmp_path / "o"
    rc = main(["prune", *argv, "--nsamples", "4", "--out", str(out), "--quiet", "--eval-tokens", "0"])
    assert rc == 2
    assert msg in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_eval_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert main(["eval", str(tmp_path), "--quiet"]) == 2
    assert "unreadable config" in capsys.readouterr().err


def test_prune_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "x").write_text("1")
    rc = main(["prune", "--model", "tiny-gqa", "--out", str(tmp_path), "--quiet"])
    assert rc == 2 and "not empty" in capsys.readouterr().err


def test_generate_json(capsys):
    assert main(["generate", "tiny-gqa", "--prompt", "Hello", "--max-new-tokens", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == "Hello" and isinstance(out["completion"], str)


def test_estimate_is_printed_before_work(tmp_path, capsys):
    rc = main(["prune", "--model", "tiny-llama", "--ratio", "0.1", "--nsamples", "4", "--seqlen", "16",
               "--backend", "reference", "--eval-tokens", "0", "--out", str(tmp_path / "e"), "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.index("estimate: memory") < err.index("saved")


# --- reliability: every failure is one line, nothing hangs ------------------------------------

def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv,msg", [
    (["eval", "tiny-llama", "--seqlen", "1000000"], "longer than the model's context"),
    (["prune", "--model", "tiny-llama", "--seqlen", "1024", "--out", "{tmp}/o"], "longer than the context"),
    (["prune", "--model", "tiny-llama", "--threads", "-1", "--out", "{tmp}/o"], ""),
    (["prune", "--model", "tiny-llama", "--last", "0.3", "--out", "{tmp}/o"], "--last needs --first"),
    (["prune", "--model", "tiny-llama", "--out", "{tmp}/o", "--report", "{tmp}"], "is a folder"),
    (["eval", "tiny-llama", "--max-tokens", "0"], ""),
    (["generate", "tiny-llama"], "give a prompt"),
    (["generate", "tiny-llama", "hi", "--max-new-tokens", "0"], "max-new-tokens"),
])
def test_bad_values_are_one_line_and_no_hang(tmp_path, capsys, argv, msg):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) if msg == "" else _nothing():
        assert main(argv) == 2
    assert msg in _err(capsys)
    assert not (tmp_path / "o").exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_generation_stops_at_the_context(capsys):
    """Issue: `generate --max-new-tokens 100000` ran on and on; the context (512) caps it."""
    from slimgpt.generate import generate_ids
    from slimgpt.loaders import load_model
    model = load_model("tiny-llama").model
    model.config.max_position_embeddings = 24
    assert len(generate_ids(model, [1, 2, 3, 4, 5], max_new_tokens=100000, stop_at_eos=False)) == 24 - 5


def test_nan_model_is_refused_naming_the_layer(tmp_path, capsys):
    """Issue: a model producing NaN evaluated to "PPL nan" with exit 0."""
    import torch
    from slimgpt.checkpoint import save_pretrained
    from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
    m = tiny_model("tiny-llama")
    with torch.no_grad():
        m.model.layers[2].mlp.up_proj.weight.mul_(1e20)         # finite weights, overflowing activations
        m.model.layers[2].mlp.gate_proj.weight.mul_(1e20)
    save_pretrained(m, tmp_path / "m", byte_tokenizer())
    assert main(["eval", str(tmp_path / "m"), "--max-tokens", "256", "--quiet"]) == 2
    assert "non-finite" in (err := _err(capsys)) and "layer 2" in err
    assert main(["generate", str(tmp_path / "m"), "Hi", "--quiet"]) == 2
    assert "layer 2" in _err(capsys)


def test_save_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """Issue: disk full, permission denied, ... gave tracebacks."""
    import errno
    import safetensors.torch as st

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    rc = main(["prune", "--model", "tiny-llama", "--nsamples", "2", "--seqlen", "16", "--eval-tokens", "0",
               "--backend", "reference", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "No space left" in _err(capsys)
    assert os.listdir(tmp_path) == []


def test_non_utf8_prompt_is_one_line(capsys):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")          # what argv holds for non-UTF-8 bytes
    assert main(["generate", "tiny-llama", bad, "--quiet"]) == 2
    assert "error" in _err(capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError):
        main(["eval", "tiny-llama", "--seqlen", "1000000", "--debug"])
