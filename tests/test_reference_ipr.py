"""slimgpt.reference IPR (Eq. 6, spec §5, §10.2): the 20% LLaMA-7B numbers, the closed-form
mean, the strategies, and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from slimgpt import reference as R
from slimgpt.testing import assert_close

# spec §5.5, FFN channels pruned per layer for r = ipr_ratios(32, 0.0625, 0.25), m = 11008
FFN_PRUNED_20 = [688, 1101, 1342, 1514, 1646, 1755, 1847, 1926, 1997, 2059, 2116, 2168, 2216, 2260,
                 2301, 2339, 2375, 2409, 2442, 2472, 2501, 2529, 2555, 2581, 2605, 2628, 2651, 2672,
                 2693, 2714, 2733, 2752]


def llama7b_parameters(heads_kept, ffn_kept):
    """Parameter count of LLaMA-7B (D = 4096, d = 128, V = 32000) with per-layer widths."""
    D, d, V = 4096, 128, 32000
    layers = sum(4 * D * h * d + 3 * D * f + 2 * D for h, f in zip(heads_kept, ffn_kept))
    return layers + 2 * V * D + D


def test_20_percent_llama_7b_schedule():
    """spec §5.5 / §10.2.1."""
    r = R.ipr_ratios(32, 0.0625, 0.25)
    assert_close(r[:3], [0.0625, 0.1, 0.0625 + 0.1875 * math.log(3) / math.log(32)], "float64")
    assert r[-1] == 0.25 and abs(r[2] - 0.1219) < 5e-5 and abs(r[30] - 0.2483) < 5e-5
    assert round(float(np.mean(r)), 6) == 0.200387
    heads_kept = [32 - round(32 * x) for x in r]  # Python round: half to even, as published
    assert heads_kept == [30, 29, 28, 28, 27, 27, 27] + [26] * 6 + [25] * 10 + [24] * 9
    ffn_pruned = [round(11008 * x) for x in r]
    assert ffn_pruned == FFN_PRUNED_20
    assert 11008 - ffn_pruned[0] == 10320 and 11008 - ffn_pruned[-1] == 8256
    assert sum(32 - h for h in heads_kept) == 206 and sum(ffn_pruned) == 70587
    assert llama7b_parameters([32] * 32, [11008] * 32) == 6_738_415_616
    assert llama7b_parameters(heads_kept, [11008 - f for f in ffn_pruned]) == 5_439_029_248


def test_uniform_50_percent_llama_7b():
    """spec §10.2.3: 16 heads and 5504 channels kept, 3,500,412,928 parameters ("3.50b")."""
    r = R.ipr_ratios(32, 0.5, 0.5, "uniform")
    heads_kept, ffn_kept = [32 - round(32 * x) for x in r], [11008 - round(11008 * x) for x in r]
    assert set(heads_kept) == {16} and set(ffn_kept) == {5504}
    assert llama7b_parameters(heads_kept, ffn_kept) == 3_500_412_928


def test_log_mean_closed_form():
    """spec §10.2.2: mean of log(i+1)/log(n) over i < n is log(n!)/(n log n), 0.735395 for n = 32."""
    assert round(float(np.mean(R.ipr_ratios(32, 0.0, 0.5) / 0.5)), 6) == 0.735395
    for n in (2, 12, 30, 40, 80):
        assert_close(np.mean(R.ipr_ratios(n, 0.0, 0.5)), 0.5 * math.lgamma(n + 1) / (n * math.log(n)),
                     "float64")


@pytest.mark.parametrize("n", [30, 40, 60])
def test_log_uses_the_model_depth_not_32(n):
    """Eq. (6) divides by log(n) (the published code by log 32): the last layer gets `last`."""
    r = R.ipr_ratios(n, 0.0625, 0.25)
    assert_close(r[-1], 0.25, "float64")
    assert np.all(np.diff(r) > 0)


def test_linear_uniform_and_decreasing_strategies():
    lin = R.ipr_ratios(5, 0.1, 0.5, "linear")
    assert_close(lin, [0.1, 0.2, 0.3, 0.4, 0.5], "float64")
    assert np.array_equal(R.ipr_ratios(5, 0.1, 0.5, "linear-decrease"), lin[::-1])
    assert np.array_equal(R.ipr_ratios(7, 0.1, 0.5, "log-decrease"), R.ipr_ratios(7, 0.1, 0.5)[::-1])
    assert np.array_equal(R.ipr_ratios(4, 0.3, 0.3, "uniform"), np.full(4, 0.3))
    assert np.array_equal(R.ipr_ratios(4, 0.3, 0.3, "log"), np.full(4, 0.3))


def test_one_layer():
    assert np.array_equal(R.ipr_ratios(1, 0.3, 0.3), [0.3])
    assert np.array_equal(R.ipr_ratios(1, 0.1, 0.4, "linear"), [0.1])
    assert np.array_equal(R.ipr_for_target(1, 0.25), [0.25])


def test_ipr_for_target_20_percent_recipe():
    """spec §5.4: first = 0.0625 (= 0.3125 · 0.2) gives last = 0.2495 on 32 layers."""
    r = R.ipr_for_target(32, 0.2)
    assert r[0] == 0.0625 and round(float(r[-1]), 4) == 0.2495
    assert_close(np.mean(r), 0.2, "float64")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 100), target=st.floats(0.0, 0.55),
       strategy=st.sampled_from(["log", "linear", "uniform", "log-decrease", "linear-decrease"]))
def test_ipr_for_target_hits_the_mean(n, target, strategy):
    r = R.ipr_for_target(n, target, strategy=strategy)
    assert r.shape == (n,) and np.all((0 <= r) & (r < 1))
    assert_close(np.mean(r), target, "float64")


@pytest.mark.parametrize("call, match", [
    (lambda: R.ipr_ratios(32, 0.1, 1.0), "last"),
    (lambda: R.ipr_ratios(32, -0.1, 0.5), "first"),
    (lambda: R.ipr_ratios(32, 0.5, 0.1), "first"),
    (lambda: R.ipr_ratios(32, 0.1, 0.5, "cubic"), "strategy"),
    (lambda: R.ipr_ratios(32, 0.1, 0.5, "uniform"), "uniform"),
    (lambda: R.ipr_ratios(0, 0.1, 0.5), "n_layers"),
    (lambda: R.ipr_for_target(32, 0.9), "no valid last"),
    (lambda: R.ipr_for_target(32, 0.2, first=0.3), "no valid last"),
    (lambda: R.ipr_for_target(32, 1.0), "target"),
    (lambda: R.ipr_for_target(32, 0.2, strategy="exp"), "strategy"),
    (lambda: R.ipr_for_target(32, 0.2, first=0.1, strategy="uniform"), "cannot reach"),
    (lambda: R.ipr_for_target(1, 0.2, first=0.1), "cannot reach"),
], ids=["last_1", "first_negative", "first_above_last", "unknown_strategy", "uniform_mismatch",
        "no_layers", "target_unreachable", "first_above_target", "target_1", "target_strategy",
        "uniform_first", "one_layer_first"])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
