"""Perplexity on WikiText-2 test (spec §8.1), in the GPTQ / SparseGPT / SlimGPT convention.

The test stream ("\\n\\n".join(rows), no BOS) is cut into non-overlapping windows of `seqlen`
tokens, the remainder dropped; each window runs independently from position 0, and the
next-token cross-entropy is taken on its seqlen - 1 predicted positions. PPL = exp(mean NLL).

- seqlen 128: the SlimGPT paper's protocol (dense LLaMA-7B: 12.63);
- seqlen 2048 (or the model's context): the full-context protocol of GPTQ/SparseGPT.
`max_tokens` keeps only the first floor(max_tokens / seqlen) windows, for quick runs; the
result says how many tokens were scored.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F


class NonFiniteError(ValueError):
    """The model produced NaN or Inf; the message names where the forward first went non-finite."""


@torch.no_grad()
def where_nonfinite(model, ids: torch.Tensor) -> str:
    """The first place a forward of `ids` becomes non-finite: the token embedding, a decoder
    layer, or the final norm and lm_head."""
    x = model.embed(ids)
    if not torch.isfinite(x).all():
        return "the token embedding"
    cos, sin = model.rope(ids.shape[1], x.device, x.dtype)
    for i, layer in enumerate(model.model.layers):
        x = layer(x, cos, sin)
        if not torch.isfinite(x).all():
            return f"decoder layer {i}"
    return "the final norm / lm_head"


def check_finite(logits: torch.Tensor, model, ids: torch.Tensor) -> None:
    """Raise NonFiniteError naming the first non-finite layer when `logits` are not all finite."""
    if not torch.isfinite(logits).all():
        raise NonFiniteError(f"the model produces non-finite logits (first at {where_nonfinite(model, ids)}); "
                             f"its weights or config are broken")


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, seqlen: int = 128, max_tokens: int | None = None,
               batch_tokens: int = 1024, progress: bool = False) -> dict:
    """{'ppl', 'nll', 'seqlen', 'windows', 'tokens' (scored), 'seconds'} on a 1-D token stream."""
    if seqlen < 2:
        raise ValueError("seqlen must be at least 2")
    n_win = tokens.numel() // seqlen
    if max_tokens is not None:
        n_win = min(n_win, max_tokens // seqlen)
    if n_win < 1:
        raise ValueError(f"not enough tokens for one window of {seqlen} (stream {tokens.numel()}, "
                         f"max_tokens {max_tokens})")
    windows = tokens[: n_win * seqlen].view(n_win, seqlen)
    bs = max(1, batch_tokens // seqlen)
    nll, count, t0 = 0.0, 0, time.perf_counter()
    it = range(0, n_win, bs)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"ppl@{seqlen}", unit="batch", leave=False)
    for s in it:
        ids = windows[s:s + bs]
        logits = model(ids)                                   # (B, T, V): the big tensor; batches are
        check_finite(logits, model, ids)                      # kept at ~batch_tokens tokens for memory
        V = logits.shape[-1]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1), reduction="sum")
        del logits
        nll += float(loss)
        count += ids[:, 1:].numel()
    mean = nll / count
    return {"ppl": math.exp(mean), "nll": mean, "seqlen": seqlen, "windows": n_win, "tokens": count,
            "seconds": time.perf_counter() - t0}


def wikitext2_perplexity(model, tokenizer, seqlen: int = 128, max_tokens: int | None = None,
                         progress: bool = False) -> dict:
    from slimgpt.textdata import wikitext2_tokens
    return perplexity(model, wikitext2_tokens(tokenizer), seqlen, max_tokens, progress=progress)
