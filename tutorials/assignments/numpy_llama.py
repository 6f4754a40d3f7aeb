"""A LLaMA-style model's forward pass in float64 NumPy, for Unit 3 of the course.

What this is: the model the course's pipeline unit prunes, written so that it imports NumPy only
(the grader's worker may import nothing else). The weights are a dict {Hugging Face parameter name:
array}, as slimgpt's tiny models and SmolLM2 name them; the config a dict with hidden_size,
num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size, head_dim,
rope_theta, rms_norm_eps, vocab_size. A pruned layer is read off its shapes (q_proj has
heads·head_dim rows), so the same code runs the dense and the pruned model. Conventions as
slimgpt/model.py and transformers' LLaMA: RMSNorm, rotary embeddings in the rotate-half layout,
causal softmax attention scaled by 1/sqrt(head_dim), query head h reading KV head
h // (heads / kv_heads), SwiGLU FFN, an untied lm_head unless the weights have none.

grade.py uses it for the expected perplexities (tests check it against slimgpt's torch model);
student.py gives the same conventions in words.
"""
from __future__ import annotations

import numpy as np


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x, theta):
    """Rotary embeddings for x (..., T, d): position t rotates pair (i, i + d/2) by t·theta^(-2i/d)."""
    T, d = x.shape[-2:]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    angles = np.outer(np.arange(T), inv_freq)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def attention_heads(weights, config, i, x):
    """The concatenated head outputs of layer i for normalised inputs x (B, T, D): o_proj's input."""
    p, d = f"model.layers.{i}.self_attn.", config["head_dim"]
    B, T, _ = x.shape
    q, k, v = (x @ weights[p + f"{n}_proj.weight"].T for n in "qkv")
    n_q, n_kv = q.shape[-1] // d, k.shape[-1] // d
    q, k, v = (a.reshape(B, T, -1, d).transpose(0, 2, 1, 3) for a in (q, k, v))
    q, k = rope(q, config["rope_theta"]), rope(k, config["rope_theta"])
    k, v = np.repeat(k, n_q // n_kv, axis=1), np.repeat(v, n_q // n_kv, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, n_q * d)


def ffn_channels(weights, i, x):
    """silu(gate(x)) * up(x) of layer i for normalised inputs x: down_proj's input."""
    p = f"model.layers.{i}.mlp."
    gate, up = x @ weights[p + "gate_proj.weight"].T, x @ weights[p + "up_proj.weight"].T
    return gate / (1.0 + np.exp(-gate)) * up


def attention_block(weights, config, i, h):
    """h + the attention of layer i."""
    x = rms_norm(h, weights[f"model.layers.{i}.input_layernorm.weight"], config["rms_norm_eps"])
    return h + attention_heads(weights, config, i, x) @ weights[f"model.layers.{i}.self_attn.o_proj.weight"].T


def ffn_block(weights, config, i, h):
    """h + the FFN of layer i."""
    x = rms_norm(h, weights[f"model.layers.{i}.post_attention_layernorm.weight"], config["rms_norm_eps"])
    return h + ffn_channels(weights, i, x) @ weights[f"model.layers.{i}.mlp.down_proj.weight"].T


def logits(weights, config, token_ids):
    h = weights["model.embed_tokens.weight"][np.asarray(token_ids)]
    for i in range(config["num_hidden_layers"]):
        h = ffn_block(weights, config, i, attention_block(weights, config, i, h))
    h = rms_norm(h, weights["model.norm.weight"], config["rms_norm_eps"])
    return h @ weights.get("lm_head.weight", weights["model.embed_tokens.weight"]).T


def model_perplexity(weights, config, token_ids):
    """exp of the mean next-token cross-entropy over the windows token_ids (B, T): B·(T-1) tokens."""
    z = logits(weights, config, token_ids)[:, :-1]
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    target = np.asarray(token_ids)[:, 1:]
    return float(np.exp(-np.mean(np.take_along_axis(logp, target[..., None], -1))))
