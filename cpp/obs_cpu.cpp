// Structured OBS on the CPU: the twin of reference prune_columns, head_errors, prune_heads,
// prune_channels and dgs_group_sizes (paper Eqs. 3-5, spec §2-4).
//
// What differs from the published loop (and from the float64 reference, which mirrors it):
// G = H⁻¹ is computed ONCE (spotrf + spotri), and after each pruned head / FFN group S it is
// downdated exactly in block form (Eq. 3 applied to a set):
//     G ← G − G[:,S] (G_SS)⁻¹ G[S,:]
// which is the inverse of H with S removed (spec §2.2, §10.1 item 8). With L_S = chol(G_SS)
// and Ut = L_S⁻¹ G[S,:] (the first |S| rows of the published code's Cholesky factor U of the
// reordered G), the downdate is one ssyrk  G −= Utᵀ Ut  and the compensation
//     W_K ← W_K − W_S (G_SS)⁻¹ G_SK = W_K − (W_S L_S⁻ᵀ) Ut[:,K]
// is one strsm plus one sgemm: E = W_S L_S⁻ᵀ are the published scaled errors, and the
// published local loop + global update compute the same product column by column.
// docs/cpp.md has the derivation. Not here: validation (bindings.cpp), the CUDA twin
// (obs_cuda.cu), and the non-positive-definite retry with more damping (slimgpt/ops.py).
//
// Storage: G is row-major N x N and only its lower triangle is kept current.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "blas.h"
#include "slimgpt.h"

namespace slimgpt {

// ---------------------------------------------------------------------------------------
// helpers

// element (i, j) of a symmetric matrix stored in the lower triangle of row-major G
static inline float sym(const float* G, int64_t N, int64_t i, int64_t j) {
    return i >= j ? G[i * N + j] : G[j * N + i];
}

// colsq[c] = ||W[:,c]||², accumulated in double
static void column_sq_norms(double* colsq, const float* W, int64_t d_out, int64_t N) {
    std::fill(colsq, colsq + N, 0.0);
    for (int64_t r = 0; r < d_out; r++) {
        const float* w = W + r * N;
        for (int64_t c = 0; c < N; c++) colsq[c] += (double)w[c] * (double)w[c];
    }
}

// G ← damped H with dead inputs handled (spec §2.4), then G ← G⁻¹ (lower triangle).
// dead: H[j,j] == 0 → H[j,j] = 1 and W[:,j] = 0; then += percdamp · mean(diag H).
static int prepare_inverse(std::vector<float>& G, float* W, const float* H, float percdamp,
                           int64_t d_out, int64_t N, bool invert) {
    G.assign(H, H + N * N);
    for (int64_t j = 0; j < N; j++) {
        if (G[j * N + j] == 0.0f) {
            G[j * N + j] = 1.0f;
            for (int64_t r = 0; r < d_out; r++) W[r * N + j] = 0.0f;
        }
    }
    if (percdamp > 0.0f) {
        double mean = 0.0;
        for (int64_t j = 0; j < N; j++) mean += G[j * N + j];
        const float damp = (float)((double)percdamp * mean / (double)N);
        for (int64_t j = 0; j < N; j++) G[j * N + j] += damp;
    }
    if (!invert) return OK;
    // G = H⁻¹: Cholesky, then the inverse from the factor (as torch.cholesky_inverse)
    if (blas::potrf_lower(G.data(), (int)N, (int)N) != 0) return NOT_POSITIVE_DEFINITE;
    if (blas::potri_lower(G.data(), (int)N, (int)N) != 0) return NOT_POSITIVE_DEFINITE;
    return OK;
}

// Remove the column set S (s columns, any order) from W and G: exact OBS for a set.
//   compensate: W_K −= E Ut[:,K] with E = W_S L_S⁻ᵀ, then W[:,S] = 0 (else only W[:,S] = 0)
//   downdate:   G −= Utᵀ Ut, then rows/cols S of G zeroed and G[s,s] = 1 (never read again)
static int remove_set(float* W, float* G, const int64_t* S, int64_t s, bool compensate,
                      bool downdate, int64_t d_out, int64_t N) {
    if (s == 0) return OK;
    if (compensate || downdate) {
        // Ut (s, N) = G[S, :], gathered from the lower triangle; LS (s, s) = G[S, S]
        std::vector<float> Ut((size_t)(s * N)), LS((size_t)(s * s));
        for (int64_t r = 0; r < s; r++)  // j <= S[r]: a contiguous piece of row S[r]
            std::memcpy(&Ut[r * N], G + S[r] * N, sizeof(float) * (size_t)(S[r] + 1));
        for (int64_t j = 0; j < N; j++) {  // j > S[r]: column S[r] of row j, row by row
            const float* g = G + j * N;
            for (int64_t r = 0; r < s; r++)
                if (j > S[r]) Ut[r * N + j] = g[S[r]];
        }
        for (int64_t a = 0; a < s; a++)
            for (int64_t b = 0; b < s; b++) LS[a * s + b] = Ut[a * N + S[b]];
        // G_SS = L_S L_Sᵀ (Lemma ii: the leading block of the reordered G's factor)
        if (blas::potrf_lower(LS.data(), (int)s, (int)s) != 0) return NOT_POSITIVE_DEFINITE;
        // Ut = L_S⁻¹ G[S,:]: the first s rows of the published U (spec §2.3)
        scipy_cblas_strsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit,
                          (int)s, (int)N, 1.0f, LS.data(), (int)s, Ut.data(), (int)N);
        if (compensate) {
            // E (d_out, s) = W_S L_S⁻ᵀ: the scaled errors e_i (spec §2.3 step 3)
            std::vector<float> E((size_t)(d_out * s));
            for (int64_t r = 0; r < d_out; r++)
                for (int64_t a = 0; a < s; a++) E[r * s + a] = W[r * N + S[a]];
            scipy_cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit,
                              (int)d_out, (int)s, 1.0f, LS.data(), (int)s, E.data(), (int)s);
            // Eq. 4 for a set: W −= E Ut (zeroes W[:,S] up to rounding; set exactly below)
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d_out, (int)N,
                              (int)s, -1.0f, E.data(), (int)s, Ut.data(), (int)N, 1.0f, W, (int)N);
        }
        if (downdate) {
            // Eq. 3 for a set: G ← G − G[:,S] (G_SS)⁻¹ G[S,:] = G − Utᵀ Ut (lower triangle)
            scipy_cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)N, (int)s, -1.0f,
                              Ut.data(), (int)N, 1.0f, G, (int)N);
            // S is gone: its rows/cols are 0 in exact arithmetic; make them exactly 0
            for (int64_t a = 0; a < s; a++) {
                const int64_t q = S[a];
                std::memset(G + q * N, 0, sizeof(float) * (size_t)q);
                for (int64_t j = q + 1; j < N; j++) G[j * N + q] = 0.0f;
                G[q * N + q] = 1.0f;
            }
        }
    }
    for (int64_t r = 0; r < d_out; r++)
        for (int64_t a = 0; a < s; a++) W[r * N + S[a]] = 0.0f;
    return OK;
}

