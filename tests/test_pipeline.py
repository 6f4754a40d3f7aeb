"""The layer-wise pipeline on tiny models: identities, counts, targets, GQA modes, backends."""
import pytest
import torch

from slimgpt import ops
from slimgpt.gqa import planned_heads
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.model import param_count
from slimgpt.pipeline import PruneError
from slimgpt.schedule import layer_ratios, param_costs
from slimgpt.shrink import remove_heads, shrink_model, sync_config
from slimgpt.stats import ActivationStats
from slimgpt.testing import assert_close, quiet_prune
from slimgpt.textdata import CalibrationError, calibration_windows

pytestmark = pytest.mark.usefixtures("no_grad")
IDS = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))


def calib(n=8, T=32, seed=0):
    return calibration_windows(byte_tokenizer(), n, T, seed)


def run(name, seed=0, **kw):
    kw.setdefault("backend", None)          # fastest available (C++ core when built)
    m = tiny_model(name, seed=seed)
    return m, quiet_prune(m, calib(), **kw)


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-hetero", "tiny-qwen2"])
def test_ratio_zero_leaves_logits_identical(name):
    dense = tiny_model(name)(IDS)
    m, res = run(name, ratio=0.0)
    assert torch.equal(m(IDS), dense)
    assert res.summary["params_after"] == res.summary["params_before"]


@pytest.mark.parametrize("name,gqa,ratio", [
    ("tiny-gqa", "query", 0.6),        # uneven heads per KV group, KV heads dropped
    ("tiny-gqa", "group", 0.5),
    ("tiny-gqa", "balanced", 0.5),
    ("tiny-hetero", "query", 0.4),
    ("tiny-qwen2", "query", 0.5),
])
def test_shrunk_equals_masked(name, gqa, ratio):
    shrunk, r1 = run(name, ratio=ratio, gqa=gqa)
    masked, r2 = run(name, ratio=ratio, gqa=gqa, shrink=False)
    assert [r["heads_pruned"] for r in r1.layers] == [r["heads_pruned"] for r in r2.layers]
    assert [r["channels_pruned"] for r in r1.layers] == [r["channels_pruned"] for r in r2.layers]
    assert masked.num_parameters() == r1.summary["params_before"]
    assert_close(shrunk(IDS), masked(IDS), "logits", err_msg=f"{name} {gqa}")
    shrink_model(masked, r2.layers)          # the exporter path: from recorded indices
    assert_close(masked(IDS), shrunk(IDS), "logits")
    assert masked.num_parameters() == shrunk.num_parameters() == param_count(shrunk.config)
    if gqa == "query" and name == "tiny-gqa":
        # uneven per-group pruning really happened and a KV head went with its last query head
        assert any(len(set(r["heads_pruned"])) % 3 for r in r1.layers)
        assert any(r["kv_pruned"] for r in r1.layers)


def test_shrink_drops_kv_head_only_when_all_its_queries_go():
    m = tiny_model("tiny-gqa")
    layer = m.model.layers[0]
    full = layer.self_attn.o_proj.weight.clone()
    d = m.config.head_dim
    masked = tiny_model("tiny-gqa")
    W = masked.model.layers[0].self_attn.o_proj.weight
    for h in (0, 1, 2, 4):                    # all of group 0, one head of group 1
        W[:, h * d:(h + 1) * d] = 0
    gone = remove_heads(layer, [0, 1, 2, 4], full.clone().index_fill_(1, torch.arange(0, 3 * d), 0))
    sync_config(m)
    assert gone == [0]
    assert m.config.layer_kv_map[0] == [0, 0, 1, 1, 1] and m.config.layer_kv_heads[0] == 2
    assert_close(m(IDS), masked(IDS), "logits")


@pytest.mark.parametrize("gqa", ["query", "group", "balanced"])
def test_counts_follow_schedule_and_target_is_hit(gqa):
    m, res = run("tiny-gqa", ratio=0.3, gqa=gqa)
    cfg = tiny_model("tiny-gqa").config
    ratios = layer_ratios(cfg.num_hidden_layers, 0.3)
    assert res.summary["ratios"] == ratios
    for i, r in enumerate(res.layers):
        assert r["heads_before"] - r["heads_kept"] == planned_heads(9, 3, ratios[i], gqa)[0]
    if gqa == "query":
        assert [9 - round(9 * r) for r in ratios] == res.summary["heads_kept"]   # Python round, as published
    channel = param_costs(cfg)["channel"]
    assert abs(res.summary["pruned_params"] - res.summary["target_pruned_params"]) <= channel
    assert res.summary["params_before"] - m.num_parameters() == res.summary["pruned_params"]
    assert m.num_parameters() == param_count(m.config)


def test_no_target_uses_published_rounding():
    m, res = run("tiny-llama", ratio=0.3, hit_target=False)
    assert [r["channels_before"] - r["channels_kept"] for r in res.layers] == \
        [round(96 * r) for r in res.summary["ratios"]]


def test_ratio_schedule_increases_pruning_with_depth():
    m, res = run("tiny-llama", ratio=0.4, schedule="log", hit_target=False)
    kept = res.summary["channels_kept"]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1]


def test_explicit_first_last():
    m, res = run("tiny-llama", first=0.1, last=0.5, ratio=None, schedule="linear")
    assert res.summary["ratios"][0] == pytest.approx(0.1) and res.summary["ratios"][-1] == pytest.approx(0.5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_activation_stats_equal_their_definitions(backend):
    """H = 2XᵀX/n, mean, sample variance and Σx² of the inputs, whatever the batching."""
    X = torch.randn(3, 40, 24, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 24)
    st = ActivationStats(24, hessian=True, backend=backend)
    for chunk in (X[:1], X[1:1], X[1:3, :7], X[1:3, 7:]):
        st.add(chunk)
    flat = X.reshape(-1, 24).double()
    assert st.n == 120
    assert_close(st.H.numpy(), ops.hessian(flat.numpy(), backend="reference"),
                 "float64" if backend == "reference" else "float32")
    assert_close(st.mean.numpy(), flat.mean(0).numpy(), "float64")
    assert_close(st.var.numpy(), flat.var(0).numpy(), "float64_solve")
    assert_close(st.sq_norm.numpy(), (flat ** 2).sum(0).numpy(), "float64")


@pytest.mark.parametrize("bad", [dict(ratio=1.0), dict(ratio=-0.1), dict(gqa="kv"), dict(schedule="cubic"),
                                 dict(method="nope"), dict(percdamp=-1.0)])
def test_bad_settings(bad):
    m = tiny_model("tiny-llama")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(PruneError):
        quiet_prune(m, calib(), **bad)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_calibration_longer_than_data():
    with pytest.raises(CalibrationError, match="longer than"):
        calibration_windows(byte_tokenizer(), 10, 10 ** 8)


def test_calibration_is_seeded():
    assert torch.equal(calib(seed=3), calib(seed=3)) and not torch.equal(calib(seed=3), calib(seed=4))


@pytest.mark.parametrize("name,gqa", [("tiny-gqa", "query"), ("tiny-gqa", "balanced"), ("tiny-llama", "query")])
def test_reference_and_cpu_backends_select_the_same(name, gqa):
    m1, r1 = run(name, ratio=0.4, gqa=gqa, backend="reference")
    m2, r2 = run(name, ratio=0.4, gqa=gqa, backend="cpu")
    for a, b in zip(r1.layers, r2.layers):
        assert a["heads_pruned"] == b["heads_pruned"], a["layer"]
        assert a["channels_pruned"] == b["channels_pruned"], a["layer"]
    assert_close(m2(IDS), m1(IDS), "backend_logits")
