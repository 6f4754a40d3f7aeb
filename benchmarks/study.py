"""Quality study on the real model: SlimGPT against baselines and ablations on SmolLM2-135M.

Runs the matrix {dense} ∪ {slimgpt, magnitude, wanda-sp, flap, no-compensation, no-gcd, no-dgs}
× {20%, 50%} ∪ {SlimGPT with uniform / linear / log-decrease schedules at 50%}, one seed, one
calibration setting, and writes docs/study.md (table + settings + the exact command) and
docs/img/study_ppl.png. Each finished configuration is cached in a JSON file, so an interrupted
run resumes where it stopped (delete the file, or pass --fresh, to start over).

    python benchmarks/study.py                       # ~30-45 min on 2 CPU cores
    python benchmarks/study.py --only slimgpt@0.2    # one configuration

Not part of the default test run. Everything goes through the project's own code: the
`smollm2-135m` loader, `slimgpt.textdata` calibration windows, `slimgpt.pipeline.prune_model`
with the method registry (`slimgpt.methods`, baselines from `slimgpt.baselines_methods`), and
`slimgpt.evaluate.perplexity`.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import study_report as R  # noqa: E402

from slimgpt import baselines_methods as BM  # noqa: E402
from slimgpt.evaluate import perplexity  # noqa: E402
from slimgpt.loaders import load_model  # noqa: E402
from slimgpt.pipeline import PruneSettings, prune_model  # noqa: E402
from slimgpt.textdata import calibration_windows, wikitext2_tokens  # noqa: E402

# (key, method, ratio, schedule, spec overrides) in priority order: the headline comparisons first.
def matrix():
    rows = [("dense", "dense", 0.0, None, {})]
    for r in (0.2, 0.5):
        rows += [
            (f"slimgpt@{r}", "slimgpt", r, "log", {}),
            (f"magnitude@{r}", "magnitude", r, "log", {}),
            (f"wanda-sp@{r}", "wanda-sp", r, "log", {}),
            (f"no-compensation@{r}", "no-compensation", r, "log", {"compensate": False}),
            (f"flap@{r}", "flap", r, "global", {}),
        ]
    rows += [
        ("slimgpt-uniform@0.5", "slimgpt", 0.5, "uniform", {}),
        ("slimgpt-log-decrease@0.5", "slimgpt", 0.5, "log-decrease", {}),
        ("slimgpt-linear@0.5", "slimgpt", 0.5, "linear", {}),
        ("no-gcd@0.5", "no-gcd", 0.5, "log", {"gcd": False}),
        ("no-dgs@0.5", "no-dgs", 0.5, "log", {"method_options": {"group_sizes": 128}}),
        ("no-gcd@0.2", "no-gcd", 0.2, "log", {"gcd": False}),
        ("no-dgs@0.2", "no-dgs", 0.2, "log", {"method_options": {"group_sizes": 128}}),
        ("slimgpt-linear-decrease@0.5", "slimgpt", 0.5, "linear-decrease", {}),
    ]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("out/study/results.json"))
    ap.add_argument("--doc", type=Path, default=Path("docs/study.md"))
    ap.add_argument("--plot", type=Path, default=Path("docs/img/study_ppl.png"))
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--percdamp", type=float, default=0.01)
    ap.add_argument("--backend", default=None,
                    help="ops backend for SlimGPT: reference | cpu | cuda (default: the fastest available; the "
                         "C++ core is ~30x faster than the NumPy reference on SmolLM2's 1536-wide down_proj)")
    ap.add_argument("--chunks128", type=int, default=128, help="128-token chunks scored (spec §8.1 protocol)")
    ap.add_argument("--windows2048", type=int, default=4, help="2048-token windows scored")
    ap.add_argument("--only", nargs="*", help="run only these keys")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args(argv)

    torch.set_grad_enabled(False)
    settings = {"model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32)",
                "calibration": f"C4 sample docs 1000-1999 (slimgpt.textdata), {args.nsamples} x {args.seqlen} "
                               f"tokens, seed {args.seed}",
                "percdamp": args.percdamp, "backend": args.backend,
                "ppl128": f"WikiText-2 test, first {args.chunks128} non-overlapping 128-token chunks "
                          f"({args.chunks128 * 128:,} tokens)",
                "ppl2048": f"WikiText-2 test, first {args.windows2048} non-overlapping 2048-token windows "
                           f"({args.windows2048 * 2048:,} tokens)",
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                "command": "python benchmarks/study.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    data = R.load(args.cache) if not args.fresh else {"settings": {}, "results": {}}
    keys = ("calibration", "percdamp", "ppl128", "ppl2048")
    if data.get("settings") and {k: data["settings"].get(k) for k in keys} != {k: settings[k] for k in keys}:
        sys.exit(f"{args.cache} holds results for other settings; pass --fresh or another --cache")
    data["settings"] = settings
    args.cache.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    loaded = load_model("smollm2-135m")
    base, tok = loaded.model, loaded.tokenizer
    ids = wikitext2_tokens(tok)
    calib = calibration_windows(tok, args.nsamples, args.seqlen, args.seed)
    print(f"loaded model, tokenizer, data in {time.time() - t0:.0f} s", flush=True)

    for key, method, ratio, schedule, over in matrix():
        if args.only and key not in args.only:
            continue
        if key in data["results"]:
            print(f"[cached] {key}", flush=True)
            continue
        print(f"[run] {key}", flush=True)
        model = copy.deepcopy(base)
        prune_s, summary = None, {}
        if method != "dense":
            reg = {"no-compensation": "slimgpt", "no-gcd": "slimgpt", "no-dgs": "slimgpt"}.get(method, method)
            s = PruneSettings(ratio=ratio, schedule=schedule if schedule != "global" else "log",
                              n_samples=args.nsamples, seqlen=args.seqlen, seed=args.seed, method=reg,
                              percdamp=args.percdamp, backend=args.backend, **over)
            t1 = time.time()
            counts = BM.PLANNERS[reg](model, calib, s) if reg in BM.PLANNERS else None
            res = prune_model(model, calib, s, log=lambda m: None, progress=False, counts=counts)
            prune_s = time.time() - t1
            summary = res.summary
        from slimgpt.ops import resolve_backend
        backend = resolve_backend(args.backend) if method not in ("dense", "magnitude", "wanda-sp", "flap") else None
        t1 = time.time()
        p128 = perplexity(model, ids, 128, max_tokens=args.chunks128 * 128)["ppl"]
        p2048 = perplexity(model, ids, 2048, max_tokens=args.windows2048 * 2048)["ppl"]
        cfg = model.config
        res = {"method": method, "ratio": ratio, "schedule": schedule, "params": model.num_parameters(),
               "heads_kept": list(cfg.layer_heads), "kv_kept": list(cfg.layer_kv_heads),
               "ffn_kept": list(cfg.layer_intermediate), "ppl128": p128, "ppl2048": p2048,
               "prune_s": prune_s, "eval_s": time.time() - t1, "backend": backend,
               "pruned_fraction_of_prunable": summary.get("pruned_fraction_of_prunable")}
        data["results"][key] = res
        args.cache.write_text(json.dumps(data, indent=1))
        print(f"  params {res['params']:,}  ppl128 {p128:.2f}  ppl2048 {p2048:.2f}  "
              f"prune {prune_s or 0:.0f} s  eval {res['eval_s']:.0f} s", flush=True)
        R.write_doc(data, args.doc, args.plot)
    R.write_doc(data, args.doc, args.plot)
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
