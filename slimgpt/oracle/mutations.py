"""Planted bugs: each applied to a copy of the reference must fail the cases listed with it.

What this is: the suite's proof that its cases catch the mistakes implementations really make.
Each Mutation replaces one exact piece of text in one file of a copy of slimgpt.reference; the
copy is imported as a package of its own and checked against the golden cases it names.
docs/oracle.md lists the same table. What it is not: a test of the reference (tests/ is).
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str           # in the reference package
    old: str            # exact text, present once
    new: str
    catches: tuple      # case ids that must each fail
    what: str


PLANTED = (
    Mutation("damping_mean_before_dead_fix", "damping.py",
             "    dead = np.diag(H) == 0\n    H[dead, dead] = 1.0\n    W[:, dead] = 0.0\n"
             "    # The mean is taken after the dead entries became 1, as in the published code.\n"
             "    H[np.diag_indices_from(H)] += percdamp * np.mean(np.diag(H))\n",
             "    damp = percdamp * np.mean(np.diag(H))\n    dead = np.diag(H) == 0\n    H[dead, dead] = 1.0\n"
             "    W[:, dead] = 0.0\n    H[np.diag_indices_from(H)] += damp\n",
             ("prune_columns.dead_damped", "prune_channels.dead_damped"),
             "the damping mean taken before dead inputs get their unit diagonal"),
    Mutation("dgs_off_by_one", "channels.py",
             "sizes, b, remaining = [], (T - DGS_OFFSET) // 2, T",
             "sizes, b, remaining = [], (T - DGS_OFFSET) // 2 + 1, T",
             ("prune_channels.dgs_full_schedule",),
             "the first Dynamic Group Size one channel too large"),
    Mutation("dust_in_removed_columns", "obs.py",
             "    W[:, S] = 0.0\n    return W, np.sum(E ** 2, axis=0)",
             "    W[:, S] = 1e-15\n    return W, np.sum(E ** 2, axis=0)",
             ("prune_columns.single",),
             "removed columns left at 1e-15 instead of exactly 0"),
    Mutation("head_dim_and_count_swapped", "heads.py",
             "    d = _checks.head_dim(head_dim, W.shape[1])\n    n_heads = W.shape[1] // d\n    n_prune",
             "    d = W.shape[1] // _checks.head_dim(head_dim, W.shape[1])\n    n_heads = W.shape[1] // d\n    n_prune",
             ("prune_heads.six_heads_of_12",),
             "head_dim taken as the number of heads in prune_heads"),
    Mutation("lower_instead_of_upper_factor", "obs.py",
             'U = cholesky(G[np.ix_(order, order)], "H⁻¹ reordered").T',
             'U = cholesky(G[np.ix_(order, order)], "H⁻¹ reordered")',
             ("prune_columns.set_unsorted", "prune_columns_cholesky.ordered_set"),
             "the lower Cholesky factor of the reordered H⁻¹ used where the upper one is needed"),
    Mutation("hessian_without_factor_2", "hessian.py",
             "return _finite(2.0 * (X.T @ X) / X.shape[0], X)", "return _finite((X.T @ X) / X.shape[0], X)",
             ("hessian.basic",),
             "H = XᵀX / n instead of 2 XᵀX / n"),
    Mutation("summed_single_columns", "heads.py",
             "    if gcd:\n        g = grouped_cholesky_diag(G, d)", "    if False:\n        g = grouped_cholesky_diag(G, d)",
             ("head_errors.correlated_head", "prune_heads.gcd_matters"),
             "head errors from the plain diagonal of H⁻¹ (summed single columns) instead of the grouped Cholesky"),
    Mutation("unstable_tie_order", "channels.py",
             'S = np.argsort(eps, kind="stable")[:g]', 'S = (eps.size - 1 - np.argsort(eps[::-1], kind="stable"))[:g]',
             ("prune_channels.tie",),
             "ties in the channel error broken towards the higher index"),
    Mutation("unstable_head_tie_order", "heads.py",
             "        j = int(np.argmin(E))", "        j = int(E.size - 1 - np.argmin(E[::-1]))",
             ("prune_heads.tie",),
             "ties in the head error broken towards the higher head index"),
    Mutation("no_compensate_keeps_dead_columns", "obs.py",
             "    W_new = W0.copy()\n    W_new[:, S] = 0.0", "    W_new = np.array(W, dtype=np.float64)\n    W_new[:, S] = 0.0",
             ("prune_columns.dead_no_compensate",),
             "compensate=False leaves the dead input columns as they were instead of zeroing them"),
    Mutation("gqa_quota_off_by_one", "heads.py",
             "minlength=groups.max() + 1) >= quota", "minlength=groups.max() + 1) > quota",
             ("prune_heads.gqa_uneven_groups",),
             "a KV group counted as full only after quota + 1 pruned heads"),
)


def mutant(mutation: Mutation, folder: Path):
    """A copy of slimgpt.reference with `mutation` applied, imported as its own package."""
    from slimgpt import reference

    name = f"_slimgpt_mutant_{mutation.name}"
    target = Path(folder) / name
    shutil.copytree(Path(reference.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    path = target / mutation.file
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise ValueError(f"planted bug {mutation.name}: the text to replace is not in {mutation.file} exactly once "
                         f"(the reference changed; update slimgpt/oracle/mutations.py)")
    path.write_text(text.replace(mutation.old, mutation.new))
    spec = importlib.util.spec_from_file_location(name, target / "__init__.py", submodule_search_locations=[str(target)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_mutation(mutation: Mutation, golden) -> dict[str, str]:
    """Check a mutated reference on the cases the mutation names: {case id: status}."""
    from slimgpt.oracle.check import check
    from slimgpt.oracle.layers import expected_namespace

    with tempfile.TemporaryDirectory(prefix="slimgpt-mutant-") as tmp:
        impl = expected_namespace(mutant(mutation, Path(tmp)))
        result = check(golden, impl, case_ids=mutation.catches)
    for key in [k for k in sys.modules if k.startswith(f"_slimgpt_mutant_{mutation.name}")]:
        del sys.modules[key]
    return {c.id: c.status for c in result.cases if c.id in mutation.catches}
