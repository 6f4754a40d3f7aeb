"""Layer streaming (slimgpt/streaming.py): the streamed run equals the in-memory one, with the
activations in memory and on disk; resume after a kill at several points equals an uninterrupted
run byte for byte; a mismatched or foreign state is refused with one line and kept."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimgpt import streaming
from slimgpt.checkpoint import save_pretrained
from slimgpt.loaders import load_model
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.pipeline import PruneError, PruneSettings
from slimgpt.cli import cli_child
from slimgpt.testing import assert_close, quiet_prune
from slimgpt.textdata import calibration_windows, wikitext2_tokens

pytestmark = pytest.mark.usefixtures("no_grad")
CALIB = dict(n=8, T=32)


def calib():
    return calibration_windows(byte_tokenizer(), CALIB["n"], CALIB["T"], 0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny models saved as folders (bf16 and float32), the streaming pipeline's input."""
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, dtype in (("tiny-gqa", "bfloat16"), ("tiny-hetero", "float32"), ("tiny-qwen3", "bfloat16")):
        save_pretrained(tiny_model(name), d / name, byte_tokenizer(), {}, dtype=dtype)
        out[name] = d / name
    return out


def weights(folder: Path) -> dict:
    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def streamed(folder, out, activations="ram", eval_tokens=None, **kw):
    src = streaming.open_source(str(folder))
    opts = streaming.StreamOptions(out=out, activations=activations, dtype="float32", eval_tokens=eval_tokens,
                                   eval_seqlen=64, eval_max_tokens=256)
    res, finish = streaming.prune_streaming(src, calib(), PruneSettings(backend="cpu", **kw), opts, progress=False, log=lambda m: None)
    finish({"test": True})
    return res


@pytest.mark.parametrize("activations", ["ram", "disk"])
@pytest.mark.parametrize("name,kw", [("tiny-gqa", dict(ratio=0.4)), ("tiny-hetero", dict(ratio=0.3, gqa="query")),
                                     ("tiny-qwen3", dict(ratio=0.5)), ("tiny-gqa", dict(ratio=0.3, method="flap"))])
def test_streamed_equals_in_memory(folders, tmp_path, name, kw, activations):
    loaded = load_model(str(folders[name]))
    mem = quiet_prune(loaded.model, calib(), backend="cpu", **kw)
    tokens = wikitext2_tokens(byte_tokenizer())
    res = streamed(folders[name], tmp_path / "out", activations, eval_tokens=tokens, **kw)
    for a, b in zip(mem.layers, res.records):
        assert (a["heads_pruned"], a["kv_pruned"], a["channels_pruned"]) == \
            (b["heads_pruned"], b["kv_pruned"], b["channels_pruned"]), a["layer"]
    assert res.summary["params_after"] == mem.summary["params_after"] == mem.model.num_parameters()
    got, want = weights(tmp_path / "out"), {k: v for k, v in mem.model.state_dict().items()}
    if mem.model.config.tie_word_embeddings:
        want.pop("lm_head.weight")
    assert set(got) == set(want)
    for k in want:
        assert_close(got[k], want[k], "float32", err_msg=k)
    # the streamed quick perplexity is the in-memory one (same windows, batches and operations)
    from slimgpt.evaluate import perplexity
    dense = perplexity(load_model(str(folders[name])).model, tokens, 64, 256)
    assert res.eval["dense"]["ppl"] == pytest.approx(dense["ppl"], rel=1e-6)
    assert res.eval["pruned"]["ppl"] == pytest.approx(perplexity(mem.model, tokens, 64, 256)["ppl"], rel=1e-6)
    reloaded = load_model(str(tmp_path / "out")).model
    ids = calib()[:2]
    assert_close(reloaded(ids), mem.model(ids), "logits")


def test_masked_model_is_refused(folders, tmp_path):
    with pytest.raises(PruneError, match="shrunk"):
        streamed(folders["tiny-gqa"], tmp_path / "o2", ratio=0.3, shrink=False)
    assert not any(tmp_path.iterdir())                      # refused before anything was written


def test_failure_mid_run_resumes_in_process(folders, tmp_path, monkeypatch):
    """A run that raised in layer 2 keeps its state; --resume finishes it with the same bytes."""
    ref = tmp_path / "ref"
    streamed(folders["tiny-gqa"], ref, ratio=0.4)
    out = tmp_path / "out"
    monkeypatch.setenv("SLIMGPT_TEST_FAIL", "0:layer2")
    with pytest.raises(RuntimeError, match="test fault"):
        streamed(folders["tiny-gqa"], out, ratio=0.4)
    monkeypatch.delenv("SLIMGPT_TEST_FAIL")
    state = json.loads((streaming.state_dir(out) / "state.json").read_text())
    assert state["done"] == 2 and not out.exists()
    src = streaming.open_source(str(folders["tiny-gqa"]))
    opts = streaming.StreamOptions(out=out, resume=True, activations="disk", dtype="float32")
    res, finish = streaming.prune_streaming(src, calib(), PruneSettings(backend="cpu", ratio=0.4), opts, progress=False, log=lambda m: None)
    finish({"test": True})
    assert res.resumed_from == 2 and not streaming.state_dir(out).exists()
    for f in sorted(p.name for p in ref.glob("*.safetensors")):
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f


