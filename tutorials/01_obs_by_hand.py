# %% [markdown]
# # Tutorial 1: Optimal Brain Surgeon on one column and one head, by hand
#
# **What you will learn**
# - the layer-wise objective ||W Xᵀ − W' Xᵀ||² and its Hessian H = 2 XᵀX / n (Eq. 1);
# - the OBS cost of removing one input column, ε_q = ||W[:,q]||² / G[q,q] with G = H⁻¹, and the
#   update that compensates the other columns (Eq. 4);
# - the inverse downdate G ← G − G[:,q] G[q,:] / G[q,q] (Eq. 3) and why removing a *head*
#   (several columns) needs it;
# - that `slimgpt.reference.prune_columns` (Cholesky form) equals the textbook formulas, and that
#   the result is the least-squares optimum.
#
# **Run**: `python tutorials/01_obs_by_hand.py [--fast] [--out DIR]` (a second or two; `--fast`
# runs the same sizes, so both print the same numbers).
#
# **Expected output**: a few lines per step ending in `ok` (every check compares two independent
# computations and stops the script on a mismatch); the cheapest column q = 2, whose removal with
# compensation costs ε_q/2 = 0.289272 against 2.966019 without (`lesson:` line); the cheapest
# head 2 (exact cost 5.285); and `wrote .../01_obs_by_hand.png` (W before/after, per-column and
# per-head costs).
#
# **Paper**: SlimGPT (arXiv 2412.18110v1) Eqs. (1)-(4) and (5); spec §2.1-2.3, §3.2
# (spec = docs/spec.md).

# %%
import numpy as np
import matplotlib.pyplot as plt

from slimgpt import reference as ref
from _tutorial import check, check_lesson, check_max_diff, setup

_, out = setup("Tutorial 1: OBS on one column and one head by hand")   # tiny already: --fast changes nothing
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. A tiny layer and its Hessian
# W is 4 × 6 (d_out × d_in, PyTorch layout): 3 heads of head_dim 2. X holds n tokens of inputs,
# with some correlation between inputs so that H is not diagonal.

# %%
d_out, d_in, head_dim, n = 4, 6, 2, 512
A = np.eye(d_in) + 0.5 * rng.standard_normal((d_in, d_in))
X = rng.standard_normal((n, d_in)) @ A            # (n, d_in) calibration inputs
W = rng.standard_normal((d_out, d_in))           # (d_out, d_in)
H = ref.hessian(X)                               # Eq. (1): H = 2 XᵀX / n
print("H = 2 X^T X / n:")
check_max_diff("hessian(X) vs 2 X^T X / n", H, 2 * X.T @ X / n, 1e-14)
G = np.linalg.inv(H)                             # G = H⁻¹

# %% [markdown]
# ## 2. One column (Eq. 4)
# The cost of removing column q while every other column compensates optimally is
# ε_q = ||W[:,q]||² / G[q,q]; the update is W ← W − (W[:,q] / G[q,q]) · G[q,:], an outer product
# that zeroes column q. With H = 2XᵀX/n the mean squared output change per token is ε_q / 2,
# which is what `reconstruction_error` returns.

# %%
eps = np.sum(W ** 2, axis=0) / np.diag(G)        # Eq. (4): error of pruning each column
q = int(np.argmin(eps))
print(f"\ncolumn costs eps = {np.round(eps, 4)}; cheapest column q = {q}")
W1 = W - np.outer(W[:, q] / G[q, q], G[q, :])    # Eq. (4): compensating update
check("column q after the update is zero (max |W1[:,q]|)", float(np.max(np.abs(W1[:, q]))), 0.0, atol=1e-12)
check("loss increase ||(W - W1) X^T||^2 / n == eps_q / 2",
      float(np.sum(((W - W1) @ X.T) ** 2) / n), eps[q] / 2)
check("reference.reconstruction_error(W, W1, H) == eps_q / 2", ref.reconstruction_error(W, W1, H), eps[q] / 2)
check_max_diff("reference.prune_columns(W, H, [q]) vs by hand", ref.prune_columns(W, H, [q]), W1)
K = np.setdiff1d(np.arange(d_in), [q])
W_ls = W @ H[:, K] @ np.linalg.inv(H[np.ix_(K, K)])   # least-squares optimum of the survivors
check_max_diff("survivors == least-squares optimum W H[:,K] (H_KK)^-1", W1[:, K], W_ls, 1e-10)
W_naive = W.copy()
W_naive[:, q] = 0.0                                # pruning without compensation, for contrast
loss_naive = ref.reconstruction_error(W, W_naive, H)
check_lesson("compensation lowers the cost of removing column q", eps[q] / 2 < loss_naive,
             f"{eps[q] / 2:.6f} with, {loss_naive:.6f} without")

