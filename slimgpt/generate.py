"""Greedy generation (no KV cache: each step re-runs the whole prefix; fine for short demos)."""
from __future__ import annotations

import torch

from slimgpt.evaluate import check_finite


@torch.no_grad()
def generate_ids(model, ids: list[int], max_new_tokens: int = 32, stop_at_eos: bool = True) -> list[int]:
    """The greedy continuation of the token ids `ids` (new ids only), never past the context."""
    if not ids:
        raise ValueError("empty prompt")
    ctx = model.config.max_position_embeddings
    if len(ids) >= ctx:
        raise ValueError(f"the prompt has {len(ids)} tokens; the model's context holds {ctx}")
    x = torch.tensor([ids], dtype=torch.long)
    eos = model.config.eos_token_id
    new = []
    for _ in range(min(max_new_tokens, ctx - len(ids))):
        logits = model(x)[0, -1]
        if not new:
            check_finite(logits, model, x)
        nxt = int(logits.argmax())
        new.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        if stop_at_eos and eos is not None and nxt == eos:
            break
    return new


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 32, stop_at_eos: bool = True) -> str:
    """The greedy continuation of `prompt` (decoded text of the new tokens only)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    return tokenizer.decode(generate_ids(model, ids, max_new_tokens, stop_at_eos), skip_special_tokens=False)
