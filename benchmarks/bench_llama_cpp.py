"""Dense vs pruned SmolLM2-135M where users run it: llama.cpp (GGUF f16, q8_0, Q4_K_M) and torch.

    pip install llama-cpp-python==0.3.36                 # builds llama.cpp (many minutes on 2 cores)
    PYTHONPATH=. python benchmarks/bench_llama_cpp.py --work out/llama_cpp --json out/llama_cpp/results.json

(PYTHONPATH=.: the checkout's slimgpt, not an older installed one.)

What it does, in order (every step skips what the work folder already holds):
1. checkpoints: the dense model (saved as a slimgpt checkpoint) and, for every --ratios x
   --aligns, `slimgpt prune --model smollm2-135m --ratio R --align N` with the default settings
   (the README command plus --align, --nsamples); with --shapes-only, seeded random weights with the shapes
   those prunes have instead (speed depends on shapes only; no perplexity then);
2. `slimgpt export --format gguf --dtype D` for every --formats;
3. speed in llama.cpp, per format and --flash-attn setting: all models loaded in one process,
   --repeats rounds taken round-robin over the models after a warm-up, medians: prompt =
   tokens/s of one --prompt-token eval from an empty cache; decode = tokens/s of --decode
   single-token evals after it (the following WikiText-2 tokens, teacher-forced: speed does not
   depend on which token), --threads threads;
4. the same in torch (float32, slimgpt.model with the KV cache of benchmarks/bench_inference.py);
5. the decode ceiling: a decode step reads every weight once (SmolLM2's tied 49,152 x 576
   embedding is the output matrix too), so bytes(dense) / bytes(pruned) of the GGUF tensors is
   the speed-up a memory-bound decode can reach at most;
6. perplexity: PPL@2048 in torch (WikiText-2 test, the first 8 non-overlapping 2048-token
   windows: docs/study.md's protocol) and in llama.cpp per format on the same windows (--ppl-tokens).

Ratios are to the dense model of the same format, measured in the same process and round.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# ggml's OpenMP threads spin at every barrier by default; on a CPU shared with other jobs a
# spinning thread waits for a descheduled partner for a whole time slice (2 threads: 0.1 decode
# tok/s instead of 12 on the shared machine). Passive waits measure the model instead. Set before
# torch is imported: torch loads the libgomp.so.1 that ggml then shares, and it reads this once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
FTYPES = {"f16": "float16", "q8_0": "q8_0", "q4_k_m": "q4_k_m"}


def _bench_inference():
    spec = importlib.util.spec_from_file_location("bench_inference", HERE / "bench_inference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------
# 1-2. Checkpoints and exports

def planned_shapes(cfg, ratio: float, align: str):
    """(heads, kv heads, kv maps, FFN widths) a default prune plans (log schedule, the budget) at
    `align` "N" (--align N) or "Nf" (--align N --align-ffn-only):
    exact under --align N > 1 (balanced heads: no KV head leaves); under --align 1 or Nf the KV heads
    the selection removes are unknown, so every KV head stays and the query heads leave one
    group at a time (uneven groups, as real prunes have)."""
    from slimgpt import schedules
    from slimgpt.methods import METHODS
    from slimgpt.pipeline import PruneSettings
    from slimgpt.schedule import Budget, prunable_params

    n, ffn_only = int(align.rstrip("f")), align.endswith("f")
    s = PruneSettings(ratio=ratio, align=n, align_heads=not ffn_only)
    L = cfg.num_hidden_layers
    ratios, plan = schedules.plan(cfg, None, None, s, METHODS[s.method])     # the pipeline's own plan
    target = round(ratio * sum(prunable_params(cfg, i) for i in range(L)))
    budget = Budget(cfg, ratios, plan, target, n)
    heads, kvs, maps, ffn = [], [], [], []
    for i, p in enumerate(plan):
        budget.remove(heads=p.heads, kv_heads=p.kv_heads)
        width = cfg.layer_intermediate[i]
        ch = budget.channels(i, width)
        budget.remove(channels=ch)
        H, K = cfg.layer_heads[i] - p.heads, cfg.layer_kv_heads[i] - p.kv_heads
        counts = [H // K + (j < H % K) for j in range(K)]
        heads.append(H), kvs.append(K), ffn.append(width - ch)
        maps.append([j for j in range(K) for _ in range(counts[j])])
    return heads, kvs, maps, ffn


def make_checkpoints(work: Path, ratios, aligns, shapes_only: bool, log, nsamples: int = 64) -> dict:
    from slimgpt.checkpoint import save_pretrained
    from slimgpt.loaders import load_model
    from slimgpt.model import build_model, random_init_

    out = {"dense": work / "dense", "dense-deci": work / "dense"}
    if not (out["dense"] / "model.safetensors").exists():
        loaded = load_model("smollm2-135m")
        save_pretrained(loaded.model, out["dense"], loaded.tokenizer, {"source_model": "smollm2-135m"},
                        tokenizer_config=getattr(loaded, "tokenizer_config", None))
    for r in ratios:
        for n in aligns:
            name = f"r{r:g}-a{n}" + ("-shapes" if shapes_only else "")
            folder = out[name] = work / name
            if (folder / "model.safetensors").exists():
                continue
            t = time.perf_counter()
            if shapes_only:
                loaded = load_model("smollm2-135m")
                heads, kvs, maps, ffn = planned_shapes(loaded.model.config, r, n)
                cfg = loaded.model.config.__class__(**{**vars(loaded.model.config), "layer_heads": heads,
                                                       "layer_kv_heads": kvs, "layer_kv_map": maps,
                                                       "layer_intermediate": ffn})
                save_pretrained(random_init_(build_model(cfg), seed=0), folder, loaded.tokenizer,
                                {"source_model": "smollm2-135m", "shapes_only": True})
            else:
                cmd = [sys.executable, "-m", "slimgpt", "prune", "--model", "smollm2-135m", "--ratio", str(r),
                       "--align", n.rstrip("f"), "--nsamples", str(nsamples), "--eval-tokens", "0", "--quiet",
                       "--out", str(folder)] + (["--align-ffn-only"] if n.endswith("f") else [])
                subprocess.run(cmd, check=True)
            log(f"{name}: {time.perf_counter() - t:.0f} s")
    return out


def export_all(ckpts: dict, formats, work: Path, log) -> dict:
    """GGUF files; "dense-deci" is the dense model written as `deci` (per-layer arrays) instead of
    `llama`, to measure what the architecture alone costs at equal widths."""
    import slimgpt.export.gguf as writer
    from slimgpt.export import export_checkpoint

    files = {}
    plain = writer.is_plain_llama
    for name, folder in ckpts.items():
        for f in formats:
            path = work / f"{name}-{f}.gguf"
            if not path.exists():
                writer.is_plain_llama = (lambda cfg: False) if name == "dense-deci" else plain
                info = export_checkpoint(folder, path, format="gguf", dtype=FTYPES[f])
                writer.is_plain_llama = plain
                log(f"exported {path.name}: {info.get('arch')}, types {info.get('tensor_types')}, "
                    f"regrouped layers {len(info.get('regrouped_layers', []))}")
            files[name, f] = path
    return files


def gguf_info(path: Path) -> dict:
    """Tensor bytes (what a decode step reads), architecture, KV heads, matrix types."""
    import gguf

    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    kv = r.fields[f"{arch}.attention.head_count_kv"].contents()
    types = {}
    for t in r.tensors:
        if len(t.shape) > 1:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"bytes": int(sum(int(t.n_bytes) for t in r.tensors)), "arch": arch,
            "kv_heads": kv if isinstance(kv, list) else [kv], "types": types}


# ------------------------------------------------------------------------------------------------
# 3-4. Speed

def _no_repack():
    """llama.cpp without its extra CPU buffer types (runtime weight repacking, AMX): with them,
    llama-cpp-python 0.3.36 segfaulted on every Q8_0 / Q4_K_M eval on this machine (an AVX-512 /
    AMX Xeon VM), dense llama.cpp-quantized files included. Applied to all formats alike."""
    import llama_cpp
    import llama_cpp.llama as module

    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    module.llama_cpp.llama_model_default_params = params

def llama_speed(files: dict, names, fmt: str, flash: bool, tokens, a, log) -> dict:
    from llama_cpp import Llama

    _no_repack()
    prompt, follow = tokens[:a.prompt], tokens[a.prompt:a.prompt + a.decode]
    llms = {n: Llama(model_path=str(files[n, fmt]), n_ctx=a.prompt + a.decode + 16, n_batch=512, n_ubatch=512,
                     n_threads=a.threads, n_threads_batch=a.threads, flash_attn=flash, verbose=False)
            for n in names}
    times = {n: {"prompt": [], "decode": []} for n in names}
    try:
        for rep in range(a.repeats + 1):                          # round 0: a short warm-up
            for n in names:
                llm = llms[n]
                llm.reset()
                t = time.perf_counter()
                llm.eval(prompt if rep else prompt[:32])
                tp = time.perf_counter() - t
                t = time.perf_counter()
                for tok in follow if rep else follow[:4]:
                    llm.eval([tok])
                td = time.perf_counter() - t
                if rep:
                    times[n]["prompt"].append(len(prompt) / tp)
                    times[n]["decode"].append(len(follow) / td)
    finally:
        for llm in llms.values():
            llm.close()
    res = {n: {k: statistics.median(v) for k, v in times[n].items()} for n in names}
    log(f"llama.cpp {fmt} fa={'on' if flash else 'off'}: " +
        ", ".join(f"{n} {r['prompt']:.0f}/{r['decode']:.1f}" for n, r in res.items()))
    return res


@torch.no_grad()
def torch_speed(ckpts: dict, names, tokens, a, log) -> dict:
    from slimgpt.loaders import load_model

    bi = _bench_inference()
    models = {n: load_model(str(ckpts[n])).model.eval() for n in names}
    prompt = torch.tensor([tokens[:a.prompt]])
    follow = torch.tensor(tokens[a.prompt:a.prompt + a.decode])
    times = {n: {"prompt": [], "decode": []} for n in names}
    for rep in range(a.repeats + 1):
        for n in names:
            m = models[n]
            rope = bi.Rope(m.config, torch.device("cpu"), a.prompt + a.decode + 16)
            cache = [dict() for _ in m.model.layers]
            t = time.perf_counter()
            bi.forward_cached(m, prompt, cache, 0, rope)
            tp = time.perf_counter() - t
            t = time.perf_counter()
            for s, tok in enumerate(follow):
                bi.forward_cached(m, tok.view(1, 1), cache, a.prompt + s, rope)
            td = time.perf_counter() - t
            if rep:
                times[n]["prompt"].append(a.prompt / tp)
                times[n]["decode"].append(a.decode / td)
    res = {n: {k: statistics.median(v) for k, v in times[n].items()} for n in names}
    log("torch: " + ", ".join(f"{n} {r['prompt']:.0f}/{r['decode']:.1f}" for n, r in res.items()))
    return res


# ------------------------------------------------------------------------------------------------
# 6. Perplexity

@torch.no_grad()
def torch_ppl(folder: Path, stream: torch.Tensor, a) -> float:
    from slimgpt.evaluate import perplexity
    from slimgpt.loaders import load_model

    return perplexity(load_model(str(folder)).model, stream, 2048, a.ppl_tokens, batch_tokens=2048)["ppl"]


def llama_ppl(path: Path, stream: torch.Tensor, a) -> float:
    from llama_cpp import Llama

    _no_repack()
    n_win = a.llama_ppl_tokens // 2048
    llm = Llama(model_path=str(path), n_ctx=2048, n_batch=512, n_threads=a.threads, n_threads_batch=a.threads,
                logits_all=True, verbose=False)
    total, count = 0.0, 0
    try:
        for w in stream[: n_win * 2048].view(n_win, 2048):
            llm.reset()
            llm.eval(w.tolist())
            logp = torch.log_softmax(torch.from_numpy(np.array(llm.scores[:2047])).double(), -1)
            total -= float(logp.gather(1, w[1:, None]).sum())
            count += 2047
    finally:
        llm.close()
    return math.exp(total / count)


# ------------------------------------------------------------------------------------------------
# Tables

def tables(res: dict) -> str:
    names = res["names"]
    lines = ["| runtime | format | FA | model | params | GGUF MB | prompt tok/s | × dense | decode tok/s | × dense "
             "| decode ceiling × dense |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, speeds in res["speed"].items():
        runtime, fmt, fa = key.split("/")
        d = speeds["dense"]
        for n in names:
            s = speeds[n]
            info = res["gguf"].get(f"{n}/{fmt}", {})
            dense_b = res["gguf"].get(f"dense/{fmt}", {}).get("bytes")
            ceil = f"{dense_b / info['bytes']:.2f}" if info and dense_b else "—"
            mb = f"{info['bytes'] / 2 ** 20:.0f}" if info else "—"
            lines.append(f"| {runtime} | {fmt} | {fa} | {n} | {res['params'][n] / 1e6:.1f}M | {mb} | "
                         f"{s['prompt']:.0f} | {s['prompt'] / d['prompt']:.2f} | {s['decode']:.1f} | "
                         f"{s['decode'] / d['decode']:.2f} | {ceil} |")
    if res.get("ppl"):
        lines += ["", f"PPL@2048, WikiText-2: torch on {res['settings']['ppl_tokens']} tokens, llama.cpp on "
                  f"{res['settings']['llama_ppl_tokens']} (× the dense model in the same format)", "",
                  "| model | " + " | ".join(res["ppl"]["dense"]) + " |",
                  "|---|" + "---|" * len(res["ppl"]["dense"])]
        for n in res.get("ppl", {}):
            row = res["ppl"].get(n, {})
            dense = res["ppl"]["dense"]
            cells = [f"{row[k]:.2f} ({row[k] / dense[k]:.2f}×)" if k in row else "—" for k in dense]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="out/llama_cpp", help="checkpoints and GGUF files (reused when present)")
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--aligns", default="1,32", help="--align values, comma-separated; Nf: --align N --align-ffn-only")
    ap.add_argument("--formats", default="f16,q8_0,q4_k_m")
    ap.add_argument("--flash-attn", default="off", help="off, on or off,on (llama.cpp's flash attention)")
    ap.add_argument("--flash-attn-formats", default=None, help="formats timed with every --flash-attn setting "
                    "(default all; the others with the first setting only)")
    ap.add_argument("--shapes-only", action="store_true", help="random weights with the planned shapes (speed only)")
    ap.add_argument("--nsamples", type=int, default=64, help="calibration windows of the prunes (CLI default 64)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch speed")
    ap.add_argument("--no-speed", action="store_true", help="skip every speed measurement (perplexity only)")
    ap.add_argument("--ppl-tokens", type=int, default=16384, help="PPL@2048 tokens in torch (0: skip perplexity)")
    ap.add_argument("--llama-ppl-tokens", type=int, default=16384, help="PPL@2048 tokens in llama.cpp")
    ap.add_argument("--ppl-formats", default="f16,q8_0,q4_k_m", help="llama.cpp formats whose PPL is measured")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    log = lambda m: print(m, file=sys.stderr, flush=True)   # noqa: E731
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ratios = [float(x) for x in a.ratios.split(",")]
    aligns = [x.strip() for x in a.aligns.split(",")]
    if not all(x.rstrip("f").isdigit() and int(x.rstrip("f")) >= 1 for x in aligns):
        ap.error(f"--aligns takes N or Nf (FFN only), comma-separated, got {a.aligns!r}")
    formats = a.formats.split(",")

    from slimgpt.loaders import load_model
    from slimgpt.textdata import wikitext2_tokens

    ckpts = make_checkpoints(work, ratios, aligns, a.shapes_only, log, a.nsamples)
    if a.no_speed:
        del ckpts["dense-deci"]                        # a speed control only
    names = list(ckpts)
    files = export_all(ckpts, formats, work, log)
    tok = load_model(str(ckpts["dense"])).tokenizer
    stream = wikitext2_tokens(tok)
    tokens = stream[: a.prompt + a.decode].tolist()
    res = {"settings": vars(a), "names": names, "versions": _versions(), "speed": {}, "gguf": {},
           "params": {n: load_model(str(ckpts[n])).model.num_parameters() for n in names},
           "load": os.getloadavg()}
    for (n, f), p in files.items():
        res["gguf"][f"{n}/{f}"] = gguf_info(p)
    fa_formats = formats if a.flash_attn_formats is None else a.flash_attn_formats.split(",")
    for f in formats if not a.no_speed else []:
        for fa in a.flash_attn.split(",") if f in fa_formats else a.flash_attn.split(",")[:1]:
            res["speed"][f"llama.cpp/{f}/{fa}"] = llama_speed(files, names, f, fa == "on", tokens, a, log)
    if not (a.no_torch or a.no_speed):
        res["speed"]["torch/f32/—"] = torch_speed(ckpts, names, tokens, a, log)
    if a.ppl_tokens and not a.shapes_only:
        res["ppl"] = {}
        cache_path = work / "ppl_cache.json"           # perplexities of unchanged files, reused
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}

        def cached(key, fn):
            if key not in cache:
                cache[key] = fn()
                cache_path.write_text(json.dumps(cache, indent=1) + "\n")
            return cache[key]
        for n in names:
            if n == "dense-deci":                      # the same weights as dense
                continue
            row = res["ppl"][n] = {"torch f32": cached(f"{n}/torch/{a.ppl_tokens}",
                                                       lambda: torch_ppl(ckpts[n], stream, a))}
            for f in a.ppl_formats.split(","):
                if f in formats:
                    row[f"llama.cpp {f}"] = cached(f"{n}/{f}/{a.llama_ppl_tokens}",
                                                   lambda: llama_ppl(files[n, f], stream, a))
            log(f"ppl {n}: {row}")
    res["load_after"] = os.getloadavg()
    print(tables(res))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


def _versions() -> dict:
    import importlib.metadata as md
    out = {"torch": torch.__version__}
    for name in ("llama-cpp-python", "gguf"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
