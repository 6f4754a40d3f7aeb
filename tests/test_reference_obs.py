"""slimgpt.reference column OBS (Eqs. 2-4, spec §2, §10.1): the Cholesky form against the
textbook oracle, the least-squares optimum and the true reconstruction error; dead inputs,
damping and its retry; bad input."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from slimgpt import reference as R
from slimgpt.testing import assert_close, damped, indefinite, least_squares, problem


CASES = {
    "single": [5],
    "unsorted_set": [21, 3, 17, 20],
    "all_but_one": list(range(1, 32)),
    "every_other": list(range(0, 32, 2)),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("percdamp", [0.0, 0.01])
def test_cholesky_form_equals_naive_oracle(name, percdamp):
    W, _, H = problem(0)
    S = CASES[name]
    fast = R.prune_columns(W, H, S, percdamp=percdamp)
    assert_close(fast, R.prune_columns_naive(W, H, S, percdamp=percdamp), "float64_solve", name)
    assert np.all(fast[:, S] == 0.0)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("percdamp", [0.0, 0.01])
def test_survivors_are_least_squares_optimum(name, percdamp):
    W, _, H = problem(1)
    S = CASES[name]
    assert_close(R.prune_columns(W, H, S, percdamp=percdamp), least_squares(W, damped(H, percdamp), S),
                 "float64_solve", name)


def test_order_of_removal_does_not_matter():
    W, _, H = problem(2)
    S = np.array([30, 1, 14, 7, 22])
    assert_close(R.prune_columns(W, H, S[::-1]), R.prune_columns(W, H, S), "float64_solve")


def test_single_column_cost_and_update():
    """spec §10.1.1: cost ||W[:,q]||² / G[q,q]; the loss increase is half of it."""
    W, X, H = problem(3)
    G = np.linalg.inv(H)
    q = 9
    W_new, losses = R.prune_columns_cholesky(W, G, [q])
    assert_close(losses, [np.sum(W[:, q] ** 2) / G[q, q]], "float64")
    assert_close(W_new, W - np.outer(W[:, q] / G[q, q], G[q, :]), "float64")  # Eq. (4)
    assert np.all(W_new[:, q] == 0.0)
    assert_close(np.sum(((W - W_new) @ X.T) ** 2) / len(X), losses[0] / 2, "float64_solve")


def test_per_column_losses_add_up_to_true_reconstruction_error():
    """spec §10.1.3: ½ Σ ||e_i||² = ||(W - W')Xᵀ||² / n = tr(W_S G_SS⁻¹ W_Sᵀ) / 2."""
    W, X, H = problem(4)
    G = np.linalg.inv(H)
    S = np.array([3, 29, 11, 12, 0, 18])
    W_new, losses = R.prune_columns_cholesky(W, G, S)
    true_error = np.sum(((W - W_new) @ X.T) ** 2) / len(X)
    assert_close(0.5 * np.sum(losses), true_error, "float64_solve")
    assert_close(R.reconstruction_error(W, W_new, H), true_error, "float64_solve")
    joint = np.trace(W[:, S] @ np.linalg.inv(G[np.ix_(S, S)]) @ W[:, S].T)
    assert_close(np.sum(losses), joint, "float64_solve")


def test_remove_from_hessian_gives_inverse_of_surviving_block():
    """spec §10.1.8: identity rows/cols for S, then inv(H_new)[K,K] = (H_KK)⁻¹ = Eq. (3) downdate."""
    _, _, H = problem(5)
    S = [4, 20, 7]
    K = np.setdiff1d(np.arange(32), S)
    G_new = np.linalg.inv(R.remove_from_hessian(H, S))
    assert_close(G_new[np.ix_(K, K)], np.linalg.inv(H[np.ix_(K, K)]), "float64_solve")
    G = np.linalg.inv(H)
    for q in S:  # Eq. (3), sequentially
        G = G - np.outer(G[:, q], G[q, :]) / G[q, q]
    assert_close(G_new[np.ix_(K, K)], G[np.ix_(K, K)], "float64_solve")


@pytest.mark.parametrize("scale", [1e-3, 7.0, 1e4])
def test_scale_of_H_does_not_matter(scale):
    W, _, H = problem(6)
    S = [2, 9, 30]
    for p in (0.0, 0.01):
        assert_close(R.prune_columns(W, scale * H, S, percdamp=p), R.prune_columns(W, H, S, percdamp=p),
                     "float64_solve")


def test_no_columns_is_an_exact_no_op():
    W, _, H = problem(7)
    out = R.prune_columns(W, H, [])
    assert np.array_equal(out, W) and out is not W
    assert np.array_equal(R.prune_columns_naive(W, H, np.array([], dtype=np.int64)), W)


def test_compensate_false_only_zeroes_columns():
    W, _, H = problem(8)
    S = [2, 9, 30]
    out = R.prune_columns(W, H, S, compensate=False)
    K = np.setdiff1d(np.arange(32), S)
    assert np.array_equal(out[:, K], W[:, K]) and np.all(out[:, S] == 0.0)


def test_inputs_are_not_mutated():
    W, _, H = problem(9, dead=[3])
    W0, H0 = W.copy(), H.copy()
    R.prune_columns(W, H, [3, 5], percdamp=0.01)
    R.prune_columns_naive(W, H, [3, 5])
    R.prune_columns_cholesky(W, np.linalg.inv(H + np.eye(32)), [5])
    R.remove_from_hessian(H, [1])
    assert np.array_equal(W, W0) and np.array_equal(H, H0)


@pytest.mark.parametrize("S", [[7, 20], [20, 30]], ids=["dead_pruned", "dead_kept"])
def test_dead_inputs(S):
    """spec §2.4: H[j,j] == 0 -> H[j,j] = 1 and W[:,j] = 0; the output on X is unchanged by it."""
    W, X, H = problem(10, dead=[7])
    H_fixed = H.copy()
    H_fixed[7, 7] = 1.0
    W_fixed = W.copy()
    W_fixed[:, 7] = 0.0
    out = R.prune_columns(W, H, S)
    assert np.all(out[:, 7] == 0.0)
    assert_close(out, least_squares(W_fixed, H_fixed, S), "float64_solve")
    assert_close(out, R.prune_columns_naive(W, H, S), "float64_solve")
    G = np.linalg.inv(H_fixed)
    assert R.prune_columns_cholesky(W_fixed, G, [7])[1][0] == 0.0  # a dead input costs nothing


def test_indefinite_H_is_retried_with_damping_and_warns():
    W, _, _ = problem(11)
    H = indefinite(np.random.default_rng(11), 32)
    with pytest.warns(R.DampingWarning) as record:
        out = R.prune_columns(W, H, [1, 4, 9])
    used = record[0].message.percdamp
    assert used == 1e-2 and record[0].message.requested == 0.0  # -3e-3 needs more than 1e-3
    assert np.all(np.isfinite(out))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same damping asked for explicitly: no warning
        assert_close(out, R.prune_columns(W, H, [1, 4, 9], percdamp=used), "float64")
        assert_close(out, least_squares(W, damped(H, used), [1, 4, 9]), "float64_solve")
    with pytest.warns(R.DampingWarning):
        assert_close(R.prune_columns_naive(W, H, [1, 4, 9]), out, "float64_solve")


@pytest.mark.parametrize("H", [-np.eye(6), -np.ones((6, 6)) - 2 * np.eye(6),
                               np.diag([1.0, 1.0, 1.0, 1.0, 1.0, -1e3])],
                         ids=["minus_identity", "negative_definite", "one_large_negative"])
def test_hopeless_H_raises_not_positive_definite(H):
    with pytest.raises(R.NotPositiveDefiniteError, match="not positive definite"), \
            warnings.catch_warnings():
        warnings.simplefilter("error")  # no DampingWarning on the way to failing
        R.prune_columns(np.ones((4, 6)), H, [0])
    assert issubclass(R.NotPositiveDefiniteError, ValueError)
    assert issubclass(R.DampingWarning, UserWarning)


W6, H6 = np.ones((4, 6)), np.eye(6)


@pytest.mark.parametrize("args, kw, match", [
    ((np.ones(6), H6, [0]), {}, "2-D"),
    ((W6, np.ones((6, 5)), [0]), {}, "square"),
    ((W6, np.eye(5), [0]), {}, "input columns"),
    ((np.full((4, 6), np.nan), H6, [0]), {}, "NaN"),
    ((W6, np.diag([1, 1, 1, 1, 1, np.inf]), [0]), {}, "NaN or Inf"),
    ((W6, H6, [6]), {}, r"\[0, 6\)"),
    ((W6, H6, [-1]), {}, r"\[0, 6\)"),
    ((W6, H6, [1, 1]), {}, "repeat"),
    ((W6, H6, [0.5]), {}, "integer"),
    ((W6, H6, [[0, 1]]), {}, "1-D"),
    ((W6, H6, [0]), {"percdamp": -0.1}, "percdamp"),
], ids=["W_1d", "H_not_square", "H_mismatch", "W_nan", "H_inf", "index_high", "index_negative",
        "duplicate", "float_index", "index_2d", "negative_percdamp"])
def test_bad_input_raises_value_error(args, kw, match):
    for fn in (R.prune_columns, R.prune_columns_naive):
        with pytest.raises(ValueError, match=match):
            fn(*args, **kw)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d_out=st.integers(1, 6), d_in=st.integers(1, 12),
       data=st.data())
