"""Benchmark of the C++ core against the published SlimGPT loop and the SGEMM roofline (not a test).

For each case (SmolLM2-135M and LLaMA-7B sizes of o_proj, heads, and down_proj, FFN channels)
and each thread count (default 1 and 2), in one run:

- **C++**: the core's whole operation (`slimgpt._core.prune_heads / prune_channels`: checks,
  normalisation, factorisation, every downdate, compensation, scoring and gather) with
  `_core.set_num_threads(t)`; median of --reps at small sizes, one run at LLaMA sizes;
- **published**: `benchmarks/bench_core_published.py`, a torch float32 copy of the published
  loop (full inverse every iteration), with `torch.set_num_threads(t)`;
- **SGEMM roofline at t threads**, measured right before the C++ timing: the best of OpenBLAS's
  own t-threaded sgemm (the core's library, scipy-openblas32) and t concurrent single-threaded
  sgemm calls (the core's own way of using t threads), 2048³ each;
- **flops**: *nominal*, the work of "one inverse, then exact block downdates" as specified
  (N³ for the inverse; per removed set of s columns s·N² for the downdate (not after the last),
  2·d_out·N·s for the compensation, s²·N + s²·d_out for the triangular solves), and
  *executed*, what the core actually computes (docs/cpp.md): 2N³/3 for spotrf + strtri, N² − c²
  per removed column c for its row of G read from M = L⁻¹, 2·s·R·N for the earlier downdates
  (R columns removed before the set), and the same solves and compensation;
- **CUDA**: the same operation through `slimgpt.ops` on the CUDA core (torch CUDA tensors,
  float32, synchronised; median of --reps, one run at LLaMA sizes) and whether its selection equals
  the C++ core's; "skipped" without a CUDA build or device (docs/cpp.md: compiled, never run on a
  GPU until benchmarks/gpu_check.sh has run this column);
- **roofline fraction**: (nominal flops / SGEMM rate) / C++ time, i.e. how close the whole
  operation comes to doing the specified work at the SGEMM rate; and the kernel efficiency,
  executed flops / time / SGEMM rate.

Selections are compared (exactly) between C++ at every thread count (W bit-identical too), the
published loop and the float64 reference (slimgpt.reference, which re-inverts every iteration;
above --skip-reference-above, reference.downdate, its one-inverse float64 twin).

    python benchmarks/bench_core.py                 # all cases, 1 and 2 threads (~30 min on 2 busy cores)
    python benchmarks/bench_core.py --quick         # SmolLM2 sizes only
    python benchmarks/bench_core.py --cases "LLaMA-7B o_proj" --threads 2
    python benchmarks/bench_core.py --no-published --no-reference   # the C++ core and the roofline only

A core without `set_num_threads` (before the core had its own threads) runs with OpenBLAS's own
threads set to t instead.

H is synthetic and well conditioned: H = 2 XᵀX / n with n = 2·d_in token rows whose features
have log-normal scales (as activations do); W has column scales spread over a decade so that
saliencies are well separated.
"""
from __future__ import annotations

import os

# NumPy's OpenBLAS (the float64 reference) on one thread, set before NumPy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_core_published as published  # noqa: E402

from slimgpt import ops  # noqa: E402
from slimgpt._native import core, has_cuda  # noqa: E402

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


# --- the SGEMM roofline, on the core's own BLAS ----------------------------------------------

def _openblas():
    import scipy_openblas32

    lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so"), mode=ctypes.RTLD_GLOBAL)
    lib.scipy_cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                                          ctypes.c_void_p, ctypes.c_int, ctypes.c_float,
                                                          ctypes.c_void_p, ctypes.c_int]
    return lib


def _sgemm(lib, A, B, C):
    n = A.shape[0]
    lib.scipy_cblas_sgemm(101, 111, 111, n, n, n, 1.0, A.ctypes.data, n, B.ctypes.data, n, 0.0, C.ctypes.data, n)


