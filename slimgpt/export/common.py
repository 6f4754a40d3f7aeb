"""What every export shares: the checks, the source checkpoint, its tokenizer metadata, the writer.

`export_checkpoint(src, out, format=..., dtype=..., force=...)` is the one entry point (the CLI
calls it too). Order of work, so that a bad request fails in well under a second and leaves
nothing behind:

1. format and dtype are checked;
2. SRC must be a slimgpt checkpoint folder (`slimgpt.checkpoint.is_checkpoint`: slimgpt's
   manifest.json and only the files it lists);
3. DST goes through `slimgpt.paths.check_output` (never SRC, inside it or around it; an existing
   DST only with force, and only when slimgpt wrote it: an export folder with slimgpt_export.json
   and nothing else, or a .gguf file carrying the `slimgpt.export.format` key);
4. the checkpoint is loaded (float32) and the files are written into a hidden temporary folder
   next to DST, then put in place in one step (`paths.atomic_folder`, or a rename for a single
   .gguf file). A failure at any point leaves DST as it was.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from slimgpt import paths

EXPORT_FORMAT = "slimgpt-export"
MANIFEST = "slimgpt_export.json"
GGUF_MARK_KEY = "slimgpt.export.format"       # a GGUF metadata key: "this file was written by slimgpt"

FORMATS = ("hf", "gguf")
DTYPES = ("float32", "bfloat16", "float16", "q8_0", "q4_k_m")
GGUF_ONLY = ("q8_0", "q4_k_m")                  # GGUF quantizations (q4_k_m through llama.cpp's quantizer)
_DTYPE_ALIASES = {"f32": "float32", "fp32": "float32", "float": "float32", "f16": "float16", "fp16": "float16",
                  "half": "float16", "bf16": "bfloat16", "q8": "q8_0"}


class ExportError(ValueError):
    """An export that cannot be done (one clear message; nothing is written)."""


def normalize_dtype(dtype: str, fmt: str) -> str:
    d = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if d not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}: expected one of float32, bfloat16, float16"
                          f"{', q8_0 or q4_k_m' if fmt == 'gguf' else ''}")
    if d in GGUF_ONLY and fmt != "gguf":
        raise ExportError(f"dtype {d} is a GGUF quantization; --format hf takes float32, bfloat16 or float16")
    return d


def check_format(fmt: str) -> str:
    f = str(fmt).lower()
    if f not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return f


# ----------------------------------------------------------------------------------------------
# The source checkpoint

@dataclass
class Source:
    path: Path
    model: object                    # slimgpt.model.LlamaForCausalLM, float32
    tokenizer: object                # tokenizers.Tokenizer or None
    manifest: dict
    meta: dict = field(default_factory=dict)   # tokenizer/generation metadata (tokenizer_meta)
    source_dtype: str = "float32"              # what the checkpoint stores
    tokenizer_config: dict = field(default_factory=dict)    # as the loader read it (tokenizer_config.json)
    generation_config: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config


def check_source(src) -> Path:
    """The resolved SRC folder, or ExportError when it is not a slimgpt checkpoint."""
    from slimgpt.checkpoint import is_checkpoint

    if src is None or not str(src).strip():
        raise ExportError("the source path is empty")
    p = Path(os.path.realpath(os.path.expanduser(str(src))))
    if not p.exists():
        raise ExportError(f"{src}: no such folder")
    if not p.is_dir():
        raise ExportError(f"{src}: not a folder; give a slimgpt checkpoint folder (written by `slimgpt prune`)")
    try:
        ours = is_checkpoint(p)
    except OSError as e:
        raise ExportError(f"{src}: unreadable ({e.strerror or e})") from e
    if not ours:
        raise ExportError(f"{src}: not a slimgpt checkpoint (a folder written by `slimgpt prune` / save_pretrained, "
                          f"with its manifest.json and only the files it lists)")
    return p


def load_source(path: Path) -> Source:
    from slimgpt.loaders import load_model

    try:
        loaded = load_model(str(path))
    except ValueError as e:            # CheckpointError and friends
        raise ExportError(str(e)) from e
    manifest = paths.read_json(path / "manifest.json") or {}
    src = Source(path, loaded.model, loaded.tokenizer, manifest,
                 source_dtype=getattr(loaded, "source_dtype", "float32"),
                 tokenizer_config=dict(getattr(loaded, "tokenizer_config", None) or {}),
                 generation_config=dict(getattr(loaded, "generation_config", None) or {}))
    src.meta = tokenizer_meta(src)
    return src


# ----------------------------------------------------------------------------------------------
# Tokenizer / generation metadata (special tokens, chat template)

def _token(tok, i):
    if tok is None or i is None:
        return None
    try:
        return tok.id_to_token(int(i))
    except (TypeError, ValueError, OverflowError):
        return None


def _from_gguf(path: str) -> dict:
    """Special tokens, chat template and BOS/EOS flags from a GGUF file's metadata."""
    import gguf

    r = gguf.GGUFReader(path)

    def get(key):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    tokens = r.fields.get("tokenizer.ggml.tokens")
    out = {"ids": {}, "source": f"GGUF metadata of {path}"}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        v = get(f"tokenizer.ggml.{key}")
        if v is not None:
            out["ids"][name] = int(v)
            if tokens is not None and 0 <= int(v) < len(tokens.data):
                out.setdefault("tokens", {})[name] = tokens.contents(int(v))
    for key, name in (("tokenizer.chat_template", "chat_template"), ("tokenizer.ggml.add_bos_token", "add_bos_token"),
                      ("tokenizer.ggml.add_eos_token", "add_eos_token")):
        v = get(key)
        if v is not None:
            out[name] = v
    return out


