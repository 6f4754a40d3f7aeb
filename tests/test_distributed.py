"""Data-parallel calibration (slimgpt/distributed.py) with 2 gloo processes under torchrun: the
same selections as one process, weights within float32 tolerance; a failing rank makes every
rank exit with a clear error instead of hanging."""
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.testing import assert_close, quiet_prune
from slimgpt.textdata import calibration_windows

ARGS = ["--model", "tiny-gqa", "--ratio", "0.4", "--nsamples", "8", "--seqlen", "32", "--eval-tokens", "256",
        "--eval-seqlen", "64", "--quiet", "--backend", "cpu", "--align", "1"]   # compared with PruneSettings()


def torchrun(*args, env=None, timeout=240):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLIMGPT_TEST_")}
    e.update(OMP_NUM_THREADS="1", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "slimgpt", "prune", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout)


def test_two_gloo_ranks_equal_one_process(tmp_path):
    p = torchrun(*ARGS, "--out", tmp_path / "dist", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout)                    # rank 0 alone prints the report
    assert report["ranks"] == 2
    man = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    model = tiny_model("tiny-gqa")
    calib = calibration_windows(byte_tokenizer(), 8, 32, 0)
    with torch.no_grad():
        single = quiet_prune(model, calib, ratio=0.4, backend="cpu")
    def picks(layers):
        return [(r["heads_pruned"], r["kv_pruned"], r["channels_pruned"]) for r in layers]

    assert picks(man["layers"]) == picks(single.layers)          # every layer, in order
    got = load_file(str(tmp_path / "dist" / "model.safetensors"))
    want = single.model.state_dict()
    if single.model.config.tie_word_embeddings:
        want.pop("lm_head.weight")                              # saved once, as the embedding
    assert sorted(got) == sorted(want)
    for k, v in got.items():
        assert_close(v, want[k], "float32", err_msg=k)
    assert report["pruned"]["params"] == single.model.num_parameters()


def test_failing_rank_stops_every_rank(tmp_path):
    """Rank 1 raises in the middle of layer 1 (SLIMGPT_TEST_FAIL): both ranks exit with one
    line each, the streamed state of the finished layer 0 is kept for --resume."""
    out = tmp_path / "out"
    p = torchrun(*ARGS, "--stream", "--out", out, env={"SLIMGPT_TEST_FAIL": "1:layer1"}, timeout=120)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("slimgpt prune: error:")]
    assert sorted(lines) == ["slimgpt prune: error: rank 1 failed: test fault injected at layer1; all ranks stopped",
                             "slimgpt prune: error: test fault injected at layer1"], p.stderr[-3000:]
    state = json.loads((tmp_path / ".out.resume" / "state.json").read_text())
    assert state["done"] == 1 and state["fingerprint"]["ranks"] == 2 and not out.exists()