# %% [markdown]
# ## 3. One head = several columns (Eq. 3 between the columns)
# Remove the columns of head j one at a time: Eq. (4) for the first, then downdate G with Eq. (3),
# then Eq. (4) for the next with the *downdated* G. Recomputing inv(H without q) would give the
# same G — but inv(H)[K,K] (just deleting row and column q of G) would not.

# %%
costs_exact = ref.head_cost_exact(W, G, head_dim)           # tr(W_C (G_CC)⁻¹ W_Cᵀ), spec §2.2
j = int(np.argmin(costs_exact))
C = list(range(j * head_dim, (j + 1) * head_dim))
print(f"\nexact head costs {np.round(costs_exact, 4)}; cheapest head j = {j}, columns {C}")
Wh, Gh, total = W.copy(), G.copy(), 0.0
for c in C:
    total += np.sum(Wh[:, c] ** 2) / Gh[c, c]                   # Eq. (4) cost with current G
    Wh = Wh - np.outer(Wh[:, c] / Gh[c, c], Gh[c, :])           # Eq. (4) update
    Gh = Gh - np.outer(Gh[:, c], Gh[c, :]) / Gh[c, c]           # Eq. (3) downdate
    print(f"  removed column {c}: running OBS cost {total:.6f}")
check("sequential cost == exact joint head cost", total, costs_exact[j])
Kh = np.setdiff1d(np.arange(d_in), C)
check_max_diff("downdated G on survivors == inv(H[K,K])", Gh[np.ix_(Kh, Kh)], np.linalg.inv(H[np.ix_(Kh, Kh)]), 1e-10)
check_max_diff("reference.prune_columns(W, H, C) vs sequential", ref.prune_columns(W, H, C), Wh)
check_max_diff("reference.prune_columns_naive(W, H, C) vs sequential", ref.prune_columns_naive(W, H, C), Wh)
W_heads, pruned = ref.prune_heads(W, H, 1, head_dim)
print(f"  reference.prune_heads picks head {pruned.tolist()} (by the Eq. 5 estimate; exact choice: {j})")

# %% [markdown]
# ## 4. The head estimate (Eq. 5) and the summed single-column costs
# SlimGPT scores heads with the grouped Cholesky: L_j = chol(G[C_j, C_j]),
# E_j = Σ_k ||W[:, j·d+k]||² / L_j[k,k]². L_j[k,k]² is exactly the downdated diagonal that the
# sequential loop above used; only the within-head W update is ignored. Summing the plain
# single-column costs ε ignores the downdate too (tutorial 2 shows when that matters).

# %%
gcd = ref.head_errors(W, G, head_dim)
summed = eps.reshape(-1, head_dim).sum(axis=1)
for jj in range(d_in // head_dim):
    print(f"  head {jj}: exact {costs_exact[jj]:9.5f}  grouped Cholesky {gcd[jj]:9.5f}  summed columns {summed[jj]:9.5f}")
Lj = np.linalg.cholesky(G[np.ix_(C, C)])
check("L_j[1,1]^2 == downdated G[c1,c1] after removing c0",
      Lj[1, 1] ** 2, G[C[1], C[1]] - G[C[1], C[0]] ** 2 / G[C[0], C[0]])

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
vmax = float(np.max(np.abs(W)))
axes[0].imshow(np.hstack([W, np.full((d_out, 1), np.nan), Wh]), cmap="coolwarm", vmin=-vmax, vmax=vmax)
axes[0].set_title(f"W (left) and W after removing head {j} (right)")
axes[1].bar(range(d_in), eps, color=["C3" if c == q else "C0" for c in range(d_in)])
axes[1].set(title="single-column OBS cost ε_q (Eq. 4)", xlabel="column q")
x = np.arange(d_in // head_dim)
for k, (vals, label) in enumerate([(costs_exact, "exact"), (gcd, "grouped Cholesky (Eq. 5)"), (summed, "summed ε")]):
    axes[2].bar(x + (k - 1) * 0.27, vals, width=0.27, label=label)
axes[2].set(title="head costs", xlabel="head j")
axes[2].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "01_obs_by_hand.png", dpi=100)
print(f"\nwrote {out / '01_obs_by_hand.png'}")
