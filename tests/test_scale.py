"""Slow: streaming at real layer shapes (TinyLlama-1.1B's, a few layers, random bf16 weights):
the streamed run selects what the in-memory run selects, with weights within float32 tolerance,
in less memory, and the estimate is not below what was measured. (LLaMA-7B's full shape is the
benchmark of docs/scale.md, benchmarks/llama7b_synthetic.py.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from slimgpt.testing import assert_close

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def prune(model, out, report, *extra):
    cmd = [sys.executable, "-m", "slimgpt", "prune", "--model", str(model), "--ratio", "0.2", "--nsamples", "8",
           "--seqlen", "128", "--eval-tokens", "512", "--out", str(out), "--report", str(report), "--quiet", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(Path(report).read_text())


def test_tinyllama_shape_streamed_equals_in_memory(tmp_path):
    model = tmp_path / "tinyllama-3l"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llama7b_synthetic.py"), "write", str(model),
                    "--shape", "tinyllama", "--layers", "3"], check=True, capture_output=True, timeout=1800)
    mem = prune(model, tmp_path / "mem", tmp_path / "mem.json", "--no-stream")
    st = prune(model, tmp_path / "st", tmp_path / "st.json", "--stream", "--activations", "disk")
    a = json.loads((tmp_path / "mem" / "manifest.json").read_text())["layers"]
    b = json.loads((tmp_path / "st" / "manifest.json").read_text())["layers"]
    for x, y in zip(a, b):
        assert (x["heads_pruned"], x["kv_pruned"], x["channels_pruned"]) == \
            (y["heads_pruned"], y["kv_pruned"], y["channels_pruned"])
    want = load_file(str(tmp_path / "mem" / "model.safetensors"))
    got = {}
    for f in (tmp_path / "st").glob("*.safetensors"):
        got.update(load_file(str(f)))
    assert set(got) == set(want)
    for k in want:
        assert_close(got[k].float(), want[k].float(), "float32", err_msg=k)
    assert st["pruned"]["ppl"] == pytest.approx(mem["pruned"]["ppl"], rel=1e-5)
    assert st["peak_rss_mb"] < mem["peak_rss_mb"]
    for r in (mem, st):
        assert r["estimate"]["memory_bytes"] / 2 ** 20 >= 0.8 * r["peak_rss_mb"], r["estimate"]
