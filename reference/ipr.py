"""Incremental Pruning Ratio (IPR): the per-layer pruning ratios (paper Eq. 6).

What this is: the NumPy float64 specification of the layer-wise ratio schedule and of how to
pick its endpoints for a target mean ratio. What it is not: the rounding of ratios to head and
channel counts, which callers do with Python's round (half to even) as the published code
does: round(n_heads · r_i) heads and round(m · r_i) channels (spec §5.1). A C++ twin, if
any, keeps the same names (docs/equations.md); the schedule is arithmetic done once per model.
"""
from __future__ import annotations

import math

import numpy as np

from . import _checks

STRATEGIES = ("log", "linear", "uniform", "log-decrease", "linear-decrease")

# The published 20% recipe: first = 0.0625 for a 0.2 target (spec §5.3), i.e. first = 0.3125 t.
DEFAULT_FIRST_FRACTION = 0.3125


def ipr_ratios(n_layers: int, first: float, last: float, strategy: str = "log") -> np.ndarray:
    """Pruning ratio of each layer, increasing from `first` at layer 0 to `last` at the end.

    Paper: Incremental Pruning Ratio, Eq. (6) ("log"); the other strategies are the published
    code's alternatives compared in Table 6 (spec §5.2).

        log:     r_i = first + (last - first) · log(i + 1) / log(n)
        linear:  r_i = first + (last - first) · i / (n - 1)
        uniform: r_i = first                                (requires last == first)
        log-decrease, linear-decrease: the log / linear list reversed (layer 0 gets `last`)

    The published code divides by log(32) whatever the depth; we use log(n) as Eq. (6) does,
    which agrees for 32 layers only (spec §5.2). With one layer, r_0 = first.

    Parameters
    ----------
    n_layers : int
        n >= 1.
    first, last : float
        Ratios in [0, 1) with first <= last (the code's --min_sparsity, --max_sparsity).
    strategy : str
        One of STRATEGIES.

    Returns
    -------
    ratios : float64 array (n_layers,)
    """
    n = _checks.count("n_layers", n_layers, 1, np.iinfo(np.int64).max)
    first, last = _checks.ratio("first", first), _checks.ratio("last", last)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if first > last:
        raise ValueError(f"first={first} > last={last}: pass the smaller ratio as first and use "
                         f"a '-decrease' strategy for decreasing ratios")
    if strategy == "uniform":
        if last != first:
            raise ValueError(f"strategy 'uniform' takes one ratio: first={first} != last={last}")
        return np.full(n, first)
    return first + (last - first) * _shape(n, strategy.removesuffix("-decrease"))[
        ::-1 if strategy.endswith("-decrease") else 1]


def ipr_for_target(n_layers: int, target: float, first=None, strategy: str = "log") -> np.ndarray:
    """Ratios of `strategy` whose mean over the layers equals `target`.

    Paper: Incremental Pruning Ratio, Eq. (6); the closed form of the mean is ours (spec §5.4).

        mean r = first + (last - first) · c,
        c = log(n!) / (n log n)   (log; 0.735395 for n = 32),   c = 1/2   (linear)
        last = first + (target - first) / c

    first=None uses first = 0.3125 · target, the published 20% recipe (0.0625 for 0.2,
    giving last = 0.2495 on 32 layers where the README uses 0.25). "uniform" gives every layer
    the target.

    Parameters
    ----------
    n_layers : int
    target : float
        Mean ratio in [0, 1).
    first : float or None
        Ratio of the first layer (of the last layer for the '-decrease' strategies).
    strategy : str

    Returns
    -------
    ratios : float64 array (n_layers,)

    Raises
    ------
    ValueError
        If no last in [first, 1) reaches the target.
    """
    n = _checks.count("n_layers", n_layers, 1, np.iinfo(np.int64).max)
    target = _checks.ratio("target", target)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if first is None:
        first = target if strategy == "uniform" or n == 1 else DEFAULT_FIRST_FRACTION * target
    first = _checks.ratio("first", first)
    if strategy == "uniform" or n == 1:
        if first != target:
            raise ValueError(f"with strategy {strategy!r} and {n} layer(s) every ratio is `first`, "
                             f"so first={first} cannot reach target={target}")
        return ipr_ratios(n, first, first, strategy)
    # mean of the curve: (1/n) Σ log(i+1) / log(n) = log(n!) / (n log n); linear: 1/2
    c = math.lgamma(n + 1) / (n * math.log(n)) if strategy.startswith("log") else 0.5
    last = first + (target - first) / c
    if not first <= last < 1.0:
        raise ValueError(f"no valid last ratio: target={target} with first={first} needs "
                         f"last={last:.6g}, outside [first, 1)")
    return ipr_ratios(n, first, last, strategy)


def _shape(n: int, strategy: str) -> np.ndarray:
    """The increasing curve from 0 at layer 0 to 1 at layer n-1 (all zero for n = 1)."""
    i = np.arange(n, dtype=np.float64)
    if n == 1:
        return np.zeros(1)
    if strategy == "log":
        return np.log(i + 1) / np.log(n)  # Eq. (6); the published code uses log(32) here
    return i / (n - 1)
