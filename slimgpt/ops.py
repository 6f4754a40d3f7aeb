"""The SlimGPT operations with one signature across backends.

Each function has the name, positional arguments and semantics of its twin in
`slimgpt.reference`, plus a keyword `backend`:

- "reference": the NumPy float64 specification (always available);
- "cpu": the C++ core in float32 (slimgpt._core);
- "cuda": the CUDA core in float32 (when built and a device is present);
- None: the fastest available for the input's device.

Inputs may be NumPy arrays or torch tensors; W-shaped results come back as the kind, dtype and
device that W was given in, index arrays as int64 of the same kind (on the CPU).
"""
from __future__ import annotations

import numpy as np

from slimgpt import reference
from slimgpt._native import core, has_cuda

BACKENDS = ("reference", "cpu", "cuda")


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _to_numpy64(x):
    if x is None or isinstance(x, (int, float)):
        return x
    if _is_torch(x):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _like(result: np.ndarray, like):
    """Return `result` as the kind/dtype/device of `like`."""
    if _is_torch(like):
        import torch

        return torch.from_numpy(np.ascontiguousarray(result)).to(device=like.device, dtype=like.dtype)
    return np.asarray(result, dtype=np.asarray(like).dtype if np.asarray(like).dtype.kind == "f" else np.float64)


def _index_like(idx, like):
    idx = np.asarray(idx, dtype=np.int64)
    if _is_torch(like):
        import torch

        return torch.from_numpy(idx)
    return idx


def resolve_backend(backend, like=None) -> str:
    """Pick the backend: an explicit choice is checked, None picks the fastest available."""
    on_cuda = _is_torch(like) and like.device.type == "cuda"
    if backend is None:
        if on_cuda and has_cuda():
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


# --- operations --------------------------------------------------------------------------
# The C++/CUDA dispatch is added beside each reference call (issue 3).

def hessian(X, *, backend=None):
    resolve_backend(backend, X)
    return _like(reference.hessian(_to_numpy64(X)), X)


def accumulate_hessian(H, n_seen, X, *, backend=None):
    resolve_backend(backend, X)
    H_new, n = reference.accumulate_hessian(_to_numpy64(H), n_seen, _to_numpy64(X))
    return _like(H_new, X if H is None else H), n


def prune_columns(W, H, columns, *, percdamp=0.0, backend=None, **kw):
    resolve_backend(backend, W)
    cols = np.asarray(columns.cpu() if _is_torch(columns) else columns, dtype=np.int64)
    return _like(reference.prune_columns(_to_numpy64(W), _to_numpy64(H), cols, percdamp=percdamp, **kw), W)


def head_errors(W, Hinv, head_dim, *, backend=None, **kw):
    resolve_backend(backend, W)
    return _like(reference.head_errors(_to_numpy64(W), _to_numpy64(Hinv), head_dim, **kw), W)


def prune_heads(W, H, n_prune, head_dim, *, percdamp=0.0, backend=None, **kw):
    resolve_backend(backend, W)
    W_new, heads = reference.prune_heads(_to_numpy64(W), _to_numpy64(H), n_prune, head_dim, percdamp=percdamp, **kw)
    return _like(W_new, W), _index_like(heads, W)


def prune_channels(W, H, n_prune, *, percdamp=0.0, group_sizes=None, backend=None, **kw):
    resolve_backend(backend, W)
    W_new, ch = reference.prune_channels(_to_numpy64(W), _to_numpy64(H), n_prune, percdamp=percdamp,
                                         group_sizes=group_sizes, **kw)
    return _like(W_new, W), _index_like(ch, W)
