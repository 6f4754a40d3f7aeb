"""Grade a SlimGPT assignment: run the golden-case oracle on a student's module, task by task.

Run:
    python tutorials/assignments/grade.py tutorials/assignments/student.py
    python tutorials/assignments/grade.py my_solution.py --cases golden/     # reuse exported cases
    python tutorials/assignments/grade.py my_solution.py --task 3 -v         # one task, all messages

Prints, per task, the cases passed, the points, and for each failure what went wrong (which
output, max error against the tolerance, which indices differed) plus a hint. Exits 0 when the
score reaches --pass-score (default 100), 1 otherwise.

The expected outputs come from slimgpt.reference (float64); see docs/oracle.md for the format.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass

from slimgpt import oracle

# (number, title, operations, points), in the order of README.md
TASKS = [
    (1, "Hessian (Eq. 1)", ["hessian", "accumulate_hessian"], 10),
    (2, "Column OBS and the Cholesky trick (Eqs. 3-4)", ["prune_columns_naive", "prune_columns",
                                                        "reconstruction_error"], 25),
    (3, "Head errors with the grouped Cholesky (Eq. 5)", ["head_errors"], 15),
    (4, "Batched greedy head pruning (Algorithm 1)", ["prune_heads"], 20),
    (5, "Dynamic Group Size and channel pruning", ["dgs_group_sizes", "prune_channels"], 20),
    (6, "Incremental Pruning Ratio (Eq. 6)", ["ipr_ratios", "ipr_for_target"], 10),
]

# Hints for a failed case, matched by case-id fragments; the first match wins.
HINTS = [
    ("correlated_head_no_gcd", "with gcd=False use the plain diagonal G[c, c] of H^-1"),
    ("correlated_head", "summing single-column errors with the plain diag(H^-1) is the -GCD ablation; "
                        "use L_j = chol(G[C_j, C_j]) and divide by L_j[k, k]^2 (Eq. 5)"),
    ("gcd_matters", "head selection must use the grouped-Cholesky head error (Eq. 5), recomputed "
                    "from a fresh H^-1 every iteration"),
    ("no_compensate", "compensate=False: zero the pruned columns (and dead inputs), leave the others"),
    ("dead", "dead inputs (diag H == 0): set H[q,q] = 1 and W[:, q] = 0 before anything else"),
    ("damping_retry", "when the Cholesky fails, retry with the next RETRY_PERCDAMP and warn"),
    ("not_positive_definite", "raise NotPositiveDefiniteError when no damping on the ladder helps"),
    ("damped", "damping adds percdamp * mean(diag H) to the diagonal (after the dead-input fix)"),
    ("gqa", "head_groups: every KV group loses n_prune / n_groups heads; skip groups at quota"),
    ("scaled_H", "the result must not depend on the scale of H"),
    ("reconstruction_error", "1/2 tr((W - W_new) H (W - W_new)^T)"),
    ("accumulate", "running mean: (n_seen * H + 2 X^T X) / (n_seen + n); H=None starts fresh"),
    ("dgs_group_sizes", "b0 = (T - 512) // 2; g = min(T - done, max(b, 64), 1024); b = (b - 512) // 2"),
    ("fixed_group", "group_sizes as an int g means groups of g, the last one smaller"),
    ("ipr_for_target", "last = first + (target - first) / c, c = lgamma(n + 1) / (n log n) for log, 1/2 linear"),
    ("first_above_last", "raise ValueError when first > last"),
    ("ipr_ratios", "Eq. (6) divides by log(n_layers); decrease strategies reverse the list"),
    ("head_errors", "E_j = sum_k ||W[:, j*d + k]||^2 / L_j[k, k]^2 with L_j = chol(G[C_j, C_j]), G = Hinv (Eq. 5)"),
    ("hessian", "H = 2 X^T X / n with X (n, d_in), float64"),
    ("prune_heads", "one head per iteration: fresh H^-1, head errors of the current W, remove the "
                    "cheapest head with the Cholesky update, then identity rows/columns in H"),
    ("prune_channels", "each group: fresh H^-1, errors ||W[:,c]||^2 / G[c,c], the g smallest jointly"),
    ("prune_columns", "OBS: W -= (W[:, q] / G[q, q]) outer G[q, :], then downdate G (Eq. 3)"),
]


@dataclass
class TaskScore:
    number: int
    title: str
    passed: int
    total: int
    points: float
    max_points: int
    failures: list  # CaseResult
    not_implemented: int


def hint(case_id: str) -> str:
    return next((h for key, h in HINTS if key in case_id), "")


def grade(student, cases_dir=None, tasks=None):
    """Return (score out of 100, [TaskScore], CheckResult)."""
    with tempfile.TemporaryDirectory() as tmp:
        if cases_dir is None:
            oracle.export(tmp)
            cases_dir = tmp
        result = oracle.check(cases_dir, student)
    scores = []
    for number, title, ops, points in TASKS:
        if tasks and number not in tasks:
            continue
        mine = [c for c in result.cases if c.operation in ops]
        passed = sum(c.status == oracle.PASS for c in mine)
        scores.append(TaskScore(number, title, passed, len(mine), points * passed / max(len(mine), 1), points,
                                [c for c in mine if c.status == oracle.FAIL],
                                sum(c.status == oracle.NOT_IMPLEMENTED for c in mine)))
    total = sum(s.points for s in scores) * 100 / max(sum(s.max_points for s in scores), 1)
    return total, scores, result


def report(total, scores, verbose=False) -> str:
    lines = []
    for s in scores:
        mark = "ok " if s.passed == s.total else ("-- " if s.passed == 0 and not s.failures else "XX ")
        lines.append(f"{mark}Task {s.number}: {s.title:<48} {s.passed:3d}/{s.total:<3d} cases  "
                     f"{s.points:5.1f}/{s.max_points} points")
        if s.not_implemented:
            lines.append(f"     {s.not_implemented} case(s) not implemented yet (NotImplementedError or missing)")
        for c in s.failures[: None if verbose else 3]:
            lines.append(f"     FAIL {c.id}")
            for m in c.message.splitlines():
                lines.append(f"          {m}")
            if hint(c.id):
                lines.append(f"          hint: {hint(c.id)}")
        if not verbose and len(s.failures) > 3:
            lines.append(f"     ... and {len(s.failures) - 3} more failures (-v shows all)")
    lines.append(f"\nscore: {total:.1f} / 100")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("student", help="path to the student's .py file (or a module name)")
    p.add_argument("--cases", help="an exported oracle directory (default: export to a temp dir)")
    p.add_argument("--task", type=int, action="append", help="grade only this task number (repeatable)")
    p.add_argument("--pass-score", type=float, default=100.0, help="exit 0 at or above this score")
    p.add_argument("-v", "--verbose", action="store_true", help="show every failure")
    args = p.parse_args(argv)
    total, scores, _ = grade(args.student, args.cases, args.task)
    print(report(total, scores, args.verbose))
    return 0 if total >= args.pass_score - 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