def sgemm_rate(threads, n=2048, reps=3):
    """GFLOP/s of SGEMM (n³) at `threads`: the best of OpenBLAS's own threaded sgemm and
    `threads` concurrent single-threaded calls (ctypes releases the GIL), median of `reps`."""
    lib = _openblas()
    rng = np.random.default_rng(0)
    mats = [[rng.standard_normal((n, n), dtype=np.float32) for _ in range(3)] for _ in range(threads)]
    own, concurrent = [], []
    lib.scipy_openblas_set_num_threads(threads)
    try:
        _sgemm(lib, *mats[0])
        for _ in range(reps):
            t = time.perf_counter()
            _sgemm(lib, *mats[0])
            own.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    finally:
        lib.scipy_openblas_set_num_threads(1)  # the core's setting (cpp/parallel.h)
    for _ in range(reps):
        ts = [threading.Thread(target=_sgemm, args=(lib, *m)) for m in mats]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        concurrent.append(threads * 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return max(float(np.median(own)), float(np.median(concurrent)))


# --- flop counts --------------------------------------------------------------------------------

def nominal_flops(d_out, N, sizes):
    """One inverse, then per set: downdate s·N² (not after the last), compensation
    2·d_out·N·s, triangular solves s²·N + s²·d_out."""
    f = N ** 3
    for i, s in enumerate(sizes):
        f += 2 * d_out * N * s + s * s * N + s * s * d_out + (s * N * N if i + 1 < len(sizes) else 0)
    return float(f)


def executed_flops(d_out, N, sizes, pruned_columns):
    """What the core computes (docs/cpp.md): spotrf + strtri 2N³/3; the row of G of each removed
    column c read from M = L⁻¹ below c, N² − c²; per set 2·s·R·N for the downdates of the R
    columns removed before it, s²·N + s²·d_out for the solves, 2·d_out·N·s for W −= E Ut."""
    c = np.asarray(pruned_columns, dtype=np.float64)
    f = 2 * N ** 3 / 3 + float(np.sum(N * N - c * c))
    R = 0
    for s in sizes:
        f += 2 * s * R * N + s * s * N + s * s * d_out + 2 * d_out * N * s
        R += s
    return float(f)


def set_core_threads(t):
    """The core's threads; a core without its own (an older build): OpenBLAS's threads."""
    C = core()
    if hasattr(C, "set_num_threads"):
        C.set_num_threads(t)
    else:
        _openblas().scipy_openblas_set_num_threads(t)


def run_core(kind, W, H, n_prune, d, sizes, reps=1):
    """(median seconds of the core call alone, (W_new, selection)); W is copied outside the timing."""
    C = core()
    sizes = np.asarray(sizes, np.int64)
    ts = []
    for _ in range(reps):
        Wc = np.array(W, dtype=np.float32, order="C")
        t = time.perf_counter()
        if kind == "heads":
            out = C.prune_heads(Wc, H, n_prune, d, 0.0, True, True, None)
        else:
            out = C.prune_channels(Wc, H, sizes, 0.0, True)
        idx = out[0] if isinstance(out, tuple) else out     # an older core returns the indices alone
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), (Wc, np.asarray(idx))


def run_cuda(kind, W, H, n_prune, d, sizes, reps=1):
    """(median seconds, selection) of the operation on the CUDA core through slimgpt.ops, inputs
    already on the device (copies and the first call's start-up outside the timing)."""
    Wg, Hg = torch.from_numpy(W).cuda(), torch.from_numpy(H).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ops.ExperimentalWarning)

        def call():
            if kind == "heads":
                return ops.prune_heads(Wg, Hg, n_prune, d, percdamp=0.0, backend="cuda")
            return ops.prune_channels(Wg, Hg, n_prune, percdamp=0.0, group_sizes=list(sizes), backend="cuda")

        call()
        ts = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            _, idx = call()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
    return float(np.median(ts)), np.asarray(idx)


