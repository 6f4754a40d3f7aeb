// The core's own threads: a small pool that runs coarse tasks (tiles of single-threaded BLAS
// calls) on up to num_threads() threads, the caller included.
//
// Why not OpenBLAS's threads: its workers spin (sched_yield) for up to 2^28 cycles after every
// call, which starved torch's threads in the pipeline, and its level-3 routines synchronise
// their threads thousands of times per call (a multi-threaded spotrf ran 30x slower than a
// single-threaded one on a loaded 2-core machine). So OpenBLAS always runs on ONE thread
// (set when the module loads), and the core splits its work into tiles handed out from a
// shared counter: a thread that is descheduled delays only the tile it holds, and idle pool
// threads block on a condition variable (no spinning) between regions.
//
// Results never depend on the number of threads: every task writes its own output, computed
// in a fixed order, and tile sizes do not depend on the thread count. So a run with 2 threads
// is bit-identical to a run with 1.
#pragma once
#include <cstdint>
#include <functional>

namespace slimgpt {

// Threads used by parallel_for (>= 1). Default: SLIMGPT_NUM_THREADS if set, else the CPUs
// this process may run on (sched_getaffinity).
int num_threads();
void set_num_threads(int n);

// Run task(i, t) for every i in [0, n) on at most max_threads threads (0: num_threads()):
// t in [0, max_threads) names the thread running it (for per-thread scratch buffers). Tasks
// are taken in increasing i from a shared counter, so put the largest first. Nested calls,
// and calls while another thread's region runs, run serially on the calling thread (t = 0).
// Tasks must not throw.
void parallel_for(int64_t n, const std::function<void(int64_t i, int t)>& task, int max_threads = 0);

// OpenBLAS on one thread (called when the module loads; see above).
void single_threaded_blas();

}  // namespace slimgpt
