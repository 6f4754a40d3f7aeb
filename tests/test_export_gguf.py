"""`slimgpt export --format gguf`: read back with the `gguf` package (always), run by llama.cpp
(only where llama-cpp-python is installed: those tests skip cleanly otherwise).

The read-back checks: architecture and per-layer arrays, head_dim keys, tensor shapes and types,
tokenizer metadata, the q/k row permutation (un-permuted rows equal the checkpoint's), and the
whole model read back into slimgpt giving the checkpoint's logits.
"""
import importlib.util
import sys

import gguf
import numpy as np
import pytest
import torch

from slimgpt.checkpoint import save_pretrained
from slimgpt.cli import main as cli_main
from slimgpt.export import ExportError, export_checkpoint
from slimgpt.export.gguf import layer_plan, permute_qk, read_gguf, regroup
from slimgpt.loaders import load_model
from slimgpt.loaders.gguf_loader import load_gguf, unpermute_qk
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model
from slimgpt.testing import assert_close

_skip_without_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason='llama-cpp-python is not installed (pip install ".[llama-cpp]"; .ci/llama_cpp)')


def needs_llama_cpp(test):
    """Runs llama.cpp: marked llama_cpp (`pytest -m llama_cpp` selects these) and skipped without it."""
    return pytest.mark.llama_cpp(_skip_without_llama_cpp(test))


