"""Hints chosen from what a wrong output shows.

What this is: for a failed case, `diagnose` recomputes the case with the mistakes students make
(a missing factor 2, the lower instead of the upper Cholesky factor, summed single-column errors,
damping before the dead-input fix, ties to the highest index, ...) and names the one whose output
the submission reproduced. `hint(op, pattern, level)` gives the text for a hint level:

    0  which property failed and the spec section to read (never the steps)
    1  what the output looks like (the diagnosis)
    2  why that is wrong: the convention or the lemma involved
    3  the step itself

What it is not: the comparison (grade.py) or the expected outputs (slimgpt.reference).
"""
from __future__ import annotations

import numpy as np

from slimgpt import reference
from slimgpt.reference.damping import prepare_hessian

# Level 0, per operation: the property and where to read (no steps).
PROPERTY = {
    "hessian": "H is not the Hessian of the layer objective (spec §1.2, Eq. 1)",
    "accumulate_hessian": "the streamed H differs from the Hessian of all tokens seen (spec §1.2)",
    "prune_columns_naive": "the survivors are not the OBS optimum for the removed columns (spec §2.1-2.2, §2.4)",
    "prune_columns_cholesky": "the result differs from sequential OBS on the given H^-1 (spec §2.3)",
    "prune_columns": "the survivors are not the OBS optimum for the removed columns (spec §2.2-2.4)",
    "reconstruction_error": "the value is not the layer objective of Eq. 1 written through H (spec §1.2)",
    "head_errors": "the head errors are not the grouped-Cholesky estimate (spec §3.2, Eq. 5)",
    "prune_heads": "the heads chosen or the compensated weights differ from Batched Greedy Pruning (spec §3.3)",
    "dgs_group_sizes": "the group sizes differ from the published Dynamic Group Size schedule (spec §4.2)",
    "prune_channels": "the channels chosen or the compensated weights differ from spec §4.2",
    "ipr_ratios": "the per-layer ratios differ from Eq. 6 and its strategies (spec §5.2)",
    "ipr_for_target": "the endpoints do not give the target mean (spec §5.4)",
    "answers": "the number differs from the one the question's recipe gives (README.md, the unit's questions)",
    "gcd_counterexample": "the input does not show the grouped Cholesky changing the choice (spec §3.1-3.2)",
    "remove_set": "W or the downdated H^-1 differs from removing the set at once (spec §3.4, Eqs. 3-4 for a set)",
    "prune_heads_fast": "the fast loop must give exactly what prune_heads gives (spec §3.4)",
    "prune_channels_fast": "the fast loop must give exactly what prune_channels gives (spec §3.4)",
    "model_perplexity": "the perplexity differs: check the forward pass against the conventions in student.py (spec §6)",
    "prune_llama": "the per-layer trace differs from the pipeline's: the ratios, what each layer is calibrated on, "
                   "or what is removed with the heads and channels (spec §5.4, §6.3-6.4)",
    "prune_heads_lazy": "the lazy form must give exactly what prune_heads gives (spec §3.4, docs/cpp.md)",
    "prune_channels_lazy": "the lazy form must give exactly what prune_channels gives (spec §3.4, docs/cpp.md)",
    "timing": "one factorisation must beat one inverse per head on a layer where it is several times faster "
              "(spec §3.4, docs/cpp.md)",
}

