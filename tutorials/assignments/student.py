"""SlimGPT from scratch: the student skeleton. Fill in every `raise NotImplementedError`.

Grade it with:   python tutorials/assignments/grade.py tutorials/assignments/student.py
(copy this file anywhere first if you like; the grader takes any path). Work through the tasks in
order (README.md): hessian -> prune_columns -> head_errors -> prune_heads -> DGS / prune_channels
-> IPR. Each task's later functions may call the earlier ones.

Conventions (the same as the project's reference implementation, which the golden cases come from):

- NumPy only (SciPy is allowed too), float64 everywhere. Return new arrays; do not modify the inputs.
- W is (d_out, d_in), the PyTorch Linear layout; pruning removes INPUT columns of W.
- X is (n, d_in): n calibration tokens. H = 2 X^T X / n is (d_in, d_in). G = H^-1.
- Indices are 0-based integers.

The rules of the grader (README.md, "How the grader runs your code"):

- This one file is your submission. It runs in a separate Python process that can import the
  standard library, NumPy and SciPy, but not slimgpt (nor read the repository's files): a
  submission that imports or loads slimgpt scores 0.
- Task 2's Cholesky cases check the method, not only the numbers: prune_columns and
  prune_columns_cholesky must factor the reordered H^-1 (or its leading block G[S, S]) with
  np.linalg.cholesky, scipy.linalg.cholesky or scipy.linalg.cho_factor (docs/spec.md §2.3).
- The damping retry is graded: warn DampingWarning(message, percdamp, requested) with the
  damping actually used, and only when a retry happened (docs/spec.md §2.4).

Paper: Ling et al., "SlimGPT: Layer-wise Structured Pruning for Large Language Models",
NeurIPS 2024, arXiv 2412.18110. Equation numbers follow the paper; the project restates the
method in docs/spec.md ("spec §N" below means its section N; §1-5 cover these tasks).
"""
from __future__ import annotations

import warnings  # noqa: F401 - for DampingWarning

import numpy as np  # noqa: F401 - you will need it


class DampingWarning(UserWarning):
    """Warned when H is not positive definite at the requested damping and you retry with more.

    Spec §2.4. Raise it as  warnings.warn(DampingWarning(message, percdamp=p_used, requested=p_asked)):
    the grader checks the class name and the `percdamp` attribute (the damping actually used).
    """

    def __init__(self, message: str, percdamp: float, requested: float):
        super().__init__(message)
        self.percdamp = percdamp
        self.requested = requested


class NotPositiveDefiniteError(ValueError):
    """Raised when no damping on the retry ladder makes H positive definite (e.g. H = -I). Spec §2.4."""


# Retry ladder for an H that is not positive definite at the requested percdamp (spec §2.4): redo
# the whole run with each larger value in turn; warn DampingWarning for the first that works;
# raise NotPositiveDefiniteError when all fail.
RETRY_PERCDAMP = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# ------------------------------------------------------------------------------------------------
# Task 1: the Hessian of the layer-wise objective (Eq. 1)

def hessian(X):
    """H = 2 X^T X / n, the Hessian of ||W X^T - W' X^T||_F^2 / n with respect to each row of W.

    Paper: Eq. (1); spec §1.2.

    Parameters
    ----------
    X : (n, d_in) float64, n tokens of layer inputs.

    Returns
    -------
    H : (d_in, d_in) float64, symmetric positive semi-definite.
    """
    raise NotImplementedError


