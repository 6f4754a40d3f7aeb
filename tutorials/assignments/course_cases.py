"""Cases the grader adds to the oracle's table: behaviour the spec fixes that the oracle's cases
do not separate from a plausible mistake.

- dead inputs with damping: the mean of diag H is taken after the dead inputs' diagonal became 1
  (spec §2.4); damping first, or the mean of the raw diagonal, gives other weights;
- compensate=False still downdates H between greedy iterations (spec §2.2), so the selection
  differs from one made on the full H every time;
- ties: heads go to the lowest index (spec §3.3), channels by a stable sort (spec §4.2);
- hidden cases: schedules whose expected values the report never prints.

Each builder checks, when the case is built, that the mistake it targets really gives another
answer, so a case that cannot fail is never graded. The expected outputs come from
slimgpt.reference like every other case.
"""
from __future__ import annotations

import numpy as np

from slimgpt import reference
from slimgpt.reference.damping import prepare_hessian
from slimgpt.oracle import Case
from slimgpt.testing import calibration, hessian_of, weights

DEAD = [3, 17]
DEAD_DAMPING = 0.1   # large, so that the mean with and without the dead inputs' 1s differ clearly


def build() -> list[Case]:
    return _dead_damped() + _no_compensate_downdates() + _ties() + _hidden()


def _hidden() -> list[Case]:
    """Cases whose expected values the report never prints (tag "hidden"), so that outputs
    harvested from failure messages and returned from a lookup table do not pass."""
    cases = [Case(f"dgs_group_sizes.hidden_{i}", "dgs_group_sizes", {"n_prune": T}, "a schedule not in the spec's table",
                  ["schedule", "hidden", "course"]) for i, T in enumerate((3001, 4444, 9000))]
    cases += [Case(f"ipr_ratios.hidden_{i}", "ipr_ratios", {"n_layers": n, "first": a, "last": b, "strategy": s},
                   "a schedule not among the other cases", ["schedule", "hidden", "course"])
              for i, (n, a, b, s) in enumerate([(24, 0.1, 0.4, "log"), (17, 0.05, 0.3, "linear-decrease")])]
    return cases


def _differs(a, b) -> bool:
    return not np.allclose(a, b, rtol=1e-6, atol=1e-9 * max(1.0, float(np.max(np.abs(b)))))


def _damped_first(W, H, percdamp):
    """The mistake: damping before the dead-input fix (so no input looks dead any more)."""
    H = H + percdamp * np.mean(np.diag(H)) * np.eye(len(H))
    return prepare_hessian(W, H, 0.0)


def _dead_damped() -> list[Case]:
    r = np.random.default_rng(60)
    X = calibration(r, 256, 32, dead=DEAD)
    H = hessian_of(X) * 4.0  # mean diag far from 1, so where the 1s enter the mean matters
    W = weights(r, 16, 32, block=4)
    args = {"W": W, "H": H, "percdamp": DEAD_DAMPING}
    _, good = prepare_hessian(W, H, DEAD_DAMPING)
    _, bad = _damped_first(W, H, DEAD_DAMPING)
    assert _differs(bad, good)
    desc = (f"dead inputs {DEAD} with percdamp={DEAD_DAMPING}: dead inputs first (diag 1, W column 0), then "
            "the damping with the mean of that diagonal")
    return [Case("prune_columns.dead_damped", "prune_columns", {**args, "columns": np.array([5, 17, 20])},
                 desc, ["dead", "damping", "course"], "float64_solve"),
            Case("prune_columns_naive.dead_damped", "prune_columns_naive", {**args, "columns": np.array([5, 17, 20])},
                 desc, ["dead", "damping", "course"], "float64_solve"),
            Case("prune_heads.dead_damped", "prune_heads", {**args, "n_prune": 2, "head_dim": 4},
                 desc, ["dead", "damping", "course"], "float64_solve"),
            Case("prune_channels.dead_damped", "prune_channels", {**args, "n_prune": 6, "group_sizes": 2},
                 desc, ["dead", "damping", "course"], "float64_solve")]


