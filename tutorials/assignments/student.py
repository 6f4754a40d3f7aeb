"""SlimGPT from scratch: the student skeleton. Fill in every `raise NotImplementedError`.

Grade it with:   python tutorials/assignments/grade.py tutorials/assignments/student.py
(copy this file anywhere first if you like; the grader takes any path). Work through the tasks in
order (README.md): hessian -> prune_columns -> head_errors -> prune_heads -> DGS / prune_channels
-> IPR. Each task's later functions may call the earlier ones.

Conventions (the same as the project's reference implementation, which the golden cases come from):

- NumPy only (SciPy is allowed too), float64 everywhere. Return new arrays; do not modify the inputs.
- W is (d_out, d_in), the PyTorch Linear layout; pruning removes INPUT columns of W.
- X is (n, d_in): n calibration tokens. H is (d_in, d_in), the Hessian of Task 1. G = H^-1.
- Indices are 0-based integers.

The rules of the grader (README.md, "How the grader runs your code"):

- This one file is your submission. It runs in a separate Python process that can import the
  standard library, NumPy and SciPy, but not slimgpt (nor read the repository's files): a
  submission that imports or loads slimgpt scores 0.
- Task 2's Cholesky cases check the method, not only the numbers: prune_columns and
  prune_columns_cholesky must compute their result through a Cholesky factor (docs/spec.md §2.3)
  taken with np.linalg.cholesky, scipy.linalg.cholesky or scipy.linalg.cho_factor; the grader
  checks that the factor's result reaches your output.
- The damping retry is graded (docs/spec.md §2.4): DampingWarning below has the attributes the
  grader reads.

Paper: Ling et al., "SlimGPT: Layer-wise Structured Pruning for Large Language Models",
NeurIPS 2024, arXiv 2412.18110. Equation numbers follow the paper; the project restates the
method in docs/spec.md ("spec §N" below means its section N; §1-5 cover these tasks).
"""
from __future__ import annotations

import warnings  # noqa: F401 - for DampingWarning

import numpy as np  # noqa: F401 - you will need it


class DampingWarning(UserWarning):
    """Warned when H is not positive definite at the requested damping and you retry with more.

    Spec §2.4. The grader checks the class name and the `percdamp` attribute (the damping actually
    used); `requested` is the one the caller asked for.
    """

    def __init__(self, message: str, percdamp: float, requested: float):
        super().__init__(message)
        self.percdamp = percdamp
        self.requested = requested


class NotPositiveDefiniteError(ValueError):
    """Raised when no damping on the retry ladder makes H positive definite (e.g. H = -I). Spec §2.4."""


# The project's damping ladder (spec §2.4 says how it is used).
RETRY_PERCDAMP = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# ------------------------------------------------------------------------------------------------
# Task 1: the Hessian of the layer-wise objective (Eq. 1)

def hessian(X):
    """The Hessian of the layer-wise objective of Eq. (1) with respect to one row of W.

    Paper: Eq. (1); spec §1.2 (the project's unit: a mean over tokens).

    Parameters
    ----------
    X : (n, d_in) float64, n tokens of layer inputs.

    Returns
    -------
    H : (d_in, d_in) float64, symmetric positive semi-definite.
    """
    raise NotImplementedError


def accumulate_hessian(H, n_seen, X):
    """Add one chunk of tokens to a Hessian accumulated over n_seen tokens so far.

    Paper: Eq. (1); spec §1.2. After all chunks the result equals hessian() of all tokens.
    H is None (and n_seen 0) for the first chunk.

    Returns
    -------
    (H_new : (d_in, d_in) float64, n_seen + n : int)
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 2: Optimal Brain Surgeon for columns (Eqs. 3-4) and the Cholesky form

def prune_columns_naive(W, H, columns, *, percdamp=0.0):
    """Remove the input `columns` of W, one at a time, with the textbook OBS formulas.

    Paper: Eq. (4) (column OBS) and Eq. (3) (the inverse downdate); spec §2.1, §2.2, §2.4.
    An explicit inverse is fine here: this is your oracle for the Cholesky form. Dead inputs,
    damping and the retry ladder as in spec §2.4.

    Returns
    -------
    W_new : (d_out, d_in) float64.
    """
    raise NotImplementedError


def prune_columns_cholesky(W, Hinv, columns, *, survivors=None):
    """The same removal through one Cholesky factor, on a given G = H^-1 (no damping here).

    Paper: §3, Fig. 1 steps 3-5 (as in GPTQ); spec §2.3. S = `columns` in the given order;
    K = `survivors` (None: every column not in S). Columns in neither S nor K are left as they are.

    Returns
    -------
    (W_new : (d_out, d_in) float64,
     losses : (|S|,) float64, the Eq. (4) cost of each column of S in the order of S, as spec §2.3
              defines it)
    """
    raise NotImplementedError


def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True):
    """Remove the input `columns` of W with OBS compensation, through the Cholesky form.

    Paper: §3 (Fig. 1), Eqs. (3)-(4); spec §2.2-2.4 (dead inputs, damping, the retry ladder and
    its DampingWarning / NotPositiveDefiniteError). compensate=False: spec §2.2.

    Returns
    -------
    W_new : (d_out, d_in) float64.
    """
    raise NotImplementedError


def reconstruction_error(W, W_new, H):
    """The layer objective of Eq. (1) for W_new, written through H.

    Paper: Eq. (1); spec §1.2 and §2.3 ("The costs add up").

    Returns
    -------
    error : float
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 3: head errors with the grouped Cholesky estimate (Eq. 5)

