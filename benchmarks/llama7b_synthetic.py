"""A synthetic checkpoint with LLaMA-7B's exact shape, for the scale measurements (docs/scale.md).

    python benchmarks/llama7b_synthetic.py write llama7b-synthetic          # 32 layers, ~13.8 GB
    python benchmarks/llama7b_synthetic.py write llama7b-2l --layers 2       # a few layers of the shape
    /usr/bin/time -v slimgpt prune --model llama7b-synthetic --ratio 0.2 --nsamples 32 --seqlen 256 \\
        --eval-tokens 512 --out llama7b-pruned --report llama7b-report.json
    python benchmarks/llama7b_synthetic.py breakdown llama7b-report.json   # where the time went

The config is LLaMA-7B's (32 layers, hidden 4096, 32 heads of 128, FFN 11008, RMSNorm eps 1e-6,
RoPE theta 10000, untied embeddings, context 2048) with the vocabulary of the tokenizer shipped
with slimgpt (SmolLM2's byte-level BPE, 49,152 tokens; LLaMA's own is 32,000, so the embedding and
lm_head here are 1.5× LLaMA's). The weights are random at LLaMA's initialisation scale (every
linear and embedding weight N(0, 0.02²), norms 1), seeded per tensor, stored in bfloat16 in
shards of about 2 GB with a model.safetensors.index.json, as Hugging Face stores LLaMA. Free disk
space is checked before anything is written; the folder is written atomically (slimgpt.paths).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

LLAMA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=11008, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048,
                tie_word_embeddings=False)
SHAPES = {
    "llama7b": LLAMA_7B,
    # TinyLlama-1.1B's shape (GQA: 32 query heads over 4 KV heads), for the slow test
    "tinyllama": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      intermediate_size=5632, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=2048,
                      tie_word_embeddings=False),
}
SHARD_BYTES = 2 * 2 ** 30


def tensor_shapes(cfg: dict, vocab: int) -> dict:
    D, M, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    K = D // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    out = {"model.embed_tokens.weight": (vocab, D)}
    for i in range(L):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                    p + "self_attn.q_proj.weight": (D, D), p + "self_attn.k_proj.weight": (K, D),
                    p + "self_attn.v_proj.weight": (K, D), p + "self_attn.o_proj.weight": (D, D),
                    p + "mlp.gate_proj.weight": (M, D), p + "mlp.up_proj.weight": (M, D),
                    p + "mlp.down_proj.weight": (D, M)})
    out["model.norm.weight"] = (D,)
    out["lm_head.weight"] = (vocab, D)
    return out


def make_tensor(name: str, shape) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") % 2 ** 63
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)


def tokenizer(folder: str | None):
    """(tokenizer, tokenizer_config): SmolLM2's, from the embedded GGUF, or from a folder holding
    its tokenizer.json / tokenizer_config.json (benchmarks/gpu_check.sh prepare writes one)."""
    if folder:
        from tokenizers import Tokenizer
        tc = Path(folder, "tokenizer_config.json")
        return Tokenizer.from_file(str(Path(folder, "tokenizer.json"))), json.loads(tc.read_text()) if tc.exists() else {}
    from slimgpt.loaders import load_model
    src = load_model("smollm2-135m")
    return src.tokenizer, dict(src.tokenizer_config)


def write(folder: str, layers: int, tokenizer_dir: str | None = None, shape: str = "llama7b") -> None:
    from safetensors.torch import save_file

    from slimgpt import paths

    cfg = dict(SHAPES[shape], num_hidden_layers=layers)
    tok, tc = tokenizer(tokenizer_dir)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    shapes = tensor_shapes(cfg, vocab)
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    out = paths.check_output(folder, force=False)
    free = shutil.disk_usage(out.parent).free
    if free < total * 1.05 + 2 ** 30:
        sys.exit(f"not enough disk space at {out.parent}: the checkpoint takes {total / 2 ** 30:.1f} GiB, "
                 f"{free / 2 ** 30:.1f} GiB are free")
    print(f"writing {folder}: {layers} layers, vocab {vocab}, {total / 2 ** 30:.2f} GiB in bfloat16", flush=True)
    groups, cur, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if cur and size + nbytes > SHARD_BYTES:
            groups.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += nbytes
    groups.append(cur)
    weight_map = {}
    with paths.atomic_folder(out) as tmp:
        for k, names in enumerate(groups, 1):
            fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            save_file({n: make_tensor(n, shapes[n]) for n in names}, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in names})
            print(f"  {fname}: {len(names)} tensors", flush=True)
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        config = dict(cfg, model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab,
                      hidden_act="silu", torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2,
                      attention_bias=False)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        tok.save(str(tmp / "tokenizer.json"))
        tc.pop("chat_template", None)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=1))
        (tmp / "README.md").write_text("Synthetic checkpoint with LLaMA-7B's shape and random weights "
                                       "(slimgpt benchmarks/llama7b_synthetic.py). Not a language model.\n")
    print(f"done: {folder}", flush=True)


def breakdown(report_path: str) -> None:
    """Where the time of a pruning run went, from its --report file."""
    r = json.loads(Path(report_path).read_text())
    layers = r["prune"].get("layers") or []
    if not layers:
        man = json.loads((Path(r["out"]) / "manifest.json").read_text())
        layers = man["layers"]
    tot = {k: sum(x.get(k, 0.0) for x in layers) for k in ("seconds_forward", "seconds_hessian", "seconds_select",
                                                           "seconds")}
    st = r.get("streaming", {}).get("seconds", {})
    print(json.dumps({"layers": len(layers), "prune_seconds": r["prune"]["seconds"],
                      "seconds_total": r.get("seconds_total"), "peak_rss_mb": r.get("peak_rss_mb"),
                      "per_layer_sum": tot, "streaming": st, "dense": r.get("dense", {}).get("ppl"),
                      "pruned": r.get("pruned", {}).get("ppl")}, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the synthetic checkpoint")
    w.add_argument("folder")
    w.add_argument("--layers", type=int, default=32, help="decoder layers (default 32, LLaMA-7B's)")
    w.add_argument("--tokenizer", default=None, help="folder with tokenizer.json (default: SmolLM2's, embedded)")
    w.add_argument("--shape", default="llama7b", choices=sorted(SHAPES), help="model shape (default llama7b)")
    b = sub.add_parser("breakdown", help="time breakdown of a prune --report file")
    b.add_argument("report")
    a = p.parse_args(argv)
    if a.cmd == "write":
        torch.set_num_threads(os.cpu_count() or 1)
        write(a.folder, a.layers, a.tokenizer, a.shape)
    else:
        breakdown(a.report)


if __name__ == "__main__":
    main()
