"""The methods of slimgpt/methods/: each criterion by hand on tiny matrices, the selection
helpers, and every method and SlimGPT ablation through the pipeline and the CLI on tiny models.

Every expected number in the hand-computed tests is worked out in the comment beside it.
"""
import copy
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from slimgpt import pipeline as P
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.methods import METHODS, Method, Selection, register
from slimgpt.methods.base import block_columns, per_block, select_lowest, select_lowest_grouped
from slimgpt.methods.flap import fluctuation_column_scores, global_select, standardize, structure_scores
from slimgpt.methods.magnitude import magnitude_scores, owns_kv
from slimgpt.methods.wanda_sp import wanda_sp_column_scores
from slimgpt.pipeline import PruneError
from slimgpt.schedule import param_costs
from slimgpt.stats import ActivationStats
from slimgpt.testing import assert_close, quiet_prune
from slimgpt.textdata import calibration_windows

pytestmark = pytest.mark.usefixtures("no_grad")


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# --- statistics ---------------------------------------------------------------------------------

def test_activation_stats_hand_values():
    # Channel 0 sees 1, 2, 3, 6: mean 3, deviations -2,-1,0,3 -> M2 = 4+1+0+9 = 14, var = 14/3,
    # Σx² = 1+4+9+36 = 50. Channel 1 sees 0, 0, 0, 4: mean 1, M2 = 1+1+1+9 = 12, var 4, Σx² = 16.
    s = ActivationStats(2)
    s.add(t([[1, 0], [2, 0]]))             # two batches of different sizes: the merge is exact
    s.add(t([[[3, 0], [6, 4]]]))           # (batch, seq, d_in) inputs are flattened to tokens
    assert s.n == 4
    assert_close(s.mean, [3.0, 1.0], "float64")
    assert_close(s.var, [14 / 3, 4.0], "float64")
    assert_close(s.sq_norm, [50.0, 16.0], "float64")


def test_activation_stats_rejects_wrong_width():
    with pytest.raises(ValueError):
        ActivationStats(3).add(torch.zeros(2, 4))


# --- magnitude ----------------------------------------------------------------------------------

def test_magnitude_head_scores_by_hand():
    # 2 heads of size d=1 on D=2. Head 0 owns q row 0, k row 0, v row 0 and o column 0.
    Wq = t([[1, 1], [0, 2]])    # row norms² 2, 4
    Wk = t([[0, 1], [1, 0]])    # 1, 1
    Wv = t([[2, 0], [0, 0]])    # 4, 0
    Wo = t([[1, 3], [1, 0]])    # column norms² 2, 9
    s = magnitude_scores([(Wq, 0), (Wk, 0), (Wv, 0), (Wo, 1)], n_struct=2)
    assert_close(s, [2 + 1 + 4 + 2, 4 + 1 + 0 + 9], "float64")   # [9, 14]
    assert select_lowest(s, 1).tolist() == [0]
    # query-head-only structures (GQA): k/v stay, so only q rows + o columns count
    assert_close(magnitude_scores([(Wq, 0), (Wo, 1)], 2), [2 + 2, 4 + 9], "float64")


def test_magnitude_channel_scores_blocks_of_columns():
    # FFN channel c: gate row c, up row c, down column c. 3 channels, D = 1.
    s = magnitude_scores([(t([[1], [2], [0]]), 0), (t([[0], [1], [3]]), 0), (t([[1, 1, 1]]), 1)], n_struct=3)
    assert_close(s, [1 + 0 + 1, 4 + 1 + 1, 0 + 9 + 1], "float64")  # [2, 6, 10]
    # A head of d=2 columns sums both: o_proj 1x4, heads {0,1} and {2,3}.
    assert_close(magnitude_scores([(t([[1, 2, 0, 1]]), 1)], n_struct=2), [5.0, 1.0], "float64")
    with pytest.raises(ValueError):
        magnitude_scores([(torch.ones(3, 2), 0)], n_struct=2)


def test_magnitude_kv_rows_count_only_when_they_leave():
    attn = tiny_model("tiny-gqa", seed=1).model.layers[0].self_attn
    assert not owns_kv(attn, attn.head_dim)          # a query head shares its KV head
    assert owns_kv(attn, 3 * attn.head_dim)          # a whole GQA group takes its k/v rows
    mha = tiny_model("tiny-llama", seed=1).model.layers[0].self_attn
    assert owns_kv(mha, mha.head_dim)


# --- Wanda-sp -----------------------------------------------------------------------------------

