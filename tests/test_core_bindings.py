"""The raw core slimgpt._core against reference.downdate, and its binding contract (docs/cpp.md).

What this is: the C++ core called directly (float32 W updated in place, float64 Hessians,
(indices, loss) results) compared with its float64 twin reference.downdate: weights and
losses at the "float32" tolerance of slimgpt.testing, selections exactly; plus one regression
test per defect the bindings fixed (heap corruption from head-group ids, NaN/Inf from finite
inputs of extreme scale, int64 overflow of n_seen, booleans taken as counts, read-only inputs
refused, the long DGS allocation). Calls that used to crash the interpreter run in a
subprocess, so a crash fails one test instead of the session. What it is not: tests of
slimgpt.ops (tests/test_ops.py) or a fuzz (tests/test_core_fuzz.py).

The CUDA-parametrised tests need a CUDA build and a device (torch CUDA tensors in, the same
checks); they skip otherwise.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from slimgpt._native import core
from slimgpt.reference import downdate as D
from slimgpt.reference import head_errors as head_errors_ref
from slimgpt.reference.channels import dgs_group_sizes, resolve_group_sizes
from slimgpt.reference.heads import head_group_ids
from slimgpt.testing import assert_close, calibration, columns_of, hessian_of, indefinite, problem

C = core()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not (C and C.has_cuda()), reason="no CUDA build or device")),
]


def f32(A, device="cpu"):
    """A float32 C-contiguous copy, as a NumPy array or (cuda) a torch CUDA tensor."""
    A = np.array(A, dtype=np.float32, order="C")
    if device == "cuda":
        import torch

        return torch.from_numpy(A).cuda()
    return A


def host(A):
    """float64 NumPy of a NumPy array or torch tensor (exact for float32 values)."""
    return np.asarray(A.cpu() if hasattr(A, "cpu") else A, dtype=np.float64)


def readonly(A):
    A = np.array(A)
    A.setflags(write=False)
    return A


def prune(op, W, H, device="cpu", **kw):
    """Run one pruning operation of the core on float32 copies; returns (W_new, indices, loss)
    with W_new as float64 NumPy (indices None for prune_columns)."""
    Wc, Hc = f32(W, device), f32(H, device)
    p, comp = kw.get("percdamp", 0.0), kw.get("compensate", True)
    if op == "columns":
        loss = C.prune_columns(Wc, Hc, np.asarray(kw["columns"], np.int64), p, comp)
        return host(Wc), None, loss
    if op == "heads":
        d, n_prune = kw["head_dim"], kw["n_prune"]
        groups = kw.get("head_groups")
        if groups is not None and np.ndim(groups) == 0:  # a number of groups: the ids
            groups = head_group_ids(groups, Wc.shape[1] // d, n_prune)[0]
        idx, loss = C.prune_heads(Wc, Hc, n_prune, d, p, kw.get("gcd", True), comp,
                                  None if groups is None else np.asarray(groups, np.int64))
        return host(Wc), idx, loss
    sizes = np.asarray(resolve_group_sizes(kw.get("group_sizes"), kw["n_prune"]), np.int64)
    idx, loss = C.prune_channels(Wc, Hc, sizes, p, comp)
    return host(Wc), idx, loss


def reference(op, W, H, **kw):
    """reference.downdate on the same float32 values, in float64: (W_new, indices, loss)."""
    W, H = host(f32(W)), host(f32(H))
    if op == "columns":
        W_new, loss = D.prune_columns(W, H, kw["columns"], percdamp=kw.get("percdamp", 0.0),
                                      compensate=kw.get("compensate", True), return_loss=True)
        return W_new, None, loss
    fn = D.prune_heads if op == "heads" else D.prune_channels
    return fn(W, H, return_loss=True, **kw)


def assert_same_run(got, want, case=""):
    W_got, idx_got, loss_got = got
    W_want, idx_want, loss_want = want
    if idx_want is not None:
        assert idx_got.dtype == np.int64
        np.testing.assert_array_equal(idx_got, idx_want, err_msg=case)
    assert_close(W_got, W_want, "float32", case)
    assert_close(loss_got, loss_want, "float32", case)


# --- the core against reference.downdate --------------------------------------------------

CASES = {
    # id: (op, problem kwargs, operation kwargs)
    "columns": ("columns", dict(d_in=37, d_out=13), dict(columns=[30, 2, 17, 3, 36])),
    "columns-dead": ("columns", dict(d_in=25, dead=(7, 11)), dict(columns=[7, 3, 11, 20])),
    "columns-damped": ("columns", dict(d_in=25), dict(columns=[4, 8, 9], percdamp=0.01)),
    "columns-no-compensate": ("columns", dict(d_in=25, dead=(2,)), dict(columns=[4, 8, 2], percdamp=0.01,
                                                                        compensate=False)),
    "columns-all": ("columns", dict(d_in=8), dict(columns=list(range(8)))),
    "columns-none": ("columns", dict(d_in=8, dead=(3,)), dict(columns=[])),
    "heads": ("heads", dict(d_in=32, block=4), dict(n_prune=3, head_dim=4)),
    "heads-odd-shapes": ("heads", dict(d_in=60, d_out=17, block=12), dict(n_prune=2, head_dim=12)),
    "heads-dead": ("heads", dict(d_in=32, block=4, dead=(9, 10, 20)), dict(n_prune=2, head_dim=4)),
    "heads-damped": ("heads", dict(d_in=32, block=4), dict(n_prune=3, head_dim=4, percdamp=0.01)),
    "heads-no-gcd": ("heads", dict(d_in=32, block=4), dict(n_prune=3, head_dim=4, gcd=False)),
    "heads-no-compensate": ("heads", dict(d_in=32, block=4, dead=(5,)), dict(n_prune=3, head_dim=4, percdamp=0.01,
                                                                             compensate=False)),
    "heads-groups-int": ("heads", dict(d_in=32, block=4), dict(n_prune=4, head_dim=4, head_groups=2)),
    "heads-groups-ids": ("heads", dict(d_in=32, block=4), dict(n_prune=4, head_dim=4,
                                                               head_groups=[0, 0, 1, 1, 0, 0, 1, 1])),
    "heads-groups-sparse-ids": ("heads", dict(d_in=32, block=4), dict(n_prune=2, head_dim=4,
                                                                      head_groups=[0, 6, 0, 6, 0, 6, 0, 6])),
    "heads-all": ("heads", dict(d_in=24, block=4), dict(n_prune=6, head_dim=4)),
    "heads-none": ("heads", dict(d_in=16, block=4, dead=(1,)), dict(n_prune=0, head_dim=4)),
    "heads-head_dim=1": ("heads", dict(d_in=20), dict(n_prune=7, head_dim=1)),
    "channels-dgs": ("channels", dict(d_in=96, spread=(0.1, 10.0)), dict(n_prune=70)),
    "channels-fixed": ("channels", dict(d_in=96, spread=(0.1, 10.0)), dict(n_prune=40, group_sizes=8)),
    "channels-one-by-one": ("channels", dict(d_in=40), dict(n_prune=9, group_sizes=1)),
    "channels-damped": ("channels", dict(d_in=96, spread=(0.1, 10.0)), dict(n_prune=40, group_sizes=16,
                                                                           percdamp=0.01)),
    "channels-no-compensate": ("channels", dict(d_in=96, spread=(0.1, 10.0), dead=(7,)),
                               dict(n_prune=40, group_sizes=16, percdamp=0.01, compensate=False)),
    "channels-dead": ("channels", dict(d_in=64, dead=(3, 50)), dict(n_prune=20, group_sizes=5)),
    "channels-no-compensate-wide": ("channels", dict(d_in=320, d_out=6, spread=(0.01, 100.0)),  # > 256 pruned:
                                    dict(n_prune=300, group_sizes=[150, 150], compensate=False)),  # blocked loss
    "channels-none": ("channels", dict(d_in=30), dict(n_prune=0)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_core_equals_reference_downdate(case, device):
    op, pkw, kw = CASES[case]
    W, _, H = problem(11, **pkw)
    assert_same_run(prune(op, W, H, device, **kw), reference(op, W, H, **kw), case)


# shapes over several of the core's tiles (cpp/dense.h TILE = 256, Hessian tiles of 128; sizes
# not multiples of them), where the tiled factorisation, the rows of G read from M = L⁻¹ below
# max(S), the stacked Ut of earlier sets and the tiles of W −= E Ut all come into play
BIG_CASES = {
    "columns-tiles": ("columns", dict(d_in=530, d_out=70), dict(columns=[529, 3, 260, 261, 255, 256, 400, 17])),
    "heads-tiles": ("heads", dict(d_in=600, d_out=90, block=40), dict(n_prune=4, head_dim=40, percdamp=0.01)),
    "heads-tiles-no-gcd": ("heads", dict(d_in=600, d_out=90, block=40), dict(n_prune=3, head_dim=40, gcd=False)),
    "heads-tiles-no-compensate": ("heads", dict(d_in=520, d_out=33, block=65, dead=(70, 300)),
                                  dict(n_prune=3, head_dim=65, compensate=False)),
    "channels-tiles": ("channels", dict(d_in=700, d_out=300, spread=(0.1, 10.0), dead=(5, 511)),
                       dict(n_prune=390, group_sizes=[260, 70, 30, 30], percdamp=0.01)),
    "channels-tiles-no-compensate": ("channels", dict(d_in=700, d_out=40, spread=(0.1, 10.0)),
                                     dict(n_prune=300, group_sizes=[200, 100], compensate=False)),
}


@pytest.mark.parametrize("case", BIG_CASES)
def test_core_equals_reference_downdate_over_several_tiles(case):
    op, pkw, kw = BIG_CASES[case]
    W, _, H = problem(31, n_per_input=3, **pkw)
    assert_same_run(prune(op, W, H, **kw), reference(op, W, H, **kw), case)


@pytest.fixture
def core_threads():
    """Restores the core's thread count after the test."""
    before = C.get_num_threads()
    yield
    C.set_num_threads(before)


