# %% [markdown]
# # Tutorial 4: the Incremental Pruning Ratio and error accumulation across layers
#
# **What you will learn**
# - the paper's Figure 2 experiment: prune **only the first layer** (heads and FFN channels) by
#   25%, 50% and 75%, then watch the error of every later layer's output grow with depth —
#   faster than the error injected in layer 0 — because each layer reconstructs its own output
#   from already-perturbed inputs;
# - why that motivates pruning shallow layers *less* and deep layers *more*: the Incremental
#   Pruning Ratio r_i = r₀ + (r_{n−1} − r₀)·log(i+1)/log(n) (Eq. 6), and its alternatives
#   (linear, uniform, decreasing — Table 6);
# - how to pick r₀ and r_{n−1} for a target mean ratio (closed form of the mean, spec §5.4).
#
# **Run**: `python tutorials/04_incremental_pruning_ratio.py [--fast] [--out DIR]`
# (SmolLM2-135M: ~3-8 min on 2 cores). `--fast` (what the course and the test suite run) uses a
# tiny LLaMA-style model (6 layers, 8 heads, FFN 96, byte tokens) that it first trains for 150
# AdamW steps on the first 90% of the shipped WikiText-2 text (~20-30 s in all on 2 cores): a
# *random* tiny model is no language model, and pruning it can even lower its perplexity.
#
# **Expected output** (`--fast`; numbers from `python tutorials/04_incremental_pruning_ratio.py
# --fast`): the schedules for a 20% target on 6 layers (log: 0.0625 → 0.3024, mean 0.2000) and
# the LLaMA-7B recipe; `trained tiny-llama ... loss 6.11 -> 2.41`; dense PPL 9.764 on held-out
# WikiText-2 bytes; pruning only layer 0 by 25/50/75% gives PPL 9.963 / 10.895 / 16.474, and the
# relative FFN-output error of the last layer is 2.6-4.8x that of layer 0 itself; two `lesson:`
# lines check exactly that (PPL rises with the ratio; the last layer's error exceeds layer 0's).
# Without `--fast` (SmolLM2-135M, 30 layers): dense PPL 55.0 → ≈ 71.8 / 96.0 / 196.3, the error
# growing with depth by two to three orders of magnitude. Both write `.../04_ipr_schedules.png`
# and `.../04_error_vs_depth.png` (the Figure 2 analogue).
#
# **Paper**: SlimGPT Eq. (6) (Incremental Pruning Ratio), Figure 2 (LLaMA-7B: PPL 12.63 dense → 12.64 / 13.98 / 21.49
# after pruning layer 0 by 25/50/75%), Table 6; spec §5, §6.3.

# %%
import copy

import numpy as np
import matplotlib.pyplot as plt
import torch

from slimgpt import reference as ref
from slimgpt.evaluate import perplexity
from slimgpt.loaders import load_model
from slimgpt.pipeline import PruneSettings, prune_model
from slimgpt.textdata import calibration_windows, wikitext2_tokens
from _tutorial import Timer, check_lesson, setup, trained_tiny_model

fast, out = setup("Tutorial 4: Incremental Pruning Ratio and error accumulation")
torch.manual_seed(0)
torch.set_num_threads(2)

# %% [markdown]
# ## 1. Schedules for a 20% target
# `ipr_for_target` picks the last-layer ratio so that the mean is the target; with r₀ = 0.3125·t
# (the published 20% recipe: 0.0625) the log curve ends near 0.25 on 32 layers.

# %%
model_name = "tiny-llama" if fast else "smollm2-135m"
n_layers = 6 if fast else 30
target = 0.2
schedules = {s: ref.ipr_for_target(n_layers, target, strategy=s)
             for s in ("log", "linear", "uniform", "log-decrease", "linear-decrease")}
print(f"{n_layers} layers, target mean ratio {target}:")
for s, r in schedules.items():
    print(f"  {s:<16} first {r[0]:.4f}  last {r[-1]:.4f}  mean {r.mean():.4f}")
llama = ref.ipr_ratios(32, 0.0625, 0.25)
print(f"  LLaMA-7B recipe (32 layers, 0.0625 -> 0.25): mean {llama.mean():.6f}, "
      f"heads kept {[32 - round(32 * r) for r in llama[:4]]}... (spec §5.5)")

fig, ax = plt.subplots(figsize=(6, 3.8))
for s, r in schedules.items():
    ax.plot(r, "o-" if s == "log" else "-", ms=3, label=s)
ax.axhline(target, color="k", lw=0.6, ls=":")
ax.set(xlabel="layer i", ylabel="pruning ratio r_i", title=f"IPR schedules, {n_layers} layers, mean {target}")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "04_ipr_schedules.png", dpi=100)
print(f"wrote {out / '04_ipr_schedules.png'}")

