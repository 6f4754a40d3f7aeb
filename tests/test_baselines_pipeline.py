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