@pytest.mark.parametrize("case", ["columns-tiles", "heads-tiles", "heads-tiles-no-gcd", "channels-tiles"])
def test_results_do_not_depend_on_the_number_of_threads(case, core_threads):
    """Every tile is one single-threaded BLAS call whose output no other task writes: W, the
    selection and the loss are bit-identical with 1, 2 and 3 threads (cpp/parallel.h)."""
    op, pkw, kw = BIG_CASES[case]
    W, X, H = problem(32, n_per_input=3, **pkw)
    runs = []
    for t in (1, 2, 3):
        C.set_num_threads(t)
        assert C.get_num_threads() == t
        Hh = np.zeros(H.shape)
        C.hessian(Hh, f32(X[:700]))
        C.accumulate_hessian(Hh, f32(X[700:]), 700)
        runs.append((prune(op, W, H, **kw), Hh))
    for (W_t, idx_t, loss_t), H_t in runs[1:]:
        (W_1, idx_1, loss_1), H_1 = runs[0]
        np.testing.assert_array_equal(W_t, W_1)
        np.testing.assert_array_equal(H_t, H_1)
        assert loss_t == loss_1
        if idx_1 is not None:
            np.testing.assert_array_equal(idx_t, idx_1)


def test_thread_count_is_checked(core_threads):
    for bad in (0, -1, 257):
        with pytest.raises(ValueError, match="threads"):
            C.set_num_threads(bad)
    with pytest.raises(TypeError):
        C.set_num_threads(True)
    C.set_num_threads(np.int64(2))
    assert C.get_num_threads() == 2


