// Dense building blocks of the CPU core, on the core's threads (parallel.h): tiled Cholesky
// and triangular inverse over single-threaded BLAS calls, and small row-major helpers.
// Tiles are TILE x TILE (the last one smaller); the tiling never depends on the thread count,
// so results do not either.
#pragma once
#include <cstdint>

namespace slimgpt {

constexpr int64_t TILE = 256;

inline int64_t n_tiles(int64_t n, int64_t tile = TILE) { return (n + tile - 1) / tile; }

// A (n x n, row-major, leading dimension lda) ← its lower Cholesky factor L (A = L Lᵀ), read
// and written in the lower triangle; the strict upper triangle of the diagonal tiles is
// overwritten (the rest of it is not touched). Returns 0, or > 0 when A is not positive definite.
int potrf_tiled(float* A, int64_t n, int64_t lda);

// L (n x n lower, row-major, leading dimension n; strict upper triangle outside the diagonal
// tiles already 0) ← L⁻¹, with the strict upper triangle of the diagonal tiles set to 0, so
// that the whole matrix holds L⁻¹ exactly (a lower triangular matrix with zeros above).
// Returns 0, or > 0 when L is singular.
int trtri_tiled(float* L, int64_t n);

}  // namespace slimgpt
