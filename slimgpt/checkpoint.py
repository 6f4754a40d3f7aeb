"""Save and load pruned models: safetensors + config.json (per-layer shapes) + manifest.json.

Layout of a checkpoint folder (a Hugging Face-style folder; `loaders.load_model(dir)` reads it):

    config.json       HF LLaMA fields + "slimgpt_layers": {heads, kv_heads, kv_map, intermediate}
    model.safetensors float32 weights, HF names (a tied lm_head is stored once, as the embedding)
    tokenizer.json    when the model has a tokenizer
    manifest.json     how it was made: method, settings, ratios, pruned indices per layer,
                      calibration, backend, versions, timing, parameter counts, and the list of
                      files slimgpt wrote (so a later --force knows the folder is its own)

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


def state_dict_for_save(model) -> dict:
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_pretrained(model, out_dir, tokenizer=None, manifest: dict | None = None, force: bool = False,
                    inputs: tuple = (), _before_rename=None) -> str:
    """Atomically write a checkpoint folder (see module docstring). Returns its absolute path."""
    from safetensors.torch import save_file

    out = check_output_dir(out_dir, force, inputs)
    with paths.atomic_folder(out) as tmp:
        save_file(state_dict_for_save(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_bytes(_json_bytes(hf_config_dict(model.config)))
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        files = sorted(p.name for p in tmp.iterdir() if p.name != paths.MARKER) + ["manifest.json"]
        (tmp / "manifest.json").write_bytes(_json_bytes(dict(manifest or {}, format=FORMAT, files=files,
                                                             versions=versions())))
        if _before_rename is not None:          # test hook: simulate a crash before the rename
            _before_rename(str(tmp))
    return str(out)


def load_pretrained(path: str):
    """(model, tokenizer, manifest or None) from a checkpoint folder written by save_pretrained."""
    from slimgpt.loaders import load_model
    loaded = load_model(path)
    manifest = paths.read_json(os.path.join(path, "manifest.json"))
    return loaded.model, loaded.tokenizer, manifest if isinstance(manifest, dict) else None
