"""A model folder opened without reading its weights: one tensor, one layer at a time.

What this is: the layer source of the streaming pipeline (slimgpt/streaming.py). `open_lazy`
validates a Hugging Face-style folder exactly as `loaders.load_model` does (config.json,
tokenizer, tokenizer metadata, the safetensors headers against the config: hf_folder.py and
validate.py do the work) but reads no weight. `LazyCheckpoint.layer(i, device)` then builds
decoder layer i in float32 on `device` from the stored tensors (bf16 / fp16 / fp32 / fp64 on
disk), each checked for NaN/Inf as it is read; `tensor(name)` reads one tensor.

Tensors are read with plain positioned reads (`os.preadv` into the tensor's own buffer), not
through a memory map: pages of a mapped 10 GB shard would count in the process's resident set
for as long as the map lives, and the point of streaming is a bounded one. The safetensors
layout is 8 bytes of header length, a JSON header ({name: {dtype, shape, data_offsets}}), then
the data; hf_folder.read_headers has already checked every file with the safetensors library.

`LazyModel` is a read-only facade with the parts of `LlamaForCausalLM` that a whole-model plan
reads (FLAP's `plan`: `config`, `model.layers` loaded on access, `embed`, `rope`,
`parameters()` for the device), so such plans stream too. What this is not: a loader of GGUF
files (those are small; the streaming pipeline loads them whole, see streaming.py) or a writer.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from types import SimpleNamespace

import torch

from slimgpt.loaders.hf_folder import (read_config, read_headers, read_tokenizer, read_tokenizer_meta,
                                       weight_files)
from slimgpt.loaders.validate import CheckpointError, check_finite, check_weight_shapes, one_line, storage_dtype
from slimgpt.model import DecoderLayer, LlamaConfig, rope_cos_sin

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _header(path: str) -> tuple[dict, int]:
    """({name: (dtype, shape, begin, end)}, data start) of a safetensors file (absolute offsets)."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            head = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({one_line(e)})") from None
    start = 8 + n
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = (v["dtype"], tuple(v["shape"]), start + b, start + e)
    return out, start


