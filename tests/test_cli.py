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
