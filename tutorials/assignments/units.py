"""The course: units, their questions and the operations they add to the oracle's tables.

What this is: the grader's view of README.md's units. Each unit names the tasks it grades and its
numerical questions; a question is a case of the operation `answers` (the submission's
`ANSWERS[question_id]`, a number the student computes) whose expected value the reference
computes here. Unit 4 adds `remove_set`, `prune_heads_fast` and `prune_channels_fast` (spec §3.4),
Unit 2 the constructed input `gcd_counterexample()`. `register()` adds their signatures and
outputs to slimgpt.oracle's tables in the grader's process, so that export, load and compare
treat them like the reference's own operations.

What it is not: the reference (slimgpt.reference defines every expected value) or the grader.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import types
from pathlib import Path

import numpy as np

from slimgpt import oracle, reference
from slimgpt.oracle import Case
from slimgpt.oracle.operations import OPERATIONS, Operation
from slimgpt.reference import downdate
from slimgpt.testing import calibration, hessian_of, weights

import numpy_llama

# unit -> (title, tasks graded, question ids)
UNITS = {
    1: ("OBS on one layer", [1, 2, 7], ["1.1", "1.2", "1.3"]),
    2: ("Structure: heads, greedy batches, group sizes", [3, 4, 5, 8], ["2.2", "2.3", "2.4"]),
    3: ("The layer-wise pipeline: Incremental Pruning Ratio, a trained model", [6, 9, 11], ["3.1", "3.2"]),
    4: ("The fast algorithm: one inverse, exact set downdates, the lazy L^-1 form", [10, 12], []),
}

# Unit 3's model: tiny-llama with 2 layers, trained in-process for a few seconds on WikiText-2 bytes
# (a random model is no language model: pruning it can lower its perplexity); the calibration and
# evaluation windows are held-out text. Pruned at a mean ratio PIPELINE_TARGET with Eq. 6's log schedule.
PIPELINE_MODEL = {"name": "tiny-llama", "num_hidden_layers": 2, "steps": 60, "seed": 0}
PIPELINE_TARGET = 0.5
PIPELINE_WINDOWS = (8, 64)     # calibration and evaluation: 8 windows of 64 tokens each
PIPELINE_PERCDAMP = 0.01

# Unit 4's timing: the student's prune_heads (one inverse per head, spec §3.3) against their
# prune_heads_lazy (one factorisation, spec §3.4) on one layer where the lazy form is several times
# faster; the cases alternate so that a load on the machine hits both alike.
TIMING_ROUNDS = 3
TIMING_SIZE = {"d_out": 64, "d_in": 512, "head_dim": 32, "n_prune": 8}

SIGNATURES = {"answers": ["question"], "gcd_counterexample": [], "remove_set": ["W", "G", "S"],
              "prune_heads_fast": oracle.SIGNATURES["prune_heads"],
              "prune_channels_fast": oracle.SIGNATURES["prune_channels"],
              "prune_llama": ["weights", "config", "token_ids", "target"],
              "model_perplexity": ["weights", "config", "token_ids"],
              "prune_heads_lazy": oracle.SIGNATURES["prune_heads"],
              "prune_channels_lazy": oracle.SIGNATURES["prune_channels"]}
OUTPUTS = {"answers": [("value", "float")],
           "gcd_counterexample": [("W", "float"), ("H", "float"), ("head_dim", "exact")],
           "remove_set": [("W_new", "float"), ("G_new", "float"), ("loss", "float")],
           "prune_heads_fast": oracle.OUTPUTS["prune_heads"],
           "prune_channels_fast": oracle.OUTPUTS["prune_channels"],
           "prune_llama": [("ratios", "float"), ("pruned_heads", "exact"), ("pruned_channels", "exact"),
                           ("hessian_traces", "float"), ("weight_norms", "float")],
           "model_perplexity": [("ppl", "float")],
           "prune_heads_lazy": oracle.OUTPUTS["prune_heads"],
           "prune_channels_lazy": oracle.OUTPUTS["prune_channels"]}


def register() -> None:
    """Make the course's operations known to slimgpt.oracle (in this process only)."""
    oracle.SIGNATURES.update(SIGNATURES)
    oracle.OUTPUTS.update(OUTPUTS)
    for op, positional in SIGNATURES.items():
        same = OPERATIONS.get(op.rsplit("_", 1)[0]) if op.endswith(("_fast", "_lazy")) else None
        OPERATIONS.setdefault(op, same or Operation(positional, {}, OUTPUTS[op], "README.md", ""))


