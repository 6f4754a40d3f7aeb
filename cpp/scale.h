// Normalisation shared by the CPU and CUDA cores (host code): the scales of a pruning run
// and the blocks of scaled X of the Hessian; used by obs_cpu.cpp, hessian_cpu.cpp, obs_cuda.cu.
//
// Why: selection and compensated W are exactly invariant to W → 2^a·W, H → 4^b·H (the loss
// scales by 4^a·4^b; docs/cpp.md "Scale"), but float32 is not: a subnormal H, or W = 1e25
// with H = 1e30, overflows or underflows inside the Cholesky factors where the float64
// reference stays finite. So a run sees W·2^-w_exp and H·4^-h_exp, with max|W| in [1, 2)
// and the mean magnitude of the live diagonal of the prepared H (damping included) in
// [1, 4). Multiplying by a power of two is exact, and an even power for H keeps square roots
// (the Cholesky factors) exact as well, so a normalised run is bit-identical to an unscaled
// one whenever the unscaled one neither overflows nor underflows.
// Not here: the loops that apply the scales.
#pragma once
#include <cmath>
#include <cstdint>

namespace slimgpt {

struct Scales {
    int w_exp;   // W runs as W · 2^-w_exp
    int h_exp;   // H runs as H · 4^-h_exp
    float damp;  // percdamp · mean(diag H') in the units of the run, added to G's diagonal
};

// Token rows per float32 ssyrk of the Hessian: its scaled copy of X (X·2^-e, max|X·2^-e| in
// [1, 2)) holds at most this many floats, and at least one row.
constexpr int64_t HESSIAN_BLOCK_FLOATS = int64_t(1) << 22;

// e with 2^e <= m < 2^(e+1) for a finite m > 0; 0 (no scaling) otherwise
inline int exponent_of(double m) { return m > 0.0 && std::isfinite(m) ? std::ilogb(m) : 0; }

// floor(e / 2); C++ division truncates toward zero
inline int half_floor(int e) { return e >= 0 ? e / 2 : -((1 - e) / 2); }

// Scales of a run on W (max|W| = w_max) and H, whose diagonal is diag[0], diag[stride], ….
// H' = H with dead inputs (H[j,j] == 0) set to 1, plus percdamp · mean(diag H') · I
// (reference.damping.prepare_hessian).
inline Scales scales_of(const float* diag, int64_t stride, int64_t N, float percdamp, float w_max) {
    // the size of the live block of H': mean |live diagonal| plus |damping|, in H's units
    double live = 0.0, sum = 0.0;
    int64_t n_live = 0;
    for (int64_t j = 0; j < N; j++) {
        const double h = diag[j * stride];
        sum += h == 0.0 ? 1.0 : h;
        if (h != 0.0) {
            live += std::fabs(h);
            n_live++;
        }
    }
    const double damp = (double)percdamp * sum / (double)N;
    const int h_exp = half_floor(exponent_of((n_live ? live / (double)n_live : 0.0) + std::fabs(damp)));
    // the damping in the run's units, summed in the order of an unscaled run so that it is
    // exactly 4^-h_exp times that run's (float)(percdamp · mean)
    const double s = std::ldexp(1.0, -2 * h_exp);
    double sum_s = 0.0;
    for (int64_t j = 0; j < N; j++) {
        const float h = diag[j * stride];
        sum_s += s * (h == 0.0f ? 1.0 : (double)h);
    }
    const float damp_s = percdamp > 0.0f ? (float)((double)percdamp * sum_s / (double)N) : 0.0f;
    return {exponent_of(w_max), h_exp, damp_s};
}

}  // namespace slimgpt
