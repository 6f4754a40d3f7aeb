"""The operations the oracle checks: signature, defaults, outputs, conventions and spec section.

What this is: the one description of each operation's calling convention, from which the index
(every argument spelled out, defaults filled in), the adapter template and the call are made.
What it is not: the cases (cases.py) or an implementation (slimgpt.reference defines the results).

Conventions shared by all: W is d_out x d_in (PyTorch layout) and pruning removes *input
columns*; X is n x d_in, one token per row; H = 2 XᵀX / n; float64; indices 0-based.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Operation:
    positional: list[str]                     # passed positionally, in this order
    keywords: dict[str, object]               # passed by keyword; the value is the default
    outputs: list[tuple[str, str]]            # (name, comparison) in return order
    spec: str                                 # section of docs/spec.md
    doc: str                                  # shapes and conventions, for the template


OPERATIONS: dict[str, Operation] = {
    "hessian": Operation(
        ["X"], {}, [("H", "float")], "§1.2",
        "H = 2 XᵀX / n for X (n, d_in), n tokens (the project's normalisation, n counts tokens).\n"
        "Returns H (d_in, d_in) float64."),
    "accumulate_hessian": Operation(
        ["H", "n_seen", "X"], {}, [("H", "float"), ("n_seen", "exact")], "§1.2",
        "Running mean: the Hessian of n_seen earlier tokens (H, or None when n_seen = 0) and the\n"
        "n new tokens of X (n, d_in). Returns (H (d_in, d_in), n_seen + n)."),
    "prune_columns": Operation(
        ["W", "H", "columns"], {"percdamp": 0.0, "compensate": True}, [("W_new", "float")], "§2.2-2.4",
        "Remove the input columns `columns` (int64, any order) of W (d_out, d_in) jointly, with OBS\n"
        "compensation of the others (Eqs. 3-4). Dead inputs (diag H = 0) get diag 1 and a zero W\n"
        "column, then percdamp * mean(diag H) is added to the diagonal (mean taken after the dead\n"
        "fix). compensate=False only zeroes the columns (and the dead inputs). Returns W_new\n"
        "(d_out, d_in); removed columns exactly 0.0."),
    "prune_columns_naive": Operation(
        ["W", "H", "columns"], {"percdamp": 0.0}, [("W_new", "float")], "§2.1-2.2",
        "The same result as prune_columns through the textbook OBS formula with an explicit\n"
        "inverse, recomputed after each removed column. Returns W_new (d_out, d_in)."),
    "prune_columns_cholesky": Operation(
        ["W", "Hinv", "columns"], {"survivors": None}, [("W_new", "float"), ("losses", "float")], "§2.3",
        "The Cholesky form: U = upper Cholesky factor of Hinv reordered as [columns, survivors];\n"
        "e_i = W[:, S_i] / U[i, i], local loop over S in the given order, one global update of the\n"
        "survivors (None: every column not in S; columns in neither are untouched).\n"
        "Returns (W_new (d_out, d_in), losses (s,) = ||e_i||^2 in the given order)."),
    "head_errors": Operation(
        ["W", "Hinv", "head_dim"], {"gcd": True}, [("errors", "float")], "§3.2",
        "Eq. (5): head j owns columns j*head_dim .. (j+1)*head_dim - 1 (n_heads = d_in / head_dim);\n"
        "E_j = sum_k ||W[:, j*d+k]||^2 / L_j[k,k]^2 with L_j = chol(Hinv[C_j, C_j]) (lower).\n"
        "gcd=False: the plain diagonal Hinv[q, q] instead of L_j[k,k]^2. Returns errors (n_heads,)."),
    "prune_heads": Operation(
        ["W", "H", "n_prune", "head_dim"],
        {"percdamp": 0.0, "gcd": True, "compensate": True, "head_groups": None},
        [("W_new", "float"), ("pruned_heads", "index_set")], "§3.3, §6.6",
        "Batched Greedy Pruning of an o_proj W (d_out, n_heads * head_dim): n_prune iterations, each\n"
        "G = H^-1 from scratch (H with removed columns as identity rows), head errors (Eq. 5), the\n"
        "cheapest eligible head removed with OBS compensation. Ties go to the lower head index.\n"
        "head_groups: None (one group), an int g (g contiguous groups) or a group id per head; each\n"
        "group loses n_prune / n_groups heads (a ValueError when that is not a whole number).\n"
        "Returns (W_new, pruned_heads int64)."),
    "dgs_group_sizes": Operation(
        ["n_prune"], {}, [("group_sizes", "exact")], "§4.2",
        "The published Dynamic Group Size schedule for T = n_prune channels:\n"
        "b0 = (T - 512) // 2; g_k = min(remaining, max(b_k, 64), 1024); b_{k+1} = (b_k - 512) // 2.\n"
        "Returns the group sizes (list of int summing to T)."),
    "prune_channels": Operation(
        ["W", "H", "n_prune"], {"percdamp": 0.0, "group_sizes": None, "compensate": True},
        [("W_new", "float"), ("pruned_channels", "index_set")], "§4.2",
        "FFN channels of a down_proj W (d_out, d_in): per group g, G = H^-1 from scratch, errors\n"
        "||W[:, c]||^2 / G[c, c] (plain diagonal), the g cheapest (ties: lower index) removed with\n"
        "OBS compensation in ascending-error order. group_sizes: None = DGS schedule, an int = fixed\n"
        "groups, a list = explicit sizes. Returns (W_new, pruned_channels int64)."),
    "reconstruction_error": Operation(
        ["W", "W_new", "H"], {}, [("error", "float")], "§1.2",
        "Eq. (1): err = 1/2 tr((W - W_new) H (W - W_new)ᵀ). Returns a float."),
    "ipr_ratios": Operation(
        ["n_layers", "first", "last"], {"strategy": "log"}, [("ratios", "float")], "§5.1-5.2",
        "Eq. (6): r_i = first + (last - first) * log(i + 1) / log(n_layers) for strategy 'log';\n"
        "'linear', 'uniform', 'log-decrease', 'linear-decrease' as spec §5.2. first > last is a\n"
        "ValueError. Returns ratios (n_layers,)."),
    "ipr_for_target": Operation(
        ["n_layers", "target"], {"first": None, "strategy": "log"}, [("ratios", "float")], "§5.4",
        "The ratios whose mean is `target`, from `first` (None: the project's default; the\n"
        "ratio of the last layer for the '-decrease' strategies); a ValueError when the last\n"
        "ratio this needs is outside [first, 1) (last = 1 is an error). 'uniform' (and one layer):\n"
        "every ratio is first, first=None means target, another first is a ValueError.\n"
        "Returns ratios (n_layers,)."),
    "prune_attention_layer": Operation(
        ["X", "W", "n_prune", "head_dim"], {"percdamp": 0.0, "head_groups": None},
        [("W_new", "float"), ("pruned_heads", "index_set"), ("loss", "float")], "§3.3, §6.4",
        "A whole o_proj from its calibration inputs: X (n, d_in) the inputs of W (d_out, d_in),\n"
        "prune n_prune heads of head_dim columns as prune_heads does (any positive scale of\n"
        "H = XᵀX gives the same result). Returns (W_new, pruned_heads int64,\n"
        "loss = ||X W_newᵀ - X Wᵀ||_F^2 / n, the mean squared output change per token)."),
    "prune_ffn_layer": Operation(
        ["X", "W", "n_prune"], {"percdamp": 0.0, "group_sizes": None},
        [("W_new", "float"), ("pruned_channels", "index_set"), ("loss", "float")], "§4.2, §6.4",
        "A whole down_proj from its calibration inputs X (n, d_in): prune n_prune channels as\n"
        "prune_channels does. Returns (W_new, pruned_channels int64, loss as prune_attention_layer)."),
    "prune_model": Operation(
        ["weights", "config", "token_ids", "ratio"], {"percdamp": 0.01},
        [("pruned_heads", "index_sets"), ("pruned_channels", "index_sets"), ("hessian_traces", "float"),
         ("weight_norms", "float")], "§6",
        "A whole LLaMA-style model: weights {HF parameter name: array}, config {vocab_size, hidden_size,\n"
        "num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size, head_dim,\n"
        "rope_theta, rms_norm_eps}, calibration token_ids (N, T). Layer by layer (spec §6.3): statistics\n"
        "of o_proj's inputs, round(n_heads * ratio) heads pruned (prune_heads), the FFN inputs recomputed\n"
        "through the pruned attention, round(intermediate * ratio) channels pruned (prune_channels), the\n"
        "next layer fed by the pruned layer's outputs. Returns (pruned_heads (L, k), pruned_channels\n"
        "(L, m), hessian_traces (L, 2) = trace of H of o_proj's and down_proj's inputs, weight_norms\n"
        "(L, 2) = Frobenius norms of the pruned o_proj and down_proj)."),
}

# Not in slimgpt.reference: the layer-level ones are composed from it (layers.py), the model trace
# comes from the pipeline (trace.py).
LAYER_OPERATIONS = ("prune_attention_layer", "prune_ffn_layer", "prune_model")

# reference operation -> names of its positional arguments, in order (everything else by keyword)
SIGNATURES: dict[str, list[str]] = {op: list(o.positional) for op, o in OPERATIONS.items()
                                    if op not in LAYER_OPERATIONS}

# reference operation -> (output name, comparison) in the order the function returns them.
#   "float": allclose with the case's rtol/atol;  "exact": equal values and shape (counts, group
#   sizes);  "index_set": the same set of integer indices (order ignored, duplicates are errors);
#   "index_sets": one such set per row (per layer).
OUTPUTS: dict[str, list[tuple[str, str]]] = {op: list(o.outputs) for op, o in OPERATIONS.items()
                                             if op not in LAYER_OPERATIONS}

# Expected errors are kinds, not class names: the reference's class -> kind.
ERROR_KINDS = {"NotPositiveDefiniteError": "not_positive_definite", "ValueError": "invalid_argument"}
