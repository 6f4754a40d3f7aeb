"""The golden-case table: named, seeded inputs for every operation of the reference API.

What this is: the cases `slimgpt oracle export` writes, ordinary shapes and the tricky ones
(dead columns, damping, a damping retry on an indefinite H, head_dim=1, one head, GQA quotas,
whole-group blocks, fixed vs Dynamic Group Sizes, compensate=False, gcd=False, IPR strategies,
DGS schedule edge cases), each tagged with whose behaviour it checks (paper, published code,
project). What it is not: the operations' signatures (operations.py), the cases that catch planted
bugs (coverage.py), the expected outputs (the reference defines them at export, files.py) or the
comparison (check.py).
"""
from __future__ import annotations

import numpy as np

from slimgpt.oracle.case import PROVENANCE, Case  # noqa: F401  (PROVENANCE re-exported)
from slimgpt.oracle.coverage import coverage_cases
from slimgpt.oracle.trace import trace_cases
from slimgpt.testing import calibration as _calibration
from slimgpt.testing import hessian_of as _H
from slimgpt.testing import indefinite as _indefinite
from slimgpt.testing import weights as _weights


def build_cases() -> list[Case]:
    """The full, deterministic case table (each group seeded on its own)."""
    return (_hessian_cases() + _column_cases() + _cholesky_form_cases() + _head_error_cases()
            + _head_cases() + _dgs_cases() + _channel_cases() + _error_cases() + _ipr_cases()
            + coverage_cases() + trace_cases())


def _rng(seed):
    return np.random.default_rng(seed)


def _hessian_cases() -> list[Case]:
    """Hessian (spec §1.2)."""
    cases: list[Case] = []
    add = cases.append
    r = _rng(1)
    add(Case("hessian.basic", "hessian", {"X": _calibration(r, 200, 16)},
             "H = 2 X^T X / n for 200 tokens of 16 inputs", ["tiny"]))
    r = _rng(2)
    add(Case("hessian.dead_column", "hessian", {"X": _calibration(r, 100, 12, dead=[3])},
             "an all-zero input column gives a zero row/column of H", ["dead"]))
    r = _rng(3)
    add(Case("hessian.one_token", "hessian", {"X": r.standard_normal((1, 8))},
             "a single token: H = 2 x x^T (rank one)", ["edge"]))
    r = _rng(4)
    X1, X2 = _calibration(r, 150, 16), _calibration(r, 90, 16)
    add(Case("accumulate_hessian.from_empty", "accumulate_hessian",
             {"H": None, "n_seen": 0, "X": X1},
             "the first chunk: H=None, n_seen=0 gives hessian(X) and n_seen=150", ["edge"]))
    add(Case("accumulate_hessian.running_mean", "accumulate_hessian",
             {"H": _H(X1), "n_seen": 150, "X": X2},
             "a second chunk of 90 tokens: the running mean equals hessian of all 240 tokens",
             ["streaming"]))
    return cases


def _column_cases() -> list[Case]:
    """Column OBS with the Cholesky trick (spec §2, Eqs. 3-4)."""
    cases: list[Case] = []
    add = cases.append
    col_cases = []
    r = _rng(10)
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
    r = _rng(11)
    Xd = _calibration(r, 256, 32, dead=[7])
    Wd = _weights(r, 16, 32)
    col_cases += [
        ("dead_pruned", {"W": Wd, "H": _H(Xd), "columns": np.array([7, 20])},
         "dead input 7 (diag H = 0) pruned together with column 20", ["dead"], "float64", True),
        ("dead_kept", {"W": Wd, "H": _H(Xd), "columns": np.array([20, 30])},
         "dead input 7 not in S: it is handled as diag 1 and its W column set to 0", ["dead"], "float64", True),
        ("dead_no_compensate", {"W": Wd, "H": _H(Xd), "columns": np.array([20, 30]), "compensate": False},
         "compensate=False with dead input 7 not in S: its column is zeroed too, the rest untouched (spec §2.4)",
         ["project", "dead", "ablation"], "float64", True),
    ]
    r = _rng(12)
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
             "H = -I cannot be repaired by damping: raises NotPositiveDefiniteError", ["error", "edge"],
             raises=True))
    return cases


def _cholesky_form_cases() -> list[Case]:
    """The Cholesky form itself (spec §2.3): W and a given H⁻¹ in, W and the losses out."""
    cases: list[Case] = []
    add = cases.append
    r = _rng(13)
    X = _calibration(r, 256, 48)
    W = _weights(r, 16, 48)
    G = np.linalg.inv(_H(X))
    for name, kw, desc in [
            ("single", {"columns": np.array([7])},
             "one column: e = W[:, q] / U[0,0], the Eq. (4) update through the factor's first row"),
            ("ordered_set", {"columns": np.array([30, 4, 11, 45])},
             "S in the given order: per-column losses ||e_i||^2 depend on the order, W_new does not"),
            ("survivors", {"columns": np.array([3, 20]), "survivors": np.arange(24, 48)},
             "only the listed survivors are compensated; columns in neither S nor K are untouched"),
            ("all_but_one", {"columns": np.arange(1, 48)}, "47 of 48 columns: the whole local loop")]:
        add(Case(f"prune_columns_cholesky.{name}", "prune_columns_cholesky", {"W": W, "Hinv": G, **kw}, desc,
                 ["cholesky"], "float64_solve"))
    return cases


def _head_error_cases() -> list[Case]:
    """Head errors, grouped Cholesky (spec §3.2, Eq. 5)."""
    cases: list[Case] = []
    add = cases.append
    r = _rng(20)
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
    return cases


