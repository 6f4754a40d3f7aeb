"""Save and load pruned models: safetensors + config.json (per-layer shapes) + manifest.json.

Layout of a checkpoint folder (a Hugging Face-style folder; `loaders.load_model(dir)` reads it):

    config.json       HF LLaMA fields + "slimgpt_layers": {heads, kv_heads, kv_map, intermediate}
    model.safetensors float32 weights, HF names (a tied lm_head is stored once, as the embedding)
    tokenizer.json    when the model has a tokenizer
    manifest.json     how it was made: method, settings, ratios, pruned indices per layer,
                      calibration, backend, versions, timing, parameter counts

Writes are atomic: everything goes to a hidden temporary folder next to the destination, every
file and the folder are fsync'ed, and only then is the folder renamed into place (POSIX rename
of a directory is atomic on one file system). An interrupted or failed save leaves no folder at
the destination, so a half-written model can never be loaded. An existing non-empty
destination is refused unless force=True, and is replaced only after the new folder is complete.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile

import torch

from slimgpt.loaders.hf_folder import hf_config_dict


class OutputExistsError(FileExistsError):
    pass


def check_output_dir(out_dir: str, force: bool = False, inputs: tuple = ()) -> str:
    """Validate a destination before any long work: refuse non-empty dirs (unless force) and
    refuse to write over an input model folder."""
    out = os.path.abspath(out_dir)
    for src in inputs:
        if src and os.path.isdir(src) and os.path.abspath(src) == out:
            raise OutputExistsError(f"{out}: the output folder is the input model folder; choose another --out")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise OutputExistsError(f"{out} exists and is not a folder")
        if os.listdir(out) and not force:
            raise OutputExistsError(f"{out} is not empty; pass --force to replace it")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{parent}: parent folder of --out does not exist")
    return out


def versions() -> dict:
    import numpy
    import slimgpt
    return {"slimgpt": slimgpt.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _fsync_file(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.write("\n")


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def state_dict_for_save(model) -> dict:
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_pretrained(model, out_dir: str, tokenizer=None, manifest: dict | None = None,
                    force: bool = False, _before_rename=None) -> str:
    """Atomically write a checkpoint folder (see module docstring). Returns its absolute path."""
    from safetensors.torch import save_file

    out = check_output_dir(out_dir, force)
    parent, name = os.path.split(out)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        save_file(state_dict_for_save(model), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        _write_json(os.path.join(tmp, "config.json"), hf_config_dict(model.config))
        if tokenizer is not None:
            tokenizer.save(os.path.join(tmp, "tokenizer.json"))
        _write_json(os.path.join(tmp, "manifest.json"), dict(manifest or {}, versions=versions()))
        for fn in os.listdir(tmp):
            _fsync_file(os.path.join(tmp, fn))
        _fsync_file(tmp)
        if _before_rename is not None:          # test hook: simulate a crash before the rename
            _before_rename(tmp)
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(out, os.path.join(old, name))
        os.rename(tmp, out)
        _fsync_file(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_pretrained(path: str):
    """(model, tokenizer, manifest or None) from a checkpoint folder written by save_pretrained."""
    from slimgpt.loaders import load_model
    loaded = load_model(path)
    mf = os.path.join(path, "manifest.json")
    manifest = None
    if os.path.isfile(mf):
        with open(mf, encoding="utf-8") as f:
            manifest = json.load(f)
    return loaded.model, loaded.tokenizer, manifest