def test_wanda_sp_by_hand():
    # W (2x4); ||X_j||² = [4, 1, 9, 0] -> ||X_j|| = [2, 1, 3, 0].
    W = t([[1, -2, 0, 5], [-1, 1, 1, 5]])
    s = wanda_sp_column_scores(W, t([4, 1, 9, 0]))
    # Σ_i |W_ij| = [2, 3, 1, 10] -> × norms = [4, 3, 3, 0]
    assert_close(s, [4.0, 3.0, 3.0, 0.0], "float64")
    # heads of 2 columns: [4+3, 3+0] = [7, 3]; the dead-input column makes head 1 least important
    heads = per_block(s, 2)
    assert_close(heads, [7.0, 3.0], "float64")
    assert select_lowest(heads, 1).tolist() == [1]


def test_wanda_sp_uses_activations_not_only_weights():
    # Same weights, swapped activation norms: the choice flips (magnitude alone could not).
    W = t([[1, 2]])
    assert select_lowest(wanda_sp_column_scores(W, t([100, 1])), 1).tolist() == [1]   # [10, 2]
    assert select_lowest(wanda_sp_column_scores(W, t([1, 100])), 1).tolist() == [0]   # [1, 20]


# --- FLAP ---------------------------------------------------------------------------------------

def test_fluctuation_by_hand():
    # Var(X) = [2, 0, 1]; ||W[:,j]||² = [1+1, 9, 4] = [2, 9, 4] -> f = [4, 0, 4]
    assert_close(fluctuation_column_scores(t([[1, 3, 0], [1, 0, 2]]), t([2, 0, 1])), [4.0, 0.0, 4.0], "float64")


def test_standardize_and_structure_scores_by_hand():
    # f = [1, 2, 3, 6]: mean 3, sample std sqrt((4+1+0+9)/3) = sqrt(14/3)
    sd = (14 / 3) ** 0.5
    assert_close(standardize(t([1, 2, 3, 6])), [-2 / sd, -1 / sd, 0.0, 3 / sd], "float64")
    # heads of two columns: means of z -> [-1.5/sd, 1.5/sd]
    assert_close(structure_scores(t([1, 2, 3, 6]), 2), [-1.5 / sd, 1.5 / sd], "float64")
    # square=True (FLAP's attention): f² = [1, 4, 9, 36], mean 12.5, deviations -11.5,-8.5,-3.5,23.5
    sd2 = ((11.5 ** 2 + 8.5 ** 2 + 3.5 ** 2 + 23.5 ** 2) / 3) ** 0.5
    assert_close(structure_scores(t([1, 2, 3, 6]), 2, square=True), [-10 / sd2, 10 / sd2], "float64")
    # constant scores standardize to 0, not NaN
    assert_close(standardize(t([5, 5, 5])), [0.0, 0.0, 0.0], "float64")


def test_global_select_costs_and_budget_by_hand():
    # Group 0: 3 heads of cost 10; group 1: 4 channels of cost 1. Budget 13.
    out = global_select([t([-1.0, 0.5, 2.0]), t([-2.0, -0.5, 0.0, 1.0])], [10, 1], budget=13)
    # ascending walk: chan0 (-2, left 12), head0 (-1, left 2), chan1 (-0.5, left 1),
    # chan2 (0.0, left 0) -> stop. Removed 10 + 3 = 13 = budget.
    assert out[0].tolist() == [0] and out[1].tolist() == [0, 1, 2]


def test_global_select_skips_overshoot_and_keeps_min():
    # Budget 5: head (cost 10) is lowest but does not fit -> skipped; channels fill 3 of 5,
    # min_keep=1 stops the channel group at 3 of 4.
    out = global_select([t([-9.0]), t([0.0, 1.0, 2.0, 3.0])], [10, 1], budget=5, min_keep=1)
    assert out[0].tolist() == [] and out[1].tolist() == [0, 1, 2]
    # min_keep=1 on a 2-head layer with a big budget: one head always stays
    assert global_select([t([0.0, 1.0])], [1], budget=100)[0].tolist() == [0]


