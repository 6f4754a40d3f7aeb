"""LoRA recovery fine-tuning (slimgpt.finetune, `slimgpt finetune`) on tiny models."""
import json
import sys

import pytest
import torch

from slimgpt import finetune as FT
from slimgpt.loaders.tiny import tiny_model
from slimgpt.testing import assert_close

IDS = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stream(n=6000, seed=0):
    """A learnable token stream: a repeated random phrase with noise."""
    g = torch.Generator().manual_seed(seed)
    phrase = torch.randint(0, 256, (37,), generator=g)
    s = phrase.repeat(n // 37 + 1)[:n].clone()
    noise = torch.rand(n, generator=g) < 0.05
    s[noise] = torch.randint(0, 256, (int(noise.sum()),), generator=g)
    return s


SMALL = dict(steps=12, rank=4, lr=3e-3, batch=2, micro_batch=1, seqlen=24, log_every=4, val_windows=4,
             val_fraction=0.1)


def test_settings_are_checked():
    for bad in (dict(steps=0), dict(rank=0), dict(lr=0.0), dict(lr=float("nan")), dict(seqlen=1),
                dict(targets=("lm_head",)), dict(dropout=1.0)):
        with pytest.raises(FT.FinetuneError):
            FT.FinetuneSettings(**bad).validate()


def test_evaluation_text_is_refused():
    from slimgpt.textdata import wikitext2_text
    with pytest.raises(FT.FinetuneError, match="WikiText-2"):
        FT.check_not_evaluation("some prose\n" + wikitext2_text()[200000:260000])
    FT.check_not_evaluation("ordinary calibration text " * 100)        # no passages: accepted


@pytest.fixture(scope="module")
def tuned():
    pytest.importorskip("peft")
    m = tiny_model("tiny-gqa")
    dense = {k: v.clone() for k, v in m.state_dict().items()}
    rec = FT.finetune(m, settings=FT.FinetuneSettings(**SMALL), tokens=stream(), log=lambda s: None)
    return m, dense, rec


def test_finetune_lowers_the_loss_and_leaves_a_plain_model(tuned):
    m, dense, rec = tuned
    assert rec["steps"] == 12 and rec["tokens"] == 12 * 2 * 24 and len(rec["losses"]) == 12
    assert rec["val_loss_after"] < rec["val_loss_before"]
    assert rec["merged_layers"] == 4 * 7 and rec["trainable_params"] > 0
    # merged: the same modules, names, shapes and parameter count as before; nothing trainable
    sd = m.state_dict()
    assert list(sd) == list(dense) and all(sd[k].shape == dense[k].shape for k in sd)
    assert not any("lora" in n for n, _ in m.named_modules())
    assert not any(p.requires_grad for p in m.parameters())
    assert m.num_parameters() == tiny_model("tiny-gqa").num_parameters()
    # only the adapted projections changed
    changed = {k for k in sd if not torch.equal(sd[k], dense[k])}
    assert changed and all(k.split(".")[-2] in FT.TARGETS for k in changed)


def test_merge_equals_the_adapted_model():
    pytest.importorskip("peft")
    m = tiny_model("tiny-gqa")
    FT.add_lora(m, FT.FinetuneSettings(rank=2))
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for n, p in m.named_parameters():
            if "lora_B" in n:                   # B starts at zero: make the adapters do something
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        adapted = m(IDS)
        FT.merge_lora(m)
        assert_close(m(IDS), adapted, "logits")


def test_deterministic_for_a_seed(tuned):
    m, _, rec = tuned
    m2 = tiny_model("tiny-gqa")
    rec2 = FT.finetune(m2, settings=FT.FinetuneSettings(**SMALL), tokens=stream(), log=lambda s: None)
    assert rec2["losses"] == rec["losses"]
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_finetune_writes_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("peft")
    from slimgpt.checkpoint import load_pretrained, save_pretrained
    from slimgpt.cli import main
    from slimgpt.loaders.tiny import byte_tokenizer

    src = tmp_path / "pruned"
    m = tiny_model("tiny-gqa")
    save_pretrained(m, src, byte_tokenizer(), {"method": "slimgpt", "ratios": [0.1] * 4})
    text = tmp_path / "train.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 300)
    out = tmp_path / "recovered"
    rc = main(["finetune", str(src), "--out", str(out), "--steps", "3", "--rank", "2", "--batch", "2",
               "--seqlen", "32", "--calib", str(text), "--eval-tokens", "0", "--quiet", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["finetune"]["steps"] == 3 and report["finetune"]["tokens"] == 3 * 2 * 32
    model, tok, manifest = load_pretrained(str(out))
    assert manifest["method"] == "slimgpt" and manifest["ratios"] == [0.1] * 4      # the source record stays
    assert manifest["finetune"]["steps"] == 3 and manifest["finetune"]["source"]
    assert model.num_parameters() == m.num_parameters()
    # the output guard: an existing folder is not replaced without --force
    rc = main(["finetune", str(src), "--out", str(out), "--steps", "1", "--calib", str(text), "--quiet"])
    assert rc == 2 and "error" in capsys.readouterr().err


def test_cli_without_peft_is_one_line(tmp_path, capsys, monkeypatch):
    from slimgpt.cli import main

    monkeypatch.setitem(sys.modules, "peft", None)          # import peft -> ImportError
    rc = main(["finetune", "tiny-gqa", "--out", str(tmp_path / "o"), "--steps", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "peft is not installed" in err[0] and "slimgpt[finetune]" in err[0]
    assert not (tmp_path / "o").exists()


def test_distillation_moves_the_model_toward_its_teacher():
    pytest.importorskip("peft")
    import torch.nn.functional as F

    teacher = tiny_model("tiny-gqa", seed=0)
    student = tiny_model("tiny-gqa", seed=0)
    with torch.no_grad():                       # a "pruned" student: ten FFN channels of each layer zeroed
        for layer in student.model.layers:
            layer.mlp.down_proj.weight[:, :10] = 0

    def kl():
        with torch.no_grad():
            ids = stream(400, seed=9)[:384].view(4, 96)
            return float(F.kl_div(F.log_softmax(student(ids), -1), F.log_softmax(teacher(ids), -1),
                                  reduction="batchmean", log_target=True))

    before = kl()
    s = FT.FinetuneSettings(**dict(SMALL, steps=10, lr=5e-3))
    rec = FT.finetune(student, settings=s, tokens=stream(), teacher=teacher, log=lambda m: None)
    assert kl() < 0.85 * before and rec["steps"] == 10       # measured: 10.7 -> 8.0
    assert not any(p.requires_grad for p in teacher.parameters())
