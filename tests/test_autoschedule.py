"""The data-driven schedule (slimgpt.autoschedule, --schedule auto) on tiny models."""
import numpy as np
import pytest
import torch

from slimgpt import autoschedule as A
from slimgpt import reference
from slimgpt.loaders.tiny import tiny_model
from slimgpt.pipeline import PruneError, PruneSettings
from slimgpt.schedule import param_costs, prunable_params
from slimgpt.testing import assert_close, calibration, hessian_of, quiet_prune



pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_grad")


def calib(n=8, T=32, seed=0):
    """Seeded random byte windows (C4 text would only add tokenizer time)."""
    return torch.randint(0, 256, (n, T), generator=torch.Generator().manual_seed(seed))


def run(name, seed=0, **kw):
    m = tiny_model(name)
    return m, quiet_prune(m, calib(seed=seed), schedule="auto", **kw)


@pytest.mark.parametrize("name,gqa,ratio", [
    ("tiny-gqa", "query", 0.2), ("tiny-gqa", "query", 0.5), ("tiny-gqa", "group", 0.5),
    ("tiny-gqa", "balanced", 0.4), ("tiny-llama", "query", 0.3), ("tiny-hetero", "query", 0.4),
    ("tiny-qwen2", "query", 0.5),
])
def test_hits_the_target_and_respects_the_gqa_granularity(name, gqa, ratio):
    m, res = run(name, ratio=ratio, gqa=gqa)
    sm, cfg = res.summary, m.config
    channel = param_costs(cfg)["channel"]
    assert abs(sm["pruned_params"] - sm["target_pruned_params"]) <= channel
    assert sm["params_after"] == sm["params_before"] - sm["pruned_params"]
    assert len(sm["ratios"]) == cfg.num_hidden_layers and all(0 <= r < 1 for r in sm["ratios"])
    for rec in res.layers:
        assert rec["heads_kept"] >= 1 and rec["channels_kept"] >= 1
        n = len(rec["heads_pruned"])
        if gqa == "group":
            assert n % 3 == 0 and len(rec["kv_pruned"]) == n // 3
        if gqa == "balanced":
            assert n % 3 == 0 and len(rec["kv_pruned"]) == 0
    # the per-layer split is not a formula: some layer prunes more than another
    assert len({r["channels_kept"] for r in res.layers}) > 1


def test_deterministic_and_seeded():
    m1, r1 = run("tiny-gqa", ratio=0.4)
    m2, r2 = run("tiny-gqa", ratio=0.4)
    assert r1.summary["ratios"] == r2.summary["ratios"]
    assert [r["heads_pruned"] for r in r1.layers] == [r["heads_pruned"] for r in r2.layers]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    _, r3 = run("tiny-gqa", seed=5, ratio=0.4)      # another calibration sample, another plan
    assert ([r["channels_pruned"] for r in r3.layers] != [r["channels_pruned"] for r in r1.layers])


def test_ratio_zero_prunes_nothing_and_model_is_unchanged_by_planning():
    m = tiny_model("tiny-gqa")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = [p.requires_grad for p in m.parameters()]
    ratios, plan = A.auto_plan(m, calib(), PruneSettings(ratio=0.3, schedule="auto"))
    for k, v in m.state_dict().items():          # planning reads the model, never writes it
        assert torch.equal(v, before[k])
    assert [p.requires_grad for p in m.parameters()] == flags
    assert sum(p.heads for p in plan) > 0 and any(r > 0 for r in ratios)
    ratios, plan = A.auto_plan(m, calib(), PruneSettings(ratio=0.0, schedule="auto"))
    assert ratios == [0.0] * 4 and all(p.heads == 0 for p in plan)


def _layer_and_stats(i: int, which: str, *, n: int, d: int, seed: int):
    """Decoder layer i of tiny-gqa, its config, H of n correlated inputs of width d, and a
    stand-in for the auto schedule's per-layer statistics with that H as `which` ("o": o_proj's
    input, "d": down_proj's)."""
    m = tiny_model("tiny-gqa")
    H = hessian_of(calibration(np.random.default_rng(seed), n, d, mix=3.0))
    stats = type("Stats", (), {which: type("Input", (), {"H": torch.tensor(H)})()})()
    return m.model.layers[i], m.config, H, stats


def test_channel_curve_is_the_obs_loss_of_fixed_group_pruning():
    """With unweighted errors, the curve after k blocks of b channels is the OBS loss of
    SlimGPT's channel pruning in fixed groups of b (the reference, float64)."""
    layer, cfg, H, st = _layer_and_stats(1, "d", n=400, d=128, seed=0)
    s = PruneSettings(ratio=0.5, percdamp=0.01)
    opt = A.AutoOptions(channel_block=8, weighting="none")
    c = A._channel_curve(layer, 1, st, s, opt, cfg)
    W = layer.mlp.down_proj.weight.detach().double().numpy()
    for k in (1, 3, 7):
        _, _, loss = reference.prune_channels(W, H, 8 * k, percdamp=0.01, group_sizes=8, return_loss=True)
        assert_close(c.loss[k], loss, "float64_solve", err_msg=f"{k} blocks")
        assert c.params[k] == 8 * k * param_costs(cfg)["channel"] and c.units[k] == 8 * k


