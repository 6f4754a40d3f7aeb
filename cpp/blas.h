// BLAS/LAPACK from scipy-openblas32: every symbol carries the `scipy_` prefix
// (BLAS_SYMBOL_PREFIX=scipy_ is defined by CMakeLists.txt). Only the few routines the core
// uses are declared here, with thin unprefixed wrappers; 32-bit integers (openblas32).
#pragma once
#include <cstddef>
#include <cblas.h>  // declares scipy_cblas_* (the prefix is baked into the header)

#define SLIMGPT_CAT2(a, b) a##b
#define SLIMGPT_CAT(a, b) SLIMGPT_CAT2(a, b)
#define SLIMGPT_LAPACK(name) SLIMGPT_CAT(BLAS_SYMBOL_PREFIX, SLIMGPT_CAT(name, _))

extern "C" {
// Fortran LAPACK, column-major; the trailing size_t is the hidden length of `uplo`.
void SLIMGPT_LAPACK(spotrf)(const char* uplo, const int* n, float* A, const int* lda, int* info,
                            size_t uplo_len);
void SLIMGPT_LAPACK(spotri)(const char* uplo, const int* n, float* A, const int* lda, int* info,
                            size_t uplo_len);
void SLIMGPT_LAPACK(strtri)(const char* uplo, const char* diag, const int* n, float* A, const int* lda,
                            int* info, size_t uplo_len, size_t diag_len);
}

namespace slimgpt::blas {

// A row-major matrix is the transpose of a column-major one, so for the symmetric matrices
// used here LAPACK's column-major 'U' is our row-major lower triangle.

// Row-major lower Cholesky factor in place: A = L Lᵀ. Returns LAPACK info (0 = ok).
inline int potrf_lower(float* A, int n, int lda) {
    int info = 0;
    const char uplo = 'U';
    SLIMGPT_LAPACK(spotrf)(&uplo, &n, A, &lda, &info, 1);
    return info;
}
// Given potrf_lower's factor, overwrite the lower triangle with that of A⁻¹.
inline int potri_lower(float* A, int n, int lda) {
    int info = 0;
    const char uplo = 'U';
    SLIMGPT_LAPACK(spotri)(&uplo, &n, A, &lda, &info, 1);
    return info;
}

// Given a row-major lower triangular A (non-unit diagonal), overwrite that triangle with A⁻¹;
// the strict upper triangle is not touched. Returns LAPACK info (0 = ok, > 0 = singular).
inline int trtri_lower(float* A, int n, int lda) {
    int info = 0;
    const char uplo = 'U', diag = 'N';
    SLIMGPT_LAPACK(strtri)(&uplo, &diag, &n, A, &lda, &info, 1, 1);
    return info;
}

}  // namespace slimgpt::blas
