"""The `slimgpt` command line contract on a tiny model (in-process: main(argv) -> exit code)."""
import json
import os

import pytest
import torch

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
    (["prune", "--model", "tiny-llama", "--threads", "-1", "--out", "{tmp}/o"],
     "argument --threads: expected a positive integer, got -1"),
    (["prune", "--model", "tiny-llama", "--last", "0.3", "--out", "{tmp}/o"], "--last needs --first"),
    (["prune", "--model", "tiny-llama", "--out", "{tmp}/o", "--report", "{tmp}"], "is a folder"),
    (["eval", "tiny-llama", "--max-tokens", "0"], "argument --max-tokens: expected a positive integer, got 0"),
    (["generate", "tiny-llama"], "give a prompt"),
    (["generate", "tiny-llama", "hi", "--max-new-tokens", "0"], "max-new-tokens"),
])
def test_bad_values_are_one_line_and_no_hang(tmp_path, capsys, argv, msg):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:             # argparse refuses a malformed value itself, with its usage line
        rc = e.code
    assert rc == 2
    assert msg in _err(capsys)
    assert not (tmp_path / "o").exists()


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


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EIO", "EACCES", "EROFS", "EFBIG"])
def test_save_errors_are_one_line(tmp_path, capsys, monkeypatch, code):
    """Issue: disk full, quota, I/O error, permission denied, read-only file system, file too
    large (ulimit -f) gave tracebacks."""
    import errno
    import safetensors.torch as st

    def fail(*a, **k):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(st, "save_file", fail)
    rc = main(["prune", "--model", "tiny-llama", "--nsamples", "2", "--seqlen", "16", "--eval-tokens", "0",
               "--backend", "reference", "--out", str(tmp_path / "o"), "--quiet"])
    err = _err(capsys)
    assert rc == 2 and os.strerror(getattr(errno, code)) in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "error" in ln]) == 1
    assert os.listdir(tmp_path) == []


