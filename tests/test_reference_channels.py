"""slimgpt.reference FFN channels (DGS, spec §4, §10.2): the published schedule, and the grouped
greedy loop against an independent re-implementation with explicit inverses; optimality,
invariances, dead inputs, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from slimgpt import reference as R
from slimgpt import testing
from slimgpt.testing import assert_close, least_squares


def problem(seed, d_in=96, **kw):
    """testing.problem with 96 channels of well-separated scales (no near-ties)."""
    return testing.problem(seed, d_in=d_in, **{"spread": (0.1, 10.0), "n_per_input": 6, **kw})


def greedy_channels_oracle(W, H, sizes, *, percdamp=0.0, compensate=True):
    """spec §4.2 with textbook formulas: G over survivors is inv(H_KK), errors ||W_c||²/G_cc,
    the g smallest per group, joint compensation W_K -= W_S G_SS⁻¹ G_SK."""
    W, H = W.copy(), H.copy()
    dead = np.diag(H) == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    H += percdamp * np.mean(np.diag(H)) * np.eye(len(H))
    pruned = np.zeros(W.shape[1], dtype=bool)
    for g in sizes:
        K = np.flatnonzero(~pruned)
        G = np.linalg.inv(H[np.ix_(K, K)])
        errors = np.sum(W[:, K] ** 2, axis=0) / np.diag(G)
        pick = np.argsort(errors, kind="stable")[:g]
        keep = np.setdiff1d(np.arange(K.size), pick)
        if compensate:
            W[:, K[keep]] -= W[:, K[pick]] @ np.linalg.inv(G[np.ix_(pick, pick)]) @ G[np.ix_(pick, keep)]
        W[:, K[pick]] = 0.0
        pruned[K[pick]] = True
    return W, np.flatnonzero(pruned)


# -- the DGS schedule ---------------------------------------------------------------------------

SCHEDULES = {
    0: [], 1: [1], 40: [40], 64: [64], 100: [64, 36],
    688: [88] + [64] * 9 + [24],
    1200: [344] + [64] * 13 + [24],
    2064: [776, 132] + [64] * 18 + [4],
    2752: [1024, 304] + [64] * 22 + [16],
    5504: [1024, 992, 240] + [64] * 50 + [48],
    7000: [1024, 1024, 427] + [64] * 70 + [45],
}


@pytest.mark.parametrize("T", SCHEDULES)
def test_dgs_schedule_matches_published_code(T):
    """spec §4.2 table and §10.2.4."""
    assert R.dgs_group_sizes(T) == SCHEDULES[T]


def test_dgs_iterations_for_the_20_percent_llama_7b_layers():
    """spec §4.2: down_proj iterations per layer for r = ipr_ratios(32, 0.0625, 0.25)."""
    counts = [len(R.dgs_group_sizes(round(11008 * r))) for r in R.ipr_ratios(32, 0.0625, 0.25)]
    assert counts == [11, 14, 16, 17, 18, 19, 20, 20, 20] + [21] * 6 + [22] * 8 + [23] * 3 + [24] * 4 + [25] * 2
    assert sum(counts) == 672


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 20000))
def test_dgs_schedule_properties(T):
    sizes = R.dgs_group_sizes(T)
    assert sum(sizes) == T and all(1 <= g <= 1024 for g in sizes)
    assert all(g >= 64 for g in sizes[:-1])  # only the last group may be below the floor
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))  # group sizes never grow


# -- the greedy loop ------------------------------------------------------------------------------

GREEDY = [
    dict(n_prune=40),                                   # one DGS group (T < 64)
    dict(n_prune=70),                                   # DGS: 64, 6
    dict(n_prune=30, group_sizes=8),                    # fixed groups 8 x3 + 6 ("-DGS")
    dict(n_prune=12, group_sizes=[1] * 12),             # exact single-column greedy
    dict(n_prune=20, group_sizes=[10, 5, 5], percdamp=0.01),
    dict(n_prune=20, group_sizes=[10, 10], compensate=False),
    dict(n_prune=10, group_sizes=[4, 6], dead=(5, 50)),
]


@pytest.mark.parametrize("case", GREEDY, ids=lambda c: "-".join(f"{k}{v}"[:24] for k, v in c.items()))
def test_prune_channels_equals_textbook_greedy(case):
    case = dict(case)
    n_prune, dead = case.pop("n_prune"), case.pop("dead", ())
    W, _, H = problem(1, dead=dead)
    W_new, channels = R.prune_channels(W, H, n_prune, **case)
    g = case.pop("group_sizes", None)
    sizes = (R.dgs_group_sizes(n_prune) if g is None else
             [g] * (n_prune // g) + [n_prune % g] * (n_prune % g > 0) if isinstance(g, int) else g)
    W_ref, channels_ref = greedy_channels_oracle(W, H, sizes, **case)
    assert np.array_equal(channels, channels_ref) and channels.dtype == np.int64
    assert_close(W_new, W_ref, "float64_solve", str(case))
    assert np.all(W_new[:, channels] == 0.0) and set(dead) <= set(channels)


@pytest.mark.parametrize("percdamp", [0.0, 0.01])
def test_survivors_are_least_squares_optimum_after_several_groups(percdamp):
    W, _, H = problem(2)
    W_new, channels = R.prune_channels(W, H, 30, group_sizes=[10, 7, 7, 6], percdamp=percdamp)
    Hd = H + percdamp * np.mean(np.diag(H)) * np.eye(len(H))
    assert_close(W_new, least_squares(W, Hd, channels), "float64_solve")


def test_fixed_int_group_size_equals_explicit_list():
    W, _, H = problem(3)
    a = R.prune_channels(W, H, 30, group_sizes=8)
    b = R.prune_channels(W, H, 30, group_sizes=[8, 8, 8, 6])
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])


def test_scale_of_H_does_not_matter():
    W, _, H = problem(4)
    W1, c1 = R.prune_channels(W, H, 70)
    W2, c2 = R.prune_channels(W, 1e3 * H, 70)
    assert np.array_equal(c1, c2)
    assert_close(W2, W1, "float64_solve")


def test_zero_channels_is_a_no_op():
    W, _, H = problem(5)
    W0, c0 = R.prune_channels(W, H, 0)
    assert np.array_equal(W0, W) and W0 is not W and c0.size == 0 and c0.dtype == np.int64


def test_compensate_false_leaves_survivors_bit_identical():
    W, _, H = problem(6)
    W_new, channels = R.prune_channels(W, H, 70, compensate=False)
    K = np.setdiff1d(np.arange(96), channels)
    assert np.array_equal(W_new[:, K], W[:, K]) and np.all(W_new[:, channels] == 0.0)


def test_inputs_are_not_mutated():
    W, _, H = problem(7, dead=(3,))
    W0, H0 = W.copy(), H.copy()
    R.prune_channels(W, H, 20, percdamp=0.01)
    assert np.array_equal(W, W0) and np.array_equal(H, H0)


@pytest.mark.parametrize("seed", range(3))
def test_greedy_beats_smallest_norm_without_compensation(seed):
    W, _, H = problem(10 + seed, spread=(0.5, 2.0))
    W_new, _ = R.prune_channels(W, H, 30)
    baseline = W.copy()
    baseline[:, np.argsort(np.sum(W ** 2, axis=0))[:30]] = 0.0
    assert R.reconstruction_error(W, W_new, H) <= R.reconstruction_error(W, baseline, H)


# -- bad input ----------------------------------------------------------------------------------

W8, H8 = np.ones((3, 8)), np.eye(8)


@pytest.mark.parametrize("call, match", [
    (lambda: R.prune_channels(W8, H8, 9), "n_prune"),
    (lambda: R.prune_channels(W8, H8, -1), "n_prune"),
    (lambda: R.prune_channels(W8, H8, 4, group_sizes=[2, 1]), "sum"),
    (lambda: R.prune_channels(W8, H8, 4, group_sizes=[4, 0]), "group_sizes"),
    (lambda: R.prune_channels(W8, H8, 4, group_sizes=0), "group_sizes"),
    (lambda: R.prune_channels(W8, np.eye(7), 1), "input columns"),
    (lambda: R.prune_channels(W8, H8, 1, percdamp=np.nan), "percdamp"),
    (lambda: R.dgs_group_sizes(-1), "n_prune"),
], ids=["too_many", "negative", "sizes_sum", "size_zero", "int_size_zero", "H_mismatch",
        "nan_percdamp", "dgs_negative"])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_dgs_schedule_of_a_huge_count_is_refused_at_once():
    """Reliability issue: reference.dgs_group_sizes(2**40) looped for minutes; counts beyond the
    largest layer width the bindings accept (2**31 - 1) are refused, and that bound is fast."""
    import time

    with pytest.raises(ValueError, match="2147483647"):
        R.dgs_group_sizes(2**40)
    t0 = time.perf_counter()
    assert sum(R.dgs_group_sizes(2**31 - 1)) == 2**31 - 1
    assert time.perf_counter() - t0 < 5.0