@pytest.fixture(scope="module")
def exported(ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    cache = {}

    def get(name, dtype="float32"):
        if (name, dtype) not in cache:
            path = root / f"{name}-{dtype}.gguf"
            cache[name, dtype] = (path, export_checkpoint(ckpts[name], path, format="gguf", dtype=dtype))
        return cache[name, dtype]
    return get


def _fields(path):
    r = gguf.GGUFReader(str(path))
    return r, {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _ids(T=40, B=2, seed=0, name=None):
    if name == "llama3_pruned":
        T = 300          # beyond tiny-llama3's original context (256): the rope scaling matters
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# The regrouping of uneven query→KV maps

def test_regroup():
    assert regroup([0, 0, 0, 1, 1, 1], 2) == ([0, 1, 2, 3, 4, 5], [0, 1])          # standard: unchanged
    assert regroup([0, 1, 1, 2, 2], 3) == ([0, 1, 2, 3, 4], [0, 1, 1, 2, 2])        # gcd 1: one KV per head
    order, slots = regroup([2, 0, 0, 1, 2, 1, 2, 2], 3)                             # counts 2, 2, 4: gcd 2
    assert order == [1, 2, 3, 5, 0, 4, 6, 7] and slots == [0, 1, 2, 2]
    kv_map = [2, 0, 0, 1, 2, 1, 2, 2]
    rep = len(order) // len(slots)
    assert all(slots[pos // rep] == kv_map[h] for pos, h in enumerate(order))      # every head keeps its KV


def test_permute_round_trip():
    w = np.random.default_rng(0).standard_normal((3 * 8, 5)).astype(np.float32)
    assert np.array_equal(unpermute_qk(permute_qk(w, 3), 3), w)
    b = np.arange(24, dtype=np.float32)
    assert np.array_equal(unpermute_qk(permute_qk(b, 3)[:, None], 3)[:, 0], b)


# ----------------------------------------------------------------------------------------------
# Read back with the gguf package (never skipped)

def test_deci_arrays_shapes_metadata(ckpts, exported):
    path, info = exported("gqa_query")
    cfg = load_model(ckpts["gqa_query"]).model.config
    plans = [layer_plan(cfg, i) for i in range(cfg.num_hidden_layers)]
    r, f = _fields(path)
    assert f["general.architecture"] == "deci" and info["arch"] == "deci"
    assert f["deci.attention.head_count"] == cfg.layer_heads
    assert f["deci.attention.head_count_kv"] == [p["kv_heads"] for p in plans]
    assert f["deci.feed_forward_length"] == cfg.layer_intermediate
    assert f["deci.attention.key_length"] == f["deci.attention.value_length"] == cfg.head_dim
    assert f["deci.rope.dimension_count"] == cfg.head_dim
    assert f["deci.embedding_length"] == cfg.hidden_size and f["deci.block_count"] == cfg.num_hidden_layers
    assert f["deci.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert f["deci.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert f["slimgpt.export.format"] == "slimgpt-export"
    # uneven layers are regrouped (k/v duplicated), the others written as they are
    uneven = [i for i in range(cfg.num_hidden_layers) if plans[i]["order"] is not None]
    assert uneven and info["regrouped_layers"] == uneven
    assert any(p["kv_heads"] > k for p, k in zip(plans, cfg.layer_kv_heads))
    # tokenizer
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert f["tokenizer.ggml.tokens"] == [byte_tokenizer().id_to_token(i) for i in range(256)]
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.ggml.merges"] == []                                   # byte tokenizer: no merges
    # tensors: GGUF shapes are (in, out); norms F32
    t = {x.name: x for x in r.tensors}
    d, D = cfg.head_dim, cfg.hidden_size
    for i, p in enumerate(plans):
        assert list(t[f"blk.{i}.attn_q.weight"].shape) == [D, p["heads"] * d]
        assert list(t[f"blk.{i}.attn_k.weight"].shape) == [D, p["kv_heads"] * d]
        assert list(t[f"blk.{i}.attn_v.weight"].shape) == [D, p["kv_heads"] * d]
        assert list(t[f"blk.{i}.attn_output.weight"].shape) == [p["heads"] * d, D]
        assert list(t[f"blk.{i}.ffn_down.weight"].shape) == [p["ffn"], D]
        assert t[f"blk.{i}.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in t                                            # tied


def test_qk_rows_round_trip(ckpts, exported):
    """Un-permuting the written q/k rows with each layer's head counts gives the checkpoint's rows
    (in the written head order; duplicated KV slots are copies of the KV head they stand for)."""
    path, _ = exported("gqa_query")
    model = load_model(ckpts["gqa_query"]).model
    cfg, d = model.config, model.config.head_dim
    r = gguf.GGUFReader(str(path))
    t = {x.name: np.array(x.data).reshape(tuple(reversed([int(s) for s in x.shape]))) for x in r.tensors}
    for i in range(cfg.num_hidden_layers):
        p = layer_plan(cfg, i)
        order = p["order"] or list(range(cfg.layer_heads[i]))
        slots = p["slots"] or list(range(cfg.layer_kv_heads[i]))
        a = model.model.layers[i].self_attn
        q = unpermute_qk(t[f"blk.{i}.attn_q.weight"], p["heads"])
        k = unpermute_qk(t[f"blk.{i}.attn_k.weight"], p["kv_heads"])
        for pos, h in enumerate(order):
            assert np.array_equal(q[pos * d:(pos + 1) * d], a.q_proj.weight[h * d:(h + 1) * d].detach().numpy())
        for pos, j in enumerate(slots):
            assert np.array_equal(k[pos * d:(pos + 1) * d], a.k_proj.weight[j * d:(j + 1) * d].detach().numpy())
        # the permutation really moves rows (llama.cpp's interleaved RoPE pairs)
        assert not np.array_equal(t[f"blk.{i}.attn_q.weight"], q)


@pytest.mark.parametrize("name", ["gqa_query", "qwen2_pruned", "flap", "hetero", "empty_layers", "uniform_mha",
                                  "llama3_pruned"])
def test_read_back_logits_equal(ckpts, exported, name):
    path, info = exported(name)
    ref = load_model(ckpts[name]).model
    got, _ = read_gguf(path)
    with torch.no_grad():
        assert_close(got(_ids(name=name)), ref(_ids(name=name)), "logits", name)
    if name == "llama3_pruned":
        from slimgpt.export.gguf import rope_freq_factors
        t = {x.name: x for x in gguf.GGUFReader(str(path)).tensors}
        assert np.array_equal(np.array(t["rope_freqs.weight"].data), rope_freq_factors(ref.config))
        assert rope_freq_factors(ref.config).max() == pytest.approx(8.0)
    if name == "empty_layers":
        assert info["padded_layers"] == [1]          # one zero head and one zero channel stand in
    if name == "qwen2_pruned":
        assert "blk.0.attn_q.bias" in {t.name for t in gguf.GGUFReader(str(path)).tensors}


def test_uniform_is_plain_llama_and_slimgpt_loads_it(ckpts, exported):
    path, info = exported("uniform_mha")
    _, f = _fields(path)
    assert info["arch"] == "llama" and f["general.architecture"] == "llama"
    assert f["llama.attention.head_count"] == 8 and f["llama.feed_forward_length"] == 96
    model, _, _ = load_gguf(str(path))                 # slimgpt's own GGUF loader (llama only)
    with torch.no_grad():
        assert_close(model(_ids()), load_model(ckpts["uniform_mha"]).model(_ids()), "logits")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}      # untied


# max|logits - float32 logits| / max|float32 logits| of the "flap" checkpoint's export, at about 2.5x
# the largest measured over five random inputs (float16 1.0e-3, bfloat16 9.8e-3, q8_0 2.8e-2; the
# weights alone are rounded, the forward runs in float32 after read_gguf).
DTYPE_REL_ERROR = {"float16": 2.5e-3, "bfloat16": 2.5e-2, "q8_0": 7e-2}


@pytest.mark.parametrize("dtype,qtype", [("float16", "F16"), ("bfloat16", "BF16"), ("q8_0", "Q8_0")])
def test_dtypes(ckpts, exported, dtype, qtype):
    path, info = exported("flap", dtype)           # tiny-llama: rows of 64 (Q8_0 blocks of 32 fit)
    r, f = _fields(path)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == qtype and types["token_embd.weight"] == qtype
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_output.bias"] == "F32"
    assert f["general.file_type"] == {"float16": 1, "bfloat16": 32, "q8_0": 7}[dtype]
    got, _ = read_gguf(path)
    ref = load_model(ckpts["flap"]).model
    with torch.no_grad():
        a, b = got(_ids()), ref(_ids())
    assert float((a - b).abs().max()) < DTYPE_REL_ERROR[dtype] * float(b.abs().max())
    if dtype == "q8_0":
        # FFN widths not divisible by 32 fall back to F16 (ffn_down rows have length = width)
        widths = f["deci.feed_forward_length"]
        for i, m in enumerate(widths):
            assert types[f"blk.{i}.ffn_down.weight"] == ("Q8_0" if m % 32 == 0 else "F16")


def test_aligned_prune_needs_no_regrouping_or_fallback(ckpts, exported):
    """--align 32: balanced query->KV groups (no duplicated K/V rows, one V size across layers)
    and FFN widths in whole Q8_0 blocks (no F16 fallback for ffn_down)."""
    path, info = exported("gqa_aligned", "q8_0")
    assert info["regrouped_layers"] == [] and len(set(info["head_count_kv"])) == 1
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert all(m % 32 == 0 for m in info["feed_forward_length"])
    assert all(types[f"blk.{i}.ffn_down.weight"] == "Q8_0" for i in range(len(info["feed_forward_length"])))
    _, exact = exported("gqa_query", "q8_0")                # the exact counts regroup K/V rows
    assert exact["regrouped_layers"]


def test_q4_k_m_without_llama_cpp_is_one_clear_error(ckpts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)       # import llama_cpp raises ImportError
    out = tmp_path / "m.gguf"
    with pytest.raises(ExportError, match="llama-cpp-python"):
        export_checkpoint(ckpts["gqa_aligned"], out, format="gguf", dtype="q4_k_m")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="GGUF quantization"):
        export_checkpoint(ckpts["gqa_aligned"], tmp_path / "hf", format="hf", dtype="q4_k_m")


def test_output_file_or_folder_and_force(ckpts, tmp_path, capsys):
    src = ckpts["gqa_query"]
    folder = tmp_path / "folder"
    export_checkpoint(src, folder, format="gguf")
    assert sorted(p.name for p in folder.iterdir()) == ["model.gguf", "slimgpt_export.json"]
    f = tmp_path / "m.gguf"
    export_checkpoint(src, f, format="gguf")
    with pytest.raises(ValueError, match="--force"):
        export_checkpoint(src, f, format="gguf")
    export_checkpoint(src, f, format="gguf", dtype="float16", force=True)
    assert _fields(f)[1]["general.file_type"] == 1
    other = tmp_path / "other.gguf"
    other.write_bytes(b"not a gguf")
    assert cli_main(["export", src, "--format", "gguf", "--out", str(other), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not written by slimgpt" in err[0]
    assert other.read_bytes() == b"not a gguf"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_qwen3_qk_norm_is_refused(ckpts, tmp_path, capsys):
    assert cli_main(["export", ckpts["qwen3"], "--format", "gguf", "--out", str(tmp_path / "q.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "q/k norms" in err[0]
    assert not list(tmp_path.iterdir())


def test_tokenizer_without_llama_cpp_equivalent_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({chr(65 + i): i for i in range(26)} | {"[UNK]": 26}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    src = save_pretrained(tiny_model("tiny-llama"), tmp_path / "wl", tok, {})
    with pytest.raises(ExportError, match="byte-level BPE"):
        export_checkpoint(src, tmp_path / "x.gguf", format="gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_chat_template_and_special_tokens(tmp_path):
    tok = byte_tokenizer()
    chat = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    src = save_pretrained(tiny_model("tiny-gqa", bos_token_id=1, eos_token_id=2), tmp_path / "c", tok,
                          {"chat_template": chat, "tokenizer_config": {"pad_token": tok.id_to_token(3)}})
    path = tmp_path / "c.gguf"
    export_checkpoint(src, path, format="gguf")
    f = _fields(path)[1]
    assert f["tokenizer.chat_template"] == chat
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.padding_token_id"]) \
        == (1, 2, 3)


# ----------------------------------------------------------------------------------------------
# llama.cpp itself (skipped without llama-cpp-python)

def _llama(path, n_ctx=64, f32_cache=True):
    from llama_cpp import Llama

    kw = {"type_k": 0, "type_v": 0} if f32_cache else {}      # GGML_TYPE_F32 KV cache: compare like with like
    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1, **kw)


def _default_llama_and_slimgpt_logits(path, checkpoint):
    """Logits of one sequence from llama.cpp with its default f16 KV cache, and from slimgpt."""
    ids = _ids(B=1)[0].tolist()
    llm = _llama(path, f32_cache=False)
    try:
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    with torch.no_grad():
        want = load_model(checkpoint).model(torch.tensor([ids]))[0].numpy()
    return got, want


@needs_llama_cpp
@pytest.mark.parametrize("name", ["gqa_query", "qwen2_pruned", "flap", "empty_layers", "uniform_mha",
                                  "llama3_pruned"])
def test_llama_cpp_logits(ckpts, exported, name):
    path, _ = exported(name)
    ids = _ids(B=1, name=name)[0].tolist()
    llm = _llama(path, n_ctx=512)
    try:
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
        text = "Pruned models, 42 of them!\n\nNew line."
        tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    finally:
        llm.close()
    with torch.no_grad():
        want = load_model(ckpts[name]).model(torch.tensor([ids]))[0].numpy()
    assert_close(got, want, "logits", name)
    assert tokens == byte_tokenizer().encode(text).ids


@needs_llama_cpp
def test_llama_cpp_f16(ckpts, exported):
    path, _ = exported("gqa_query", "float16")
    got, want = _default_llama_and_slimgpt_logits(path, ckpts["gqa_query"])   # f16 weights and KV cache
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


@needs_llama_cpp
@pytest.mark.parametrize("name", ["gqa_aligned", "gqa_query"])
def test_llama_cpp_q4_k_m(ckpts, exported, name):
    """llama.cpp's quantizer on our F16 file: Q4_K_M file type, our metadata kept, and it runs."""
    from slimgpt.export.common import is_export_gguf

    path, info = exported(name, "q4_k_m")
    _, f = _fields(path)
    assert f["general.file_type"] == 15 and is_export_gguf(path)
    assert sum(info["tensor_types"].values()) == sum(1 for t in gguf.GGUFReader(str(path)).tensors
                                                    if len(t.shape) > 1)
    got, want = _default_llama_and_slimgpt_logits(path, ckpts[name])
    # 4-5 bit weights on a random tiny model: a loose bound that still catches a scrambled layout
    assert np.isfinite(got).all() and np.abs(got - want).max() < 0.25 * np.abs(want).max()


@needs_llama_cpp
def test_llama_cpp_greedy_generation(ckpts, exported):
    from slimgpt.generate import generate_ids

    path, _ = exported("gqa_query")
    llm = _llama(path)
    ids = _ids(B=1)[0].tolist()[:16]
    out = []
    try:
        for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            out.append(t)
            if len(out) == 8:
                break
    finally:
        llm.close()
    assert out == generate_ids(load_model(ckpts["gqa_query"]).model, ids, 8, stop_at_eos=False)
