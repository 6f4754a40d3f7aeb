"""The packaged text data: WikiText-2 test (perplexity) and a C4 sample (calibration), and the
user's own calibration files.

Files live in slimgpt/data/ (with their SOURCES.md license notices) and ship in the wheel; nothing
is downloaded. Conventions follow GPTQ / SparseGPT / SlimGPT (spec §6.1, §8.1):

- WikiText-2: the 4,358 test rows joined with "\n\n", tokenized once, no BOS.
- C4 calibration: documents 1000-1999 of the sample (documents 0-999 are left for C4 evaluation,
  so calibration and evaluation stay disjoint), each as `text + "\n\n"`, concatenated into one
  token stream, from which `n` random windows of `seqlen` tokens are drawn with distinct starts
  uniform in [0, len - seqlen - 1] (Python `random`, seeded). Windows may cross documents.

Other calibration data (`calibration_source`, `slimgpt prune --calib c4|wikitext2|FILE`), drawn
with the same windows scheme:

- `wikitext2`: the packaged WikiText-2 *test* split, which is also the evaluation data. Only the
  tokens after the first `skip_tokens` are used (the CLI skips the tokens its dense/pruned
  perplexity scores, so those stay unseen); a later evaluation over more than `skip_tokens`
  tokens scores text the calibration saw, and `describe` says so ("overlap").
- FILE: a UTF-8 text file whose documents are separated by blank lines, or a JSONL file
  (`.jsonl` / `.ndjson`; one JSON object per line with a "text" string). Each document becomes
  `text + "\n\n"` as for C4. The file is read once; its sha256 is recorded.

Calibration that a model cannot run on is a `CalibrationError` (one line), not an IndexError or a
ZeroDivisionError later: counts must be integers (n_samples >= 1, seqlen >= 2), the tokenizer must
produce tokens, and given the model (`calibration_windows(..., model=...)` or
`check_calibration(ids, model)`) every id must be below its vocab_size and the windows no longer
than its max_position_embeddings unless `allow_long_context=True`.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import numbers
import os
import random
import re
from dataclasses import dataclass

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


_STREAMS: dict = {}          # (key, id(tokenizer)) -> (tokenizer, tokens); most recent last
_MAX_STREAMS = 8


def _stream(key, tokenizer, build):
    # The entry holds the tokenizer itself: while it is cached its id cannot be reused by another
    # tokenizer, which would otherwise be handed this one's tokens (ids beyond its vocabulary).
    k = (key, id(tokenizer))
    hit = _STREAMS.pop(k, None)
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, build())
    _STREAMS[k] = hit
    while len(_STREAMS) > _MAX_STREAMS:
        del _STREAMS[next(iter(_STREAMS))]
    return hit[1]


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


def _count(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise CalibrationError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _model_config(model):
    """(config, label) of a model, a LlamaConfig or a loaders.Loaded; (None, None) for None."""
    if model is None:
        return None, None
    if hasattr(model, "source") and hasattr(model, "model"):          # loaders.Loaded
        return model.model.config, f"model {model.source}"
    cfg = getattr(model, "config", model)
    label = getattr(cfg, "architecture", None)
    return cfg, (f"the {label} model" if label else "the model")


def check_calibration(ids: torch.Tensor, model=None, *, allow_long_context: bool = False,
                      tokenizer=None) -> torch.Tensor:
    """Refuse calibration token ids a model cannot run on, with one `CalibrationError` line.

    `ids` must be a non-empty (n_samples, seqlen) integer tensor, seqlen >= 2. With `model` (a
    model, its LlamaConfig or a loaders.Loaded): every id must be < vocab_size (a larger id means
    the tokenizer and the model do not belong together), and seqlen must not exceed
    max_position_embeddings unless `allow_long_context` (RoPE models then run positions they
    were not trained on). Returns `ids`."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.is_complex():
        raise CalibrationError(f"calibration data must be a 2-D integer tensor (n_samples, seqlen), got "
                               f"{type(ids).__name__} {tuple(ids.shape) if isinstance(ids, torch.Tensor) else ''}")
    n, T = ids.shape
    if n < 1 or T < 2:
        raise CalibrationError(f"calibration data is empty or too short: {n} windows of {T} tokens "
                               "(need at least 1 window of 2 tokens)")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise CalibrationError(f"calibration data holds a negative token id ({lo})")
    cfg, label = _model_config(model)
    if cfg is None:
        return ids
    if hi >= cfg.vocab_size:
        tok = ""
        if tokenizer is not None and hasattr(tokenizer, "get_vocab_size"):
            tok = f" ({tokenizer.get_vocab_size(with_added_tokens=True)} tokens)"
        raise CalibrationError(f"the tokenizer{tok} produced token id {hi}, but {label} has vocab_size "
                               f"{cfg.vocab_size}: tokenizer and model do not belong together")
    if T > cfg.max_position_embeddings and not allow_long_context:
        raise CalibrationError(f"calibration windows of {T} tokens are longer than the context of {label} "
                               f"(max_position_embeddings {cfg.max_position_embeddings}); use a shorter seqlen "
                               "or allow_long_context=True (RoPE extrapolation)")
    return ids


