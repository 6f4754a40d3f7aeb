"""SlimGPT: Batched Greedy Pruning with OBS compensation (the method of the paper).

Heads (kind "heads", W = o_proj): grouped-Cholesky head errors (Eq. 5), one head per
iteration, OBS update of the surviving columns (Eqs. 3-4; spec §3). FFN channels (kind
"channels", W = down_proj): Dynamic Group Size (spec §4). Both go through `slimgpt.ops`, so the
algebra runs on the backend of `options.backend` (the C++/CUDA core by default, the NumPy
reference on request). Ablations: options.gcd=False (−GCD), options.compensate=False (zeroing
only), options.extra["group_sizes"] (fixed groups, −DGS).
"""
from __future__ import annotations

from slimgpt import ops
from slimgpt.methods.base import Method, MethodOptions, Selection


class SlimGPT(Method):
    name = "slimgpt"
    needs_hessian = True

    def select(self, kind, W, stats, blocks, *, layer, options: MethodOptions) -> Selection:
        if blocks.n_prune == 0:
            return Selection(W, [], info={"error": 0.0, "percdamp": None})
        common = dict(percdamp=options.percdamp, compensate=options.compensate, return_loss=True,
                      return_damping=True, backend=options.backend)
        if kind == "heads":
            W_new, pruned, loss, p = ops.prune_heads(W, stats.H, blocks.n_prune, blocks.width, gcd=options.gcd,
                                                     head_groups=blocks.groups, **common)
        else:
            W_new, pruned, loss, p = ops.prune_channels(W, stats.H, blocks.n_prune,
                                                        group_sizes=options.extra.get("group_sizes"), **common)
        # the OBS loss ½Σ||e_i||² is Eq. (1)'s objective of W_new: the layer's reconstruction error;
        # "percdamp" is recorded only when the damping differs from the requested one (the log's retry)
        return Selection(W_new, sorted(int(i) for i in pruned),
                         info={"error": loss, "percdamp": p if p != options.percdamp else None})
