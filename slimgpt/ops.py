"""The SlimGPT operations with one signature across backends.

Each function has the name, positional arguments and semantics of its twin in
`slimgpt.reference`, plus a keyword `backend`:

- "reference": the NumPy float64 specification (always available);
- "cpu": the C++ core in float32 (slimgpt._core, OpenBLAS);
- "cuda": the CUDA core in float32 (when built and a device is present; experimental until it
  has passed its tests on a device, see docs/cpp.md);
- "torch": the same algorithm in torch (slimgpt/torch_ops.py) in float32 on the input's device:
  the fallback for a model on a GPU when the CUDA core is not built;
- None: the fastest available for the input's device (cuda for torch CUDA tensors, torch when
  the CUDA core is missing, with a warning).

Inputs may be NumPy arrays or torch tensors (read-only arrays are fine); W-shaped results come
back as the kind, dtype and device that W was given in, index arrays as int64 of the same kind
(on the CPU). The fast paths compute in float32 and run the block-downdate algorithm of
`slimgpt.reference.downdate` (one inverse, then exact downdates; spec §3.4), so they are checked
tightly against that twin and loosely against the re-inverting reference (slimgpt.testing,
"float32"). With `return_loss=True` the prune operations also return the OBS loss they form
(½ Σ ||e_i||², the Eq. (1) objective of the result in the metric of the damped H).

This module stays thin: validate with the reference's own checks, convert (scaling by powers of
two so that float32 can hold any finite float64 input), call the core (which updates a private
copy of W in place), convert back. The damping is the reference's own decision and retry
(reference.damping.retry_with_damping), the same for every backend; the damping used comes back
with `return_damping=True` and is otherwise warned (DampingWarning) when it is not the requested
one; an H that no damping repairs raises NotPositiveDefiniteError.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from slimgpt import reference, torch_ops
from slimgpt._native import core, has_cuda
from slimgpt.reference import checks as _checks
from slimgpt.reference.channels import resolve_group_sizes
from slimgpt.reference.damping import MARGIN_BELOW, retry_with_damping, warn_damping
from slimgpt.reference.heads import head_group_ids

BACKENDS = ("reference", "cpu", "cuda", "torch")


class ExperimentalWarning(UserWarning):
    """The CUDA path has not yet passed its tests on a device (docs/cpp.md)."""


def resolve_backend(backend, like=None) -> str:
    """Pick the backend: an explicit choice is checked, None picks the fastest available."""
    if backend is None:
        if _on_cuda(like):
            if not has_cuda():
                warnings.warn("the CUDA core is not built or sees no device: the OBS algebra runs in torch on "
                              "the GPU (backend='torch')", RuntimeWarning, stacklevel=3)
                return "torch"
            backend = "cuda"
        else:
            return "cpu" if core() is not None else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "cpu" and core() is None:
        raise RuntimeError("backend='cpu' needs the compiled core (slimgpt._core); reinstall with `pip install .`")
    if backend == "cuda":
        if not has_cuda():
            raise RuntimeError("backend='cuda' needs a CUDA build of slimgpt._core and a visible CUDA device")
        warnings.warn("the CUDA path of slimgpt._core is experimental: it has not yet passed its tests on a "
                      "device (docs/cpp.md)", ExperimentalWarning, stacklevel=3)
    return backend


# ----------------------------------------------------------------------------------------------
# Conversion between the caller's arrays and the core's

def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _on_cuda(x) -> bool:
    return _is_torch(x) and x.device.type == "cuda"


def _float64(x):
    """A float64 NumPy array of a real array or tensor (the reference backend's input)."""
    return None if x is None else np.asarray(_checks.real_array("input", x), dtype=np.float64)


def _like(result, like):
    """`result` (NumPy or torch) as the kind, dtype and device of `like`; integer inputs come
    back as float64 (compensated weights are not integers)."""
    if _is_torch(like):
        import torch

        if not _is_torch(result):
            result = torch.from_numpy(np.ascontiguousarray(result))
        return result.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float64)
    if _is_torch(result):
        result = result.detach().cpu().numpy()
    dtype = np.asarray(like).dtype
    return np.asarray(result, dtype=dtype if dtype.kind == "f" else np.float64)


def _array(name: str, x):
    """NumPy arrays, torch tensors and None as they are; anything else (nested lists, numbers)
    as a NumPy array, as the reference reads it, so every backend accepts or refuses it alike."""
    return x if x is None or isinstance(x, np.ndarray) or _is_torch(x) else _checks.real_array(name, x)


