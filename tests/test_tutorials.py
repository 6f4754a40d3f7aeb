"""Every numbered tutorial runs in fast mode (subprocess), exits 0 and writes its plots."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))

# tutorial -> plots it must write in fast mode (empty: it may skip, e.g. CUDA without a GPU)
PLOTS = {
    "01_obs_by_hand": ["01_obs_by_hand.png"],
    "02_grouped_cholesky": ["02_grouped_cholesky.png"],
    "03_dynamic_group_size": ["03_dynamic_group_size.png"],
    "04_incremental_pruning_ratio": ["04_ipr_schedules.png", "04_error_vs_depth.png"],
    "05_end_to_end_backends": ["05_end_to_end_backends.png"],
    "06_cuda_path": [],
}



def test_every_tutorial_is_listed():
    assert [t.stem for t in TUTORIALS] == sorted(PLOTS)


@pytest.mark.parametrize("path", TUTORIALS, ids=[t.stem for t in TUTORIALS])
def test_tutorial_runs_in_fast_mode(path, tmp_path):
    env = dict(os.environ, SLIMGPT_TUTORIAL_FAST="1", MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(path), "--out", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "MISMATCH" not in output
    skipped = proc.stdout.startswith("SKIPPED:")
    if path.stem == "06_cuda_path":
        from slimgpt import has_cuda
        assert skipped != has_cuda(), output[-2000:]
        if has_cuda():
            assert (tmp_path / "06_cuda_path.png").stat().st_size > 1000
        return
    assert not skipped
    for plot in PLOTS[path.stem]:
        assert (tmp_path / plot).stat().st_size > 1000, f"{plot} not written\n{output[-2000:]}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[t.stem for t in TUTORIALS])
def test_tutorial_header(path):
    """Each opens with what you will learn, the command, the expected output and the equations."""
    head = path.read_text().split("# %%\n", 1)[0]
    assert head.startswith("# %% [markdown]")
    for needle in ("**What you will learn**", "**Run**", f"python tutorials/{path.name}", "**Expected output**",
                   "**Paper**"):
        assert needle in head, (path.name, needle)
    assert re.search(r"Eq(s)?\. \(?\d", head), path.name
    assert "--fast" in head
