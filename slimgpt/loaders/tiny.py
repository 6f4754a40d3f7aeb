"""Tiny random LLaMA-style models built in code (seeded), for tests and tutorials.

Each is well under 2 MB, uses a 256-token byte-level tokenizer, and covers one feature the
pipeline must handle: MHA, GQA, per-layer heterogeneous shapes (uneven query→KV map), Qwen2-style
q/k/v biases, untied embeddings, Qwen3-style q/k norms with a head_dim that is not
hidden/heads, LLaMA-3.x rope scaling (its original context is chosen so that the three
frequency bands of the llama3 formula each get at least one of the 4 frequencies of head_dim 8).
"""
from __future__ import annotations

import functools

from slimgpt.model import LlamaConfig, build_model, random_init_

TINY_CONFIGS = {
    # name: LlamaConfig keyword arguments (vocab 256: byte tokenizer)
    "tiny-llama": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                       intermediate_size=96, tie_word_embeddings=False),
    "tiny-gqa": dict(hidden_size=72, num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=128, tie_word_embeddings=True, rope_theta=100000.0),
    "tiny-hetero": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
                        intermediate_size=96, tie_word_embeddings=True,
                        layer_heads=[8, 5, 3], layer_kv_heads=[4, 3, 1],
                        layer_kv_map=[[0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 1, 2, 2], [0, 0, 0]],
                        layer_intermediate=[96, 70, 33]),
    "tiny-qwen2": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=80, tie_word_embeddings=False, attention_bias=True,
                       rope_theta=1000000.0),
    "tiny-qwen3": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=24, intermediate_size=80, tie_word_embeddings=True, qk_norm=True,
                       rope_theta=1000000.0),
    "tiny-llama3": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                        intermediate_size=96, tie_word_embeddings=False, rope_theta=500000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 256}),
}


def tiny_config(name: str, **overrides) -> LlamaConfig:
    kw = dict(vocab_size=256, rms_norm_eps=1e-6, max_position_embeddings=512, architecture="tiny")
    kw.update(TINY_CONFIGS[name])
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_model(name: str = "tiny-gqa", seed: int = 0, **overrides):
    """A seeded random model. Weights std 0.1 (not 0.02) so attention patterns are not uniform."""
    model = build_model(tiny_config(name, **overrides))
    return random_init_(model, seed=seed, std=0.1)


@functools.lru_cache(maxsize=1)
def byte_tokenizer():
    """(Cached; treat as read-only.) A 256-token byte-level tokenizer (token id = byte value order of the ByteLevel alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def trained_tiny_model(name: str = "tiny-llama", steps: int = 150, seed: int = 0, **overrides):
    """A tiny model trained in-process on WikiText-2 bytes: (model in eval mode, held-out tokens,
    losses per step).

    A random model is no language model: pruning it can even *lower* its perplexity. A few seconds
    of AdamW (lr 3e-3, batches of 16 x 64 bytes from the first 90% of the shipped WikiText-2 text)
    give one whose perplexity pruning raises, as in the paper. Single-threaded and seeded, so the
    numbers repeat on one machine. The held-out tokens are the last 10% of the stream.
    """
    import torch
    import torch.nn.functional as F
    from slimgpt.textdata import wikitext2_tokens

    stream = wikitext2_tokens(byte_tokenizer())
    split = stream.numel() * 9 // 10
    model = tiny_model(name, seed=seed, **overrides).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    batch, seqlen, threads = 16, 64, torch.get_num_threads()
    torch.set_num_threads(1)
    losses = []
    try:
        for _ in range(steps):
            starts = torch.randint(0, split - seqlen, (batch,), generator=gen)
            ids = torch.stack([stream[s:s + seqlen] for s in starts])
            logits = model(ids)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    model.eval().requires_grad_(False)
    return model, stream[split:], losses