def _head_cases() -> list[Case]:
    """Batched greedy head pruning (spec §3.3)."""
    cases: list[Case] = []
    add = cases.append
    r = _rng(30)
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
    add(Case("prune_heads.gqa_indivisible", "prune_heads",
             {"W": W, "H": H, "n_prune": 3, "head_dim": 8, "head_groups": 2},
             "3 heads over 2 KV groups: n_prune is not a multiple of the groups, raises ValueError "
             "(no rounding, spec §6.6)", ["gqa", "error", "edge"], raises=True))
    add(Case("prune_heads.scaled_H", "prune_heads", {"W": W, "H": 1000.0 * H, "n_prune": 3, "head_dim": 8},
             "H scaled by 1000: same selection and weights as prune_heads.basic (spec §10.1.9)",
             ["invariance"], "float64_solve"))
    # One head whose 4 inputs are near-copies of one signal: each column alone looks cheap
    # (large G[q,q]), the whole head is expensive. Only the grouped Cholesky (Eq. 5) sees it.
    r = _rng(33)
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
    r = _rng(31)
    Xd = _calibration(r, 256, 32, dead=[9])
    add(Case("prune_heads.dead_column", "prune_heads",
             {"W": _weights(r, 16, 32, block=4), "H": _H(Xd), "n_prune": 2, "head_dim": 4},
             "input 9 (in head 2) is dead", ["dead"], "float64_solve"))
    r = _rng(32)
    add(Case("prune_heads.damping_retry", "prune_heads",
             {"W": _weights(r, 16, 32, block=4), "H": _indefinite(r, 32), "n_prune": 2, "head_dim": 4},
             "slightly indefinite H at percdamp=0: damping retry (DampingWarning)", ["damping", "retry"],
             "float64_solve", False))
    return cases


def _dgs_cases() -> list[Case]:
    """Dynamic Group Size schedule (spec §4.2)."""
    cases: list[Case] = []
    add = cases.append
    for T, desc in [(0, "nothing to prune"), (1, "T=1"), (40, "T < 64: one group of T"),
                    (64, "T = 64 exactly"), (100, "64 then 36"), (688, "88, 64 x9, 24 (LLaMA-7B layer 0)"),
                    (1200, "344, 64 x13, 24"), (2064, "776, 132, 64 x18, 4"),
                    (2752, "1024, 304, 64 x22, 16 (r = 0.25)"), (5504, "1024, 992, 240, 64 x50, 48 (r = 0.5)"),
                    (7000, "1024, 1024, 427, 64 x70, 45")]:
        add(Case(f"dgs_group_sizes.T{T}", "dgs_group_sizes", {"n_prune": T}, f"DGS schedule for T={T}: {desc}",
                 ["schedule"] + (["edge"] if T < 100 else [])))
    return cases


def _channel_cases() -> list[Case]:
    """FFN channel pruning with DGS (spec §4)."""
    cases: list[Case] = []
    add = cases.append
    r = _rng(40)
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
    r = _rng(41)
    Xd = _calibration(r, 512, 96, dead=[5, 50])
    add(Case("prune_channels.dead_columns", "prune_channels",
             {"W": _weights(r, 16, 96), "H": _H(Xd), "n_prune": 10},
             "dead inputs 5 and 50 have zero error and are pruned first", ["dead"], "float64_solve"))
    return cases


def _error_cases() -> list[Case]:
    """Reconstruction error (spec §1.2, Eq. 1)."""
    cases: list[Case] = []
    add = cases.append
    r = _rng(50)
    X = _calibration(r, 256, 32)
    W = _weights(r, 8, 32)
    W2 = W.copy()
    W2[:, [3, 11]] = 0.0
    add(Case("reconstruction_error.zeroed", "reconstruction_error", {"W": W, "W_new": W2, "H": _H(X)},
             "two columns zeroed without compensation: tr(D H D^T) with D = W - W_new", []))
    add(Case("reconstruction_error.identical", "reconstruction_error", {"W": W, "W_new": W.copy(), "H": _H(X)},
             "W_new = W: error 0", ["edge"]))
    return cases


def _ipr_cases() -> list[Case]:
    """Incremental Pruning Ratio (spec §5, Eq. 6)."""
    cases: list[Case] = []
    add = cases.append
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
             "first > last is an error (use a '-decrease' strategy): raises ValueError", ["error", "edge"],
             raises=True))
    add(Case("ipr_for_target.unreachable", "ipr_for_target",
             {"n_layers": 32, "target": 0.9, "first": 0.0, "strategy": "log"},
             "target 0.9 from first 0 needs last >= 1: raises ValueError", ["error", "edge"], raises=True))
    add(Case("ipr_for_target.log_decrease_32_p2", "ipr_for_target",
             {"n_layers": 32, "target": 0.2, "first": 0.0625, "strategy": "log-decrease"},
             "log-decrease: the log list for the same target reversed, layer 0 gets last = 0.2495", ["schedule"]))
    add(Case("ipr_for_target.last_exactly_1", "ipr_for_target",
             {"n_layers": 2, "target": 0.75, "first": 0.5, "strategy": "linear"},
             "2 layers, linear, first 0.5, target 0.75 needs last = 1.0 exactly, outside [first, 1): "
             "raises ValueError (spec §5.4)", ["error", "edge"], raises=True))
    add(Case("ipr_for_target.uniform_other_first", "ipr_for_target",
             {"n_layers": 32, "target": 0.5, "first": 0.4, "strategy": "uniform"},
             "uniform with first 0.4 != target 0.5: no last can fix the mean, raises ValueError (spec §5.4)",
             ["error", "edge"], raises=True))
    return cases