def test_flap_plan_by_hand():
    # Two layers, each 2 heads of 1 column and 3 channels. Heads cost 10, channels 1, budget 12.
    # Attention scores are squared then standardized: layer 0 [1, 2] -> [1, 4] -> z = [-0.707, 0.707]
    # layer 1 [3, 1] -> [9, 1] -> z = [0.707, -0.707]. Channels standardized per layer:
    # layer 0 [0, 1, 2] -> [-1, 0, 1]; layer 1 [5, 5, 8] -> [-0.577, -0.577, 1.155].
    heads = [structure_scores(t([1.0, 2.0]), 2, square=True), structure_scores(t([3.0, 1.0]), 2, square=True)]
    chans = [structure_scores(t([0.0, 1.0, 2.0]), 3), structure_scores(t([5.0, 5.0, 8.0]), 3)]
    chosen = global_select(heads + chans, [10, 10, 1, 1], budget=12)
    # ascending: L0 ch0 (-1, left 11), L0 head0 (-0.707, left 1), L1 head1 (-0.707, cost 10 > 1: skip),
    # L1 ch0 (-0.577, left 0) -> done.
    assert [c.tolist() for c in chosen] == [[0], [], [0], [0]]


def test_flap_bias_keeps_the_mean_output():
    # down_proj (2x3), calibration inputs with mean [1, 2, 3]; prune channel 1: Δb = W[:,1]·μ_1 = [10, 10]
    down = nn.Linear(3, 2, bias=False).double()
    down.weight.copy_(t([[1, 5, 2], [0, 5, -1]]))
    X = t([[0.0, 1.0, 3.0], [2.0, 3.0, 3.0]])
    stats = ActivationStats(3)
    stats.add(X)
    dense_mean = down(X).mean(0)
    sel = Selection(down.weight.clone().index_fill_(1, torch.tensor([1]), 0), [1])
    run = SimpleNamespace(method=METHODS["flap"], options=SimpleNamespace(compensate=True),
                          settings=SimpleNamespace(bias_compensation=None))
    P._compensate_bias(down, down.weight.data.clone(), sel, stats, run)
    assert_close(down.bias, [10.0, 10.0], "float64")
    down.weight.copy_(sel.W)
    assert_close(down(X).mean(0), dense_mean, "float64")      # the mean output is kept exactly


@pytest.mark.parametrize("method,wanted,biased", [("slimgpt", True, True), ("slimgpt", None, False),
                                                   ("flap", None, True), ("flap", False, False)])
def test_bias_compensation_setting_overrides_the_methods_default(method, wanted, biased):
    """--bias-compensation turns FLAP's mean-shift bias on for SlimGPT (beyond the paper); False
    turns it off for FLAP; None keeps each method's default."""
    down = nn.Linear(3, 2, bias=False).double()
    down.weight.copy_(t([[1, 5, 2], [0, 5, -1]]))
    stats = ActivationStats(3)
    stats.add(t([[0.0, 1.0, 3.0], [2.0, 3.0, 3.0]]))
    sel = Selection(down.weight.clone().index_fill_(1, torch.tensor([1]), 0), [1])
    run = SimpleNamespace(method=METHODS[method], options=SimpleNamespace(compensate=True),
                          settings=SimpleNamespace(bias_compensation=wanted))
    P._compensate_bias(down, down.weight.data.clone(), sel, stats, run)
    assert (down.bias is not None) == biased
    if biased:
        assert_close(down.bias, [10.0, 10.0], "float64")


def test_bias_compensation_through_the_pipeline_keeps_the_heads_of_layer_0():
    """SlimGPT with the bias: every o_proj/down_proj gets a bias (counted in the parameters); layer
    0's attention sees the same inputs, so it prunes exactly the heads plain SlimGPT prunes (its
    FFN then sees the biased attention output, so the channels may differ)."""
    model = tiny_model("tiny-gqa")
    calib = calibration_windows(byte_tokenizer(), 8, 32, 0)
    plain = quiet_prune(copy.deepcopy(model), calib, ratio=0.4)
    biased = quiet_prune(model, calib, ratio=0.4, bias_compensation=True)
    a, b = plain.layers[0], biased.layers[0]
    assert a["heads_pruned"] == b["heads_pruned"]
    for layer in biased.model.model.layers:
        assert layer.self_attn.o_proj.bias is not None and layer.mlp.down_proj.bias is not None
    assert biased.model.num_parameters() > plain.model.num_parameters()


# --- selection helpers ----------------------------------------------------------------------------

def test_select_lowest_ties_and_bounds():
    assert select_lowest(t([1, 0, 0, 2]), 2).tolist() == [1, 2]
    assert select_lowest(t([3, 1, 2]), 0).tolist() == []
    with pytest.raises(ValueError):
        select_lowest(t([1, 2]), 3)


def test_balanced_selection_takes_the_same_number_per_group():
    # 9 heads over 3 KV groups: balanced mode prunes the same number per group
    scores = t([5.0, 1, 2, 0, 9, 9, 3, 4, 0.5])
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert select_lowest_grouped(scores, 3, groups).tolist() == [1, 3, 8]
    with pytest.raises(ValueError):
        select_lowest_grouped(scores, 2, groups)