def head_errors(W, Hinv, head_dim, *, gcd=True):
    """Estimated cost of removing each head (a block of head_dim consecutive input columns).

    Paper: Eq. (5), Lemmas (i)-(ii); spec §3.1-3.2. gcd=False is the paper's "-GCD" ablation
    (Table 5; spec §3.2).

    Returns
    -------
    errors : (d_in // head_dim,) float64
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 4: Batched Greedy Pruning of heads (Algorithm 1)

def prune_heads(W, H, n_prune, head_dim, *, percdamp=0.0, gcd=True, compensate=True, head_groups=None):
    """Prune n_prune heads of W with Batched Greedy Pruning.

    Paper: Algorithm 1, §3; spec §3.3 (the loop, ties), §2.4 (damping), §2.2 (compensate=False).
    head_groups (GQA, spec §6.6 option B): None, an int number of equal contiguous KV groups, or a
    group id per head.

    Returns
    -------
    (W_new : (d_out, d_in) float64, pruned_heads : (n_prune,) int64 head indices)
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 5: Dynamic Group Size for FFN channels

def dgs_group_sizes(n_prune):
    """The published Dynamic Group Size schedule for pruning T = n_prune channels.

    Paper: §3 "Dynamic Group Size" (prose); spec §4.1-4.2 (the published code's schedule, with a
    table of worked values).

    Returns
    -------
    list[int] summing to n_prune (empty for 0).
    """
    raise NotImplementedError