# ------------------------------------------------------------------------------------------------
# The problems the questions are asked on (README.md prints the same lines)

def layer(seed: int, n: int = 256, d_in: int = 16, d_out: int = 8):
    """X (n, d_in) and W (d_out, d_in) of question layer `seed`: README.md's recipe."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d_in)) @ (np.eye(d_in) + 0.5 * rng.standard_normal((d_in, d_in)) / np.sqrt(d_in))
    W = rng.standard_normal((d_out, d_in))
    return X, W


def _q11():
    """Output change ||(W - W') X^T||^2 / n when column 3 of layer 1 is removed with OBS."""
    X, W = layer(1)
    W2 = reference.prune_columns(W, hessian_of(X), [3])
    return float(np.sum(((W - W2) @ X.T) ** 2) / X.shape[0])


def _q12():
    """eps_q of Eq. (4) for q = 6 on layer 4 (not 1.1's layer: the answer is computed, not doubled)."""
    X, W = layer(4)
    G = np.linalg.inv(hessian_of(X))
    return float(np.sum(W[:, 6] ** 2) / G[6, 6])


def _q13():
    """The least-squares optimum: min over W' with W'[:, S] = 0 of ||(W - W') X^T||^2 / n on
    layer 2, S = {1, 3, 5, 8}."""
    X, W = layer(2)
    K = np.setdiff1d(np.arange(W.shape[1]), [1, 3, 5, 8])
    coef, *_ = np.linalg.lstsq(X[:, K], X @ W.T, rcond=None)
    return float(np.sum((X @ W.T - X[:, K] @ coef) ** 2) / X.shape[0])


def _q22():
    """Lemma (ii): the diagonal entry of G = H^-1 of layer 3 at column 6 after the Eq. (3)
    downdates of columns 4 and 5, which is L_1[2, 2]^2 for head 1 of head_dim 4."""
    X, _ = layer(3)
    return float(reference.grouped_cholesky_diag(np.linalg.inv(hessian_of(X)), 4)[1, 2])


# T and the layer counts below are tabulated nowhere in docs/: the answers must be computed.
def _q23():
    """The mean DGS group size (T / the number of greedy iterations) for T = 7300 channels."""
    return 7300 / len(reference.dgs_group_sizes(7300))


def _q24():
    """Greedy iterations with DGS over those with fixed groups of 128 (-DGS), T = 7300."""
    return len(reference.dgs_group_sizes(7300)) / math.ceil(7300 / 128)


def _q31():
    """The mean of the log IPR ratios for 28 layers from 0.05 to 0.3."""
    return float(np.mean(reference.ipr_ratios(28, 0.05, 0.3)))


def _q32():
    """The last layer's ratio for a 40% mean on 26 layers, first = 0.3125 * target (log)."""
    return float(reference.ipr_for_target(26, 0.4)[-1])


QUESTIONS = {"1.1": _q11, "1.2": _q12, "1.3": _q13, "2.2": _q22, "2.3": _q23, "2.4": _q24,
             "3.1": _q31, "3.2": _q32}


# ------------------------------------------------------------------------------------------------
# The reference for the course's operations

def _gcd_counterexample():
    """A case where the grouped Cholesky changes the cheapest head (oracle's correlated head)."""
    case = next(c for c in oracle.build_cases() if c.id == "head_errors.correlated_head")
    return case.args["W"], np.linalg.inv(case.args["Hinv"]), case.args["head_dim"]


@functools.lru_cache(maxsize=1)
def trained_model():
    """(weights {name: float64 array}, config {trace.CONFIG_FIELDS}, calibration ids, evaluation
    ids) of Unit 3's model, trained here (single-threaded and seeded: a few seconds). With
    SLIMGPT_COURSE_CACHE set to a folder (the test suite does), the result is kept there."""
    from slimgpt.loaders.tiny import tiny_config, trained_tiny_model
    from slimgpt.oracle.trace import CONFIG_FIELDS

    m = dict(PIPELINE_MODEL)
    config = {k: getattr(tiny_config(m["name"], num_hidden_layers=m["num_hidden_layers"]), k) for k in CONFIG_FIELDS}
    cache = os.environ.get("SLIMGPT_COURSE_CACHE")
    path = Path(cache) / f"unit3-{hashlib.sha256(repr(sorted(m.items())).encode()).hexdigest()[:16]}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as npz:
            return {k[2:]: npz[k] for k in npz.files if k.startswith("w.")}, config, npz["calib"], npz["evaluation"]
    model, held_out, _ = trained_tiny_model(m.pop("name"), m.pop("steps"), m.pop("seed"), **m)
    n, T = PIPELINE_WINDOWS
    ids = held_out[: 2 * n * T].numpy().astype(np.int64).reshape(2, n, T)
    weights = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    if path is not None:
        np.savez(path, calib=ids[0], evaluation=ids[1], **{f"w.{k}": v for k, v in weights.items()})
    return weights, config, ids[0], ids[1]


def _pipeline(weights, config, token_ids, target, percdamp=PIPELINE_PERCDAMP):
    """slimgpt's pipeline (reference backend) at the log IPR ratios for `target`."""
    from slimgpt.oracle.trace import run_pipeline

    ratios = reference.ipr_for_target(config["num_hidden_layers"], target)
    return ratios, run_pipeline(weights, config, token_ids, ratios, percdamp=percdamp)


def _prune_llama(weights, config, token_ids, target, *, percdamp=PIPELINE_PERCDAMP):
    """The golden per-layer trace: ratios, 0/1 masks of the pruned heads and channels per layer,
    trace(H) of o_proj's and down_proj's inputs, Frobenius norms of the pruned o_proj, down_proj."""
    ratios, (result, traces) = _pipeline(weights, config, token_ids, target, percdamp)
    heads = np.zeros((config["num_hidden_layers"], config["num_attention_heads"]), dtype=np.int64)
    channels = np.zeros((config["num_hidden_layers"], config["intermediate_size"]), dtype=np.int64)
    for i, rec in enumerate(result.layers):
        heads[i, rec["heads_pruned"]] = 1
        channels[i, rec["channels_pruned"]] = 1
    pruned = {k: v.detach().double().numpy() for k, v in result.model.state_dict().items()}
    norms = [[np.linalg.norm(pruned[f"model.layers.{i}.self_attn.o_proj.weight"]),
              np.linalg.norm(pruned[f"model.layers.{i}.mlp.down_proj.weight"])] for i in range(len(heads))]
    return ratios, heads, channels, traces, np.array(norms)


def pruned_model():
    """The weights of Unit 3's model after the golden pipeline run (for model_perplexity.pruned)."""
    weights, config, calib, _ = trained_model()
    _, (result, _) = _pipeline(weights, config, calib, PIPELINE_TARGET)
    return {k: v.detach().double().numpy() for k, v in result.model.state_dict().items()}


class _Reference(types.SimpleNamespace):
    """slimgpt.reference plus the course's operations: what oracle.export runs for a course case."""

    def __getattr__(self, name):
        return getattr(reference, name)


REFERENCE = _Reference(
    answers=lambda question: QUESTIONS[question](),
    gcd_counterexample=_gcd_counterexample,
    remove_set=downdate.remove_set,
    prune_heads_fast=downdate.prune_heads,
    prune_channels_fast=downdate.prune_channels,
    prune_llama=_prune_llama,
    model_perplexity=numpy_llama.model_perplexity,
    prune_heads_lazy=downdate.prune_heads,        # the C++ core's lazy form gives the same result
    prune_channels_lazy=downdate.prune_channels,
)


def counterexample_problem(W, H, head_dim) -> str:
    """'' when (W, H, head_dim) is a valid input on which the grouped Cholesky (Eq. 5) and the
    summed single-column errors pick different cheapest heads; the reason otherwise."""
    W, H = np.asarray(W, dtype=np.float64), np.asarray(H, dtype=np.float64)
    d = int(np.asarray(head_dim).ravel()[0]) if np.size(head_dim) else 0
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]) or d < 2 or W.shape[1] % d or W.shape[1] // d < 2:
        return "return (W (d_out, d_in), H (d_in, d_in), head_dim >= 2 dividing d_in into at least 2 heads)"
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(H))):
        return f"your {'W' if not np.all(np.isfinite(W)) else 'H'} contains NaN or Inf: build finite inputs"
    if not np.allclose(H, H.T) or np.linalg.eigvalsh(H).min() <= 1e-8 * np.abs(H).max():
        return "H must be symmetric positive definite"
    G = np.linalg.inv(H)
    grouped, single = reference.head_errors(W, G, d), reference.head_errors(W, G, d, gcd=False)
    if np.sort(grouped)[1] - np.sort(grouped)[0] < 1e-6 * np.abs(grouped).max():
        return "the cheapest head must be clear (no near-tie in the grouped errors)"
    if int(np.argmin(grouped)) == int(np.argmin(single)):
        return (f"both estimates pick head {int(np.argmin(grouped))}: the grouped Cholesky does not change the "
                "choice on this input (spec §3.1 says when it matters)")
    return ""


