// Hessian accumulation on the CPU: the twin of reference hessian / accumulate_hessian.
// H = 2 XᵀX / n is one ssyrk (lower triangle) mirrored to the upper one; float32 in and out.
// Not here: validation (bindings.cpp) and the CUDA twin (obs_cuda.cu).
#include <cassert>

#include "blas.h"
#include "slimgpt.h"

namespace slimgpt {

// copy the lower triangle of the row-major N x N matrix A onto its upper triangle
static void mirror_lower(float* A, int64_t N) {
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = i + 1; j < N; j++) A[i * N + j] = A[j * N + i];
}

// H (N,N) = 2 XᵀX / n, X (n,N)
void hessian_cpu(float* H, const float* X, int64_t n, int64_t N) {
    assert(n > 0 && N > 0);
    scipy_cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)N, (int)n, 2.0f / (float)n, X,
                      (int)N, 0.0f, H, (int)N);
    mirror_lower(H, N);
}

// running mean over token rows, as gptq's add_batch:
// H ← H · n_seen/(n_seen+n) + 2 XᵀX / (n_seen+n)
void accumulate_hessian_cpu(float* H, const float* X, int64_t n_seen, int64_t n, int64_t N) {
    assert(n_seen >= 0 && n > 0 && N > 0);
    const double total = (double)(n_seen + n);
    scipy_cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)N, (int)n, (float)(2.0 / total), X,
                      (int)N, (float)((double)n_seen / total), H, (int)N);
    mirror_lower(H, N);
}

}  // namespace slimgpt
