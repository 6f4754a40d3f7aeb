"""Layer-level operations: calibration inputs and a weight in, the pruned weight out.

What this is: the expected results of `prune_attention_layer` and `prune_ffn_layer`, composed
from a reference module (slimgpt.reference, or a mutated copy of it in the mutation test):
H from X (spec §1.2), then prune_heads / prune_channels, then the true output change on X.
Pipeline-shaped implementations (one object around a linear layer) are checked through them.
What it is not: new algorithm code.
"""
from __future__ import annotations

import types

import numpy as np


def output_change(X, W, W_new) -> float:
    """||X W_newᵀ - X Wᵀ||_F² / n: the mean squared change of the layer's output per token."""
    X = np.asarray(X, dtype=np.float64)
    D = X @ (np.asarray(W_new, dtype=np.float64) - np.asarray(W, dtype=np.float64)).T
    return float(np.sum(D * D) / X.shape[0])


def layer_operations(reference) -> types.SimpleNamespace:
    """The two layer operations built on `reference`'s hessian, prune_heads and prune_channels."""
    def prune_attention_layer(X, W, n_prune, head_dim, *, percdamp=0.0, head_groups=None):
        W_new, heads = reference.prune_heads(W, reference.hessian(X), n_prune, head_dim,
                                             percdamp=percdamp, head_groups=head_groups)
        return W_new, heads, output_change(X, W, W_new)

    def prune_ffn_layer(X, W, n_prune, *, percdamp=0.0, group_sizes=None):
        W_new, channels = reference.prune_channels(W, reference.hessian(X), n_prune,
                                                   percdamp=percdamp, group_sizes=group_sizes)
        return W_new, channels, output_change(X, W, W_new)

    return types.SimpleNamespace(prune_attention_layer=prune_attention_layer, prune_ffn_layer=prune_ffn_layer)


def expected_namespace(reference) -> types.SimpleNamespace:
    """Every operation the cases call: `reference`'s functions, the layer operations and the model
    trace (which runs slimgpt's pipeline on the reference backend, whatever `reference` is)."""
    from slimgpt.oracle import trace
    from slimgpt.oracle.operations import OPERATIONS

    layers = layer_operations(reference)
    layers.prune_model = trace.prune_model
    return types.SimpleNamespace(**{op: getattr(reference, op, None) or getattr(layers, op) for op in OPERATIONS})
