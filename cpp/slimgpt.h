// slimgpt C++ core: the plain C++ API (raw pointers and sizes, no nanobind types).
//
// Mirrors reference/ (slimgpt.reference) function for function; the binding layer
// (bindings.cpp) validates shapes, dtypes, devices, index ranges and finiteness, so these
// functions assume valid input and only assert. CUDA twins with the same names and argument
// order (plus a stream) live in obs_cuda.h.
//
// Layout: all matrices are row-major float32 (torch layout).
//   W     (d_out, N)   weight, pruning removes input columns; updated in place (as gptq does)
//   H     (N, N)       Hessian 2 XᵀX / n (symmetric positive semi-definite)
//   X     (n, N)       calibration inputs, one token per row
//   G     (N, N)       H⁻¹, kept as its lower triangle (row-major) inside the core
//   N = d_in, n_heads = N / head_dim
// Argument order follows llm.c: outputs, then inputs, then sizes.
#pragma once
#include <cstdint>

namespace slimgpt {

// Return codes of the pruning functions (the binding turns them into Python exceptions).
enum Status : int {
    OK = 0,
    NOT_POSITIVE_DEFINITE = 1,  // a Cholesky factorisation failed (H, or a block of H⁻¹)
};

// ---------------------------------------------------------------------------------------
// Hessian accumulation (reference: hessian, accumulate_hessian; paper §3.1 / spec §1.2)

// H = 2 XᵀX / n
void hessian_cpu(float* H, const float* X, int64_t n, int64_t N);
// running mean: H ← H·n_seen/(n_seen+n) + 2 XᵀX/(n_seen+n)
void accumulate_hessian_cpu(float* H, const float* X, int64_t n_seen, int64_t n, int64_t N);

// ---------------------------------------------------------------------------------------
// OBS for columns (reference: prune_columns; paper Eq. 3-4, spec §2)

// W[:, cols] = 0; survivors W_K ← W_K − W_S (G_SS)⁻¹ G_SK with G = (damped H)⁻¹.
int prune_columns_cpu(float* W, const float* H, const int64_t* cols, int64_t n_cols,
                      float percdamp, bool compensate, int64_t d_out, int64_t N);

// ---------------------------------------------------------------------------------------
// Head scores (reference: head_errors; paper Eq. 5, spec §3.2)

// err[j] = Σ_k ||W[:, j·d+k]||² / L_j[k,k]², L_j = chol(Hinv[C_j, C_j]); gcd=false: Hinv[c,c].
// Hinv is read through its lower triangle only.
int head_errors_cpu(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd,
                    int64_t d_out, int64_t N);

// ---------------------------------------------------------------------------------------
// Greedy structured pruning (reference: prune_heads, prune_channels; spec §3.3, §4)

// One head per iteration, smallest error first; exact compensation; G downdated in blocks.
// head_groups: nullptr, or one group id in [0, n_groups) per head; each group loses
// n_prune / n_groups heads. pruned: n_prune head indices, sorted ascending.
int prune_heads_cpu(float* W, int64_t* pruned, const float* H, int64_t n_prune,
                    const int64_t* head_groups, int64_t n_groups, float percdamp, bool gcd,
                    bool compensate, int64_t head_dim, int64_t d_out, int64_t N);

// DGS: group k removes the group_sizes[k] columns of smallest ||W[:,c]||² / G[c,c].
// pruned: Σ group_sizes channel indices, sorted ascending.
int prune_channels_cpu(float* W, int64_t* pruned, const float* H, const int64_t* group_sizes,
                       int64_t n_groups, float percdamp, bool compensate, int64_t d_out,
                       int64_t N);

// Published DGS schedule for T channels (spec §4.2); returns the number of groups written
// to sizes (capacity T + 1 is always enough).
int64_t dgs_group_sizes(int64_t* sizes, int64_t T);

}  // namespace slimgpt
