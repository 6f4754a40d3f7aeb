# %% [markdown]
# # Tutorial 3: Dynamic Group Size — selection quality and time vs group size
#
# **What you will learn**
# - FFN channels have no block structure, so greedy one-column OBS (group size 1) would be the
#   locally best selection — and far too slow: one full inverse of H per removed channel;
# - pruning the g cheapest channels per iteration trades selection quality for time, because
#   compensation reshuffles the error ranking after every group;
# - the published Dynamic Group Size schedule (a large first group, then 64s) gets close to
#   small-group quality at large-group cost; the schedule is
#   b₀ = ⌊(T−512)/2⌋, g_k = min(T − done, max(b_k, 64), 1024), b_{k+1} = ⌊(b_k−512)/2⌋.
#
# **Run**: `python tutorials/03_dynamic_group_size.py [--fast] [--out DIR]` (~5 s on 2 cores;
# `--fast` runs the same sizes, so both print the same numbers).
#
# **Expected output**: the DGS schedules for the spec's T values (688 → 88, 64×9, 24;
# 2752 → 1024, 304, 64×22, 16); a check that the published loop and the one-inverse twin agree
# (max rel diff ~1e-13); then, for a 64 × 1024 layer with T = 768 pruned (DGS: `128, 64×10`), a
# table of group size → re-inversions of H, the published loop's time, and the reconstruction
# error relative to the best: 1.0000 at g = 8, 1.0016 at g = 64, 1.0022 at g = 128, 1.1742 at
# g = 512, and DGS 1.0016 with 11 re-inversions against g = 64's 12; three `lesson:` lines check
# that DGS's first group is the large one, that large fixed groups choose worse, and that DGS
# pays fewer re-inversions than g = 64 at an error no worse than g = 128.
# `wrote .../03_dynamic_group_size.png`.
#
# **Paper**: SlimGPT, Batched Greedy Pruning, "Dynamic Group Size"; Table 5 (−DGS = fixed 128); Eqs. (3)-(4) per
# group; spec §4.

# %%
import numpy as np
import matplotlib.pyplot as plt

from slimgpt import reference as ref
from _tutorial import Timer, check_lesson, check_max_diff, check_same, setup

_, out = setup("Tutorial 3: Dynamic Group Size")   # --fast changes nothing: it runs in seconds
rng = np.random.default_rng(3)

# %% [markdown]
# ## 1. The schedule

# %%
def compact(sizes):
    """[64, 64, 64, 24] -> '64×3, 24'."""
    parts, i = [], 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        parts.append(f"{sizes[i]}" + (f"×{j - i}" if j - i > 1 else ""))
        i = j
    return ", ".join(parts)


for T in (40, 688, 1200, 2752, 5504):
    sizes = ref.dgs_group_sizes(T)
    print(f"T = {T:5d}: {compact(sizes):<32} ({len(sizes)} iterations)")

# %% [markdown]
# ## 2. A down_proj-like layer wide enough for DGS's large first group
# The first group b₀ = ⌊(T−512)/2⌋ exceeds 64 only when T > 640 channels are pruned: below that
# DGS is plain groups of 64. SmolLM2-135M's down_proj is 576 × 1536; we take a 64 × 1024 layer and
# prune T = 768 of its channels (three quarters), so DGS is `128, 64×10`. The inputs (SwiGLU
# activations) are heavy-tailed: a few channels carry most of the energy; we mimic that with
# log-normal channel scales and some correlation.
#
# The published loop re-inverts the 1024 × 1024 H once per group; the selections and weights
# are the same with one inverse and exact set downdates (`reference/downdate.py`, the algorithm
# the C++ core runs; tutorial 7). So the table is computed with the downdate twin, checked once
# against the published loop, and the published loop's time is given as iterations × one
# re-inversion (measured).

# %%
d_out, d_in = 64, 1024     # the same with --fast: the downdate twin makes every row cheap
n = 4 * d_in
T = (3 * d_in) // 4
scales = np.exp(rng.normal(0, 1.0, d_in))
mix = np.eye(d_in) + 0.4 * rng.standard_normal((d_in, d_in)) / np.sqrt(d_in)
X = (rng.standard_normal((n, d_in)) * scales) @ mix
W = rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)
H = ref.hessian(X)
dgs = ref.dgs_group_sizes(T)
group_sizes = [8, 16, 32, 64, 128, 256, 512]
print(f"\ndown_proj-like layer {d_out} x {d_in}, prune T = {T} channels; DGS: {compact(dgs)}")