@pytest.mark.parametrize("op", ["columns", "heads", "channels"])
def test_no_compensation_leaves_survivors_bit_identical(op):
    """compensate=False only zeroes the pruned and dead columns: the normalisation round trip
    (W·2^-e, then ·2^e) is exact."""
    W, _, H = problem(12, d_in=32, block=4, dead=(6,))
    kw = {"columns": dict(columns=[1, 9, 30]), "heads": dict(n_prune=2, head_dim=4),
          "channels": dict(n_prune=9, group_sizes=4)}[op]
    W_new, idx, _ = prune(op, W, H, compensate=False, **kw)
    pruned = kw.get("columns") or (columns_of(idx, 4) if op == "heads" else idx)
    keep = np.setdiff1d(np.arange(32), list(pruned) + [6])
    np.testing.assert_array_equal(W_new[:, keep], host(f32(W))[:, keep])
    assert np.all(W_new[:, list(pruned) + [6]] == 0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gcd", [True, False], ids=["gcd", "no-gcd"])
@pytest.mark.parametrize("scale", [1.0, 1e-40, 1e30], ids=["normal", "subnormal", "huge"])
def test_head_errors_equal_reference_at_any_scale(gcd, scale, device):
    """E_j = Σ ||W_c||² / ĝ: W·√scale keeps E in range while Hinv·scale is subnormal or huge."""
    W, _, H = problem(13, d_in=48, block=8)
    W, Hinv = host(f32(W * np.sqrt(scale))), host(f32(np.linalg.inv(H) * scale))
    err = np.zeros(6, np.float32)
    C.head_errors(err, f32(W, device), f32(Hinv, device), 8, gcd)
    assert_close(err, head_errors_ref(W, Hinv, 8, gcd=gcd), "float32")


# --- extreme scales: finite in, finite out ----------------------------------------------------

SCALE_CASES = {
    "columns": dict(columns=[30, 2, 17, 3]),
    "heads": dict(n_prune=3, head_dim=4),
    "channels": dict(n_prune=14, group_sizes=5),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sw,sh", [(1.0, 1e-40), (1e25, 1e30), (1e-30, 1e-20)],
                         ids=["subnormal-H", "huge-W-and-H", "tiny-W-and-H"])
@pytest.mark.parametrize("op", SCALE_CASES)
def test_extreme_scales_match_reference(op, sw, sh, device):
    """Selections and compensated W are invariant to W → sw·W, H → sh·H (the loss scales by
    sw²·sh): the core normalises, so float32 neither overflows nor underflows where the float64
    reference does not (subnormal H, W = 1e25 with H = 1e30 gave NaN/Inf)."""
    W, _, H = problem(14, d_in=32, block=4)
    Ws, Hs = f32(W * sw), f32(H * sh)  # the float32 problem (H subnormal for 1e-40)
    got = prune(op, Ws, Hs, device, **SCALE_CASES[op])
    assert np.all(np.isfinite(got[0])) and np.isfinite(got[2])
    want = reference(op, Ws, Hs, **SCALE_CASES[op])
    assert_same_run((got[0] / sw, got[1], got[2] / (sw * sw * sh)), (want[0] / sw, want[1], want[2] / (sw * sw * sh)),
                    f"{op} sw={sw} sh={sh}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 1e20, 1e-30], ids=["normal", "huge", "tiny"])
def test_hessian_at_any_scale(scale, device):
    """H = 2XᵀX/n in float64 from float32 X; X·1e20 overflowed and X·1e-30 underflowed to 0."""
    X = f32(calibration(np.random.default_rng(15), 300, 17) * scale)
    H = np.full((17, 17), np.nan)  # only written
    if device == "cuda":
        import torch

        H = torch.from_numpy(H).cuda()
    C.hessian(H, f32(X, device))
    assert_close(host(H), hessian_of(host(X)), "float32", f"scale {scale}")


@pytest.mark.parametrize("device", DEVICES)
def test_accumulate_hessian_equals_one_shot(device):
    X = f32(calibration(np.random.default_rng(16), 90, 11))
    H = np.zeros((11, 11))
    if device == "cuda":
        import torch

        H = torch.from_numpy(H).cuda()
    C.hessian(H, f32(X[:10], device))
    n = 10
    for chunk in (X[10:55], X[55:]):
        C.accumulate_hessian(H, f32(chunk, device), n)
        n += len(chunk)
    assert_close(host(H), hessian_of(host(X)), "float32")


def test_hessian_over_several_blocks_of_rows():
    """More token rows than one scaled float32 block (HESSIAN_BLOCK_FLOATS = 2^22 floats): the
    blocks are summed in float64."""
    X = f32(calibration(np.random.default_rng(21), 2 * (2 ** 22 // 3) + 7, 3) * 1e15)
    H = np.zeros((3, 3))
    C.hessian(H, X)
    assert_close(H, hessian_of(host(X)), "float32")
    C.accumulate_hessian(H, X[:1000], len(X))
    assert_close(H, hessian_of(np.concatenate([host(X), host(X[:1000])])), "float32")


def test_accumulate_hessian_refuses_negative_or_overflowing_n_seen():
    X = f32(calibration(np.random.default_rng(17), 5, 4))
    H = hessian_of(host(X))
    for n_seen in (2 ** 63 - 1, 2 ** 63 - 5, -1):  # n_seen + 5 overflows int64, or negative
        with pytest.raises(ValueError, match="n_seen"):
            C.accumulate_hessian(H, X, n_seen)
    C.accumulate_hessian(H, X, 2 ** 63 - 6)  # n_seen + n = 2^63 - 1 still fits
    assert_close(H, hessian_of(host(X)), "float32")


# --- output checks ----------------------------------------------------------------------------

def test_non_finite_result_raises_not_positive_definite():
    """Finite inputs whose exact result leaves the float32 range: raised, never returned."""
    W = np.array([[3e38, 3e38]], np.float32)
    H = np.array([[1.0, 0.99], [0.99, 1.0]], np.float32)
    assert np.max(np.abs(D.prune_columns(host(W), host(H), [0]))) > np.finfo(np.float32).max
    with pytest.raises(C.NotPositiveDefiniteError, match="not finite"):
        C.prune_columns(W.copy(), H, np.array([0]))
    err = np.zeros(2, np.float32)  # E_j = ||W||² / 1e-30 > 3.4e38
    with pytest.raises(C.NotPositiveDefiniteError, match="not finite"):
        C.head_errors(err, np.full((4, 2), 1e30, np.float32), np.eye(2, dtype=np.float32) * 1e-30, 1)


def test_not_positive_definite_is_a_value_error():
    assert issubclass(C.NotPositiveDefiniteError, ValueError)
    assert isinstance(C.built_with_cuda, bool) and isinstance(C.has_cuda(), bool)
    rng = np.random.default_rng(18)
    with pytest.raises(C.NotPositiveDefiniteError):
        C.prune_heads(f32(rng.standard_normal((5, 16))), f32(indefinite(rng, 16)), 1, 4)


# --- memory safety: calls that crashed -------------------------------------------------------

def run_isolated(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a Python script in a fresh interpreter (faulthandler on): a crash is an exit code."""
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=timeout)


def test_head_group_ids_out_of_range_are_refused_without_crashing():
    """[0, 2**63-1, 0, 0] corrupted the heap (munmap_chunk), ids near 2**63 raised SIGFPE."""
    ids = [[0, 2 ** 63 - 1, 0, 0], [2 ** 63 - 1] * 4, [2 ** 62, 0, 0, 0], [-2 ** 63, 0, 0, 0], [-1, 0, 0, 0],
           [4, 0, 0, 0]]
    proc = run_isolated(f"""
        import numpy as np
        from slimgpt._native import core
        C = core()
        W, H = np.ones((3, 8), np.float32), np.eye(8, dtype=np.float32)
        for n_prune in (0, 2):
            for ids in {ids!r}:
                try:
                    C.prune_heads(W.copy(), H, n_prune, 2, 0.0, True, True, np.array(ids, dtype=np.int64))
                except ValueError as e:
                    print("refused:", e)
                else:
                    print("accepted", ids)
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 * len(ids) and all(line.startswith("refused: head_groups ids") for line in lines), lines


def test_dgs_group_sizes_is_fast_at_the_largest_T_and_refuses_beyond():
    """T = 2**31-1 allocated T+1 int64 (17 GB) before counting; 2**31 is out of range."""
    proc = run_isolated("""
        import time
        import numpy as np
        from slimgpt._native import core
        t0 = time.perf_counter()
        sizes = core().dgs_group_sizes(2 ** 31 - 1)
        print(time.perf_counter() - t0, int(sizes.sum()), len(sizes), int(np.max(np.diff(sizes))))
    """, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seconds, total, n_groups, max_step = proc.stdout.split()
    assert int(total) == 2 ** 31 - 1 and int(max_step) <= 0  # sums to T, never increases
    assert float(seconds) < 5.0 and int(n_groups) < 2 ** 26
    for T in (2 ** 31, -1):
        with pytest.raises(ValueError, match="T"):
            C.dgs_group_sizes(T)


def test_dgs_group_sizes_match_reference():
    for T in (0, 1, 63, 64, 65, 300, 688, 2064, 2752, 5504, 7000, 10 ** 6 + 3):
        sizes = C.dgs_group_sizes(T)
        assert sizes.dtype == np.int64
        np.testing.assert_array_equal(sizes, dgs_group_sizes(T), err_msg=str(T))


# --- argument checks --------------------------------------------------------------------------

def small():
    W, _, H = problem(19, d_out=6, d_in=16, block=4)
    return f32(W), f32(H)


BOOL_COUNTS = {
    "n_prune": lambda W, H: C.prune_heads(W, H, True, 4),
    "head_dim": lambda W, H: C.prune_heads(W, H, 1, True),
    "head_errors-head_dim": lambda W, H: C.head_errors(np.zeros(16, np.float32), W, H, True),
    "n_seen": lambda W, H: C.accumulate_hessian(np.zeros((16, 16)), W, True),
    "T": lambda W, H: C.dgs_group_sizes(True),
    "numpy-bool": lambda W, H: C.dgs_group_sizes(np.True_),
}


@pytest.mark.parametrize("case", BOOL_COUNTS)
def test_booleans_are_refused_as_counts(case):
    W, H = small()
    with pytest.raises(TypeError, match="must be an integer, got the bool"):
        BOOL_COUNTS[case](W, H)


def test_numpy_integers_and_python_ints_are_counts():
    W, H = small()
    idx, _ = C.prune_heads(W.copy(), H, np.int64(1), np.int32(4), np.float32(0.01))
    idx2, _ = C.prune_heads(W.copy(), H, 1, 4, 0.01)
    np.testing.assert_array_equal(idx, idx2)
    with pytest.raises(ValueError, match="64 bits"):
        C.prune_heads(W.copy(), H, 2 ** 64, 4)


def test_read_only_inputs_are_accepted():
    W, H = small()
    X = f32(calibration(np.random.default_rng(20), 40, 16))
    cases = [
        (lambda ro: C.prune_columns(W.copy(), ro(H), ro(np.array([1, 5])), 0.0, True)),
        (lambda ro: C.prune_heads(W.copy(), ro(H), 2, 4, 0.0, True, True, ro(np.array([0, 0, 1, 1])))),
        (lambda ro: C.prune_channels(W.copy(), ro(H), ro(np.array([3, 2])), 0.0, True)),
        (lambda ro: (lambda err: (C.head_errors(err, ro(W), ro(H), 4), err)[1])(np.zeros(4, np.float32))),
        (lambda ro: (lambda Hx: (C.hessian(Hx, ro(X)), C.accumulate_hessian(Hx, ro(X), 40), Hx)[2])(np.zeros((16, 16)))),
    ]
    for call in cases:
        got, want = call(readonly), call(np.asarray)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            np.testing.assert_array_equal(g, w)


CLEAR_ERRORS = {
    # id: (call, message); each a TypeError in one line, not nanobind's list of signatures
    "float64-W": (lambda W, H: C.prune_heads(host(W), H, 1, 4), "W must be a float32 array, got float64"),
    "float32-hessian": (lambda W, H: C.hessian(H.copy(), W), "H must be a float64 array"),
    "fortran-W": (lambda W, H: C.prune_columns(np.asfortranarray(W), H, np.array([0])), "C-contiguous"),
    "strided-H": (lambda W, H: C.prune_channels(W, f32(np.kron(H, np.ones((1, 2))))[:, ::2], np.array([2])),
                  "C-contiguous"),
    "read-only-W": (lambda W, H: C.prune_columns(readonly(W), H, np.array([0])), "read-only"),
    "int32-columns": (lambda W, H: C.prune_columns(W, H, np.array([0], np.int32)), "int64"),
    "list-columns": (lambda W, H: C.prune_columns(W, H, [0]), "columns must be a NumPy array"),
    "1-D-W": (lambda W, H: C.prune_columns(W[0], H, np.array([0])), "2-D"),
    "string-percdamp": (lambda W, H: C.prune_heads(W, H, 1, 4, percdamp="0.01"), "percdamp"),
    "int-flag": (lambda W, H: C.prune_heads(W, H, 1, 4, gcd=1), "gcd must be True or False"),
    "unknown-keyword": (lambda W, H: C.prune_heads(W, H, 1, 4, damp=0.1), "unexpected keyword"),
    "missing": (lambda W, H: C.prune_heads(W, H, 1), "missing argument 'head_dim'"),
}


@pytest.mark.parametrize("case", CLEAR_ERRORS)
def test_bad_argument_types_raise_one_clear_line(case):
    call, match = CLEAR_ERRORS[case]
    W, H = small()
    with pytest.raises(TypeError, match=match) as info:
        call(W, H)
    assert "\n" not in str(info.value)


BAD_VALUES = {
    # id: (call, message); the checks that keep the core memory-safe
    "H-shape": (lambda W, H: C.prune_heads(W, H[:8, :8].copy(), 1, 4), "H must be"),
    "head_dim": (lambda W, H: C.prune_heads(W, H, 1, 5), "head_dim"),
    "n_prune": (lambda W, H: C.prune_heads(W, H, 5, 4), "n_prune"),
    "columns-range": (lambda W, H: C.prune_columns(W, H, np.array([16])), "out of range"),
    "columns-repeated": (lambda W, H: C.prune_columns(W, H, np.array([2, 2])), "repeated"),
    "group-sizes-zero": (lambda W, H: C.prune_channels(W, H, np.array([3, 0])), "positive"),
    "group-sizes-overflow": (lambda W, H: C.prune_channels(W, H, np.array([1, 2 ** 63 - 1])), "sum to more"),
    "quota": (lambda W, H: C.prune_heads(W, H, 3, 4, head_groups=np.array([0, 0, 1, 1])), "multiple"),
    "percdamp": (lambda W, H: C.prune_heads(W, H, 1, 4, percdamp=float("nan")), "percdamp"),
    "percdamp-float32-range": (lambda W, H: C.prune_heads(W, H, 1, 4, percdamp=1e39), "percdamp"),
    "nan-W": (lambda W, H: C.prune_columns(np.full_like(W, np.nan), H, np.array([0])), "W contains NaN"),
    "inf-X": (lambda W, H: C.hessian(np.zeros((16, 16)), np.full_like(W, np.inf)), "X contains NaN"),
    "no-tokens": (lambda W, H: C.hessian(np.zeros((16, 16)), W[:0]), "tokens"),
    "err-shape": (lambda W, H: C.head_errors(np.zeros(3, np.float32), W, H, 4), "err must have"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_raise_value_error(case):
    call, match = BAD_VALUES[case]
    W, H = small()
    with pytest.raises(ValueError, match=match):
        call(W, H)