def test_property_cholesky_form_is_naive_and_optimal(seed, d_out, d_in, data):
    """Over shapes and seeds: Cholesky form == naive oracle == least-squares optimum."""
    W, _, H = problem(seed, d_out=d_out, d_in=d_in)
    S = data.draw(st.lists(st.integers(0, d_in - 1), unique=True, max_size=d_in))
    fast = R.prune_columns(W, H, S)
    assert_close(fast, R.prune_columns_naive(W, H, S), "float64_solve", f"S={S}")
    assert_close(fast, least_squares(W, H, S), "float64_solve", f"S={S}")


@pytest.mark.parametrize("n_tokens", [4, 31])
def test_rank_deficient_H_never_gives_nan(n_tokens):
    """Fewer tokens than inputs: H is singular but has no dead input; every entry point warns,
    uses a damping from the ladder and returns finite weights."""
    rng = np.random.default_rng(n_tokens)
    X, W = rng.standard_normal((n_tokens, 32)), rng.standard_normal((6, 32))
    H = R.hessian(X)
    for call in (lambda: R.prune_columns(W, H, [0, 5]), lambda: R.prune_heads(W, H, 3, 4)[0],
                 lambda: R.prune_channels(W, H, 10)[0]):
        with pytest.warns(R.DampingWarning) as record:
            out = call()
        assert np.all(np.isfinite(out)) and record[0].message.percdamp in R.damping.RETRY_PERCDAMP
