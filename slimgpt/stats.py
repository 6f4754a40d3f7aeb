"""Statistics of a linear layer's inputs over the calibration tokens: the one place they live.

What this is: a running accumulator, fed batch by batch during the pipeline's forwards, of the
quantities the pruning methods read: the token count n, the per-input mean and M2 = Σ (x − mean)²
(hence variance and Σ x²), and, for methods that need it, H = 2 XᵀX / n (spec §1.2) through
`slimgpt.ops.accumulate_hessian` (the C++/CUDA core on the fast backends: float32 XᵀX per batch,
float64 running mean). What it is not: a hook manager or a method; the pipeline decides what to
feed it.

Shapes: x (..., N) with every leading dimension a token; mean, m2 (N,); H (N, N).
"""
from __future__ import annotations

import time

import torch

from slimgpt import ops


class ActivationStats:
    """Token count, mean, M2 and optionally H of one projection's inputs (all float64).

    Batches are merged with Chan et al.'s pairwise update, so any batching gives the same
    result up to rounding and the variance suffers no cancellation:

        n = n_a + n_b;  δ = mean_b − mean_a
        mean = mean_a + δ · n_b / n;  M2 = M2_a + M2_b + δ² · n_a n_b / n
    """

    def __init__(self, n_features: int, *, hessian: bool = False, backend: str | None = None, device="cpu"):
        self.n = 0
        self.seconds = 0.0              # time spent in add() (the Hessian and moments), for the log
        self.backend = backend
        self.mean = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.H = torch.zeros(n_features, n_features, dtype=torch.float64, device=device) if hessian else None

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Add a batch of inputs x (..., N)."""
        x = x.detach().reshape(-1, x.shape[-1])
        if x.shape[1] != self.mean.numel():
            raise ValueError(f"expected inputs with {self.mean.numel()} features, got {x.shape[1]}")
        nb = x.shape[0]
        if nb == 0:
            return
        t0 = time.perf_counter()
        if self.H is not None:
            self.H, _ = ops.accumulate_hessian(self.H, self.n, x, backend=self.backend, overwrite_H=True)
        xd = x.double()
        mean_b = xd.mean(0)
        m2_b = ((xd - mean_b) ** 2).sum(0)
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean += delta * (nb / n)
        self.m2 += m2_b + delta ** 2 * (self.n * nb / n)
        self.n = n
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - t0

    @property
    def var(self) -> torch.Tensor:
        """Sample variance M2 / (n − 1) (FLAP's fluctuation); 0 with fewer than two tokens."""
        return self.m2 / max(self.n - 1, 1)

    @property
    def sq_norm(self) -> torch.Tensor:
        """Σ_t x_t² = M2 + n · mean² (Wanda's ||X_j||²)."""
        return self.m2 + self.n * self.mean ** 2
