"""slimgpt.reference: the NumPy float64 specification of SlimGPT.

SlimGPT (Ling et al., NeurIPS 2024; equation numbers of arXiv 2412.18110v1): structured pruning
of LLaMA-style layers with Optimal Brain Surgeon compensation. This package is the readable
specification that cpp/ (slimgpt._core), slimgpt.ops and other implementations are checked
against: small pure functions over float64, never mutating their inputs, in paper order.
It is not fast, and it does not touch models; see slimgpt/ for the pipeline.

Files, in paper order:
    hessian.py   Eq. (1) objective, H = 2 XᵀX / n   hessian, accumulate_hessian,
                                                     reconstruction_error
    damping.py   dead inputs, damping, Cholesky      DampingWarning, NotPositiveDefiniteError
    obs.py       Eqs. (2)-(4), Cholesky form         prune_columns (+ the _naive oracle)
    heads.py     Eq. (5), Algorithm 1, heads         head_errors, prune_heads (+ oracles)
    channels.py  Dynamic Group Size, FFN channels    dgs_group_sizes, prune_channels
    ipr.py       Eq. (6), Incremental Pruning Ratio  ipr_ratios, ipr_for_target
    downdate.py  one inverse + block downdates       downdate.prune_columns, .prune_heads,
                 (the fast path's algorithm)          .prune_channels, .remove_set

The functions in heads.py and channels.py re-invert H every iteration, as the published code
does; downdate.py is the algorithm the C++/CUDA core runs instead (the same results in exact
arithmetic, spec §3.4), written out so the fast path has a readable float64 twin.

"spec §N" anywhere in the repository is a section of docs/spec.md.

Shapes: W (d_out, d_in) in torch layout, pruning removes input columns; X (n, d_in) with n
tokens; H, Hinv (d_in, d_in); d_in = n_heads · head_dim for attention. docs/reference.md
derives every function; docs/equations.md maps equations to code and tests.
"""
from . import _checks as checks  # the argument checks, shared with slimgpt.ops
from . import downdate
from .channels import dgs_group_sizes, prune_channels
from .damping import DampingWarning, NotPositiveDefiniteError
from .heads import (grouped_cholesky_diag, grouped_cholesky_diag_naive, head_cost_exact,
                    head_errors, prune_heads)
from .hessian import accumulate_hessian, hessian, reconstruction_error
from .ipr import ipr_for_target, ipr_ratios
from .obs import prune_columns, prune_columns_cholesky, prune_columns_naive, remove_from_hessian

__all__ = [
    "checks", "downdate",
    "hessian", "accumulate_hessian", "reconstruction_error",
    "DampingWarning", "NotPositiveDefiniteError",
    "prune_columns", "prune_columns_naive", "prune_columns_cholesky", "remove_from_hessian",
    "head_errors", "grouped_cholesky_diag", "grouped_cholesky_diag_naive", "head_cost_exact",
    "prune_heads",
    "dgs_group_sizes", "prune_channels",
    "ipr_ratios", "ipr_for_target",
]
