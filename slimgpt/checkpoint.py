"""Save and load pruned models: safetensors + config.json (per-layer shapes) + manifest.json.

Layout of a checkpoint folder (a Hugging Face-style folder; `loaders.load_model(dir)` reads it):

    config.json             HF LLaMA / Qwen3 fields (torch_dtype = the stored dtype, rope_scaling,
                            qk_norm) + "slimgpt_layers": {heads, kv_heads, kv_map, intermediate}
    model.safetensors       weights in float32, bfloat16 or float16 (`dtype`), HF names (a tied
                            lm_head is stored once, as the embedding)
    tokenizer.json          when the model has a tokenizer
    tokenizer_config.json   when known: bos/eos/pad/unk tokens, chat_template, add_bos_token,
                            model_max_length, ... (the input's file, or built from GGUF metadata)
    generation_config.json  when known: bos/eos/pad token ids, ... (likewise)
    manifest.json           how it was made: method, settings, ratios, pruned indices per layer,
                            calibration (data, path, sha256), dtype, backend, versions, timing,
                            parameter counts, and the list of files slimgpt wrote (so a later
                            --force knows the folder is its own)

The storage dtype changes only the file: models are pruned and evaluated in float32, and a
bfloat16 / float16 checkpoint loads back into float32 (its weights rounded once, on saving).

Writes are atomic (slimgpt.paths): everything goes to a hidden temporary folder next to the
destination, every file and the folder are fsync'ed, and only then is the folder put in place;
a replaced checkpoint is swapped out in one step. An interrupted or failed save leaves the
destination as it was, so a half-written model can never be loaded. The destination goes
through paths.check_output: never an input, never a folder slimgpt did not write.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from slimgpt import paths
from slimgpt.loaders.hf_folder import hf_config_dict
from slimgpt.paths import OutputPathError

FORMAT = "slimgpt-checkpoint"
OutputExistsError = OutputPathError     # the name earlier versions raised
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16",
            "half": "float16"}


def check_dtype(dtype) -> str:
    """The storage dtype's name (float32 | bfloat16 | float16; bf16, fp16, f16, fp32 accepted)."""
    name = _ALIASES.get(str(dtype).lower(), str(dtype).lower()) if isinstance(dtype, str) else None
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported: expected one of {', '.join(DTYPES)}")
    return name


def default_dtype(source_dtype: str) -> str:
    """The storage dtype of a pruned copy: the input's when it is 16-bit, float32 otherwise
    (float32 and float64 inputs, and quantized GGUF files, which are dequantized to float32)."""
    return source_dtype if source_dtype in ("bfloat16", "float16") else "float32"


def is_checkpoint(folder: Path) -> bool:
    """True for a folder slimgpt wrote: its manifest says so and it holds nothing else."""
    manifest = paths.read_json(Path(folder) / "manifest.json")
    if not isinstance(manifest, dict):
        return False
    ours = manifest.get("format") == FORMAT or "slimgpt" in (manifest.get("versions") or {})
    files = set(manifest.get("files") or ("config.json", "model.safetensors", "tokenizer.json")) | {"manifest.json"}
    return ours and {p.name for p in Path(folder).iterdir()} <= files


def check_output_dir(out_dir, force: bool = False, inputs: tuple = ()) -> Path:
    """Validate a checkpoint destination before any long work (see paths.check_output)."""
    return paths.check_output(out_dir, inputs=inputs, force=force, is_ours=is_checkpoint)


def versions() -> dict:
    import numpy
    import slimgpt
    return {"slimgpt": slimgpt.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, default=_json_default) + "\n").encode("utf-8")


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def state_dict_for_save(model, dtype: str = "float32") -> dict:
    sd = {k: v.detach().to("cpu", DTYPES[check_dtype(dtype)]).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_pretrained(model, out_dir, tokenizer=None, manifest: dict | None = None, force: bool = False,
                    inputs: tuple = (), _before_rename=None, *, dtype: str = "float32",
                    tokenizer_config: dict | None = None, generation_config: dict | None = None) -> str:
    """Atomically write a checkpoint folder (see module docstring). Returns its absolute path.

    `dtype`: float32 | bfloat16 | float16, the dtype the weights are stored in (the model itself
    is not changed). `tokenizer_config` / `generation_config`: written as tokenizer_config.json
    / generation_config.json when given and not empty (loaders.Loaded carries both)."""
    from safetensors.torch import save_file

    dtype = check_dtype(dtype)
    out = check_output_dir(out_dir, force, inputs)
    with paths.atomic_folder(out) as tmp:
        save_file(state_dict_for_save(model, dtype), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_metadata(tmp, model.config, tokenizer, manifest, dtype=dtype, tokenizer_config=tokenizer_config,
                       generation_config=generation_config)
        if _before_rename is not None:          # test hook: simulate a crash before the rename
            _before_rename(str(tmp))
    return str(out)


def write_metadata(folder: Path, config, tokenizer=None, manifest: dict | None = None, *, dtype: str = "float32",
                   tokenizer_config: dict | None = None, generation_config: dict | None = None) -> None:
    """Write everything of a checkpoint but the weights into `folder`, which already holds them
    (model.safetensors, or shards and their index): config.json, the tokenizer files and
    manifest.json, whose `files` lists every file then in the folder (the streaming pipeline
    writes its shards layer by layer, then calls this)."""
    folder = Path(folder)
    (folder / "config.json").write_bytes(_json_bytes(hf_config_dict(config, dtype)))
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
    for name, meta in (("tokenizer_config.json", tokenizer_config), ("generation_config.json", generation_config)):
        if meta:
            (folder / name).write_bytes(_json_bytes(meta))
    files = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json") + ["manifest.json"]
    (folder / "manifest.json").write_bytes(_json_bytes(dict(manifest or {}, format=FORMAT, files=files, dtype=dtype,
                                                            versions=versions())))


def load_pretrained(path: str):
    """(model, tokenizer, manifest or None) from a checkpoint folder written by save_pretrained."""
    from slimgpt.loaders import load_model
    loaded = load_model(path)
    manifest = paths.read_json(os.path.join(path, "manifest.json"))
    return loaded.model, loaded.tokenizer, manifest if isinstance(manifest, dict) else None