def _heads_without_downdate(W, H, n_prune, head_dim):
    """The mistake: compensate=False selecting on the full H every iteration (no downdate)."""
    G = np.linalg.inv(H)
    W = W.copy()
    pruned = np.zeros(W.shape[1] // head_dim, dtype=bool)
    for _ in range(n_prune):
        E = reference.head_errors(W, G, head_dim)
        E[pruned] = np.inf
        j = int(np.argmin(E))
        W[:, j * head_dim:(j + 1) * head_dim] = 0.0
        pruned[j] = True
    return np.flatnonzero(pruned)


def _channels_without_downdate(W, H, n_prune, g):
    G = np.linalg.inv(H)
    eps = np.sum(W ** 2, axis=0) / np.diag(G)
    return np.sort(np.argsort(eps, kind="stable")[:n_prune])


def _no_compensate_downdates() -> list[Case]:
    """Seeds searched once (deterministically) for inputs where the downdate changes the choice:
    correlated inputs across heads, so removing one head changes the others' H⁻¹ diagonal."""
    cases = []
    for seed in range(70, 200):
        r = np.random.default_rng(seed)
        X = calibration(r, 256, 24, mix=1.5)
        H, W = hessian_of(X), weights(r, 8, 24, block=4)
        _, heads = reference.prune_heads(W, H, 3, 4, compensate=False)
        if set(heads.tolist()) != set(_heads_without_downdate(W, H, 3, 4).tolist()):
            cases.append(Case("prune_heads.no_compensate_downdates", "prune_heads",
                              {"W": W, "H": H, "n_prune": 3, "head_dim": 4, "compensate": False},
                              "compensate=False: W is only zeroed, but H is still downdated after each head, "
                              "so later choices see the survivors' H⁻¹ (spec §2.2)", ["ablation", "course"],
                              "float64_solve"))
            break
    for seed in range(200, 400):
        r = np.random.default_rng(seed)
        X = calibration(r, 256, 24, mix=1.5)
        H, W = hessian_of(X), weights(r, 8, 24)
        _, ch = reference.prune_channels(W, H, 8, group_sizes=2, compensate=False)
        if set(ch.tolist()) != set(_channels_without_downdate(W, H, 8, 2).tolist()):
            cases.append(Case("prune_channels.no_compensate_downdates", "prune_channels",
                              {"W": W, "H": H, "n_prune": 8, "group_sizes": 2, "compensate": False},
                              "compensate=False in groups of 2: H is downdated after each group (spec §2.2)",
                              ["ablation", "course"], "float64_solve"))
            break
    assert len(cases) == 2, "no seed separates the downdate from its absence"
    return cases


def _ties() -> list[Case]:
    """Exact ties: H = 2 I (so G = I / 2 exactly and nothing is compensated) and repeated columns."""
    r = np.random.default_rng(80)
    head = r.standard_normal((8, 4))
    # heads 1, 4 and 6 are identical and the cheapest; 2 are pruned, so the tie is cut
    W = np.concatenate([3.0 * r.standard_normal((8, 4)) if j not in (1, 4, 6) else head for j in range(8)], axis=1)
    H = 2.0 * np.eye(32)
    _, heads = reference.prune_heads(W, H, 2, 4)
    assert heads.tolist() == [1, 4]
    r = np.random.default_rng(81)
    col = r.standard_normal(8)
    Wc = 3.0 * r.standard_normal((8, 96))
    tied = np.arange(5, 96, 3)              # 31 identical, cheapest channels
    Wc[:, tied] = col[:, None]
    Hc = 2.0 * np.eye(96)
    _, ch = reference.prune_channels(Wc, Hc, 20, group_sizes=20)
    eps = np.sum(Wc ** 2, axis=0) / np.diag(np.linalg.inv(Hc))
    assert ch.tolist() == tied[:20].tolist()
    assert set(np.argsort(-eps, kind="stable")[::-1][:20].tolist()) != set(ch.tolist())  # ties to the highest
    return [Case("prune_heads.ties", "prune_heads", {"W": W, "H": H, "n_prune": 2, "head_dim": 4},
                 "heads 1, 4, 6 have exactly equal errors and 2 are pruned: ties go to the lowest index "
                 "(spec §3.3)", ["ties", "course"]),
            Case("prune_channels.ties", "prune_channels", {"W": Wc, "H": Hc, "n_prune": 20, "group_sizes": 20},
                 "31 channels with exactly equal errors, 20 pruned in one group: a stable sort, ties to "
                 "the lowest index (spec §4.2)", ["ties", "course"])]
