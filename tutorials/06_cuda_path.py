# %% [markdown]
# # Tutorial 6: the CUDA path against the C++ core and the reference
#
# **What you will learn**
# - that `slimgpt.ops` runs the same operations on three backends with one signature
#   (`backend="reference" | "cpu" | "cuda"`), and how to check a fast path against the float64
#   reference: max differences at the float32 tolerance, selections compared exactly;
# - the golden-case oracle on the CUDA backend (`slimgpt oracle check --impl slimgpt.ops
#   --backend cuda --profile float32`);
# - where the time goes at SmolLM2 and LLaMA-7B layer sizes (o_proj 576/4096, down_proj 1536/11008).
#
# **Run**: `python tutorials/06_cuda_path.py [--fast] [--out DIR]` (needs a CUDA build of the core
# and a GPU: `SLIMGPT_CUDA=ON pip install .`; about a minute). Without CUDA it prints
# `SKIPPED: ...` and exits 0.
#
# **Expected output**: with a GPU, the oracle summary for the cuda backend (all pass), then a table
# per size: seconds for reference / cpu / cuda, max relative difference of W_new against the
# reference (≤ 1e-4), and whether the selections agree; `wrote .../06_cuda_path.png`.
#
# **Paper**: SlimGPT Algorithm 1, DGS, Eqs. (3)-(5); Table 3 (pruning runtime: LLaMA-7B 20% in
# ~11 min on one A100); spec §3.4, §7.4.

# %%
import sys
import tempfile
import time

import numpy as np

import slimgpt
from _tutorial import setup

fast, out = setup("Tutorial 6: the CUDA path")
if not slimgpt.has_cuda():
    print("SKIPPED: no CUDA build of slimgpt._core or no visible CUDA device "
          "(slimgpt.has_cuda() is False). Build with `SLIMGPT_CUDA=ON pip install .` on a GPU machine.")
    sys.exit(0)

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from slimgpt import ops, oracle  # noqa: E402
from slimgpt._native import core  # noqa: E402

# %% [markdown]
# ## 1. The oracle on the CUDA backend

# %%
with tempfile.TemporaryDirectory() as golden:
    oracle.export(golden)
    result = oracle.check(golden, "slimgpt.ops", profile="float32", backend="cuda")
print(result.table().splitlines()[-1])
if not result.ok:
    print(result.table())
    sys.exit(1)

# %% [markdown]
# ## 2. Timings at real layer sizes
# A synthetic H from n = 4·d_in tokens; heads: prune 25% of the heads of an o_proj; channels:
# prune 25% of a down_proj's inputs with DGS. The reference runs only at the smaller sizes.

# %%
rng = np.random.default_rng(0)
sizes = [("SmolLM2 o_proj", "heads", 576, 576, 64), ("SmolLM2 down_proj", "channels", 576, 1536, 1)]
if not fast:
    sizes += [("LLaMA-7B o_proj", "heads", 4096, 4096, 128), ("LLaMA-7B down_proj", "channels", 4096, 11008, 1)]
rows = []
for name, kind, d_out, d_in, head_dim in sizes:
    X = rng.standard_normal((4 * d_in, d_in)).astype(np.float32)
    W = (rng.standard_normal((d_out, d_in)) * np.repeat(rng.uniform(0.5, 2, d_in // head_dim), head_dim)).astype(np.float32)
    H = (2.0 * X.T @ X / X.shape[0]).astype(np.float32)
    n = (d_in // head_dim) // 4
    backends = ["cpu", "cuda"] if core() is not None else ["cuda"]
    if d_in <= 1536:
        backends = ["reference"] + backends
    res = {}
    for b in backends:
        Wb, Hb = (torch.from_numpy(W).cuda(), torch.from_numpy(H).cuda()) if b == "cuda" else (W, H)
        t0 = time.perf_counter()
        if kind == "heads":
            Wn, idx = ops.prune_heads(Wb, Hb, n, head_dim, percdamp=0.01, backend=b)
        else:
            Wn, idx = ops.prune_channels(Wb, Hb, n, percdamp=0.01, backend=b)
        if b == "cuda":
            torch.cuda.synchronize()
        res[b] = (time.perf_counter() - t0, np.asarray(Wn.cpu() if hasattr(Wn, "cpu") else Wn, dtype=np.float64),
                  sorted(np.asarray(idx).tolist()))
    base = res.get("reference", res.get("cpu"))
    for b, (sec, Wn, idx) in res.items():
        diff = float(np.max(np.abs(Wn - base[1])) / np.max(np.abs(base[1])))
        rows.append((name, b, sec, diff, idx == base[2]))
        print(f"{name:<20} {b:>9}: {sec:8.3f} s  max rel diff vs {'reference' if 'reference' in res else 'cpu'} "
              f"{diff:.1e}  same selection {idx == base[2]}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
names = [s[0] for s in sizes]
for k, b in enumerate(["reference", "cpu", "cuda"]):
    vals = [next((r[2] for r in rows if r[0] == nm and r[1] == b), np.nan) for nm in names]
    ax.bar(np.arange(len(names)) + (k - 1) * 0.27, vals, width=0.27, label=b)
ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
ax.set(yscale="log", ylabel="seconds", title="prune 25%: time per backend")
ax.legend()
fig.tight_layout()
fig.savefig(out / "06_cuda_path.png", dpi=100)
print(f"\nwrote {out / '06_cuda_path.png'}")
