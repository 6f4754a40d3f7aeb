"""Cases that catch the bugs implementations really make (the planted bugs of mutations.py).

What this is: the second half of the case table: the full Dynamic Group Size schedule inside
prune_channels, dead inputs together with damping, heads whose count differs from head_dim,
GQA quotas over uneven groups, exact channel and head ties (spec §3.3, §4.2: lower index first), and layer-level cases
(X and W in, pruned W, selection and loss out). What it is not: the basic per-operation cases
(cases.py).
"""
from __future__ import annotations

import numpy as np

from slimgpt.oracle.case import Case
from slimgpt.testing import calibration, hessian_of, weights


def coverage_cases() -> list[Case]:
    return _dgs_schedule_cases() + _dead_damped_cases() + _head_shape_cases() + _tie_cases() + _layer_cases()


def _dgs_schedule_cases() -> list[Case]:
    """T = 660 of 704 channels: groups 74, 64 x9, 10. A schedule off by one anywhere moves a group
    boundary, and compensation between groups then changes the selected set (spec §4.2)."""
    r = np.random.default_rng(60)
    X = calibration(r, 2 * 704, 704, mix=1.0)
    W = weights(r, 8, 704, spread=(0.8, 1.25))
    return [Case("prune_channels.dgs_full_schedule", "prune_channels", {"W": W, "H": hessian_of(X), "n_prune": 660},
                 "T=660 of 704: the whole DGS schedule 74, 64 x9, 10; the selection depends on every "
                 "group boundary", ["schedule", "large"], "float64_solve", float32=False)]


def _dead_damped_cases() -> list[Case]:
    """Dead inputs and damping together: the damping mean is taken after dead inputs got diag 1."""
    r = np.random.default_rng(61)
    X = calibration(r, 256, 32, dead=[2, 11, 19, 27])
    W, H = weights(r, 16, 32), hessian_of(X)
    desc = "dead inputs 2, 11, 19, 27 with percdamp=0.05: mean(diag H) taken after they got diag 1 (spec §2.4)"
    return [
        Case("prune_columns.dead_damped", "prune_columns",
             {"W": W, "H": H, "columns": np.array([5, 11, 30]), "percdamp": 0.05}, desc, ["dead", "damping"],
             "float64_solve"),
        Case("prune_channels.dead_damped", "prune_channels", {"W": W, "H": H, "n_prune": 10, "percdamp": 0.05},
             desc, ["dead", "damping"], "float64_solve"),
    ]


def _head_shape_cases() -> list[Case]:
    """6 heads of 12 (so head_dim and the head count cannot be swapped unnoticed) and GQA quotas
    over groups of different sizes."""
    cases = []
    r = np.random.default_rng(62)
    X = calibration(r, 512, 72)
    W, H = weights(r, 16, 72, block=12), hessian_of(X)
    cases.append(Case("head_errors.six_heads_of_12", "head_errors",
                      {"W": W, "Hinv": np.linalg.inv(H), "head_dim": 12},
                      "6 heads of 12 columns: one error per head, 6 values", ["heads"], "float64_solve"))
    cases.append(Case("prune_heads.six_heads_of_12", "prune_heads", {"W": W, "H": H, "n_prune": 2, "head_dim": 12},
                      "2 of 6 heads of 12 columns", ["heads"], "float64_solve"))
    # 8 heads of 8 in KV groups of 3, 2 and 3 heads; group 0's heads are the cheapest, so the
    # quota (one head per group) is what stops the greedy from taking them all.
    r = np.random.default_rng(63)
    X = calibration(r, 512, 64)
    W = weights(r, 16, 64, block=8) * np.repeat([0.05, 0.06, 0.07, 1.0, 1.2, 1.4, 1.6, 1.8], 8)[None, :]
    cases.append(Case("prune_heads.gqa_uneven_groups", "prune_heads",
                      {"W": W, "H": hessian_of(X), "n_prune": 3, "head_dim": 8,
                       "head_groups": [0, 0, 0, 1, 1, 2, 2, 2]},
                      "KV groups of 3, 2 and 3 query heads, one head pruned per group although group 0 "
                      "holds the three cheapest heads", ["gqa"], "float64_solve"))
    return cases


def _tie_cases() -> list[Case]:
    """Exact ties: a diagonal H and equal columns give bit-identical errors; the lower index wins
    (spec §3.3, §4.2)."""
    h = np.geomspace(1.0, 4.0, 16)
    h[12] = h[3]
    W = np.outer(np.linspace(1.0, 2.0, 6), np.geomspace(0.5, 2.0, 16))
    W[:, 12] = W[:, 3]
    # error of channel c: ||W[:, c]||² / G[c, c] = ||W[:, c]||² h_c; the tied pair (3, 12) is put
    # at the boundary of the one group
    eps = np.sum(W ** 2, axis=0) * h
    rank = int(np.sum(eps < eps[3]))
    return [Case("prune_channels.tie", "prune_channels",
                 {"W": W, "H": np.diag(h), "n_prune": rank + 1, "group_sizes": [rank + 1]},
                 f"channels 3 and 12 have bit-identical errors at the boundary of a group of {rank + 1}: "
                 "the lower index (3) is pruned", ["tie", "edge"], "float64"),
            _head_tie_case()]


def _head_tie_case() -> Case:
    """Heads 2 and 5 of 6 (head_dim 4) are duplicates, identical W blocks and diagonal H blocks,
    and the cheapest: bit-identical errors E, one head pruned, the lower index (2) wins (spec §3.3)."""
    h = np.geomspace(1.0, 3.0, 24)
    W = np.outer(np.linspace(1.0, 2.0, 5), np.geomspace(1.0, 2.0, 24))
    h[20:24] = h[8:12]
    W[:, 8:12] *= 0.25
    W[:, 20:24] = W[:, 8:12]
    return Case("prune_heads.tie", "prune_heads", {"W": W, "H": np.diag(h), "n_prune": 1, "head_dim": 4},
                "heads 2 and 5 are duplicates (identical W blocks and diagonal H blocks), the cheapest, with "
                "bit-identical errors: the lower index (2) is pruned", ["tie", "edge"], "float64")


def _layer_cases() -> list[Case]:
    """Layer level: calibration inputs X and the weight in, (W_new, selection, loss) out."""
    r = np.random.default_rng(64)
    Xa = calibration(r, 288, 72)
    Wa = weights(r, 32, 72, block=12)
    r = np.random.default_rng(65)
    Xf = calibration(r, 640, 160)
    Wf = weights(r, 24, 160, spread=(0.1, 10.0))
    return [
        Case("prune_attention_layer.o_proj", "prune_attention_layer",
             {"X": Xa, "W": Wa, "n_prune": 2, "head_dim": 12, "percdamp": 0.01},
             "an o_proj with 6 heads of 12 and 288 calibration tokens: 2 heads pruned at percdamp 0.01",
             ["layer"], "float64_solve"),
        Case("prune_attention_layer.gqa", "prune_attention_layer",
             {"X": Xa, "W": Wa, "n_prune": 2, "head_dim": 12, "head_groups": 2},
             "the same o_proj with 2 KV groups of 3 heads: one head pruned per group", ["layer", "gqa"],
             "float64_solve"),
        Case("prune_ffn_layer.down_proj", "prune_ffn_layer",
             {"X": Xf, "W": Wf, "n_prune": 100, "percdamp": 0.01},
             "a down_proj with 160 channels and 640 tokens: 100 channels pruned (DGS 64, 36) at percdamp 0.01",
             ["layer"], "float64_solve"),
    ]