// Eq. 5 for every head j with alive[j]: err[j] = Σ_k colsq[j·d+k] / ĝ_{j,k}
//   gcd:  ĝ_{j,k} = L_j[k,k]², L_j = chol(G[C_j, C_j])   (grouped Cholesky)
//   else: ĝ_{j,k} = G[j·d+k, j·d+k]                        (the "−GCD" ablation)
static int score_heads(double* err, const double* colsq, const float* G, const char* alive,
                       bool gcd, int64_t d, int64_t N) {
    const int64_t n_heads = N / d;
    std::vector<float> B((size_t)(d * d));
    for (int64_t j = 0; j < n_heads; j++) {
        if (alive && !alive[j]) {
            err[j] = std::numeric_limits<double>::infinity();
            continue;
        }
        const int64_t c0 = j * d;
        double e = 0.0;
        if (gcd) {
            for (int64_t a = 0; a < d; a++)  // lower triangle of the diagonal block
                std::memcpy(&B[a * d], G + (c0 + a) * N + c0, sizeof(float) * (size_t)(a + 1));
            if (blas::potrf_lower(B.data(), (int)d, (int)d) != 0) return NOT_POSITIVE_DEFINITE;
            for (int64_t k = 0; k < d; k++) {
                const double l = B[k * d + k];
                e += colsq[c0 + k] / (l * l);
            }
        } else {
            for (int64_t k = 0; k < d; k++) {
                const double g = G[(c0 + k) * N + c0 + k];
                if (!(g > 0.0)) return NOT_POSITIVE_DEFINITE;
                e += colsq[c0 + k] / g;
            }
        }
        err[j] = e;
    }
    return OK;
}

// ---------------------------------------------------------------------------------------
// public functions

int prune_columns_cpu(float* W, const float* H, const int64_t* cols, int64_t n_cols,
                      float percdamp, bool compensate, int64_t d_out, int64_t N) {
    if (n_cols == 0) return OK;  // a no-op, as in the reference (not even dead inputs)
    std::vector<float> G;
    int st = prepare_inverse(G, W, H, percdamp, d_out, N, compensate);
    if (st != OK) return st;
    return remove_set(W, G.data(), cols, n_cols, compensate, false, d_out, N);
}

