"""The SlimGPT operations with one signature across backends.

Each function has the name, positional arguments and semantics of its twin in
`slimgpt.reference`, plus a keyword `backend`:

- "reference": the NumPy float64 specification (always available);
- "cpu": the C++ core in float32 (slimgpt._core, OpenBLAS);
- "cuda": the CUDA core in float32 (when built and a device is present);
- None: the fastest available for the input's device (cuda for torch CUDA tensors).

Inputs may be NumPy arrays or torch tensors; W-shaped results come back as the kind, dtype and
device that W was given in, index arrays as int64 of the same kind (on the CPU). The fast paths
compute in float32 and differ from the reference by rounding only (tests/tolerances.py,
"float32"); they keep H⁻¹ and downdate it instead of re-inverting (docs/cpp.md).

This module stays thin: convert, call the core (which updates a private copy of W in place),
convert back. A non-positive-definite H gets the reference's treatment: retry with growing
damping and a `DampingWarning`, or `NotPositiveDefiniteError`.
"""
from __future__ import annotations

import warnings

import numpy as np

from slimgpt import reference
from slimgpt._native import core, has_cuda
# the reference's own validation and parameter resolution, so both paths accept and reject
# the same arguments with the same messages
from slimgpt.reference import _checks
from slimgpt.reference.channels import _group_sizes
from slimgpt.reference.damping import RETRY_PERCDAMP
from slimgpt.reference.heads import _head_groups

BACKENDS = ("reference", "cpu", "cuda")


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _on_cuda(x) -> bool:
    return _is_torch(x) and x.device.type == "cuda"


def _to_numpy64(x):
    if x is None or isinstance(x, (int, float)):
        return x
    if _is_torch(x):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _like(result, like):
    """Return `result` (NumPy or torch) as the kind/dtype/device of `like`."""
    if _is_torch(like):
        import torch

        if not _is_torch(result):
            result = torch.from_numpy(np.ascontiguousarray(result))
        return result.to(device=like.device, dtype=like.dtype)
    if _is_torch(result):
        result = result.detach().cpu().numpy()
    dtype = np.asarray(like).dtype
    return np.asarray(result, dtype=dtype if dtype.kind == "f" else np.float64)


def _index_like(idx, like):
    idx = np.asarray(idx, dtype=np.int64)
    if _is_torch(like):
        import torch

        return torch.from_numpy(idx)
    return idx


def resolve_backend(backend, like=None) -> str:
    """Pick the backend: an explicit choice is checked, None picks the fastest available."""
    if backend is None:
        if _on_cuda(like) and has_cuda():
            return "cuda"
        return "cpu" if _has_cpu_op() else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "cpu" and not _has_cpu_op():
        raise RuntimeError("backend='cpu' needs the compiled core (slimgpt._core); reinstall with `pip install .`")
    if backend == "cuda" and not has_cuda():
        raise RuntimeError("backend='cuda' needs a CUDA build of slimgpt._core and a visible CUDA device")
    return backend


def _has_cpu_op() -> bool:
    c = core()
    return c is not None and hasattr(c, "prune_heads")


# --- conversion to the core's arrays -----------------------------------------------------

def _f32(x, backend, *, copy=False):
    """A float32 C-contiguous 2-D array for the core: NumPy on "cpu", a torch CUDA tensor on
    "cuda". `copy=True` guarantees a private buffer (the core updates W in place)."""
    if backend == "cuda":
        import torch

        t = x if _is_torch(x) else torch.from_numpy(np.asarray(x))
        dev = t.device if t.device.type == "cuda" else torch.device("cuda")
        out = t.detach().to(device=dev, dtype=torch.float32).contiguous()
        return out.clone() if copy and out.data_ptr() == t.data_ptr() else out
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"expected a real array, got dtype {a.dtype}")
    return np.array(a, dtype=np.float32, order="C", copy=True) if copy else \
        np.ascontiguousarray(a, dtype=np.float32)


def _check_W_H(W, H, H_name="H"):
    """Shape checks of the reference (_checks.weight_and_hessian) without its float64 copies;
    dtype, finiteness and memory-safety checks are repeated in the binding layer."""
    for name, A in (("W", W), (H_name, H)):
        if not hasattr(A, "shape"):
            raise ValueError(f"{name} must be a NumPy array or a torch tensor, got {type(A).__name__}")
        if len(A.shape) != 2:
            raise ValueError(f"{name} must be a 2-D matrix, got an array of shape {tuple(A.shape)}")
    if H.shape[0] != H.shape[1]:
        raise ValueError(f"{H_name} must be square, got shape {tuple(H.shape)}")
    if H.shape[0] != W.shape[1]:
        raise ValueError(f"{H_name} is {H.shape[0]} x {H.shape[1]} but W has {W.shape[1]} input "
                         f"columns (W is d_out x d_in in torch layout)")