def _index_like(idx, like):
    idx = np.asarray(idx, dtype=np.int64)
    if _is_torch(like):
        import torch

        return torch.from_numpy(idx)
    return idx


def _host(x):
    """Index-like arguments (lists, arrays, tensors, ints, None) as host NumPy or scalars."""
    return x.detach().cpu().numpy() if _is_torch(x) else x


def _pow2(x, *, even: bool = False) -> float:
    """A power of two near the magnitude of `x` (a positive float; 1 when x is 0 or not finite).
    Dividing by it is exact, so scaled float32 results are the unscaled ones times a power of
    two; `even` keeps square roots exact (the core's Cholesky factors)."""
    if not (x > 0 and math.isfinite(x)):
        return 1.0
    e = round(math.log2(x))
    return 2.0 ** (2 * round(e / 2) if even else e)


def _magnitude(x, what: str) -> float:
    """max|x| or mean(diag x), computed on x's device (NaN for non-finite input). max|x| of a
    floating array is exact in its own dtype, so only integers are widened to float64 (a float64
    copy of a calibration batch cost more than the core's XᵀX at SmolLM2's widths)."""
    if _is_torch(x):
        import torch

        x = x.detach()
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"input must be a real floating-point or integer array, got dtype {x.dtype}")
        if x.numel() == 0:
            return 0.0
        if what == "max":
            return float((x if x.is_floating_point() else x.double()).abs().max())
        return float(x.diagonal().double().mean())
    a = np.asarray(_checks.real_array("input", x))
    if a.size == 0:
        return 0.0
    if what == "max":
        return float(np.max(np.abs(a if a.dtype.kind == "f" else a.astype(np.float64))))
    return float(np.mean(np.diag(a).astype(np.float64)))


def _to_core(x, backend, *, scale: float = 1.0, copy: bool = False):
    """x / scale as a float32 C-contiguous array for the core: NumPy on "cpu", a torch tensor on
    "cuda" (on a CUDA device) and "torch" (on x's device). `copy=True` guarantees a private
    buffer (the core updates W in place)."""
    if backend in ("cuda", "torch"):
        import torch

        t = x if _is_torch(x) else torch.from_numpy(np.asarray(_checks.real_array("input", x)))
        dev = t.device if t.device.type == "cuda" or backend == "torch" else torch.device("cuda")
        out = (t.detach().to(device=dev, dtype=torch.float64) / scale).to(torch.float32).contiguous()
        return out.clone() if copy and out.data_ptr() == t.data_ptr() else out
    a = _checks.real_array("input", x)
    if scale != 1.0 or a.dtype != np.float32:
        return np.ascontiguousarray(np.asarray(a, dtype=np.float64) / scale, dtype=np.float32)
    return np.array(a, order="C", copy=True) if copy else np.ascontiguousarray(a)


def _core_error(call):
    """Run a core call; map the core's NotPositiveDefiniteError to the reference's."""
    c = core()
    try:
        return call()
    except Exception as e:
        if c is not None and isinstance(e, c.NotPositiveDefiniteError):
            raise reference.NotPositiveDefiniteError(str(e)) from None
        raise


def _check_finite(A, name: str) -> None:
    ok = bool(A.detach().isfinite().all()) if _is_torch(A) else bool(np.all(np.isfinite(_checks.real_array(name, A))))
    if not ok:
        raise ValueError(f"{name} contains NaN or Inf")


def _prune(name: str, W, H, args: tuple, percdamp: float, backend: str, after: tuple = ()):
    """The fast paths: W and H scaled by powers of two into float32 range, then the core's (or
    its torch twin's) prune_<name>(Wf, Hf, *args, p, *after), which updates Wf in place, at the
    damping that reference.damping.retry_with_damping decides for every backend; the results
    scaled back. Returns (W_new, indices or None, loss, p)."""
    _check_finite(W, "W")
    _check_finite(H, "H")
    sw, sh = _pow2(_magnitude(W, "max")), _pow2(_magnitude(H, "diag"), even=True)
    Hf = _to_core(H, backend, scale=sh)
    fn = getattr(torch_ops if backend == "torch" else core(), "prune_" + name)

    def attempt(p):
        Wf = _to_core(W, backend, scale=sw, copy=True)
        out = _core_error(lambda: fn(Wf, Hf, *args, float(p), *after))
        return (Wf,) + ((None, out) if name == "columns" else tuple(out))

    (Wf, idx, loss), p = retry_with_damping(attempt, _float64(H) if percdamp < MARGIN_BELOW else None, percdamp,
                                            warn=False)
    W_new = Wf.double() * sw if _is_torch(Wf) else Wf.astype(np.float64) * sw
    # W scales the loss quadratically; G = H⁻¹ scales by 1/sh, so each ||e_i||² by sh
    return W_new, idx, loss * sw * sw * sh, p