def load():
    return os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="SmolLM2 sizes only")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names to run (default all)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median) of the C++ core at small sizes")
    ap.add_argument("--baseline-iters", type=int, default=2,
                    help="at LLaMA-7B down_proj run only this many published iterations and extrapolate "
                         "(the full run takes hours on 2 cores); 0 = run all")
    ap.add_argument("--no-published", action="store_true", help="do not run the published loop")
    ap.add_argument("--no-reference", action="store_true", help="do not run the float64 reference")
    ap.add_argument("--no-cuda", action="store_true", help="do not run the CUDA column (skipped anyway without a "
                                                           "CUDA build or device)")
    ap.add_argument("--skip-reference-above", type=int, default=4096,
                    help="above this d_in compare selections with reference.downdate (one float64 inverse) "
                         "instead of the re-inverting float64 reference")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    C = core()
    print(f"# load average at start: {os.getloadavg()}; cores: {os.cpu_count()}; threads: {threads}", flush=True)
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
        set_sizes = [d] * n_prune if kind == "heads" else sizes
        row = {"case": name, "shape": f"{d_out}x{d_in}", "prune": n_prune, "iters": len(sizes),
               "nominal": nominal_flops(d_out, d_in, set_sizes), "per_t": {}}
        sel = {}
        for t in threads:
            r = {"load": load(), "sgemm": sgemm_rate(t)}
            set_core_threads(t)
            r["cpp"], (W_cpp, sel_cpp) = run_core(kind, W, H, n_prune, d, sizes, reps)
            if not hasattr(C, "set_num_threads"):
                set_core_threads(1)  # OpenBLAS back on one thread for the rest of the run
            sel[("cpp", t)] = (W_cpp, sel_cpp)
            r["load_end"] = load()
            row["per_t"][t] = r
            if args.no_published:
                r["pub"], r["agree_pub"] = float("nan"), "not run"
                print({"case": name, "threads": t, **r}, flush=True)
                continue
            # the published loop, torch float32, same thread count
            torch.set_num_threads(t)
            timings = []
            limit = args.baseline_iters if (big and kind == "channels" and args.baseline_iters) else None
            Wt, Ht = torch.from_numpy(W), torch.from_numpy(H)
            t0 = time.perf_counter()
            if kind == "heads":
                W_pub, sel_pub = published.prune_heads(Wt, Ht, n_prune, d, timings=timings)
            else:
                W_pub, sel_pub = published.prune_channels(Wt, Ht, sizes, max_iters=limit, timings=timings)
            r["pub"] = time.perf_counter() - t0
            if limit is not None and limit < len(sizes):
                # the remaining iterations cost at least their inverse + factorisations (same N)
                r["pub"] += np.mean([x["inverse"] for x in timings]) * (len(sizes) - limit)
                row["pub_note"] = f"extrapolated from {limit} of {len(sizes)} iterations (a lower bound)"
                _, (_, sel_k) = run_core("channels", W, H, int(sum(sizes[:limit])), 1, sizes[:limit])
                r["agree_pub"] = f"{np.array_equal(sel_k, sel_pub.numpy())} (first {limit} groups)"
            else:
                r["agree_pub"] = str(np.array_equal(sel_cpp, sel_pub.numpy()))
                r["maxdiff_pub"] = float(np.abs(W_cpp - W_pub.numpy()).max() / np.abs(W_pub.numpy()).max())
            r["load_end"] = load()
            row["per_t"][t] = r
            print({"case": name, "threads": t, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}},
                  flush=True)
        torch.set_num_threads(threads[0])
        W0, sel0 = sel[("cpp", threads[0])]
        row["cuda"], row["agree_cuda"] = float("nan"), "skipped (no CUDA build or device)"
        if args.no_cuda:
            row["agree_cuda"] = "not run"
        elif has_cuda():
            row["cuda"], sel_cuda = run_cuda(kind, W, H, n_prune, d, sizes, reps)
            row["agree_cuda"] = str(np.array_equal(sel0, sel_cuda))
        row["threads_identical"] = all(np.array_equal(W0, sel[("cpp", t)][0]) and np.array_equal(sel0, sel[("cpp", t)][1])
                                       for t in threads)
        row["executed"] = executed_flops(d_out, d_in, set_sizes,
                                         (sel0[:, None] * d + np.arange(d)).ravel() if kind == "heads" else sel0)
        row["ref_kind"], row["agree_ref"], row["maxdiff_ref"], row["ref"] = "reference", "not run", float("nan"), 0.0
        if args.no_reference:
            rows.append(row)
            continue
        # the float64 reference
        from slimgpt import reference as ref
        from slimgpt.reference import downdate as ref_downdate

        W64, H64 = W.astype(np.float64), H.astype(np.float64)
        use_twin = d_in > args.skip_reference_above
        mod = ref_downdate if use_twin else ref
        t0 = time.perf_counter()
        if kind == "heads":
            W_ref, sel_ref = mod.prune_heads(W64, H64, n_prune, d)
        else:
            W_ref, sel_ref = mod.prune_channels(W64, H64, n_prune)
        row["ref"] = time.perf_counter() - t0
        row["ref_kind"] = "reference.downdate" if use_twin else "reference"
        row["agree_ref"] = str(np.array_equal(sel0, np.asarray(sel_ref)))
        row["maxdiff_ref"] = float(np.abs(W0 - W_ref).max() / np.abs(W_ref).max())
        rows.append(row)
        print({k: v for k, v in row.items() if k != "per_t"}, flush=True)

    print_table(rows, threads)
    print(f"\nload average at end: {os.getloadavg()}")