def test_prune_of_a_model_whose_activations_overflow_names_the_layer(tmp_path, capsys):
    """Issue: NaN inside a layer stopped the prune with "H contains NaN or Inf", naming no layer."""
    import torch
    from slimgpt.checkpoint import save_pretrained
    from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
    m = tiny_model("tiny-llama")
    with torch.no_grad():
        m.model.layers[2].mlp.up_proj.weight.mul_(1e20)
        m.model.layers[2].mlp.gate_proj.weight.mul_(1e20)
    save_pretrained(m, tmp_path / "m", byte_tokenizer())
    rc = main(["prune", "--model", str(tmp_path / "m"), "--nsamples", "4", "--seqlen", "16", "--eval-tokens", "0",
               "--out", str(tmp_path / "o"), "--quiet"])
    err = _err(capsys)
    assert rc == 2 and "layer 2" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_generate_cli_stops_at_the_context(capsys):
    """Issue: generate --max-new-tokens 100000 ran past 90 s; now capped by the model's context."""
    import json
    assert main(["generate", "tiny-llama", "Hi", "--max-new-tokens", "100000", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["new_tokens"] <= 512


@pytest.mark.parametrize("case", ["missing folder", "not a golden folder", "unimportable impl", "unknown op"])
def test_oracle_errors_are_one_line(case, tmp_path, capsys):
    """Issue: every error path of slimgpt oracle gave a traceback."""
    (tmp_path / "empty").mkdir()
    golden = tmp_path / "golden"
    if case in ("unimportable impl", "unknown op"):
        assert main(["oracle", "export", str(golden)]) == 0
        capsys.readouterr()
    argv = {"missing folder": ["oracle", "check", str(tmp_path / "nope"), "--impl", "slimgpt.ops"],
            "not a golden folder": ["oracle", "check", str(tmp_path / "empty"), "--impl", "slimgpt.ops"],
            "unimportable impl": ["oracle", "check", str(golden), "--impl", "no_such_module_xyz"],
            "unknown op": ["oracle", "check", str(golden), "--impl", "slimgpt.ops", "--op", "no_such_op"]}[case]
    assert main(argv) != 0
    err = _err(capsys)
    assert err.strip() and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_non_utf8_prompt_is_one_line(capsys):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")          # what argv holds for non-UTF-8 bytes
    assert main(["generate", "tiny-llama", bad, "--quiet"]) == 2
    assert "error" in _err(capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError):
        main(["eval", "tiny-llama", "--seqlen", "1000000", "--debug"])


# --- save dtype and calibration data ------------------------------------------------------------

PRUNE = ["prune", "--model", "tiny-gqa", "--ratio", "0.3", "--nsamples", "4", "--seqlen", "32", "--backend",
         "reference", "--eval-tokens", "256", "--eval-seqlen", "64", "--quiet", "--json"]


def _docs(n=40):
    return [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(30)) for i in range(n)]


def test_prune_dtype_and_calibration_file_are_recorded(tmp_path, capsys):
    import hashlib
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(_docs()) + "\n", encoding="utf-8")
    out = tmp_path / "p"
    assert main([*PRUNE, "--dtype", "bf16", "--calib", str(calib), "--out", str(out)]) == 0
    rep = json.loads(capsys.readouterr().out)
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["dtype"] == rep["dtype"] == "bfloat16" and manifest["compute_dtype"] == "float32"
    c = manifest["calibration"]
    assert (c["dataset"], c["path"], c["format"], c["documents"]) == ("file", str(calib), "text", 40)
    assert c["sha256"] == hashlib.sha256(calib.read_bytes()).hexdigest() and c["tokens"] > 0
    assert (c["n_samples"], c["seqlen"], c["seed"]) == (4, 32, 0)
    from slimgpt.loaders import load_model
    assert load_model(str(out)).source_dtype == "bfloat16"
    # the same file as JSONL gives the same windows, so the same pruned model
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(_docs())), encoding="utf-8")
    assert main([*PRUNE, "--dtype", "bfloat16", "--calib", str(jsonl), "--out", str(tmp_path / "q")]) == 0
    assert json.loads(capsys.readouterr().out)["prune"]["heads_kept"] == rep["prune"]["heads_kept"]
    manifest_q = json.load(open(tmp_path / "q" / "manifest.json"))
    for key in ("heads_pruned", "kv_pruned", "channels_pruned"):
        assert [r[key] for r in manifest_q["layers"]] == [r[key] for r in manifest["layers"]]
    assert manifest_q["calibration"]["format"] == "jsonl"


def test_default_calibration_and_dtype(tmp_path, capsys):
    assert main([*PRUNE, "--out", str(tmp_path / "p")]) == 0
    manifest = json.load(open(tmp_path / "p" / "manifest.json"))
    assert manifest["dtype"] == "float32" and manifest["source_dtype"] == "float32"
    c = manifest["calibration"]
    assert c["dataset"] == "c4" and c["path"] == "slimgpt/data/c4/c4_validation_2k.jsonl.gz" and "1000-1999" in c["documents"]


