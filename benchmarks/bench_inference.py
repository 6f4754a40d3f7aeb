"""Inference speed and memory: dense SmolLM2-135M against SlimGPT-pruned shapes (20%, 50%).

What it measures, for each model and batch size (default 1 and 8), medians over --repeats runs
taken round-robin over the models (so machine noise hits all of them alike) after a warm-up:

- prefill: tokens/s of one forward over a (batch × --prompt) prompt, logits included;
- decode: ms per generated token step (one new token for each sequence of the batch) with a KV
  cache, --new steps after a --prompt-token prefill; tokens/s = batch / step time;
- memory: weight bytes and KV-cache bytes (exact), and the peak memory of a decode run
  (CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS of a fresh child process, which
  includes the Python/torch runtime, ~250-300 MB).

Ratios are to the dense model measured in the same run. Speed depends on shapes only, so the
pruned models are the project's model class (slimgpt.model) with the per-layer shapes that
`benchmarks/study.py` produced for SlimGPT at 20% / 50% (out/study/results.json), or, without
that file, the shapes the pipeline's schedule plans (log schedule, GQA "query"), with seeded
random weights. The KV-cached decode step is written here on top of the model's own modules
(slimgpt.model has no cache) and checked against the model's full forward before timing.

    python benchmarks/bench_inference.py                    # CPU (and CUDA when present)
    python benchmarks/bench_inference.py --doc docs/inference.md
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from slimgpt.model import LlamaConfig, apply_rope, build_model, random_init_, rope_cos_sin

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, intermediate_size=1536, head_dim=64, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192)


# ------------------------------------------------------------------------------------------------
# Shapes


def shapes_from_study(cache: Path, key: str):
    if not cache.exists():
        return None
    r = json.loads(cache.read_text())["results"].get(key)
    if r is None or "kv_kept" not in r:
        return None
    return r["heads_kept"], r["kv_kept"], r["ffn_kept"]


def shapes_from_schedule(ratio: float):
    from slimgpt.pipeline import PruneSettings, layer_ratios, planned_heads

    cfg = LlamaConfig(**SMOLLM2)
    rs = layer_ratios(cfg.num_hidden_layers, PruneSettings(ratio=ratio))
    heads, kvs, ffn = [], [], []
    for i, r in enumerate(rs):
        h = cfg.num_attention_heads - planned_heads(cfg, i, r, "query")[0]
        heads.append(h)
        kvs.append(min(cfg.num_key_value_heads, h))
        ffn.append(cfg.intermediate_size - round(cfg.intermediate_size * r))
    return heads, kvs, ffn


def config_for(shapes) -> LlamaConfig:
    kw = dict(SMOLLM2)
    if shapes is not None:
        heads, kvs, ffn = shapes
        kw.update(layer_heads=heads, layer_kv_heads=kvs, layer_intermediate=ffn,
                  layer_kv_map=[[j % k for j in range(h)] if h else [] for h, k in zip(heads, kvs)])
    return LlamaConfig(**kw)


def make_model(shapes, device):
    return random_init_(build_model(config_for(shapes)), seed=0).to(device).eval()


# ------------------------------------------------------------------------------------------------
# KV-cached forward on slimgpt.model's modules


class Rope:
    def __init__(self, cfg, device, max_len=4096):
        self.cos, self.sin = rope_cos_sin(max_len, cfg.head_dim, cfg.rope_theta, device)

    def __call__(self, pos0, T):
        return self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]


@torch.no_grad()
def forward_cached(model, ids, cache: list, pos0: int, rope: Rope):
    """Logits of the last position; appends this call's K/V to `cache` (one dict per layer)."""
    B, T = ids.shape
    x = model.embed(ids)
    cos, sin = rope(pos0, T)
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        H, K, d = attn.n_heads, attn.n_kv, attn.head_dim
        h = layer.input_layernorm(x)
        if H:
            q = apply_rope(attn.q_proj(h).view(B, T, H, d).transpose(1, 2), cos, sin)
            k = apply_rope(attn.k_proj(h).view(B, T, K, d).transpose(1, 2), cos, sin)
            v = attn.v_proj(h).view(B, T, K, d).transpose(1, 2)
            c = cache[i]
            if c:
                k = torch.cat([c["k"], k], dim=2)
                v = torch.cat([c["v"], v], dim=2)
            c["k"], c["v"] = k, v
            if K != H:
                k, v = k.index_select(1, attn.kv_map), v.index_select(1, attn.kv_map)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            a = y.transpose(1, 2).reshape(B, T, H * d)
        else:
            a = x.new_zeros(B, T, 0)
        x = x + attn.o_proj(a)
        x = layer.ffn_half(x)
    return model.head(x[:, -1:])