# pattern -> (level 1: what the output shows, level 2: why, level 3: the step)
PATTERNS = {
    "half": ("your H is exactly half of the expected one",
             "differentiate ||W X^T - W' X^T||^2 / n twice with respect to a row of W",
             "H = 2 X^T X / n"),
    "n_minus_1": ("your H is off by the factor n / (n - 1)",
                  "Eq. 1 averages over the n tokens; this is not a sample covariance",
                  "divide by n, not n - 1"),
    "token_gram": ("your H has the shape (n, n): a Gram matrix of tokens",
                   "H acts on the d_in input columns of W",
                   "X is (n, d_in): H = 2 X^T X / n is (d_in, d_in)"),
    "last_chunk": ("your H equals the Hessian of the new chunk alone",
                   "the earlier n_seen tokens must keep their weight",
                   "weight the old H by n_seen and the new chunk by its n tokens"),
    "equal_weights": ("your H is the plain average of the old H and the new chunk's Hessian",
                      "a running mean over tokens weights each chunk by its token count",
                      "(n_seen H + 2 X^T X) / (n_seen + n)"),
    "uncompensated": ("your survivors are the input columns unchanged: nothing was compensated",
                      "OBS moves the removed columns' contribution onto the survivors through H^-1",
                      "W_K - W_S (G_SS)^-1 G_SK, or the Cholesky form of spec §2.3"),
    "uncompensated_or_lower": ("your survivors are the input columns unchanged: nothing was compensated; the lower "
                               "Cholesky factor L used where the upper factor U belongs gives exactly this (L is 0 "
                               "right of its diagonal, so every update vanishes)",
                               "np.linalg.cholesky returns L with A = L L^T; spec §2.3 writes G_perm = U^T U, and "
                               "OBS moves the removed columns' contribution onto the survivors",
                               "U = L^T of the reordered G; the local and global updates use the rows of U"),
    "lower_factor": ("your result is what the lower Cholesky factor L gives where the upper factor U belongs",
                     "np.linalg.cholesky returns L with A = L L^T; spec §2.3 writes G_perm = U^T U",
                     "U = L^T of the reordered G; the local and global updates use the rows of U"),
    "unpermuted": ("your result is what the factor of G in its original column order gives",
                   "row i of the factor is the downdate after the columns before it: S must come first",
                   "factor G[order, order] with order = S (in the given order), then the survivors"),
    "damping_before_dead": ("your result matches damping H before the dead inputs were handled",
                            "after damping no diagonal entry is 0, so the dead inputs are never found",
                            "dead inputs first (diag 1, W column 0), then the damping (spec §2.4)"),
    "mean_before_dead": ("your result matches damping with the mean of the raw diagonal",
                         "the dead inputs' diagonal is 1 when the mean is taken",
                         "mean(diag H) after setting the dead inputs' diagonal to 1 (spec §2.4)"),
    "half_losses": ("your losses are half of the expected ones",
                    "the losses returned are ||e_i||^2; the objective is half their sum",
                    "losses[i] = ||e_i||^2 with e_i = W[:, s_i] / U[i, i]"),
    "summed_single": ("your head errors are the single-column errors summed over each head (the -GCD ablation)",
                      "Eq. 4 holds for one column; removing a second column of the same head needs the "
                      "Eq. 3 downdate first (spec §3.1, Lemma ii)",
                      "E_j = sum_k ||W[:, j d + k]||^2 / L_j[k, k]^2 with L_j = chol(G[C_j, C_j])"),
    "grouped_for_no_gcd": ("with gcd=False your errors still use the grouped Cholesky",
                           "gcd=False is the ablation: the plain diagonal of H^-1",
                           "E_j = sum_k ||W[:, j d + k]||^2 / G[j d + k, j d + k]"),
    "unsquared_diag": ("your errors divide by L_j[k, k] where its square belongs",
                       "L_j[k, k]^2 is the downdated diagonal entry of G (Lemma ii)",
                       "divide by L_j[k, k]^2"),
    "summed_selection": ("your heads are the ones the summed single-column errors choose",
                         "the selection must use the grouped-Cholesky head error (spec §3.2)",
                         "E_j from head_errors(W, G, d) with gcd=True, on a fresh G every iteration"),
    "no_downdate": ("with compensate=False your later choices ignore the heads/channels already removed",
                    "compensate=False skips the weight update only; H is still downdated (spec §2.2)",
                    "after each removal replace the removed rows/columns of H by the identity"),
    "ties_high": ("on exactly equal errors you chose the higher indices",
                  "the spec fixes ties: the lowest index (spec §3.3 heads, §4.2 channels)",
                  "np.argmin for heads; np.argsort(..., kind='stable') for channels"),
    "no_quota": ("your heads ignore the KV-group quotas",
                 "with head_groups every group loses the same number of heads (spec §6.6)",
                 "a head is eligible only while its group is below n_prune / n_groups"),
    "dgs_boundary": ("your group sizes add up to T but differ from the schedule (the failure names the first "
                     "differing position)",
                     "each group size follows from the previous one by the spec §4.2 recurrence; check yours "
                     "against the table for T = 688 and T = 2752",
                     "b_0 = (T - 512) // 2; g_k = min(T - done, max(b_k, 64), 1024); b_{k+1} = (b_k - 512) // 2"),
    "dgs_sum": ("your group sizes do not add up to T",
                "every channel to prune belongs to exactly one group",
                "stop when the groups cover T; the last group takes what is left"),
    "dgs_min8": ("your smallest group is 8 (the paper's prose), not the code's 64",
                 "the project follows the published code's schedule (spec §4.2)",
                 "max(b_k, 64)"),
    "ipr_denominator": ("your ratios use another denominator than log(n)",
                        "Eq. 6 divides by log(n) so that the last layer gets `last` exactly",
                        "r_i = first + (last - first) log(i + 1) / log(n)"),
    "ipr_not_reversed": ("your decrease strategy is not the increasing list reversed",
                         "a -decrease strategy gives layer 0 the value `last`",
                         "reverse the log / linear list"),
    "ipr_wrong_c": ("your last ratio uses the wrong mean factor c",
                    "the mean of log(i + 1) / log(n) over the layers is log(n!) / (n log n), not 1/2",
                    "last = first + (target - first) / c"),
}