class LazyCheckpoint:
    """A validated model folder whose weights are read on demand (see the module docstring)."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.config: LlamaConfig = read_config(folder)
        cfg = self.config
        self.tokenizer = read_tokenizer(folder, cfg)
        if self.tokenizer is None and cfg.vocab_size == 256:
            from slimgpt.loaders.tiny import byte_tokenizer
            self.tokenizer = byte_tokenizer()
        self.tokenizer_config, self.generation_config = read_tokenizer_meta(folder)
        files, index = weight_files(folder)
        shapes, where = read_headers(files, index)
        if not cfg.tie_word_embeddings and "lm_head.weight" not in shapes:
            raise CheckpointError(f"{folder}: config.json has tie_word_embeddings false but the weights "
                                  "have no lm_head.weight")
        check_weight_shapes(cfg, shapes, folder, where)
        self.files = files
        self.entries: dict = {}
        for path in files:
            head, _ = _header(path)
            for k, (dt, shape, b, e) in head.items():
                if k in where and where[k] == path:
                    self.entries[k] = (path, dt, shape, b, e)
        counts: dict = {}
        for _, dt, shape, _, _ in self.entries.values():
            n = 1
            for s in shape:
                n *= s
            counts[dt] = counts.get(dt, 0) + n
        self.source_dtype = storage_dtype(counts)
        self.source = self.folder
        if cfg.tie_word_embeddings and "lm_head.weight" in self.entries:
            if not torch.equal(self.tensor("lm_head.weight"), self.tensor("model.embed_tokens.weight")):
                raise CheckpointError(f"{folder}: config.json says tie_word_embeddings true, but the weights hold an "
                                      "lm_head.weight that differs from model.embed_tokens.weight")

    # -- reading ---------------------------------------------------------------------------------

    def stored(self, name: str) -> torch.Tensor:
        """Tensor `name` as stored (its file's dtype), on the CPU, read with positioned reads."""
        path, dt, shape, b, e = self.entries[name]
        if dt not in ST_DTYPES:
            raise CheckpointError(f"{path}: {name} has dtype {dt}, which the streaming reader does not convert "
                                  f"(supported: {', '.join(ST_DTYPES)})")
        t = torch.empty(shape, dtype=ST_DTYPES[dt])
        buf = t.view(-1).view(torch.uint8).numpy() if t.numel() else memoryview(bytearray(0))
        if len(buf) != e - b:
            raise CheckpointError(f"{path}: {name} holds {e - b} bytes, its shape and dtype need {len(buf)}")
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                done = 0
                while done < len(buf):
                    got = os.preadv(fd, [memoryview(buf)[done:]], b + done)
                    if got <= 0:
                        raise OSError(f"unexpected end of file after {done} of {len(buf)} bytes of {name}")
                    done += got
            finally:
                os.close(fd)
        except OSError as err:
            raise CheckpointError(f"{path}: cannot read {name} ({one_line(err)})") from None
        return t

    def tensor(self, name: str, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """Tensor `name` converted to `dtype` on `device`, checked for NaN/Inf. The stored bytes
        cross to the device once, in their own dtype, and are converted there."""
        t = self.stored(name).to(device)
        t = t.to(dtype) if t.dtype != dtype else t
        check_finite(name, t, self.entries[name][0])
        return t

    def layer(self, i: int, device="cpu") -> DecoderLayer:
        """Decoder layer i, float32, on `device` (the weights read now; nothing is cached)."""
        prefix = f"model.layers.{i}."
        sd = {k[len(prefix):]: self.tensor(k, device) for k in self.entries if k.startswith(prefix)}
        layer = DecoderLayer(self.config, i)
        try:
            layer.load_state_dict(sd, strict=True, assign=True)
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{self.folder}: layer {i} does not match config.json ({one_line(e)})") from None
        return layer.to(device).eval()

    def embed_name(self) -> str:
        return "model.embed_tokens.weight"

    def head_name(self) -> str:
        return "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"

    def fingerprint(self) -> dict:
        """What identifies the input without reading its weights: the config, and the name, size,
        modification time and header digest of every weight file."""
        files = []
        for path in self.files:
            st = os.stat(path)
            head, start = _header(path)
            digest = hashlib.sha256(json.dumps(sorted((k, list(v)) for k, v in head.items())).encode()).hexdigest()
            files.append([os.path.basename(path), st.st_size, st.st_mtime_ns, digest[:16]])
        return {"source": self.folder, "config": self.config.to_dict(), "files": files}


def open_lazy(folder: str) -> LazyCheckpoint:
    """A model folder opened lazily (validated; no weight read)."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: not a model folder")
    return LazyCheckpoint(folder)


# ----------------------------------------------------------------------------------------------
# A facade for whole-model plans

class _LazyLayers:
    """model.layers of a LazyModel: layer i is read from disk when it is accessed."""

    def __init__(self, ckpt: LazyCheckpoint, device):
        self.ckpt, self.device = ckpt, device

    def __len__(self):
        return self.ckpt.config.num_hidden_layers

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.ckpt.layer(i % len(self), self.device)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]           # the previous layer is freed when the caller drops it


class LazyModel:
    """The read-only parts of LlamaForCausalLM a whole-model plan needs, over a LazyCheckpoint:
    `config`, `model.layers` (each loaded on access), `embed(ids)`, `rope(T)`, `head(x)` and
    `parameters()` (one empty tensor, for the device)."""

    def __init__(self, ckpt: LazyCheckpoint, device="cpu"):
        self.ckpt, self.config, self.device = ckpt, ckpt.config, torch.device(device)
        self.model = SimpleNamespace(layers=_LazyLayers(ckpt, self.device))
        self._embed = None

    def parameters(self):
        yield torch.empty(0, device=self.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self._embed is None:
            self._embed = self.ckpt.tensor(self.ckpt.embed_name(), self.device)
        return torch.nn.functional.embedding(ids.to(self.device), self._embed)

    def rope(self, T: int, device=None, dtype=torch.float32):
        cfg = self.config
        return rope_cos_sin(T, cfg.head_dim, cfg.rope_theta, device, dtype, cfg.rope_scaling)

    def release(self):
        self._embed = None