def self_check(model, device):
    ids = torch.randint(0, model.config.vocab_size, (2, 24), device=device)
    full = model(ids)[:, -1:]
    rope = Rope(model.config, device, 64)
    cache = [dict() for _ in model.model.layers]
    forward_cached(model, ids[:, :20], cache, 0, rope)
    step = None
    for t in range(20, 24):
        step = forward_cached(model, ids[:, t:t + 1], cache, t, rope)
    err = (step - full).abs().max().item()
    assert err < 1e-3 * max(1.0, full.abs().max().item()), f"KV-cached decode differs from the full forward: {err}"


# ------------------------------------------------------------------------------------------------
# Timings


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_prefill(model, B, T, device):
    ids = torch.randint(0, model.config.vocab_size, (B, T), device=device)
    _sync(device)
    t = time.perf_counter()
    model(ids)
    _sync(device)
    return B * T / (time.perf_counter() - t)


@torch.no_grad()
def time_decode(model, B, T, new, device, rope):
    ids = torch.randint(0, model.config.vocab_size, (B, T), device=device)
    cache = [dict() for _ in model.model.layers]
    logits = forward_cached(model, ids, cache, 0, rope)
    nxt = logits.argmax(-1)
    _sync(device)
    t = time.perf_counter()
    for s in range(new):
        logits = forward_cached(model, nxt, cache, T + s, rope)
        nxt = logits.argmax(-1)
    _sync(device)
    return 1000 * (time.perf_counter() - t) / new


def kv_bytes(cfg, B, ctx):
    return sum(2 * k * cfg.head_dim * ctx * B * 4 for k in cfg.layer_kv_heads)


def child_peak(name, shapes, B, T, new):
    """Peak RSS (MB) of a fresh process that builds the model and runs one decode."""
    code = ("import json,sys,resource,torch;sys.path.insert(0,'benchmarks');import bench_inference as b;"
            f"m=b.make_model({shapes!r},torch.device('cpu'));"
            f"b.time_decode(m,{B},{T},{new},torch.device('cpu'),b.Rope(m.config,torch.device('cpu'),{T + new + 8}));"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(device, variants, batches, prompt, new, repeats, log=print):
    models = {name: make_model(sh, device) for name, sh in variants.items()}
    for m in models.values():
        self_check(m, device)
    rope = {n: Rope(m.config, device, prompt + new + 8) for n, m in models.items()}
    res = {n: {} for n in models}
    for B in batches:
        for n, m in models.items():           # warm-up
            time_prefill(m, B, prompt, device)
            time_decode(m, B, prompt, 4, device, rope[n])
        pre = {n: [] for n in models}
        dec = {n: [] for n in models}
        for r in range(repeats):
            for n, m in models.items():       # round-robin: noise hits every model alike
                pre[n].append(time_prefill(m, B, prompt, device))
                dec[n].append(time_decode(m, B, prompt, new, device, rope[n]))
        for n, m in models.items():
            entry = {"prefill_tok_s": statistics.median(pre[n]), "decode_ms": statistics.median(dec[n]),
                     "prefill_all": pre[n], "decode_all": dec[n]}
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                time_decode(m, B, prompt, new, device, rope[n])
                entry["peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
            res[n][B] = entry
            log(f"{device.type} {n:>10} batch {B}: prefill {entry['prefill_tok_s']:8.0f} tok/s, "
                f"decode {entry['decode_ms']:7.2f} ms/step")
    info = {n: {"params": m.num_parameters(), "weights_mb": m.num_parameters() * 4 / 2 ** 20,
                "kv_mb": {B: kv_bytes(m.config, B, prompt + new) / 2 ** 20 for B in batches}}
            for n, m in models.items()}
    return res, info


def table(device, res, info, batches, cpu_peak=None) -> str:
    names = list(res)
    d = names[0]
    lines = ["| device | model | params | weights MB | batch | prefill tok/s | × dense | decode ms/step | × dense "
             "| decode tok/s | KV cache MB | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for B in batches:
        for n in names:
            e, e0 = res[n][B], res[d][B]
            peak = e.get("peak_mb") if device == "cuda" else (cpu_peak or {}).get(n, {}).get(B)
            lines.append(
                f"| {device} | {n} | {info[n]['params'] / 1e6:.1f}M | {info[n]['weights_mb']:.0f} | {B} | "
                f"{e['prefill_tok_s']:,.0f} | {e['prefill_tok_s'] / e0['prefill_tok_s']:.2f} | "
                f"{e['decode_ms']:.2f} | {e['decode_ms'] / e0['decode_ms']:.2f} | {1000 * B / e['decode_ms']:,.0f} | "
                f"{info[n]['kv_mb'][B]:.1f} | {'—' if peak is None else f'{peak:,.0f}'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill)")
    ap.add_argument("--new", type=int, default=32, help="decode steps timed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--study-cache", type=Path, default=Path("out/study/results.json"))
    ap.add_argument("--doc", type=Path, default=None, help="write docs/inference.md here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-peak", action="store_true", help="skip the child-process CPU peak-RSS runs")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    variants, source = {"dense": None}, {}
    for r, key in ((0.2, "slimgpt@0.2"), (0.5, "slimgpt@0.5")):
        sh = shapes_from_study(args.study_cache, key)
        source[f"slimgpt {r:.0%}"] = "study" if sh else "schedule"
        variants[f"slimgpt {r:.0%}"] = sh or shapes_from_schedule(r)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    out, md = {}, []
    for dev in devices:
        res, info = run(dev, variants, args.batches, args.prompt, args.new, args.repeats)
        peak = None
        if dev.type == "cpu" and not args.no_peak:
            peak = {n: {B: child_peak(n, sh, B, args.prompt, args.new) for B in args.batches}
                    for n, sh in variants.items()}
        out[dev.type] = {"results": res, "info": info, "cpu_peak_rss_mb": peak}
        md.append(table(dev.type, res, info, args.batches, peak))
    text = "\n\n".join(md)
    print(text)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "shapes_source": source, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, **out}, indent=1, default=str))
    if args.doc:
        write_doc(args.doc, text, meta, variants, args)


