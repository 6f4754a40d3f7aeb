"""Baseline criteria (slimgpt.baselines) on tiny hand-computable cases.

Every expected number below is worked out by hand in the comment beside it.
"""
import pytest
import torch

from slimgpt import baselines as B
from tolerances import assert_close


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# --- statistics ---------------------------------------------------------------------------------

def test_activation_stats_hand_values():
    # Channel 0 sees 1, 2, 3, 6: mean 3, deviations -2,-1,0,3 -> M2 = 4+1+0+9 = 14, var = 14/3,
    # Σx² = 1+4+9+36 = 50. Channel 1 sees 0, 0, 0, 4: mean 1, M2 = 1+1+1+9 = 12, var 4, Σx² = 16.
    s = B.ActivationStats(2)
    s.add(t([[1, 0], [2, 0]]))             # two batches of different sizes: the merge is exact
    s.add(t([[[3, 0], [6, 4]]]))           # (batch, seq, d_in) inputs are flattened to tokens
    assert s.count == 4
    assert_close(s.mean, [3.0, 1.0], "float64")
    assert_close(s.var, [14 / 3, 4.0], "float64")
    assert_close(s.sq_norm, [50.0, 16.0], "float64")


def test_activation_stats_rejects_wrong_width():
    with pytest.raises(ValueError):
        B.ActivationStats(3).add(torch.zeros(2, 4))


# --- magnitude ----------------------------------------------------------------------------------

def test_magnitude_head_scores_by_hand():
    # 2 heads of size d=1 on D=2. Head 0 owns q row 0, k row 0, v row 0 and o column 0.
    Wq = t([[1, 1], [0, 2]])    # row norms² 2, 4
    Wk = t([[0, 1], [1, 0]])    # 1, 1
    Wv = t([[2, 0], [0, 0]])    # 4, 0
    Wo = t([[1, 3], [1, 0]])    # column norms² 2, 9
    s = B.magnitude_scores([(Wq, 0), (Wk, 0), (Wv, 0), (Wo, 1)], n_struct=2)
    assert_close(s, [2 + 1 + 4 + 2, 4 + 1 + 0 + 9], "float64")   # [9, 14]
    assert B.select_lowest(s, 1).tolist() == [0]


def test_magnitude_channel_scores_blocks_of_columns():
    # FFN channel c: gate row c, up row c, down column c. 3 channels, D = 1.
    Wg = t([[1], [2], [0]])
    Wu = t([[0], [1], [3]])
    Wd = t([[1, 1, 1]])
    s = B.magnitude_scores([(Wg, 0), (Wu, 0), (Wd, 1)], n_struct=3)
    assert_close(s, [1 + 0 + 1, 4 + 1 + 1, 0 + 9 + 1], "float64")  # [2, 6, 10]
    # A head of d=2 columns sums both: o_proj 1x4, heads {0,1} and {2,3}.
    s2 = B.magnitude_scores([(t([[1, 2, 0, 1]]), 1)], n_struct=2)
    assert_close(s2, [5.0, 1.0], "float64")


def test_magnitude_rejects_uneven_blocks():
    with pytest.raises(ValueError):
        B.magnitude_scores([(torch.ones(3, 2), 0)], n_struct=2)


# --- Wanda-sp -----------------------------------------------------------------------------------

def test_wanda_sp_by_hand():
    # W (2x4); ||X_j||² = [4, 1, 9, 0] -> ||X_j|| = [2, 1, 3, 0].
    W = t([[1, -2, 0, 5], [-1, 1, 1, 5]])
    s = B.wanda_sp_column_scores(W, t([4, 1, 9, 0]))
    # Σ_i |W_ij| = [2, 3, 1, 10] -> × norms = [4, 3, 3, 0]
    assert_close(s, [4.0, 3.0, 3.0, 0.0], "float64")
    # heads of 2 columns: [4+3, 3+0] = [7, 3]; the dead-input column makes head 1 least important
    heads = B.sum_per_structure(s, 2)
    assert_close(heads, [7.0, 3.0], "float64")
    assert B.select_lowest(heads, 1).tolist() == [1]


