"""SlimGPT: Batched Greedy Pruning with OBS compensation (the method of the paper).

Heads (kind "heads", W = o_proj): grouped-Cholesky head errors (Eq. 5), one head per
iteration, OBS update of the surviving columns (Eqs. 3-4; spec §3). FFN channels (kind
"channels", W = down_proj): Dynamic Group Size (spec §4). Both go through `slimgpt.ops`, so the
algebra runs on the backend of `options.backend` (the C++/CUDA core by default, the NumPy
reference on request). Ablations: options.gcd=False (−GCD), options.compensate=False (zeroing
only), options.extra["group_sizes"] (fixed groups, −DGS).
"""
from __future__ import annotations

import warnings

from slimgpt import ops
from slimgpt.methods.base import Method, MethodOptions, Selection
from slimgpt.reference import DampingWarning


class SlimGPT(Method):
    name = "slimgpt"
    needs_hessian = True

    def select(self, kind, W, stats, blocks, *, layer, options: MethodOptions) -> Selection:
        if blocks.n_prune == 0:
            return Selection(W, [], info={"error": 0.0, "percdamp": None})
        common = dict(percdamp=options.percdamp, compensate=options.compensate, return_loss=True,
                      backend=options.backend)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DampingWarning)
            if kind == "heads":
                W_new, pruned, loss = ops.prune_heads(W, stats.H, blocks.n_prune, blocks.width, gcd=options.gcd,
                                                      head_groups=blocks.groups, **common)
            else:
                W_new, pruned, loss = ops.prune_channels(W, stats.H, blocks.n_prune,
                                                         group_sizes=options.extra.get("group_sizes"), **common)
        used = [w.message.percdamp for w in caught if isinstance(w.message, DampingWarning)]
        for w in caught:
            if not isinstance(w.message, DampingWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        # the OBS loss ½Σ||e_i||² is Eq. (1)'s objective of W_new: the layer's reconstruction error
        return Selection(W_new, sorted(int(p) for p in pruned),
                         info={"error": loss, "percdamp": max(used) if used else None})