# ------------------------------------------------------------------------------------------------
# Cases

def build(ops) -> list[Case]:
    """The course's cases for the operations in `ops`."""
    cases = [Case(f"answers.q{q}", "answers", {"question": q}, f"question {q}", ["question", "project"], "float32")
             for q in QUESTIONS]
    cases.append(Case("gcd_counterexample.yours", "gcd_counterexample", {},
                      "an input on which the grouped Cholesky changes the cheapest head", ["construct", "paper"]))
    r = np.random.default_rng(90)
    X, W = calibration(r, 256, 32), weights(r, 12, 32)
    G = np.linalg.inv(hessian_of(X))
    for name, S in [("single", [7]), ("set", [30, 4, 11, 20]), ("head", list(range(8, 16)))]:
        cases.append(Case(f"remove_set.{name}", "remove_set", {"W": W, "G": G, "S": np.array(S)},
                          "one set removed from W and downdated out of G (spec §3.4)", ["downdate", "project"], "float64_solve"))
    for suffix in ("_fast", "_lazy"):
        same = [op[: -len(suffix)] for op in ops if op.endswith(suffix)]
        for c in oracle.build_cases() if same else []:
            if c.operation in same:
                cases.append(Case(c.id.replace(c.operation, c.operation + suffix, 1), c.operation + suffix,
                                  c.args, c.description, c.tags, "float64_solve", c.float32, c.raises))
    if "prune_heads_lazy" in ops:
        cases += timing_cases()
    if "prune_llama" in ops or "model_perplexity" in ops:
        cases += pipeline_cases()
    return [c for c in cases if c.operation in ops]