def accumulate_hessian(H, n_seen, X):
    """Running mean of the Hessian over chunks: after all chunks, H equals hessian(all tokens).

    Paper: Eq. (1); spec §1.2 (the published code accumulates H as a running mean).

    H_new = (n_seen * H + 2 X^T X) / (n_seen + n). With H None (or n_seen 0), start from hessian(X).

    Returns
    -------
    (H_new, n_seen + n)
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 2: Optimal Brain Surgeon for columns (Eqs. 3-4) and the Cholesky trick

def prune_columns_naive(W, H, columns, *, percdamp=0.0):
    """Remove the input `columns` of W one by one with the textbook OBS formulas.

    Paper: Eq. (4) (column OBS) and Eq. (3) (inverse downdate); spec §2.1, §2.4.

    Before anything: dead inputs (diag H == 0) get H[q,q] = 1 and W[:,q] = 0; with percdamp > 0
    add percdamp * mean(diag H) to the diagonal. G = H^-1 (explicit inverse is fine here).
    For each q in `columns`, in order:
        W <- W - (W[:, q] / G[q, q]) outer G[q, :]            (Eq. 4: column q becomes 0)
        G <- G - G[:, q] outer G[q, :] / G[q, q]               (Eq. 3)
    Damping is chosen as in prune_columns: if the (damped) H is not positive definite (its
    Cholesky fails), redo it with the next RETRY_PERCDAMP and warn DampingWarning (spec §2.4).

    Returns
    -------
    W_new : (d_out, d_in) float64 with W_new[:, columns] == 0.
    """
    raise NotImplementedError


def prune_columns_cholesky(W, Hinv, columns, *, survivors=None):
    """The Cholesky form of sequential column OBS, on a given G = H^-1 (no damping here).

    Paper: §3, Fig. 1 steps 3-5 (Eqs. 3-4 through one Cholesky factor, as in GPTQ); spec §2.3.
    S = `columns` in the given order, K = `survivors` (None: every column not in S). Permute so
    that S comes first, then K; take the upper Cholesky factor U of the permuted G
    (G[order, order] = U^T U; only its first |S| rows are needed, and by Lemma (ii) their
    leading |S| x |S| block is the factor of G[S, S] alone); then for i = 0..|S|-1:
        e_i = W[:, s_i] / U[i, i];  W[:, s_i..] -= e_i outer U[i, i..]       (local update in S)
    and finally W[:, K] -= E @ U[:|S|, K]                                   (global update)
    with E = [e_0 ... e_{|S|-1}]. Columns in neither S nor K are left untouched.
    Use np.linalg.cholesky, scipy.linalg.cholesky or scipy.linalg.cho_factor for the factor:
    the grader checks that G[S, S] was factored.

    Returns
    -------
    (W_new, losses) : ((d_out, d_in) float64 with W_new[:, S] == 0,
                       (|S|,) float64, losses[i] = ||e_i||^2 in the order of S (Eq. 4 costs))
    """
    raise NotImplementedError


def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True):
    """The same result as prune_columns_naive, with the Cholesky trick (GPTQ / SlimGPT Fig. 1).

    Paper: §3 (Fig. 1 steps 3-5), Eqs. (3)-(4); spec §2.2-2.4. Prepare H (dead inputs, damping;
    spec §2.4), G = H^-1, then prune_columns_cholesky(W, G, columns). The grader checks that a
    Cholesky factorisation of G[S, S] (S first, in the given order) happened: calling
    prune_columns_naive here fails Task 2's Cholesky cases.
    If a Cholesky factorisation fails, redo everything with the next larger damping of
    RETRY_PERCDAMP and warn DampingWarning (its .percdamp = the damping used); raise
    NotPositiveDefiniteError when all fail. With compensate=False, only zero the columns (and
    the dead inputs); no factorisation is needed then.

    Returns
    -------
    W_new : (d_out, d_in) float64.
    """
    raise NotImplementedError


def reconstruction_error(W, W_new, H):
    """The layer objective of Eq. (1) written through H: 1/2 tr((W - W_new) H (W - W_new)^T).

    Paper: Eq. (1). With H = 2 X^T X / n this is ||(W - W_new) X^T||_F^2 / n, and the OBS losses
    1/2 ||e_i||^2 of the Cholesky form add up to it.

    Returns
    -------
    error : float
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 3: head errors with the grouped Cholesky estimate (Eq. 5)