def test_head_curve_errors_add_up_to_the_joint_obs_error():
    """The greedy steps are H-orthogonal: the curve's loss after k heads equals the OBS error of
    removing those k heads at once, ½ tr(W_P (H⁻¹_PP)⁻¹ W_Pᵀ)."""
    layer, cfg, H, st = _layer_and_stats(2, "o", n=900, d=72, seed=1)
    c = A._head_curve(layer, 2, st, PruneSettings(ratio=0.5, percdamp=0.0), A.AutoOptions(weighting="none"), cfg)
    assert c.units == list(range(9))               # query mode: one head at a time, one always kept
    W = layer.self_attn.o_proj.weight.detach().double().numpy()
    G = np.linalg.inv(H)
    # the heads removed, step by step, are recoverable by re-running the greedy on prefixes
    for k in (2, 5):
        best = None
        from itertools import combinations
        for P in combinations(range(9), k):       # the joint error of the curve's set is one of these
            cols = np.array([h * 8 + j for h in P for j in range(8)])
            e = 0.5 * np.trace(W[:, cols] @ np.linalg.inv(G[np.ix_(cols, cols)]) @ W[:, cols].T)
            if abs(e - c.loss[k]) <= 1e-8 * abs(e):
                best = P
                break
        assert best is not None, f"no set of {k} heads has the curve's joint error {c.loss[k]}"


def test_weighting_by_an_identity_metric_is_the_plain_error():
    rng = torch.Generator().manual_seed(0)
    E = torch.randn(6, 3, generator=rng, dtype=torch.float64)       # scaled errors of a removed set
    plain = A._weighted(1.0, E)
    assert_close(plain, 0.5 * float((E ** 2).sum()), "float64")
    assert_close(A._weighted(torch.eye(6, dtype=torch.float64), E), plain, "float64")
    assert_close(A._weighted(2.0 * torch.eye(6, dtype=torch.float64), E), 2 * plain, "float64")


def test_allocate_takes_the_cheapest_loss_per_parameter_first():
    a = A.Curve(0, "heads")
    for loss in (1.0, 1.0, 10.0):                  # heads of 100 parameters
        a.add(100, loss, 1)
    b = A.Curve(0, "channels")
    for loss in (0.5, 3.0, 3.0):                   # blocks of 2 channels of 10 parameters
        b.add(20, loss, 2)
    # loss per parameter: heads 0.01, 0.01, 0.1; channels 0.025, 0.15, 0.15
    assert A.allocate([a, b], 200, 10) == [2, 0]
    assert A.allocate([a, b], 220, 10) == [2, 2]
    assert A.allocate([a, b], 250, 10) == [2, 5]   # channels cut to the budget
    assert A.allocate([a, b], 230, 10) == [2, 3]
    # a head segment that does not fit is skipped; channels fill the rest
    assert A.allocate([a, b], 90, 10) == [0, 6]


def test_allocate_uses_the_convex_hull():
    c = A.Curve(0, "heads")
    for loss in (5.0, 0.0, 0.0):                   # non-convex: the 2nd head is free after the 1st
        c.add(100, loss, 1)
    d = A.Curve(1, "heads")
    for loss in (3.0, 3.0):
        d.add(100, loss, 1)
    # per parameter: c's hull 0.025 (two heads for 5.0), d 0.03
    assert A.allocate([c, d], 200, 1) == [2, 0]


def test_bad_options():
    m = tiny_model("tiny-gqa")
    with pytest.raises(PruneError, match="weighting"):
        A.auto_plan(m, calib(), PruneSettings(ratio=0.3, schedule="auto"), A.AutoOptions(weighting="bogus"))
    with pytest.raises(PruneError, match="group"):
        quiet_prune(tiny_model("tiny-hetero"), calib(), ratio=0.3, schedule="auto", gqa="group")


@pytest.mark.parametrize("schedule", ["auto", "flap"])
def test_cli_records_the_chosen_counts(tmp_path, schedule):
    """slimgpt prune --schedule auto|flap: the run hits the parameter target (within one FFN
    channel) and the manifest records the chosen per-layer ratios and counts."""
    import json

    from slimgpt.cli import main
    out = tmp_path / "o"
    assert main(["prune", "--model", "tiny-gqa", "--ratio", "0.3", "--schedule", schedule, "--nsamples", "8",
                 "--seqlen", "32", "--eval-tokens", "0", "--quiet", "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    cfg = tiny_model("tiny-gqa").config
    assert man["settings"]["schedule"] == schedule and len(man["ratios"]) == cfg.num_hidden_layers
    assert [round(len(r["channels_pruned"]) / r["channels_before"], 12) for r in man["layers"]] == \
        [round(r, 12) for r in man["ratios"]]
    pruned = man["params_before"] - man["params_after"]
    target = 0.3 * sum(prunable_params(cfg, i) for i in range(cfg.num_hidden_layers))
    assert abs(pruned - target) <= param_costs(cfg)["channel"] + param_costs(cfg)["kv_head"]
