"""End to end: the trace of pruning a tiny LLaMA-style model, for whole-pipeline implementations.

What this is: the case `prune_model.tiny_llama`: the weights of a seeded 4-layer model (hidden
64, 8 heads of 8, FFN 96, vocabulary 256), calibration token ids, and what slimgpt's pipeline
(spec §6, the reference backend) does with them: per layer, the heads and FFN channels pruned,
a digest of the statistics it gathered (the traces of H = 2 XᵀX / n of o_proj's and down_proj's
inputs) and a digest of the final weights (the Frobenius norms of the pruned o_proj and down_proj).
What it is not: a second pipeline; the expected values come from slimgpt.pipeline.
"""
from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np

from slimgpt.oracle.case import Case

TINY = "tiny-llama"
CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "head_dim", "rope_theta", "rms_norm_eps")


def trace_cases() -> list[Case]:
    from slimgpt.loaders.tiny import tiny_config, tiny_model

    cfg = tiny_config(TINY)
    weights = {k: v.detach().double().numpy() for k, v in tiny_model(TINY, seed=0).state_dict().items()}
    token_ids = np.random.default_rng(70).integers(0, cfg.vocab_size, (4, 32)).astype(np.int64)
    return [Case("prune_model.tiny_llama", "prune_model",
                 {"weights": weights, "config": {k: getattr(cfg, k) for k in CONFIG_FIELDS},
                  "token_ids": token_ids, "ratio": 0.25},
                 "a seeded 4-layer LLaMA-style model (8 heads of 8, FFN 96) and 4 x 32 calibration tokens: "
                 "each layer loses round(8 r) heads, then round(96 r) channels, at r = 0.25, percdamp 0.01",
                 ["project", "model"], "backend_logits", float32_tolerance="backend_logits")]


@contextlib.contextmanager
def _recording_statistics(traces: list):
    """Record trace(H) of every statistics pass of the pipeline (o_proj, then down_proj, per layer)."""
    from slimgpt import pipeline

    collect = pipeline._collect

    def recording(*args, **kwargs):
        stats, kept = collect(*args, **kwargs)
        traces.append(float(np.trace(stats.H.double().cpu().numpy())))
        return stats, kept

    with mock.patch.object(pipeline, "_collect", recording):
        yield


def run_pipeline(weights, config, token_ids, ratio, *, percdamp=0.01):
    """slimgpt.pipeline on the reference backend, float32 model, every layer at `ratio` (a float, or
    one per layer; no global target), activations of the pruned earlier layers feeding the next.
    Returns (the pipeline's result, trace(H) of every statistics pass: o_proj, down_proj per layer)."""
    import torch
    from slimgpt import pipeline
    from slimgpt.loaders.tiny import build_model, tiny_config
    from slimgpt.pipeline import PruneSettings

    model = build_model(tiny_config(TINY, **config))
    model.load_state_dict({k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in weights.items()})
    calib = torch.as_tensor(np.asarray(token_ids), dtype=torch.int64)
    ratios = [float(r) for r in np.broadcast_to(ratio, (config["num_hidden_layers"],))]
    settings = PruneSettings(ratios=ratios, hit_target=False, backend="reference",
                             percdamp=percdamp, n_samples=calib.shape[0], seqlen=calib.shape[1])
    traces: list = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a tiny model: one thread is faster, and the float32 sums are fixed
    try:
        with _recording_statistics(traces):
            result = pipeline.prune_model(model, calib, settings, progress=False, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return result, np.array(traces).reshape(-1, 2)


def prune_model(weights, config, token_ids, ratio, *, percdamp=0.01):
    """The expected trace of run_pipeline: per layer the heads and channels pruned, trace(H) of
    o_proj's and down_proj's inputs, the Frobenius norms of the pruned o_proj and down_proj."""
    import torch

    result, traces = run_pipeline(weights, config, token_ids, ratio, percdamp=percdamp)
    layers = result.model.model.layers
    norms = [[float(torch.linalg.norm(layer.self_attn.o_proj.weight.detach().double())),
              float(torch.linalg.norm(layer.mlp.down_proj.weight.detach().double()))] for layer in layers]
    return (np.array([r["heads_pruned"] for r in result.layers], dtype=np.int64),
            np.array([r["channels_pruned"] for r in result.layers], dtype=np.int64),
            traces, np.array(norms))
