"""slimgpt.reference heads (Eq. 5, Algorithm 1, spec §3, §10.1): grouped Cholesky against
sequential downdates, the head-error estimate against the exact joint cost, and the greedy
loop against an independent re-implementation with explicit inverses; optimality,
invariances, GQA quotas, brute force on tiny problems."""
import itertools

import numpy as np
import pytest

from slimgpt import reference as R
from slimgpt import testing
from slimgpt.testing import assert_close, columns_of, indefinite, least_squares


def problem(seed, n_heads=8, head_dim=4, **kw):
    """testing.problem with heads of well-separated scales (no near-ties)."""
    return testing.problem(seed, d_in=n_heads * head_dim, block=head_dim, **kw)


def greedy_heads_oracle(W, H, n_prune, d, *, percdamp=0.0, gcd=True, compensate=True, quota=None):
    """The published loop (spec §3.3) re-done with textbook formulas: G over the surviving
    columns is inv(H_KK) (the exact Eq. 3 downdate), head errors by sequential downdates,
    compensation by the joint formula W_K -= W_S G_SS⁻¹ G_SK. No Cholesky form, no identity
    update of H. quota: (groups, per_group) or None."""
    W, H = W.copy(), H.copy()
    dead = np.diag(H) == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    H += percdamp * np.mean(np.diag(H)) * np.eye(len(H))
    n_heads = W.shape[1] // d
    pruned = []
    for _ in range(n_prune):
        K = np.setdiff1d(np.arange(W.shape[1]), columns_of(pruned, d))
        G = np.zeros_like(H)
        G[np.ix_(K, K)] = np.linalg.inv(H[np.ix_(K, K)])
        errors = np.full(n_heads, np.inf)
        for j in set(range(n_heads)) - set(pruned):
            if quota is not None and sum(quota[0][p] == quota[0][j] for p in pruned) >= quota[1]:
                continue
            C = columns_of([j], d)
            g = R.grouped_cholesky_diag_naive(G[np.ix_(C, C)], d)[0] if gcd else np.diag(G)[C]
            errors[j] = np.sum(np.sum(W[:, C] ** 2, axis=0) / g)
        j = int(np.argmin(errors))
        S = columns_of([j], d)
        if compensate:
            Kj = np.setdiff1d(K, S)
            W[:, Kj] -= W[:, S] @ np.linalg.inv(G[np.ix_(S, S)]) @ G[np.ix_(S, Kj)]
        W[:, S] = 0.0
        pruned.append(j)
    return W, np.sort(pruned)


# -- Eq. (5): grouped Cholesky and the head error --------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 4, 8, 32])
def test_grouped_cholesky_diag_equals_sequential_downdates(d):
    """spec §10.1.4 (Lemmas i-ii)."""
    _, _, H = problem(0)
    G = np.linalg.inv(H)
    assert_close(R.grouped_cholesky_diag(G, d), R.grouped_cholesky_diag_naive(G, d), "float64")


def test_head_error_is_exact_for_head_dim_1_and_block_diagonal_blocks():
    """spec §10.1.5: exact for d = 1 or diagonal G_CC; close but not equal otherwise."""
    W, _, H = problem(1)
    G = np.linalg.inv(H)
    assert_close(R.head_errors(W, G, 1), R.head_cost_exact(W, G, 1), "float64_solve")
    assert_close(R.head_errors(W, G, 1), np.sum(W ** 2, axis=0) / np.diag(G), "float64")
    Gd = np.diag(np.diag(G))
    assert_close(R.head_errors(W, Gd, 4), R.head_cost_exact(W, Gd, 4), "float64_solve")
    estimate, exact = R.head_errors(W, G, 4), R.head_cost_exact(W, G, 4)
    assert not np.allclose(estimate, exact, rtol=1e-9) and np.allclose(estimate, exact, rtol=0.2)


def test_head_error_without_gcd_uses_plain_diagonal():
    W, _, H = problem(2)
    G = np.linalg.inv(H)
    desired = (np.sum(W ** 2, axis=0) / np.diag(G)).reshape(8, 4).sum(axis=1)
    assert_close(R.head_errors(W, G, 4, gcd=False), desired, "float64")