def hint(op: str, pattern: str | None, level: int) -> str:
    text = PROPERTY.get(op, "")
    if level >= 1 and pattern in PATTERNS:
        text = PATTERNS[pattern][0] + (f"; {PATTERNS[pattern][1]}" if level >= 2 else "") \
            + (f"; step: {PATTERNS[pattern][2]}" if level >= 3 else "")
    return text


def _close(got, want) -> bool:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-300)
    return bool(np.allclose(got, want, rtol=1e-6, atol=1e-8 * scale))


def _same_set(got, want) -> bool:
    return sorted(np.asarray(got).astype(np.int64).ravel().tolist()) == sorted(np.asarray(want).ravel().tolist())


def diagnose(op: str, args: dict, got: dict) -> str | None:
    """The name of the mistake whose output `got` reproduces, or None."""
    try:
        for pattern, variant in _VARIANTS.get(op, []):
            if variant(args, got):
                return pattern
    except Exception:  # noqa: BLE001 - a variant that does not apply to these inputs says nothing
        return None
    return None


# ------------------------------------------------------------------------------------------------
# The variants: each returns True when `got` matches the mistake on these inputs.

def _f(a):
    return np.asarray(a, dtype=np.float64)


def _factor_variant(W, G, S, K, *, lower=False, unpermuted=False):
    """The Cholesky form with a wrong factor: L in place of U, or the unreordered G."""
    order = np.arange(G.shape[0]) if unpermuted else np.concatenate([S, K])
    L = np.linalg.cholesky(G[np.ix_(order, order)])
    U = L if lower else L.T
    pos = {int(c): i for i, c in enumerate(order)}
    W = W.copy()
    rows = [pos[int(s)] for s in S]
    E = np.zeros((W.shape[0], len(S)))
    for i, s in enumerate(S):
        E[:, i] = W[:, s] / U[rows[i], rows[i]]
        W[:, S[i:]] -= np.outer(E[:, i], U[rows[i], [pos[int(t)] for t in S[i:]]])
    W[:, K] -= E @ U[np.ix_(rows, [pos[int(k)] for k in K])]
    W[:, S] = 0.0
    return W


def _columns_setup(args):
    W, S = _f(args["W"]), np.asarray(args["columns"], dtype=np.int64)
    if "Hinv" in args:
        return W, _f(args["Hinv"]), S
    W, H = prepare_hessian(W, _f(args["H"]), float(args.get("percdamp", 0.0)))
    return W, np.linalg.inv(H), S


def _survivors(args, W, S):
    if args.get("survivors") is not None:
        return np.asarray(args["survivors"], dtype=np.int64)
    return np.setdiff1d(np.arange(W.shape[1]), S)


def _uncompensated(args, got):
    W, _, S = _columns_setup(args)
    W = W.copy()
    W[:, S] = 0.0
    return _close(got["W_new"], W)


def _factor(lower=False, unpermuted=False):
    def check(args, got):
        W, G, S = _columns_setup(args)
        return S.size > 0 and _close(got["W_new"], _factor_variant(W, G, S, _survivors(args, W, S), lower=lower,
                                                                   unpermuted=unpermuted))
    return check


def _wrong_prepare(kind):
    def prepare(W, H, p):
        if kind == "damping_before_dead":
            H = H + p * np.mean(np.diag(H)) * np.eye(len(H))
            return prepare_hessian(W, H, 0.0)
        W, H0 = prepare_hessian(W, H, 0.0)
        return W, H0 + (p * np.mean(np.diag(H)) - 0.0) * np.eye(len(H))
    return prepare


