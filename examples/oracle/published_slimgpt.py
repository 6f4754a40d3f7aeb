"""Adapter: check the authors' published SlimGPT class at the layer level, as it is.

    export SLIMGPT_PUBLISHED=/path/to/the/authors/release     # the folder that holds slim_utils/
    slimgpt oracle check golden/ --impl examples/oracle/published_slimgpt.py --profile published-code

The published code is one stateful object around an nn.Linear (GPTQ / SparseGPT style): it is
fed calibration inputs with `add_batch` and prunes the layer's weight in place. Such code has no
function per step, so it is checked on the layer-level operations: X and W in, the pruned W,
the selection and the output change out. Nothing of the release is copied here; it is imported
from the path the user gives. The selection is read from the pruned weight as the release's
export does ("column not all zero", docs/spec.md §9). The release was not available to this
project's authors when this adapter was written: `CLASS` and `prune` are the two places that
name the class and its pruning call, following the published layout (slim_utils/slimgpt.py);
check them against your copy. The published code runs in float32, has no damping retry and no
GQA quotas, hence the published-code profile.
"""
import importlib
import os
import sys

import numpy as np
import torch

CLASS = ("slim_utils.slimgpt", "SlimGPT")   # module and class name inside the release


def prune(pruner, n_prune: int, head_dim: int, percdamp: float) -> None:
    """The one call into the release: remove n_prune blocks of head_dim columns (1 for FFN channels)."""
    pruner.struct_prune(n_prune, head_dim=head_dim, percdamp=percdamp)


_release = os.environ.get("SLIMGPT_PUBLISHED", "")
if not os.path.isdir(os.path.join(_release, CLASS[0].split(".")[0])):
    raise ImportError(f"set SLIMGPT_PUBLISHED to the folder of the authors' release (the one holding "
                      f"{CLASS[0].split('.')[0]}/); got {_release!r}")
sys.path.insert(0, _release)
SlimGPT = getattr(importlib.import_module(CLASS[0]), CLASS[1])


def _prune_layer(X, W, n_prune, head_dim, percdamp):
    layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = torch.tensor(W, dtype=torch.float32)
    pruner = SlimGPT(layer)
    pruner.add_batch(torch.tensor(X, dtype=torch.float32)[None], None)   # one sequence of n tokens
    prune(pruner, n_prune, head_dim, percdamp)
    W_new = layer.weight.data.double().numpy()
    blocks = W_new.reshape(W.shape[0], -1, head_dim)
    removed = np.flatnonzero(np.all(blocks == 0, axis=(0, 2)))
    loss = float(np.sum((X @ (W_new - W).T) ** 2) / X.shape[0])
    return W_new, removed, loss


def prune_attention_layer(X, W, n_prune, head_dim, percdamp=0.0):
    return _prune_layer(X, W, n_prune, head_dim, percdamp)


def prune_ffn_layer(X, W, n_prune, percdamp=0.0):
    return _prune_layer(X, W, n_prune, 1, percdamp)


ORACLE_MAP = {
    "arguments": {"prune_attention_layer": {"head_groups": None}, "prune_ffn_layer": {"group_sizes": None}},
    "errors": {"torch.linalg.LinAlgError": "not_positive_definite"},
}
