// Hessian accumulation on the CPU: the twin of reference hessian / accumulate_hessian.
// XᵀX is computed in float32 (ssyrk, lower triangle) on X·2^-e, where max|X·2^-e| is in
// [1, 2), so that float32 can neither overflow (n·4 < 2^33) nor underflow to zero whatever
// the scale of X; each block of token rows is added into the float64 H with the factor
// 4^e · 2/(n_seen+n), and the lower triangle is mirrored at the end.
// Not here: validation (bindings.cpp) and the CUDA twin (obs_cuda.cu, same blocks).
#include <algorithm>
#include <cassert>
#include <cmath>
#include <vector>

#include "blas.h"
#include "scale.h"
#include "slimgpt.h"

namespace slimgpt {

// copy the lower triangle of the row-major N x N matrix A onto its upper triangle
static void mirror_lower(double* A, int64_t N) {
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = i + 1; j < N; j++) A[i * N + j] = A[j * N + i];
}

// running mean over token rows, as gptq's add_batch:
// H ← H · n_seen/(n_seen+n) + 2 XᵀX / (n_seen+n); H is only written when n_seen = 0
void accumulate_hessian_cpu(double* H, const float* X, int64_t n_seen, int64_t n, int64_t N) {
    assert(n_seen >= 0 && n > 0 && N > 0);
    float x_max = 0.0f;
    for (int64_t i = 0; i < n * N; i++) x_max = std::max(x_max, std::fabs(X[i]));
    const int e = exponent_of(x_max);
    const double total = (double)n_seen + (double)n;
    const double alpha = std::ldexp(2.0 / total, 2 * e), beta = (double)n_seen / total;
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j <= i; j++) H[i * N + j] = n_seen ? H[i * N + j] * beta : 0.0;

    const int64_t rows = std::clamp<int64_t>(HESSIAN_BLOCK_FLOATS / N, 1, n);
    const double s = std::ldexp(1.0, -e);
    std::vector<float> Xs((size_t)(rows * N)), T((size_t)(N * N));
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t nr = std::min(rows, n - r0);
        for (int64_t i = 0; i < nr * N; i++) Xs[(size_t)i] = (float)(s * (double)X[r0 * N + i]);
        scipy_cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)N, (int)nr, 1.0f, Xs.data(),
                          (int)N, 0.0f, T.data(), (int)N);
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = 0; j <= i; j++) H[i * N + j] += alpha * (double)T[(size_t)(i * N + j)];
    }
    mirror_lower(H, N);
}

// H = 2 XᵀX / n
void hessian_cpu(double* H, const float* X, int64_t n, int64_t N) {
    accumulate_hessian_cpu(H, X, 0, n, N);
}

}  // namespace slimgpt
