"""Configuration of a SlimGPT-pruned LLaMA-family model, as written by `slimgpt export --format hf`.

This file is copied next to `config.json` in an exported folder and loaded by transformers with
`trust_remote_code=True` (config.json's "auto_map"). It is the stock `LlamaConfig` plus:

- per-layer sizes in transformers' own `per_layer_config` (transformers >= 5.14): for each layer
  that differs from the global (dense) values, its `num_attention_heads`, `num_key_value_heads`,
  `intermediate_size` and, when its query heads do not use Hugging Face's contiguous
  `repeat_kv` grouping, `kv_map` (for every query head, the KV head it reads; groups may be
  uneven, e.g. [0, 1, 1, 2, 2]);
- three bias switches, because SlimGPT models put biases where `LlamaConfig.attention_bias`
  / `mlp_bias` cannot say it: `qkv_bias` (q/k/v only, as Qwen2), `o_proj_bias` and
  `down_proj_bias` (output biases added by bias-compensating pruning methods such as FLAP).
  `attention_bias` and `mlp_bias` stay False;
- `qk_norm`: Qwen3's RMSNorm(head_dim) on every query and key head before RoPE (one weight per
  layer, shared by the layer's heads).

The global `num_attention_heads`, `num_key_value_heads` and `intermediate_size` are those of the
dense model the checkpoint was pruned from; read a layer's own values from
`config.per_layer_config[i]`.
"""
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.models.llama.configuration_llama import LlamaConfig

if not hasattr(PreTrainedConfig, "per_layer_config"):
    raise ImportError("this SlimGPT export needs transformers >= 5.14 (per-layer configs: `per_layer_config`); "
                      "pip install -U 'transformers>=5.14'")


@strict
class SlimGPTLlamaConfig(LlamaConfig):
    model_type = "slimgpt_llama"

    qkv_bias: bool = False
    o_proj_bias: bool = False
    down_proj_bias: bool = False
    qk_norm: bool = False
    kv_map: list[int] | None = None

    def validate_architecture(self):
        """Per-layer head counts need not divide hidden_size (head_dim is explicit)."""
        if self.head_dim is None or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even number, got {self.head_dim}")


__all__ = ["SlimGPTLlamaConfig"]