# %% [markdown]
# ## 2. Figure 2: prune only layer 0
# We prune heads and channels of layer 0 only (per-layer ratios r for layer 0 and 0 elsewhere,
# without rounding to a global target), with the usual calibration data, then run
# dense and pruned models on the same evaluation windows and compare every layer's FFN output
# (down_proj's output) — the quantity Figure 2 plots (here relative to the dense output's energy).

# %%
if fast:
    dense, tok, stream = trained_tiny_model(model_name, steps=150, num_hidden_layers=n_layers)
else:
    loaded = load_model(model_name)
    dense, tok = loaded.model.eval(), loaded.tokenizer
    stream = wikitext2_tokens(tok)
cfg = dense.config
n_samples, seqlen = (8, 64) if fast else (16, 128)
calib = calibration_windows(tok, n_samples, seqlen, seed=0)
eval_seqlen, eval_windows = (64, 4) if fast else (128, 8)
eval_ids = stream[: eval_seqlen * eval_windows].view(eval_windows, eval_seqlen)
ppl_tokens = eval_seqlen * (8 if fast else 32)
L = cfg.num_hidden_layers
n_heads, m = cfg.layer_heads[0], cfg.layer_intermediate[0]
print(f"\n{model_name}: {L} layers, {n_heads} heads, FFN {m}; calibration {n_samples} x {seqlen} C4 tokens")


@torch.no_grad()
def ffn_outputs(model, ids):
    """Per-layer down_proj outputs (L tensors of shape B × T × D) for token windows `ids`."""
    outs, hooks = [], []
    for layer in model.model.layers:
        hooks.append(layer.mlp.register_forward_hook(lambda mod, inp, o: outs.append(o.detach().clone())))
    model(ids)
    for h in hooks:
        h.remove()
    return outs


ref_outs = ffn_outputs(dense, eval_ids)
ppl_dense = perplexity(dense, stream, seqlen=eval_seqlen, max_tokens=ppl_tokens)["ppl"]
held_out = "held-out " if fast else ""
print(f"dense perplexity on {ppl_tokens} {held_out}WikiText-2 tokens (seqlen {eval_seqlen}): {ppl_dense:.3f}")

curves, ppl_pruned = {}, {}
for r in (0.25, 0.5, 0.75):
    model = copy.deepcopy(dense)
    counts = [(round(n_heads * r), round(m * r))]     # layer 0 only; the others keep everything
    with Timer() as t:
        prune_model(model, calib, PruneSettings(ratios=[r] + [0.0] * (L - 1), hit_target=False, n_samples=n_samples,
                                                seqlen=seqlen, percdamp=0.01),
                    log=lambda msg: None, progress=False)
    outs = ffn_outputs(model, eval_ids)
    # relative squared error of each layer's FFN output: ||Δ||² / ||dense||² (layers of a trained
    # model differ a lot in output scale, so the absolute error would mostly show the scale)
    err = np.array([float(((o - d) ** 2).sum() / (d ** 2).sum()) for o, d in zip(outs, ref_outs)])
    ppl = perplexity(model, stream, seqlen=eval_seqlen, max_tokens=ppl_tokens)["ppl"]
    curves[r], ppl_pruned[r] = err, ppl
    print(f"layer 0 pruned by {r:.0%}: {counts[0][0]} heads, {counts[0][1]} channels removed "
          f"({t.seconds:.1f} s); PPL {ppl:.3f}; FFN-output rel. error layer 0 {err[0]:.3e}, last {err[-1]:.3e} "
          f"(x{err[-1] / max(err[0], 1e-30):.1f})")

# %% [markdown]
# The lesson, checked: pruning layer 0 harder costs more perplexity, and the error injected in
# layer 0 is not just carried forward — every later layer's output is further off than layer 0's,
# because each layer computes on already-perturbed inputs. The deeper a layer, the more error it
# inherits before it is even pruned — so, under one budget, shallow layers should be pruned less
# (IPR).

# %%
ppls = [ppl_dense] + [ppl_pruned[r] for r in curves]
check_lesson("perplexity rises with layer 0's pruning ratio", all(a < b for a, b in zip(ppls, ppls[1:])),
             " < ".join(f"{p:.2f}" for p in ppls))
check_lesson("the last layer's error exceeds layer 0's (every ratio)",
             all(err[-1] > err[0] for err in curves.values()),
             ", ".join(f"x{err[-1] / err[0]:.1f}" for err in curves.values()))

# %%
fig, ax = plt.subplots(figsize=(6, 3.8))
for r, err in curves.items():
    ax.semilogy(range(L), err, "o-", ms=3, label=f"layer 0 pruned by {r:.0%}")
ax.set(xlabel="layer", ylabel="FFN output error ||Δ||² / ||dense||²", title=f"{model_name}: error vs depth (Fig. 2)")
ax.xaxis.get_major_locator().set_params(integer=True)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "04_error_vs_depth.png", dpi=100)
print(f"\nwrote {out / '04_error_vs_depth.png'}")
