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


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