# -- Algorithm 1: the greedy loop -------------------------------------------------------------

GREEDY = [
    dict(n_prune=3, d=4),
    dict(n_prune=5, d=4, percdamp=0.01),
    dict(n_prune=3, d=4, gcd=False),
    dict(n_prune=3, d=4, compensate=False),
    dict(n_prune=6, d=1, n_heads=24),
    dict(n_prune=1, d=32, n_heads=1),
    dict(n_prune=2, d=8, dead=(9,)),
]


@pytest.mark.parametrize("case", GREEDY, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_prune_heads_equals_textbook_greedy(case):
    case = dict(case)
    n_prune, d = case.pop("n_prune"), case.pop("d")
    shape = {k: case.pop(k) for k in ("n_heads", "dead") if k in case}
    W, _, H = problem(3, head_dim=d, **shape)
    W_new, heads = R.prune_heads(W, H, n_prune, d, **case)
    W_ref, heads_ref = greedy_heads_oracle(W, H, n_prune, d, **case)
    assert np.array_equal(heads, heads_ref) and heads.dtype == np.int64
    assert_close(W_new, W_ref, "float64_solve", str(case))
    assert np.all(W_new[:, columns_of(heads, d)] == 0.0)


@pytest.mark.parametrize("percdamp", [0.0, 0.01])
def test_survivors_are_least_squares_optimum_after_several_iterations(percdamp):
    W, _, H = problem(4)
    W_new, heads = R.prune_heads(W, H, 5, 4, percdamp=percdamp)
    Hd = H + percdamp * np.mean(np.diag(H)) * np.eye(len(H))
    assert_close(W_new, least_squares(W, Hd, columns_of(heads, 4)), "float64_solve")


@pytest.mark.parametrize("scale", [1e-3, 1e4])
def test_scale_of_H_does_not_matter(scale):
    W, _, H = problem(5)
    W1, h1 = R.prune_heads(W, H, 3, 4)
    W2, h2 = R.prune_heads(W, scale * H, 3, 4)
    assert np.array_equal(h1, h2)
    assert_close(W2, W1, "float64_solve")


def test_zero_heads_is_a_no_op_and_all_heads_gives_zero():
    W, _, H = problem(6)
    W0, h0 = R.prune_heads(W, H, 0, 4)
    assert np.array_equal(W0, W) and W0 is not W and h0.size == 0 and h0.dtype == np.int64
    W8, h8 = R.prune_heads(W, H, 8, 4)
    assert np.all(W8 == 0.0) and np.array_equal(h8, np.arange(8))


def test_compensate_false_leaves_survivors_bit_identical():
    W, _, H = problem(7)
    W_new, heads = R.prune_heads(W, H, 3, 4, compensate=False)
    K = np.setdiff1d(np.arange(32), columns_of(heads, 4))
    assert np.array_equal(W_new[:, K], W[:, K]) and np.all(W_new[:, columns_of(heads, 4)] == 0.0)


def test_inputs_are_not_mutated():
    W, _, H = problem(8, dead=(3,))
    W0, H0 = W.copy(), H.copy()
    R.prune_heads(W, H, 3, 4, percdamp=0.01)
    assert np.array_equal(W, W0) and np.array_equal(H, H0)


def test_gqa_quota_per_group():
    W, _, H = problem(9, n_heads=8)
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    W_new, heads = R.prune_heads(W, H, 4, 4, head_groups=groups)
    assert np.array_equal(np.bincount(groups[heads], minlength=4), [1, 1, 1, 1])
    W_int, heads_int = R.prune_heads(W, H, 4, 4, head_groups=4)  # 4 contiguous groups of 2
    assert np.array_equal(heads_int, heads)
    assert_close(W_int, W_new, "float64")
    W_ref, heads_ref = greedy_heads_oracle(W, H, 4, 4, quota=(groups, 1))
    assert np.array_equal(heads, heads_ref)
    assert_close(W_new, W_ref, "float64_solve")
    _, h2 = R.prune_heads(W, H, 4, 4, head_groups=np.array([7, 7, 7, 7, 3, 3, 3, 3]))
    assert np.sum(h2 < 4) == 2 and np.sum(h2 >= 4) == 2


def test_whole_gqa_group_blocks_are_heads_of_n_rep_times_d():
    W, _, H = problem(10, n_heads=8, head_dim=4)
    W_new, groups = R.prune_heads(W, H, 1, 8)
    assert_close(W_new, least_squares(W, H, columns_of(groups, 8)), "float64_solve")


def test_dead_input_inside_a_head():
    W, _, H = problem(11, dead=(9,))
    W_new, heads = R.prune_heads(W, H, 2, 4)
    assert np.all(W_new[:, 9] == 0.0)


def test_indefinite_H_warns_and_stays_finite():
    W, _, _ = problem(12)
    with pytest.warns(R.DampingWarning) as record:
        W_new, heads = R.prune_heads(W, indefinite(np.random.default_rng(12), 32), 2, 4)
    assert np.all(np.isfinite(W_new)) and record[0].message.percdamp > 0


# -- how good is greedy? ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_greedy_is_near_the_brute_force_optimum(seed, record_property):
    """8 nearly equal heads of 2, prune 4: over all 70 subsets (each with its least-squares
    compensation), greedy is within 5% of the optimum and better than 9 in 10 subsets. Greedy is
    not always optimal (the ratio is recorded); a selection that ignored the errors would land
    near the median of the subsets instead."""
    W, _, H = problem(100 + seed, n_heads=8, head_dim=2, spread=(0.9, 1.1))
    W_new, heads = R.prune_heads(W, H, 4, 2)
    greedy = R.reconstruction_error(W, W_new, H)
    errors = np.array([R.reconstruction_error(W, least_squares(W, H, columns_of(s, 2)), H)
                       for s in itertools.combinations(range(8), 4)])
    record_property("greedy_over_optimum", greedy / errors.min())
    assert greedy <= 1.05 * errors.min()
    assert np.mean(errors < greedy * (1 - 1e-9)) < 0.1


@pytest.mark.parametrize("seed", range(4))
def test_greedy_beats_smallest_norm_without_compensation(seed):
    W, _, H = problem(30 + seed, spread=(0.5, 2.0))
    W_new, _ = R.prune_heads(W, H, 3, 4)
    norms = np.sum(W ** 2, axis=0).reshape(8, 4).sum(axis=1)
    baseline = W.copy()
    baseline[:, columns_of(np.argsort(norms)[:3], 4)] = 0.0
    assert R.reconstruction_error(W, W_new, H) <= R.reconstruction_error(W, baseline, H)


# -- bad input ----------------------------------------------------------------------------------

W32, H32 = np.ones((4, 32)), np.eye(32)


@pytest.mark.parametrize("call, match", [
    (lambda: R.prune_heads(W32, H32, 1, 5), "divide"),
    (lambda: R.prune_heads(W32, H32, 1, 0), "head_dim"),
    (lambda: R.prune_heads(W32, H32, 9, 4), "n_prune"),
    (lambda: R.prune_heads(W32, H32, -1, 4), "n_prune"),
    (lambda: R.prune_heads(W32, H32, 1.5, 4), "integer"),
    (lambda: R.prune_heads(W32, np.eye(31), 1, 4), "input columns"),
    (lambda: R.prune_heads(W32, H32, 3, 4, head_groups=2), "multiple"),
    (lambda: R.prune_heads(W32, H32, 2, 4, head_groups=3), "divide"),
    (lambda: R.prune_heads(W32, H32, 2, 4, head_groups=np.zeros(7, int)), "group ids"),
    (lambda: R.prune_heads(W32, H32, 4, 4, head_groups=np.array([0] * 7 + [1])), "fewer"),
    (lambda: R.head_errors(W32, H32, 3), "divide"),
    (lambda: R.head_errors(W32, np.eye(30), 4), "input columns"),
], ids=["head_dim_not_dividing", "head_dim_zero", "too_many", "negative", "float_count",
        "H_mismatch", "quota_not_multiple", "groups_not_dividing", "groups_shape",
        "group_too_small", "errors_head_dim", "errors_Hinv_shape"])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
