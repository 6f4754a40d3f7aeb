"""Shared plumbing for the numbered tutorials: --fast / --out flags, the Agg backend, checks.

Every tutorial takes `--fast` (or the environment variable SLIMGPT_TUTORIAL_FAST=1), which
shrinks sizes so the test suite can run it in seconds, and `--out DIR` (default tutorials/out/,
which git ignores) for its plots. This file is not a tutorial; it is imported by them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # plots go to files; no display needed

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def setup(description: str, argv=None):
    """Parse --fast/--out; return (fast, out_dir) with out_dir created."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--fast", action="store_true", default=os.environ.get("SLIMGPT_TUTORIAL_FAST") == "1",
                   help="small sizes for a quick run (also SLIMGPT_TUTORIAL_FAST=1)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("SLIMGPT_TUTORIAL_OUT", DEFAULT_OUT)),
                   help="folder for plots (default tutorials/out/)")
    args, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return args.fast, args.out


def check(name: str, actual: float, expected: float, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """Print one comparison line and stop the tutorial if it does not hold."""
    ok = abs(actual - expected) <= atol + rtol * abs(expected)
    print(f"  {name:<58} {actual: .12g}  vs {expected: .12g}  {'ok' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit(f"check failed: {name}")


def check_same(name: str, actual, expected) -> None:
    """Print one comparison of discrete results (indices) and stop the tutorial if they differ."""
    actual, expected = [int(v) for v in actual], [int(v) for v in expected]
    ok = actual == expected
    shown = str(actual) if len(actual) <= 8 else f"[{', '.join(map(str, actual[:6]))}, ... ({len(actual)} in all)]"
    print(f"  {name:<58} {shown}  {'ok' if ok else f'MISMATCH (expected {expected})'}")
    if not ok:
        raise SystemExit(f"check failed: {name}")


def check_lesson(name: str, holds: bool, detail: str = "") -> None:
    """Print one line for a property the tutorial teaches and stop the tutorial if it fails.

    The lesson itself is asserted (perplexity rises, the choice changes), so a smaller run that
    loses it fails loudly instead of teaching the opposite.
    """
    print(f"  lesson: {name:<50} {detail}  {'ok' if holds else 'MISMATCH'}")
    if not holds:
        raise SystemExit(f"check failed: {name}")


def check_max_diff(name: str, A, B, tol: float = 1e-9) -> None:
    """Print max|A - B| (relative to max|B|) and stop if it exceeds tol."""
    import numpy as np
    A, B = np.asarray(A, float), np.asarray(B, float)
    scale = max(float(np.max(np.abs(B))), 1e-300) if B.size else 1.0
    diff = float(np.max(np.abs(A - B))) / scale if B.size else 0.0
    ok = diff <= tol
    print(f"  {name:<58} max rel diff {diff:.2e}  {'ok' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit(f"check failed: {name}")


def trained_tiny_model(name: str = "tiny-llama", steps: int = 150, seed: int = 0, **overrides):
    """slimgpt.loaders.tiny.trained_tiny_model (a tiny LLaMA-style model trained in-process on
    WikiText-2 bytes, so that pruning raises its perplexity as in the paper), printing what it did.
    Returns (model in eval mode, tokenizer, held-out tokens: the last 10% of the stream)."""
    from slimgpt.loaders import tiny

    with Timer() as t:
        model, held_out, losses = tiny.trained_tiny_model(name, steps, seed, **overrides)
    print(f"trained {name} ({sum(p.numel() for p in model.parameters()):,} parameters) for {steps} steps of "
          f"16 x 64 WikiText-2 bytes in {t.seconds:.1f} s: loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    return model, tiny.byte_tokenizer(), held_out


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
