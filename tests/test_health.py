"""A degenerate model never passes silently (slimgpt.evaluate's activation health check, run on
the calibration activations, every layer's output and the evaluated logits): overflowing,
collapsed or constant values stop the run with one line naming the layer, before anything is
saved. Finite is not enough: up_proj × 1e30 makes layer 0's output about 1e30, RMSNorm's float32
mean of squares overflows, and every later layer and the logits become exact zeros (PPL = the
vocabulary size, 256.000) without a NaN anywhere."""
import os

import pytest
import torch

from slimgpt.cli import main
from slimgpt.evaluate import NonFiniteError, activation_problem, perplexity
from slimgpt.loaders import load_model
from slimgpt.loaders.tiny import byte_tokenizer
from slimgpt.testing import tiny_checkpoint

torch.set_grad_enabled(False)
PRUNE = ["prune", "--ratio", "0.2", "--nsamples", "4", "--seqlen", "32", "--quiet", "--backend", "reference"]


def broken_checkpoint(folder, edit):
    """A tiny-llama checkpoint that went through edit(model)."""
    from slimgpt.checkpoint import save_pretrained
    model = load_model(tiny_checkpoint(folder / "clean", "tiny-llama")).model
    edit(model)
    return save_pretrained(model, folder / "broken", byte_tokenizer())


EDITS = {"up_proj-1e30": lambda m: m.model.layers[1].mlp.up_proj.weight.mul_(1e30),
         "down_proj-3e37": lambda m: m.model.layers[1].mlp.down_proj.weight.mul_(3e37),
         "up_proj-zero": lambda m: m.model.layers[1].mlp.up_proj.weight.zero_(),
         "final-norm-zero": lambda m: m.model.norm.weight.zero_()}
# (edit, --eval-tokens, --stream, what the one line says): the dense evaluation comes first and
# names the first wrong layer; without it, layer 1's calibration inputs or output stop the run
# (a dead FFN still predicts, so only calibration sees it; only logits see the final norm)
CASES = [(edit, "512", False, "logits are all equal (first wrong at decoder layer 1: values reach")
         for edit in ("up_proj-1e30", "down_proj-3e37")] + \
        [(edit, "0", stream, what) for stream in (False, True) for edit, what in (
            ("up_proj-1e30", "layer 1 down_proj inputs: values reach"),
            ("down_proj-3e37", "layer 1 output after pruning: values reach"),
            ("up_proj-zero", "layer 1 down_proj inputs: collapsed to zeros in every token"))] + \
        [("final-norm-zero", "512", False, "logits are all equal (first wrong at the final norm / lm_head)"),
         ("final-norm-zero", "512", True, "the dense model's logits are all equal")]


@pytest.mark.parametrize("edit,eval_tokens,stream,what", CASES, ids=[
    f"{c[0]}-{'eval' if c[1] != '0' else 'no-eval'}-{'stream' if c[2] else 'memory'}" for c in CASES])
def test_degenerate_model_is_refused_naming_the_layer(tmp_path, capsys, edit, eval_tokens, stream, what):
    """Issue: `slimgpt prune` printed dense and pruned PPL 256.000, saved and exited 0."""
    model = broken_checkpoint(tmp_path, EDITS[edit])
    args = PRUNE + ["--model", model, "--out", str(tmp_path / "out"), "--eval-tokens", eval_tokens]
    rc = main(args + ["--stream"] * stream)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("slimgpt prune: error: ") and sum("error" in e for e in err) == 1, err
    assert what in err[-1] and "Traceback" not in "\n".join(err), err[-1]
    kept = [".out.resume"] if stream and os.path.exists(tmp_path / ".out.resume") else []   # the state, for --resume
    assert sorted(os.listdir(tmp_path)) == kept + ["broken", "clean"]      # nothing saved, no temporary left


def test_zero_final_norm_gives_equal_logits_named(tmp_path):
    model = load_model(tiny_checkpoint(tmp_path / "m", "tiny-llama")).model
    model.model.norm.weight.zero_()
    with pytest.raises(NonFiniteError, match=r"logits are all equal \(first wrong at the final norm / lm_head\)"):
        perplexity(model, torch.arange(256), 64)


@pytest.mark.parametrize("x,problem", [
    (torch.tensor([[1.0, -2.0], [0.5, 3.0]]), None),
    (torch.tensor([[1.0], [2.0]]), None),                               # one feature: never "constant"
    (torch.tensor([[0.0, 0.0], [0.0, 0.0]]), "collapsed to zeros in every token"),
    (torch.tensor([[0.0], [0.0]]), "collapsed to zeros in every token"),
    (torch.tensor([[2.5, 2.5], [-1.0, -1.0]]), "collapsed to one constant in every token"),
    (torch.tensor([[2.5, 2.5], [-1.0, 1.0]]), None),                    # one token constant: not all
    (torch.tensor([[float("nan"), 1.0]]), "not finite"),
    (torch.tensor([[float("-inf"), 1.0]]), "not finite"),
    (torch.tensor([[1.4e30, 1.0]]), "values reach 1.4e+30, whose sum of squares overflows float32"),
    (torch.tensor([[1.0e19, 1.0e19, 1.0e19, 1.0e19]]), "values reach 1e+19, whose sum of squares overflows float32"),
    (torch.tensor([[9.0e18, 1.0]]), None),                              # 8.1e37 · 2 < 3.4e38: still fine
    (torch.zeros(0, 4), None),
])
def test_activation_problem(x, problem):
    assert activation_problem(x) == problem