def test_wanda_sp_uses_activations_not_only_weights():
    # Same weights, swapped activation norms: the choice flips (magnitude alone could not).
    W = t([[1, 2]])
    assert B.select_lowest(B.wanda_sp_column_scores(W, t([100, 1])), 1).tolist() == [1]   # [10, 2]
    assert B.select_lowest(B.wanda_sp_column_scores(W, t([1, 100])), 1).tolist() == [0]   # [1, 20]


# --- FLAP ---------------------------------------------------------------------------------------

def test_fluctuation_by_hand():
    # Var(X) = [2, 0, 1]; ||W[:,j]||² = [1+1, 9, 4] = [2, 9, 4] -> f = [4, 0, 4]
    W = t([[1, 3, 0], [1, 0, 2]])
    assert_close(B.fluctuation_column_scores(W, t([2, 0, 1])), [4.0, 0.0, 4.0], "float64")


def test_standardize_and_flap_structure_scores_by_hand():
    # f = [1, 2, 3, 6]: mean 3, sample std sqrt((4+1+0+9)/3) = sqrt(14/3)
    z = B.standardize(t([1, 2, 3, 6]))
    sd = (14 / 3) ** 0.5
    assert_close(z, [-2 / sd, -1 / sd, 0.0, 3 / sd], "float64")
    # heads of two columns: means of z -> [-1.5/sd, 1.5/sd]
    assert_close(B.flap_structure_scores(t([1, 2, 3, 6]), 2), [-1.5 / sd, 1.5 / sd], "float64")
    # square=True (FLAP's attention): f² = [1, 4, 9, 36], mean 12.5, deviations -11.5,-8.5,-3.5,23.5
    sd2 = ((11.5 ** 2 + 8.5 ** 2 + 3.5 ** 2 + 23.5 ** 2) / 3) ** 0.5
    assert_close(B.flap_structure_scores(t([1, 2, 3, 6]), 2, square=True),
                 [-10 / sd2, 10 / sd2], "float64")
    # constant scores standardize to 0, not NaN
    assert_close(B.standardize(t([5, 5, 5])), [0.0, 0.0, 0.0], "float64")


def test_global_select_costs_and_budget_by_hand():
    # Group 0: 3 heads of cost 10; group 1: 4 channels of cost 1. Budget 13.
    heads = t([-1.0, 0.5, 2.0])
    chans = t([-2.0, -0.5, 0.0, 1.0])
    out = B.global_select([heads, chans], [10, 1], budget=13)
    # ascending walk: chan0 (-2, left 12), head0 (-1, left 2), chan1 (-0.5, left 1),
    # chan2 (0.0, left 0) -> stop. Removed 10 + 3 = 13 = budget.
    assert out[0].tolist() == [0]
    assert out[1].tolist() == [0, 1, 2]


def test_global_select_skips_overshoot_and_keeps_min():
    # Budget 5: head (cost 10) is lowest but does not fit -> skipped; channels fill 3 of 5,
    # min_keep=1 stops the channel group at 3 of 4.
    out = B.global_select([t([-9.0]), t([0.0, 1.0, 2.0, 3.0])], [10, 1], budget=5, min_keep=1)
    assert out[0].tolist() == []
    assert out[1].tolist() == [0, 1, 2]
    # min_keep=1 on a 2-head layer with a big budget: one head always stays
    out = B.global_select([t([0.0, 1.0])], [1], budget=100)
    assert out[0].tolist() == [0]


def test_bias_compensation_by_hand():
    # W (2x3), μ = [1, 2, 3], prune columns {0, 2}: Δb = W[:,0]·1 + W[:,2]·3
    W = t([[1, 5, 2], [0, 5, -1]])
    db = B.bias_compensation(W, t([1, 2, 3]), torch.tensor([0, 2]))
    assert_close(db, [1 + 6, 0 - 3], "float64")   # [7, -3]
    # the compensated layer reproduces the mean output exactly on the mean input
    x = t([1, 2, 3])
    K = torch.tensor([1])
    assert_close(W[:, K] @ x[K] + db, W @ x, "float64")
    assert B.bias_compensation(W, x, torch.tensor([], dtype=torch.int64)).tolist() == [0.0, 0.0]


def test_select_lowest_ties_and_bounds():
    assert B.select_lowest(t([1, 0, 0, 2]), 2).tolist() == [1, 2]
    assert B.select_lowest(t([3, 1, 2]), 0).tolist() == []
    with pytest.raises(ValueError):
        B.select_lowest(t([1, 2]), 3)