with Timer() as t:
    W_pub, pruned_pub = ref.prune_channels(W, H, T, group_sizes=512)          # the published loop
per_iteration = t.seconds / -(-T // 512)                                     # ceil(T / 512) iterations
W_twin, pruned_twin = ref.downdate.prune_channels(W, H, T, group_sizes=512)   # one inverse
check_max_diff("published loop == one-inverse twin (g = 512): W", W_twin, W_pub, 1e-9)
check_same("published loop == one-inverse twin (g = 512): channels", pruned_twin, pruned_pub)

# %%
results = []
for g in group_sizes + ["DGS"]:
    W_new, pruned = ref.downdate.prune_channels(W, H, T, group_sizes=None if g == "DGS" else g)
    iters = len(dgs) if g == "DGS" else -(-T // g)
    results.append((g, iters, ref.reconstruction_error(W, W_new, H), set(pruned.tolist())))
best = min(r[2] for r in results)
ref_set = results[0][3]
print(f"\n{'group size':>10} {'re-inversions':>13} {'published loop s':>16} {'recon. error':>13} {'/ best':>7}"
      f" {'same channels as g=' + str(group_sizes[0]):>24}")
for g, iters, err, chosen in results:
    print(f"{g!s:>10} {iters:13d} {iters * per_iteration:16.2f} {err:13.5g} {err / best:7.4f}"
          f" {len(chosen & ref_set) / T:24.1%}")
print(f"(published loop: {per_iteration:.2f} s per re-inversion of the {d_in} x {d_in} H, measured above)")

# %% [markdown]
# Without compensation the choice would not matter much; with it, the ranking changes after each
# group, so small groups choose better. The time is dominated by one d_in × d_in inverse per
# iteration — the count the published code pays: with DGS, 672 inversions of 11008² over the 32
# down_proj layers of LLaMA-7B at 20%, 25 in the deepest layer (T = 2752) where groups of 64
# would need 43 (spec §4.2). The larger T, the more the large first group saves; at T = 768 here
# it saves one. In the paper's ablation (Table 5, LLaMA-7B at 50%), fixed groups of 128 instead
# of DGS lower the zero-shot average from 52.23 to 51.63 (spec §7.6). The checks below are the
# lesson.

# %%
by = {r[0]: r for r in results}
check_lesson("DGS's first group is larger than the later ones", dgs[0] > max(dgs[1:]), compact(dgs))
check_lesson("larger fixed groups choose worse (g=512 vs g=8)", by[512][2] > by[8][2],
             f"{by[512][2] / best:.4f} vs {by[8][2] / best:.4f} of best")
check_lesson("DGS: fewer re-inversions than g=64, error no worse than g=128",
             by["DGS"][1] < by[64][1] and by["DGS"][2] <= by[128][2],
             f"{by['DGS'][1]} vs {by[64][1]}; {by['DGS'][2] / best:.4f} vs {by[128][2] / best:.4f}")

# %%
fixed = [r for r in results if r[0] != "DGS"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
axes[0].semilogx([r[0] for r in fixed], [r[2] / best for r in fixed], "o-", label="fixed group size")
axes[0].axhline(by["DGS"][2] / best, color="C3", ls="--", label=f"DGS ({compact(dgs)})")
axes[0].set(xlabel="group size g", ylabel="reconstruction error / best", title=f"selection quality, T = {T} of {d_in}")
axes[0].legend()
axes[1].loglog([r[0] for r in fixed], [r[1] for r in fixed], "o-", label="fixed group size")
axes[1].axhline(by["DGS"][1], color="C3", ls="--", label="DGS")
axes[1].set(xlabel="group size g", ylabel="re-inversions of H (published loop)", title="cost")
axes[1].legend()
fig.tight_layout()
fig.savefig(out / "03_dynamic_group_size.png", dpi=100)
print(f"\nwrote {out / '03_dynamic_group_size.png'}")