def test_wikitext2_calibration_skips_the_evaluated_tokens(tmp_path, capsys):
    from slimgpt.loaders.tiny import byte_tokenizer
    from slimgpt.textdata import calibration_source, calibration_stream, wikitext2_tokens
    assert main([*PRUNE, "--calib", "wikitext2", "--out", str(tmp_path / "p")]) == 0
    c = json.load(open(tmp_path / "p" / "manifest.json"))["calibration"]
    assert c["dataset"] == "wikitext2" and c["skip_tokens"] == 256 and "scores text the calibration has seen" in c["overlap"]
    tok = byte_tokenizer()
    stream = calibration_stream(tok, calibration_source("wikitext2", skip_tokens=256))
    assert torch.equal(stream, wikitext2_tokens(tok)[256:]) and c["tokens"] == len(stream)


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    ("", "holds no text"),
    ("\n\n  \n\t\n", "holds no text"),
    (b"caf\xe9 au lait", "is not UTF-8 text (invalid byte at offset 3)"),
    (b"text\x00\x00binary", "holds NUL bytes"),
    ("short", "longer than the calibration file"),
])
def test_bad_calibration_text_file_is_one_line(tmp_path, capsys, content, fragment):
    calib = tmp_path / "in" / "calib.txt"
    calib.parent.mkdir()
    if content is not None:
        calib.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main([*PRUNE, "--calib", str(calib), "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys).splitlines()
    assert fragment in err[-1] and str(calib) in err[-1] and err[-1].startswith("slimgpt prune: error: ")
    assert len(err) == (2 if content == "short" else 1)      # only the short file gets as far as loading the model
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("lines,fragment", [
    (['{"text": "a"}', '{"body": "b"}'], 'line 2: no "text" field'),
    (['{"text": 3}'], 'line 1: a "text" that is not a string'),
    (['["text"]'], 'line 1: no "text" field'),
    (['{"text": "a"}', '{"text": "b'], "line 2: not JSON (Unterminated string"),
    (["", "   "], "holds no text"),
])
def test_bad_calibration_jsonl_is_one_line(tmp_path, capsys, lines, fragment):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(lines) + "\n")
    assert main([*PRUNE, "--calib", str(calib), "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert fragment in err and err.count("\n") == 1 and err.startswith("slimgpt prune: error: ")


@pytest.mark.parametrize("where", ["file", "folder"])
def test_out_can_never_be_the_calibration_file_or_its_folder(tmp_path, capsys, where):
    data = tmp_path / "data"
    data.mkdir()
    calib = data / "calib.txt"
    calib.write_text("\n\n".join(_docs()))
    before = calib.read_bytes()
    out = calib if where == "file" else data
    assert main([*PRUNE, "--calib", str(calib), "--out", str(out), "--force"]) == 2
    assert "choose another destination" in _err(capsys)
    assert calib.read_bytes() == before and sorted(os.listdir(data)) == ["calib.txt"]


@pytest.mark.parametrize("bad", ["float8", "int4", "f64"])
def test_bad_dtype_is_one_line(tmp_path, capsys, bad):
    assert main([*PRUNE, "--dtype", bad, "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert f"dtype {bad!r} is not supported: expected one of float32, bfloat16, float16" in err
    assert err.count("\n") == 1 and os.listdir(tmp_path) == []


def test_prune_carries_the_tokenizer_metadata(tmp_path, capsys):
    from slimgpt.checkpoint import save_pretrained
    from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
    tc = {"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}", "eos_token": "A"}
    src = save_pretrained(tiny_model("tiny-gqa"), tmp_path / "src", byte_tokenizer(), tokenizer_config=tc,
                          generation_config={"eos_token_id": 32}, dtype="float16")
    out = tmp_path / "p"
    assert main(["prune", "--model", src, *PRUNE[3:], "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "manifest.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer_config.json"]
    assert json.load(open(out / "tokenizer_config.json")) == tc
    assert json.load(open(out / "manifest.json"))["dtype"] == "float16"         # the input's 16-bit dtype
    assert main(["generate", str(out), "hello", "--chat", "--max-new-tokens", "3", "--quiet"]) == 0


@pytest.mark.parametrize("argv,says", [(["--schedule", "auto"], "'flap'"), (["--auto-blends", "0.5"], "--auto-blends")])
def test_the_removed_auto_schedule_is_one_clear_error(tmp_path, capsys, argv, says):
    """--schedule auto failed issue 21's bar and was removed (docs/study.md): asking for it is a
    usage error (the schedules there are, or the unknown flag), and nothing is written."""
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", "tiny-llama", "--ratio", "0.3", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and says in err.splitlines()[-1]
    assert not any(tmp_path.iterdir())