def _prepare_variant(kind, op):
    def check(args, got):
        p = float(args.get("percdamp", 0.0))
        if p == 0 or not np.any(np.diag(_f(args["H"])) == 0):
            return False
        W, H = _wrong_prepare(kind)(_f(args["W"]), _f(args["H"]), p)
        extra = {k: v for k, v in args.items() if k not in ("W", "H", "percdamp")}
        fn = getattr(reference, op)
        result = fn(W, H, *[extra.pop(k) for k in _POSITIONAL[op]], **extra)
        result = result if isinstance(result, tuple) else (result,)
        return _close(got["W_new"], result[0])
    return check


_POSITIONAL = {"prune_columns": ["columns"], "prune_columns_naive": ["columns"],
               "prune_heads": ["n_prune", "head_dim"], "prune_channels": ["n_prune"]}


def _half_losses(args, got):
    _, losses = reference.prune_columns_cholesky(_f(args["W"]), _f(args["Hinv"]), args["columns"],
                                                 survivors=args.get("survivors"))
    return _close(got["losses"], losses / 2)


def _head_variant(kind):
    def check(args, got):
        W, G, d = _f(args["W"]), _f(args["Hinv"]), int(args["head_dim"])
        if kind == "summed_single":
            return args.get("gcd", True) and d > 1 and _close(got["errors"], reference.head_errors(W, G, d, gcd=False))
        if kind == "grouped_for_no_gcd":
            return not args.get("gcd", True) and _close(got["errors"], reference.head_errors(W, G, d))
        g = np.sqrt(reference.grouped_cholesky_diag(G, d))
        return _close(got["errors"], np.sum(np.sum(W ** 2, axis=0).reshape(-1, d) / g, axis=1))
    return check


def _selection(kind):
    def check(args, got):
        W, H = _f(args["W"]), _f(args["H"])
        if kind == "summed_selection":
            if not args.get("gcd", True):
                return False
            _, heads = reference.prune_heads(W, H, args["n_prune"], args["head_dim"], gcd=False,
                                             percdamp=args.get("percdamp", 0.0))
            want = reference.prune_heads(W, H, args["n_prune"], args["head_dim"], percdamp=args.get("percdamp", 0.0))[1]
            return not _same_set(heads, want) and _same_set(got["pruned_heads"], heads)
        if kind == "no_quota":
            if args.get("head_groups") is None:
                return False
            _, heads = reference.prune_heads(W, H, args["n_prune"], args["head_dim"],
                                             percdamp=args.get("percdamp", 0.0))
            return _same_set(got["pruned_heads"], heads)
        return False
    return check


