"""slimgpt.ops on every backend against the NumPy reference and its block-downdate twin.

Each fast backend (C++ "cpu", and "cuda" when built with a device) runs the same public call
as backend="reference" on the same inputs. Continuous outputs are compared at the "float32"
row of slimgpt.testing (the reference goes in `desired`), discrete outputs (which heads, which
channels) exactly. Inputs have well-separated saliencies (column scales spread geometrically)
so float32 and float64 cannot flip a near-tie.

The fast path keeps H⁻¹ and downdates it instead of re-inverting every iteration (spec §3.4):
each case is checked against `slimgpt.reference.downdate` (the same algorithm in float64) and
against the re-inverting reference (the published loop), and the OBS losses against both.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from slimgpt import ops, reference
from slimgpt._native import has_cuda
from slimgpt.reference import downdate
from slimgpt.testing import assert_close, indefinite, problem

BACKENDS = [
    "cpu",
    "torch",            # the same algorithm in torch (slimgpt/torch_ops.py), here on the CPU
    pytest.param("cuda", marks=pytest.mark.skipif(not has_cuda(), reason="no CUDA build or device")),
]


def _dev(A, backend):
    """Inputs as the backend likes them: NumPy for cpu, torch CUDA tensors for cuda."""
    if backend == "cuda":
        import torch

        return torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32)).cuda()
    return A


def _np(A):
    return A.detach().cpu().numpy() if hasattr(A, "detach") else np.asarray(A)


def make_case(d_out, d_in, *, seed=0, dead=(), block=1):
    """W (d_out, d_in) and H = 2 XᵀX/n (n = 4·d_in) with blocks of `block` columns whose scales
    are 15% apart (3% for hundreds of blocks, keeping the range within 1e7), so there are no
    near-ties; dead columns have zero inputs."""
    n_blocks = d_in // block
    step = min(1.15, 10 ** (7 / n_blocks))
    W, _, H = problem(seed, d_out, d_in, block=block, n_per_input=4, dead=dead,
                      spread=(step ** (-n_blocks / 2), step ** (n_blocks / 2)))
    return W, H


def make_head_case(d_out, n_heads, d, *, seed=0, dead=()):
    return make_case(d_out, n_heads * d, seed=seed, dead=dead, block=d)


# --- Hessian ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(50, 7), (3, 20, 13)], ids=["2d", "batch-seq"])
def test_hessian(backend, shape):
    X = np.random.default_rng(1).standard_normal(shape)
    assert_close(_np(ops.hessian(_dev(X, backend), backend=backend)), reference.hessian(X), "float32",
                 err_msg=str(shape))


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulate_hessian_equals_one_shot(backend):
    X = np.random.default_rng(2).standard_normal((90, 11))
    H, n = None, 0
    for chunk in (X[:10], X[10:10], X[10:55].reshape(3, 15, 11), X[55:]):
        H, n = ops.accumulate_hessian(H, n, _dev(chunk, backend), backend=backend)
    assert n == 90
    assert_close(_np(H), reference.hessian(X), "float32")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "int8", "int64", "huge-float32"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_hessian_of_any_dtype_equals_the_float64_values(dtype, kind):
    """max|X| (which picks the power-of-two scale) is taken in X's own floating dtype, and
    integers are widened first (|-128| overflows int8): H is bit-identical to the H of the same
    values given as float64."""
    import torch

    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 9)) * (3e37 if dtype == "huge-float32" else 40.0)
    if dtype.startswith("int"):
        X[0, 0] = -128.0
    if dtype == "bfloat16" and kind == "numpy":
        pytest.skip("NumPy has no bfloat16")
    if kind == "torch":
        Xd = torch.from_numpy(X).to(getattr(torch, dtype.replace("huge-", "")))
        values = Xd.double().numpy()
    else:
        Xd = X.astype(dtype.replace("huge-", ""))
        values = Xd.astype(np.float64)
    got, _ = ops.accumulate_hessian(None, 0, Xd, backend="cpu")
    want, _ = ops.accumulate_hessian(None, 0, values, backend="cpu")
    np.testing.assert_array_equal(_np(got), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_accumulate_hessian_of_no_tokens_is_H_as_float64(backend, kind):
    """An empty batch leaves H as it is, returned as float64 on every backend (the torch
    backend returned a float32 H as float32)."""
    import torch

    H0 = reference.hessian(np.random.default_rng(5).standard_normal((20, 6))).astype(np.float32)
    H, X = (H0, np.zeros((0, 6))) if kind == "numpy" else (torch.from_numpy(H0), torch.zeros(0, 6))
    got, n = ops.accumulate_hessian(_dev(H, backend), 20, _dev(X, backend), backend=backend)
    assert n == 20 and got.dtype in (np.float64, torch.float64)
    np.testing.assert_array_equal(_np(got), H0.astype(np.float64))


@pytest.mark.parametrize("kind", ["numpy", "torch", "float32", "strided"])
def test_accumulate_hessian_overwrite_H(kind):
    """overwrite_H=True updates a float64 C-contiguous CPU H in place (same values as the
    functional form); any other H is copied as usual and left untouched."""
    import torch

    rng = np.random.default_rng(3)
    X0, X1 = rng.standard_normal((40, 9)), rng.standard_normal((30, 9))
    H0, _ = ops.accumulate_hessian(None, 0, X0, backend="cpu")
    want, _ = ops.accumulate_hessian(H0, 40, X1, backend="cpu")
    H = {"numpy": H0.copy(), "torch": torch.from_numpy(H0.copy()), "float32": H0.astype(np.float32),
         "strided": np.asfortranarray(H0)}[kind]
    before = np.array(_np(H), copy=True)
    got, n = ops.accumulate_hessian(H, 40, X1, backend="cpu", overwrite_H=True)
    assert n == 70
    assert_close(_np(got), want, "float32")
    if kind in ("numpy", "torch"):
        assert got is H                                   # updated in place, no N x N copy
    else:
        assert_close(_np(H), before, "float64")           # not writable as float64 C order: untouched


# --- prune_columns ------------------------------------------------------------------------

COLUMN_CASES = {
    # id: (d_out, d_in, columns, dead, percdamp, compensate)
    "tiny": (4, 6, [1, 4], (), 0.0, True),
    "unsorted": (13, 37, [30, 2, 17, 3, 36], (), 0.0, True),
    "dead-kept": (9, 25, [0, 5], (7, 11), 0.0, True),
    "dead-pruned": (9, 25, [7, 3], (7,), 0.0, True),
    "damped": (9, 25, [4, 8, 9], (), 0.01, True),
    "no-compensate": (9, 25, [4, 8, 9], (2,), 0.0, False),
    "empty": (5, 8, [], (3,), 0.0, True),
    "all": (5, 8, list(range(8)), (), 0.0, True),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", COLUMN_CASES, ids=list(COLUMN_CASES))
def test_prune_columns(backend, case):
    d_out, d_in, cols, dead, percdamp, compensate = COLUMN_CASES[case]
    W, H = make_case(d_out, d_in, seed=3, dead=dead)
    want, loss_want = downdate.prune_columns(W, H, cols, percdamp=percdamp, compensate=compensate,
                                             return_loss=True)
    got, loss = ops.prune_columns(_dev(W, backend), _dev(H, backend), cols, percdamp=percdamp,
                                  compensate=compensate, return_loss=True, backend=backend)
    got = _np(got)
    assert_close(got, want, "float32", err_msg=case)
    assert_close(got, reference.prune_columns(W, H, cols, percdamp=percdamp, compensate=compensate), "float32")
    assert_close(loss, loss_want, "float32", err_msg=case)
    assert np.all(got[:, cols] == 0.0)
    if not compensate:  # survivors untouched except dead inputs (bit-identical in float32)
        keep = np.setdiff1d(np.arange(d_in), list(cols) + list(dead))
        np.testing.assert_array_equal(got[:, keep], W[:, keep].astype(np.float32))


# --- head_errors --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gcd", [True, False], ids=["gcd", "no-gcd"])
@pytest.mark.parametrize("d_in,d", [(48, 8), (30, 30), (21, 1)], ids=["8-heads", "one-head", "d=1"])
def test_head_errors(backend, gcd, d_in, d):
    W, H = make_case(7, d_in, seed=4)
    Hinv = np.linalg.inv(H)
    want = reference.head_errors(W, Hinv, d, gcd=gcd)
    got = _np(ops.head_errors(_dev(W, backend), _dev(Hinv, backend), d, gcd=gcd, backend=backend))
    assert got.shape == (d_in // d,)
    assert_close(got, want, "float32")


# --- prune_heads --------------------------------------------------------------------------

HEAD_CASES = {
    # id: (d_out, n_heads, head_dim, n_prune, kwargs, dead)
    "basic": (24, 8, 8, 3, {}, ()),
    "one-head": (10, 1, 16, 1, {}, ()),
    "odd-shapes": (17, 5, 12, 2, {}, ()),
    "head_dim=1": (9, 20, 1, 6, {}, ()),
    "dead-columns": (16, 6, 8, 2, {}, (3, 4, 20)),
    "damped": (16, 6, 8, 2, {"percdamp": 0.01}, ()),
    "no-gcd": (16, 6, 8, 3, {"gcd": False}, ()),
    "no-compensate": (16, 6, 8, 3, {"compensate": False}, ()),
    "groups-ids": (16, 8, 4, 4, {"head_groups": [0, 0, 1, 1, 0, 0, 1, 1]}, ()),
    "groups-int": (16, 8, 4, 4, {"head_groups": 4}, ()),
    "prune-none": (16, 4, 4, 0, {}, (1,)),
    "prune-all": (16, 4, 4, 4, {}, ()),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", HEAD_CASES, ids=list(HEAD_CASES))
def test_prune_heads(backend, case):
    d_out, n_heads, d, n_prune, kw, dead = HEAD_CASES[case]
    W, H = make_head_case(d_out, n_heads, d, seed=5, dead=dead)
    W_dd, heads_dd, loss_dd = downdate.prune_heads(W, H, n_prune, d, return_loss=True, **kw)
    W_ref, heads_ref, loss_ref = reference.prune_heads(W, H, n_prune, d, return_loss=True, **kw)
    W_new, heads, loss = ops.prune_heads(_dev(W, backend), _dev(H, backend), n_prune, d, return_loss=True,
                                         backend=backend, **kw)
    np.testing.assert_array_equal(_np(heads), heads_ref, err_msg=case)
    np.testing.assert_array_equal(heads_dd, heads_ref, err_msg=case)
    assert _np(heads).dtype == np.int64
    assert_close(_np(W_new), W_dd, "float32", err_msg=case)
    assert_close(_np(W_new), W_ref, "float32", err_msg=case)
    assert_close(loss, loss_dd, "float32", err_msg=case)
    assert_close(loss, loss_ref, "float32", err_msg=case)


# --- prune_channels -----------------------------------------------------------------------

CHANNEL_CASES = {
    # id: (d_out, d_in, n_prune, kwargs, dead)
    "dgs-small": (12, 100, 37, {}, ()),
    "dgs-schedule": (6, 560, 530, {}, ()),          # groups 64 x 8, 18 (spec §4.2 schedule)
    "fixed-size": (12, 100, 37, {"group_sizes": 8}, ()),
    "explicit": (12, 100, 37, {"group_sizes": [20, 10, 7]}, ()),
    "one-by-one": (12, 40, 9, {"group_sizes": 1}, ()),
    "dead-columns": (12, 90, 30, {"group_sizes": 10}, (5, 6, 80)),
    "damped": (12, 90, 30, {"percdamp": 0.01, "group_sizes": 10}, ()),
    "no-compensate": (12, 90, 30, {"compensate": False, "group_sizes": 10}, ()),
    "prune-none": (12, 30, 0, {}, ()),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CHANNEL_CASES, ids=list(CHANNEL_CASES))
def test_prune_channels(backend, case):
    d_out, d_in, n_prune, kw, dead = CHANNEL_CASES[case]
    W, H = make_case(d_out, d_in, seed=6, dead=dead)
    W_dd, ch_dd, loss_dd = downdate.prune_channels(W, H, n_prune, return_loss=True, **kw)
    W_ref, ch_ref = reference.prune_channels(W, H, n_prune, **kw)
    W_new, ch, loss = ops.prune_channels(_dev(W, backend), _dev(H, backend), n_prune, return_loss=True,
                                         backend=backend, **kw)
    np.testing.assert_array_equal(_np(ch), ch_ref, err_msg=case)
    np.testing.assert_array_equal(ch_dd, ch_ref, err_msg=case)
    assert_close(_np(W_new), W_dd, "float32", err_msg=case)
    assert_close(_np(W_new), W_ref, "float32", err_msg=case)
    assert_close(loss, loss_dd, "float32", err_msg=case)


def test_dgs_group_sizes_match_reference():
    for T in (0, 1, 64, 300, 688, 2064, 2752, 5504, 7000):
        assert ops.dgs_group_sizes(T, backend="cpu") == reference.dgs_group_sizes(T), T


# --- kinds, dtypes, devices ---------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_in_torch_out(backend):
    torch = pytest.importorskip("torch")
    W, H = make_head_case(8, 4, 4, seed=7)
    dev = "cuda" if backend == "cuda" else "cpu"
    for dtype in (torch.float32, torch.float64):
        Wt = torch.tensor(W, dtype=dtype, device=dev)
        Ht = torch.tensor(H, dtype=dtype, device=dev)
        W_new, heads = ops.prune_heads(Wt, Ht, 2, 4, backend=backend)
        assert isinstance(W_new, torch.Tensor) and W_new.dtype == dtype and W_new.device.type == dev
        assert isinstance(heads, torch.Tensor) and heads.dtype == torch.int64
        W_new, ch = ops.prune_channels(Wt, Ht, 5, backend=backend)
        assert isinstance(ch, torch.Tensor) and ch.dtype == torch.int64
        Hh = ops.hessian(Wt, backend=backend)     # a Hessian is float64: it may exceed float32's range
        assert isinstance(Hh, torch.Tensor) and Hh.dtype == torch.float64 and Hh.device.type == dev
        assert torch.equal(Wt, torch.tensor(W, dtype=dtype, device=dev))  # inputs never mutated


def test_numpy_dtype_kept_and_input_not_mutated():
    W, H = make_head_case(8, 4, 4, seed=8)
    W0 = W.copy()
    W_new, heads = ops.prune_heads(W, H, 1, 4, backend="cpu")
    assert W_new.dtype == np.float64 and isinstance(heads, np.ndarray) and heads.dtype == np.int64
    np.testing.assert_array_equal(W, W0)
    W32, _ = ops.prune_heads(W.astype(np.float32), H.astype(np.float32), 1, 4, backend="cpu")
    assert W32.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_weights_come_back_as_float64(backend):
    """Compensated weights are not integers: an integer W (NumPy or torch) gives float64, the
    same values either way (a torch int W came back truncated to integers)."""
    import torch

    W, H = make_head_case(8, 4, 4, seed=9)
    Wi = np.round(W * 10).astype(np.int32)
    want, _ = ops.prune_heads(Wi, H, 1, 4, backend=backend)
    got, _ = ops.prune_heads(torch.from_numpy(Wi), torch.from_numpy(H), 1, 4, backend=backend)
    assert want.dtype == np.float64 and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want)
    assert not np.array_equal(want, np.round(want))                # really compensated


def test_backend_none_picks_cpu_and_bad_backend_raises():
    assert ops.resolve_backend(None, np.zeros((2, 2))) == "cpu"
    with pytest.raises(ValueError, match="backend"):
        ops.resolve_backend("tpu")


# --- damping and positive definiteness ----------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_damping_retry_warns_like_reference(backend):
    W = np.random.default_rng(10).standard_normal((5, 16))
    H = indefinite(np.random.default_rng(9), 16, neg=5e-3)  # fixed by the ladder's 1e-2
    with pytest.warns(reference.DampingWarning) as want:
        W_ref, heads_ref = reference.prune_heads(W, H, 1, 4)
    with pytest.warns(reference.DampingWarning) as got:
        W_new, heads = ops.prune_heads(_dev(W, backend), _dev(H, backend), 1, 4, backend=backend)
    assert got[-1].message.percdamp == want[-1].message.percdamp == 1e-2
    np.testing.assert_array_equal(_np(heads), heads_ref)
    assert_close(_np(W_new), W_ref, "float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hopeless_hessian_raises(backend):
    W = np.ones((3, 8))
    H = -np.eye(8)  # damping adds a negative multiple of I: never positive definite
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", reference.DampingWarning)
        for call in (lambda: ops.prune_channels(_dev(W, backend), _dev(H, backend), 2, backend=backend),
                     lambda: ops.prune_columns(_dev(W, backend), _dev(H, backend), [1], backend=backend)):
            with pytest.raises(reference.NotPositiveDefiniteError):
                call()


# --- bad input ----------------------------------------------------------------------------

BAD_CALLS = {
    # id: call(W, H) that must raise ValueError on every backend
    "H-wrong-shape": lambda W, H, b: ops.prune_heads(W, H[:-1], 1, 4, backend=b),
    "W-1d": lambda W, H, b: ops.prune_columns(W[0], H, [0], backend=b),
    "head_dim-not-divisor": lambda W, H, b: ops.prune_heads(W, H, 1, 5, backend=b),
    "too-many-heads": lambda W, H, b: ops.prune_heads(W, H, 5, 4, backend=b),
    "negative-prune": lambda W, H, b: ops.prune_channels(W, H, -1, backend=b),
    "col-out-of-range": lambda W, H, b: ops.prune_columns(W, H, [16], backend=b),
    "col-repeated": lambda W, H, b: ops.prune_columns(W, H, [2, 2], backend=b),
    "groups-sum": lambda W, H, b: ops.prune_channels(W, H, 5, group_sizes=[2, 2], backend=b),
    "groups-zero": lambda W, H, b: ops.prune_channels(W, H, 5, group_sizes=[5, 0], backend=b),
    "head-groups-quota": lambda W, H, b: ops.prune_heads(W, H, 3, 4, head_groups=[0, 0, 1, 1], backend=b),
    "percdamp-negative": lambda W, H, b: ops.prune_heads(W, H, 1, 4, percdamp=-1.0, backend=b),
    "nan-W": lambda W, H, b: ops.prune_heads(np.where(W > 0, np.nan, W), H, 1, 4, backend=b),
    "inf-H": lambda W, H, b: ops.prune_channels(W, np.where(H > 1, np.inf, H), 2, backend=b),
    "no-tokens": lambda W, H, b: ops.hessian(np.zeros((0, 4)), backend=b),
}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_bad_input_raises_value_error(backend, case):
    W, H = make_head_case(6, 4, 4, seed=11)
    with pytest.raises(ValueError):
        BAD_CALLS[case](W, H, backend)


def test_module_imports_without_gpu_and_cuda_backend_is_refused_cleanly():
    from slimgpt._native import core

    c = core()
    assert isinstance(c.built_with_cuda, bool) and isinstance(c.has_cuda(), bool)
    if not c.has_cuda():
        with pytest.raises(RuntimeError, match="cuda"):
            ops.prune_heads(np.eye(4), np.eye(4), 1, 2, backend="cuda")


# --- extreme scales and singular Hessians (reliability issue, items 5 and 11) -------------------

@pytest.mark.parametrize("sw,sh", [(1.0, 1e-40), (1e25, 1e30), (1e-30, 1.0), (1.0, 1e35)],
                         ids=["subnormal-H", "huge-W-and-H", "tiny-W", "huge-H"])
def test_finite_input_never_gives_nan_and_matches_the_reference(sw, sh):
    """Scaling W and H changes neither the selection nor W_new/sw (spec §10.1.9); the float32
    core must not overflow or flush to zero where the float64 reference stays finite."""
    W, H = make_head_case(8, 4, 4, seed=13)
    for call in (lambda b: ops.prune_columns(W * sw, H * sh, [1, 2], backend=b),
                 lambda b: ops.prune_heads(W * sw, H * sh, 2, 4, backend=b)[0],
                 lambda b: ops.prune_channels(W * sw, H * sh, 5, backend=b)[0]):
        want = call("reference")
        got = call("cpu")
        assert np.all(np.isfinite(got))
        assert_close(got / sw, want / sw, "float32")
    for X_scale in (1e20, 1e-30):
        X = np.random.default_rng(14).standard_normal((40, 6)) * X_scale
        assert_close(ops.hessian(X, backend="cpu"), reference.hessian(X), "float32")


def test_singular_hessian_is_damped_alike_on_both_backends():
    """Issue: a float32 Cholesky succeeded on a singular H at percdamp=0 without a DampingWarning
    while the reference damped (W differed by up to 145%)."""
    rng = np.random.default_rng(15)
    X = rng.standard_normal((12, 32))              # 12 tokens for 32 inputs: rank 12
    H, W = 2 * X.T @ X / 12, rng.standard_normal((6, 32))
    with pytest.warns(reference.DampingWarning) as want:
        W_ref = reference.prune_columns(W, H, [3, 9], percdamp=0.0)
    with pytest.warns(reference.DampingWarning) as got:
        W_cpu = ops.prune_columns(W, H, [3, 9], percdamp=0.0, backend="cpu")
    assert got[-1].message.percdamp == want[-1].message.percdamp
    assert_close(W_cpu, W_ref, "float32_singular")


def test_read_only_inputs_are_accepted():
    W, H = make_head_case(6, 4, 4, seed=16)
    W32, H32 = W.astype(np.float32), H.astype(np.float32)
    for A in (W32, H32):
        A.flags.writeable = False
    W_new, heads = ops.prune_heads(W32, H32, 1, 4, backend="cpu")
    np.testing.assert_array_equal(heads, reference.prune_heads(W, H, 1, 4)[1])


# --- inputs every backend refuses alike (reliability issue, items 10-12) ---------------------------

def _refusals():
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((4, 8)), rng.standard_normal((20, 8))
    H = reference.hessian(X)
    return {
        "n_seen + n beyond int64": (lambda b: ops.accumulate_hessian(H, 2**63 - 1, X, backend=b), "n_seen"),
        "n_seen True": (lambda b: ops.accumulate_hessian(H, True, X, backend=b), "boolean"),
        "n_prune True": (lambda b: ops.prune_heads(W, H, True, 2, backend=b), "boolean"),
        "head_dim True": (lambda b: ops.prune_heads(W, H, 1, True, backend=b), "boolean"),
        "head_groups True": (lambda b: ops.prune_heads(W, H, 1, 2, head_groups=True, backend=b), "boolean"),
        "string W": (lambda b: ops.prune_columns(W.astype(str), H, [1], backend=b), "real"),
        "datetime W": (lambda b: ops.prune_columns(np.zeros((4, 8), "datetime64[s]"), H, [1], backend=b), "real"),
        "complex W": (lambda b: ops.prune_columns(W.astype(complex), H, [1], backend=b), "real"),
        "zero-width X": (lambda b: ops.hessian(np.zeros((5, 0)), backend=b), "d_in = 0"),
        "percdamp None": (lambda b: ops.prune_columns(W, H, [1], percdamp=None, backend=b), "percdamp"),
    }


@pytest.mark.parametrize("backend", ["reference", "cpu", "torch"])
@pytest.mark.parametrize("case", list(_refusals()))
def test_every_backend_refuses_alike(case, backend):
    """The hostile-input corpus found the backends disagreeing about acceptance (the reference
    summed past int64 and took d_in = 0; the cpu backend failed with a reshape error and warned
    about complex casts): each is now one clear ValueError on every backend, without warnings."""
    call, words = _refusals()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=words):
            call(backend)


@pytest.mark.parametrize("seed", [1, 3])
def test_rounding_singular_hessian_gets_one_damping_on_every_path(seed):
    """Issue 22: a duplicated input makes H exactly singular, yet its float64 Cholesky succeeds on
    rounding (a pivot² of ~1e-16 of the diagonal). At percdamp=0 the reference and the twin used no
    damping while the cpu core's float32 Cholesky failed and damped 1e-4, so they returned
    different weights. The damping is now decided once in float64 (choose_percdamp) for all."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((64, 16))
    X[:, 3] = X[:, 2]
    H, W = 2 * X.T @ X / 64, rng.standard_normal((6, 16))
    assert reference.damping.choose_percdamp(H, 0.0) == 1e-4
    calls = {"reference": lambda **kw: reference.prune_channels(W, H, 5, **kw),
             "twin": lambda **kw: downdate.prune_channels(W, H, 5, **kw),
             "cpu": lambda **kw: ops.prune_channels(W, H, 5, backend="cpu", **kw),
             "torch": lambda **kw: ops.prune_channels(W, H, 5, backend="torch", **kw)}
    W_ref, ch_ref, p_ref = calls.pop("reference")(percdamp=0.0, return_damping=True)
    assert p_ref == 1e-4
    for name, call in calls.items():
        W_new, ch, p = call(percdamp=0.0, return_damping=True)
        assert p == p_ref, name
        np.testing.assert_array_equal(_np(ch), ch_ref, err_msg=name)
        assert_close(_np(W_new), W_ref, "float64" if name == "twin" else "float32_singular", name)
