"""SmolLM2-135M at 20% in each GQA mode, at equal parameter count, on both perplexity protocols.

    python benchmarks/gqa_modes.py [--nsamples 64] [--seqlen 256] [--json out/gqa_modes.json]

Loads the model once, prunes a copy per mode (`--gqa query | balanced | group`, the README's
settings otherwise: 64 × 256 C4 calibration, seed 0, percdamp 0.01, the C++ core), and scores the
dense model and each pruned one on the first 128 WikiText-2 test chunks of 128 tokens (16,256
scored tokens: the SlimGPT protocol on a budget) and the first 4 windows of 2048 (8,188 scored
tokens). Prints the table of docs/results-smollm2.md §2-3 (about 10 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from slimgpt.evaluate import perplexity
from slimgpt.loaders import load_model
from slimgpt.pipeline import PruneSettings, prune_model
from slimgpt.textdata import calibration_windows, wikitext2_tokens

MODES = ("query", "balanced", "group")


def scores(model, stream) -> dict:
    return {"ppl128": perplexity(model, stream, 128, 128 * 128)["ppl"],
            "ppl2048": perplexity(model, stream, 2048, 4 * 2048)["ppl"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    loaded = load_model("smollm2-135m")
    stream = wikitext2_tokens(loaded.tokenizer)
    calib = calibration_windows(loaded.tokenizer, a.nsamples, a.seqlen, 0, model=loaded.model)
    rows = [dict(mode="dense", params=loaded.model.num_parameters(), **scores(loaded.model, stream))]
    for mode in MODES:
        model = copy.deepcopy(loaded.model)
        t = time.perf_counter()
        res = prune_model(model, calib, PruneSettings(ratio=0.2, gqa=mode), progress=False, log=lambda m: None)
        rows.append(dict(mode=mode, params=model.num_parameters(), prune_seconds=time.perf_counter() - t,
                         heads_kept=res.summary["heads_kept"], kv_kept=res.summary["kv_kept"],
                         channels_kept=res.summary["channels_kept"], **scores(model, stream)))
    print("| `--gqa` | params | PPL@128 (16,256 tok) | PPL@2048 (8,188 tok) | heads kept | KV heads kept | FFN kept (layer 0, 29) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        shape = ("9 | 3 | 1536" if r["mode"] == "dense" else
                 f"{r['heads_kept'][0]}→{r['heads_kept'][-1]} | {min(r['kv_kept'])}→{max(r['kv_kept'])} | "
                 f"{r['channels_kept'][0]}, {r['channels_kept'][-1]}")
        print(f"| {r['mode']} | {r['params']:,} | {r['ppl128']:.2f} | {r['ppl2048']:.2f} | {shape} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