@dataclass(frozen=True)
class CalibrationSource:
    """Where calibration text comes from (see the module docstring)."""
    name: str                  # "c4" | "wikitext2" | "file"
    path: str                  # the file the text is read from
    sha256: str                # of that file
    format: str                # "c4-sample" | "wikitext-raw" | "text" | "jsonl"
    skip_tokens: int = 0       # wikitext2: leading tokens left out (the evaluated ones)
    documents: tuple | None = None   # file: the documents read from it

    def describe(self, tokenizer=None) -> dict:
        """What the manifest records: data, path, sha256 and, for WikiText-2, the overlap with
        evaluation."""
        d = {"dataset": self.name, "path": self.path, "sha256": self.sha256, "format": self.format}
        if self.name == "c4":
            a, b = C4_CALIBRATION_DOCS
            d["documents"] = f"{a}-{b - 1} of the C4 validation sample (0-{a - 1} are left for evaluation)"
            d["path"] = os.path.relpath(self.path, os.path.dirname(os.path.dirname(__file__)))
        elif self.name == "wikitext2":
            d["path"] = os.path.relpath(self.path, os.path.dirname(os.path.dirname(__file__)))
            d["skip_tokens"] = self.skip_tokens
            d["overlap"] = (f"calibrated on the WikiText-2 test split after its first {self.skip_tokens} tokens: "
                            f"a WikiText-2 perplexity over more than the first {self.skip_tokens} tokens scores "
                            "text the calibration has seen")
        else:
            d["documents"] = len(self.documents)
        if tokenizer is not None:
            d["tokens"] = int(calibration_stream(tokenizer, self).numel())
        return d


def calibration_source(spec="c4", *, skip_tokens: int = 0) -> CalibrationSource:
    """`spec`: "c4" (default), "wikitext2" (after the first `skip_tokens` tokens), or the path of a
    UTF-8 text / JSONL file (read and checked now: one CalibrationError line when it is missing,
    empty, not UTF-8, or JSONL without a "text" string on a line)."""
    if isinstance(spec, CalibrationSource):
        return spec
    if spec == "c4":
        return CalibrationSource("c4", C4_SAMPLE, SHA256[C4_SAMPLE], "c4-sample")
    if spec == "wikitext2":
        return CalibrationSource("wikitext2", WIKITEXT2_TEST, SHA256[WIKITEXT2_TEST], "wikitext-raw",
                                 skip_tokens=_count("skip_tokens", skip_tokens, 0))
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise CalibrationError(f"calibration data must be c4, wikitext2 or a file, got {spec!r}")
    return read_calibration_file(spec)


