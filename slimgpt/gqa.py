"""Grouped-query attention: how a layer's query heads are handed to a selection method.

What this is: the three granularities of head pruning under GQA (spec §6.6, docs/pipeline.md)
and the translation between them and o_proj's input columns:

- query:    blocks of head_dim columns, one per query head; any number of a KV group's query
            heads may go, and a KV head goes when its last query head goes (the default);
- group:    blocks of n_rep · head_dim columns, a whole KV group at a time (option A);
- balanced: query heads, but every KV group loses the same number (option B, `head_groups`).

What it is not: the selection (methods/) or the removal of rows and columns (shrink.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from slimgpt.schedule import PruneError

GQA_MODES = ("query", "group", "balanced")


def equal_groups(n_heads: int, n_kv: int, mode: str, layer: int = 0) -> int:
    """Query heads per KV head (n_rep); --gqa group and balanced need the same number in every group."""
    if mode in ("group", "balanced") and n_heads % n_kv:
        raise PruneError(f"layer {layer}: --gqa {mode} needs equal query heads per KV head ({n_heads} over {n_kv})")
    return n_heads // n_kv


def contiguous_groups(kv_map: list[int], n_rep: int, layer: int = 0) -> None:
    """--gqa group removes blocks of consecutive o_proj columns: each KV group's query heads must be adjacent."""
    if kv_map != [h // n_rep for h in range(len(kv_map))]:
        raise PruneError(f"layer {layer}: --gqa group needs contiguous equal KV groups")


def planned_heads(n_heads: int, n_kv: int, r: float, mode: str, layer: int = 0) -> tuple[int, int]:
    """(query heads to prune, KV heads known to go with them) for a layer at ratio r.

    query: round(n_heads · r) (Python round, as published); group: round(n_kv · r) whole
    groups; balanced: round(n_rep · r) query heads per group (all KV heads go when that is
    every query head). Under "query" the KV heads that go depend on the selection, so 0.
    """
    if n_heads == 0 or r == 0:
        return 0, 0
    if mode == "query":
        return min(round(n_heads * r), n_heads), 0
    n_rep = equal_groups(n_heads, n_kv, mode, layer)
    if mode == "group":
        g = min(round(n_kv * r), n_kv)
        return g * n_rep, g
    per = min(round(n_rep * r), n_rep)
    return per * n_kv, (n_kv if per == n_rep else 0)


@dataclass
class Blocks:
    """The structures a method selects from: remove `n_prune` blocks of `width` consecutive input
    columns (of o_proj for heads, of down_proj for channels with width 1), optionally with a
    group id per block (then every group loses the same number)."""
    width: int
    n_prune: int
    n_rep: int = 1                      # query heads per block
    groups: list[int] | None = None

    def query_heads(self, blocks) -> list[int]:
        """The query heads of the given blocks, ascending."""
        return sorted(b * self.n_rep + k for b in blocks for k in range(self.n_rep))


def head_blocks(n_heads: int, kv_map: list[int], head_dim: int, n_prune_heads: int, mode: str,
                layer: int = 0) -> Blocks:
    """The blocks for pruning `n_prune_heads` query heads of a layer in GQA `mode`."""
    if mode == "group" and n_prune_heads:
        n_rep = n_heads // (max(kv_map) + 1)
        contiguous_groups(kv_map, n_rep, layer)
        return Blocks(n_rep * head_dim, n_prune_heads // n_rep, n_rep)
    if mode == "balanced" and n_prune_heads:
        return Blocks(head_dim, n_prune_heads, 1, list(kv_map))
    return Blocks(head_dim, n_prune_heads)
