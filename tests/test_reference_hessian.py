"""slimgpt.reference: the Hessian (Eq. 1) and the reconstruction error, against explicit sums."""
import numpy as np
import pytest

from slimgpt import reference as R
from slimgpt.testing import assert_close


def calibration(seed, n, d_in):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d_in)) @ (np.eye(d_in) + 0.3 * rng.standard_normal((d_in, d_in)) / np.sqrt(d_in))


def test_hessian_is_mean_of_token_outer_products():
    X = calibration(0, 50, 6)
    desired = sum(2.0 * np.outer(x, x) for x in X) / len(X)
    assert_close(R.hessian(X), desired, "float64")


def test_hessian_counts_tokens_of_3d_input():
    X = calibration(1, 24, 5)
    assert_close(R.hessian(X.reshape(4, 6, 5)), R.hessian(X), "float64")


def test_accumulate_hessian_in_chunks_equals_hessian_of_all():
    X = calibration(2, 90, 8)
    H, n = None, 0
    for chunk in (X[:7], X[7:7], X[7:40], X[40:].reshape(5, 10, 8)):
        H, n = R.accumulate_hessian(H, n, chunk)
    assert n == 90
    assert_close(H, R.hessian(X), "float64")


def test_accumulate_hessian_does_not_mutate():
    X = calibration(3, 20, 4)
    H0 = R.hessian(X)
    H1 = H0.copy()
    R.accumulate_hessian(H1, 20, X)
    assert np.array_equal(H0, H1)


def test_reconstruction_error_is_mean_squared_output_change():
    X = calibration(4, 200, 10)
    rng = np.random.default_rng(4)
    W, W_new = rng.standard_normal((3, 10)), rng.standard_normal((3, 10))
    desired = np.sum(((W - W_new) @ X.T) ** 2) / len(X)
    assert_close(R.reconstruction_error(W, W_new, R.hessian(X)), desired, "float64")
    assert R.reconstruction_error(W, W, R.hessian(X)) == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda: R.hessian(np.ones(5)), "must be"),
    (lambda: R.hessian(np.ones((2, 2, 2, 2))), "must be"),
    (lambda: R.hessian(np.zeros((0, 4))), "no tokens"),
    (lambda: R.hessian(np.array([[1.0, np.nan]])), "NaN"),
    (lambda: R.accumulate_hessian(None, 5, np.ones((2, 3))), "None"),
    (lambda: R.accumulate_hessian(np.eye(4), 5, np.ones((2, 3))), "3 x 3"),
    (lambda: R.accumulate_hessian(np.eye(3), -1, np.ones((2, 3))), "n_seen"),
    (lambda: R.reconstruction_error(np.ones((2, 3)), np.ones((2, 4)), np.eye(3)), "shape"),
    (lambda: R.reconstruction_error(np.ones((2, 3)), np.ones((2, 3)), np.eye(4)), "3 x 3"),
], ids=["1d", "4d", "empty", "nan", "H_none_seen", "H_shape", "n_seen_negative",
        "W_new_shape", "H_mismatch"])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
