"""Baseline structure-selection criteria in the same framework as SlimGPT.

What this file is: the *criteria* of the structured-pruning baselines that the paper and the field
compare SlimGPT with, written as small pure torch functions that the layer-wise pipeline calls
(see `slimgpt.baselines_methods` for the pipeline adapters). Every function is hand-checkable on
tiny matrices (tests/test_baselines.py does exactly that).

What it is not: it does not compensate weights with OBS (that is `slimgpt.ops`), and it does not
touch the model; it maps weights and calibration statistics to scores, selections and bias deltas.

Structures (SlimGPT spec §1.1; field.md §1.3):

- attention head j: o_proj input columns C_j = {j·d .. j·d+d-1} and the same-indexed q rows (and
  k/v rows when the head owns them: MHA, or a whole GQA group);
- FFN channel c: down_proj input column c, gate_proj row c, up_proj row c.

Criteria (each a score per structure; the *lowest* scores are pruned):

- magnitude ("mag-sp"): Σ of the squared entries of every weight that leaves with the structure
  (head: its q/k/v rows and o_proj columns; channel: its gate/up rows and down_proj column).
  FLAP's mag_sp uses the column L2 norm of o_proj/down_proj only; we use all removed weights,
  which is the natural "weight norm of the structure" and needs no calibration.
- Wanda-sp (FLAP's `prune_wanda_sp`): column score s_j = Σ_i |W_ij| · ||X_j||₂ on o_proj /
  down_proj inputs, summed over the columns of a structure. (FLAP averages over rows i; a
  constant factor, so the selection is identical.)
- FLAP (An et al., AAAI 2024, "WIFV" metric, "AL-AM" structure): column score
  f_j = Var(X_j) · ||W[:,j]||²  (sample variance over calibration tokens); for attention the
  FLAP code squares it (f_j²). Each layer's column scores are standardized across that layer's
  columns ((f − mean)/std, per module type), a head's score is the mean of its columns'
  standardized scores, and one global threshold over all layers and both module types, weighted
  by the parameter cost of each structure, meets the parameter target (adaptive per-layer ratios).
  Compensation: b_out += W[:, pruned] @ mean(X[:, pruned]) (bias_compensation).

Shape letters: d_out (rows), d_in (= N, input columns), n_struct (heads or channels), T (tokens).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

__all__ = [
    "ActivationStats",
    "magnitude_scores",
    "wanda_sp_column_scores",
    "fluctuation_column_scores",
    "sum_per_structure",
    "mean_per_structure",
    "standardize",
    "flap_structure_scores",
    "select_lowest",
    "global_select",
    "bias_compensation",
]


# ----------------------------------------------------------------------------------------------
# Calibration statistics of one linear layer's inputs


class ActivationStats:
    """Running per-channel statistics of a linear layer's inputs over calibration tokens.

    Keeps, in float64, the token count T, the mean μ_j and M2_j = Σ_t (x_tj − μ_j)² (Chan et al.'s
    pairwise merge, so batches of any size combine exactly and no catastrophic cancellation).

    - `sq_norm` = Σ_t x_tj² = M2_j + T·μ_j²  (Wanda-sp's ||X_j||₂²)
    - `var`     = M2_j / (T − 1)             (FLAP's fluctuation, sample variance)
    - `mean`    = μ_j                        (FLAP's bias compensation)
    """

    def __init__(self, n: int):
        self.n = int(n)
        self.count = 0
        self._mean = torch.zeros(self.n, dtype=torch.float64)
        self._m2 = torch.zeros(self.n, dtype=torch.float64)

    @torch.no_grad()
    def add(self, X: torch.Tensor) -> None:
        """Add a batch of inputs X (..., d_in); all leading dimensions are tokens."""
        X = X.detach().reshape(-1, X.shape[-1]).to("cpu", torch.float64)
        if X.shape[1] != self.n:
            raise ValueError(f"expected inputs with {self.n} channels, got {X.shape[1]}")
        nb = X.shape[0]
        if nb == 0:
            return
        mean_b = X.mean(dim=0)
        m2_b = ((X - mean_b) ** 2).sum(dim=0)
        n_a, n = self.count, self.count + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b + delta ** 2 * (n_a * nb / n)
        self.count = n

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.clone()

    @property
    def var(self) -> torch.Tensor:
        if self.count < 2:
            return torch.zeros(self.n, dtype=torch.float64)
        return self._m2 / (self.count - 1)

    @property
    def sq_norm(self) -> torch.Tensor:
        return self._m2 + self.count * self._mean ** 2


# ----------------------------------------------------------------------------------------------
# Per-structure scores


def _blocks(W: torch.Tensor, dim: int, n_struct: int) -> torch.Tensor:
    """View W's `dim` as n_struct equal consecutive blocks: returns (n_struct, -1) of W²."""
    W = W.detach().to(torch.float64)
    if W.shape[dim] % n_struct:
        raise ValueError(f"dimension {dim} of size {W.shape[dim]} is not divisible into {n_struct} structures")
    Wt = W.transpose(0, dim) if dim != 0 else W
    return (Wt.reshape(n_struct, -1) ** 2)


def magnitude_scores(parts: Iterable[tuple[torch.Tensor, int]], n_struct: int) -> torch.Tensor:
    """Magnitude of each structure: Σ of squared entries of all weights removed with it.

    Parameters
    ----------
    parts : iterable of (W, dim)
        Each weight that loses a slice when a structure is pruned, and the dimension it loses it
        along (0: rows, e.g. q/k/v or gate/up; 1: columns, e.g. o_proj or down_proj). W's `dim`
        must split into n_struct equal consecutive blocks (head j: rows/columns j·d .. j·d+d−1).
    n_struct : int
        Number of structures (heads, KV groups or channels).

    Returns
    -------
    (n_struct,) float64: score_s = Σ_parts ||W[block_s]||_F².
    """
    total = torch.zeros(n_struct, dtype=torch.float64)
    for W, dim in parts:
        total += _blocks(W, dim, n_struct).sum(dim=1)
    return total


def wanda_sp_column_scores(W: torch.Tensor, sq_norm_x: torch.Tensor) -> torch.Tensor:
    """Wanda-sp column score: s_j = Σ_i |W_ij| · ||X_j||₂.

    W (d_out, d_in) is o_proj or down_proj; sq_norm_x (d_in,) is Σ_t x_tj² (ActivationStats.sq_norm).
    """
    W = W.detach().to(torch.float64)
    return W.abs().sum(dim=0) * sq_norm_x.to(torch.float64).clamp_min(0).sqrt()


def fluctuation_column_scores(W: torch.Tensor, var_x: torch.Tensor) -> torch.Tensor:
    """FLAP's WIFV column score: f_j = Var(X_j) · ||W[:,j]||₂²."""
    W = W.detach().to(torch.float64)
    return var_x.to(torch.float64) * (W ** 2).sum(dim=0)


def sum_per_structure(col_scores: torch.Tensor, n_struct: int) -> torch.Tensor:
    """(d_in,) column scores → (n_struct,) sums over each structure's consecutive columns."""
    return col_scores.reshape(n_struct, -1).sum(dim=1)


def mean_per_structure(col_scores: torch.Tensor, n_struct: int) -> torch.Tensor:
    """(d_in,) column scores → (n_struct,) means over each structure's consecutive columns."""
    return col_scores.reshape(n_struct, -1).mean(dim=1)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """(x − mean(x)) / std(x), std with Bessel's correction (torch.std default, as FLAP).

    A constant vector (std 0) maps to zeros rather than NaN.
    """
    x = x.to(torch.float64)
    if x.numel() < 2:
        return torch.zeros_like(x)
    sd = x.std()
    if not torch.isfinite(sd) or sd == 0:
        return torch.zeros_like(x)
    return (x - x.mean()) / sd


def flap_structure_scores(col_scores: torch.Tensor, n_struct: int, *, square: bool = False) -> torch.Tensor:
    """FLAP AL-AM score of each structure in one layer and module.

    1. (attention only, `square=True`) f_j ← f_j², as FLAP's code does for o_proj;
    2. standardize the layer's column scores across its columns;
    3. score of a structure = mean of its columns' standardized scores.
    """
    f = col_scores.to(torch.float64)
    if square:
        f = f ** 2
    return mean_per_structure(standardize(f), n_struct)


# ----------------------------------------------------------------------------------------------
# Selection


def select_lowest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Indices of the n_prune lowest scores, ascending by index; ties go to the lower index."""
    n_prune = int(n_prune)
    if n_prune < 0 or n_prune > scores.numel():
        raise ValueError(f"n_prune={n_prune} outside [0, {scores.numel()}]")
    order = torch.sort(scores.to(torch.float64), stable=True).indices
    return torch.sort(order[:n_prune]).values


def global_select(scores: Sequence[torch.Tensor], costs: Sequence[float], budget: float,
                  *, min_keep: int = 1) -> list[torch.Tensor]:
    """One global threshold over several groups of structures with different parameter costs.

    Structures of all groups are visited from the lowest score up (ties: lower group, then lower
    index). A structure is removed if its cost still fits the remaining budget and its group keeps
    at least `min_keep` structures; one that would overshoot is skipped and the walk goes on, so
    cheaper (FFN-channel) structures fill the remainder. The removed parameter count is therefore
    ≤ budget and, whenever a structure of cost c is still available, within c of it.

    This is FLAP's AL-AM selection (sort all standardized scores, cut where the kept cost reaches
    the target) made exact for a given parameter budget; FLAP's own cut is the argmin of
    |cumulative kept cost − target| and may land on either side.

    Parameters
    ----------
    scores : per group (e.g. layer-i heads, layer-i channels) a 1-D tensor of scores.
    costs : per group, the parameters removed with one structure of that group.
    budget : the number of parameters to remove in total.
    min_keep : structures each group keeps at least (1: no layer loses all heads or channels).

    Returns
    -------
    Per group, the removed indices, ascending (int64).
    """
    if len(scores) != len(costs):
        raise ValueError("one cost per group of scores")
    flat = torch.cat([s.reshape(-1).to(torch.float64) for s in scores]) if scores else torch.zeros(0)
    group = torch.cat([torch.full((s.numel(),), g, dtype=torch.int64) for g, s in enumerate(scores)]) \
        if scores else torch.zeros(0, dtype=torch.int64)
    index = torch.cat([torch.arange(s.numel()) for s in scores]) if scores else torch.zeros(0, dtype=torch.int64)
    # Stable sort on (score, group, index): the concatenation is already ordered by group, index.
    order = torch.sort(flat, stable=True).indices
    left = float(budget)
    room = [max(s.numel() - min_keep, 0) for s in scores]
    chosen: list[list[int]] = [[] for _ in scores]
    min_cost = min(costs) if costs else 0.0
    for k in order.tolist():
        if left < min_cost:
            break
        g = int(group[k])
        if room[g] == 0 or costs[g] > left:
            continue
        chosen[g].append(int(index[k]))
        room[g] -= 1
        left -= costs[g]
    return [torch.tensor(sorted(c), dtype=torch.int64) for c in chosen]


# ----------------------------------------------------------------------------------------------
# FLAP bias compensation


def bias_compensation(W: torch.Tensor, mean_x: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Bias that replaces pruned inputs by their calibration mean (FLAP).

    With inputs x and pruned columns P, W x ≈ W[:, K] x_K + W[:, P] μ_P, so the layer keeps its
    expected output if b ← b + W[:, P] μ_P. Returns that delta, shape (d_out,), in W's dtype.
    """
    pruned = torch.as_tensor(pruned, dtype=torch.int64)
    if pruned.numel() == 0:
        return torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
    Wd = W.detach().to(torch.float64)
    delta = Wd[:, pruned.to(W.device)] @ mean_x.to(device=W.device, dtype=torch.float64)[pruned.to(W.device)]
    return delta.to(W.dtype)
