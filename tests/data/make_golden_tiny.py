"""Write tests/data/golden_tiny.json: SlimGPT on tiny models through the float64 reference path.

    python tests/data/make_golden_tiny.py

Run once and commit the output; tests/test_golden.py then checks that every backend still
selects exactly these heads and channels and produces these logits. Rerun only when a change
is meant to alter the pipeline's results, and say why in the commit.
"""
import json
import pathlib

import torch

from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.pipeline import PruneSettings, prune_model
from slimgpt.textdata import calibration_windows

# (model, settings): every GQA mode, heterogeneous layers, biases, damping, ablations
CASES = {
    "gqa-query": ("tiny-gqa", dict(ratio=0.4)),
    "gqa-group": ("tiny-gqa", dict(ratio=0.4, gqa="group")),
    "qwen2-balanced": ("tiny-qwen2", dict(ratio=0.5, gqa="balanced")),
    "hetero-log": ("tiny-hetero", dict(ratio=0.3)),
    "llama-no-gcd-fixed": ("tiny-llama", dict(ratio=0.4, gcd=False, method_options={"group_sizes": 8})),
    "llama-flap": ("tiny-llama", dict(ratio=0.3, method="flap")),
}
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(11))


def run(case: str, backend: str):
    """(per-layer pruned heads, per-layer pruned channels, logits of IDS) for one case."""
    name, kw = CASES[case]
    model = tiny_model(name, seed=2)
    calib = calibration_windows(byte_tokenizer(), 8, 32, 0)
    res = prune_model(model, calib, PruneSettings(backend=backend, **kw), progress=False, log=lambda m: None)
    with torch.no_grad():
        logits = model(IDS)
    return [r["heads_pruned"] for r in res.layers], [r["channels_pruned"] for r in res.layers], logits


if __name__ == "__main__":
    out = {}
    for case in CASES:
        heads, channels, logits = run(case, "reference")
        out[case] = {"heads": heads, "channels": channels, "logits": logits[:, -4:, :16].tolist()}
    path = pathlib.Path(__file__).with_name("golden_tiny.json")
    path.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {len(out)} cases to {path}")
