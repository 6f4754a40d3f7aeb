"""Golden cases for the SlimGPT operations: export them from the reference, check any implementation.

What this is: a language-neutral oracle. `export(dir)` runs the NumPy float64 reference
(`slimgpt.reference`) on a fixed, seeded table of named cases -- ordinary shapes and the tricky
ones (dead columns, damping, a damping retry on an indefinite H, head_dim=1, one head, GQA
quotas, whole-group blocks, fixed vs Dynamic Group Sizes, compensate=False, gcd=False, IPR
strategies, DGS schedule edge cases) -- and writes inputs and expected outputs as one `.npz` per
case plus an `index.json`. `check(dir, impl)` runs another implementation (a Python module with
functions named like the reference's; a subset is fine) over the same cases and reports, per
case, pass/fail with max abs/rel errors. The file format is documented in docs/oracle.md so
implementations in any language can read it.

What this is not: a test of the reference itself (tests/test_reference*.py prove its invariants
against naive formulas); the expected outputs here are *defined* by the reference.

Command line (wired as `slimgpt oracle ...`, or `python -m slimgpt.oracle ...`):

    slimgpt oracle export DIR
    slimgpt oracle check DIR --impl MODULE_OR_FILE.py [--profile float32] [--backend cpu] [--op NAME]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

FORMAT = "slimgpt-oracle"
FORMAT_VERSION = 1

# ------------------------------------------------------------------------------------------------
# Operations: positional signature and named outputs (the reference API, spec §2-5)

# operation -> names of its positional arguments, in order (everything else is passed by keyword)
SIGNATURES: dict[str, list[str]] = {
    "hessian": ["X"],
    "accumulate_hessian": ["H", "n_seen", "X"],
    "prune_columns": ["W", "H", "columns"],
    "prune_columns_naive": ["W", "H", "columns"],
    "head_errors": ["W", "Hinv", "head_dim"],
    "prune_heads": ["W", "H", "n_prune", "head_dim"],
    "dgs_group_sizes": ["n_prune"],
    "prune_channels": ["W", "H", "n_prune"],
    "reconstruction_error": ["W", "W_new", "H"],
    "ipr_ratios": ["n_layers", "first", "last"],
    "ipr_for_target": ["n_layers", "target"],
}

# operation -> (output name, comparison) in the order the function returns them.
#   "float": allclose with the case's rtol/atol;  "exact": equal values and shape (counts, group
#   sizes);  "index_set": the same set of integer indices (order ignored, duplicates are errors).
OUTPUTS: dict[str, list[tuple[str, str]]] = {
    "hessian": [("H", "float")],
    "accumulate_hessian": [("H", "float"), ("n_seen", "exact")],
    "prune_columns": [("W_new", "float")],
    "prune_columns_naive": [("W_new", "float")],
    "head_errors": [("errors", "float")],
    "prune_heads": [("W_new", "float"), ("pruned_heads", "index_set")],
    "dgs_group_sizes": [("group_sizes", "exact")],
    "prune_channels": [("W_new", "float"), ("pruned_channels", "index_set")],
    "reconstruction_error": [("error", "float")],
    "ipr_ratios": [("ratios", "float")],
    "ipr_for_target": [("ratios", "float")],
}

# Tolerance rows: (rtol, atol relative to max|expected|). The same numbers and reasons as
# tests/tolerances.py (a test keeps them in sync); the index stores atol already multiplied out.
TOLERANCES: dict[str, tuple[float, float]] = {
    # Two float64 formulas of the same quantity: only rounding differs, well-conditioned H.
    "float64": (1e-9, 1e-10),
    # float64 with one extra solve / damping retry: condition numbers up to ~1e4.
    "float64_solve": (1e-7, 1e-8),
    # A float32 implementation (C++/CUDA core) against the float64 reference.
    "float32": (1e-4, 2e-4),
}

# Profiles: how strict a check is. "float64" uses each case's own row ("float64" or
# "float64_solve"); "float32" uses the float32 row and skips cases tagged float64-only.
PROFILES = ("float64", "float32")


# ------------------------------------------------------------------------------------------------
# The case table

@dataclass
class Case:
    id: str
    operation: str
    args: dict[str, Any]          # argument name -> scalar / list / None / np.ndarray
    description: str
    tags: list[str] = field(default_factory=list)
    tolerance: str = "float64"    # row of TOLERANCES for the float64 profile
    float32: bool = True          # also meaningful for a float32 implementation
    raises: bool = False          # the reference must raise (the error class is recorded)


def _calibration(rng, n, d_in, *, dead=(), mix=0.3):
    """X (n x d_in): correlated Gaussian inputs (so H is not diagonal), dead columns zeroed."""
    A = np.eye(d_in) + mix * rng.standard_normal((d_in, d_in)) / np.sqrt(d_in)
    X = rng.standard_normal((n, d_in)) @ A
    X[:, list(dead)] = 0.0
    return X


def _H(X):
    """H = 2 X^T X / n (spec §1.2), float64."""
    return 2.0 * X.T @ X / X.shape[0]


def _weights(rng, d_out, d_in, *, block=1, spread=(0.3, 3.0)):
    """W (d_out x d_in) whose blocks of `block` columns have well-separated scales, so float32
    and float64 implementations cannot flip a near-tie in which heads/channels are selected."""
    n_blocks = d_in // block
    scales = np.geomspace(spread[0], spread[1], n_blocks)[rng.permutation(n_blocks)]
    return rng.standard_normal((d_out, d_in)) * np.repeat(scales, block)[None, :]


def _indefinite(rng, d_in):
    """An H with one slightly negative eigenvalue (-3e-3 of the mean diagonal), as float32
    accumulation produces: Cholesky fails at percdamp=0 (and 1e-4, 1e-3) and the reference's
    retry ladder succeeds at 1e-2, well away from the boundary."""
    H = _H(_calibration(rng, 4 * d_in, d_in))
    vals, vecs = np.linalg.eigh(H)
    vals[0] = -3e-3 * float(np.mean(np.diag(H)))
    return (vecs * vals) @ vecs.T


def build_cases() -> list[Case]:
    """The full, deterministic case table (seeded per case)."""
    cases: list[Case] = []
    add = cases.append

    def rng(seed):
        return np.random.default_rng(seed)

    # -- Hessian (spec §1.2) ---------------------------------------------------------------------
    r = rng(1)
    add(Case("hessian.basic", "hessian", {"X": _calibration(r, 200, 16)},
             "H = 2 X^T X / n for 200 tokens of 16 inputs", ["tiny"]))
    r = rng(2)
    add(Case("hessian.dead_column", "hessian", {"X": _calibration(r, 100, 12, dead=[3])},
             "an all-zero input column gives a zero row/column of H", ["dead"]))
    r = rng(3)
    add(Case("hessian.one_token", "hessian", {"X": r.standard_normal((1, 8))},
             "a single token: H = 2 x x^T (rank one)", ["edge"]))
    r = rng(4)
    X1, X2 = _calibration(r, 150, 16), _calibration(r, 90, 16)
    add(Case("accumulate_hessian.from_empty", "accumulate_hessian",
             {"H": None, "n_seen": 0, "X": X1},
             "the first chunk: H=None, n_seen=0 gives hessian(X) and n_seen=150", ["edge"]))
    add(Case("accumulate_hessian.running_mean", "accumulate_hessian",
             {"H": _H(X1), "n_seen": 150, "X": X2},
             "a second chunk of 90 tokens: the running mean equals hessian of all 240 tokens",
             ["streaming"]))

    # -- Column OBS with the Cholesky trick (spec §2, Eqs. 3-4) ------------------------------------
    col_cases = []
    r = rng(10)
    X = _calibration(r, 256, 64)
    W = _weights(r, 24, 64)
    H = _H(X)
    col_cases += [
        ("single", {"W": W, "H": H, "columns": np.array([5])},
         "one column q: Eq. (4) update, column q exactly zero", ["tiny"], "float64", True),
        ("set_unsorted", {"W": W, "H": H, "columns": np.array([41, 3, 17, 40])},
         "a set S given unsorted: the joint optimum W_K - W_S G_SS^-1 G_SK", [], "float64", True),
        ("empty", {"W": W, "H": H, "columns": np.array([], dtype=np.int64)},
         "no columns: W unchanged", ["edge"], "float64", True),
        ("all_but_one", {"W": W, "H": H, "columns": np.arange(1, 64)},
         "63 of 64 columns: only column 0 survives, fully compensated", ["edge"], "float64_solve", True),
        ("damped", {"W": W, "H": H, "columns": np.array([2, 9, 30]), "percdamp": 0.01},
         "percdamp=0.01 adds 0.01*mean(diag H) to diag H first (spec §2.4)", ["damping"], "float64", True),
        ("no_compensate", {"W": W, "H": H, "columns": np.array([2, 9, 30]), "compensate": False},
         "compensate=False: pruned columns zero, survivors bit-identical", ["ablation"], "float64", True),
    ]
    r = rng(11)
    Xd = _calibration(r, 256, 32, dead=[7])
    Wd = _weights(r, 16, 32)
    col_cases += [
        ("dead_pruned", {"W": Wd, "H": _H(Xd), "columns": np.array([7, 20])},
         "dead input 7 (diag H = 0) pruned together with column 20", ["dead"], "float64", True),
        ("dead_kept", {"W": Wd, "H": _H(Xd), "columns": np.array([20, 30])},
         "dead input 7 not in S: it is handled as diag 1 and its W column set to 0", ["dead"], "float64", True),
    ]
    r = rng(12)
    col_cases += [
        ("damping_retry", {"W": _weights(r, 16, 32), "H": _indefinite(r, 32), "columns": np.array([1, 4, 9])},
         "H slightly indefinite at percdamp=0: Cholesky fails, the reference retries with damping "
         "(DampingWarning)", ["damping", "retry"], "float64_solve", False),
    ]
    for name, args, desc, tags, tol, f32 in col_cases:
        for op in ("prune_columns", "prune_columns_naive"):
            if op == "prune_columns_naive" and "compensate" in args:
                continue  # the naive oracle always compensates
            add(Case(f"{op}.{name}", op, dict(args), desc, list(tags), tol, f32))
    add(Case("prune_columns.not_positive_definite", "prune_columns",
             {"W": np.ones((4, 6)), "H": -np.eye(6), "columns": np.array([0])},
             "H = -I cannot be repaired by damping: raises NotPositiveDefiniteError", ["error"],
             raises=True))

    # -- Head errors, grouped Cholesky (spec §3.2, Eq. 5) ------------------------------------------
    r = rng(20)
    X = _calibration(r, 256, 64)
    W = _weights(r, 24, 64, block=8)
    Hinv = np.linalg.inv(_H(X))
    add(Case("head_errors.basic", "head_errors", {"W": W, "Hinv": Hinv, "head_dim": 8},
             "8 heads of 8: E_j = sum_k ||W[:, j d + k]||^2 / L_j[k,k]^2, L_j = chol(G[C_j, C_j])", []))
    add(Case("head_errors.no_gcd", "head_errors", {"W": W, "Hinv": Hinv, "head_dim": 8, "gcd": False},
             "gcd=False (the -GCD ablation): plain diag(H^-1) instead of the grouped Cholesky",
             ["ablation"]))
    add(Case("head_errors.head_dim_1", "head_errors", {"W": W, "Hinv": Hinv, "head_dim": 1},
             "head_dim=1: the single-column OBS errors ||W[:,q]||^2 / G[q,q]", ["edge"]))
    add(Case("head_errors.one_head", "head_errors", {"W": W, "Hinv": Hinv, "head_dim": 64},
             "one head spanning all 64 columns", ["edge"]))
    add(Case("head_errors.diagonal_Hinv", "head_errors",
             {"W": W, "Hinv": np.diag(np.diag(Hinv)), "head_dim": 8},
             "diagonal H^-1: grouped Cholesky equals the plain diagonal", ["edge"]))

    # -- Batched greedy head pruning (spec §3.3) ---------------------------------------------------
    r = rng(30)
    X = _calibration(r, 384, 64)
    W = _weights(r, 24, 64, block=8)
    H = _H(X)
    heads = [
        ("basic", {"n_prune": 3, "head_dim": 8}, "3 of 8 heads, one per iteration, H^-1 recomputed", [], "float64_solve"),
        ("zero", {"n_prune": 0, "head_dim": 8}, "n_prune=0: W unchanged, no heads", ["edge"], "float64"),
        ("all", {"n_prune": 8, "head_dim": 8}, "all 8 heads: W becomes zero", ["edge"], "float64"),
        ("head_dim_1", {"n_prune": 5, "head_dim": 1}, "head_dim=1: column-wise greedy OBS", ["edge"], "float64_solve"),
        ("one_head", {"n_prune": 1, "head_dim": 64}, "a single head of 64 columns, pruned", ["edge"], "float64"),
        ("no_gcd", {"n_prune": 3, "head_dim": 8, "gcd": False}, "gcd=False: selection from plain diag(H^-1)",
         ["ablation"], "float64_solve"),
        ("no_compensate", {"n_prune": 3, "head_dim": 8, "compensate": False},
         "compensate=False: heads zeroed, survivors untouched", ["ablation"], "float64_solve"),
        ("damped", {"n_prune": 3, "head_dim": 8, "percdamp": 0.01}, "percdamp=0.01", ["damping"], "float64_solve"),
        ("whole_group_blocks", {"n_prune": 1, "head_dim": 16},
         "GQA option A: a KV group of 2 query heads x 8 as one 16-column block", ["gqa"], "float64_solve"),
        ("gqa_quota", {"n_prune": 4, "head_dim": 8, "head_groups": 4},
         "GQA option B: 8 query heads in 4 KV groups of 2, the same number pruned per group "
         "(4 heads = 1 per group)", ["gqa"], "float64_solve"),
        ("gqa_quota_2", {"n_prune": 2, "head_dim": 8, "head_groups": 2},
         "GQA option B: 2 KV groups of 4 query heads, 1 head pruned per group", ["gqa"], "float64_solve"),
        ("gqa_group_ids", {"n_prune": 4, "head_dim": 8, "head_groups": [0, 1, 0, 1, 0, 1, 0, 1]},
         "GQA option B with explicit (interleaved) group ids: 2 heads pruned from each of 2 groups",
         ["gqa"], "float64_solve"),
    ]
    for name, kw, desc, tags, tol in heads:
        add(Case(f"prune_heads.{name}", "prune_heads", {"W": W, "H": H, **kw}, desc, tags, tol))
    add(Case("prune_heads.scaled_H", "prune_heads", {"W": W, "H": 1000.0 * H, "n_prune": 3, "head_dim": 8},
             "H scaled by 1000: same selection and weights as prune_heads.basic (spec §10.1.9)",
             ["invariance"], "float64_solve"))
    # One head whose 4 inputs are near-copies of one signal: each column alone looks cheap
    # (large G[q,q]), the whole head is expensive. Only the grouped Cholesky (Eq. 5) sees it.
    r = rng(33)
    Xc = _calibration(r, 512, 32)
    Xc[:, 12:16] = r.standard_normal((512, 1)) * 1.5 + 0.05 * r.standard_normal((512, 4))
    Wc = _weights(r, 16, 32, block=4, spread=(0.5, 2.0))
    Wc[:, 12:16] = 3.0 * np.abs(r.standard_normal((16, 4)))  # same-sign, large: the head carries the signal
    for gcd in (True, False):
        add(Case(f"head_errors.correlated_head{'' if gcd else '_no_gcd'}", "head_errors",
                 {"W": Wc, "Hinv": np.linalg.inv(_H(Xc)), "head_dim": 4, "gcd": gcd},
                 "head 3 has near-duplicate inputs: " + ("the grouped Cholesky estimate is large" if gcd
                                                         else "summed single-column errors are small"),
                 ["gcd"], "float64_solve"))
        add(Case(f"prune_heads.gcd_matters{'' if gcd else '_no_gcd'}", "prune_heads",
                 {"W": Wc, "H": _H(Xc), "n_prune": 2, "head_dim": 4, "gcd": gcd},
                 "head 3 has near-duplicate inputs: " + ("GCD keeps it" if gcd else "-GCD prunes it first"),
                 ["gcd"], "float64_solve"))
    r = rng(31)
    Xd = _calibration(r, 256, 32, dead=[9])
    add(Case("prune_heads.dead_column", "prune_heads",
             {"W": _weights(r, 16, 32, block=4), "H": _H(Xd), "n_prune": 2, "head_dim": 4},
             "input 9 (in head 2) is dead", ["dead"], "float64_solve"))
    r = rng(32)
    add(Case("prune_heads.damping_retry", "prune_heads",
             {"W": _weights(r, 16, 32, block=4), "H": _indefinite(r, 32), "n_prune": 2, "head_dim": 4},
             "slightly indefinite H at percdamp=0: damping retry (DampingWarning)", ["damping", "retry"],
             "float64_solve", False))

    # -- Dynamic Group Size schedule (spec §4.2) ---------------------------------------------------
    for T, desc in [(0, "nothing to prune"), (1, "T=1"), (40, "T < 64: one group of T"),
                    (64, "T = 64 exactly"), (100, "64 then 36"), (688, "88, 64 x9, 24 (LLaMA-7B layer 0)"),
                    (1200, "344, 64 x13, 24"), (2064, "776, 132, 64 x18, 4"),
                    (2752, "1024, 304, 64 x22, 16 (r = 0.25)"), (5504, "1024, 992, 240, 64 x50, 48 (r = 0.5)"),
                    (7000, "1024, 1024, 427, 64 x70, 45")]:
        add(Case(f"dgs_group_sizes.T{T}", "dgs_group_sizes", {"n_prune": T}, f"DGS schedule for T={T}: {desc}",
                 ["schedule"] + (["edge"] if T < 100 else [])))

    # -- FFN channel pruning with DGS (spec §4) ----------------------------------------------------
    r = rng(40)
    X = _calibration(r, 640, 160)
    W = _weights(r, 24, 160, spread=(0.1, 10.0))
    H = _H(X)
    ch = [
        ("dgs", {"n_prune": 100}, "T=100 of 160 with the DGS schedule (64, 36)", [], "float64_solve"),
        ("dgs_small", {"n_prune": 40}, "T=40 < 64: one group", ["edge"], "float64_solve"),
        ("zero", {"n_prune": 0}, "n_prune=0: unchanged", ["edge"], "float64"),
        ("fixed_groups", {"n_prune": 100, "group_sizes": [32, 32, 32, 4]},
         "fixed groups of 32 (the -DGS ablation) instead of DGS", ["ablation"], "float64_solve"),
        ("fixed_group_int", {"n_prune": 100, "group_sizes": 32},
         "group_sizes=32 (an int): fixed groups 32, 32, 32, 4", ["ablation"], "float64_solve"),
        ("single_column_groups", {"n_prune": 12, "group_sizes": [1] * 12},
         "groups of 1: exact greedy single-column OBS", ["edge"], "float64_solve"),
        ("no_compensate", {"n_prune": 100, "compensate": False},
         "compensate=False: selection by plain diag(H^-1), no update", ["ablation"], "float64_solve"),
        ("damped", {"n_prune": 100, "percdamp": 0.01}, "percdamp=0.01", ["damping"], "float64_solve"),
    ]
    for name, kw, desc, tags, tol in ch:
        add(Case(f"prune_channels.{name}", "prune_channels", {"W": W, "H": H, **kw}, desc, tags, tol))
    r = rng(41)
    Xd = _calibration(r, 512, 96, dead=[5, 50])
    add(Case("prune_channels.dead_columns", "prune_channels",
             {"W": _weights(r, 16, 96), "H": _H(Xd), "n_prune": 10},
             "dead inputs 5 and 50 have zero error and are pruned first", ["dead"], "float64_solve"))

    # -- Reconstruction error (spec §1.2, Eq. 1) ---------------------------------------------------
    r = rng(50)
    X = _calibration(r, 256, 32)
    W = _weights(r, 8, 32)
    W2 = W.copy()
    W2[:, [3, 11]] = 0.0
    add(Case("reconstruction_error.zeroed", "reconstruction_error", {"W": W, "W_new": W2, "H": _H(X)},
             "two columns zeroed without compensation: tr(D H D^T) with D = W - W_new", []))
    add(Case("reconstruction_error.identical", "reconstruction_error", {"W": W, "W_new": W.copy(), "H": _H(X)},
             "W_new = W: error 0", ["edge"]))

    # -- Incremental Pruning Ratio (spec §5, Eq. 6) ------------------------------------------------
    for n, first, last, strategy, desc in [
            (32, 0.0625, 0.25, "log", "the LLaMA-7B 20% schedule (mean 0.200387)"),
            (30, 0.0625, 0.25, "log", "30 layers (SmolLM2-135M)"),
            (40, 0.0625, 0.25, "log", "40 layers (LLaMA-13B)"),
            (32, 0.0625, 0.25, "linear", "linear increase"),
            (32, 0.0625, 0.25, "log-decrease", "log decrease: the log list reversed"),
            (32, 0.0625, 0.25, "linear-decrease", "linear decrease"),
            (32, 0.5, 0.5, "uniform", "uniform 0.5 (Table 6)"),
            (32, 0.2, 0.2, "log", "first == last: constant"),
            (1, 0.3, 0.3, "log", "one layer"),
            (2, 0.1, 0.5, "log", "two layers: first and last")]:
        add(Case(f"ipr_ratios.{strategy.replace('-', '_')}_{n}_{first}_{last}".replace("0.", "p"), "ipr_ratios",
                 {"n_layers": n, "first": first, "last": last, "strategy": strategy}, desc, ["schedule"]))
    for n, target, first, strategy, desc in [
            (32, 0.2, 0.0625, "log", "20% target from r0 = 0.0625 (last = 0.2495)"),
            (30, 0.5, None, "log", "50% on 30 layers, default first"),
            (32, 0.5, 0.125, "linear", "linear strategy"),
            (32, 0.5, None, "uniform", "uniform: every layer gets the target")]:
        add(Case(f"ipr_for_target.{strategy}_{n}_{target}".replace("0.", "p"), "ipr_for_target",
                 {"n_layers": n, "target": target, "first": first, "strategy": strategy}, desc, ["schedule"]))
    add(Case("ipr_ratios.first_above_last", "ipr_ratios", {"n_layers": 32, "first": 0.5, "last": 0.2},
             "first > last is an error (use a '-decrease' strategy): raises ValueError", ["error"],
             raises=True))
    add(Case("ipr_for_target.unreachable", "ipr_for_target",
             {"n_layers": 32, "target": 0.9, "first": 0.0, "strategy": "log"},
             "target 0.9 from first 0 needs last >= 1: raises ValueError", ["error"], raises=True))
    return cases


# ------------------------------------------------------------------------------------------------
# Calling an implementation

def call(fn: Callable, operation: str, args: dict[str, Any], extra: dict[str, Any] | None = None):
    """Call `fn` with the case's arguments: the operation's positional ones in order, the rest
    by keyword (plus `extra`, e.g. backend=...)."""
    pos = [args[name] for name in SIGNATURES[operation]]
    kw = {k: v for k, v in args.items() if k not in SIGNATURES[operation]}
    kw.update(extra or {})
    return fn(*pos, **kw)


def _as_outputs(operation: str, result) -> list:
    n = len(OUTPUTS[operation])
    if n == 1:
        return [result]
    if not isinstance(result, (tuple, list)) or len(result) != n:
        raise TypeError(f"{operation} must return a tuple of {n} values "
                        f"({', '.join(o for o, _ in OUTPUTS[operation])}), got {type(result).__name__}")
    return list(result)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------
# Export

def _reference():
    from slimgpt import reference
    return reference


def export(directory, *, cases: list[Case] | None = None, reference=None) -> dict:
    """Write every case's inputs and the reference's outputs to `directory`; return the index."""
    ref = reference or _reference()
    directory = Path(directory)
    (directory / "cases").mkdir(parents=True, exist_ok=True)
    entries = []
    for case in cases if cases is not None else build_cases():
        fn = getattr(ref, case.operation)
        arrays, arguments = {}, {}
        for name, value in case.args.items():
            if isinstance(value, np.ndarray):
                arr = value.astype(np.int64) if value.dtype.kind in "iu" else value.astype(np.float64)
                arrays[f"in.{name}"] = arr
                arguments[name] = {"array": f"in.{name}"}
            else:
                arguments[name] = value
        entry = {
            "id": case.id, "operation": case.operation, "description": case.description,
            "tags": case.tags, "file": f"cases/{case.id}.npz",
            "positional": SIGNATURES[case.operation], "arguments": arguments,
            "profiles": ["float64", "float32"] if case.float32 else ["float64"],
        }
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outs = _as_outputs(case.operation, call(fn, case.operation, _copy_args(case.args)))
            except Exception as exc:  # noqa: BLE001 - an expected error is part of the case
                if not case.raises:
                    raise RuntimeError(f"the reference failed on case {case.id}: {exc!r}") from exc
                entry["raises"] = type(exc).__name__
                entry["outputs"] = []
                outs = None
        entry["warns"] = sorted({w.category.__name__ for w in caught})
        if case.raises and outs is not None:
            raise RuntimeError(f"case {case.id} expects an error but the reference returned")
        if outs is not None:
            entry["outputs"] = []
            for (name, kind), value in zip(OUTPUTS[case.operation], outs):
                arr = _to_numpy(value)
                arr = arr.astype(np.float64) if kind == "float" else arr.astype(np.int64)
                key = f"out.{name}"
                arrays[key] = arr
                out = {"name": name, "key": key, "compare": kind}
                if kind == "float":
                    finite = arr[np.isfinite(arr)]
                    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
                    out["tolerances"] = {}
                    for profile in entry["profiles"]:
                        rtol, atol_rel = TOLERANCES[case.tolerance if profile == "float64" else profile]
                        out["tolerances"][profile] = {"rtol": rtol, "atol": atol_rel * scale}
                entry["outputs"].append(out)
        np.savez(directory / entry["file"], **arrays)
        entries.append(entry)
    index = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "generator": f"slimgpt {_version()} (slimgpt.reference, float64)",
        "paper": "SlimGPT, Ling et al., NeurIPS 2024, arXiv 2412.18110",
        "profiles": {"float64": "each case's own float64 tolerance",
                     "float32": "rtol 1e-4, atol 2e-4 * max|expected|; float64-only cases skipped"},
        "cases": entries,
    }
    (directory / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _has_cpu_core() -> bool:
    """True when slimgpt.ops has a compiled C++ core with the pruning operations."""
    try:
        from slimgpt.ops import _has_cpu_op
        return bool(_has_cpu_op())
    except Exception:  # noqa: BLE001 - no core is a normal state
        return False


def _version() -> str:
    try:
        from slimgpt import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "?"


def _copy_args(args: dict[str, Any]) -> dict[str, Any]:
    """Fresh copies so an implementation that writes into its inputs cannot corrupt a case."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else (list(v) if isinstance(v, list) else v))
            for k, v in args.items()}


