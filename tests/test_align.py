"""--align N (slimgpt/align.py): aligned prunes meet the budget and the alignment; --align 1 is
the paper's exact counts (the golden selections); bad settings get one clear error."""
import importlib.util
import json
import pathlib

import pytest
import torch

from slimgpt.align import channels_to_prune, head_mode
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.pipeline import PruneError, PruneSettings, prune_model
from slimgpt.schedule import param_costs
from slimgpt.textdata import calibration_windows

DATA = pathlib.Path(__file__).with_name("data")
GOLDEN = json.loads((DATA / "golden_tiny.json").read_text())
spec = importlib.util.spec_from_file_location("make_golden_tiny", DATA / "make_golden_tiny.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)


def _prune(name, **settings):
    model = tiny_model(name, seed=2)
    calib = calibration_windows(byte_tokenizer(), 8, 32, 0)
    res = prune_model(model, calib, PruneSettings(backend="cpu", **settings), progress=False, log=lambda m: None)
    return model, res


def test_channels_to_prune_exact_and_aligned():
    for width in (33, 96, 128, 1536):
        for share in [x / 4 for x in range(-8, 4 * width + 8)]:
            assert channels_to_prune(width, share, 1) == max(0, min(width, round(share)))
            for n in (8, 32):
                k = channels_to_prune(width, share, n)
                kept = width - k
                assert 0 <= k <= width
                if round(share) <= 0:
                    assert k == 0                      # an unpruned layer keeps its full width
                    continue
                assert kept % n == 0, (width, share, n)
                # the nearest multiple of n to the exact kept width, or the largest within width
                assert abs(kept - (width - share)) <= n / 2 or kept == width // n * n


def test_head_mode():
    assert head_mode("query", 9, 3, 1) == "query"
    assert head_mode("query", 9, 3, 32) == "balanced"
    assert head_mode("query", 5, 3, 32) == "query"          # 5 heads over 3 KV heads: not possible
    assert head_mode("group", 9, 3, 32) == "group"
    assert head_mode("query", 8, 8, 32) == "query"          # MHA: query pruning keeps 1 query per KV head


@pytest.mark.parametrize("case", sorted(make.CASES))
def test_align_1_selects_the_golden_heads_and_channels(case):
    """--align 1 is today's algorithm exactly: the selections pinned before alignment existed."""
    name, kw = make.CASES[case]
    _, res = _prune(name, align=1, **kw)
    assert [r["heads_pruned"] for r in res.layers] == GOLDEN[case]["heads"]
    assert [r["channels_pruned"] for r in res.layers] == GOLDEN[case]["channels"]


@pytest.mark.parametrize("name,ratio,n", [("tiny-gqa", 0.3, 8), ("tiny-gqa", 0.5, 16), ("tiny-llama", 0.4, 8),
                                          ("tiny-hetero", 0.3, 8)])
def test_aligned_prune_meets_budget_and_alignment(name, ratio, n):
    model, res = _prune(name, ratio=ratio, align=n)
    cfg, s = model.config, res.summary
    channel = param_costs(cfg)["channel"]
    assert abs(s["pruned_params"] - s["target_pruned_params"]) <= n * channel, "budget missed by more than a block"
    dense = tiny_model(name, seed=2).config
    for i, kept in enumerate(cfg.layer_intermediate):
        assert kept % n == 0 or kept == dense.layer_intermediate[i], (i, kept)
    for i, kv_map in enumerate(cfg.layer_kv_map):
        H, K = dense.layer_heads[i], dense.layer_kv_heads[i]
        if H % K == 0 and H > K:                       # GQA: uniform contiguous groups, every KV head kept
            counts = [kv_map.count(j) for j in range(cfg.layer_kv_heads[i])]
            assert cfg.layer_kv_heads[i] == K and len(set(counts)) == 1, (i, kv_map)
            assert kv_map == sorted(kv_map)
    assert torch.isfinite(model(torch.randint(0, 256, (1, 16)))).all()


def test_aligned_prune_changes_the_counts():
    """The alignment is not a no-op on a model whose exact counts are unaligned."""
    exact, _ = _prune("tiny-gqa", ratio=0.3, align=1)
    aligned, _ = _prune("tiny-gqa", ratio=0.3, align=16)
    assert any(k % 16 for k in exact.config.layer_intermediate)
    assert all(k % 16 == 0 for k in aligned.config.layer_intermediate)


def test_ffn_only_alignment_keeps_the_papers_heads():
    """--align-ffn-only: the head counts of the exact counts (layer 0, which sees the same inputs,
    selects the same heads), FFN widths aligned, the budget met within a block."""
    exact, r1 = _prune("tiny-gqa", ratio=0.4, align=1)
    ffn, r2 = _prune("tiny-gqa", ratio=0.4, align=16, align_heads=False)
    assert [r["heads_kept"] for r in r2.layers] == [r["heads_kept"] for r in r1.layers]
    assert r2.layers[0]["heads_pruned"] == r1.layers[0]["heads_pruned"]
    assert all(k % 16 == 0 for k in ffn.config.layer_intermediate)
    assert abs(r2.summary["pruned_params"] - r2.summary["target_pruned_params"]) <= \
        16 * param_costs(ffn.config)["channel"]
    assert head_mode("query", 9, 3, 32, balance=False) == "query"


@pytest.mark.parametrize("kw", [dict(align=0), dict(align=-3), dict(align=8, schedule="flap"),
                                dict(align=8, method="flap"),
                                dict(align=1, align_heads=False), dict(align=8, align_heads="no")])
def test_bad_align_settings(kw):
    with pytest.raises(PruneError, match="--align"):
        PruneSettings(ratio=0.2, **kw).validate()


@pytest.mark.parametrize("argv,align", [([], 32), (["--align", "1"], 1), (["--schedule", "flap"], 1)])
def test_cli_default_align(tmp_path, argv, align):
    """`slimgpt prune` aligns to 32 unless told otherwise; whole-model plans keep exact counts."""
    from slimgpt.cli import main
    out = tmp_path / "p"
    assert main(["prune", "--model", "tiny-gqa", "--ratio", "0.3", "--nsamples", "4", "--seqlen", "32",
                 "--eval-tokens", "0", "--quiet", "--out", str(out), *argv]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["align"] == align
    kept = json.loads((out / "config.json").read_text())["slimgpt_layers"]["intermediate"]
    if align == 32:
        assert all(k % 32 == 0 or k == 128 for k in kept), kept