def test_state_of_another_version_or_foreign_folder_is_refused(folders, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("SLIMGPT_TEST_FAIL", "0:layer1")
    with pytest.raises(RuntimeError):
        streamed(folders["tiny-gqa"], out, ratio=0.4)
    monkeypatch.delenv("SLIMGPT_TEST_FAIL")
    sd = streaming.state_dir(out)
    raw = json.loads((sd / "state.json").read_text())
    (sd / "state.json").write_text(json.dumps(dict(raw, slimgpt="0.0.1")))
    before = sorted(p.name for p in sd.rglob("*"))
    src = streaming.open_source(str(folders["tiny-gqa"]))
    opts = streaming.StreamOptions(out=out, resume=True, dtype="float32")
    with pytest.raises(streaming.ResumeError, match=r"written by slimgpt 0\.0\.1 .* rerun without --resume"):
        streaming.prune_streaming(src, calib(), PruneSettings(backend="cpu", ratio=0.4), opts, progress=False, log=lambda m: None)
    assert sorted(p.name for p in sd.rglob("*")) == before          # nothing lost
    # a folder in the state's place that slimgpt did not write is never deleted
    other = tmp_path / "o2"
    streaming.state_dir(other).mkdir()
    (streaming.state_dir(other) / "mine.txt").write_text("user data")
    with pytest.raises(streaming.ResumeError, match="not written by slimgpt"):
        streamed(folders["tiny-gqa"], other, ratio=0.4)
    assert (streaming.state_dir(other) / "mine.txt").read_text() == "user data"


def test_disk_space_is_checked_before_starting(folders, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 6, 10 ** 6 - 1000, 1000))
    with pytest.raises(PruneError, match="not enough free disk space"):
        streamed(folders["tiny-gqa"], tmp_path / "out", "disk", ratio=0.4)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# The command line: kills at chosen points (os._exit), then --resume

@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run `slimgpt prune ARGS` in a child forked from a server that has imported torch and
    slimgpt once (multiprocessing's forkserver): a killed run (os._exit) ends only its child,
    and each run costs its work rather than a Python start-up. Returns (exit code, stderr)."""
    import multiprocessing as mp
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "slimgpt.cli", "slimgpt.streaming", "slimgpt.loaders.lazy"])
    logs = tmp_path_factory.mktemp("logs")
    count = [0]

    def run(*args, env=None, check=True):
        count[0] += 1
        err = logs / f"{count[0]}.err"
        p = ctx.Process(target=cli_child, args=(["prune"] + [str(a) for a in args], dict(env or {}), str(err)))
        p.start()
        p.join(300)
        text = err.read_text() if err.exists() else ""
        if check and p.exitcode != 0:
            raise AssertionError(f"exit {p.exitcode}: {text[-2000:]}")
        return p.exitcode, text
    return run



def manifest_without_timings(folder: Path) -> dict:
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if "seconds" not in k}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    return strip(json.loads((folder / "manifest.json").read_text()))


def test_resume_after_kills_is_byte_identical(folders, tmp_path, cli):
    model = folders["tiny-gqa"]
    common = ["--model", model, "--ratio", 0.4, "--nsamples", 8, "--seqlen", 32, "--eval-tokens", 256,
              "--eval-seqlen", 64, "--quiet", "--stream", "--dtype", "bfloat16"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    cli(*common, "--out", ref)
    sd = streaming.state_dir(out)
    # killed during layer 1 (in prune_layer), during the write of layer 2's shard, between a
    # layer's files and its commit, and after the final files before the rename: each time the
    # next --resume goes on from the last committed layer; one resume uses disk activations
    for point, extra in (("layer1", []), ("write2", ["--activations", "disk"]), ("commit3", []), ("finish", [])):
        rc, err = cli(*common, "--out", out, "--resume", *extra, env={"SLIMGPT_TEST_KILL": point}, check=False)
        assert rc == 75, (point, err[-1500:])
        assert not out.exists() and sd.is_dir(), point
    # a resume with other settings is refused in one line, and the state is kept
    rc, err = cli(*common[:3], 0.3, *common[4:], "--out", out, "--resume", check=False)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("slimgpt prune: error: --resume:") and "other settings" in last, err
    assert (sd / "state.json").is_file()
    cli(*common, "--out", out, "--resume")
    assert not sd.exists()
    files = sorted(p.name for p in ref.iterdir())
    assert files == sorted(p.name for p in out.iterdir())
    for f in files:
        if f.endswith(".safetensors") or f in ("config.json", "model.safetensors.index.json"):
            assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    assert manifest_without_timings(out) == manifest_without_timings(ref)


def test_kill_after_rename_then_resume_finishes(folders, tmp_path, cli):
    common = ["--model", folders["tiny-hetero"], "--ratio", 0.3, "--nsamples", 8, "--seqlen", 32, "--eval-tokens", 0,
              "--quiet", "--stream"]
    out = tmp_path / "out"
    rc, _ = cli(*common, "--out", out, env={"SLIMGPT_TEST_KILL": "renamed"}, check=False)
    assert rc == 75 and out.is_dir() and streaming.state_dir(out).is_dir()
    _, err = cli(*common, "--out", out, "--resume")
    assert "already finished" in err and not streaming.state_dir(out).exists()
    assert load_model(str(out)).model.num_parameters() > 0
    # without --resume, an existing state is removed and the run starts over
    out2 = tmp_path / "out2"
    rc, _ = cli(*common, "--out", out2, env={"SLIMGPT_TEST_KILL": "commit1"}, check=False)
    assert rc == 75
    _, err = cli(*common, "--out", out2)
    assert "resume" not in err and out2.is_dir() and not streaming.state_dir(out2).exists()


def test_cli_errors_are_one_line(folders, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    from slimgpt.cli import main
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["prune", "--model", str(folders["tiny-gqa"]), "--device", "cuda", "--out", str(tmp_path / "o"),
                   "--stream"])
    assert rc == 2 and err.getvalue().strip().splitlines() == \
        ["slimgpt prune: error: --device cuda: no such CUDA device is visible"]
    assert not any(tmp_path.iterdir())