def print_table(rows, threads):
    ts = threads
    head = ["case", "W", "pruned (sets)", "nominal / executed GFLOP"]
    for t in ts:
        head += [f"C++ {t}t s", f"published {t}t s", f"SGEMM {t}t GFLOP/s", f"roofline {t}t", f"kernels {t}t"]
    head += ["CUDA s", "speedup C++ vs published (" + "/".join(f"{t}t" for t in ts) + ")",
             "selections C++ = published / = reference; C++ threads bit-identical; CUDA = C++", "load avg"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["case"], r["shape"], f"{r['prune']} ({r['iters']})", f"{r['nominal'] / 1e9:.3g} / {r['executed'] / 1e9:.3g}"]
        for t in ts:
            p = r["per_t"][t]
            roof = r["nominal"] / p["sgemm"] / 1e9 / p["cpp"]
            kern = r["executed"] / p["sgemm"] / 1e9 / p["cpp"]
            pub = f"{p['pub']:.2f}" + (" *" if "pub_note" in r else "")
            cells += [f"{p['cpp']:.3f}", pub, f"{p['sgemm']:.0f}", f"{roof:.0%}", f"{kern:.0%}"]
        cells.append("—" if np.isnan(r["cuda"]) else f"{r['cuda']:.3f}")
        cells.append(" / ".join(f"{r['per_t'][t]['pub'] / r['per_t'][t]['cpp']:.1f}x" for t in ts))
        agree = " ".join(f"{t}t: {r['per_t'][t]['agree_pub']}" for t in ts)
        cells.append(f"{agree} / {r['agree_ref']} ({r['ref_kind']}); {r['threads_identical']}; {r['agree_cuda']}")
        cells.append(" → ".join(f"{r['per_t'][t]['load']:.1f}" for t in ts) + f" → {r['per_t'][ts[-1]]['load_end']:.1f}")
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        if "pub_note" in r:
            print(f"* {r['case']}: published time {r['pub_note']}")
    for r in rows:
        diffs = ", ".join(f"{t}t {r['per_t'][t]['maxdiff_pub']:.1e}" for t in ts if "maxdiff_pub" in r["per_t"][t])
        print(f"- {r['case']}: max|C++ − {r['ref_kind']}|/max = {r['maxdiff_ref']:.1e}"
              + (f"; vs published: {diffs}" if diffs else "") + f"; {r['ref_kind']} {r['ref']:.1f} s")


if __name__ == "__main__":
    main()
