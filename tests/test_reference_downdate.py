"""slimgpt.reference.downdate (spec §3.4): one inverse plus exact block downdates gives the
same selections, weights and losses as the published re-inverting loop, in float64."""
import warnings

import numpy as np
import pytest

from slimgpt import reference as R
from slimgpt.reference import downdate as D
from slimgpt.testing import assert_close, columns_of, damped, indefinite, least_squares, problem

HEAD_CASES = {
    # id: (problem kwargs, prune_heads kwargs)
    "basic": (dict(d_in=32, block=4), dict(n_prune=3, head_dim=4)),
    "damped": (dict(d_in=32, block=4), dict(n_prune=3, head_dim=4, percdamp=0.01)),
    "no-gcd": (dict(d_in=32, block=4), dict(n_prune=3, head_dim=4, gcd=False)),
    "no-compensate": (dict(d_in=32, block=4), dict(n_prune=3, head_dim=4, compensate=False)),
    "gqa-quota": (dict(d_in=32, block=4), dict(n_prune=4, head_dim=4, head_groups=2)),
    "dead-input": (dict(d_in=32, block=4, dead=(9, 10)), dict(n_prune=2, head_dim=4)),
    "all-heads": (dict(d_in=24, block=4), dict(n_prune=6, head_dim=4)),
    "head_dim=1": (dict(d_in=20), dict(n_prune=7, head_dim=1)),
}


@pytest.mark.parametrize("case", HEAD_CASES)
def test_prune_heads_equals_reinversion(case):
    pkw, kw = HEAD_CASES[case]
    W, _, H = problem(1, **pkw)
    W_ref, heads_ref, loss_ref = R.prune_heads(W, H, return_loss=True, **kw)
    W_dd, heads_dd, loss_dd = D.prune_heads(W, H, return_loss=True, **kw)
    np.testing.assert_array_equal(heads_dd, heads_ref)
    assert_close(W_dd, W_ref, "float64", case)
    assert_close(loss_dd, loss_ref, "float64", case)


CHANNEL_CASES = {
    "dgs": (dict(d_in=96, spread=(0.1, 10.0)), dict(n_prune=70)),
    "fixed-groups": (dict(d_in=96, spread=(0.1, 10.0)), dict(n_prune=40, group_sizes=8)),
    "one-by-one": (dict(d_in=40), dict(n_prune=9, group_sizes=1)),
    "damped": (dict(d_in=96, spread=(0.1, 10.0)), dict(n_prune=40, group_sizes=16, percdamp=0.01)),
    "no-compensate": (dict(d_in=96, spread=(0.1, 10.0)), dict(n_prune=40, group_sizes=16, compensate=False)),
    "dead-inputs": (dict(d_in=64, dead=(3, 50)), dict(n_prune=20, group_sizes=5)),
}


@pytest.mark.parametrize("case", CHANNEL_CASES)
def test_prune_channels_equals_reinversion(case):
    pkw, kw = CHANNEL_CASES[case]
    W, _, H = problem(2, **pkw)
    W_ref, ch_ref, loss_ref = R.prune_channels(W, H, return_loss=True, **kw)
    W_dd, ch_dd, loss_dd = D.prune_channels(W, H, return_loss=True, **kw)
    np.testing.assert_array_equal(ch_dd, ch_ref)
    assert_close(W_dd, W_ref, "float64", case)
    assert_close(loss_dd, loss_ref, "float64", case)


@pytest.mark.parametrize("compensate", [True, False])
def test_prune_columns_equals_cholesky_form(compensate):
    W, _, H = problem(3, d_in=40)
    S = [31, 2, 17, 3, 36]
    want, loss_want = R.prune_columns(W, H, S, compensate=compensate, return_loss=True)
    got, loss_got = D.prune_columns(W, H, S, compensate=compensate, return_loss=True)
    assert_close(got, want, "float64")
    assert_close(loss_got, loss_want, "float64")


@pytest.mark.parametrize("prune", ["heads", "channels"])
@pytest.mark.parametrize("percdamp", [0.0, 0.01])
def test_loss_is_the_objective_and_survivors_are_optimal(prune, percdamp):
    """½Σ||e_i||² = ½ tr(ΔW H ΔWᵀ) for the damped H, and W_new = W H[:,K] (H_KK)⁻¹ (spec §2.2-2.3)."""
    W, _, H = problem(4, d_in=32, block=4 if prune == "heads" else 1)
    if prune == "heads":
        W_new, idx, loss = D.prune_heads(W, H, 3, 4, percdamp=percdamp, return_loss=True)
        S = columns_of(idx, 4)
    else:
        W_new, S, loss = D.prune_channels(W, H, 12, group_sizes=5, percdamp=percdamp, return_loss=True)
    Hd = damped(H, percdamp)
    assert_close(loss, R.reconstruction_error(W, W_new, Hd), "float64_solve")
    assert_close(W_new, least_squares(W, Hd, S), "float64_solve")


def test_remove_set_downdate_is_the_inverse_without_the_set():
    """G − G[:,S] G_SS⁻¹ G[S,:] restricted to the survivors is (H_KK)⁻¹ (spec §10.1.8)."""
    W, _, H = problem(5, d_in=24)
    S = np.array([4, 11, 20])
    K = np.setdiff1d(np.arange(24), S)
    _, G_new, _ = D.remove_set(W, np.linalg.inv(H), S)
    assert_close(G_new[np.ix_(K, K)], np.linalg.inv(H[np.ix_(K, K)]), "float64_solve")
    assert np.all(G_new[S][:, K] == 0) and np.all(np.diag(G_new)[S] == 1)


def test_damping_retry_is_the_same():
    rng = np.random.default_rng(6)
    W, H = rng.standard_normal((8, 32)), indefinite(rng, 32)
    with pytest.warns(R.DampingWarning) as want:
        W_ref, heads_ref = R.prune_heads(W, H, 2, 4)
    with pytest.warns(R.DampingWarning) as got:
        W_dd, heads_dd = D.prune_heads(W, H, 2, 4)
    assert got[-1].message.percdamp == want[-1].message.percdamp
    np.testing.assert_array_equal(heads_dd, heads_ref)
    assert_close(W_dd, W_ref, "float64_solve")


def test_inputs_are_not_mutated_and_zero_is_a_no_op():
    W, _, H = problem(7, d_in=16, block=4)
    W0, H0 = W.copy(), H.copy()
    D.prune_heads(W, H, 2, 4)
    D.prune_channels(W, H, 5)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(H, H0)
    W_new, heads, loss = D.prune_heads(W, H, 0, 4, return_loss=True)
    assert np.array_equal(W_new, W) and heads.size == 0 and loss == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(D.prune_columns(W, H, []), W)
