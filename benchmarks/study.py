"""Quality study on the real model: SlimGPT against baselines and ablations on SmolLM2-135M.

Runs the matrix {dense} ∪ {slimgpt, magnitude, wanda-sp, flap, no-compensation, no-gcd, no-dgs}
× {20%, 50%} ∪ {SlimGPT with uniform / linear / log-decrease schedules at 50%}, one seed, one
calibration setting, and writes docs/study.md (table + settings + the exact command) and
docs/img/study_ppl.png. Each finished configuration is cached in a JSON file, so an interrupted
run resumes where it stopped (delete the file, or pass --fresh, to start over).

    python benchmarks/study.py                       # ~30-45 min on 2 CPU cores
    python benchmarks/study.py --only slimgpt@0.2    # one configuration

Not part of the default test run. Uses benchmarks/study_harness.py (see its header).
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
import study_harness as S  # noqa: E402
import study_report as R  # noqa: E402

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
        ("no-dgs@0.5", "no-dgs", 0.5, "log", {"fixed_group": 128}),
        ("no-gcd@0.2", "no-gcd", 0.2, "log", {"gcd": False}),
        ("no-dgs@0.2", "no-dgs", 0.2, "log", {"fixed_group": 128}),
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
    ap.add_argument("--chunks128", type=int, default=128, help="128-token chunks scored (spec §8.1 protocol)")
    ap.add_argument("--windows2048", type=int, default=4, help="2048-token windows scored")
    ap.add_argument("--only", nargs="*", help="run only these keys")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args(argv)

    torch.set_grad_enabled(False)
    settings = {"model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32)",
                "calibration": f"C4 sample docs 1000-1999, {args.nsamples} x {args.seqlen} tokens, seed {args.seed}",
                "percdamp": args.percdamp,
                "ppl128": f"WikiText-2 test, first {args.chunks128} non-overlapping 128-token chunks "
                          f"({args.chunks128 * 128:,} tokens)",
                "ppl2048": f"WikiText-2 test, first {args.windows2048} non-overlapping 2048-token windows "
                           f"({args.windows2048 * 2048:,} tokens)",
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                "command": "python benchmarks/study.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    data = R.load(args.cache) if not args.fresh else {"settings": {}, "results": {}}
    if data.get("settings") and {k: data["settings"].get(k) for k in ("calibration", "percdamp", "ppl128", "ppl2048")} \
            != {k: settings[k] for k in ("calibration", "percdamp", "ppl128", "ppl2048")}:
        sys.exit(f"{args.cache} holds results for other settings; pass --fresh or another --cache")
    data["settings"] = settings
    args.cache.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    base = S.load_smollm2()
    tok = S.load_tokenizer()
    ids = S.wikitext_ids(tok)
    calib = S.c4_calibration(tok, args.nsamples, args.seqlen, args.seed)
    print(f"loaded model, tokenizer, data in {time.time() - t0:.0f} s", flush=True)

    for key, method, ratio, schedule, over in matrix():
        if args.only and key not in args.only:
            continue
        if key in data["results"]:
            print(f"[cached] {key}", flush=True)
            continue
        print(f"[run] {key}", flush=True)
        model = copy.deepcopy(base)
        prune_s = None
        if method != "dense":
            spec = S.PruneSpec(method={"no-compensation": "slimgpt", "no-gcd": "slimgpt",
                                       "no-dgs": "slimgpt"}.get(method, method),
                               ratio=ratio, schedule=schedule if schedule != "global" else "log",
                               percdamp=args.percdamp, **over)
            plan = S.prune(model, calib, spec)
            prune_s = plan["seconds"]
            S.shrink(model, plan)
        t1 = time.time()
        p128 = S.perplexity(model, ids, 128, args.chunks128, 16)
        p2048 = S.perplexity(model, ids, 2048, args.windows2048, 1)
        res = {"method": method, "ratio": ratio, "schedule": schedule, "params": model.n_params(),
               "heads_kept": [len(m) for m in model.cfg.kv_map], "ffn_kept": list(model.cfg.ffn_sizes),
               "ppl128": p128, "ppl2048": p2048, "prune_s": prune_s, "eval_s": time.time() - t1}
        data["results"][key] = res
        args.cache.write_text(json.dumps(data, indent=1))
        print(f"  params {res['params']:,}  ppl128 {p128:.2f}  ppl2048 {p2048:.2f}  "
              f"prune {prune_s or 0:.0f} s  eval {res['eval_s']:.0f} s", flush=True)
        R.write_doc(data, args.doc, args.plot)
    R.write_doc(data, args.doc, args.plot)
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
