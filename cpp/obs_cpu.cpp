// Structured OBS on the CPU: the twin of reference/downdate.py (prune_columns, prune_heads,
// prune_channels, losses included) and of reference head_errors and dgs_group_sizes (paper
// Eqs. 3-5, spec §2-4).
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
// published local loop + global update compute the same product column by column; the loss
// of the set is ½‖E‖². Every run is normalised (scale.h) and its outputs checked for NaN/Inf
// (NOT_FINITE). docs/cpp.md has the derivation. Not here: validation (bindings.cpp), the
// CUDA twin (obs_cuda.cu), and the non-positive-definite retry with more damping
// (slimgpt/ops.py).
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
#include "scale.h"
#include "slimgpt.h"

namespace slimgpt {

// ---------------------------------------------------------------------------------------
// helpers

// colsq[c] = ||W[:,c]||², accumulated in double
static void column_sq_norms(double* colsq, const float* W, int64_t d_out, int64_t N) {
    std::fill(colsq, colsq + N, 0.0);
    for (int64_t r = 0; r < d_out; r++) {
        const float* w = W + r * N;
        for (int64_t c = 0; c < N; c++) colsq[c] += (double)w[c] * (double)w[c];
    }
}

static float max_abs(const float* A, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) m = std::max(m, std::fabs(A[i]));
    return m;
}

// W ← W·2^-w_exp, and W[:, j] = 0 for the dead inputs j (H[j,j] == 0; spec §2.4)
static void prepare_weight(float* W, const float* H, int w_exp, int64_t d_out, int64_t N) {
    const double s = std::ldexp(1.0, -w_exp);
    std::vector<char> dead((size_t)N);
    for (int64_t j = 0; j < N; j++) dead[(size_t)j] = H[j * (N + 1)] == 0.0f;
    for (int64_t r = 0; r < d_out; r++) {
        float* w = W + r * N;
        for (int64_t c = 0; c < N; c++) w[c] = dead[(size_t)c] ? 0.0f : (float)(s * (double)w[c]);
    }
}

// G ← H'·4^-h_exp, then G ← G⁻¹ (lower triangle) when invert. H' is H with the dead diagonal
// entries set to 1, plus damping (spec §2.4). A dead entry is decoupled (its row and column
// are 0) and its W column is 0, so its value changes neither W, the selection nor the loss:
// it is 1 in the run's units rather than 4^-h_exp, which could overflow float32.
static int prepare_inverse(std::vector<float>& G, const float* H, const Scales& sc, int64_t N,
                           bool invert) {
    const double s = std::ldexp(1.0, -2 * sc.h_exp);
    G.resize((size_t)(N * N));
    for (int64_t i = 0; i < N * N; i++) G[(size_t)i] = (float)(s * (double)H[i]);
    for (int64_t j = 0; j < N; j++) {
        if (H[j * (N + 1)] == 0.0f) G[(size_t)(j * (N + 1))] = 1.0f;
        G[(size_t)(j * (N + 1))] += sc.damp;
    }
    if (!invert) return OK;
    // G = H⁻¹: Cholesky, then the inverse from the factor (as torch.cholesky_inverse)
    if (blas::potrf_lower(G.data(), (int)N, (int)N) != 0) return NOT_POSITIVE_DEFINITE;
    if (blas::potri_lower(G.data(), (int)N, (int)N) != 0) return NOT_POSITIVE_DEFINITE;
    return OK;
}