def prune_channels(W, H, n_prune, *, percdamp=0.0, group_sizes=None, compensate=True):
    """Prune n_prune FFN channels (input columns of down_proj) in groups.

    Paper: §3 "Dynamic Group Size"; spec §4.2 (the loop, ties). group_sizes: None = the DGS
    schedule; an int g = fixed groups of g, the last one smaller (the "-DGS" ablation); a list =
    explicit sizes summing to n_prune.

    Returns
    -------
    (W_new : (d_out, d_in) float64, pruned_channels : (n_prune,) int64)
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Task 6: Incremental Pruning Ratio (Eq. 6)

def ipr_ratios(n_layers, first, last, strategy="log"):
    """Per-layer pruning ratios from `first` (layer 0) to `last` (layer n-1).

    Paper: Eq. (6) and Table 6's alternatives; spec §5.1-5.2. strategy is one of "log", "linear",
    "uniform", "log-decrease", "linear-decrease"; ValueError when first > last or the strategy is
    unknown.

    Returns
    -------
    ratios : (n_layers,) float64
    """
    raise NotImplementedError


def ipr_for_target(n_layers, target, first=None, strategy="log"):
    """Ratios whose mean over the layers is `target`.

    Spec §5.4 (the mean in closed form; first=None is the published 20% recipe's first/target
    proportion). ValueError when the `last` this needs is outside [first, 1).

    Returns
    -------
    ratios : (n_layers,) float64
    """
    raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# The course's units (README.md): questions, a constructed input, the pipeline, the fast algorithm

def answers():
    """Units 1-3: question id -> the number you compute on the question's layer (README.md gives
    the recipe), checked to 4 significant figures. Compute them here, with your own functions: the
    grader calls answers() when it grades the questions (an error at import would score 0)."""
    return {"1.1": None, "1.2": None, "1.3": None,
            "2.2": None, "2.3": None, "2.4": None,
            "3.1": None, "3.2": None}


def gcd_counterexample():
    """Unit 2: an input on which the grouped Cholesky (Eq. 5) and the summed single-column errors
    pick different cheapest heads.

    Spec §3.1-3.2. H must be symmetric positive definite; head_dim >= 2, at least two heads.

    Returns
    -------
    (W : (d_out, d_in) float64, H : (d_in, d_in) float64, head_dim : int)
    """
    raise NotImplementedError


def model_perplexity(weights, config, token_ids):
    """Unit 3: the perplexity of a LLaMA-style model on token windows, in float64 NumPy.

    Spec §6 (the LLaMA-style layers the pipeline prunes). weights: {Hugging Face parameter name: array}
    ("model.embed_tokens.weight", "model.layers.{i}.self_attn.{q,k,v,o}_proj.weight",
    "model.layers.{i}.{input,post_attention}_layernorm.weight", "model.layers.{i}.mlp.{gate,up,down}
    _proj.weight", "model.norm.weight", "lm_head.weight"); config: a dict with hidden_size,
    num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size, head_dim,
    rope_theta, rms_norm_eps, vocab_size. The LLaMA conventions of transformers: RMSNorm with eps,
    rotary embeddings in the rotate-half layout (pair (j, j + d/2) at frequency rope_theta^(-2j/d)),
    causal attention scaled by 1/sqrt(head_dim), query head h reading KV head h // (heads / kv_heads),
    a SwiGLU FFN (SiLU on gate_proj). A pruned layer has fewer heads and channels: read them off
    the shapes (q_proj has heads * head_dim rows), never from config.

    Returns
    -------
    ppl : float, exp of the mean next-token cross-entropy over token_ids (B, T): B * (T - 1) tokens
    """
    raise NotImplementedError


def prune_llama(weights, config, token_ids, target, *, percdamp=0.01):
    """Unit 3: prune a LLaMA-style model layer by layer, as slimgpt's pipeline does.

    Paper: §3 (layer-wise pruning), Eq. (6); spec §5.4, §6.3-6.4. Model conventions as in
    model_perplexity; token_ids (N, T) are the calibration windows (every position is a token of
    the statistics). Layer i is pruned at ratio r_i = ipr_for_target(L, target)[i] (log, the default
    first): round(heads * r_i) heads of o_proj (prune_heads, head_dim from config) and
    round(intermediate_size * r_i) channels of down_proj (prune_channels), each with `percdamp`,
    the pruned heads' rows of q/k/v_proj and the pruned channels' rows of gate/up_proj removed too.
    Which inputs each pruning is calibrated on is the point of spec §6.3: get it right.

    Returns (the trace graded against slimgpt's pipeline)
    -------
    (ratios : (L,) float64,
     pruned_heads : (L, heads) int, 1 where a head was pruned,
     pruned_channels : (L, intermediate_size) int, 1 where a channel was pruned,
     hessian_traces : (L, 2) float64, trace of the H of o_proj's and of down_proj's inputs,
     weight_norms : (L, 2) float64, Frobenius norms of the pruned o_proj and down_proj)
    """
    raise NotImplementedError


def remove_set(W, G, S):
    """Unit 4: remove the columns S of W at once and downdate them out of G = H^-1.

    Paper: Eqs. (3)-(4) for a set, Lemma (ii); spec §3.4. G is the current inverse (already
    downdated for earlier sets). Output convention: G_new's rows and columns of S are those of the
    identity matrix (they are never read again).

    Returns
    -------
    (W_new : (d_out, d_in) float64, G_new : (d_in, d_in) float64,
     loss : float, the Eq. (1) cost of the set as spec §3.4 defines it)
    """
    raise NotImplementedError


def prune_heads_fast(W, H, n_prune, head_dim, *, percdamp=0.0, gcd=True, compensate=True, head_groups=None):
    """Unit 4: prune_heads with one inverse and exact set downdates (spec §3.4): the same result."""
    raise NotImplementedError


def prune_channels_fast(W, H, n_prune, *, percdamp=0.0, group_sizes=None, compensate=True):
    """Unit 4: prune_channels with one inverse and exact set downdates (spec §3.4): the same result."""
    raise NotImplementedError


def prune_heads_lazy(W, H, n_prune, head_dim, *, percdamp=0.0, gcd=True, compensate=True, head_groups=None):
    """Unit 4: prune_heads in the form the C++ core runs, where G = H^-1 is never formed.

    Spec §3.4; docs/cpp.md, "What is actually computed": the state is M = L^-1 of the prepared H
    and the rows of the sets removed so far; the loop reads from it only what it needs. The same
    result as prune_heads. Timed too: on a layer where one factorisation is several times faster
    than one inverse per head, your prune_heads_lazy must not be slower than your prune_heads.
    """
    raise NotImplementedError


def prune_channels_lazy(W, H, n_prune, *, percdamp=0.0, group_sizes=None, compensate=True):
    """Unit 4: prune_channels in the lazy form of docs/cpp.md (spec §3.4): the same result."""
    raise NotImplementedError
