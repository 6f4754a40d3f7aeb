"""Quality study on the real model: SlimGPT's allocations (the log schedule, FLAP's counts),
calibration scale and recovery, and the baselines.

Every row of the study is one *configuration* (a variant, a target ratio, a calibration seed),
keyed "variant@ratio#sSEED" (e.g. "slimgpt@0.2#s1"). The queue below lists them in order of
value: the allocation grid with three seeds first, then the cost of --align, the paper's
calibration scale and LoRA recovery, then the older rows. Each finished configuration is cached
in a JSON file, so an interrupted run resumes where it stopped (nohup it, kill it, start it
again); `--only` picks configurations by glob, so every row is one command:

    python benchmarks/study.py                               # the whole queue, resumable
    python benchmarks/study.py --list                        # the queue and what is cached
    python benchmarks/study.py --only 'slimgpt@0.2#s1'       # one row
    python benchmarks/study.py --only 'slimgpt*@0.5#*'       # a glob
    python benchmarks/study_report.py                        # re-render docs/study.md from the cache

The committed rows of the variants "auto/t0.5" and "auto" were made by `--schedule auto`, removed
after this study (docs/study.md says why); they run at commit 10a61b2, the last that has it. Their
`calibration_loss` (the pruned model's mean next-token loss on its own calibration windows, the
score auto ranked its candidates by) was recorded by that commit's runner; later rows do not
spend the extra pass on it.

Not part of the default test run. Everything goes through the project's own code: the
`smollm2-135m` loader, `slimgpt.textdata` calibration windows, `slimgpt.pipeline.prune_model`
with the method registry (`slimgpt.methods`) and schedules (`slimgpt.schedules`),
`slimgpt.finetune` (LoRA recovery) and `slimgpt.evaluate.perplexity`.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import study_report as R  # noqa: E402

from slimgpt.evaluate import perplexity  # noqa: E402
from slimgpt.loaders import load_model  # noqa: E402
from slimgpt.pipeline import PruneSettings, prune_model  # noqa: E402
from slimgpt.textdata import calibration_windows, wikitext2_tokens  # noqa: E402


SEEDS = (0, 1, 2)
CALIB = (32, 256)           # the study's default calibration: windows x tokens
# recovery rows (slimgpt.finetune): LoRA distilled from the dense model, sized for a shared 2-core CPU
LORA = {"steps": 60, "rank": 8, "lr": 1e-3, "batch": 2, "seqlen": 512, "teacher": "dense"}
# the same recipe with 4x the steps (245,760 tokens): about half an hour of a 2-core CPU
LORA_LONG = {**LORA, "steps": 240}

# variant -> (PruneSettings overrides, extra): extra may hold "calib" (n, T), "finetune" (dict),
# "paper" (True: the published method and settings) and "doc" (what the row tests).
VARIANTS: dict[str, tuple[dict, dict]] = {
    "dense": ({}, {"doc": "the unpruned model"}),
    "slimgpt": ({"method": "slimgpt", "schedule": "log"}, {"paper": True, "doc": "SlimGPT as published (log IPR)"}),
    "flap": ({"method": "flap"}, {"doc": "FLAP: fluctuation scores, global threshold, bias"}),
    "wanda-sp": ({"method": "wanda-sp", "schedule": "log"}, {"doc": "Wanda-sp on the log schedule"}),
    "magnitude": ({"method": "magnitude", "schedule": "log"}, {"doc": "structure weight norms"}),
    # hypotheses for FLAP's lead at 20%
    "slimgpt/flap-plan": ({"method": "slimgpt", "schedule": "flap"},
                          {"doc": "SlimGPT OBS with FLAP's per-layer counts (allocation hypothesis)"}),
    "slimgpt/flap-plan/c16x2048": ({"method": "slimgpt", "schedule": "flap"},
                                   {"calib": (16, 2048), "doc": "SlimGPT OBS with FLAP's per-layer counts, "
                                                               "16 x 2048 calibration"}),
    "slimgpt/flap-plan/c16x2048+lora": ({"method": "slimgpt", "schedule": "flap"},
                                        {"calib": (16, 2048), "finetune": LORA,
                                         "doc": "SlimGPT with FLAP's counts, 16 x 2048 calibration, then LoRA recovery"}),
    "flap/c16x2048": ({"method": "flap"}, {"calib": (16, 2048), "doc": "FLAP with 16 x 2048 calibration (control)"}),
    "slimgpt+bias": ({"method": "slimgpt", "bias_compensation": True},
                     {"doc": "SlimGPT + mean-shift bias compensation (bias hypothesis)"}),
    "flap-nobias": ({"method": "flap", "compensate": False}, {"doc": "FLAP without its bias (bias hypothesis)"}),
    "slimgpt/gqa-group": ({"method": "slimgpt", "gqa": "group"},
                          {"doc": "SlimGPT pruning whole KV groups (KV-head hypothesis)"}),
    "slimgpt/damp0.001": ({"method": "slimgpt", "percdamp": 0.001}, {"doc": "damping 0.001"}),
    "slimgpt/damp0.1": ({"method": "slimgpt", "percdamp": 0.1}, {"doc": "damping 0.1"}),
    "slimgpt/c128x512": ({"method": "slimgpt"}, {"calib": (128, 512), "doc": "128 x 512 calibration tokens"}),
    "slimgpt/c64x2048": ({"method": "slimgpt"}, {"calib": (64, 2048), "doc": "64 x 2048 calibration tokens"}),
    "slimgpt/c16x2048": ({"method": "slimgpt"}, {"calib": (16, 2048), "doc": "16 x 2048 calibration tokens"}),
    "slimgpt/align32": ({"method": "slimgpt", "align": 32},
                        {"doc": "the log schedule with --align 32 (the CLI default; kept FFN widths a multiple "
                                "of 32, balanced heads)"}),
    "slimgpt/align32-ffn": ({"method": "slimgpt", "align": 32, "align_heads": False},
                            {"doc": "the log schedule with --align 32 --align-ffn-only (FFN widths aligned, the "
                                    "paper's head counts)"}),
    "slimgpt/c128x2048": ({"method": "slimgpt"}, {"calib": (128, 2048), "doc": "the paper's calibration scale: "
                                                                              "128 x 2048 C4 tokens"}),
    "slimgpt/flap-plan/c128x2048": ({"method": "slimgpt", "schedule": "flap"},
                                    {"calib": (128, 2048), "doc": "SlimGPT OBS with FLAP's per-layer counts at the "
                                                                  "paper's calibration scale: 128 x 2048 C4 tokens"}),
    "slimgpt/flap-plan/c16x2048+lora-long": ({"method": "slimgpt", "schedule": "flap"},
                                             {"calib": (16, 2048), "finetune": LORA_LONG,
                                              "doc": "SlimGPT with FLAP's counts, 16 x 2048 calibration, then LoRA "
                                                     "recovery with 4x the steps"}),
    # LoRA recovery (slimgpt finetune) after pruning
    "slimgpt+lora": ({"method": "slimgpt"}, {"finetune": LORA, "doc": "SlimGPT, then LoRA recovery"}),
    "flap+lora": ({"method": "flap"}, {"finetune": LORA, "doc": "FLAP, then LoRA recovery"}),
    "dense+lora": ({}, {"finetune": LORA, "doc": "the dense model after the same LoRA recipe (control)"}),
    # the paper's ablations and schedules (one seed)
    "no-compensation": ({"method": "slimgpt", "compensate": False}, {"doc": "OBS selection, no update"}),
    "no-gcd": ({"method": "slimgpt", "gcd": False}, {"doc": "plain-diagonal head errors"}),
    "no-dgs": ({"method": "slimgpt", "method_options": {"group_sizes": 128}}, {"doc": "fixed groups of 128"}),
    "slimgpt/uniform": ({"method": "slimgpt", "schedule": "uniform"}, {"doc": "uniform schedule"}),
    "slimgpt/log-decrease": ({"method": "slimgpt", "schedule": "log-decrease"}, {"doc": "log-decrease"}),
    "slimgpt/linear": ({"method": "slimgpt", "schedule": "linear"}, {"doc": "linear-increase"}),
    "slimgpt/linear-decrease": ({"method": "slimgpt", "schedule": "linear-decrease"}, {"doc": "linear-decrease"}),
}


def key(variant: str, ratio: float, seed: int) -> str:
    return "dense" if variant == "dense" else f"{variant}@{ratio:g}#s{seed}"


def queue() -> list[tuple[str, float, int]]:
    """(variant, ratio, seed) in priority order (the CPU budget decides how far it gets). Workers
    re-read this before every row."""
    ratios = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    alloc = ("slimgpt", "slimgpt/flap-plan")       # the log schedule and FLAP's counts
    q = [("dense", 0.0, 0)]
    # 1. the allocation grid: log and FLAP's counts at every ratio, seed 0 first
    q += [(v, r, 0) for r in ratios for v in alloc]
    # 2. the quality cost of --align 32 (the CLI default) paired with the log rows, the grid's
    #    seeds at 20% and 50%
    q += [("slimgpt/align32", r, 0) for r in (0.2, 0.5)]
    q += [(v, r, s) for s in SEEDS[1:] for r in (0.2, 0.5) for v in alloc]
    q += [("slimgpt/align32", r, s) for s in SEEDS[1:] for r in (0.2, 0.5)]
    # 3. the rest of the grid's seeds
    q += [(v, 0.3, s) for s in SEEDS[1:] for v in alloc]
    q += [("slimgpt/align32-ffn", r, s) for s in SEEDS for r in (0.2, 0.5)]
    q += [(v, r, s) for r in (0.1, 0.4, 0.6) for s in SEEDS[1:] for v in alloc]
    # 4. the paper's calibration scale (log and FLAP's counts at 20%, log at 50%: the best
    #    allocation there), the recovery rows on the best 20% configuration, then the older rows
    q += [("slimgpt/c128x2048", 0.2, 0), ("slimgpt/flap-plan/c128x2048", 0.2, 0), ("slimgpt/c128x2048", 0.5, 0)]
    q += [(v, 0.2, 0) for v in ("slimgpt/flap-plan/c16x2048", "slimgpt/flap-plan/c16x2048+lora",
                                "slimgpt/flap-plan/c16x2048+lora-long")]
    q += [(v, r, 0) for r in (0.2, 0.5) for v in ("flap", "wanda-sp")]
    seen, out = set(), []
    for item in q:
        k = key(*item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def command(variant: str, ratio: float, seed: int) -> str:
    """The CLI command(s) that make this row's model (documented next to the results)."""
    over, extra = VARIANTS[variant]
    n, T = extra.get("calib", CALIB)
    parts = []
    if variant.startswith("dense"):
        parts.append("slimgpt eval smollm2-135m --seqlen 128 --max-tokens 16384 && "
                     "slimgpt eval smollm2-135m --seqlen 2048 --max-tokens 16384")
    else:
        m = over.get("method", "slimgpt")
        cmd = f"slimgpt prune --model smollm2-135m --ratio {ratio:g} --nsamples {n} --seqlen {T} --seed {seed}"
        if m != "slimgpt":
            cmd += f" --method {m}"
        if over.get("schedule", "log") != "log":
            cmd += f" --schedule {over['schedule']}"
        flags = {"bias_compensation": "--bias-compensation", "gcd": "--no-gcd", "compensate": "--no-compensation"}
        for k, flag in flags.items():
            if k in over and over[k] != PruneSettings.__dataclass_fields__[k].default:
                cmd += f" {flag}"
        if "gqa" in over:
            cmd += f" --gqa {over['gqa']}"
        if "percdamp" in over:
            cmd += f" --percdamp {over['percdamp']:g}"
        cmd += f" --align {over.get('align', 1)}"          # the study's rows are exact counts unless named
        if over.get("align_heads") is False:
            cmd += " --align-ffn-only"
        if over.get("method_options", {}).get("group_sizes"):
            cmd += f" --fixed-group {over['method_options']['group_sizes']}"
        parts.append(cmd + " --out pruned")
    ft = extra.get("finetune")
    if ft:
        src = "smollm2-135m" if variant.startswith("dense") else "pruned"
        parts.append(f"slimgpt finetune {src} --out recovered --steps {ft['steps']} --rank {ft['rank']} "
                     f"--lr {ft['lr']:g} --batch {ft['batch']} --seqlen {ft['seqlen']} --seed {seed}"
                     + (" --teacher smollm2-135m" if ft.get("teacher") else ""))
    return " && ".join(parts)


