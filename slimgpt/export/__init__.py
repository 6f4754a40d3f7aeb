"""Export pruned slimgpt checkpoints to other tools: Hugging Face transformers and llama.cpp (GGUF).

    slimgpt export pruned-smollm2 --format hf   --out smollm2-hf
    slimgpt export pruned-smollm2 --format gguf --out smollm2-f16.gguf --dtype float16

    from slimgpt.export import export_checkpoint
    export_checkpoint("pruned-smollm2", "smollm2-hf", format="hf", dtype="float32")

What goes where and why: docs/export.md. The lm-evaluation-harness adapter is
slimgpt.lm_eval_model (`--model slimgpt`).
"""
import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from slimgpt import paths
from slimgpt.export.common import (DTYPES, EXPORT_FORMAT, FORMATS, MANIFEST, ExportError, check_format, check_source,
                                   is_export_folder, is_export_gguf, json_bytes, load_source, normalize_dtype, versions)
from slimgpt.export.gguf import QK_NORM_REFUSAL, gguf_vocab, llama_quantizer, write_gguf
from slimgpt.export.hf import write_hf
from slimgpt.loaders.hf_folder import read_config

__all__ = ["export_checkpoint", "ExportError", "FORMATS", "DTYPES"]


def export_checkpoint(src, out, format: str = "hf", dtype: str | None = None, force: bool = False,
                      log=None) -> dict:
    """Export the slimgpt checkpoint folder `src` to `out` (see the module docstring).

    format "hf": a Hugging Face folder (plain LlamaForCausalLM / Qwen2ForCausalLM /
    MistralForCausalLM when every layer has the dense shape, otherwise config + a small modelling
    file loaded with trust_remote_code=True). format "gguf": a llama.cpp GGUF file (`out` ending
    in .gguf) or a folder holding model.gguf. dtype: float32 | bfloat16 | float16 (| q8_0 |
    q4_k_m for GGUF); None (default): the dtype the checkpoint stores. Returns a summary dict
    (path, files, layout).
    """
    log = log or (lambda s: None)
    fmt = check_format(format)
    dt = normalize_dtype(dtype, fmt) if dtype is not None else None
    if dt == "q4_k_m":
        llama_quantizer()                      # no llama.cpp quantizer: fail before anything is loaded or written
    src_path = check_source(src)
    single_file = fmt == "gguf" and str(out).endswith(".gguf")
    if single_file:
        dst = paths.check_output(out, inputs=(str(src_path),), force=force, folder=False, is_ours=is_export_gguf)
    else:
        dst = paths.check_output(out, inputs=(str(src_path),), force=force, is_ours=is_export_folder)
    preflight(src_path, fmt)
    log(f"loading {src_path} ...")
    source = load_source(src_path)
    if dt is None:
        dt = source.source_dtype if source.source_dtype in ("bfloat16", "float16") else "float32"
    write = write_hf if fmt == "hf" else write_gguf
    summary = {"format": fmt, "dtype": dt, "source": str(src_path), "out": str(dst)}
    if single_file:
        tmp = paths.temporary_folder(dst)
        try:
            info = write(source, tmp / dst.name, dt, log=log)
            _finish_file(tmp / dst.name, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        summary.update(info, files=[dst.name])
        return summary
    with paths.atomic_folder(dst) as tmp:
        target = tmp if fmt == "hf" else tmp / "model.gguf"
        info = write(source, target, dt, log=log)
        files = sorted(p.name for p in tmp.iterdir() if p.name != paths.MARKER) + [MANIFEST]
        summary.update(info, files=files)
        (tmp / MANIFEST).write_bytes(json_bytes(dict(summary, format=EXPORT_FORMAT, export_format=fmt,
                                                     versions=versions(),
                                                     source_manifest={k: source.manifest.get(k) for k in
                                                                      ("source_model", "method", "settings",
                                                                       "params_before", "params_after")})))
    return summary


def _finish_file(tmp_file: Path, dst: Path) -> None:
    """Make a finished file durable, honour the umask, and rename it over `dst` (atomic)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp_file, 0o666 & ~mask)
    paths.durable_replace(tmp_file, dst)


def preflight(path: Path, fmt: str) -> None:
    """Refuse, before the weights are read, what the format cannot hold (config and tokenizer only)."""
    if fmt != "gguf":
        return
    try:
        cfg = read_config(str(path))
    except ValueError as e:
        raise ExportError(str(e)) from e
    if cfg.qk_norm:
        raise ExportError(QK_NORM_REFUSAL)
    tj = path / "tokenizer.json"
    if tj.is_file():
        try:
            tok = Tokenizer.from_file(str(tj))
        except Exception:      # noqa: BLE001 - the loader reports a broken tokenizer.json in its words
            return
        gguf_vocab(tok, max(cfg.vocab_size, tok.get_vocab_size(with_added_tokens=True)))
