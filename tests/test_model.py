"""The per-layer-shaped LLaMA model: shapes, counts, GQA map, RoPE, empty layers."""
import pytest
import torch
import torch.nn.functional as F

from slimgpt.loaders.tiny import TINY_CONFIGS, tiny_config, tiny_model
from slimgpt.model import LlamaConfig, apply_rope, build_model, param_count, rope_cos_sin
from slimgpt.testing import assert_close

torch.set_grad_enabled(False)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_models_build_run_and_count(name):
    m = tiny_model(name, seed=3)
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    logits = m(ids)
    assert logits.shape == (2, 17, 256) and torch.isfinite(logits).all()
    assert m.num_parameters() == param_count(m.config)
    assert sum(p.numel() for p in m.parameters()) * 4 < 2 * 2 ** 20      # well under 2 MB
    # seeded: same seed, same weights
    assert torch.equal(tiny_model(name, seed=3)(ids), logits)


def _attention_naive(attn, x, cos, sin):
    """Per-head loop with an explicit q→kv lookup: the definition the vectorised path must match."""
    B, T, _ = x.shape
    d = attn.head_dim
    q = attn.q_proj(x).view(B, T, attn.n_heads, d)
    k = attn.k_proj(x).view(B, T, attn.n_kv, d)
    v = attn.v_proj(x).view(B, T, attn.n_kv, d)
    outs = []
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for h in range(attn.n_heads):
        j = int(attn.kv_map[h])
        qh = apply_rope(q[:, :, h].unsqueeze(1), cos, sin)[:, 0]
        kh = apply_rope(k[:, :, j].unsqueeze(1), cos, sin)[:, 0]
        s = (qh @ kh.transpose(1, 2)) / d ** 0.5
        s = s.masked_fill(~mask, float("-inf"))
        outs.append(F.softmax(s, -1) @ v[:, :, j])
    return torch.cat(outs, -1)


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-hetero", "tiny-llama"])
def test_explicit_kv_map_matches_naive_attention(name):
    m = tiny_model(name, seed=1)
    x = torch.randn(2, 9, m.config.hidden_size, generator=torch.Generator().manual_seed(1))
    cos, sin = m.rope(9)
    for layer in m.model.layers:
        assert_close(layer.self_attn.heads(x, cos, sin), _attention_naive(layer.self_attn, x, cos, sin), "logits")


def test_default_kv_map_is_hf_repeat_kv():
    cfg = tiny_config("tiny-gqa")
    assert cfg.layer_kv_map[0] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_rope_positions_start_at_zero_per_sequence():
    cos, sin = rope_cos_sin(5, 8, 10000.0)
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[0], torch.zeros(8))
    # a sequence's logits do not depend on what else is in the batch
    m = tiny_model("tiny-gqa")
    a = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(2))
    b = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    assert_close(m(torch.cat([a, b]))[0], m(a)[0], "logits")


def test_layers_without_heads_or_channels():
    m = tiny_model("tiny-gqa", layer_heads=[9, 0, 3, 9], layer_kv_heads=[3, 0, 1, 3],
                   layer_kv_map=[[i // 3 for i in range(9)], [], [0, 0, 0], [i // 3 for i in range(9)]],
                   layer_intermediate=[128, 0, 7, 128])
    out = m(torch.randint(0, 256, (1, 5)))
    assert torch.isfinite(out).all()
    assert m.num_parameters() == param_count(m.config)


@pytest.mark.parametrize("bad", [
    dict(layer_heads=[9, 9, 9]),                                          # wrong length
    dict(layer_kv_map=[[0] * 9, [0] * 9, [0] * 9, [0] * 9]),              # KV heads 1, 2 unused
    dict(layer_kv_map=[[5] * 9] * 4),                                     # out of range
])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        tiny_config("tiny-gqa", **bad)


def test_state_dict_mismatch_is_a_clear_error():
    m = tiny_model("tiny-llama")
    sd = dict(m.state_dict())
    sd.pop("model.norm.weight")
    with pytest.raises(ValueError, match="missing"):
        build_model(m.config, sd)