def _result(main: tuple, loss, p, percdamp, return_loss: bool, return_damping: bool):
    """The public return value (as the reference's): the damping used is returned with
    return_damping, and otherwise warned when it is not the requested one."""
    if not return_damping:
        warn_damping(p, percdamp, stacklevel=4)
    return reference.damping.result(main, float(loss), p, return_loss, return_damping)


# ----------------------------------------------------------------------------------------------
# Operations

def hessian(X, *, backend=None):
    """H = 2 XᵀX / n over the token rows of X (..., d_in), float64 of X's kind and device."""
    X = _array("X", X)
    backend = resolve_backend(backend, X)
    if backend == "reference":
        return _errors_like(reference.hessian(_float64(X)), X)
    H, _ = accumulate_hessian(None, 0, X, backend=backend)
    return H


def accumulate_hessian(H, n_seen, X, *, backend=None, overwrite_H=False):
    """Running mean: (n_seen·H + 2 XᵀX) / (n_seen + n); returns (H, n_seen + n).

    H is ignored when n_seen is 0. The result is float64 (a Hessian may exceed float32's range)
    of H's kind and device (X's when H is None); the fast paths accumulate a float32 XᵀX of X
    scaled by a power of two into float64. overwrite_H=True (as scipy's overwrite_a) lets the
    "cpu" backend update a float64 C-contiguous CPU H in place and return it: no N x N copy per
    batch (at LLaMA-7B's FFN width H is 0.97 GB); H's contents are unspecified after an error.
    """
    H, X = _array("H", H), _array("X", X)
    backend = resolve_backend(backend, X)
    like = X if H is None else H
    if backend == "reference":
        H_new, n = reference.accumulate_hessian(_float64(H), n_seen, _float64(X))
        return _errors_like(H_new, like), n
    n_seen = _checks.count("n_seen", n_seen, 0, np.iinfo(np.int64).max)
    if not hasattr(X, "shape") or len(X.shape) not in (2, 3):
        raise ValueError(f"X must be (n, d_in) or (batch, seq, d_in), got shape {tuple(getattr(X, 'shape', ()))}")
    d_in = X.shape[-1]
    if d_in == 0:
        raise ValueError("X has no features (d_in = 0): there is no layer input to prune")
    if H is not None and tuple(H.shape) != (d_in, d_in):
        raise ValueError(f"H must be ({d_in}, {d_in}) to match X, got shape {tuple(H.shape)}")
    n = math.prod(X.shape[:-1])
    if n_seen == 0 and n == 0:
        raise ValueError("X has no tokens (n = 0): the Hessian is undefined")
    if n_seen > 0 and H is None:
        raise ValueError(f"H is None but n_seen = {n_seen} > 0")
    if n > np.iinfo(np.int64).max - n_seen:
        raise ValueError(f"n_seen + n overflows int64 (n_seen = {n_seen}, n = {n})")
    if n == 0:
        return _errors_like(_float64(H), like), n_seen
    big = _magnitude(X, "max")
    H_new, n_all = (_accumulate_hessian_torch(H, n_seen, X, big, like) if backend == "torch" else
                    _accumulate_hessian_core(H, n_seen, X, big, backend, overwrite_H))
    # finite X may still overflow H (as in the reference); |H_ij| <= 2 max|x|², so look only then
    if 2.0 * big * big >= np.finfo(np.float64).max and not bool(
            H_new.isfinite().all() if _is_torch(H_new) else np.all(np.isfinite(H_new))):
        raise ValueError(_checks.hessian_overflow(big))
    return H_new, n_all