def timing_cases() -> list[Case]:
    """prune_heads.timing_k and prune_heads_lazy.timing_k, alternating, on one layer of
    TIMING_SIZE: graded for their values like any case, and their run times compared (grade.py)."""
    r = np.random.default_rng(92)
    n = TIMING_SIZE
    X, W = calibration(r, 4 * n["d_in"], n["d_in"]), weights(r, n["d_out"], n["d_in"], block=n["head_dim"])
    args = {"W": W, "H": hessian_of(X), "n_prune": n["n_prune"], "head_dim": n["head_dim"], "percdamp": 0.01}
    return [Case(f"{op}.timing_{k}", op, args, f"timed: {n['n_prune']} of {n['d_in'] // n['head_dim']} heads, "
                 f"d_in {n['d_in']}", ["timing", "project"], "float64_solve")
            for k in range(TIMING_ROUNDS) for op in ("prune_heads", "prune_heads_lazy")]


def pipeline_cases() -> list[Case]:
    """Unit 3: the trained model pruned layer by layer at the IPR ratios (the golden trace), and its
    perplexity on held-out windows before and after. Checked when built: pruning raises it."""
    weights, config, calib, evaluation = trained_model()
    pruned = pruned_model()
    dense_ppl = numpy_llama.model_perplexity(weights, config, evaluation)
    pruned_ppl = numpy_llama.model_perplexity(pruned, config, evaluation)
    assert pruned_ppl > 1.01 * dense_ppl, (dense_ppl, pruned_ppl)  # the lesson: 11.76 -> 12.03 here
    tags = ["model", "project"]
    return [Case("prune_llama.trained_ipr", "prune_llama",
                 {"weights": weights, "config": config, "token_ids": calib, "target": PIPELINE_TARGET},
                 f"a trained 2-layer tiny LLaMA, 8 x 64 calibration tokens, mean ratio {PIPELINE_TARGET} (Eq. 6, log)",
                 tags, "backend_logits"),
            Case("model_perplexity.dense", "model_perplexity", {"weights": weights, "config": config,
                                                                 "token_ids": evaluation},
                 "the trained model on 8 held-out windows of 64 tokens", tags, "backend_logits"),
            Case("model_perplexity.pruned", "model_perplexity", {"weights": pruned, "config": config,
                                                                  "token_ids": evaluation},
                 "the same model after the golden pipeline (fewer heads and channels per layer)", tags,
                 "backend_logits")]
