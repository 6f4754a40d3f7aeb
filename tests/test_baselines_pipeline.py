"""Every baseline and SlimGPT ablation runs through the layer-wise pipeline on tiny models and
removes the same number of parameters as SlimGPT (FLAP: the same budget, its own per-layer split)."""
import pytest
import torch

from slimgpt import baselines_methods as BM
from slimgpt import pipeline as P
from slimgpt.loaders.tiny import tiny_model

BM.register_all()


def _calib(model, n=8, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (n, T), generator=g)


def _run(name, method, ratio=0.3, gqa="query", **kw):
    model = tiny_model(name, seed=1)
    calib = _calib(model)
    s = P.PruneSettings(ratio=ratio, method=method, gqa=gqa, **kw)
    counts = BM.PLANNERS[method](model, calib, s) if method in BM.PLANNERS else None
    res = P.prune_model(model, calib, s, log=lambda m: None, progress=False, counts=counts)
    logits = model(_calib(model, 2, 16, seed=5))
    assert torch.isfinite(logits).all()
    return model, res


@pytest.mark.parametrize("name,gqa", [("tiny-gqa", "query"), ("tiny-llama", "query"), ("tiny-gqa", "group")])
def test_methods_hit_the_same_parameter_count(name, gqa):
    ref_model, ref = _run(name, "slimgpt", gqa=gqa)
    n_ref = ref_model.num_parameters()
    assert n_ref < ref.summary["params_before"]
    # The pipeline hits ratio x prunable parameters within one FFN channel (3·D): methods that
    # drop a different number of KV heads (GQA "query") may land on the other side of a channel.
    channel = P.param_costs(ref_model.config)["channel"]
    for method in ("magnitude", "wanda-sp"):
        m, res = _run(name, method, gqa=gqa)
        assert abs(m.num_parameters() - n_ref) <= channel, method
        assert abs(res.summary["pruned_params"] - res.summary["target_pruned_params"]) <= channel
        assert res.summary["heads_kept"] == ref.summary["heads_kept"], method   # same schedule counts
    for kw in ({"compensate": False}, {"gcd": False}, {"method_options": {"group_sizes": 4}}):
        m, res = _run(name, "slimgpt", gqa=gqa, **kw)
        assert abs(m.num_parameters() - n_ref) <= channel, kw
        assert res.summary["heads_kept"] == ref.summary["heads_kept"], kw


@pytest.mark.parametrize("name,gqa", [("tiny-gqa", "query"), ("tiny-llama", "query"), ("tiny-gqa", "group")])
def test_flap_meets_the_budget_with_bias(name, gqa):
    model, res = _run(name, "flap", gqa=gqa)
    cfg = model.config
    costs = P.param_costs(cfg)
    target = res.summary["target_pruned_params"]
    pruned = res.summary["pruned_params"]
    # global_select stops within one FFN channel of the budget; under GQA "query" a KV head
    # leaves as well when all of its query heads are gone (at most one per layer here).
    slack = costs["channel"] + cfg.num_hidden_layers * costs["kv_head"]
    assert target - costs["channel"] <= pruned <= target + slack
    assert model.num_parameters() == res.summary["params_before"] - pruned + \
        sum(l.self_attn.o_proj.bias.numel() + l.mlp.down_proj.bias.numel() for l in model.model.layers)
    # FLAP's compensation put biases on o_proj and down_proj of every layer that lost something
    assert cfg.o_proj_bias and cfg.mlp_bias
    assert all(h >= 1 for h in res.summary["heads_kept"])          # min_keep
    assert all(c >= 1 for c in res.summary["channels_kept"])


def test_balanced_gqa_selects_evenly():
    # 9 heads over 3 KV groups: balanced mode prunes the same number per group
    scores = torch.tensor([5.0, 1, 2, 0, 9, 9, 3, 4, 0.5])
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert BM.select_lowest_grouped(scores, 3, groups).tolist() == [1, 3, 8]
    with pytest.raises(ValueError):
        BM.select_lowest_grouped(scores, 2, groups)


def test_magnitude_kv_rows_count_only_when_they_leave():
    m = tiny_model("tiny-gqa", seed=1)
    layer = m.model.layers[0]
    d = layer.self_attn.head_dim
    assert not BM._kv_in_struct(layer, d)          # a query head shares its KV head
    assert BM._kv_in_struct(layer, 3 * d)          # a whole GQA group takes its k/v rows
    mha = tiny_model("tiny-llama", seed=1).model.layers[0]
    assert BM._kv_in_struct(mha, mha.self_attn.head_dim)


@pytest.mark.parametrize("extra", [["--method", "flap"], ["--method", "wanda-sp"], ["--method", "magnitude"],
                                   ["--no-compensation", "--no-gcd", "--fixed-group", "16"]])
def test_cli_methods_and_ablation_flags(tmp_path, capsys, extra):
    import json

    from slimgpt.cli import main

    out = tmp_path / "p"
    rc = main(["prune", "--model", "tiny-gqa", "--ratio", "0.3", "--nsamples", "4", "--seqlen", "16",
               "--backend", "reference", "--eval-tokens", "0", "--out", str(out), "--json", "--quiet", *extra])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    st = rep["settings"]
    assert st["method"] == (extra[1] if extra[0] == "--method" else "slimgpt")
    if extra[0] != "--method":
        assert st["compensate"] is False and st["gcd"] is False and st["method_options"] == {"group_sizes": 16}
    assert rep["prune"]["params_after"] < rep["prune"]["params_before"]


def test_cli_rejects_bad_fixed_group(tmp_path, capsys):
    from slimgpt.cli import main

    rc = main(["prune", "--model", "tiny-gqa", "--fixed-group", "0", "--nsamples", "4", "--out",
               str(tmp_path / "o"), "--quiet", "--eval-tokens", "0"])
    assert rc == 2


def test_python_api_prune_applies_the_flap_plan():
    loaded, res = P.prune("tiny-gqa", P.PruneSettings(ratio=0.3, method="flap", n_samples=4, seqlen=16),
                          progress=False, log=lambda m: None)
    sched = [round(9 * r) for r in res.summary["ratios"]]
    kept = res.summary["heads_kept"]
    assert res.summary["settings"]["method"] == "flap"
    assert [9 - k for k in kept] != sched or res.summary["channels_kept"] != [
        128 - round(128 * r) for r in res.summary["ratios"]]          # FLAP's own per-layer split
    assert loaded.model.config.o_proj_bias and loaded.model.config.mlp_bias
