// slimgpt C++ core: the plain C++ API (raw pointers and sizes, no nanobind types).
//
// Mirrors reference/ (slimgpt.reference) function for function: the pruning functions compute
// what reference/downdate.py computes (one inverse, then exact block downdates), losses
// included. The binding layer (bindings.cpp) validates shapes, dtypes, devices, index ranges,
// counts and finiteness, so these functions assume valid input and only assert. CUDA twins
// with the same names and argument order (plus a stream) live in obs_cuda.h.
//
// Layout: all matrices are row-major (torch layout), float32 except the Hessian accumulator.
//   W     (d_out, N)   weight, pruning removes input columns; updated in place (as gptq does)
//   H     (N, N)       Hessian 2 XᵀX / n (symmetric positive semi-definite); float64 when
//                      written by hessian / accumulate_hessian, float32 when read by pruning
//   X     (n, N)       calibration inputs, one token per row
//   M     (N, N)       inside the CPU core: L⁻¹ with H' = L Lᵀ (lower triangular); the current
//                      H⁻¹ is G = MᵀM − UᵀU with U the stacked Ut of the sets removed so far
//                      (obs_cpu.cpp; the CUDA core keeps H⁻¹ itself, in full)
//   N = d_in, n_heads = N / head_dim
// Threads: the CPU functions split their work into tiles over the core's own threads
// (parallel.h; OpenBLAS runs on one thread); results do not depend on the thread count.
// Argument order follows llm.c: outputs, then inputs, then sizes.
//
// Scale: the pruning functions are exactly invariant to W → sw·W, H → sh·H (the loss scales
// by sw²·sh), so they run on W·2^-w_exp and H·4^-h_exp with max|W| and mean(diag H) near 1
// (scale.h) and scale W and the loss back: float32 neither overflows nor underflows on
// finite inputs of any magnitude, and results are bit-identical to an unscaled run otherwise.
// On any status other than OK the content of W (and err, loss) is unspecified.
#pragma once
#include <cstdint>

namespace slimgpt {

// Return codes (the binding turns them into Python exceptions).
enum Status : int {
    OK = 0,
    NOT_POSITIVE_DEFINITE = 1,  // a Cholesky factorisation failed (H, or a block of H⁻¹)
    NOT_FINITE = 2,             // the run finished but W, the loss or err is NaN/Inf: H is
                                // numerically not positive definite at this damping (raised
                                // as NotPositiveDefiniteError, like NOT_POSITIVE_DEFINITE)
    CUDA_FAILED = 3,            // CUDA only: a CUDA / cuBLAS / cuSOLVER call failed
    CUDA_LIBRARY_MISSING = 4,   // CUDA only: libcublas / libcusolver could not be dlopen'ed
};

// The published Dynamic Group Size schedule (spec §4.2); the same names and values as
// reference/channels.py.
constexpr int64_t DGS_OFFSET = 512;  // b_0 = (T - 512) // 2, b_{k+1} = (b_k - 512) // 2
constexpr int64_t DGS_MIN = 64;      // smallest group (the paper's prose says 8)
constexpr int64_t DGS_MAX = 1024;    // largest group

// ---------------------------------------------------------------------------------------
// Hessian accumulation (reference: hessian, accumulate_hessian; paper §3.1 / spec §1.2)
// XᵀX in float32 (ssyrk) on X·2^-e with max|X·2^-e| in [1, 2), added into the float64 H
// with the factor 4^e · 2/(n_seen+n): no overflow or underflow to zero at any scale of X.

// H = 2 XᵀX / n (H is only written)
void hessian_cpu(double* H, const float* X, int64_t n, int64_t N);
// running mean: H ← H·n_seen/(n_seen+n) + 2 XᵀX/(n_seen+n)
void accumulate_hessian_cpu(double* H, const float* X, int64_t n_seen, int64_t n, int64_t N);

// ---------------------------------------------------------------------------------------
// OBS for columns (reference: downdate.prune_columns; paper Eq. 3-4, spec §2)

// W[:, cols] = 0; survivors W_K ← W_K − W_S (G_SS)⁻¹ G_SK with G = (damped H)⁻¹.
// loss: ½‖E‖_F² with E = W_S L_S⁻ᵀ, L_S = chol(G_SS); compensate=false: ½ tr(W_S H'_SS W_Sᵀ)
// with H' the prepared H (dead inputs, damping); 0 when n_cols = 0.
int prune_columns_cpu(float* W, double* loss, const float* H, const int64_t* cols,
                      int64_t n_cols, float percdamp, bool compensate, int64_t d_out, int64_t N);

// ---------------------------------------------------------------------------------------
// Head scores (reference: head_errors; paper Eq. 5, spec §3.2)

// err[j] = Σ_k ||W[:, j·d+k]||² / L_j[k,k]², L_j = chol(Hinv[C_j, C_j]); gcd=false: Hinv[c,c].
// Hinv is read through its lower triangle only.
int head_errors_cpu(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd,
                    int64_t d_out, int64_t N);

// ---------------------------------------------------------------------------------------
// Greedy structured pruning (reference: downdate.prune_heads, prune_channels; spec §3.3, §4)
// loss: the sum over removed sets of ½‖E‖_F²; compensate=false: ½ tr(W_P H'_PP W_Pᵀ) over
// all pruned columns P (W after the dead-input zeroing); 0 when nothing is pruned.

// One head per iteration, smallest error first; exact compensation; G downdated in blocks.
// head_groups: nullptr, or one group id in [0, n_groups) per head, every id used; each group
// loses n_prune / n_groups heads. pruned: n_prune head indices, sorted ascending.
int prune_heads_cpu(float* W, int64_t* pruned, double* loss, const float* H, int64_t n_prune,
                    const int64_t* head_groups, int64_t n_groups, float percdamp, bool gcd,
                    bool compensate, int64_t head_dim, int64_t d_out, int64_t N);

// DGS: group k removes the group_sizes[k] columns of smallest ||W[:,c]||² / G[c,c].
// pruned: Σ group_sizes channel indices, sorted ascending.
int prune_channels_cpu(float* W, int64_t* pruned, double* loss, const float* H,
                       const int64_t* group_sizes, int64_t n_groups, float percdamp,
                       bool compensate, int64_t d_out, int64_t N);

// Published DGS schedule for T >= 0 channels (spec §4.2): returns the number of groups and,
// when sizes is not nullptr, writes them there (call once with nullptr to size the buffer).
int64_t dgs_group_sizes(int64_t* sizes, int64_t T);

}  // namespace slimgpt
