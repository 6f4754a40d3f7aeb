"""Export pruned slimgpt checkpoints to other tools: Hugging Face transformers and llama.cpp (GGUF).

    slimgpt export pruned-smollm2 --format hf   --out smollm2-hf
    slimgpt export pruned-smollm2 --format gguf --out smollm2-f16.gguf --dtype float16

    from slimgpt.export import export_checkpoint
    export_checkpoint("pruned-smollm2", "smollm2-hf", format="hf", dtype="float32")

What goes where and why: docs/export.md. The lm-evaluation-harness adapter is
slimgpt.lm_eval_model (`--model slimgpt`).
"""
from slimgpt.export.common import DTYPES, FORMATS, ExportError, export_checkpoint

__all__ = ["export_checkpoint", "ExportError", "FORMATS", "DTYPES"]