def _accumulate_hessian_core(H, n_seen, X, big, backend, overwrite_H):
    """accumulate_hessian on checked, non-empty input on the cpu or cuda core."""
    like = X if H is None else H
    d_in, n = X.shape[-1], math.prod(X.shape[:-1])
    # X beyond float32's range is scaled by a power of two sx; then H gains sx² · 2XᵀX/n
    sx = _pow2(big) if not 2.0 ** -60 < big < 2.0 ** 60 else 1.0
    Xf = _to_core(X, backend, scale=sx).reshape(-1, d_in)
    inplace = _writable_float64(H) if overwrite_H and backend == "cpu" and H is not None else None
    if sx == 1.0 and n_seen > 0:
        H_new = inplace if inplace is not None else _float64_on(H, backend, Xf)
        core().accumulate_hessian(H_new, Xf, n_seen)
    elif n_seen == 0:
        # the core writes every element: no zero fill (0.97 GB at LLaMA-7B's FFN width)
        H_new = inplace if inplace is not None else (
            np.empty((d_in, d_in)) if backend == "cpu" else _float64_on(np.zeros((d_in, d_in)), backend, Xf))
        core().hessian(H_new, Xf)                       # 2 Xfᵀ Xf / n, float64
        H_new *= sx * sx
    else:
        batch = _float64_on(np.zeros((d_in, d_in)), backend, Xf)
        core().hessian(batch, Xf)
        H_new = inplace if inplace is not None else _float64_on(H, backend, Xf)
        H_new *= n_seen / (n_seen + n)
        H_new += batch * (sx * sx * n / (n_seen + n))
    if inplace is not None:
        return H, n_seen + n
    return _errors_like(H_new, like), n_seen + n


def _accumulate_hessian_torch(H, n_seen, X, big, like):
    """The torch backend's running mean of checked, non-empty X: float32 XᵀX per call (X scaled
    by a power of two), float64 accumulation, on X's device."""
    import torch

    Xt = X if _is_torch(X) else torch.from_numpy(np.asarray(_checks.real_array("X", X)))
    Xt = Xt.detach().reshape(-1, Xt.shape[-1])
    n = Xt.shape[0]
    if not torch.isfinite(Xt).all():
        raise ValueError("X contains NaN or Inf")
    sx = _pow2(big)
    Xs = (Xt.double() / sx).float()
    H_new = (Xs.T @ Xs).double() * (2.0 * sx * sx)
    if n_seen > 0:
        H_new = (n_seen * torch.as_tensor(H, device=Xt.device).double() + H_new) / (n_seen + n)
    else:
        H_new /= n
    return _errors_like(H_new, like), n_seen + n


def _writable_float64(H):
    """H's own float64 C-contiguous CPU buffer as a NumPy array, or None when H has none."""
    if _is_torch(H):
        if H.device.type != "cpu" or H.dtype.is_complex or H.requires_grad:
            return None
        H = H.detach().numpy()
    if isinstance(H, np.ndarray) and H.dtype == np.float64 and H.flags.c_contiguous and H.flags.writeable:
        return H
    return None


def _float64_on(A, backend, like):
    """A private float64 C-contiguous copy of A for the core: NumPy on "cpu", on like's CUDA
    device on "cuda"."""
    if backend == "cuda":
        import torch

        return torch.as_tensor(A).to(device=like.device, dtype=torch.float64).clone().contiguous()
    return np.array(_checks.real_array("H", A), dtype=np.float64, order="C", copy=True)


def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True, return_loss=False, return_damping=False,
                  backend=None):
    """Remove input columns of W jointly with OBS compensation (Eqs. 3-4)."""
    W, H = _array("W", W), _array("H", H)
    backend = resolve_backend(backend, W)
    if backend == "reference":
        W_new, loss, p = reference.prune_columns(_float64(W), _float64(H), _host(columns), percdamp=percdamp,
                                                 compensate=compensate, return_loss=True, return_damping=True)
    else:
        _checks.check_shapes(W, H)
        cols = _checks.columns(_host(columns), W.shape[1])
        percdamp = p = _checks.percdamp(percdamp)
        if cols.size == 0:                          # a no-op, as in the reference (not even dead inputs)
            W_new, loss = _checks.weight_and_hessian(W, H)[0], 0.0
        else:
            W_new, _, loss, p = _prune("columns", W, H, (cols,), percdamp, backend, (bool(compensate),))
    return _result((_like(W_new, W),), loss, p, percdamp, return_loss, return_damping)


def _errors_like(err, like):
    """Head errors and Hessians as float64 of `like`'s kind and device (they may exceed
    float32's range)."""
    if _is_torch(like):
        import torch

        return torch.as_tensor(err).to(device=like.device, dtype=torch.float64)
    return np.asarray(err.detach().cpu() if _is_torch(err) else err, dtype=np.float64)


