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
    """The model produced NaN, Inf or degenerate values; the message names where it first did."""


FLOAT32_MAX = torch.finfo(torch.float32).max


def activation_problem(x: torch.Tensor) -> str | None:
    """What is wrong with activations x (..., D), or None. Finite is not enough: values whose
    sum of squares overflows float32 (RMSNorm's mean of squares, the Hessian XᵀX) turn every
    later layer into exact zeros without a NaN, and a layer whose output is zero, or one
    constant, in every token has lost its input."""
    if x.numel() == 0:
        return None
    top = float(x.abs().amax())
    if not math.isfinite(top):
        return "not finite"
    if top * top * x.shape[-1] >= FLOAT32_MAX:
        return f"values reach {top:.3g}, whose sum of squares overflows float32"
    if top == 0:
        return "collapsed to zeros in every token"
    low, high = torch.aminmax(x, dim=-1)
    if x.shape[-1] > 1 and bool((low == high).all()):
        return "collapsed to one constant in every token"
    return None


def check_activations(x: torch.Tensor, where: str) -> None:
    """Raise NonFiniteError "WHERE: PROBLEM (...)" when activation_problem finds one."""
    problem = activation_problem(x)
    if problem is not None:
        raise NonFiniteError(f"{where}: {problem} (the model's weights or config are broken)")


@torch.no_grad()
def where_degenerate(model, ids: torch.Tensor) -> str:
    """The first place a forward of `ids` goes wrong (activation_problem): the token embedding,
    a decoder layer, or the final norm and lm_head."""
    x = model.embed(ids)
    if (problem := activation_problem(x)) is not None:
        return f"the token embedding: {problem}"
    cos, sin = model.rope(ids.shape[1], x.device, x.dtype)
    for i, layer in enumerate(model.model.layers):
        x = layer(x, cos, sin)
        if (problem := activation_problem(x)) is not None:
            return f"decoder layer {i}: {problem}"
    return "the final norm / lm_head"


def logits_problem(logits: torch.Tensor) -> str | None:
    """"non-finite" or "all equal" (every position's logits one value: nothing is predicted)."""
    if not torch.isfinite(logits).all():
        return "non-finite"
    low, high = torch.aminmax(logits, dim=-1)
    return "all equal" if bool((low == high).all()) else None


def check_logits(logits: torch.Tensor, model, ids: torch.Tensor) -> None:
    """Raise NonFiniteError naming the first degenerate layer when `logits` are non-finite or
    all equal."""
    problem = logits_problem(logits)
    if problem is not None:
        raise NonFiniteError(f"the model's logits are {problem} (first wrong at {where_degenerate(model, ids)}); "
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
        check_logits(logits, model, ids)                      # kept at ~batch_tokens tokens for memory
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
