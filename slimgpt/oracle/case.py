"""One golden case: an operation, its arguments, and whose behaviour it checks (spec §0's tags).

Its own module so that the case tables (cases.py, coverage.py, trace.py) all import it and
cases.py can import the other two at its top, with no cycle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# Provenance tags (spec §0): whose behaviour a case checks. A case carries one or more.
PROVENANCE = ("paper", "published-code", "project")
# The operation's provenance unless a case's settings say otherwise (_provenance).
_OPERATION_PROVENANCE = {
    "hessian": ["project"], "accumulate_hessian": ["project"],      # n counts tokens (spec §1.2)
    "reconstruction_error": ["paper"],
    "prune_columns": ["paper", "published-code"], "prune_columns_naive": ["paper", "published-code"],
    "prune_columns_cholesky": ["paper", "published-code"], "head_errors": ["paper", "published-code"],
    "prune_heads": ["paper", "published-code"],
    "dgs_group_sizes": ["published-code"], "prune_channels": ["published-code"],  # the paper's DGS differs
    "ipr_ratios": ["paper"], "ipr_for_target": ["project"],
    "prune_attention_layer": ["paper", "published-code"], "prune_ffn_layer": ["published-code"],
    "prune_model": ["project"],
}


@dataclass
class Case:
    id: str
    operation: str
    args: dict[str, Any]          # argument name -> scalar / list / None / np.ndarray
    description: str
    tags: list[str] = field(default_factory=list)
    tolerance: str = "float64"    # row of slimgpt.testing.TOLERANCES for the float64 profile
    float32: bool = True          # also meaningful for a float32 implementation
    raises: bool = False          # the reference must raise (the error class is recorded)
    float32_tolerance: str = "float32"  # row for the float32 profiles

    def __post_init__(self):
        self.tags = _provenance(self) + [t for t in self.tags if t not in PROVENANCE]


def _provenance(case: Case) -> list[str]:
    """Paper / published code / project for one case (spec §0, §9's table)."""
    given = [t for t in case.tags if t in PROVENANCE]
    if given:
        return given
    a, op = case.args, case.operation
    if "retry" in case.tags or a.get("head_groups") is not None or "tie" in case.tags:
        return ["project"]  # the retry ladder, GQA quotas, the lowest-index tie rule
    if a.get("gcd") is False or a.get("group_sizes") is not None:
        return ["paper"]    # the -GCD / -DGS ablations: in the paper, no switch in the code
    if "dead" in case.tags or a.get("percdamp"):
        return ["published-code"]  # dead inputs and damping: not in the paper (spec §2.4)
    if op == "ipr_ratios" and a["n_layers"] == 32:
        return ["paper", "published-code"]  # the code's ln(32) equals Eq. 6's log(n) only here
    return list(_OPERATION_PROVENANCE[op])
