// Tiled Cholesky factorisation and triangular inverse (dense.h) on the core's threads.
//
// Both are the textbook blocked algorithms with tiles of TILE rows; every tile operation is
// one single-threaded BLAS/LAPACK call, and the tiles of a step are independent tasks, so a
// step costs one synchronisation (OpenBLAS's own threads synchronise inside every call).
#include "dense.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "blas.h"
#include "parallel.h"

namespace slimgpt {

// Right-looking: for each diagonal tile k, factor it, solve the tiles below it, then update
// the trailing lower triangle one row of tiles per task (largest first).
int potrf_tiled(float* A, int64_t n, int64_t lda) {
    for (int64_t k0 = 0; k0 < n; k0 += TILE) {
        const int64_t kb = std::min(TILE, n - k0);
        float* Akk = A + k0 * lda + k0;
        const int info = blas::potrf_lower(Akk, (int)kb, (int)lda);
        if (info != 0) return (int)k0 + info;
        const int64_t r0 = k0 + kb;
        if (r0 >= n) break;
        const int64_t nt = n_tiles(n - r0);
        // A[i, k] ← A[i, k] L_kk⁻ᵀ
        parallel_for(nt, [&](int64_t i, int) {
            const int64_t i0 = r0 + i * TILE, ib = std::min(TILE, n - i0);
            scipy_cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, (int)ib, (int)kb,
                              1.0f, Akk, (int)lda, A + i0 * lda + k0, (int)lda);
        });
        // A[i, r0 : i0+ib] −= A[i, k] A[r0 : i0+ib, k]ᵀ (the diagonal tile in full)
        parallel_for(nt, [&](int64_t t, int) {
            const int64_t i = nt - 1 - t, i0 = r0 + i * TILE, ib = std::min(TILE, n - i0);
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ib, (int)(i0 + ib - r0), (int)kb, -1.0f,
                              A + i0 * lda + k0, (int)lda, A + r0 * lda + k0, (int)lda, 1.0f, A + i0 * lda + r0,
                              (int)lda);
        });
    }
    return 0;
}

// Column by column of tiles, last first: with M = L⁻¹,
//     M_jj = L_jj⁻¹,   M[i, j] = −(Σ_{j<k<=i} M[i, k] L[k, j]) M_jj   (i > j)
// where the M[i, k] (k > j) are final when column j is processed. Column j of L is copied
// out first, since its tiles are overwritten by those of M while other tasks still read them.
int trtri_tiled(float* L, int64_t n) {
    const int64_t p = n_tiles(n);
    std::atomic<int> singular{0};
    parallel_for(p, [&](int64_t j, int) {
        const int64_t j0 = j * TILE, jb = std::min(TILE, n - j0);
        float* Ljj = L + j0 * n + j0;
        const int info = blas::trtri_lower(Ljj, (int)jb, (int)n);
        if (info != 0) singular = (int)j0 + info;
        for (int64_t a = 0; a + 1 < jb; a++) std::memset(Ljj + a * n + a + 1, 0, sizeof(float) * (size_t)(jb - a - 1));
    });
    if (singular) return singular;
    const int nth = num_threads();
    std::vector<float> B((size_t)(n * TILE)), T((size_t)(nth * TILE * TILE));
    for (int64_t j = p - 2; j >= 0; j--) {
        const int64_t j0 = j * TILE, r0 = j0 + TILE, rows = n - r0;
        parallel_for(n_tiles(rows), [&](int64_t b, int) {  // B = L[r0:, j0 : j0 + TILE]
            for (int64_t r = b * TILE; r < std::min(rows, (b + 1) * TILE); r++)
                std::memcpy(&B[(size_t)(r * TILE)], L + (r0 + r) * n + j0, sizeof(float) * TILE);
        });
        const float* Mjj = L + j0 * n + j0;
        parallel_for(p - 1 - j, [&](int64_t t, int th) {
            const int64_t i = p - 1 - t, i0 = i * TILE, ib = std::min(TILE, n - i0), k = i0 + ib - r0;
            float* Ti = &T[(size_t)(th * TILE * TILE)];
            // T = M[i, r0 : i0+ib] B[0 : k]   (M[i, i] is lower triangular with zeros above)
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)ib, (int)TILE, (int)k, 1.0f,
                              L + i0 * n + r0, (int)n, B.data(), (int)TILE, 0.0f, Ti, (int)TILE);
            // M[i, j] = −T M_jj
            scipy_cblas_strmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)ib, (int)TILE,
                              -1.0f, Mjj, (int)n, Ti, (int)TILE);
            for (int64_t r = 0; r < ib; r++)
                std::memcpy(L + (i0 + r) * n + j0, Ti + r * TILE, sizeof(float) * TILE);
        });
    }
    return 0;
}

}  // namespace slimgpt
