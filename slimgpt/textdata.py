"""The packaged text data: WikiText-2 test (perplexity) and a C4 sample (calibration).

Files live in slimgpt/data/ (with their SOURCES.md license notices) and ship in the wheel; nothing
is downloaded. Conventions follow GPTQ / SparseGPT / SlimGPT (spec §6.1, §8.1):

- WikiText-2: the 4,358 test rows joined with "\n\n", tokenized once, no BOS.
- C4 calibration: documents 1000-1999 of the sample (documents 0-999 are left for C4 evaluation,
  so calibration and evaluation stay disjoint), each as `text + "\n\n"`, concatenated into one
  token stream, from which `n` random windows of `seqlen` tokens are drawn with distinct starts
  uniform in [0, len - seqlen - 1] (Python `random`, seeded). Windows may cross documents.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import random

import torch

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
WIKITEXT2_TEST = os.path.join(DATA_DIR, "wikitext-2", "wiki.test.raw")
C4_SAMPLE = os.path.join(DATA_DIR, "c4", "c4_validation_2k.jsonl.gz")
SHA256 = {
    WIKITEXT2_TEST: "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    C4_SAMPLE: "e6616a51e8d950a196af6e757a3e0d7257a007305beea9be194ad88eb223c38c",
}
C4_CALIBRATION_DOCS = (1000, 2000)


class CalibrationError(ValueError):
    pass


def _checked(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"packaged data file missing: {path} (reinstall slimgpt)")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SHA256[path]:
        raise ValueError(f"packaged data file {path} is corrupt (sha256 {digest})")
    return path


@functools.lru_cache(maxsize=1)
def wikitext2_text() -> str:
    """The WikiText-2 raw test split as `"\\n\\n".join(rows)` (1,294,336 characters)."""
    with open(_checked(WIKITEXT2_TEST), encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    rows = [line if line.strip() else "" for line in lines]
    assert len(rows) == 4358, len(rows)
    return "\n\n".join(rows)


@functools.lru_cache(maxsize=1)
def c4_documents() -> tuple:
    with gzip.open(_checked(C4_SAMPLE), "rt", encoding="utf-8") as f:
        return tuple(json.loads(line)["text"] for line in f)


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids (int64) of `text`, no special tokens added."""
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)


_STREAMS: dict = {}


def _stream(key, tokenizer, build):
    k = (key, id(tokenizer))
    if k not in _STREAMS:
        _STREAMS[k] = build()
    return _STREAMS[k]


def wikitext2_tokens(tokenizer) -> torch.Tensor:
    """The tokenized WikiText-2 test stream (304,986 tokens with SmolLM2's tokenizer)."""
    return _stream("wikitext2", tokenizer, lambda: encode(tokenizer, wikitext2_text()))


def c4_calibration_tokens(tokenizer) -> torch.Tensor:
    def build():
        a, b = C4_CALIBRATION_DOCS
        docs = [t + "\n\n" for t in c4_documents()[a:b]]
        ids = [e.ids for e in tokenizer.encode_batch(docs, add_special_tokens=False)]
        return torch.tensor([i for doc in ids for i in doc], dtype=torch.long)
    return _stream("c4", tokenizer, build)


def calibration_windows(tokenizer, n_samples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """(n_samples, seqlen) int64 calibration windows from the C4 stream (see module docstring)."""
    if n_samples < 1 or seqlen < 2:
        raise CalibrationError(f"need n_samples >= 1 and seqlen >= 2, got {n_samples} x {seqlen}")
    stream = c4_calibration_tokens(tokenizer)
    n_starts = len(stream) - seqlen - 1
    if n_starts < n_samples:
        raise CalibrationError(
            f"calibration of {n_samples} x {seqlen} tokens is longer than the C4 calibration data "
            f"({len(stream)} tokens allow at most {max(n_starts, 0)} distinct windows of {seqlen})")
    starts = random.Random(seed).sample(range(n_starts + 1), n_samples)
    return torch.stack([stream[s:s + seqlen] for s in starts])