def run_row(variant, ratio, seed, base, tok, ids, calib_cache, args) -> dict:
    over, extra = VARIANTS[variant]
    n, T = extra.get("calib", (args.nsamples, args.seqlen))
    model = copy.deepcopy(base)
    row = {"variant": variant, "ratio": ratio, "seed": seed, "paper": bool(extra.get("paper")),
           "doc": extra.get("doc", ""), "calibration": [n, T], "command": command(variant, ratio, seed)}
    if not variant.startswith("dense"):
        if (n, T, seed) not in calib_cache:
            calib_cache[(n, T, seed)] = calibration_windows(tok, n, T, seed)
        calib = calib_cache[(n, T, seed)]
        s = PruneSettings(**{"ratio": ratio, "n_samples": n, "seqlen": T, "seed": seed, "percdamp": args.percdamp,
                             "backend": args.backend, "batch_size": 4 if T > 1024 else 8,
                             **{k: copy.deepcopy(v) for k, v in over.items()}})      # a variant's own values win
        t1 = time.time()
        res = prune_model(model, calib, s, log=lambda m: None, progress=False)
        sm = res.summary
        row.update(prune_s=time.time() - t1, ratios=sm["ratios"], pruned_params=sm["pruned_params"],
                   target_pruned_params=sm["target_pruned_params"],
                   pruned_fraction_of_prunable=sm["pruned_fraction_of_prunable"],
                   layer_errors=[[r.get("attn_error"), r.get("ffn_error")] for r in res.layers])
    ft = extra.get("finetune")
    if ft:
        base_key = key(variant.split("+")[0], ratio, seed)
        before = args.data["results"].get(base_key)
        if before is None:
            t1 = time.time()
            before = {"ppl128": _ppl(model, ids, 128, args), "ppl2048": _ppl(model, ids, 2048, args)}
            row["eval_before_s"] = time.time() - t1
        row.update(ppl128_before=before["ppl128"], ppl2048_before=before["ppl2048"])
        from slimgpt.finetune import FinetuneSettings, finetune
        torch.set_grad_enabled(True)
        try:
            fs = FinetuneSettings(seed=seed, **{k: v for k, v in ft.items() if k != "teacher"})
            fr = finetune(model, tok, fs, teacher=base if ft.get("teacher") else None,
                          log=lambda m: print("   ", m, flush=True))
        finally:
            torch.set_grad_enabled(False)
        row["finetune"] = {k: v for k, v in fr.items() if k != "model"}
    t1 = time.time()
    row["ppl128"] = _ppl(model, ids, 128, args)
    row["ppl2048"] = _ppl(model, ids, 2048, args)
    cfg = model.config
    row.update(params=model.num_parameters(), heads_kept=list(cfg.layer_heads), kv_kept=list(cfg.layer_kv_heads),
               ffn_kept=list(cfg.layer_intermediate), eval_s=time.time() - t1,
               has_bias=[layer.self_attn.o_proj.bias is not None for layer in model.model.layers])
    return row