// ½ tr(W_P H'_PP W_Pᵀ) in double and in the run's units: the Eq. (1) cost of zeroing the
// columns P of the prepared W without compensation (reference.damping.objective), with H' as
// in prepare_inverse. Column blocks of H'_PP keep the workspace at O(d_out·p).
static double objective(const float* W, const float* H, const int64_t* P, int64_t p,
                        const Scales& sc, int64_t d_out, int64_t N) {
    const double s = std::ldexp(1.0, -2 * sc.h_exp);
    const int64_t bs = std::min<int64_t>(p, 256);
    std::vector<double> WP((size_t)(d_out * p)), HB((size_t)(p * bs)), T((size_t)(d_out * bs));
    for (int64_t r = 0; r < d_out; r++)
        for (int64_t a = 0; a < p; a++) WP[(size_t)(r * p + a)] = W[r * N + P[a]];
    double sum = 0.0;
    for (int64_t b0 = 0; b0 < p; b0 += bs) {
        const int64_t nb = std::min(bs, p - b0);
        for (int64_t a = 0; a < p; a++)  // HB (p, nb) = H'[P, P[b0 : b0+nb]]
            for (int64_t b = 0; b < nb; b++) {
                const int64_t i = P[a], j = P[b0 + b];
                double h = s * (double)H[i * N + j];
                if (i == j) h = (H[i * N + i] == 0.0f ? 1.0 : h) + (double)sc.damp;
                HB[(size_t)(a * nb + b)] = h;
            }
        // T (d_out, nb) = W_P H'[P, block]; the block's share of the trace is Σ T ∘ W_block
        scipy_cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d_out, (int)nb, (int)p,
                          1.0, WP.data(), (int)p, HB.data(), (int)nb, 0.0, T.data(), (int)nb);
        for (int64_t r = 0; r < d_out; r++)
            for (int64_t b = 0; b < nb; b++)
                sum += T[(size_t)(r * nb + b)] * WP[(size_t)(r * p + b0 + b)];
    }
    return 0.5 * sum;
}

static void zero_columns(float* W, const int64_t* P, int64_t p, int64_t d_out, int64_t N) {
    for (int64_t r = 0; r < d_out; r++)
        for (int64_t a = 0; a < p; a++) W[r * N + P[a]] = 0.0f;
}

// Back to the caller's units: W ← W·2^w_exp, *loss = loss_run·4^(w_exp + h_exp).
// NOT_FINITE when either is NaN/Inf (finite inputs, so H is numerically not positive definite).
static int finish(float* W, double* loss, double loss_run, const Scales& sc, int64_t d_out,
                  int64_t N) {
    const double s = std::ldexp(1.0, sc.w_exp);
    bool finite = true;
    for (int64_t i = 0; i < d_out * N; i++) {
        W[i] = (float)(s * (double)W[i]);
        finite = finite && std::isfinite(W[i]);
    }
    *loss = std::ldexp(loss_run, 2 * (sc.w_exp + sc.h_exp));
    return finite && std::isfinite(*loss) ? OK : NOT_FINITE;
}

// Remove the column set S (s columns, any order) from W and G: exact OBS for a set
// (reference.downdate.remove_set).
//   compensate: W_K −= E Ut[:,K] with E = W_S L_S⁻ᵀ, then W[:,S] = 0, and *loss += ½‖E‖²;
//               else W is left alone (the caller measures, then zeroes, all pruned columns)
//   downdate:   G −= Utᵀ Ut, then rows/cols S of G zeroed and G[s,s] = 1 (never read again)
static int remove_set(float* W, double* loss, float* G, const int64_t* S, int64_t s,
                      bool compensate, bool downdate, int64_t d_out, int64_t N) {
    if (s == 0 || !(compensate || downdate)) return OK;
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
    scipy_cblas_strsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, (int)s,
                      (int)N, 1.0f, LS.data(), (int)s, Ut.data(), (int)N);
    if (compensate) {
        // E (d_out, s) = W_S L_S⁻ᵀ: the scaled errors e_i (spec §2.3 step 3)
        std::vector<float> E((size_t)(d_out * s));
        for (int64_t r = 0; r < d_out; r++)
            for (int64_t a = 0; a < s; a++) E[r * s + a] = W[r * N + S[a]];
        scipy_cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit,
                          (int)d_out, (int)s, 1.0f, LS.data(), (int)s, E.data(), (int)s);
        // the Eq. (1) cost of this set: ½ Σ ||e_i||² = ½ tr(W_S (G_SS)⁻¹ W_Sᵀ)
        double e2 = 0.0;
        for (const float e : E) e2 += (double)e * (double)e;
        *loss += 0.5 * e2;
        // Eq. 4 for a set: W −= E Ut (zeroes W[:,S] up to rounding; set exactly below)
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d_out, (int)N, (int)s,
                          -1.0f, E.data(), (int)s, Ut.data(), (int)N, 1.0f, W, (int)N);
        zero_columns(W, S, s, d_out, N);
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
    return OK;
}