def _host(x):
    """Index-like arguments (lists, arrays, tensors, ints, None) as host NumPy or scalars."""
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return x


def _with_damping(call, percdamp):
    """The reference's retry policy (reference/damping.py, solve_with_damping) around a core
    call: try percdamp, then each larger fraction of RETRY_PERCDAMP; a success after a retry
    warns with DampingWarning(percdamp=used); when all fail, NotPositiveDefiniteError."""
    ladder = [percdamp] + [p for p in RETRY_PERCDAMP if p > percdamp]
    last = None
    for p in ladder:
        try:
            result = call(p)
        except core().NotPositiveDefiniteError as failure:
            last = failure
            continue
        if p != percdamp:
            warnings.warn(reference.DampingWarning(
                f"H is not positive definite in float32 with percdamp={percdamp:g}; used "
                f"percdamp={p:g} (adds {p:g} x mean(diag H) to the diagonal)", p, percdamp), stacklevel=3)
        return result
    raise reference.NotPositiveDefiniteError(
        f"H is not positive definite even with percdamp={ladder[-1]:g} x mean(diag H) "
        f"(tried {', '.join(f'{p:g}' for p in ladder)}). Check the calibration inputs. "
        f"Last failure: {last}")


# --- operations --------------------------------------------------------------------------

def _tokens(X, backend):
    """X (n, d_in) or (batch, seq, d_in) as a float32 (n, d_in) array for the core."""
    if not hasattr(X, "shape") or len(X.shape) not in (2, 3):
        shape = tuple(getattr(X, "shape", np.shape(X)))
        raise ValueError(f"X must be (n, d_in) or (batch, seq, d_in), got shape {shape}")
    Xf = _f32(X, backend)
    return Xf.reshape(-1, Xf.shape[-1])


def hessian(X, *, backend=None):
    """H = 2 XᵀX / n over the token rows of X (..., d_in)."""
    backend = resolve_backend(backend, X)
    if backend == "reference":
        return _like(reference.hessian(_to_numpy64(X)), X)
    Xf = _tokens(X, backend)
    if Xf.shape[0] == 0:
        raise ValueError("X has no tokens (n = 0): the Hessian is undefined")
    H = _empty_like_core(Xf, (Xf.shape[1], Xf.shape[1]), backend)
    core().hessian(H, Xf)
    return _like(H, X)


def accumulate_hessian(H, n_seen, X, *, backend=None):
    """Running mean: (n_seen·H + 2 XᵀX) / (n_seen + n); returns (H, n_seen + n)."""
    backend = resolve_backend(backend, X)
    like = X if H is None else H
    if backend == "reference":
        H_new, n = reference.accumulate_hessian(None if H is None else _to_numpy64(H), n_seen, _to_numpy64(X))
        return _like(H_new, like), n
    Xf = _tokens(X, backend)
    n_seen = _checks.count("n_seen", n_seen, 0, np.iinfo(np.int64).max)
    d_in = Xf.shape[1]
    if H is not None and tuple(H.shape) != (d_in, d_in):
        raise ValueError(f"H must be ({d_in}, {d_in}) to match X, got shape {tuple(H.shape)}")
    if n_seen == 0:  # H is ignored, as in the reference
        if Xf.shape[0] == 0:
            raise ValueError("X has no tokens (n = 0): the Hessian is undefined")
        Hf = _empty_like_core(Xf, (d_in, d_in), backend)
        core().hessian(Hf, Xf)
        return _like(Hf, like), int(Xf.shape[0])
    if H is None:
        raise ValueError(f"H is None but n_seen = {n_seen} > 0")
    Hf = _f32(H, backend, copy=True)
    if Xf.shape[0] > 0:
        core().accumulate_hessian(Hf, Xf, n_seen)
    return _like(Hf, like), n_seen + int(Xf.shape[0])


def _empty_like_core(like, shape, backend):
    if backend == "cuda":
        import torch

        return torch.zeros(shape, dtype=torch.float32, device=like.device)
    return np.zeros(shape, dtype=np.float32)


