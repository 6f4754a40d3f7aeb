"""The searched schedule (slimgpt.autoschedule, --schedule auto) on tiny models: it is exactly the
candidate (log, blend, FLAP's counts) whose own prune leaves the lowest calibration loss."""
import json

import pytest
import torch

from slimgpt import autoschedule as A
from slimgpt import methods
from slimgpt.evaluate import perplexity
from slimgpt.loaders.tiny import tiny_model
from slimgpt.pipeline import PruneError, PruneSettings, choose_plan
from slimgpt.schedule import param_costs
from slimgpt.testing import quiet_prune

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_grad")


def calib(n=8, T=32, seed=0):
    """Seeded random byte windows (C4 text would only add tokenizer time)."""
    return torch.randint(0, 256, (n, T), generator=torch.Generator().manual_seed(seed))


def pruned(name="tiny-gqa", seed=0, **kw):
    m = tiny_model(name)
    return m, quiet_prune(m, calib(seed=seed), **kw)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_auto_is_the_candidate_with_the_lowest_calibration_loss(ratio):
    """Each candidate pruned on its own (--auto-blends T) leaves the loss auto recorded for it, and
    auto's model is, weight for weight, the candidate with the lowest one."""
    m, res = pruned(ratio=ratio, schedule="auto")
    search = res.summary["schedule_search"]
    assert [c["t"] for c in search["candidates"]] == list(A.BLENDS)
    losses = []
    for t in A.BLENDS:
        mt, _ = pruned(ratio=ratio, schedule="auto", method_options={"auto": {"blends": [t]}})
        losses.append(perplexity(mt, calib().reshape(-1), 32, batch_tokens=8 * 32)["nll"])
        if t == search["t"]:
            assert same_weights(m, mt)
    assert losses == [c["calibration_loss"] for c in search["candidates"]]
    assert search["t"] == A.BLENDS[losses.index(min(losses))]


def test_the_endpoints_are_the_log_schedule_and_flaps_counts():
    """t = 0 prunes exactly as --schedule log (exact counts), t = 1 exactly as --schedule flap."""
    for t, schedule in ((0, "log"), (1, "flap")):
        a, _ = pruned(ratio=0.4, schedule="auto", method_options={"auto": {"blends": [t]}})
        b, _ = pruned(ratio=0.4, schedule=schedule)
        assert same_weights(a, b), schedule


@pytest.mark.parametrize("name,gqa,ratio", [
    ("tiny-gqa", "query", 0.2), ("tiny-gqa", "query", 0.5), ("tiny-gqa", "group", 0.5),
    ("tiny-llama", "query", 0.3), ("tiny-hetero", "query", 0.4), ("tiny-qwen2", "query", 0.5),
])
def test_every_candidate_meets_the_budget(name, gqa, ratio):
    """The blend is a real allocation: within one FFN channel of the target, whole KV groups under
    --gqa group, at least one head and channel per layer."""
    for t in (0.25, 0.5, 0.75):
        m, res = pruned(name, ratio=ratio, gqa=gqa, schedule="auto", method_options={"auto": {"blends": [t]}})
        sm = res.summary
        assert abs(sm["pruned_params"] - sm["target_pruned_params"]) <= param_costs(m.config)["channel"]
        assert sm["params_after"] == sm["params_before"] - sm["pruned_params"]
        for rec in res.layers:
            assert rec["heads_kept"] >= 1 and rec["channels_kept"] >= 1
            if gqa == "group":
                assert len(rec["heads_pruned"]) == 3 * len(rec["kv_pruned"])


def test_blend_interpolates_the_endpoints():
    cfg = tiny_model("tiny-gqa").config
    s = PruneSettings(ratio=0.3)
    log = ([0.1, 0.3], [A.LayerPlan(2, 0, None), A.LayerPlan(4, 0, None)])
    flap = ([0.5, 0.1], [A.LayerPlan(6, 0, None), A.LayerPlan(1, 0, None)])
    c = A.blend(cfg, s, log, flap, 0.5)
    assert c.ratios == [0.3, 0.2] and [p.heads for p in c.plans] == [4, 2]     # round(2.5) = 2, half to even
    assert A.blend(cfg, s, log, flap, 0.0).plans == log[1] and A.blend(cfg, s, log, flap, 1.0).ratios == flap[0]


def test_planning_leaves_the_model_alone_and_is_reproducible():
    m = tiny_model("tiny-gqa")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = PruneSettings(ratio=0.4, schedule="auto")
    first = choose_plan(m.config, m, calib(), s, methods.METHODS["slimgpt"])
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())   # candidates prune copies
    assert choose_plan(m.config, m, calib(), s, methods.METHODS["slimgpt"]) == first
    other = choose_plan(m.config, m, calib(seed=5), s, methods.METHODS["slimgpt"])
    assert [c["calibration_loss"] for c in other[1]["candidates"]] != \
        [c["calibration_loss"] for c in first[1]["candidates"]]              # the seed's windows decide


@pytest.mark.parametrize("kw,match", [
    (dict(method_options={"auto": {"blends": [1.5]}}), r"\[0, 1\]"),
    (dict(method_options={"auto": {"blends": []}}), r"\[0, 1\]"),
    (dict(method_options={"auto": {"blends": [True]}}), r"\[0, 1\]"),
    (dict(method="flap"), "own plan"),
    (dict(schedule="log", method_options={"auto": {"blends": [0.5]}}), "needs --schedule auto"),
])
def test_bad_settings_are_one_clear_error(kw, match):
    with pytest.raises(PruneError, match=match):
        pruned(ratio=0.3, **{"schedule": "auto", **kw})


def test_cli_records_the_choice_in_the_manifest(tmp_path):
    from slimgpt.cli import main
    out = tmp_path / "o"
    assert main(["prune", "--model", "tiny-gqa", "--ratio", "0.3", "--schedule", "auto", "--auto-blends", "0", "1",
                 "--nsamples", "8", "--seqlen", "32", "--eval-tokens", "0", "--quiet", "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    search = man["schedule_search"]
    assert man["settings"]["method_options"]["auto"] == {"blends": [0.0, 1.0]}
    assert [c["t"] for c in search["candidates"]] == [0.0, 1.0] and search["t"] in (0.0, 1.0)
    best = min(search["candidates"], key=lambda c: c["calibration_loss"])
    assert search["chosen"] == best["label"]
    assert [r["channels_kept"] for r in man["layers"]] == \
        [r["channels_before"] - len(r["channels_pruned"]) for r in man["layers"]]