def test_block_columns():
    assert block_columns(torch.tensor([0, 2]), 3).tolist() == [0, 1, 2, 6, 7, 8]
    assert block_columns(torch.tensor([], dtype=torch.int64), 3).tolist() == []


# --- through the pipeline -------------------------------------------------------------------------

def _calib(model, n=8, T=24, seed=0):
    return torch.randint(0, model.config.vocab_size, (n, T), generator=torch.Generator().manual_seed(seed))


def _run(name, method, ratio=0.3, gqa="query", **kw):
    model = tiny_model(name, seed=1)
    res = quiet_prune(model, _calib(model), ratio=ratio, method=method, gqa=gqa, **kw)
    assert torch.isfinite(model(_calib(model, 2, 16, seed=5))).all()
    return model, res


@pytest.mark.parametrize("name,gqa", [("tiny-gqa", "query"), ("tiny-llama", "query"), ("tiny-gqa", "group")])
def test_methods_hit_the_same_parameter_count(name, gqa):
    ref_model, ref = _run(name, "slimgpt", gqa=gqa)
    n_ref = ref_model.num_parameters()
    assert n_ref < ref.summary["params_before"]
    # The pipeline hits ratio x prunable parameters within one FFN channel (3·D): methods that
    # drop a different number of KV heads (GQA "query") may land on the other side of a channel.
    channel = param_costs(ref_model.config)["channel"]
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
def test_flap_follows_its_own_plan_and_meets_the_budget_with_bias(name, gqa):
    model, res = _run(name, "flap", gqa=gqa)
    plan = METHODS["flap"].plan(tiny_model(name, seed=1), _calib(model), P.PruneSettings(ratio=0.3, gqa=gqa))
    assert [r["heads_before"] - r["heads_kept"] for r in res.layers] == [p.heads for p in plan]
    assert [r["channels_before"] - r["channels_kept"] for r in res.layers] == [p.channels for p in plan]
    cfg = model.config
    costs = param_costs(cfg)
    target, pruned = res.summary["target_pruned_params"], res.summary["pruned_params"]
    # global_select stops within one FFN channel of the budget; under GQA "query" a KV head
    # leaves as well when all of its query heads are gone (at most one per layer here).
    assert target - costs["channel"] <= pruned <= target + costs["channel"] + cfg.num_hidden_layers * costs["kv_head"]
    assert model.num_parameters() == res.summary["params_before"] - pruned + \
        sum(ly.self_attn.o_proj.bias.numel() + ly.mlp.down_proj.bias.numel() for ly in model.model.layers)
    assert cfg.o_proj_bias and cfg.mlp_bias                     # FLAP's compensation: biases everywhere
    assert all(h >= 1 for h in res.summary["heads_kept"])       # min_keep
    assert all(c >= 1 for c in res.summary["channels_kept"])


def test_flap_plan_differs_from_the_schedule():
    """The plan is FLAP's own per-layer split (a test that could not tell the plan from the
    schedule would pass on a pipeline that ignored it)."""
    _, flap = _run("tiny-gqa", "flap")
    _, sched = _run("tiny-gqa", "wanda-sp")
    assert flap.summary["heads_kept"] != sched.summary["heads_kept"] or \
        flap.summary["channels_kept"] != sched.summary["channels_kept"]


def test_a_registered_method_runs_without_pipeline_changes():
    class Keep(Method):
        """Prunes the highest-index blocks; no statistics needed."""
        name = "test-last-blocks"

        def select(self, kind, W, stats, blocks, *, layer, options):
            n = W.shape[1] // blocks.width
            pruned = list(range(n - blocks.n_prune, n))
            W_new = W.clone()
            W_new[:, block_columns(pruned, blocks.width)] = 0
            return Selection(W_new, pruned)

    register(Keep())
    try:
        _, res = _run("tiny-llama", "test-last-blocks")
        assert all(r["heads_pruned"] == list(range(8 - len(r["heads_pruned"]), 8)) for r in res.layers)
    finally:
        METHODS.pop("test-last-blocks")


@pytest.mark.parametrize("extra", [["--method", "flap"], ["--method", "wanda-sp"], ["--method", "magnitude"],
                                   ["--no-compensation", "--no-gcd", "--fixed-group", "16"]])