def read_calibration_file(path) -> CalibrationSource:
    """A calibration file's documents (see the module docstring for the two formats)."""
    shown = os.fspath(path)
    path = os.path.abspath(os.path.expanduser(shown))
    if os.path.isdir(path):
        raise CalibrationError(f"calibration file {shown} is a folder (give c4, wikitext2 or a text/JSONL file)")
    if not os.path.exists(path):
        raise CalibrationError(f"calibration file {shown} does not exist (give c4, wikitext2 or a text/JSONL file)")
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"calibration file {shown} is not UTF-8 text (invalid byte at offset {e.start})") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        raise CalibrationError(f"calibration file {shown} holds NUL bytes (binary data, not text)")
    jsonl = path.lower().endswith((".jsonl", ".ndjson"))
    docs = _jsonl_documents(text, shown) if jsonl else [d.strip() for d in re.split(r"\n[ \t]*\n", text)]
    docs = tuple(d for d in docs if d.strip())
    if not docs:
        raise CalibrationError(f"calibration file {shown} holds no text")
    return CalibrationSource("file", path, digest, "jsonl" if jsonl else "text", documents=docs)


def _jsonl_documents(text: str, shown: str) -> list:
    docs = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise CalibrationError(f"calibration file {shown} line {n}: not JSON ({e.msg}); a JSONL file holds one "
                                   'object per line, {"text": "..."}') from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            what = "no \"text\" field" if not isinstance(obj, dict) or "text" not in obj else \
                "a \"text\" that is not a string"
            raise CalibrationError(f"calibration file {shown} line {n}: {what}; a JSONL file holds one object per "
                                   'line, {"text": "..."}')
        docs.append(obj["text"])
    return docs


def calibration_stream(tokenizer, source="c4") -> torch.Tensor:
    """The 1-D token stream calibration windows are drawn from (cached per tokenizer)."""
    src = calibration_source(source)
    if src.name == "c4":
        return c4_calibration_tokens(tokenizer)
    if src.name == "wikitext2":
        return wikitext2_tokens(tokenizer)[src.skip_tokens:]

    def build():
        ids = [e.ids for e in tokenizer.encode_batch([d + "\n\n" for d in src.documents], add_special_tokens=False)]
        return torch.tensor([i for doc in ids for i in doc], dtype=torch.long)
    return _stream(("file", src.path, src.sha256), tokenizer, build)


def calibration_windows(tokenizer, n_samples: int, seqlen: int, seed: int = 0, *, model=None,
                        allow_long_context: bool = False, source="c4") -> torch.Tensor:
    """(n_samples, seqlen) int64 calibration windows from the C4 stream, or from `source` (a
    name, a file path or a CalibrationSource; see the module docstring).

    With `model` (a model, its LlamaConfig or a loaders.Loaded) the windows are checked against
    it (`check_calibration`): ids below its vocab_size, and seqlen within its
    max_position_embeddings unless `allow_long_context`."""
    n_samples, seqlen = _count("n_samples", n_samples, 1), _count("seqlen", seqlen, 2)
    seed = _count("seed", seed, -(2 ** 63))
    src = calibration_source(source)
    if tokenizer is None or not hasattr(tokenizer, "encode_batch"):
        raise CalibrationError(f"calibration needs a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    cfg, _ = _model_config(model)
    if cfg is not None and seqlen > cfg.max_position_embeddings and not allow_long_context:
        check_calibration(torch.zeros(1, seqlen, dtype=torch.long), model)   # refuse before tokenizing
    stream = calibration_stream(tokenizer, src)
    what = {"c4": "the C4 calibration data", "wikitext2": f"WikiText-2 after its first {src.skip_tokens} tokens",
            "file": f"the calibration file {src.path}"}[src.name]
    if len(stream) == 0:
        raise CalibrationError(f"the tokenizer produced no tokens from {what} (empty vocabulary?)")
    n_starts = len(stream) - seqlen - 1
    if n_starts < n_samples:
        raise CalibrationError(
            f"calibration of {n_samples} x {seqlen} tokens is longer than {what} "
            f"({len(stream)} tokens allow at most {max(n_starts, 0)} distinct windows of {seqlen})")
    starts = random.Random(seed).sample(range(n_starts + 1), n_samples)
    windows = torch.stack([stream[s:s + seqlen] for s in starts])
    return check_calibration(windows, model, allow_long_context=allow_long_context, tokenizer=tokenizer)
