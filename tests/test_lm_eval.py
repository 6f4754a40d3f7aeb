"""The lm-evaluation-harness adapter (slimgpt.lm_eval_model), offline on a tiny local task.

tests/data/lm_eval_task/ holds an 8-question multiple-choice task (2-4 choices) loaded from a
local JSON-lines file. Skipped cleanly when lm-eval is not installed; the `--model hf` cross-check
also needs transformers.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from slimgpt.checkpoint import save_pretrained  # noqa: E402
from slimgpt.generate import generate_ids  # noqa: E402
from slimgpt.loaders import load_model  # noqa: E402
from slimgpt.loaders.tiny import byte_tokenizer, tiny_model  # noqa: E402
from slimgpt.testing import assert_close, quiet_prune  # noqa: E402
from slimgpt.textdata import calibration_windows  # noqa: E402

TASK_DIR = Path(__file__).parent / "data" / "lm_eval_task"
TASK = "slimgpt_tiny_mc"
BOS, EOS = 1, 2


@pytest.fixture(scope="module", autouse=True)
def offline():
    old = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """tiny-gqa pruned at 50% in GQA query mode (uneven maps), with BOS/EOS ids so that the
    adapter and lm-eval's HF model pick the same prefix token."""
    m = tiny_model("tiny-gqa", bos_token_id=BOS, eos_token_id=EOS)
    quiet_prune(m, calibration_windows(byte_tokenizer(), 8, 32, 0), ratio=0.5, backend="reference", gqa="query")
    return save_pretrained(m, tmp_path_factory.mktemp("lm") / "ckpt", byte_tokenizer(), {})


@pytest.fixture(scope="module")
def lm(ckpt):
    from slimgpt.lm_eval_model import SlimGPTLM

    return SlimGPTLM(pretrained=ckpt, batch_size=4)


