"""Benchmark of the C++ core against the published SlimGPT loop (not a test).

Times, on the same inputs, (a) the NumPy float64 reference (slimgpt.reference), (b) the C++
CPU core (slimgpt.ops, backend="cpu"), (c) a faithful torch float32 copy of the published loop
(benchmarks/bench_core_published.py: full inverse every iteration, one head per iteration,
published DGS group sizes) and (d) the CUDA core when a device is present, at SmolLM2-135M
and LLaMA-7B sizes of o_proj (heads) and down_proj (FFN channels). Prints seconds, speedups
against (c), whether the selections agree, and achieved GFLOP/s next to the SGEMM rate
measured in the same run.

    python benchmarks/bench_core.py            # all four cases (long: see --baseline-iters)
    python benchmarks/bench_core.py --quick    # SmolLM2 sizes only (~1 min)

H is synthetic and well conditioned: H = 2 XᵀX / n with n = 2·d_in token rows whose
features have log-normal scales (as activations do); W has column scales spread over a
decade so that saliencies are well separated.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _threads_from_argv(default=1):
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return default


# BLAS threads must be fixed before NumPy/OpenBLAS/torch load: the same count for every
# implementation (default 1: on a shared 2-core machine threaded BLAS degrades badly).
_THREADS = _threads_from_argv()
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(_THREADS)

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_core_published as published  # noqa: E402

from slimgpt import ops  # noqa: E402
from slimgpt._native import has_cuda  # noqa: E402

CASES = [
    # name, kind, d_out, d_in, head_dim, n_prune
    ("SmolLM2-135M o_proj", "heads", 576, 576, 64, 2),
    ("SmolLM2-135M down_proj", "channels", 576, 1536, 1, 307),
    ("LLaMA-7B o_proj", "heads", 4096, 4096, 128, 8),
    ("LLaMA-7B down_proj", "channels", 4096, 11008, 1, 2752),
]


def make_inputs(d_out, d_in, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 2 * d_in
    scale = torch.exp(0.5 * torch.randn(d_in, generator=g))
    X = torch.randn(n, d_in, generator=g) * scale
    H = (2.0 / n) * (X.T @ X)
    del X
    W = torch.randn(d_out, d_in, generator=g) * torch.exp(torch.rand(d_in, generator=g) * 2.3)
    return W.numpy(), H.numpy()


def sgemm_rate(n=2048, reps=3):
    A = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    A @ A
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        A @ A
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / np.median(ts) / 1e9


def timed(f, reps=1):
    ts, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), out


def core_flops(kind, d_out, d_in, sizes):
    """Flops of the C++ core's dense kernels: inverse (spotrf + spotri ≈ N³), then per group
    of s columns: strsm s²N, ssyrk (downdate) s·N², strsm s²·d_out, sgemm 2·d_out·N·s."""
    N = d_in
    inv = N ** 3
    loop = 0
    for i, s in enumerate(sizes):
        loop += s * s * N + 2 * d_out * N * s + s * s * d_out
        if i + 1 < len(sizes):
            loop += s * N * N
    return inv, loop


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="SmolLM2 sizes only")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names to run (default all)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median) of the fast paths at small sizes")
    ap.add_argument("--baseline-iters", type=int, default=2,
                    help="at LLaMA-7B down_proj run only this many published iterations and "
                         "extrapolate (the full run takes hours on 2 cores); 0 = run all")
    ap.add_argument("--skip-reference-above", type=int, default=4096,
                    help="skip the float64 reference when d_in is larger (it would take > 10 min)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for every implementation (OpenBLAS, MKL, torch); default 1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# load average at start: {os.getloadavg()}; cores: {os.cpu_count()}; torch threads: "
          f"{torch.get_num_threads()}")
    rate = sgemm_rate()
    print(f"# SGEMM (NumPy/OpenBLAS, 2048^3) in this run: {rate:.1f} GFLOP/s")
    rows = []
    for name, kind, d_out, d_in, d, n_prune in CASES:
        if args.quick and d_in > 2000:
            continue
        if args.cases and not any(c.strip() in name for c in args.cases.split(",")):
            continue
        big = d_in > 2000
        reps = 1 if big else args.reps
        W, H = make_inputs(d_out, d_in)
        sizes = [1] * n_prune if kind == "heads" else ops.dgs_group_sizes(n_prune)
        row = {"case": name, "shape": f"{d_out}x{d_in}", "prune": n_prune, "iters": len(sizes)}

        if kind == "heads":
            f_cpu = lambda: ops.prune_heads(W, H, n_prune, d, backend="cpu")
        else:
            f_cpu = lambda: ops.prune_channels(W, H, n_prune, backend="cpu")
        t_cpu, (W_cpu, sel_cpu) = timed(f_cpu, reps)
        t_inv, _ = timed(lambda: ops.prune_columns(W, H, [0], backend="cpu"), reps)
        inv_fl, loop_fl = core_flops(kind, d_out, d_in, [d] * n_prune if kind == "heads" else sizes)
        row["sgemm"] = sgemm_rate()  # measured next to the C++ timings (the load drifts)
        row.update(cpu=t_cpu, inv_gflops=inv_fl / t_inv / 1e9,
                   loop_gflops=loop_fl / max(t_cpu - t_inv, 1e-9) / 1e9,
                   all_gflops=(inv_fl + loop_fl) / t_cpu / 1e9)

        # (c) the published loop in torch float32
        Wt, Ht = torch.from_numpy(W), torch.from_numpy(H)
        timings = []
        limit = args.baseline_iters if (big and kind == "channels" and args.baseline_iters) else None
        t0 = time.perf_counter()
        if kind == "heads":
            W_pub, sel_pub = published.prune_heads(Wt, Ht, n_prune, d, timings=timings)
        else:
            W_pub, sel_pub = published.prune_channels(Wt, Ht, sizes, max_iters=limit, timings=timings)
        t_pub = time.perf_counter() - t0
        if limit is not None and limit < len(sizes):
            # remaining iterations cost at least their inverse + factorisations (same N each time)
            mean_inv = np.mean([t["inverse"] for t in timings])
            t_pub += mean_inv * (len(sizes) - limit)
            row["pub_note"] = f"extrapolated from {limit} of {len(sizes)} iterations (lower bound)"
            # selections: compare the first `limit` groups with a C++ run on the same groups
            _, sel_cpu_k = ops.prune_channels(W, H, int(sum(sizes[:limit])), group_sizes=sizes[:limit],
                                              backend="cpu")
            row["agree_pub"] = f"{np.array_equal(sel_cpu_k, sel_pub.numpy())} (first {limit} groups)"
        else:
            row["agree_pub"] = str(np.array_equal(sel_cpu, sel_pub.numpy()))
            row["maxdiff_pub"] = float(np.abs(W_cpu - W_pub.numpy()).max() / np.abs(W_pub.numpy()).max())
        row["pub"] = t_pub

        # (a) the float64 reference
        if d_in <= args.skip_reference_above:
            from slimgpt import reference as ref

            if kind == "heads":
                t_ref, (W_ref, sel_ref) = timed(lambda: ref.prune_heads(W.astype(np.float64), H.astype(np.float64),
                                                                       n_prune, d), 1)
            else:
                t_ref, (W_ref, sel_ref) = timed(lambda: ref.prune_channels(W.astype(np.float64),
                                                                          H.astype(np.float64), n_prune), 1)
            row["ref"] = t_ref
            row["agree_ref"] = str(np.array_equal(sel_cpu, np.asarray(sel_ref)))
            row["maxdiff_ref"] = float(np.abs(W_cpu - W_ref).max() / np.abs(W_ref).max())
        else:
            row["ref"] = None
            row["agree_ref"] = "skipped (> 10 min)"

        # (d) CUDA
        if has_cuda():
            Wc, Hc = Wt.cuda(), Ht.cuda()
            if kind == "heads":
                f_cuda = lambda: ops.prune_heads(Wc, Hc, n_prune, d, backend="cuda")
            else:
                f_cuda = lambda: ops.prune_channels(Wc, Hc, n_prune, backend="cuda")
            f_cuda()
            t_cuda, (W_cu, sel_cu) = timed(lambda: (f_cuda(), torch.cuda.synchronize())[0], 3)
            row["cuda"] = t_cuda
            row["agree_cuda"] = str(np.array_equal(sel_cpu, sel_cu.cpu().numpy()))
        rows.append(row)
        print_row(row, flush=True)

    print("\n| case | W | pruned (iters) | reference f64 s | C++ CPU s | published torch f32 s | CUDA s "
          "| speedup C++ vs published | selections C++ = published / = reference "
          "| C++ inverse GFLOP/s | C++ loop GFLOP/s | SGEMM GFLOP/s (same moment) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref_s = f"{r['ref']:.2f}" if r["ref"] is not None else "skipped"
        cuda_s = f"{r['cuda']:.3f}" if "cuda" in r else "n/a"
        pub = f"{r['pub']:.2f}" + (" *" if "pub_note" in r else "")
        print(f"| {r['case']} | {r['shape']} | {r['prune']} ({r['iters']}) | {ref_s} | {r['cpu']:.3f} | {pub} "
              f"| {cuda_s} | {r['pub'] / r['cpu']:.1f}x | {r['agree_pub']} / {r['agree_ref']} "
              f"| {r['inv_gflops']:.0f} | {r['loop_gflops']:.0f} | {r['sgemm']:.0f} |")
    print(f"\nSGEMM rate in this run: {rate:.1f} GFLOP/s; load average at end: {os.getloadavg()}")
    for r in rows:
        if "pub_note" in r:
            print(f"* {r['case']}: published time {r['pub_note']}")


def print_row(row, flush=False):
    print({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()}, flush=flush)


if __name__ == "__main__":
    main()