int head_errors_cpu(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd,
                    int64_t d_out, int64_t N) {
    std::vector<double> colsq((size_t)N), e((size_t)(N / head_dim));
    column_sq_norms(colsq.data(), W, d_out, N);
    int st = score_heads(e.data(), colsq.data(), Hinv, nullptr, gcd, head_dim, N);
    for (size_t j = 0; j < e.size(); j++) err[j] = (float)e[j];
    return st;
}

int prune_heads_cpu(float* W, int64_t* pruned, const float* H, int64_t n_prune,
                    const int64_t* head_groups, int64_t n_groups, float percdamp, bool gcd,
                    bool compensate, int64_t head_dim, int64_t d_out, int64_t N) {
    const int64_t d = head_dim, n_heads = N / d;
    if (n_prune == 0) return OK;  // W unchanged, as in the reference
    std::vector<float> G;
    int st = prepare_inverse(G, W, H, percdamp, d_out, N, true);
    if (st != OK) return st;

    std::vector<char> alive((size_t)n_heads, 1);
    std::vector<int64_t> group_count((size_t)std::max<int64_t>(n_groups, 1), 0);
    const int64_t quota = head_groups ? n_prune / n_groups : n_prune;
    std::vector<double> colsq((size_t)N), err((size_t)n_heads);
    std::vector<int64_t> S((size_t)d);
    for (int64_t it = 0; it < n_prune; it++) {
        // 1. head errors (Eq. 5) on the current W and the current (downdated) G
        column_sq_norms(colsq.data(), W, d_out, N);
        st = score_heads(err.data(), colsq.data(), G.data(), alive.data(), gcd, d, N);
        if (st != OK) return st;
        // 2. the smallest error among heads whose group is under quota (ties: lowest index)
        int64_t best = -1;
        for (int64_t j = 0; j < n_heads; j++) {
            if (!alive[j] || (head_groups && group_count[head_groups[j]] >= quota)) continue;
            if (best < 0 || err[j] < err[best]) best = j;
        }
        assert(best >= 0);
        // 3. remove its d columns: exact compensation, then downdate G (not after the last)
        std::iota(S.begin(), S.end(), best * d);
        st = remove_set(W, G.data(), S.data(), d, compensate, it + 1 < n_prune, d_out, N);
        if (st != OK) return st;
        alive[best] = 0;
        if (head_groups) group_count[head_groups[best]]++;
    }
    int64_t k = 0;
    for (int64_t j = 0; j < n_heads; j++)
        if (!alive[j]) pruned[k++] = j;
    return OK;
}

int prune_channels_cpu(float* W, int64_t* pruned, const float* H, const int64_t* group_sizes,
                       int64_t n_groups, float percdamp, bool compensate, int64_t d_out,
                       int64_t N) {
    if (n_groups == 0) return OK;  // W unchanged, as in the reference
    std::vector<float> G;
    int st = prepare_inverse(G, W, H, percdamp, d_out, N, true);
    if (st != OK) return st;

    std::vector<char> alive((size_t)N, 1);
    std::vector<double> colsq((size_t)N), err((size_t)N);
    std::vector<int64_t> order((size_t)N);
    for (int64_t k = 0; k < n_groups; k++) {
        const int64_t g = group_sizes[k];
        // 1. per-column error on the plain diagonal (spec §4.2 step 2)
        column_sq_norms(colsq.data(), W, d_out, N);
        for (int64_t c = 0; c < N; c++) {
            const double gcc = G[c * N + c];
            if (alive[c] && !(gcc > 0.0)) return NOT_POSITIVE_DEFINITE;
            err[c] = alive[c] ? colsq[c] / gcc : std::numeric_limits<double>::infinity();
        }
        // 2. the g smallest, ascending (ties: lowest index)
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + g, order.end(),
                          [&](int64_t a, int64_t b) { return err[a] < err[b] || (err[a] == err[b] && a < b); });
        // 3. remove them jointly (the order inside a group does not change the result)
        st = remove_set(W, G.data(), order.data(), g, compensate, k + 1 < n_groups, d_out, N);
        if (st != OK) return st;
        for (int64_t a = 0; a < g; a++) alive[order[a]] = 0;
    }
    int64_t k = 0;
    for (int64_t c = 0; c < N; c++)
        if (!alive[c]) pruned[k++] = c;
    return OK;
}

int64_t dgs_group_sizes(int64_t* sizes, int64_t T) {
    // floor division as Python's //, which rounds toward −∞
    auto floordiv2 = [](int64_t x) { return x >= 0 ? x / 2 : -((-x + 1) / 2); };
    int64_t b = floordiv2(T - 512), done = 0, n = 0;
    while (done < T) {
        const int64_t g = std::min(T - done, std::min(std::max<int64_t>(b, 64), (int64_t)1024));
        sizes[n++] = g;
        done += g;
        b = floordiv2(b - 512);
    }
    return n;
}

}  // namespace slimgpt
