"""A SlimGPT-pruned LLaMA-family model for transformers, built from transformers' own Llama classes.

Copied into every folder written by `slimgpt export --format hf` for a model whose layers differ
(pruned heads, KV heads, FFN channels), and loaded with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

Nothing here re-implements LLaMA: each decoder layer is transformers' `LlamaDecoderLayer`
(its forward, norms and residuals) holding a `LlamaAttention` and a `LlamaMLP` constructed from
that layer's own config (`config.per_layer_config[i]`), so q/k/v/o, gate/up/down have the
layer's sizes. The model and the causal-LM head are `LlamaModel` / `LlamaForCausalLM` (their
forward, rotary embedding, masks, KV cache and `generate()`). What is added:

- `kv_map`: when a layer's query heads share KV heads unevenly (SlimGPT's query-granularity GQA
  pruning removes query heads one by one, so a KV head may serve 1, 2 or 3 of them), the layer's
  attention gathers, for each query head, the KV head named by its map instead of HF's
  contiguous `repeat_kv`; the KV cache still stores only the layer's own KV heads;
- layers with no heads left (the attention half adds only its output bias, if any), biases on
  q/k/v (Qwen2), o_proj and down_proj independently of each other, and Qwen3's q/k RMSNorm.
"""
import copy
import warnings

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import (
    ALL_ATTENTION_FUNCTIONS,
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration_slimgpt_llama import SlimGPTLlamaConfig


def _linear(n_in, n_out, bias):
    return nn.Linear(n_in, n_out, bias=bias)


class SlimGPTLlamaAttention(LlamaAttention):
    """LlamaAttention with this layer's head counts, independent bias switches and a query→KV map."""

    def __init__(self, config, layer_idx):
        # `config` is this layer's config. LlamaAttention divides by the head counts, so a layer
        # without heads is built with one head and its (empty) projections replaced below.
        H, K = config.num_attention_heads, config.num_key_value_heads
        base = config
        if H == 0:
            base = copy.copy(config)
            base.num_attention_heads = base.num_key_value_heads = 1
        super().__init__(base, layer_idx)
        D, d = config.hidden_size, self.head_dim
        self.num_heads, self.num_kv_heads = H, K
        if H == 0 or config.qkv_bias:
            self.q_proj = _linear(D, H * d, config.qkv_bias)
            self.k_proj = _linear(D, K * d, config.qkv_bias)
            self.v_proj = _linear(D, K * d, config.qkv_bias)
        if H == 0 or config.o_proj_bias:
            self.o_proj = _linear(H * d, D, config.o_proj_bias)
        if getattr(config, "qk_norm", False):       # Qwen3: one RMSNorm(head_dim) for all heads of the layer
            self.q_norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        kv_map = config.kv_map
        standard = H > 0 and H % K == 0 and (kv_map is None or list(kv_map) == [h // (H // K) for h in range(H)])
        if H > 0 and not standard:
            if kv_map is None or len(kv_map) != H or sorted(set(kv_map)) != list(range(K)):
                raise ValueError(f"layer {layer_idx}: kv_map {kv_map} does not map {H} query heads onto {K} KV heads")
            # the gathered K/V already have one head per query head
            self.num_key_value_groups = 1
            self.kv_map = tuple(int(j) for j in kv_map)
        else:
            self.kv_map = None
        # index tensors per device, built on first use (not a buffer: transformers materialises
        # modules from the meta device and would leave a non-persistent buffer uninitialised)
        self._kv_index = {}

    def kv_index(self, device):
        if device not in self._kv_index:
            self._kv_index[device] = torch.tensor(self.kv_map, dtype=torch.long, device=device)
        return self._kv_index[device]

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if self.num_heads > 0 and self.kv_map is None and self.q_norm is None:
            return super().forward(hidden_states, position_embeddings, attention_mask, cache, **kwargs)
        input_shape = hidden_states.shape[:-1]
        if self.num_heads == 0:
            if cache is not None:       # keep this layer's cache length in step with the others
                empty = hidden_states.new_zeros(input_shape[0], 0, input_shape[1], self.head_dim)
                cache.update(empty, empty, self.layer_idx, kwargs=kwargs)
            out = self.o_proj(hidden_states.new_zeros(*input_shape, 0))
            return out, None
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)
        key_states = self.k_proj(hidden_states).view(hidden_shape)
        if self.q_norm is not None:
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
        query_states, key_states = query_states.transpose(1, 2), key_states.transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
        if self.kv_map is not None:
            # uneven groups: query head h reads KV head kv_map[h]
            index = self.kv_index(key_states.device)
            key_states = key_states.index_select(1, index)
            value_states = value_states.index_select(1, index)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class SlimGPTLlamaMLP(LlamaMLP):
    """LlamaMLP with this layer's width; down_proj may carry a bias without gate/up having one."""

    def __init__(self, config):
        super().__init__(config)
        if config.down_proj_bias:
            self.down_proj = _linear(self.intermediate_size, self.hidden_size, True)


class SlimGPTLlamaDecoderLayer(LlamaDecoderLayer):
    """LlamaDecoderLayer (same forward) whose attention and MLP have layer `layer_idx`'s sizes."""

    def __init__(self, config, layer_idx):
        GradientCheckpointingLayer.__init__(self)
        layer_config = config.per_layer_config[layer_idx]
        self.hidden_size = config.hidden_size
        with warnings.catch_warnings():     # a pruned-away half has zero-size projections
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.self_attn = SlimGPTLlamaAttention(layer_config, layer_idx)
            self.mlp = SlimGPTLlamaMLP(layer_config)
        self.self_attn.config = config      # so set_attn_implementation on the model reaches it
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class SlimGPTLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = SlimGPTLlamaConfig
    config: SlimGPTLlamaConfig
    _no_split_modules = ["SlimGPTLlamaDecoderLayer"]


class SlimGPTLlamaModel(SlimGPTLlamaPreTrainedModel, LlamaModel):
    """LlamaModel (same forward) with per-layer decoder layers."""

    def __init__(self, config):
        SlimGPTLlamaPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [SlimGPTLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class SlimGPTLlamaForCausalLM(SlimGPTLlamaPreTrainedModel, LlamaForCausalLM):
    """LlamaForCausalLM (same forward, generate, tied embeddings) over SlimGPTLlamaModel."""

    def __init__(self, config):
        SlimGPTLlamaPreTrainedModel.__init__(self, config)
        self.model = SlimGPTLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["SlimGPTLlamaForCausalLM", "SlimGPTLlamaModel", "SlimGPTLlamaPreTrainedModel"]