def _from_hf_files(folder: Path) -> dict:
    """tokenizer_config.json / generation_config.json / special_tokens_map.json of an HF-style folder."""
    out = {}
    tc = paths.read_json(folder / "tokenizer_config.json")
    if isinstance(tc, dict):
        out["tokenizer_config"] = tc
    stm = paths.read_json(folder / "special_tokens_map.json")
    if isinstance(stm, dict):
        out["special_tokens_map"] = stm
    gc = paths.read_json(folder / "generation_config.json")
    if isinstance(gc, dict):
        out["generation_config"] = gc
    ct = folder / "chat_template.jinja"
    if ct.is_file():
        out["chat_template"] = ct.read_text(encoding="utf-8")
    if out:
        out["source"] = f"files of {folder}"
    return out


def _source_model_meta(manifest: dict) -> dict:
    """Metadata of the model the checkpoint was pruned from, when it is still reachable: the
    embedded SmolLM2 GGUF, a .gguf file or an HF folder (the checkpoint itself does not yet carry
    its chat template / special tokens)."""
    name = manifest.get("source_model")
    if not isinstance(name, str) or not name:
        return {}
    try:
        if name == "smollm2-135m":
            from slimgpt.loaders.gguf_loader import smollm2_path
            return _from_gguf(smollm2_path(check=False))
        if name.endswith(".gguf") and os.path.isfile(name):
            return _from_gguf(name)
        if os.path.isdir(name):
            return _from_hf_files(Path(name))
    except Exception:      # noqa: BLE001 - metadata is a best effort; the weights are what matter
        return {}
    return {}


def _str_token(v):
    """A special token from tokenizer_config.json: a string or an AddedToken-style dict."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def tokenizer_meta(src: Source) -> dict:
    """The special tokens (as strings and ids), chat template, BOS/EOS flags and generation config
    for the exported model, and where they came from. Precedence:

    1. tokenizer_config.json / generation_config.json / chat_template.jinja in the checkpoint;
    2. the same as objects in its manifest.json ("tokenizer_config", "generation_config",
       "chat_template");
    3. the source model named in the manifest, when still reachable (GGUF metadata or HF files);
    4. bos/eos ids of config.json.
    """
    cfg, tok, manifest = src.config, src.tokenizer, src.manifest
    loader = {}
    if src.tokenizer_config or src.generation_config:      # what slimgpt's loader read from the checkpoint
        loader = {"tokenizer_config": src.tokenizer_config, "generation_config": src.generation_config,
                  "source": "the checkpoint's tokenizer_config.json / generation_config.json"}
    layers = [loader, _from_hf_files(src.path)]
    m = {k: manifest[k] for k in ("tokenizer_config", "generation_config", "chat_template") if k in manifest}
    if m:
        m["source"] = "manifest.json"
    layers.append(m)
    layers.append(_source_model_meta(manifest))

    meta = {"tokens": {}, "chat_template": None, "add_bos_token": None, "add_eos_token": None,
            "generation_config": None, "sources": []}
    for layer in layers:
        if not layer:
            continue
        used = False
        tc = layer.get("tokenizer_config") or {}
        stm = layer.get("special_tokens_map") or {}
        for name in ("bos", "eos", "pad", "unk"):
            v = _str_token(tc.get(f"{name}_token")) or _str_token(stm.get(f"{name}_token"))
            if v is None and name in layer.get("ids", {}):
                v = _token(tok, layer["ids"][name])
                if v is None:
                    v = (layer.get("tokens") or {}).get(name)
            if v is not None and name not in meta["tokens"]:
                meta["tokens"][name] = v
                used = True
        ct = layer.get("chat_template", tc.get("chat_template"))
        if ct and meta["chat_template"] is None:
            meta["chat_template"] = ct
            used = True
        for flag in ("add_bos_token", "add_eos_token"):
            v = layer.get(flag, tc.get(flag))
            if isinstance(v, bool) and meta[flag] is None:
                meta[flag] = v
                used = True
        if layer.get("generation_config") and meta["generation_config"] is None:
            meta["generation_config"] = dict(layer["generation_config"])
            used = True
        if used:
            meta["sources"].append(layer.get("source", "?"))
    for name, i in (("bos", cfg.bos_token_id), ("eos", cfg.eos_token_id)):
        if name not in meta["tokens"] and _token(tok, i) is not None:
            meta["tokens"][name] = _token(tok, i)
            if "config.json" not in meta["sources"]:
                meta["sources"].append("config.json")
    # a token that the tokenizer does not know is dropped (it would not load anywhere)
    if tok is not None:
        meta["tokens"] = {k: v for k, v in meta["tokens"].items() if tok.token_to_id(v) is not None}
        meta["ids"] = {k: tok.token_to_id(v) for k, v in meta["tokens"].items()}
    else:
        meta["ids"] = {}
    return meta


# ----------------------------------------------------------------------------------------------
# Which outputs are ours (for --force)

def is_export_folder(folder: Path) -> bool:
    m = paths.read_json(Path(folder) / MANIFEST)
    if not isinstance(m, dict) or m.get("format") != EXPORT_FORMAT:
        return False
    files = set(m.get("files") or ()) | {MANIFEST}
    return {p.name for p in Path(folder).iterdir()} <= files


def is_export_gguf(path: Path) -> bool:
    try:
        import gguf
        r = gguf.GGUFReader(str(path))
        f = r.fields.get(GGUF_MARK_KEY)
        return f is not None and f.contents() == EXPORT_FORMAT
    except Exception:      # noqa: BLE001 - anything unreadable is not ours
        return False


def versions() -> dict:
    from slimgpt.checkpoint import versions as v
    out = v()
    try:
        import importlib.metadata as md
        out["gguf"] = md.version("gguf")
    except Exception:      # noqa: BLE001
        pass
    return out


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------------------------
# The entry point