def head_errors(W, Hinv, head_dim, *, gcd=True, backend=None):
    """Eq. 5 head errors from a given H⁻¹ (grouped Cholesky; gcd=False: plain diagonal), float64."""
    W, Hinv = _array("W", W), _array("Hinv", Hinv)
    backend = resolve_backend(backend, W)
    if backend == "reference":
        return _errors_like(reference.head_errors(_float64(W), _float64(Hinv), head_dim, gcd=gcd), W)
    _checks.check_shapes(W, Hinv, "Hinv")
    head_dim = _checks.head_dim(head_dim, W.shape[1])
    # E_j = Σ ||W_c||² / ĝ: W scales it by sw², H⁻¹ by 1/sg
    sw, sg = _pow2(_magnitude(W, "max")), _pow2(_magnitude(Hinv, "diag"), even=True)
    Wf, Gf = _to_core(W, backend, scale=sw), _to_core(Hinv, backend, scale=sg)
    if backend == "torch":
        _check_finite(W, "W")
        _check_finite(Hinv, "Hinv")
        err = torch_ops.head_errors(Wf, Gf, head_dim, bool(gcd)).cpu().numpy()
    else:
        err = np.zeros(W.shape[1] // head_dim, dtype=np.float32)
        _core_error(lambda: core().head_errors(err, Wf, Gf, head_dim, bool(gcd)))
    return _errors_like(err.astype(np.float64) * (sw * sw / sg), W)


def prune_heads(W, H, n_prune, head_dim, *, percdamp=0.0, gcd=True, compensate=True, head_groups=None,
                return_loss=False, return_damping=False, backend=None):
    """Greedy head pruning, one head per iteration (spec §3.3); returns (W_new, pruned_heads), then
    the loss (return_loss) and the damping used (return_damping)."""
    W, H = _array("W", W), _array("H", H)
    backend = resolve_backend(backend, W)
    if backend == "reference":
        W_new, heads, loss, p = reference.prune_heads(_float64(W), _float64(H), n_prune, head_dim, percdamp=percdamp,
                                                      gcd=gcd, compensate=compensate, head_groups=_host(head_groups),
                                                      return_loss=True, return_damping=True)
    else:
        _checks.check_shapes(W, H)
        head_dim = _checks.head_dim(head_dim, W.shape[1])
        n_heads = W.shape[1] // head_dim
        n_prune = _checks.count("n_prune", n_prune, 0, n_heads)
        percdamp = p = _checks.percdamp(percdamp)
        groups, _ = head_group_ids(_host(head_groups), n_heads, n_prune)    # ids renumbered 0..n_groups-1
        if n_prune == 0:
            W_new, heads, loss = _checks.weight_and_hessian(W, H)[0], np.zeros(0, np.int64), 0.0
        else:
            W_new, heads, loss, p = _prune("heads", W, H, (n_prune, head_dim), percdamp, backend,
                                           (bool(gcd), bool(compensate), None if head_groups is None else groups))
    return _result((_like(W_new, W), _index_like(heads, W)), loss, p, percdamp, return_loss, return_damping)


def dgs_group_sizes(n_prune, *, backend=None):
    """The published DGS schedule (spec §4.2) for n_prune channels, a list of ints (the
    schedule is integer arithmetic, so every backend gives the same list)."""
    n_prune = _checks.count("n_prune", n_prune, 0, _checks.MAX_COLUMNS)
    if resolve_backend(backend) in ("reference", "torch"):
        return [int(g) for g in reference.dgs_group_sizes(n_prune)]
    return [int(g) for g in core().dgs_group_sizes(n_prune)]


def prune_channels(W, H, n_prune, *, percdamp=0.0, group_sizes=None, compensate=True, return_loss=False,
                   return_damping=False, backend=None):
    """DGS channel pruning (spec §4); returns (W_new, pruned_channels), then the loss (return_loss)
    and the damping used (return_damping)."""
    W, H = _array("W", W), _array("H", H)
    backend = resolve_backend(backend, W)
    if backend == "reference":
        W_new, ch, loss, p = reference.prune_channels(_float64(W), _float64(H), n_prune, percdamp=percdamp,
                                                      group_sizes=group_sizes, compensate=compensate,
                                                      return_loss=True, return_damping=True)
    else:
        _checks.check_shapes(W, H)
        n_prune = _checks.count("n_prune", n_prune, 0, W.shape[1])
        percdamp = p = _checks.percdamp(percdamp)
        sizes = np.asarray(resolve_group_sizes(group_sizes, n_prune), dtype=np.int64)
        if n_prune == 0:
            W_new, ch, loss = _checks.weight_and_hessian(W, H)[0], np.zeros(0, np.int64), 0.0
        else:
            W_new, ch, loss, p = _prune("channels", W, H, (sizes,), percdamp, backend, (bool(compensate),))
    return _result((_like(W_new, W), _index_like(ch, W)), loss, p, percdamp, return_loss, return_damping)