// Eq. 5 for every head j with alive[j]: err[j] = Σ_k colsq[j·d+k] / ĝ_{j,k}, on G·g_scale
//   gcd:  ĝ_{j,k} = L_j[k,k]², L_j = chol(G[C_j, C_j])   (grouped Cholesky)
//   else: ĝ_{j,k} = G[j·d+k, j·d+k]                        (the "−GCD" ablation)
static int score_heads(double* err, const double* colsq, const float* G, const char* alive,
                       bool gcd, double g_scale, int64_t d, int64_t N) {
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
                for (int64_t b = 0; b <= a; b++)
                    B[a * d + b] = (float)(g_scale * (double)G[(c0 + a) * N + c0 + b]);
            if (blas::potrf_lower(B.data(), (int)d, (int)d) != 0) return NOT_POSITIVE_DEFINITE;
            for (int64_t k = 0; k < d; k++) {
                const double l = B[k * d + k];
                e += colsq[c0 + k] / (l * l);
            }
        } else {
            for (int64_t k = 0; k < d; k++) {
                const double g = g_scale * (double)G[(c0 + k) * N + c0 + k];
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

int prune_columns_cpu(float* W, double* loss, const float* H, const int64_t* cols,
                      int64_t n_cols, float percdamp, bool compensate, int64_t d_out, int64_t N) {
    *loss = 0.0;
    if (n_cols == 0) return OK;  // a no-op, as in the reference (not even dead inputs)
    const Scales sc = scales_of(H, N + 1, N, percdamp, max_abs(W, d_out * N));
    prepare_weight(W, H, sc.w_exp, d_out, N);
    double loss_run = 0.0;
    if (compensate) {
        std::vector<float> G;
        int st = prepare_inverse(G, H, sc, N, true);
        if (st != OK) return st;
        st = remove_set(W, &loss_run, G.data(), cols, n_cols, true, false, d_out, N);
        if (st != OK) return st;
    } else {
        loss_run = objective(W, H, cols, n_cols, sc, d_out, N);
        zero_columns(W, cols, n_cols, d_out, N);
    }
    return finish(W, loss, loss_run, sc, d_out, N);
}

int head_errors_cpu(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd,
                    int64_t d_out, int64_t N) {
    // scored on Hinv·4^-h_exp: ĝ scales by 4^-h_exp, so err by 4^h_exp (scale.h)
    const double g_scale = std::ldexp(1.0, -2 * scales_of(Hinv, N + 1, N, 0.0f, 0.0f).h_exp);
    std::vector<double> colsq((size_t)N), e((size_t)(N / head_dim));
    column_sq_norms(colsq.data(), W, d_out, N);
    const int st = score_heads(e.data(), colsq.data(), Hinv, nullptr, gcd, g_scale, head_dim, N);
    if (st != OK) return st;
    bool finite = true;
    for (size_t j = 0; j < e.size(); j++) {
        err[j] = (float)(e[j] * g_scale);
        finite = finite && std::isfinite(err[j]);
    }
    return finite ? OK : NOT_FINITE;
}

int prune_heads_cpu(float* W, int64_t* pruned, double* loss, const float* H, int64_t n_prune,
                    const int64_t* head_groups, int64_t n_groups, float percdamp, bool gcd,
                    bool compensate, int64_t head_dim, int64_t d_out, int64_t N) {
    const int64_t d = head_dim, n_heads = N / d;
    *loss = 0.0;
    if (n_prune == 0) return OK;  // W unchanged, as in the reference
    const Scales sc = scales_of(H, N + 1, N, percdamp, max_abs(W, d_out * N));
    prepare_weight(W, H, sc.w_exp, d_out, N);
    std::vector<float> G;
    int st = prepare_inverse(G, H, sc, N, true);
    if (st != OK) return st;

    std::vector<char> alive((size_t)n_heads, 1);
    std::vector<int64_t> group_count((size_t)std::max<int64_t>(n_groups, 1), 0);
    const int64_t quota = head_groups ? n_prune / n_groups : n_prune;
    std::vector<double> colsq((size_t)N), err((size_t)n_heads);
    std::vector<int64_t> S((size_t)d);
    double loss_run = 0.0;
    for (int64_t it = 0; it < n_prune; it++) {
        // 1. head errors (Eq. 5) on the current W and the current (downdated) G
        column_sq_norms(colsq.data(), W, d_out, N);
        st = score_heads(err.data(), colsq.data(), G.data(), alive.data(), gcd, 1.0, d, N);
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
        st = remove_set(W, &loss_run, G.data(), S.data(), d, compensate, it + 1 < n_prune, d_out,
                        N);
        if (st != OK) return st;
        alive[best] = 0;
        if (head_groups) group_count[head_groups[best]]++;
    }
    int64_t k = 0;
    for (int64_t j = 0; j < n_heads; j++)
        if (!alive[j]) pruned[k++] = j;
    if (!compensate) {  // the cost of zeroing every pruned column at once
        std::vector<int64_t> P((size_t)(n_prune * d));
        for (int64_t a = 0; a < n_prune; a++) std::iota(&P[a * d], &P[a * d] + d, pruned[a] * d);
        loss_run = objective(W, H, P.data(), n_prune * d, sc, d_out, N);
        zero_columns(W, P.data(), n_prune * d, d_out, N);
    }
    return finish(W, loss, loss_run, sc, d_out, N);
}

int prune_channels_cpu(float* W, int64_t* pruned, double* loss, const float* H,
                       const int64_t* group_sizes, int64_t n_groups, float percdamp,
                       bool compensate, int64_t d_out, int64_t N) {
    *loss = 0.0;
    if (n_groups == 0) return OK;  // W unchanged, as in the reference
    const Scales sc = scales_of(H, N + 1, N, percdamp, max_abs(W, d_out * N));
    prepare_weight(W, H, sc.w_exp, d_out, N);
    std::vector<float> G;
    int st = prepare_inverse(G, H, sc, N, true);
    if (st != OK) return st;

    std::vector<char> alive((size_t)N, 1);
    std::vector<double> colsq((size_t)N), err((size_t)N);
    std::vector<int64_t> order((size_t)N);
    double loss_run = 0.0;
    int64_t total = 0;
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
        std::partial_sort(order.begin(), order.begin() + g, order.end(), [&](int64_t a, int64_t b) {
            return err[a] < err[b] || (err[a] == err[b] && a < b);
        });
        // 3. remove them jointly (the order inside a group does not change the result)
        st = remove_set(W, &loss_run, G.data(), order.data(), g, compensate, k + 1 < n_groups,
                        d_out, N);
        if (st != OK) return st;
        for (int64_t a = 0; a < g; a++) alive[order[a]] = 0;
        total += g;
    }
    int64_t k = 0;
    for (int64_t c = 0; c < N; c++)
        if (!alive[c]) pruned[k++] = c;
    if (!compensate) {  // the cost of zeroing every pruned column at once
        loss_run = objective(W, H, pruned, total, sc, d_out, N);
        zero_columns(W, pruned, total, d_out, N);
    }
    return finish(W, loss, loss_run, sc, d_out, N);
}

int64_t dgs_group_sizes(int64_t* sizes, int64_t T) {
    // reference/channels.py: groups of min(rest, b_k, DGS_MAX) while b_k > DGS_MIN, then the
    // tail in groups of DGS_MIN, the last one smaller; counted before anything is written
    auto floordiv2 = [](int64_t x) { return x >= 0 ? x / 2 : -((1 - x) / 2); };  // Python's //
    int64_t b = floordiv2(T - DGS_OFFSET), remaining = T, n = 0;
    while (remaining > 0 && b > DGS_MIN) {
        const int64_t g = std::min({remaining, b, DGS_MAX});
        if (sizes) sizes[n] = g;
        n++;
        remaining -= g;
        b = floordiv2(b - DGS_OFFSET);
    }
    const int64_t full = remaining / DGS_MIN, rest = remaining % DGS_MIN;
    if (sizes) {
        std::fill(sizes + n, sizes + n + full, DGS_MIN);
        if (rest) sizes[n + full] = rest;
    }
    return n + full + (rest > 0);
}

}  // namespace slimgpt
