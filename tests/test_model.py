"""The per-layer-shaped LLaMA model: shapes, counts, GQA map, RoPE, empty layers."""
import pytest
import torch
import torch.nn.functional as F

from slimgpt.loaders.tiny import TINY_CONFIGS, tiny_config, tiny_model
from slimgpt.model import apply_rope, build_model, param_count, rope_cos_sin
from slimgpt.testing import assert_close

pytestmark = pytest.mark.usefixtures("no_grad")


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


def test_llama3_rope_scaling_by_hand():
    """transformers' llama3 formula, computed by hand in float64 for tiny-llama3 (head_dim 8, theta
    500000, factor 8, low 1, high 4, original context 256): wavelengths 2π/f of 6.3 (< 256/4 = 64:
    kept), 167 (between 64 and 256: smoothed), 4443 and 118,110 (> 256: divided by 8)."""
    import math
    from slimgpt.model import rope_inv_freq
    cfg = tiny_config("tiny-llama3")
    f = [500000.0 ** (-i / 8) for i in (0, 2, 4, 6)]
    s = (256 / (2 * math.pi / f[1]) - 1) / (4 - 1)                      # smooth factor of the middle band
    want = [f[0], (1 - s) * f[1] / 8 + s * f[1], f[2] / 8, f[3] / 8]
    assert 0 < s < 1
    got = rope_inv_freq(8, cfg.rope_theta, cfg.rope_scaling)
    assert_close(got, want, "float32")
    plain = rope_inv_freq(8, cfg.rope_theta)
    assert got[0] == plain[0] and torch.equal(got[2:], plain[2:] / 8)
    cos, sin = rope_cos_sin(5, 8, cfg.rope_theta, scaling=cfg.rope_scaling)
    assert_close(cos[3], torch.cos(3 * got).repeat(2), "float32")


@pytest.mark.parametrize("scaling,fragment", [
    ({"rope_type": "linear", "factor": 2.0}, "rope_scaling type 'linear' is not supported"),
    ("llama3", "rope_scaling must be an object or null"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
     "rope_scaling.original_max_position_embeddings must be an integer"),
    ({"rope_type": "llama3", "factor": 0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, "rope_scaling.factor must be a finite number > 0"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, "high_freq_factor (4.0) must be larger than low_freq_factor"),
])
def test_bad_rope_scaling_is_refused(scaling, fragment):
    with pytest.raises(ValueError) as e:
        tiny_config("tiny-llama", rope_scaling=scaling)
    assert fragment in str(e.value)


def test_qwen3_q_k_norms_act_per_head_before_rope():
    """tiny-qwen3: q_norm / k_norm normalise each head's d values (weight shared by the heads)."""
    m = tiny_model("tiny-qwen3", seed=2)
    attn = m.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (24,) and attn.head_dim == 24 and m.config.hidden_size == 64
    x = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(0))
    cos, sin = m.rope(6)
    q = attn.q_proj(x).view(1, 6, 4, 24)
    qn = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + m.config.rms_norm_eps) * attn.q_norm.weight
    k = attn.k_proj(x).view(1, 6, 2, 24)
    kn = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + m.config.rms_norm_eps) * attn.k_norm.weight
    v = attn.v_proj(x).view(1, 6, 2, 24)
    qr = apply_rope(qn.transpose(1, 2), cos, sin)
    kr = apply_rope(kn.transpose(1, 2), cos, sin).repeat_interleave(2, 1)
    want = F.scaled_dot_product_attention(qr, kr, v.transpose(1, 2).repeat_interleave(2, 1), is_causal=True)
    assert_close(attn.heads(x, cos, sin), want.transpose(1, 2).reshape(1, 6, 96), "logits")
