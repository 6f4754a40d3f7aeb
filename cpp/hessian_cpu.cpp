// Hessian accumulation on the CPU: the twin of reference hessian / accumulate_hessian.
// XᵀX is computed in float32 on X·2^-e, where max|X·2^-e| is in [1, 2), so that float32 can
// neither overflow (n·4 < 2^33) nor underflow to zero whatever the scale of X; each block of
// token rows is added into the float64 H with the factor 4^e · 2/(n_seen+n). (When max|X| is
// within 2^±20 the scaling changes nothing and X is used as it is.)
//
// Tiles: the lower triangle of XᵀX is cut into HTILE x HTILE tiles, one task each on the
// core's threads (parallel.h): ssyrk for a diagonal tile, sgemm below it, then the tile is
// scaled into H and, after the last block of rows, mirrored onto the upper triangle while it
// is in cache (no N x N float32 temporary, no strided pass over H).
// Not here: validation (bindings.cpp) and the CUDA twin (obs_cuda.cu, same blocks).
#include <algorithm>
#include <cassert>
#include <cmath>
#include <vector>

#include "blas.h"
#include "parallel.h"
#include "scale.h"
#include "slimgpt.h"

namespace slimgpt {

namespace {
constexpr int64_t HTILE = 128;
}

// running mean over token rows, as gptq's add_batch:
// H ← H · n_seen/(n_seen+n) + 2 XᵀX / (n_seen+n); H is only written when n_seen = 0
void accumulate_hessian_cpu(double* H, const float* X, int64_t n_seen, int64_t n, int64_t N) {
    assert(n_seen >= 0 && n > 0 && N > 0);
    const int64_t chunk = int64_t(1) << 20, n_chunks = (n * N + chunk - 1) / chunk;
    std::vector<float> chunk_max((size_t)n_chunks, 0.0f);
    parallel_for(n_chunks, [&](int64_t c, int) {
        float m = 0.0f;
        for (int64_t i = c * chunk, e = std::min(n * N, (c + 1) * chunk); i < e; i++) m = std::max(m, std::fabs(X[i]));
        chunk_max[(size_t)c] = m;
    });
    const int e = exponent_of(*std::max_element(chunk_max.begin(), chunk_max.end()));
    // X·2^-e is needed only far from 1: with 2^-20 <= max|X| < 2^21 nothing overflows, and
    // XᵀX on X itself is exactly 4^e times XᵀX on X·2^-e (products that are subnormal in one
    // and not the other aside, below 2^-86), so the scaled copy is skipped
    const bool copy = e < -20 || e > 20;
    const double total = (double)n_seen + (double)n;
    const double alpha = std::ldexp(2.0 / total, copy ? 2 * e : 0), beta = (double)n_seen / total;

    const int64_t rows = std::clamp<int64_t>(HESSIAN_BLOCK_FLOATS / N, 1, n);
    const double s = std::ldexp(1.0, -e);
    const int64_t p = (N + HTILE - 1) / HTILE, n_tasks = p * (p + 1) / 2;
    // task t -> tile (ti, tj), tj <= ti, the longest rows of tiles first (equal work per tile)
    std::vector<int64_t> ti((size_t)n_tasks), tj((size_t)n_tasks);
    for (int64_t i = 0, t = 0; i < p; i++)
        for (int64_t j = 0; j <= i; j++, t++) ti[(size_t)t] = i, tj[(size_t)t] = j;
    const int nth = num_threads();
    std::vector<float> Xcopy(copy ? (size_t)(rows * N) : 0), T((size_t)(nth * HTILE * HTILE));
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t nr = std::min(rows, n - r0);
        const bool first = r0 == 0, last = r0 + nr == n;
        const float* Xs = X + r0 * N;
        if (copy) {
            parallel_for((nr + 255) / 256, [&](int64_t b, int) {
                for (int64_t i = b * 256 * N, end = std::min(nr, (b + 1) * 256) * N; i < end; i++)
                    Xcopy[(size_t)i] = (float)(s * (double)X[r0 * N + i]);
            });
            Xs = Xcopy.data();
        }
        parallel_for(n_tasks, [&](int64_t t, int th) {
            const int64_t i0 = ti[(size_t)t] * HTILE, j0 = tj[(size_t)t] * HTILE;
            const int64_t ib = std::min(HTILE, N - i0), jb = std::min(HTILE, N - j0);
            float* C = &T[(size_t)(th * HTILE * HTILE)];
            if (i0 == j0)
                scipy_cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)ib, (int)nr, 1.0f, Xs + i0, (int)N, 0.0f, C,
                                  (int)HTILE);
            else
                scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)ib, (int)jb, (int)nr, 1.0f,
                                  Xs + i0, (int)N, Xs + j0, (int)N, 0.0f, C, (int)HTILE);
            for (int64_t a = 0; a < ib; a++) {
                double* h = H + (i0 + a) * N + j0;
                const float* c = C + a * HTILE;
                const int64_t b_end = i0 == j0 ? a + 1 : jb;  // the lower triangle
                for (int64_t b = 0; b < b_end; b++) {
                    const double prev = first ? (n_seen ? h[b] * beta : 0.0) : h[b];
                    h[b] = prev + alpha * (double)c[b];
                }
            }
            if (last)  // H[j0 + b, i0 + a] = H[i0 + a, j0 + b] above the diagonal
                for (int64_t b = 0; b < jb; b++)
                    for (int64_t a = (i0 == j0 ? b + 1 : 0); a < ib; a++)
                        H[(j0 + b) * N + i0 + a] = H[(i0 + a) * N + j0 + b];
        }, nth);
    }
}

// H = 2 XᵀX / n
void hessian_cpu(double* H, const float* X, int64_t n, int64_t N) {
    accumulate_hessian_cpu(H, X, 0, n, N);
}

}  // namespace slimgpt
