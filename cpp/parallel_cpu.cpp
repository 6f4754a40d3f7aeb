// The core's thread pool (parallel.h): n - 1 worker threads created on first use, blocked on a
// condition variable between regions; the calling thread takes tasks too.
#include "parallel.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "blas.h"

namespace slimgpt {

namespace {

// One parallel region. Held by shared_ptr: a worker that wakes after the region is over
// still finds its counter exhausted and leaves without touching anything else.
struct Job {
    const std::function<void(int64_t, int)>* task;
    int64_t n;
    int max_threads;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
};

struct Pool {
    std::mutex mu;                 // guards job, generation, workers
    std::condition_variable wake;  // workers wait here for a new generation
    std::condition_variable finished;
    std::shared_ptr<Job> job;
    uint64_t generation = 0;
    std::vector<std::thread> workers;  // never joined: the pool lives until the process exits
    std::mutex region;                 // one region at a time
    std::atomic<int> threads{0};
};

Pool* g_pool = nullptr;
std::once_flag g_once;
thread_local bool t_in_region = false;

int default_threads() {
    if (const char* s = std::getenv("SLIMGPT_NUM_THREADS")) {
        const int n = std::atoi(s);
        if (n >= 1) return std::min(n, 256);
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

// after fork() only the forking thread exists: forget the old pool (leaked, never touched)
void forget_pool_in_child() {
    Pool* p = new Pool();
    p->threads = g_pool ? g_pool->threads.load() : default_threads();
    g_pool = p;
}

Pool& pool() {
    std::call_once(g_once, [] {
        g_pool = new Pool();
        g_pool->threads = default_threads();
        pthread_atfork(nullptr, nullptr, forget_pool_in_child);
    });
    return *g_pool;
}

void run_tasks(Job& job, int t) {
    for (int64_t i; (i = job.next.fetch_add(1)) < job.n;) {
        (*job.task)(i, t);
        job.done.fetch_add(1);
    }
}

void worker_loop(Pool* p, int t) {
    t_in_region = true;  // a task's own parallel_for runs serially
    uint64_t seen = 0;
    for (;;) {
        std::shared_ptr<Job> job;
        {
            std::unique_lock<std::mutex> lock(p->mu);
            p->wake.wait(lock, [&] { return p->generation != seen; });
            seen = p->generation;
            job = p->job;
        }
        if (!job || t >= job->max_threads) continue;
        run_tasks(*job, t);
        if (job->done.load() == job->n) {
            std::lock_guard<std::mutex> lock(p->mu);  // pairs with the caller's wait
            p->finished.notify_all();
        }
    }
}

}  // namespace

int num_threads() { return pool().threads.load(); }

void set_num_threads(int n) { pool().threads = std::max(1, std::min(n, 256)); }

void single_threaded_blas() { scipy_openblas_set_num_threads(1); }

void parallel_for(int64_t n, const std::function<void(int64_t, int)>& task, int max_threads) {
    if (n <= 0) return;
    Pool& p = pool();
    const int cap = max_threads > 0 ? std::min(max_threads, p.threads.load()) : p.threads.load();
    const int threads = (int)std::min<int64_t>(cap, n);
    std::unique_lock<std::mutex> region(p.region, std::defer_lock);
    if (threads <= 1 || t_in_region || !region.try_lock()) {
        for (int64_t i = 0; i < n; i++) task(i, 0);
        return;
    }
    auto job = std::make_shared<Job>();
    job->task = &task;
    job->n = n;
    job->max_threads = threads;
    {
        std::lock_guard<std::mutex> lock(p.mu);
        while ((int)p.workers.size() < threads - 1) {
            const int t = (int)p.workers.size() + 1;
            p.workers.emplace_back(worker_loop, &p, t);
        }
        p.job = job;
        p.generation++;
    }
    p.wake.notify_all();
    t_in_region = true;
    run_tasks(*job, 0);
    t_in_region = false;
    {
        std::unique_lock<std::mutex> lock(p.mu);
        p.finished.wait(lock, [&] { return job->done.load() == job->n; });
        p.job.reset();
    }
}

}  // namespace slimgpt
