"""Write a llama.cpp GGUF file from a slimgpt checkpoint (and read one back, for checks).

Architecture (docs/export.md):

- `llama` when the model is a stock LLaMA (every layer dense-shaped, HF's contiguous query→KV
  grouping, no biases): scalar head counts, as llama.cpp's own converter writes them;
- `deci` (llama.cpp's Nemotron-NAS / DeciLM architecture) otherwise: `deci.attention.head_count`,
  `deci.attention.head_count_kv` and `deci.feed_forward_length` are per-layer arrays, and
  `deci.attention.key_length` / `value_length` / `rope.dimension_count` give head_dim
  explicitly (llama.cpp would otherwise derive it as n_embd / n_head, wrong once heads are
  pruned). deci reads optional q/k/v, o_proj and down_proj biases.

What llama.cpp cannot express, and what is written instead (exact, at a small size cost):

- **uneven query→KV maps.** llama.cpp's GQA (like HF's repeat_kv) gives query head h the KV
  head h // (n_head / n_head_kv): contiguous, equal groups. A layer whose map is not of that
  form is regrouped: its query heads are reordered by KV head (q rows and the matching o_proj
  columns move together, so the layer computes the same function), and KV head j, serving c_j
  query heads, is written c_j / g times, g = gcd(c_j), so every query head has a contiguous
  group of g. Example: map [0, 1, 1, 2, 2] (c = 1, 2, 2, g = 1) becomes 5 KV heads;
  [0, 0, 1, 1, 2, 2, 2, 2] (c = 2, 2, 4, g = 2) becomes 4. Only k/v rows are duplicated.
- **a layer with no heads or no FFN channels left.** deci has attention-free / FFN-free layers,
  but its FFN-free path drops that layer's attention output and neither path can add an
  output bias, so such a layer gets one zero head (q/k/v/o rows zero: the attention adds
  exactly its o_proj bias, or nothing) or one zero channel (gate/up/down zero).

q_proj / k_proj rows (and their biases) are permuted to llama.cpp's interleaved RoPE pairs (the
inverse of slimgpt.loaders.gguf_loader.unpermute_qk). LLaMA-3.x rope scaling is written as
llama.cpp's own converter writes it: a `rope_freqs.weight` tensor of per-frequency divisors.
Qwen3's q/k norms have no per-layer llama.cpp architecture: such models are refused. Norms and
biases are always F32; the matrices are F32, F16, BF16 or Q8_0 (rows whose length is not a
multiple of 32 fall back to F16). Q4_K_M is llama.cpp's own recipe, applied by its quantizer
(llama_model_quantize, exposed by llama-cpp-python) to the F16 file: 4-bit K-quant blocks of
256 along a row, 6-bit for some V / down projections and the output; a row whose length is not
a multiple of 256 falls back to q5_0 / q8_0 (or F16 if not a multiple of 32 either), so
`--align 256` (docs/inference.md) lets the pruned FFN widths take the K-quants.

Tokenizer: byte-level BPE only (tokenizer.ggml.model "gpt2"): the vocabulary, merges and token
types of the checkpoint's tokenizer.json, `tokenizer.ggml.pre` chosen from its pre-tokenizer
(GPT-2 regex → "gpt-2", digits + GPT-2 → "smollm", Qwen2 / LLaMA-3 split regexes → "qwen2" /
"llama-bpe"), special token ids, add_bos/add_eos flags and the chat template when known. A
tokenizer without merges (the byte-level test tokenizer) gets an empty merges array: llama.cpp
requires the key.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import gguf
import numpy as np

from slimgpt.export.common import EXPORT_FORMAT, GGUF_MARK_KEY, ExportError

# Split patterns of tokenizer.json pre-tokenizers that llama.cpp implements under a `pre` name.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")

QK_NORM_REFUSAL = ("GGUF export of a model with Qwen3 q/k norms is not possible: llama.cpp's per-layer "
                   "architecture (deci) has no q/k norms, and its qwen3 architecture has one size for all layers; "
                   "use --format hf")

# ----------------------------------------------------------------------------------------------
# Tensor layout

def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for q/k (its converter's `permute`): each head's rows go from HF's
    rotate_half halves [x0..x_{d/2-1}, x_{d/2}..] to interleaved pairs. Works on biases (1-D) too."""
    if n_head == 0:
        return w
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def regroup(kv_map: list[int], n_kv: int) -> tuple[list[int], list[int]]:
    """(query head order, KV head of each written KV slot) giving contiguous equal groups.

    The query heads are sorted by the KV head they read (stable); KV head j, read by c_j query
    heads, is written c_j / g times, g = gcd of the c_j. Standard maps come back unchanged.
    """
    counts = [kv_map.count(j) for j in range(n_kv)]
    g = 0
    for c in counts:
        g = math.gcd(g, c)
    order = sorted(range(len(kv_map)), key=lambda h: (kv_map[h], h))
    slots = [j for j in range(n_kv) for _ in range(counts[j] // g)]
    return order, slots


def layer_plan(cfg, i: int) -> dict:
    """How layer i is written: query heads (after dummies), KV slots, FFN width, query order."""
    H, K, M = cfg.layer_heads[i], cfg.layer_kv_heads[i], cfg.layer_intermediate[i]
    if H == 0:
        return {"heads": 1, "kv_heads": 1, "ffn": max(M, 1), "dummy_head": True, "dummy_ffn": M == 0,
                "order": None, "slots": None}
    order, slots = regroup(cfg.layer_kv_map[i], K)
    identity = order == list(range(H)) and slots == list(range(K))
    return {"heads": H, "kv_heads": len(slots), "ffn": max(M, 1), "dummy_head": False, "dummy_ffn": M == 0,
            "order": None if identity else order, "slots": None if identity else slots}


def _np(t):
    return t.detach().to("cpu").float().numpy()


def layer_tensors(model, i: int, plan: dict) -> dict:
    """GGUF-named float32 arrays of layer i, laid out as `plan` says (HF weight orientation, out × in)."""
    cfg = model.config
    layer = model.model.layers[i]
    a, f = layer.self_attn, layer.mlp
    D, d = cfg.hidden_size, cfg.head_dim
    p = f"blk.{i}."
    out = {p + "attn_norm.weight": _np(layer.input_layernorm.weight)}
    if plan["dummy_head"]:
        q = np.zeros((d, D), np.float32)
        k, v, o = q.copy(), q.copy(), np.zeros((D, d), np.float32)
        bq = bk = bv = np.zeros(d, np.float32) if cfg.attention_bias else None
    else:
        q, k, v, o = _np(a.q_proj.weight), _np(a.k_proj.weight), _np(a.v_proj.weight), _np(a.o_proj.weight)
        bq = _np(a.q_proj.bias) if cfg.attention_bias else None
        bk = _np(a.k_proj.bias) if cfg.attention_bias else None
        bv = _np(a.v_proj.bias) if cfg.attention_bias else None
        if plan["order"] is not None:
            H = cfg.layer_heads[i]
            rows = np.concatenate([np.arange(h * d, (h + 1) * d) for h in plan["order"]])
            kv_rows = np.concatenate([np.arange(j * d, (j + 1) * d) for j in plan["slots"]])
            q, o = q[rows], o[:, rows]
            k, v = k[kv_rows], v[kv_rows]
            if bq is not None:
                bq, bk, bv = bq[rows], bk[kv_rows], bv[kv_rows]
            assert q.shape[0] == H * d
    out[p + "attn_q.weight"] = permute_qk(q, plan["heads"])
    out[p + "attn_k.weight"] = permute_qk(k, plan["kv_heads"])
    out[p + "attn_v.weight"] = v
    if bq is not None:
        out[p + "attn_q.bias"] = permute_qk(bq, plan["heads"])
        out[p + "attn_k.bias"] = permute_qk(bk, plan["kv_heads"])
        out[p + "attn_v.bias"] = bv
    out[p + "attn_output.weight"] = o
    if cfg.o_proj_bias:
        out[p + "attn_output.bias"] = _np(a.o_proj.bias)
    out[p + "ffn_norm.weight"] = _np(layer.post_attention_layernorm.weight)
    if plan["dummy_ffn"]:
        out[p + "ffn_gate.weight"] = np.zeros((1, D), np.float32)
        out[p + "ffn_up.weight"] = np.zeros((1, D), np.float32)
        out[p + "ffn_down.weight"] = np.zeros((D, 1), np.float32)
    else:
        out[p + "ffn_gate.weight"] = _np(f.gate_proj.weight)
        out[p + "ffn_up.weight"] = _np(f.up_proj.weight)
        out[p + "ffn_down.weight"] = _np(f.down_proj.weight)
    if cfg.mlp_bias:
        out[p + "ffn_down.bias"] = _np(f.down_proj.bias)
    return out


def is_plain_llama(cfg) -> bool:
    from slimgpt.export.hf import is_plain
    return is_plain(cfg) and not cfg.attention_bias


# ----------------------------------------------------------------------------------------------
# Tokenizer

def detect_pre(pre_tokenizer, has_merges: bool) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer, or None if unknown."""
    if not isinstance(pre_tokenizer, dict):
        return None
    t = pre_tokenizer.get("type")
    if t == "ByteLevel":
        # with use_regex=False and no merges every byte is one token, whatever the split
        return "gpt-2" if pre_tokenizer.get("use_regex", True) or not has_merges else None
    if t == "Sequence":
        items = pre_tokenizer.get("pretokenizers") or []
        types = [p.get("type") for p in items]
        if types == ["Digits", "ByteLevel"] and items[0].get("individual_digits") and items[1].get("use_regex", True):
            return "smollm"
        if types == ["Split", "ByteLevel"] and not items[1].get("use_regex", True):
            pattern = (items[0].get("pattern") or {}).get("Regex")
            return {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}.get(pattern)
    return None


def gguf_vocab(tokenizer, vocab_size: int) -> dict:
    """tokens, token types, merges and `pre` of a byte-level BPE tokenizer (tokenizers.Tokenizer)."""
    tj = json.loads(tokenizer.to_str())
    model = tj.get("model") or {}
    decoder = tj.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ExportError("GGUF export supports byte-level BPE tokenizers (GPT-2 style: SmolLM2, Qwen2, LLaMA-3); "
                          f"this tokenizer is {model.get('type')} with a {decoder.get('type')} decoder")
    merges = []
    for m in model.get("merges") or []:
        merges.append(m if isinstance(m, str) else " ".join(m))
    pre = detect_pre(tj.get("pre_tokenizer"), bool(merges))
    if pre is None:
        raise ExportError("GGUF export: the tokenizer's pre-tokenizer has no llama.cpp equivalent that slimgpt "
                          f"knows ({json.dumps(tj.get('pre_tokenizer'))[:200]})")
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    n = max(vocab.values()) + 1 if vocab else 0
    if n > vocab_size:
        raise ExportError(f"the tokenizer has {n} tokens but the model's embedding only {vocab_size}")
    added = {a["id"]: a for a in tj.get("added_tokens") or []}
    tokens = [None] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for t, i in vocab.items():
        tokens[i] = t
        a = added.get(i)
        if a is None:
            types[i] = int(gguf.TokenType.NORMAL)
        else:
            types[i] = int(gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
    for i in range(vocab_size):
        if tokens[i] is None:           # embedding rows beyond the tokenizer (padded vocabularies)
            tokens[i] = f"[PAD{i}]"
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


# ----------------------------------------------------------------------------------------------
# Writing

class _Writer(gguf.GGUFWriter):
    """GGUFWriter that also writes empty arrays (valid GGUF; the gguf package refuses them)."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
            head = self._pack("I", vtype) if add_vtype else b""
            return bytes(head + self._pack("I", sub_type) + self._pack("Q", 0))
        return super()._pack_val(val, vtype, add_vtype, sub_type)


_FILE_TYPE = {"float32": 0, "float16": 1, "q8_0": 7, "bfloat16": 32}   # llama_ftype (general.file_type)
_LLAMA_QUANTIZED = {"q4_k_m": 15}        # dtype -> llama_ftype, made by llama.cpp's quantizer from F16


def llama_quantizer():
    """llama.cpp's llama_model_quantize (llama-cpp-python), or one clear ExportError."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError("--dtype q4_k_m uses llama.cpp's quantizer: pip install llama-cpp-python "
                          "(the slimgpt[llama-cpp] extra), or export --dtype float16 / q8_0") from None
    if not hasattr(llama_cpp, "llama_model_quantize"):
        raise ExportError(f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} does not expose "
                          "llama_model_quantize; install llama-cpp-python>=0.3")
    return llama_cpp


def quantize_file(f16_path: Path, path: Path, dtype: str) -> None:
    """llama.cpp's quantizer: the F16 GGUF `f16_path` -> `path` in `dtype` (its own per-tensor
    recipe and fallbacks; the metadata, ours included, is copied)."""
    llama_cpp = llama_quantizer()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _LLAMA_QUANTIZED[dtype]
    params.nthread = 0                   # llama.cpp: all hardware threads
    logger = logging.getLogger("llama-cpp-python")     # llama.cpp logs every tensor through it
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(path).encode(), params)
    finally:
        logger.setLevel(level)
    if rc != 0 or not path.exists():
        raise ExportError(f"llama.cpp's quantizer failed ({dtype}, return code {rc})")


def tensor_types(path) -> dict:
    """How many matrices a GGUF stores in each ggml type, e.g. {"Q4_K": 61, "Q5_0": 120, ...}."""
    counts = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if len(t.shape) > 1:
            name = t.tensor_type.name
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _target_type(name: str, shape, dtype: str):
    Q = gguf.GGMLQuantizationType
    if len(shape) < 2 or dtype == "float32":
        return Q.F32
    if dtype == "float16":
        return Q.F16
    if dtype == "bfloat16":
        return Q.BF16
    block = gguf.GGML_QUANT_SIZES[Q.Q8_0][0]
    return Q.Q8_0 if shape[-1] % block == 0 else Q.F16


def _encode(arr: np.ndarray, qtype):
    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(arr, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype)


def _nbytes(shape, qtype) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    return n // block * size


def rope_freq_factors(cfg) -> np.ndarray | None:
    """LLaMA-3.x rope scaling as llama.cpp applies it: `rope_freqs.weight`, one factor per
    frequency that divides it (unscaled / scaled frequency, from slimgpt's own rope_inv_freq)."""
    if cfg.rope_scaling is None:
        return None
    from slimgpt.model import rope_inv_freq

    plain = rope_inv_freq(cfg.head_dim, cfg.rope_theta, None).double()
    scaled = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).double()
    return (plain / scaled).float().numpy()


def _tensors(model, plans):
    """(name, float32 array) in file order; built lazily, one layer at a time."""
    cfg = model.config
    yield "token_embd.weight", _np(model.model.embed_tokens.weight)
    factors = rope_freq_factors(cfg)
    if factors is not None:
        yield "rope_freqs.weight", factors
    for i, plan in enumerate(plans):
        yield from layer_tensors(model, i, plan).items()
    yield "output_norm.weight", _np(model.model.norm.weight)
    if not cfg.tie_word_embeddings:
        yield "output.weight", _np(model.lm_head.weight)


def write_gguf(source, path: Path, dtype: str, log=None) -> dict:
    """Write `source` to `path` in `dtype`; llama.cpp-quantized types go through an F16 file."""
    if dtype not in _LLAMA_QUANTIZED:
        return _write(source, path, dtype, log)
    llama_quantizer()
    f16 = path.with_name(path.name + ".f16")
    try:
        info = _write(source, f16, "float16", log)
        quantize_file(f16, path, dtype)
    finally:
        f16.unlink(missing_ok=True)
    info["tensor_types"] = tensor_types(path)
    (log or (lambda s: None))(f"gguf: {dtype} by llama.cpp's quantizer: {info['tensor_types']}")
    return info


def _write(source, path: Path, dtype: str, log=None) -> dict:
    log = log or (lambda s: None)
    cfg, meta = source.config, source.meta
    if cfg.qk_norm:
        raise ExportError(QK_NORM_REFUSAL)
    if source.tokenizer is None:
        raise ExportError(f"{source.path}: the checkpoint has no tokenizer.json; llama.cpp needs the vocabulary")
    voc = gguf_vocab(source.tokenizer, cfg.vocab_size)
    plain = is_plain_llama(cfg)
    arch = "llama" if plain else "deci"
    plans = [layer_plan(cfg, i) for i in range(cfg.num_hidden_layers)]

    w = _Writer(str(path), arch)
    _add_model_keys(w, source, plans, plain, dtype)
    _add_tokenizer_keys(w, voc, meta)
    _add_slimgpt_keys(w, source)
    fallback = _write_tensors(w, source.model, plans, dtype)
    dup = [i for i, p in enumerate(plans) if p["order"] is not None]
    dummies = [i for i, p in enumerate(plans) if p["dummy_head"] or p["dummy_ffn"]]
    log(f"gguf: arch {arch}, {dtype}, pre-tokenizer {voc['pre']}"
        + (f", regrouped KV heads in layers {dup}" if dup else "")
        + (f", zero head/channel in {dummies}" if dummies else ""))
    return {"arch": arch, "layout": "plain-llama" if plain else "deci-per-layer", "tokenizer_pre": voc["pre"],
            "regrouped_layers": dup, "padded_layers": dummies, "q8_0_f16_fallbacks": fallback,
            "tensor_types": tensor_types(path),
            "head_count": [p["heads"] for p in plans], "head_count_kv": [p["kv_heads"] for p in plans],
            "feed_forward_length": [p["ffn"] for p in plans], "chat_template": bool(meta.get("chat_template")),
            "metadata_sources": meta.get("sources", [])}


def _add_model_keys(w, source, plans, plain: bool, dtype: str) -> None:
    """general.* and the architecture's sizes: scalars for a stock LLaMA, per-layer arrays for deci."""
    cfg = source.config
    name = str(source.manifest.get("source_model") or source.path.name)
    w.add_type("model")
    w.add_name(f"{Path(name).name} (slimgpt)")
    w.add_file_type(_FILE_TYPE[dtype])
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    if plain:
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
    else:
        w.add_feed_forward_length([p["ffn"] for p in plans])
        w.add_head_count([p["heads"] for p in plans])
        w.add_head_count_kv([p["kv_heads"] for p in plans])
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)