def _direct_loglikelihood(model, tok, context, continuation):
    """log p(continuation | context) with slimgpt's model, tokenized as lm-eval's causal models do."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation).ids
    ctx = tok.encode(context).ids if context else [BOS]
    cont = whole[len(ctx):] if context else tok.encode(continuation).ids
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0, :-1].double(), -1)
    tgt = ids[0, 1:]
    return float(logp[len(ctx) - 1:].gather(1, tgt[len(ctx) - 1:, None]).sum())


def _evaluate(model, **kw):
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=[TASK], task_manager=tm, log_samples=True, **kw)


def test_local_task_loglikelihoods_equal_direct_computation(lm, ckpt):
    res = _evaluate(lm)
    r = res["results"][TASK]
    assert 0.0 <= r["acc,none"] <= 1.0 and "acc_norm,none" in r
    samples = res["samples"][TASK]
    assert len(samples) == 8 and {len(s["arguments"]) for s in samples} == {2, 3, 4}
    loaded = load_model(ckpt)
    got, want = [], []
    for s in samples:
        for (context, continuation), resp in zip(s["arguments"], s["resps"]):
            got.append(resp[0][0])
            want.append(_direct_loglikelihood(loaded.model, loaded.tokenizer, context, continuation))
    assert_close(got, want, "logits")
    # acc is the argmax of the choices' loglikelihoods
    acc = sum(max(range(len(s["resps"])), key=lambda j: s["resps"][j][0][0]) == s["target"] for s in samples) / 8
    assert r["acc,none"] == pytest.approx(acc)


def test_batching_and_empty_context(lm, ckpt):
    from slimgpt.lm_eval_model import SlimGPTLM

    reqs = [Instance("loglikelihood", {}, (c, x), 0) for c, x in
            [("The cat sat", " on the mat"), ("", "Hello"), ("A much longer context than the others, really", " yes"),
             ("Q: 2+2?\nA:", " 4")]]
    one = SlimGPTLM(pretrained=ckpt, batch_size=1).loglikelihood(reqs)
    many = SlimGPTLM(pretrained=ckpt, batch_size=8, batch_tokens=64).loglikelihood(reqs)
    assert_close([ll for ll, _ in many], [ll for ll, _ in one], "logits")
    loaded = load_model(ckpt)
    want = [_direct_loglikelihood(loaded.model, loaded.tokenizer, *r.args) for r in reqs]
    assert_close([ll for ll, _ in one], want, "logits")
    assert all(isinstance(g, bool) for _, g in one)


def test_loglikelihood_rolling(ckpt):
    from slimgpt.lm_eval_model import SlimGPTLM

    text = "Rolling windows cover every token exactly once, whatever the window length is."
    loaded = load_model(ckpt)
    ids = [BOS] + loaded.tokenizer.encode(text).ids
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(torch.tensor([ids]))[0, :-1].double(), -1)
    want = float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
    req = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    assert_close(SlimGPTLM(pretrained=ckpt).loglikelihood_rolling(req), [want], "logits")
    short = SlimGPTLM(pretrained=ckpt, max_length=16).loglikelihood_rolling(req)[0]    # several windows
    assert short < 0 and short != pytest.approx(want)


def test_generate_until(lm, ckpt):
    loaded = load_model(ckpt)
    context = "Once upon a time"
    ids = loaded.tokenizer.encode(context).ids
    new = generate_ids(loaded.model, ids, 20, stop_at_eos=True)
    full = loaded.tokenizer.decode([t for t in new if t != EOS])
    stop = full[3:5] if len(full) >= 5 else "\n\n"
    out = lm.generate_until([Instance("generate_until", {}, (context, {"until": [stop], "max_gen_toks": 20}), 0)])
    assert out == [full.split(stop)[0]]
    out = lm.generate_until([Instance("generate_until", {}, (context, {"until": ["@@never@@"], "max_gen_toks": 5}), 0)])
    first = []
    for t in new[:5]:
        if t == EOS:
            break
        first.append(t)
    assert out == [loaded.tokenizer.decode(first)]


def test_chat_template(ckpt, tmp_path):
    from slimgpt.lm_eval_model import SlimGPTLM

    src = tmp_path / "chat"
    chat = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}"
    save_pretrained(load_model(ckpt).model, src, byte_tokenizer(), {"tokenizer_config": {"chat_template": chat}})
    lm = SlimGPTLM(pretrained=str(src))
    assert lm.chat_template(True) == chat
    eos = byte_tokenizer().id_to_token(EOS)
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}]) == f"[user]hi{eos}"


def test_lm_eval_command_finds_the_model(ckpt, tmp_path):
    """`python -m slimgpt.lm_eval_model` is the lm_eval command with --model slimgpt registered."""
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "slimgpt.lm_eval_model", "run", "--model", "slimgpt",
                        "--model_args", f"pretrained={ckpt}", "--tasks", TASK, "--include_path", str(TASK_DIR),
                        "--device", "cpu", "--batch_size", "4", "--output_path", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert TASK in r.stdout and "acc" in r.stdout


def test_exported_hf_folder_under_lm_eval_hf(lm, ckpt, tmp_path):
    """The per-layer HF export runs under lm-eval's own `--model hf` and scores like the adapter."""
    pytest.importorskip("transformers")
    from slimgpt.export import export_checkpoint

    out = tmp_path / "hf"
    export_checkpoint(ckpt, out, format="hf")
    hf = _evaluate("hf", model_args=f"pretrained={out},trust_remote_code=True,dtype=float32", batch_size=4,
                   device="cpu")
    ours = _evaluate(lm)
    a = [r[0][0] for s in sorted(ours["samples"][TASK], key=lambda s: s["doc_id"]) for r in s["resps"]]
    b = [r[0][0] for s in sorted(hf["samples"][TASK], key=lambda s: s["doc_id"]) for r in s["resps"]]
    assert_close(b, a, "logits")
    assert hf["results"][TASK]["acc,none"] == ours["results"][TASK]["acc,none"]