def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True, backend=None):
    """Remove input columns of W jointly with OBS compensation (Eqs. 3-4)."""
    backend = resolve_backend(backend, W)
    if backend == "reference":
        return _like(reference.prune_columns(_to_numpy64(W), _to_numpy64(H), _host(columns), percdamp=percdamp,
                                             compensate=compensate), W)
    _check_W_H(W, H)
    cols = _checks.columns(_host(columns), W.shape[1])
    percdamp = _checks.percdamp(percdamp)
    if cols.size == 0:
        return _like(_f32(W, backend, copy=True), W)
    Hf = _f32(H, backend)

    def run(p):
        Wf = _f32(W, backend, copy=True)
        core().prune_columns(Wf, Hf, cols, float(p), bool(compensate))
        return Wf

    return _like(_with_damping(run, percdamp), W)


def head_errors(W, Hinv, head_dim, *, gcd=True, backend=None):
    """Eq. 5 head errors from a given H⁻¹ (grouped Cholesky; gcd=False: plain diagonal)."""
    backend = resolve_backend(backend, W)
    if backend == "reference":
        return _like(reference.head_errors(_to_numpy64(W), _to_numpy64(Hinv), head_dim, gcd=gcd), W)
    _check_W_H(W, Hinv, "Hinv")
    head_dim = _checks.head_dim(head_dim, W.shape[1])
    err = np.zeros(W.shape[1] // head_dim, dtype=np.float32)
    try:
        core().head_errors(err, _f32(W, backend), _f32(Hinv, backend), head_dim, bool(gcd))
    except core().NotPositiveDefiniteError as e:
        raise reference.NotPositiveDefiniteError(str(e)) from None
    return _like(err, W)


def prune_heads(W, H, n_prune, head_dim, *, percdamp=0.0, gcd=True, compensate=True, head_groups=None,
                backend=None):
    """Greedy head pruning, one head per iteration (spec §3.3); returns (W_new, pruned_heads)."""
    backend = resolve_backend(backend, W)
    if backend == "reference":
        W_new, heads = reference.prune_heads(_to_numpy64(W), _to_numpy64(H), n_prune, head_dim,
                                             percdamp=percdamp, gcd=gcd, compensate=compensate,
                                             head_groups=_host(head_groups))
        return _like(W_new, W), _index_like(heads, W)
    _check_W_H(W, H)
    head_dim = _checks.head_dim(head_dim, W.shape[1])
    n_heads = W.shape[1] // head_dim
    n_prune = _checks.count("n_prune", n_prune, 0, n_heads)
    percdamp = _checks.percdamp(percdamp)
    groups, _ = _head_groups(_host(head_groups), n_heads, n_prune)  # ids 0..n_groups-1
    if n_prune == 0:
        return _like(_f32(W, backend, copy=True), W), _index_like(np.zeros(0, np.int64), W)
    Hf = _f32(H, backend)

    def run(p):
        Wf = _f32(W, backend, copy=True)
        heads = core().prune_heads(Wf, Hf, n_prune, head_dim, float(p), bool(gcd), bool(compensate),
                                   None if head_groups is None else groups)
        return Wf, heads

    W_new, heads = _with_damping(run, percdamp)
    return _like(W_new, W), _index_like(heads, W)


def dgs_group_sizes(n_prune, *, backend=None):
    """The published DGS schedule (spec §4.2) for n_prune channels, a list of ints (the
    schedule is integer arithmetic, so every backend gives the same list)."""
    n_prune = _checks.count("n_prune", n_prune, 0, np.iinfo(np.int64).max)
    if resolve_backend(backend) == "reference":
        return [int(g) for g in reference.dgs_group_sizes(n_prune)]
    return [int(g) for g in core().dgs_group_sizes(n_prune)]


def prune_channels(W, H, n_prune, *, percdamp=0.0, group_sizes=None, compensate=True, backend=None):
    """DGS channel pruning (spec §4); returns (W_new, pruned_channels)."""
    backend = resolve_backend(backend, W)
    if backend == "reference":
        W_new, ch = reference.prune_channels(_to_numpy64(W), _to_numpy64(H), n_prune, percdamp=percdamp,
                                             group_sizes=group_sizes, compensate=compensate)
        return _like(W_new, W), _index_like(ch, W)
    _check_W_H(W, H)
    n_prune = _checks.count("n_prune", n_prune, 0, W.shape[1])
    percdamp = _checks.percdamp(percdamp)
    sizes = np.asarray(_group_sizes(group_sizes, n_prune), dtype=np.int64)
    if n_prune == 0:
        return _like(_f32(W, backend, copy=True), W), _index_like(np.zeros(0, np.int64), W)
    Hf = _f32(H, backend)

    def run(p):
        Wf = _f32(W, backend, copy=True)
        ch = core().prune_channels(Wf, Hf, sizes, float(p), bool(compensate))
        return Wf, ch

    W_new, ch = _with_damping(run, percdamp)
    return _like(W_new, W), _index_like(ch, W)