def load_cases(directory) -> list[tuple[dict, dict[str, Any], dict[str, np.ndarray]]]:
    """Read an exported directory: [(index entry, arguments with arrays filled in, expected outputs)]."""
    directory = Path(directory)
    index = json.loads((directory / "index.json").read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{directory}/index.json is not a {FORMAT} index")
    out = []
    for entry in index["cases"]:
        with np.load(directory / entry["file"]) as npz:
            data = {k: npz[k] for k in npz.files}
        args = {name: (data[v["array"]] if isinstance(v, dict) else v) for name, v in entry["arguments"].items()}
        expected = {o["name"]: data[o["key"]] for o in entry["outputs"]}
        out.append((entry, args, expected))
    return out


# ------------------------------------------------------------------------------------------------
# Check

PASS, FAIL, NOT_IMPLEMENTED, SKIPPED = "pass", "FAIL", "not implemented", "skipped"


@dataclass
class CaseResult:
    id: str
    operation: str
    status: str                        # PASS | FAIL | NOT_IMPLEMENTED | SKIPPED
    message: str = ""
    max_abs_err: float = float("nan")  # over the case's float outputs
    max_rel_err: float = float("nan")  # max abs err / max|expected|, per output, maximised
    seconds: float = 0.0


@dataclass
class CheckResult:
    impl: str
    profile: str
    cases: list[CaseResult]

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cases)

    @property
    def passed(self) -> int:
        return self.count(PASS)

    @property
    def failed(self) -> int:
        return self.count(FAIL)

    @property
    def ok(self) -> bool:
        """True when at least one case was checked and none failed."""
        return self.failed == 0 and self.passed > 0

    def by_operation(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for c in self.cases:
            row = table.setdefault(c.operation, {PASS: 0, FAIL: 0, NOT_IMPLEMENTED: 0, SKIPPED: 0})
            row[c.status] += 1
        return table

    def table(self, verbose: bool = False) -> str:
        lines = [f"oracle check of {self.impl} (profile {self.profile})", "",
                 f"{'case':<44} {'status':<16} {'max abs err':>11} {'max rel err':>11} {'time':>7}"]
        for c in self.cases:
            if c.status in (NOT_IMPLEMENTED, SKIPPED) and not verbose:
                continue
            err = "" if np.isnan(c.max_abs_err) else f"{c.max_abs_err:11.2e}"
            rel = "" if np.isnan(c.max_rel_err) else f"{c.max_rel_err:11.2e}"
            lines.append(f"{c.id:<44} {c.status:<16} {err:>11} {rel:>11} {c.seconds:6.2f}s")
            if c.status == FAIL:
                lines += [f"    {line}" for line in c.message.splitlines()]
        lines.append("")
        for op, row in self.by_operation().items():
            if row[NOT_IMPLEMENTED] and not (row[PASS] or row[FAIL]):
                lines.append(f"{op}: not implemented ({row[NOT_IMPLEMENTED]} cases)")
            elif row[SKIPPED] and not (row[PASS] or row[FAIL]):
                lines.append(f"{op}: skipped ({row[SKIPPED]} cases)")
        lines.append(f"{self.passed} passed, {self.failed} failed, {self.count(NOT_IMPLEMENTED)} not implemented, "
                     f"{self.count(SKIPPED)} skipped")
        if self.passed + self.failed == 0:
            lines.append("no case was checked: FAIL")
        return "\n".join(lines)


def compare_output(name: str, compare: str, actual, expected: np.ndarray, tol: dict | None):
    """Compare one output. Returns (ok, message, max_abs_err, max_rel_err)."""
    try:
        a = _to_numpy(actual)
    except Exception as exc:  # noqa: BLE001
        return False, f"{name}: cannot convert the result to an array ({exc})", np.nan, np.nan
    if compare == "index_set":
        a = a.astype(np.int64).ravel() if a.size else np.zeros(0, np.int64)
        e = expected.astype(np.int64).ravel()
        if len(np.unique(a)) != len(a):
            return False, f"{name}: duplicate indices in {a.tolist()}", np.nan, np.nan
        missing = sorted(set(e.tolist()) - set(a.tolist()))
        extra = sorted(set(a.tolist()) - set(e.tolist()))
        if missing or extra:
            return False, (f"{name}: expected indices {sorted(e.tolist())}, got {sorted(a.tolist())}; "
                           f"missing {missing}, unexpected {extra}"), np.nan, np.nan
        return True, "", np.nan, np.nan
    if compare == "exact":
        a_list = np.asarray(a).astype(np.int64).ravel().tolist() if np.asarray(a).size else []
        e_list = expected.astype(np.int64).ravel().tolist()
        if a_list != e_list:
            diff = next((i for i, (x, y) in enumerate(zip(a_list, e_list)) if x != y), min(len(a_list), len(e_list)))
            return False, (f"{name}: expected {_short(e_list)}, got {_short(a_list)} "
                           f"(first difference at position {diff})"), np.nan, np.nan
        return True, "", np.nan, np.nan
    # float (0-d results are compared as 1-element arrays)
    a = np.atleast_1d(a.astype(np.float64))
    expected = np.atleast_1d(expected)
    if a.shape != expected.shape:
        return False, f"{name}: expected shape {expected.shape}, got {a.shape}", np.nan, np.nan
    if expected.size == 0:
        return True, "", 0.0, 0.0
    fin = np.isfinite(expected)
    if not np.array_equal(np.isfinite(a), fin) or not np.array_equal(a[~fin], expected[~fin]):
        bad = np.argwhere((np.isfinite(a) != fin) | (~fin & (a != expected)))[:5]
        return False, f"{name}: non-finite entries differ at {bad.tolist()}", np.nan, np.nan
    diff = np.abs(a - expected)
    diff[~fin] = 0.0
    scale = float(np.max(np.abs(expected[fin]))) if fin.any() else 0.0
    max_abs = float(diff.max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    allowed = tol["atol"] + tol["rtol"] * np.abs(np.where(fin, expected, 0.0))
    over = diff > allowed
    if over.any():
        worst = np.unravel_index(int(np.argmax(diff - allowed)), diff.shape)
        where = tuple(int(i) for i in worst)
        return False, (f"{name}: {int(over.sum())} of {diff.size} entries out of tolerance; "
                       f"max abs err {max_abs:.3e} (allowed there {float(allowed[worst]):.3e} = atol {tol['atol']:.2e} "
                       f"+ rtol {tol['rtol']:.0e} * |expected|), max rel err {max_rel:.3e}; "
                       f"worst at {where}: expected {expected[worst]:.10g}, got {a[worst]:.10g}"), max_abs, max_rel
    return True, "", max_abs, max_rel


def _short(values: list, n: int = 12) -> str:
    return str(values) if len(values) <= n else f"[{', '.join(map(str, values[:n]))}, ... ({len(values)} values)]"


def _load_impl(impl):
    """A module object, an object with attributes, a dict of functions, a module name, or a path
    to a .py file."""
    if isinstance(impl, dict):
        return type("Impl", (), {k: staticmethod(v) for k, v in impl.items()})(), "dict"
    if not isinstance(impl, (str, Path)):
        return impl, getattr(impl, "__name__", type(impl).__name__)
    text = str(impl)
    if text.endswith(".py") or Path(text).is_file():
        path = Path(text).resolve()
        name = f"_oracle_impl_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module, str(path)
    return importlib.import_module(text), text


def check(directory, impl, *, profile: str = "float64", operations=None, backend: str | None = None) -> CheckResult:
    """Run `impl`'s functions over the exported cases in `directory`.

    impl: module, module name, path to a .py file, or dict of functions named like the reference.
    profile: "float64" (each case's tolerance) or "float32" (looser; float64-only cases skipped).
    operations: optional subset of operation names. backend: passed as backend=... when given
    (for slimgpt.ops). A missing function or one that raises NotImplementedError counts as not
    implemented; any other exception is a failure with its message.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    module, label = _load_impl(impl)
    if backend is not None:
        label += f" (backend={backend})"
    extra = {"backend": backend} if backend is not None else {}
    results = []
    for entry, args, expected in load_cases(directory):
        op = entry["operation"]
        if operations is not None and op not in operations:
            continue
        res = CaseResult(entry["id"], op, PASS)
        results.append(res)
        fn = getattr(module, op, None)
        if fn is None or not callable(fn):
            res.status, res.message = NOT_IMPLEMENTED, f"{label} has no function {op}"
            continue
        if profile not in entry["profiles"]:
            res.status, res.message = SKIPPED, f"case is float64-only (not in profile {profile})"
            continue
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = call(fn, op, _copy_args(args), extra)
        except NotImplementedError as exc:
            res.status, res.message = NOT_IMPLEMENTED, f"{op} raised NotImplementedError {exc}".strip()
            continue
        except Exception as exc:  # noqa: BLE001 - reported per case
            res.seconds = time.perf_counter() - t0
            if "raises" in entry and entry["raises"] in [c.__name__ for c in type(exc).__mro__]:
                continue  # the expected error
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            res.status = FAIL
            res.message = (f"raised {type(exc).__name__}: {exc} (at {Path(tb.filename).name}:{tb.lineno})"
                           + (f"; expected {entry['raises']}" if "raises" in entry else ""))
            continue
        res.seconds = time.perf_counter() - t0
        if "raises" in entry:
            res.status, res.message = FAIL, f"expected {entry['raises']} to be raised, but the call returned"
            continue
        try:
            outs = _as_outputs(op, result)
        except TypeError as exc:
            res.status, res.message = FAIL, str(exc)
            continue
        msgs, abs_errs, rel_errs = [], [], []
        for o, value in zip(entry["outputs"], outs):
            tol = o.get("tolerances", {}).get(profile)
            ok, msg, ea, er = compare_output(o["name"], o["compare"], value, expected[o["name"]], tol)
            if not ok:
                msgs.append(msg)
            if not np.isnan(ea):
                abs_errs.append(ea)
                rel_errs.append(er)
        if abs_errs:
            res.max_abs_err, res.max_rel_err = max(abs_errs), max(rel_errs)
        if msgs:
            res.status, res.message = FAIL, "\n".join(msgs)
    return CheckResult(label, profile, results)


# ------------------------------------------------------------------------------------------------
# Command line

def add_oracle_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add `oracle export|check` to a CLI's subparsers; the parser's `func(args)` returns the exit code."""
    p = subparsers.add_parser("oracle", help="export golden cases / check an implementation against them",
                              description=__doc__.split("\n\n")[0])
    _add_commands(p)
    return p


def _add_commands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="oracle_command", required=True)
    pe = sub.add_parser("export", help="write the golden cases (npz + index.json) to DIR")
    pe.add_argument("dir")
    pe.set_defaults(func=_cmd_export)
    pc = sub.add_parser("check", help="run an implementation over the cases in DIR")
    pc.add_argument("dir")
    pc.add_argument("--impl", required=True, help="module name (e.g. slimgpt.ops) or path to a .py file")
    pc.add_argument("--profile", choices=PROFILES, default="float64",
                    help="float64 (default) or float32 for single-precision implementations")
    pc.add_argument("--backend", default=None, help="pass backend=... to every call (slimgpt.ops)")
    pc.add_argument("--op", action="append", dest="operations", help="check only this operation (repeatable)")
    pc.add_argument("-v", "--verbose", action="store_true", help="also list not-implemented and skipped cases")
    pc.set_defaults(func=_cmd_check)


def _cmd_export(args) -> int:
    index = export(args.dir)
    n_err = sum("raises" in c for c in index["cases"])
    print(f"wrote {len(index['cases'])} cases ({n_err} expecting an error) to {args.dir}/index.json")
    return 0


def _cmd_check(args) -> int:
    result = check(args.dir, args.impl, profile=args.profile, operations=args.operations, backend=args.backend)
    print(result.table(verbose=args.verbose))
    return 0 if result.ok else 1


def main(argv=None) -> int:
    """`slimgpt oracle` with argv = ["export", DIR] or ["check", DIR, "--impl", MODULE, ...]."""
    parser = argparse.ArgumentParser(prog="slimgpt oracle", description=__doc__.split("\n\n")[0])
    _add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
