"""Hardware-aligned widths (`--align N`): per-layer counts that inference runtimes handle well.

What this is: a rule on *how many* structures each layer keeps, applied where the counts are
decided (schedule.Budget for FFN channels, schedules.layer_counts and the pipeline for heads). The selection and
the OBS compensation (methods/) are unchanged; only the counts they are asked for change.

- FFN channels: every layer keeps a multiple of N channels (or, when nothing is pruned there,
  its full width). ggml's kernels and quantization formats work in blocks along a row: q8_0,
  q5_0 and q4_0 in 32 values, the K-quants in 256, llamafile's tinyBLAS GEMM in 8-16 floats; a
  kept width of 1119 fits none of them, and llama.cpp then falls back to slower paths
  (docs/inference.md). The budget (schedule.Budget) still re-apportions what is left before
  every layer, so each layer's rounding to a block is absorbed by the later layers and the
  total lands within one aligned block (N FFN channels, N · 3 · D parameters) of the target.
- Heads: query heads are pruned with `--gqa balanced` (every KV group loses the same number),
  so each layer keeps uniform contiguous query->KV groups and every layer keeps its KV heads.
  llama.cpp then needs no duplicated K/V rows and the V cache has one size across layers
  (no padding). Under MHA (one query head per KV head) "query" already does this; where a
  layer's query heads do not divide evenly over its KV heads, or the user chose `--gqa group`,
  the heads are planned as before. `--align-ffn-only` keeps the paper's head counts and aligns
  the FFN widths alone (docs/inference.md measures both).

N = 1 is the paper's exact counts (SlimGPT §3, spec §5): no rule applied.
"""
from __future__ import annotations


def channels_to_prune(width: int, share: float, n: int = 1) -> int:
    """FFN channels to prune from a layer `width` wide, given the budget's share (real-valued).

    n = 1: round(share) clamped to [0, width], the paper's count. n > 1: the count whose kept
    width is the multiple of n nearest to width − share (at most the largest multiple of n
    within width); a layer whose share rounds to no pruning keeps its full width.
    """
    exact = max(0, min(width, round(share)))
    if n <= 1 or exact == 0:
        return exact
    keep = n * round((width - share) / n)
    keep = max(0, min(width // n * n, keep))
    return width - keep


def head_mode(gqa_mode: str, n_heads: int, n_kv: int, n: int = 1, balance: bool = True) -> str:
    """The GQA granularity heads are planned with: "balanced" under alignment (n > 1, unless
    `balance` is False: --align-ffn-only) for the default "query" mode when the layer's query heads
    divide evenly over fewer KV heads; otherwise the mode asked for (under MHA "query" already keeps
    one query head per KV head)."""
    if n > 1 and balance and gqa_mode == "query" and 0 < n_kv < n_heads and n_heads % n_kv == 0:
        return "balanced"
    return gqa_mode


# `slimgpt prune` without --align: measured faster than dense in llama.cpp where the exact counts
# are not (docs/inference.md); the library's PruneSettings keeps the paper's exact counts (1)
CLI_DEFAULT = 32