def _add_tokenizer_keys(w, voc: dict, meta: dict) -> None:
    """tokenizer.*: the byte-level BPE vocabulary (gguf_vocab), special token ids, flags, chat template."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(voc["pre"])
    w.add_token_list(voc["tokens"])
    w.add_token_types(voc["types"])
    # llama.cpp requires the merges key even when there are none (a byte-level tokenizer with one
    # token per byte): an empty string array then
    w.add_key_value(gguf.Keys.Tokenizer.MERGES, voc["merges"], gguf.GGUFValueType.ARRAY,
                    sub_type=gguf.GGUFValueType.STRING)
    ids = meta.get("ids", {})
    for key, fn in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                    ("pad", w.add_pad_token_id)):
        if ids.get(key) is not None:
            fn(int(ids[key]))
    w.add_add_bos_token(bool(meta.get("add_bos_token") or False))
    w.add_add_eos_token(bool(meta.get("add_eos_token") or False))
    if meta.get("chat_template"):
        w.add_chat_template(meta["chat_template"])


def _add_slimgpt_keys(w, source) -> None:
    """slimgpt.*: the export mark (common.is_export_gguf), the source folder, rope scaling for read_gguf."""
    w.add_string(GGUF_MARK_KEY, EXPORT_FORMAT)
    w.add_string("slimgpt.export.source", str(source.path.name))
    if source.config.rope_scaling is not None:      # llama.cpp reads rope_freqs.weight instead
        w.add_string("slimgpt.export.rope_scaling", json.dumps(source.config.rope_scaling))


def _write_tensors(w, model, plans, dtype: str) -> int:
    """The header, the metadata and the tensors, then close; returns how many q8_0 matrices fell
    back to F16. Two passes over the lazily built arrays (`_tensors`), so only one layer's float32
    copies are alive at a time: the tensor infos (shapes and types) first, the data second."""
    Q = gguf.GGMLQuantizationType
    types = {}
    fallback = 0
    for tname, arr in _tensors(model, plans):
        qt = _target_type(tname, arr.shape, dtype)
        fallback += dtype == "q8_0" and arr.ndim == 2 and qt != Q.Q8_0
        types[tname] = qt
        # element shape; for BF16/Q8_0 the raw type says how many bytes a row takes
        w.add_tensor_info(tname, arr.shape, np.dtype(np.float16 if qt == Q.F16 else np.float32),
                          _nbytes(arr.shape, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for tname, arr in _tensors(model, plans):
        w.write_tensor_data(_encode(arr, types[tname]))
    w.close()
    return int(fallback)


# ----------------------------------------------------------------------------------------------
# Reading back (tests, benchmarks): a slimgpt model from an exported GGUF, without llama.cpp

_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}


def read_gguf(path) -> tuple:
    """(slimgpt model, metadata dict) from a GGUF written by write_gguf (llama or deci).

    The inverse of the layout above: q/k rows un-permuted per layer with that layer's head
    counts; regrouped layers come back with their written (duplicated) KV heads and HF's
    contiguous map, which computes the same function.
    """
    import torch

    from slimgpt.loaders.gguf_loader import unpermute_qk
    from slimgpt.model import LlamaConfig, build_model

    r = gguf.GGUFReader(str(path))

    def get(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = get("general.architecture")
    if arch not in ("llama", "deci"):
        raise ExportError(f"{path}: GGUF architecture {arch!r} is not one slimgpt writes")
    L = int(get(f"{arch}.block_count"))

    def per_layer(key):
        v = get(f"{arch}.{key}")
        return [int(x) for x in v] if isinstance(v, list) else [int(v)] * L

    heads, kv = per_layer("attention.head_count"), per_layer("attention.head_count_kv")
    ffn = per_layer("feed_forward_length")
    scaling = get("slimgpt.export.rope_scaling")
    names = {t.name for t in r.tensors}
    d = int(get(f"{arch}.attention.key_length"))
    cfg = LlamaConfig(
        vocab_size=len(r.fields["tokenizer.ggml.tokens"].data), hidden_size=int(get(f"{arch}.embedding_length")),
        num_hidden_layers=L, num_attention_heads=max(heads), num_key_value_heads=1, intermediate_size=max(ffn),
        head_dim=d, rope_theta=float(get(f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(get(f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names, o_proj_bias="blk.0.attn_output.bias" in names,
        mlp_bias="blk.0.ffn_down.bias" in names, max_position_embeddings=int(get(f"{arch}.context_length")),
        layer_heads=heads, layer_kv_heads=kv, layer_intermediate=ffn, architecture="llama",
        rope_scaling=json.loads(scaling) if scaling else None)
    sd = {}
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.array(w, dtype=np.float32, copy=True).reshape(tuple(reversed([int(s) for s in t.shape])))
        if t.name in _GLOBAL_NAMES:
            name = _GLOBAL_NAMES[t.name]
        else:
            _, i, kind, suffix = t.name.split(".", 3)
            name = f"model.layers.{i}.{_BLOCK_NAMES[kind]}.{suffix}"
            if kind == "attn_q":
                w = unpermute_qk(w.reshape(w.shape[0], -1), heads[int(i)]).reshape(w.shape)
            elif kind == "attn_k":
                w = unpermute_qk(w.reshape(w.shape[0], -1), kv[int(i)]).reshape(w.shape)
        sd[name] = torch.from_numpy(w)
    meta = {k: (f.contents() if k != "tokenizer.ggml.tokens" else len(f.data)) for k, f in r.fields.items()
            if not k.startswith("GGUF.") and k not in ("tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    return build_model(cfg, sd), meta
