"""benchmarks/study_report.py renders a partial results file: the derived `--schedule auto` row is
the candidate with the lowest calibration loss (ties: the smaller t, as pipeline.choose_plan), a
seed with a missing candidate has no derived row, and missing configurations read "not run"."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("study_report", ROOT / "benchmarks" / "study_report.py")
R = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(R)


def row(variant, ratio, seed, loss, ppl, prune_s=10.0):
    return {"variant": variant, "ratio": ratio, "seed": seed, "calibration": [32, 256], "calibration_loss": loss,
            "ppl128": 2 * ppl, "ppl2048": ppl, "prune_s": prune_s, "wall_s": prune_s + 5, "params": 100,
            "command": f"slimgpt prune --model m --ratio {ratio:g} --seed {seed} --out pruned"}


def synthetic() -> dict:
    rows = [{"variant": "dense", "ratio": 0.0, "seed": 0, "ppl128": 50.0, "ppl2048": 20.0, "params": 200,
             "command": "slimgpt eval smollm2-135m --seqlen 2048"}]
    # 20%, seed 0: FLAP's counts lowest loss; seed 1: log and the blend tie -> log (t = 0)
    rows += [row("slimgpt", 0.2, 0, 3.0, 40.0), row("auto/t0.5", 0.2, 0, 2.9, 38.0),
             row("slimgpt/flap-plan", 0.2, 0, 2.8, 36.0, prune_s=20.0)]
    rows += [row("slimgpt", 0.2, 1, 2.7, 41.0), row("auto/t0.5", 0.2, 1, 2.7, 39.0),
             row("slimgpt/flap-plan", 0.2, 1, 2.9, 37.0)]
    # 50%, seed 0: the blend row is missing -> no derived auto
    rows += [row("slimgpt", 0.5, 0, 4.0, 100.0), row("slimgpt/flap-plan", 0.5, 0, 3.0, 90.0)]
    # the end-to-end run of 20% seed 0, and one paired --align 32 row
    e2e = row("auto", 0.2, 0, 2.8, 36.0, prune_s=70.0)
    e2e["schedule_search"] = {"chosen": "t=1", "t": 1.0}
    rows += [e2e, row("slimgpt/align32", 0.2, 0, 3.1, 42.0)]
    return {"settings": {"model": "tiny", "percdamp": 0.01},
            "results": {f"{r['variant']}@{r['ratio']:g}#s{r['seed']}": r for r in rows}}


def test_derived_auto_lowest_loss_ties_to_smaller_t_and_needs_all_candidates():
    res = synthetic()["results"]
    d = R.derive_auto(res, 0.2)
    assert {s: v["t"] for s, v in d.items()} == {0: 1.0, 1: 0.0}
    assert d[0]["row"]["variant"] == "slimgpt/flap-plan" and d[1]["row"]["variant"] == "slimgpt"
    assert d[0]["cost_s"] == 10 + 10 + 20 + 20            # the candidates' prunes plus the chosen one again
    assert R.derive_auto(res, 0.5) == {}
    assert R.derive_auto(res, 0.3) == {}


def test_partial_file_renders_with_not_run(tmp_path):
    data = synthetic()
    R.write_doc(data, tmp_path / "study.md", tmp_path / "img")
    page = (tmp_path / "study.md").read_text()
    assert (tmp_path / "img" / "study_ppl.png").stat().st_size > 0
    assert "| 30% | log (paper) | — | not run |" in page
    assert "s0: 1, s1: 0" in page                              # auto's t per seed in the allocation table
    assert "| 20% | 0 | 1, 72.00, 36.00 | 1, 72.00, 36.00 | yes |" in page   # the end-to-end check
    assert "No derived auto (a candidate row not run): 10%, 30%, 40%, 50%, 60%." in page
    assert "paper's calibration scale" in page and "128 × 2048 C4 tokens): not run" in page
    assert "20% without fine-tuning, PPL@2048 ≤ 1.6 × dense (32.00): **missed**" in page


def test_empty_file_and_cli(tmp_path):
    R.write_doc({"settings": {}, "results": {}}, tmp_path / "empty.md", tmp_path / "img")
    assert "not run" in (tmp_path / "empty.md").read_text()
    assert not (tmp_path / "img" / "study_ppl.png").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_report.py"), "--results", str(bad),
                           "--doc", str(tmp_path / "x.md"), "--img", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.md").exists()
    good = tmp_path / "study.json"
    good.write_text(json.dumps(synthetic()))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_report.py"), "--results", str(good),
                           "--doc", str(tmp_path / "y.md"), "--img", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "auto@0.2#s0 derived (t = 1)" in (tmp_path / "y.md").read_text()
