"""Greedy generation (no KV cache: each step re-runs the whole prefix; fine for short demos)."""
from __future__ import annotations

import torch


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 32, stop_at_eos: bool = True) -> str:
    """The greedy continuation of `prompt` (decoded text of the new tokens only)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise ValueError("empty prompt")
    x = torch.tensor([ids], dtype=torch.long)
    eos = model.config.eos_token_id
    new = []
    for _ in range(max_new_tokens):
        nxt = int(model(x)[0, -1].argmax())
        new.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        if stop_at_eos and eos is not None and nxt == eos:
            break
    return tokenizer.decode(new, skip_special_tokens=False)