def claim(cache: Path, k: str) -> bool:
    """Claim configuration k for this process (parallel workers share one cache): a claim file
    with our pid, taken over when its process is gone."""
    d = cache.parent / "claims"
    d.mkdir(parents=True, exist_ok=True)
    f = d / (k.replace("/", "_").replace("#", "_") + ".pid")
    try:
        fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(f.read_text() or 0)
            os.kill(pid, 0)
            return pid == os.getpid()
        except (ValueError, ProcessLookupError):
            f.unlink(missing_ok=True)
            return claim(cache, k)
        except PermissionError:
            return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def claimed(cache: Path, k: str) -> bool:
    """Whether another live process holds the claim on k."""
    f = cache.parent / "claims" / (k.replace("/", "_").replace("#", "_") + ".pid")
    try:
        pid = int(f.read_text() or 0)
        os.kill(pid, 0)
        return pid != os.getpid()
    except (OSError, ValueError):
        return False


def _reload() -> dict:
    import runpy
    return runpy.run_path(__file__, run_name="study_reloaded")


def release(cache: Path, k: str) -> None:
    (cache.parent / "claims" / (k.replace("/", "_").replace("#", "_") + ".pid")).unlink(missing_ok=True)


def _ppl(model, ids, seqlen, args) -> float:
    n = args.chunks128 if seqlen == 128 else args.windows2048
    return perplexity(model, ids, seqlen, max_tokens=n * seqlen)["ppl"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/results/study.json"))
    ap.add_argument("--doc", type=Path, default=Path("docs/study.md"))
    ap.add_argument("--img", type=Path, default=Path("docs/img"))
    ap.add_argument("--nsamples", type=int, default=CALIB[0])
    ap.add_argument("--seqlen", type=int, default=CALIB[1])
    ap.add_argument("--percdamp", type=float, default=0.01)
    ap.add_argument("--backend", default=None, help="ops backend: reference | cpu | cuda (default: fastest)")
    ap.add_argument("--chunks128", type=int, default=128, help="128-token chunks scored (16,384 tokens)")
    ap.add_argument("--windows2048", type=int, default=8, help="2048-token windows scored (16,384 tokens)")
    ap.add_argument("--only", nargs="*", help="run only configurations whose key matches one of these globs")
    ap.add_argument("--list", action="store_true", help="print the queue (cached rows marked) and exit")
    ap.add_argument("--max-rows", type=int, default=None, help="stop after this many new rows")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is best on a busy machine)")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = R.load(args.cache) if not args.fresh else {"settings": {}, "results": {}}
    items = [it for it in queue() if not args.only or any(fnmatch.fnmatchcase(key(*it), g) for g in args.only)]
    if args.list:
        for it in items:
            k = key(*it)
            print(("[done] " if k in data["results"] else "[todo] ") + k + "    " + command(*it))
        return
    torch.set_grad_enabled(False)
    settings = {"model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32)",
                "calibration": f"C4 sample docs 1000-1999 (slimgpt.textdata), {args.nsamples} x {args.seqlen} "
                               f"tokens unless the row says otherwise, seeds {', '.join(map(str, SEEDS))}",
                "percdamp": args.percdamp,
                "ppl128": f"WikiText-2 test, first {args.chunks128} non-overlapping 128-token chunks "
                          f"({args.chunks128 * 128:,} tokens)",
                "ppl2048": f"WikiText-2 test, first {args.windows2048} non-overlapping 2048-token windows "
                           f"({args.windows2048 * 2048:,} tokens)",
                "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(), "lora": LORA}
    keys = ("calibration", "percdamp", "ppl128", "ppl2048")
    if data.get("settings") and {k: data["settings"].get(k) for k in keys} != {k: settings[k] for k in keys}:
        sys.exit(f"{args.cache} holds results for other settings; pass --fresh or another --cache")
    data["settings"] = settings
    args.data = data
    args.cache.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    loaded = load_model("smollm2-135m")
    base, tok = loaded.model, loaded.tokenizer
    ids = wikitext2_tokens(tok)
    calib_cache: dict = {}
    print(f"loaded model, tokenizer, data in {time.time() - t0:.0f} s", flush=True)
    done, failed = 0, set()
    while True:
        # the queue is re-read from this file before every row, so a running worker follows edits
        # of queue() / VARIANTS (new rows, a new order) without a restart
        fresh = _reload()
        VARIANTS.clear()
        VARIANTS.update(fresh["VARIANTS"])
        todo = [it for it in fresh["queue"]() if (not args.only or any(fnmatch.fnmatchcase(key(*it), g)
                                                                         for g in args.only))]
        data = R.load(args.cache) if args.cache.exists() else data
        todo = [it for it in todo if key(*it) not in data["results"] and key(*it) not in failed
                and not claimed(args.cache, key(*it))]
        if not todo or (args.max_rows is not None and done >= args.max_rows):
            break
        variant, ratio, seed = todo[0]
        k = key(variant, ratio, seed)
        data = R.load(args.cache) if args.cache.exists() else data
        args.data = data
        if not claim(args.cache, k):
            continue
        print(f"[run] {k}   ({command(variant, ratio, seed)})", flush=True)
        t1 = time.time()
        try:
            row = run_row(variant, ratio, seed, base, tok, ids, calib_cache, args)
        except Exception:                       # noqa: BLE001 - log, skip, keep the queue going
            traceback.print_exc()
            print(f"[fail] {k}", flush=True)
            release(args.cache, k)
            failed.add(k)
            continue
        row["wall_s"] = time.time() - t1
        data = R.load(args.cache) if args.cache.exists() else data   # a parallel runner may have added rows
        data["settings"] = settings
        data["results"][k] = row
        args.data = data
        tmp = args.cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, args.cache)
        release(args.cache, k)
        done += 1
        print(f"  params {row['params']:,}  ppl128 {row['ppl128']:.2f}  ppl2048 {row['ppl2048']:.2f}  "
              f"prune {row.get('prune_s') or 0:.0f} s  eval {row['eval_s']:.0f} s  total {row['wall_s']:.0f} s",
              flush=True)
        try:
            importlib.reload(R)
            R.write_doc(data, args.doc, args.img)
        except Exception:                       # noqa: BLE001 - rendering must not stop the queue
            traceback.print_exc()
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
