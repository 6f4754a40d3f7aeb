"""Check a pruned SmolLM2 outside slimgpt: llama.cpp (GGUF f32/f16) and, when installed, transformers.

    pip install llama-cpp-python          # builds llama.cpp from source (several minutes on 2 cores)
    python benchmarks/llama_cpp_check.py  # prunes SmolLM2 at 20% (~1 min), exports, compares
    python benchmarks/llama_cpp_check.py --checkpoint pruned-smollm2 --json-out llama_cpp_check.json

What it does, in order, and prints:
1. versions (slimgpt, torch, gguf, llama-cpp-python, transformers);
2. `slimgpt prune --model smollm2-135m --ratio 0.2 --align 1` into the work folder (skipped with --checkpoint);
3. slimgpt's WikiText-2 perplexity on exactly the tokens `slimgpt eval` uses: the first 4096
   tokens in 128-token windows (the quick protocol of `slimgpt prune`), and the first 512-token
   window (tests/test_loaders.py's regression window);
4. `slimgpt export --format gguf` in float32 and float16;
5. llama.cpp on each GGUF: the same windows fed as token ids (no BOS), perplexity from its logits
   with the same convention (mean NLL over the T-1 predicted positions of every window); for f32
   also with an f32 KV cache (llama.cpp's default cache is f16), and the max |Δlogit| against
   slimgpt on the 512 window; llama.cpp's own tokenization of the WikiText-2 stream compared
   with slimgpt's; greedy generation (raw prompt and the GGUF's chat template) with tokens/s;
6. with transformers: `slimgpt export --format hf` (float32), max |Δlogit| of
   AutoModelForCausalLM(trust_remote_code=True) against slimgpt on the same 4096 tokens and the
   512 window, and a chat-template generation.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("slimgpt", "gguf", "llama-cpp-python", "transformers", "tokenizers", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def nll_windows(logits_fn, windows: torch.Tensor) -> tuple[float, float]:
    """(ppl, mean NLL) over the T-1 predicted positions of every window (slimgpt.evaluate's convention)."""
    total, count = 0.0, 0
    for w in windows:
        logits = torch.as_tensor(np.asarray(logits_fn(w.tolist())), dtype=torch.float32)
        logp = torch.log_softmax(logits[:-1].double(), -1)
        total -= float(logp.gather(1, w[1:, None]).sum())
        count += w.numel() - 1
    return math.exp(total / count), total / count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="an existing pruned checkpoint (skip the prune)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers part")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.set_num_threads(a.threads)

    from llama_cpp import Llama

    from slimgpt.evaluate import perplexity
    from slimgpt.export import export_checkpoint
    from slimgpt.generate import generate
    from slimgpt.loaders import load_model
    from slimgpt.textdata import wikitext2_text, wikitext2_tokens

    report = {"versions": versions(), "threads": a.threads, "cpu": platform.processor() or platform.machine()}
    print("versions:", json.dumps(report["versions"]))
    work = Path(a.work or tempfile.mkdtemp(prefix="slimgpt-llama-cpp-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = a.checkpoint
    if ckpt is None:
        ckpt = str(work / "pruned")
        # --align 1: the exact counts docs/export.md's table was measured on (the CLI now aligns to 32)
        cmd = ["slimgpt", "prune", "--model", a.model, "--ratio", str(a.ratio), "--align", "1", "--out", ckpt,
               "--force", "--quiet"]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        report["prune_seconds"] = time.perf_counter() - t0
    report["checkpoint"] = ckpt

    loaded = load_model(ckpt)
    model, tok = loaded.model, loaded.tokenizer
    stream = wikitext2_tokens(tok)
    n_win = a.tokens // a.seqlen
    windows = stream[: n_win * a.seqlen].view(n_win, a.seqlen)
    w512 = stream[:512]
    s_q = perplexity(model, stream, a.seqlen, a.tokens)
    s_512 = perplexity(model, stream, 512, 512)
    ref512 = model(w512[None])[0].float().numpy()
    report["slimgpt"] = {"ppl_quick": s_q["ppl"], "ppl_512": s_512["ppl"], "params": model.num_parameters()}
    print(f"slimgpt: PPL {s_q['ppl']:.4f} ({n_win} x {a.seqlen} tokens), {s_512['ppl']:.4f} (first 512 window), "
          f"{model.num_parameters():,} parameters", flush=True)

    t0 = time.perf_counter()
    ref_gen = generate(model, tok, "The capital of France is", a.gen_tokens, stop_at_eos=True)
    report["slimgpt"]["generate"] = ref_gen
    report["slimgpt"]["generate_tok_s"] = a.gen_tokens / (time.perf_counter() - t0)

    text = wikitext2_text()
    report["gguf"] = {}
    for dtype in ("float32", "float16"):
        path = work / f"model-{dtype}.gguf"
        t0 = time.perf_counter()
        info = export_checkpoint(ckpt, path, format="gguf", dtype=dtype, force=True)
        r = {"export_seconds": time.perf_counter() - t0, "bytes": path.stat().st_size, "arch": info["arch"],
             "regrouped_layers": info["regrouped_layers"], "tokenizer_pre": info["tokenizer_pre"]}
        caches = [("f16-kv", None), ("f32-kv", 0)] if dtype == "float32" else [("f16-kv", None)]
        for cache_name, kv in caches:
            kw = {} if kv is None else {"type_k": kv, "type_v": kv}
            llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, logits_all=True, n_threads=a.threads,
                        verbose=False, **kw)

            def logits_fn(ids, llm=llm):
                llm.reset()
                llm.eval(ids)
                return llm.scores[: len(ids)]

            t0 = time.perf_counter()
            ppl_q, _ = nll_windows(logits_fn, windows)
            dt = time.perf_counter() - t0
            ppl_512, _ = nll_windows(logits_fn, w512[None])
            d512 = float(np.abs(np.asarray(logits_fn(w512.tolist())) - ref512).max())
            r[cache_name] = {"ppl_quick": ppl_q, "ppl_512": ppl_512, "rel_quick": ppl_q / s_q["ppl"] - 1,
                             "rel_512": ppl_512 / s_512["ppl"] - 1, "max_abs_dlogit_512": d512,
                             "prompt_tok_s": windows.numel() / dt}
            print(f"llama.cpp {dtype} GGUF ({info['arch']}, {cache_name} cache): PPL {ppl_q:.4f} "
                  f"({100 * (ppl_q / s_q['ppl'] - 1):+.3f}% vs slimgpt), 512 window {ppl_512:.4f} "
                  f"({100 * (ppl_512 / s_512['ppl'] - 1):+.3f}%), max|dlogit| {d512:.2e}, "
                  f"prompt {windows.numel() / dt:.0f} tok/s", flush=True)
            if cache_name == "f16-kv":
                lt = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                same = lt == stream.tolist()
                r["tokenizer_equal"] = same
                if not same:
                    first = next((i for i, (x, y) in enumerate(zip(lt, stream.tolist())) if x != y),
                                 min(len(lt), stream.numel()))
                    r["tokenizer_first_difference"] = first
                llm.reset()
                prompt = llm.tokenize(b"The capital of France is", add_bos=False)
                t0 = time.perf_counter()
                out = []
                for t in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                    if t == llm.token_eos() or len(out) >= a.gen_tokens:
                        break
                    out.append(t)
                gdt = time.perf_counter() - t0
                r["generate"] = llm.detokenize(out).decode("utf-8", errors="replace")
                r["generate_tok_s"] = len(out) / gdt
                r["generate_equal_slimgpt"] = r["generate"] == ref_gen
                chat = llm.create_chat_completion(
                    messages=[{"role": "user", "content": "What is the capital of France?"}],
                    temperature=0.0, top_k=1, max_tokens=a.gen_tokens)
                r["chat"] = chat["choices"][0]["message"]["content"]
                print(f"  tokenizer equal to slimgpt's on WikiText-2 ({stream.numel()} tokens): {same}")
                print(f"  greedy: {r['generate']!r} ({r['generate_tok_s']:.1f} tok/s; same as slimgpt: "
                      f"{r['generate_equal_slimgpt']})")
                print(f"  chat:   {r['chat']!r}", flush=True)
            del llm
        report["gguf"][dtype] = r
    print(f"slimgpt greedy: {ref_gen!r} ({report['slimgpt']['generate_tok_s']:.1f} tok/s, no KV cache)")

    if not a.no_hf:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            print("transformers not installed: HF check skipped")
        else:
            hf_dir = work / "hf"
            info = export_checkpoint(ckpt, hf_dir, format="hf", dtype="float32", force=True)
            hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=True, dtype=torch.float32)
            htok = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=True)
            d_q = 0.0
            for b in range(0, n_win, 8):
                d_q = max(d_q, float((hf(windows[b:b + 8]).logits - model(windows[b:b + 8])).abs().max()))
            d_512 = float(np.abs(hf(w512[None]).logits[0].numpy() - ref512).max())
            msgs = [{"role": "user", "content": "What is the capital of France?"}]
            enc = htok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            out = hf.generate(**enc, max_new_tokens=a.gen_tokens, do_sample=False)
            chat = htok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            same_tok = htok(text[:20000])["input_ids"] == tok.encode(text[:20000]).ids
            report["hf"] = {"layout": info["layout"], "max_abs_dlogit_quick": d_q, "max_abs_dlogit_512": d_512,
                            "chat": chat, "tokenizer_equal": same_tok}
            print(f"transformers ({info['layout']}): max|dlogit| {d_q:.2e} ({n_win} x {a.seqlen}), {d_512:.2e} "
                  f"(512 window); chat: {chat!r}", flush=True)

    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