def _no_downdate(op):
    def check(args, got):
        if args.get("compensate", True):
            return False
        W, H = prepare_hessian(_f(args["W"]), _f(args["H"]), float(args.get("percdamp", 0.0)))
        G = np.linalg.inv(H)
        if op == "prune_heads":
            d = int(args["head_dim"])
            pruned = np.zeros(W.shape[1] // d, dtype=bool)
            for _ in range(int(args["n_prune"])):
                E = reference.head_errors(W, G, d)
                E[pruned] = np.inf
                pruned[int(np.argmin(E))] = True
            return _same_set(got["pruned_heads"], np.flatnonzero(pruned))
        eps = np.sum(W ** 2, axis=0) / np.diag(G)
        return _same_set(got["pruned_channels"], np.argsort(eps, kind="stable")[: int(args["n_prune"])])
    return check


def _ties_high(op):
    def check(args, got):
        W, H = _f(args["W"]), _f(args["H"])
        n = W.shape[1]
        rev = np.arange(n)[::-1]
        if op == "prune_heads":
            d = int(args["head_dim"])
            heads_rev = np.arange(n // d)[::-1]
            cols = (heads_rev[:, None] * d + np.arange(d)[None, :]).ravel()
            extra = {k: v for k, v in args.items() if k not in ("W", "H", "n_prune", "head_dim")}
            _, h = reference.prune_heads(W[:, cols], H[np.ix_(cols, cols)], args["n_prune"], d, **extra)
            return _same_set(got["pruned_heads"], heads_rev[h]) and not _same_set(got["pruned_heads"], h) \
                and not _same_set(heads_rev[h], reference.prune_heads(W, H, args["n_prune"], d, **extra)[1])
        extra = {k: v for k, v in args.items() if k not in ("W", "H", "n_prune")}
        _, c = reference.prune_channels(W[:, rev], H[np.ix_(rev, rev)], args["n_prune"], **extra)
        want = reference.prune_channels(W, H, args["n_prune"], **extra)[1]
        return not _same_set(rev[c], want) and _same_set(got["pruned_channels"], rev[c])
    return check


def _dgs(T, *, minimum=64):
    sizes, b, left = [], (T - 512) // 2, T
    while left > 0:
        g = min(left, max(b, minimum), 1024)
        sizes.append(g)
        left -= g
        b = (b - 512) // 2
    return sizes


def _dgs_variant(kind):
    def check(args, got):
        T = int(args["n_prune"])
        sizes = np.asarray(got["group_sizes"]).astype(np.int64).ravel().tolist()
        if kind == "dgs_min8":
            return T > 8 and sizes == _dgs(T, minimum=8)
        if kind == "dgs_sum":
            return sum(sizes) != T
        return sum(sizes) == T
    return check


def _ipr_variant(kind):
    def check(args, got):
        r = _f(got["ratios"])
        if kind == "ipr_not_reversed":
            s = args.get("strategy", "log")
            return s.endswith("-decrease") and _close(r, reference.ipr_ratios(args["n_layers"], args["first"],
                                                                              args["last"], s.split("-")[0]))
        if kind == "ipr_wrong_c":
            n, t = int(args["n_layers"]), float(args["target"])
            first = 0.3125 * t if args.get("first") is None else float(args["first"])
            return args.get("strategy", "log") == "log" and n > 1 and _close(
                r, reference.ipr_ratios(n, first, first + (t - first) / 0.5, "log"))
        n = int(args["n_layers"])
        return args.get("strategy", "log") == "log" and n > 2 and not _close(
            r, reference.ipr_ratios(n, args["first"], args["last"], "log"))
    return check


def _hessian_variant(kind):
    def check(args, got):
        X = _f(args["X"])
        H = _f(got["H"])
        if kind == "token_gram":
            return H.shape == (X.shape[0], X.shape[0]) and X.shape[0] != X.shape[1]
        if kind == "half":
            return _close(H, X.T @ X / X.shape[0])
        return X.shape[0] > 1 and _close(H, 2 * X.T @ X / (X.shape[0] - 1))
    return check


def _accumulate_variant(kind):
    def check(args, got):
        if args.get("H") is None or not args.get("n_seen"):
            return False
        Hx = reference.hessian(args["X"])
        want = Hx if kind == "last_chunk" else (_f(args["H"]) + Hx) / 2
        return _close(got["H"], want)
    return check


_COLUMNS = [("uncompensated_or_lower", lambda args, got: _uncompensated(args, got) and _factor(lower=True)(args, got)),
            ("uncompensated", _uncompensated), ("lower_factor", _factor(lower=True)),
            ("unpermuted", _factor(unpermuted=True))]
_VARIANTS = {
    "hessian": [(k, _hessian_variant(k)) for k in ("token_gram", "half", "n_minus_1")],
    "accumulate_hessian": [(k, _accumulate_variant(k)) for k in ("last_chunk", "equal_weights")],
    "prune_columns_naive": [_COLUMNS[1]] + [(k, _prepare_variant(k, "prune_columns_naive"))
                                            for k in ("damping_before_dead", "mean_before_dead")],
    "prune_columns": _COLUMNS + [(k, _prepare_variant(k, "prune_columns"))
                                 for k in ("damping_before_dead", "mean_before_dead")],
    "prune_columns_cholesky": _COLUMNS + [("half_losses", _half_losses)],
    "head_errors": [(k, _head_variant(k)) for k in ("summed_single", "grouped_for_no_gcd", "unsquared_diag")],
    "prune_heads": [("summed_selection", _selection("summed_selection")), ("no_quota", _selection("no_quota")),
                    ("no_downdate", _no_downdate("prune_heads")), ("ties_high", _ties_high("prune_heads"))]
    + [(k, _prepare_variant(k, "prune_heads")) for k in ("damping_before_dead", "mean_before_dead")],
    "prune_channels": [("no_downdate", _no_downdate("prune_channels")), ("ties_high", _ties_high("prune_channels"))]
    + [(k, _prepare_variant(k, "prune_channels")) for k in ("damping_before_dead", "mean_before_dead")],
    "dgs_group_sizes": [(k, _dgs_variant(k)) for k in ("dgs_min8", "dgs_sum", "dgs_boundary")],
    "ipr_ratios": [(k, _ipr_variant(k)) for k in ("ipr_not_reversed", "ipr_denominator")],
    "ipr_for_target": [("ipr_wrong_c", _ipr_variant("ipr_wrong_c"))],
}