def head_errors(W, Hinv, head_dim, *, gcd=True):
    """Estimated cost of removing each head (a block of head_dim consecutive columns).

    Paper: Eq. (5), Lemmas (i)-(ii); spec §3.2.
        L_j = chol(G[C_j, C_j]) (lower), C_j = {j*head_dim, ..., (j+1)*head_dim - 1}
        E_j = sum_k ||W[:, j*head_dim + k]||^2 / L_j[k, k]^2
    With gcd=False (the "-GCD" ablation) use the plain diagonal G[c, c] instead of L_j[k, k]^2.
    Do NOT sum single-column errors with the plain diagonal when gcd=True: removing several
    columns of one head needs the sequential downdates that the grouped Cholesky gives for free.

    Returns
    -------
    errors : (d_in // head_dim,) float64
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 4: batched greedy head pruning (Algorithm 1)

def prune_heads(W, H, n_prune, head_dim, *, percdamp=0.0, gcd=True, compensate=True, head_groups=None):
    """Prune n_prune heads greedily, exactly one head per iteration.

    Paper: Algorithm 1, §3; spec §3.3. Each iteration: G = H^-1 from scratch; head errors of the
    current (already compensated) W (Eq. 5), already-pruned heads +inf; remove the cheapest head
    with the Cholesky-trick update (local loop over its columns, then the global update); then
    replace its rows/columns of H by the identity (H[p,:] = H[:,p] = 0, H[p,p] = 1).
    head_groups (GQA, spec §6.6 option B): an int g means g equal contiguous KV groups (head h in
    group h // (n_heads / g)); a list gives a group id per head. Every group must lose
    n_prune / n_groups heads: a head is eligible only while its group is under that quota.

    Returns
    -------
    (W_new, pruned_heads) : ((d_out, d_in) float64, (n_prune,) int64 head indices)
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 5: Dynamic Group Size for FFN channels

def dgs_group_sizes(n_prune):
    """The published code's group-size schedule for pruning T = n_prune channels.

    Spec §4.2: b_0 = floor((T - 512) / 2); g_k = min(T - pruned_so_far, max(b_k, 64), 1024);
    b_{k+1} = floor((b_k - 512) / 2); stop when T channels are covered. (The paper says
    "1024 down to 8"; the code's smallest group is 64.)

    Returns
    -------
    list[int] summing to n_prune (empty for 0).
    """
    raise NotImplementedError


def prune_channels(W, H, n_prune, *, percdamp=0.0, group_sizes=None, compensate=True):
    """Prune n_prune FFN channels (columns of down_proj) in groups.

    Paper: §3 "Dynamic Group Size"; spec §4.2. group_sizes: None = dgs_group_sizes(n_prune); an
    int g = fixed groups of g, the last one smaller (the "-DGS" ablation); a list = explicit
    sizes summing to n_prune. For each group size g: G = H^-1 from scratch, single-column errors ||W[:,c]||^2 / G[c,c]
    (pruned +inf), take the g smallest in ascending order, remove them jointly with the
    Cholesky-trick update, and replace them by identity rows/columns in H.

    Returns
    -------
    (W_new, pruned_channels) : ((d_out, d_in) float64, (n_prune,) int64, sorted)
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 6: Incremental Pruning Ratio (Eq. 6)

def ipr_ratios(n_layers, first, last, strategy="log"):
    """Per-layer pruning ratios rising from `first` (layer 0) to `last` (layer n-1).

    Paper: Eq. (6) and Table 6's alternatives; spec §5.2.
        "log":     r_i = first + (last - first) * log(i + 1) / log(n)   (r_0 = first when n = 1)
        "linear":  r_i = first + (last - first) * i / (n - 1)
        "uniform": every r_i = first (last must equal first)
        "log-decrease", "linear-decrease": the log / linear list reversed
    Raise ValueError when first > last or the strategy is unknown.

    Returns
    -------
    ratios : (n_layers,) float64
    """
    raise NotImplementedError


def ipr_for_target(n_layers, target, first=None, strategy="log"):
    """Ratios whose mean is `target`: choose `last` from the closed form of the mean.

    Spec §5.4: mean = first + c * (last - first) with c = log(n!) / (n log n) for "log" (0.735395
    for n = 32) and c = 1/2 for "linear", so last = first + (target - first) / c.
    first=None means first = 0.3125 * target (the published 20% recipe: 0.0625 for 0.2);
    "uniform" (or one layer) gives every layer the target. Raise ValueError when the needed
    last is outside [first, 1).

    Returns
    -------
    ratios : (n_layers,) float64
    """
    raise NotImplementedError
