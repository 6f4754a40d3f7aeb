"""Per-layer "select + compensate" steps, keyed by method name (the pipeline's plug-in point).

The layer-wise pipeline (pipeline.py) calls, for each decoder layer, once for attention and once
for the FFN:

    sel = METHODS[name].fn(kind, W, stats, n_prune, head_dim, head_groups=..., layer=..., options=...)

- kind:       "heads" (W is o_proj, structures are blocks of `head_dim` input columns) or
              "channels" (W is down_proj, head_dim == 1);
- W:          float32 weight (out × in), full width of the layer at this point; do not modify it;
- stats:      `InputStats` of that projection's inputs over all calibration tokens: n, mean,
              var, sq_norm, and H = 2XᵀX/n (float64) when the method declared needs_hessian;
- n_prune:    number of structures to remove (the schedule and GQA mode decided it);
- head_groups: for kind "heads", None or a group id per structure; when given, every group must
              lose exactly n_prune / n_groups structures (GQA "balanced" mode);
- layer:      the `DecoderLayer` (read-only; e.g. magnitude criteria need q/k/v rows);
- options:    `MethodOptions` (percdamp, backend, gcd, compensate, extra dict for the method).

It returns a `Selection`: the new W (same shape; pruned columns zero), the pruned structure
indices, an optional bias delta for the projection's output (FLAP-style compensation), and an
info dict that goes into the per-layer log. The pipeline then shrinks the layer from the indices.

Register a new method with `register_method("name", fn, needs_hessian=False)`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from slimgpt import ops


@dataclass
class InputStats:
    """Statistics of one projection's inputs X (n tokens × N) over the calibration set."""
    n: int
    mean: torch.Tensor                  # (N,) float64
    m2: torch.Tensor                    # (N,) float64, Σ_t (x_t − mean)²
    H: torch.Tensor | None = None       # (N, N) float64, 2 XᵀX / n (spec §1.2), or None

    @property
    def var(self) -> torch.Tensor:      # sample variance (FLAP's fluctuation)
        return self.m2 / max(self.n - 1, 1)

    @property
    def sq_norm(self) -> torch.Tensor:  # Σ_t x_t² (Wanda's ||X_j||²)
        return self.m2 + self.n * self.mean ** 2


@dataclass
class MethodOptions:
    percdamp: float = 0.01
    backend: str | None = None
    gcd: bool = True                    # grouped-Cholesky head scores (False: the −GCD ablation)
    compensate: bool = True             # OBS weight update (False: just zero the columns)
    extra: dict = field(default_factory=dict)


@dataclass
class Selection:
    W: torch.Tensor                     # new weight, same shape as the input W
    pruned: list[int]                   # pruned structure indices, sorted
    bias_delta: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


@dataclass
class Method:
    fn: Callable[..., Selection]
    needs_hessian: bool = True


METHODS: dict[str, Method] = {}


def register_method(name: str, fn: Callable[..., Selection], needs_hessian: bool = True) -> None:
    METHODS[name] = Method(fn, needs_hessian)


def _call_recording_damping(f, *args, **kw):
    """Run an ops call; return (result, percdamp actually used or None if the requested one worked)."""
    from slimgpt.reference import DampingWarning  # noqa: WPS433 (the reference owns the warning)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DampingWarning)
        out = f(*args, **kw)
    used = [w.message.percdamp for w in caught if isinstance(w.message, DampingWarning)]
    for w in caught:
        if not isinstance(w.message, DampingWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out, (max(used) if used else None)


def slimgpt_select(kind, W, stats, n_prune, head_dim, *, head_groups=None, layer=None,
                   options: MethodOptions = MethodOptions()) -> Selection:
    """SlimGPT: batched greedy head pruning with grouped Cholesky (kind "heads", paper §3.2, Eq. 5)
    or dynamic-group-size channel pruning (kind "channels", §3.3), OBS-compensated (Eq. 3-4)."""
    if n_prune == 0:
        return Selection(W, [], info={"error": 0.0, "percdamp": None})
    H = stats.H
    if kind == "heads":
        (W_new, pruned), used = _call_recording_damping(
            ops.prune_heads, W, H, n_prune, head_dim, percdamp=options.percdamp, gcd=options.gcd,
            compensate=options.compensate, head_groups=head_groups, backend=options.backend)
    else:
        (W_new, pruned), used = _call_recording_damping(
            ops.prune_channels, W, H, n_prune, percdamp=options.percdamp, compensate=options.compensate,
            group_sizes=options.extra.get("group_sizes"), backend=options.backend)
    err = _recon_error(W, W_new, H)
    return Selection(W_new, sorted(int(p) for p in pruned), info={"error": err, "percdamp": used})


def _recon_error(W, W_new, H) -> float:
    """½ tr((W − W')H(W − W')ᵀ): mean squared output change per calibration token (Eq. 1)."""
    from slimgpt.reference import reconstruction_error
    return float(reconstruction_error(W.double().numpy(), W_new.double().numpy(), H.double().numpy()))


register_method("slimgpt", slimgpt_select, needs_hessian=True)

# Baselines (magnitude, wanda-sp, flap) register themselves; see slimgpt/baselines_methods.py.
from slimgpt.baselines_methods import register_all as _register_baselines  # noqa: E402

_register_baselines()