def write_doc(path: Path, text: str, meta: dict, variants: dict, args) -> None:
    shape_lines = []
    for n, sh in variants.items():
        if sh is None:
            shape_lines.append(f"- {n}: 30 layers × (9 heads / 3 KV heads / FFN 1536)")
        else:
            h, k, f = sh
            shape_lines.append(f"- {n} ({meta['shapes_source'].get(n, '')}): heads {min(h)}–{max(h)} per layer "
                               f"(total {sum(h)}/270), KV heads {sum(k)}/90, FFN {min(f)}–{max(f)} "
                               f"(total {sum(f):,}/46,080)")
    cmd = "python benchmarks/bench_inference.py " + " ".join(sys.argv[1:])
    doc = f"""# Inference speed and memory of pruned models

*Generated by `benchmarks/bench_inference.py`.*

Command: `{cmd}`

Setting: torch {meta['torch']}, {meta['threads']} CPU threads ({meta['machine'] or 'x86_64'}), float32;
{'CUDA device: ' + meta['cuda'] if meta['cuda'] else 'no GPU in this run (the script adds CUDA rows when one is present)'}.
Prompt {args.prompt} tokens; decode = {args.new} greedy steps with a KV cache after the prompt;
medians of {args.repeats} repeats taken round-robin over the three models after a warm-up, so the
ratios (× dense) compare models under the same machine load. "decode ms/step" is the time of one
step that adds one token to every sequence of the batch; decode tok/s = batch / step time.
Weights MB = parameters × 4 bytes (the tied embedding, 28.3M parameters = 108 MB, is never pruned);
KV cache MB = exact size at prompt + decode tokens; peak MB = peak RSS of a fresh process that
builds the model and runs one decode (includes ~250-300 MB of Python/torch runtime).

Shapes (speed depends on shapes only; weights are seeded random):
{chr(10).join(shape_lines)}

{text}

Reading the table:
- Pruning removes query heads (q rows, o columns), KV heads only when all of their query heads go,
  and FFN channels; the embedding/lm_head (49,152 × 576) is untouched, so at batch 1 the per-token
  lm_head GEMV and the Python per-layer overhead are a fixed cost that caps the speed-up.
- Per-layer widths differ (log schedule), so every layer is a different GEMM shape; nothing is
  padded to a uniform width.
- The machine is a 2-core CPU shared with other jobs: absolute numbers are noisy, ratios less so.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    keep = old[old.index(KEEP_MARK):] if KEEP_MARK in old else ""     # the llama.cpp section is not ours
    path.write_text(doc + ("\n" + keep if keep else ""))


KEEP_MARK = "<!-- from here on: benchmarks/bench_llama_cpp.py -->"


if __name__ == "__main__":
    main()