def test_cli_methods_and_ablation_flags(tmp_path, capsys, extra):
    from slimgpt.cli import main

    rc = main(["prune", "--model", "tiny-gqa", "--ratio", "0.3", "--nsamples", "4", "--seqlen", "16",
               "--backend", "reference", "--eval-tokens", "0", "--out", str(tmp_path / "p"), "--json", "--quiet", *extra])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    st = rep["settings"]
    assert st["method"] == (extra[1] if extra[0] == "--method" else "slimgpt")
    if extra[0] != "--method":
        assert st["compensate"] is False and st["gcd"] is False and st["method_options"] == {"group_sizes": 16}
    assert rep["prune"]["params_after"] < rep["prune"]["params_before"]


def test_cli_rejects_bad_fixed_group(tmp_path):
    from slimgpt.cli import main

    assert main(["prune", "--model", "tiny-gqa", "--fixed-group", "0", "--nsamples", "4", "--out",
                 str(tmp_path / "o"), "--quiet", "--eval-tokens", "0"]) == 2


def test_python_api_prune_applies_the_flap_plan():
    loaded, res = P.prune("tiny-gqa", P.PruneSettings(ratio=0.3, method="flap", n_samples=4, seqlen=16),
                          progress=False, log=lambda m: None)
    from slimgpt.loaders import load_model
    from slimgpt.textdata import calibration_windows
    fresh = load_model("tiny-gqa")
    calib = calibration_windows(fresh.tokenizer, 4, 16, 0)
    plan = METHODS["flap"].plan(fresh.model, calib, P.PruneSettings(ratio=0.3))
    assert [r["heads_before"] - r["heads_kept"] for r in res.layers] == [p.heads for p in plan]
    assert [r["channels_before"] - r["channels_kept"] for r in res.layers] == [p.channels for p in plan]
    assert loaded.model.config.o_proj_bias and loaded.model.config.mlp_bias


@pytest.mark.parametrize("method", ["slimgpt", "wanda-sp"])
def test_flap_schedule_gives_any_method_flaps_per_layer_counts(method):
    """--schedule flap (beyond the paper): FLAP's plan decides how many heads each layer loses and
    how its channels are shared out, the method decides which. Without the target (hit_target=False)
    the counts are FLAP's own; with it the Budget re-apportions the channels by FLAP's fractions so
    the run removes the target within one channel, like every schedule."""
    calib = calibration_windows(byte_tokenizer(), 8, 32, 0)
    flap = quiet_prune(tiny_model("tiny-gqa"), calib, ratio=0.4, method="flap")
    own = quiet_prune(tiny_model("tiny-gqa"), calib, ratio=0.4, method=method, schedule="flap", hit_target=False)
    assert [(r["heads_kept"], r["channels_kept"]) for r in own.layers] == \
        [(r["heads_kept"], r["channels_kept"]) for r in flap.layers]
    ours = quiet_prune(tiny_model("tiny-gqa"), calib, ratio=0.4, method=method, schedule="flap")
    assert [r["heads_kept"] for r in ours.layers] == [r["heads_kept"] for r in flap.layers]
    assert ours.summary["ratios"] == [len(r["channels_pruned"]) / r["channels_before"] for r in flap.layers]
    sm = ours.summary
    assert abs(sm["pruned_params"] - sm["target_pruned_params"]) <= P.param_costs(tiny_model("tiny-gqa").config)["channel"]
    with pytest.raises(PruneError, match="--schedule flap"):
        quiet_prune(tiny_model("tiny-gqa"), calib, ratio=0.4, schedule="flap", gqa="balanced")


@pytest.mark.parametrize("name,gqa,ratio", [
    ("tiny-gqa", "query", 0.2), ("tiny-gqa", "group", 0.5), ("tiny-llama", "query", 0.3),
    ("tiny-hetero", "query", 0.4), ("tiny-qwen2", "query", 0.5),
])
def test_flap_schedule_meets_the_budget_on_every_architecture(name, gqa, ratio):
    """--schedule flap with SlimGPT's selection removes the target within one FFN channel, keeps
    at least one head and channel per layer and, under --gqa group, whole KV groups."""
    m = tiny_model(name)
    res = quiet_prune(m, calibration_windows(byte_tokenizer(), 8, 32, 0), ratio=ratio, gqa=gqa, schedule="flap")
    sm = res.summary
    assert abs(sm["pruned_params"] - sm["target_pruned_params"]) <= P.param_costs(m.config)["channel"]
    assert sm["params_after"] == sm["params_before"] - sm["pruned_params"]
    for rec in res.layers:
        assert rec["heads_kept"] >= 1 and rec["channels_kept"] >= 1
        if gqa == "group":
            rep = m.config.num_attention_heads // m.config.num_key_value_heads
            assert len(rec["heads_pruned"]) == rep * len(rec["kv_pruned"])
