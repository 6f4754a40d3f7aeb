// Structured OBS on the CPU: the twin of reference/downdate.py (prune_columns, prune_heads,
// prune_channels, losses included) and of reference head_errors and dgs_group_sizes (paper
// Eqs. 3-5, spec §2-4).
//
// What differs from the published loop (and from the float64 reference, which mirrors it):
// H is factored ONCE, and each pruned head / FFN group S is removed exactly in block form
// (Eq. 3 applied to a set): with G the current H⁻¹ (H without the sets removed so far),
//     L_S = chol(G_SS),  Ut = L_S⁻¹ G[S,:],  E = W_S L_S⁻ᵀ,
//     W −= E Ut   (Eq. 4 for a set: W_K −= W_S (G_SS)⁻¹ G_SK),   loss += ½‖E‖²,
//     G −= Utᵀ Ut (Eq. 3 for a set: the inverse of H with S removed).
// Ut are the first |S| rows of the published code's Cholesky factor of the reordered G and E
// its scaled errors, so the published local loop + global update are the one product E Ut.
//
// How G is held ("lazy" downdates, docs/cpp.md): G itself is never formed. The core keeps
//     M = L⁻¹ with H' = L Lᵀ         (spotrf + strtri, tiled: 2N³/3 flops instead of potri's N³)
//     U = the Ut of the sets removed so far, stacked (R x N)
// so that the current G = MᵀM − UᵀU, and reads only what the greedy loop needs from it:
//     rows     G[S,:] = M[:,S]ᵀ M − U[:,S]ᵀ U     (M is lower triangular: row panels of M below
//                                                 max(S) only, ≈ ⅔|S|N² + 2|S|RN flops)
//     diagonal diag G = column norms² of M, minus those of each new Ut      (channels, −GCD)
//     head blocks G[C_j, C_j] = M[:,C_j]ᵀ M[:,C_j], minus Ut[:,C_j]ᵀ Ut[:,C_j] per new Ut (GCD)
// Nothing is gathered column-wise from a triangle and nothing N x N is written after the
// factorisation; the column norms of W are updated inside the tiles of W −= E Ut.
//
// Threads: every step is a set of independent tiles (columns of G's rows / of W, rows of E,
// heads) run on the core's threads (parallel.h) with single-threaded BLAS; results do not
// depend on the number of threads. Every run is normalised (scale.h) and its outputs checked
// for NaN/Inf (NOT_FINITE). Not here: validation (bindings.cpp), the CUDA twin (obs_cuda.cu),
// and the non-positive-definite retry with more damping (slimgpt/ops.py).
#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "blas.h"
#include "dense.h"
#include "parallel.h"
#include "scale.h"
#include "slimgpt.h"

namespace slimgpt {

namespace {

constexpr int64_t ROWS = 256;  // rows of W (or E) per task

// a float buffer that is not zero-filled (every element is written before it is read)
struct Floats {
    std::unique_ptr<float[]> p;
    size_t n = 0;
    void resize(size_t size) {
        if (size != n) p.reset(new float[size]), n = size;
    }
    float* data() { return p.get(); }
    const float* data() const { return p.get(); }
    size_t size() const { return n; }
};

// ---------------------------------------------------------------------------------------
// helpers

float max_abs(const float* A, int64_t n) {
    const int64_t chunk = int64_t(1) << 20, nc = std::max<int64_t>(1, (n + chunk - 1) / chunk);
    std::vector<float> m((size_t)nc, 0.0f);
    parallel_for(nc, [&](int64_t c, int) {
        float v = 0.0f;
        for (int64_t i = c * chunk, e = std::min(n, (c + 1) * chunk); i < e; i++) v = std::max(v, std::fabs(A[i]));
        m[(size_t)c] = v;
    });
    return *std::max_element(m.begin(), m.end());
}

// acc[c - c0] += Σ_{r0 <= r < r1} A[r, c]² for c in [c0, c1)
void add_col_sq(double* acc, const float* A, int64_t lda, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t r = r0; r < r1; r++) {
        const float* a = A + r * lda;
        for (int64_t c = c0; c < c1; c++) acc[c - c0] += (double)a[c] * (double)a[c];
    }
}

// colsq[c] = ||W[:,c]||², accumulated in double, one tile of columns per task
void column_sq_norms(double* colsq, const float* W, int64_t d_out, int64_t N) {
    parallel_for(n_tiles(N), [&](int64_t a, int) {
        const int64_t c0 = a * TILE, c1 = std::min(N, c0 + TILE);
        std::fill(colsq + c0, colsq + c1, 0.0);
        add_col_sq(colsq + c0, W, N, 0, d_out, c0, c1);
    });
}

// W ← W·2^-w_exp, and W[:, j] = 0 for the dead inputs j (H[j,j] == 0; spec §2.4)
void prepare_weight(float* W, const float* H, int w_exp, int64_t d_out, int64_t N) {
    const double s = std::ldexp(1.0, -w_exp);
    std::vector<char> dead((size_t)N);
    for (int64_t j = 0; j < N; j++) dead[(size_t)j] = H[j * (N + 1)] == 0.0f;
    parallel_for(n_tiles(d_out, ROWS), [&](int64_t b, int) {
        for (int64_t r = b * ROWS; r < std::min(d_out, (b + 1) * ROWS); r++) {
            float* w = W + r * N;
            for (int64_t c = 0; c < N; c++) w[c] = dead[(size_t)c] ? 0.0f : (float)(s * (double)w[c]);
        }
    });
}

// M ← L⁻¹ where L Lᵀ = H'·4^-h_exp (row-major, lower, zeros above). H' is H with the dead
// diagonal entries set to 1, plus damping (spec §2.4). A dead entry is decoupled (its row and
// column are 0) and its W column is 0, so its value changes neither W, the selection nor the
// loss: it is 1 in the run's units rather than 4^-h_exp, which could overflow float32.
int factor_inverse(Floats& M, const float* H, const Scales& sc, int64_t N) {
    const double s = std::ldexp(1.0, -2 * sc.h_exp);
    M.resize((size_t)(N * N));
    float* A = M.data();
    parallel_for(n_tiles(N, ROWS), [&](int64_t b, int) {
        for (int64_t i = b * ROWS; i < std::min(N, (b + 1) * ROWS); i++) {
            for (int64_t j = 0; j <= i; j++) A[i * N + j] = (float)(s * (double)H[i * N + j]);
            std::memset(A + i * N + i + 1, 0, sizeof(float) * (size_t)(N - i - 1));
            if (H[i * (N + 1)] == 0.0f) A[i * (N + 1)] = 1.0f;
            A[i * (N + 1)] += sc.damp;
        }
    });
    if (potrf_tiled(A, N, N) != 0) return NOT_POSITIVE_DEFINITE;
    if (trtri_tiled(A, N) != 0) return NOT_POSITIVE_DEFINITE;
    return OK;
}

// diag[c] = (MᵀM)[c,c] = Σ_{i >= c} M[i,c]²: the diagonal of G = H'⁻¹
void inverse_diagonal(double* diag, const float* M, int64_t N) {
    parallel_for(n_tiles(N), [&](int64_t a, int) {
        const int64_t c0 = a * TILE, c1 = std::min(N, c0 + TILE);
        std::fill(diag + c0, diag + c1, 0.0);
        add_col_sq(diag + c0, M, N, c0, N, c0, c1);
    });
}

// ½ tr(W_P H'_PP W_Pᵀ) in double and in the run's units: the Eq. (1) cost of zeroing the
// columns P of the prepared W without compensation (reference.damping.objective), with H' as
// in factor_inverse. Column blocks of H'_PP keep the workspace at O(d_out·p).
double objective(const float* W, const float* H, const int64_t* P, int64_t p, const Scales& sc, int64_t d_out,
                 int64_t N) {
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
        scipy_cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d_out, (int)nb, (int)p, 1.0, WP.data(),
                          (int)p, HB.data(), (int)nb, 0.0, T.data(), (int)nb);
        for (int64_t r = 0; r < d_out; r++)
            for (int64_t b = 0; b < nb; b++) sum += T[(size_t)(r * nb + b)] * WP[(size_t)(r * p + b0 + b)];
    }
    return 0.5 * sum;
}

void zero_columns(float* W, const int64_t* P, int64_t p, int64_t d_out, int64_t N) {
    parallel_for(n_tiles(d_out, ROWS), [&](int64_t b, int) {
        for (int64_t r = b * ROWS; r < std::min(d_out, (b + 1) * ROWS); r++)
            for (int64_t a = 0; a < p; a++) W[r * N + P[a]] = 0.0f;
    });
}

// Back to the caller's units: W ← W·2^w_exp, *loss = loss_run·4^(w_exp + h_exp).
// NOT_FINITE when either is NaN/Inf (finite inputs, so H is numerically not positive definite).
int finish(float* W, double* loss, double loss_run, const Scales& sc, int64_t d_out, int64_t N) {
    const double s = std::ldexp(1.0, sc.w_exp);
    std::atomic<bool> finite{true};
    parallel_for(n_tiles(d_out, ROWS), [&](int64_t b, int) {
        bool ok = true;
        for (int64_t i = b * ROWS * N, e = std::min(d_out, (b + 1) * ROWS) * N; i < e; i++) {
            W[i] = (float)(s * (double)W[i]);
            ok = ok && std::isfinite(W[i]);
        }
        if (!ok) finite = false;
    });
    *loss = std::ldexp(loss_run, 2 * (sc.w_exp + sc.h_exp));
    return finite && std::isfinite(*loss) ? OK : NOT_FINITE;
}

// ---------------------------------------------------------------------------------------
// the greedy state: G = MᵀM − UᵀU over the columns not removed yet

struct Greedy {
    float* W;
    const float* M;             // L⁻¹ (N x N), read only
    int64_t d_out, N;
    Floats U;                   // (capacity, N): the Ut of the removed sets; rows [R, R+s) hold
    int64_t R = 0;              // the current set's rows of G, then its Ut
    std::vector<char> removed;  // columns whose rows/columns of G are gone (never read again)
    std::vector<double> colsq;  // ||W[:,c]||² (kept current when asked)
    std::vector<double> diag;   // diag G (kept current when asked)
    double loss = 0.0;

    Greedy(float* W_, const float* M_, int64_t d_out_, int64_t N_, int64_t capacity)
        : W(W_), M(M_), d_out(d_out_), N(N_), removed((size_t)N_, 0) {
        U.resize((size_t)(capacity * N_));
    }
};

// Remove the column set S (s columns, any order) from W and G: exact OBS for a set
// (reference.downdate.remove_set).
//   compensate: W_K −= E Ut[:,K] with E = W_S L_S⁻ᵀ, then W[:,S] = 0, loss += ½‖E‖², and
//               colsq (when track_colsq) updated from the new W;
//               else W is left alone (the caller measures, then zeroes, all pruned columns)
//   downdate:   Ut appended to U (G −= UtᵀUt), diag (when track_diag) updated; S removed
int remove_set(Greedy& g, const int64_t* S_in, int64_t s, bool compensate, bool downdate, bool track_colsq,
               bool track_diag) {
    if (s == 0 || !(compensate || downdate)) return OK;
    const int64_t N = g.N, d_out = g.d_out, R = g.R, nt = n_tiles(N);
    std::vector<int64_t> S(S_in, S_in + s);
    std::sort(S.begin(), S.end());  // the order inside a set does not change the result
    assert((R + s) * N <= (int64_t)g.U.size());
    float* X = g.U.data() + R * N;  // G[S,:], then Ut = L_S⁻¹ G[S,:]
    const float* M = g.M;

    // Ms (N - i_lo, s) = M[i_lo:, S]: rows below i_lo = min S are 0 (M is lower triangular)
    const int64_t i_lo = S[0];
    Floats Ms, US;
    Ms.resize((size_t)((N - i_lo) * s));
    US.resize((size_t)(R * s));
    parallel_for(n_tiles(N - i_lo, ROWS), [&](int64_t b, int) {
        for (int64_t i = i_lo + b * ROWS; i < std::min(N, i_lo + (b + 1) * ROWS); i++)
            for (int64_t r = 0; r < s; r++) Ms.data()[(i - i_lo) * s + r] = M[i * N + S[r]];
    });
    parallel_for(n_tiles(R, ROWS), [&](int64_t b, int) {  // US (R, s) = U[:, S]
        for (int64_t q = b * ROWS; q < std::min(R, (b + 1) * ROWS); q++)
            for (int64_t r = 0; r < s; r++) US.data()[q * s + r] = g.U.data()[q * N + S[r]];
    });
    // rows of M in tile p reach only the S[r] below its end: the first s_below[p] of S
    std::vector<int64_t> s_below((size_t)nt);
    for (int64_t p = 0; p < nt; p++)
        s_below[(size_t)p] = std::lower_bound(S.begin(), S.end(), std::min(N, (p + 1) * TILE)) - S.begin();

    // 1. X = G[S,:] = M[:,S]ᵀ M − U[:,S]ᵀ U, one tile of columns per task (the leftmost, which
    //    meets the most row tiles of M, first); the columns of earlier sets are 0
    parallel_for(nt, [&](int64_t a, int) {
        const int64_t c0 = a * TILE, cw = std::min(TILE, N - c0);
        for (int64_t r = 0; r < s; r++) std::memset(X + r * N + c0, 0, sizeof(float) * (size_t)cw);
        for (int64_t p = a; p < nt; p++) {  // M[i, c0:] = 0 for i < c0
            const int64_t i0 = std::max(p * TILE, i_lo), i1 = std::min(N, (p + 1) * TILE), sb = s_below[(size_t)p];
            if (sb == 0 || i1 <= i0) continue;
            scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)sb, (int)cw, (int)(i1 - i0), 1.0f,
                              Ms.data() + (i0 - i_lo) * s, (int)s, M + i0 * N + c0, (int)N, 1.0f, X + c0, (int)N);
        }
        if (R > 0)
            scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)s, (int)cw, (int)R, -1.0f, US.data(),
                              (int)s, g.U.data() + c0, (int)N, 1.0f, X + c0, (int)N);
        for (int64_t c = c0; c < c0 + cw; c++)
            if (g.removed[(size_t)c])
                for (int64_t r = 0; r < s; r++) X[r * N + c] = 0.0f;
    });

    // 2. G_SS = L_S L_Sᵀ (Lemma ii: the leading block of the reordered G's factor)
    Floats LS;
    LS.resize((size_t)(s * s));
    parallel_for(n_tiles(s, ROWS), [&](int64_t b, int) {  // the lower triangle
        for (int64_t a = b * ROWS; a < std::min(s, (b + 1) * ROWS); a++)
            for (int64_t c = 0; c <= a; c++) LS.data()[a * s + c] = X[a * N + S[c]];
    });
    if (potrf_tiled(LS.data(), s, s) != 0) return NOT_POSITIVE_DEFINITE;

    // 3. E (d_out, s) = W_S L_S⁻ᵀ: the scaled errors e_i (spec §2.3 step 3); ½Σ||e_i||² is the
    //    Eq. (1) cost of this set = ½ tr(W_S (G_SS)⁻¹ W_Sᵀ)
    Floats E;
    if (compensate) {
        E.resize((size_t)(d_out * s));
        const int64_t nb = n_tiles(d_out, ROWS);
        std::vector<double> e2((size_t)nb, 0.0);
        parallel_for(nb, [&](int64_t b, int) {
            const int64_t r0 = b * ROWS, rb = std::min(ROWS, d_out - r0);
            float* Eb = E.data() + r0 * s;
            for (int64_t r = 0; r < rb; r++)
                for (int64_t a = 0; a < s; a++) Eb[r * s + a] = g.W[(r0 + r) * N + S[a]];
            scipy_cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, (int)rb, (int)s, 1.0f,
                              LS.data(), (int)s, Eb, (int)s);
            double v = 0.0;
            for (int64_t i = 0; i < rb * s; i++) v += (double)Eb[i] * (double)Eb[i];
            e2[(size_t)b] = v;
        });
        for (const double v : e2) g.loss += 0.5 * v;
    }

    // 4. per tile of columns: Ut = L_S⁻¹ G[S,:] (the first s rows of the published U, spec
    //    §2.3); diag G −= column norms² of Ut; W −= E Ut (Eq. 4 for a set; W[:,S] set to 0
    //    exactly) with the new column norms of W taken while the tile is in cache
    parallel_for(nt, [&](int64_t a, int) {
        const int64_t c0 = a * TILE, c1 = std::min(N, c0 + TILE), cw = c1 - c0;
        scipy_cblas_strsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, (int)s, (int)cw, 1.0f,
                          LS.data(), (int)s, X + c0, (int)N);
        double acc[TILE];
        if (downdate && track_diag) {
            std::fill(acc, acc + cw, 0.0);
            add_col_sq(acc, X, N, 0, s, c0, c1);
            for (int64_t c = c0; c < c1; c++) g.diag[(size_t)c] -= acc[c - c0];
        }
        if (compensate) {
            const int64_t* z0 = std::lower_bound(S.data(), S.data() + s, c0);
            const int64_t* z1 = std::lower_bound(S.data(), S.data() + s, c1);
            std::fill(acc, acc + cw, 0.0);
            for (int64_t r0 = 0; r0 < d_out; r0 += ROWS) {
                const int64_t rb = std::min(ROWS, d_out - r0);
                float* Wb = g.W + r0 * N;
                scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rb, (int)cw, (int)s, -1.0f,
                                  E.data() + r0 * s, (int)s, X + c0, (int)N, 1.0f, Wb + c0, (int)N);
                for (int64_t r = 0; r < rb; r++)
                    for (const int64_t* z = z0; z < z1; z++) Wb[r * N + *z] = 0.0f;
                if (track_colsq) add_col_sq(acc, Wb, N, 0, rb, c0, c1);
            }
            if (track_colsq) std::copy(acc, acc + cw, g.colsq.begin() + c0);
        }
    });
    if (downdate) {
        g.R += s;
        for (const int64_t c : S) g.removed[(size_t)c] = 1;
    }
    return OK;
}

// Eq. 5 for every head j with alive[j] (all when alive is null): err[j] = Σ_k colsq[j·d+k] / ĝ_{j,k}
//   gcd:  ĝ_{j,k} = L_j[k,k]², L_j = chol(G[C_j, C_j])   (grouped Cholesky)
//   else: ĝ_{j,k} = G[j·d+k, j·d+k]                        (the "−GCD" ablation)
// The caller says where G's pieces are: block(j, B) writes the lower triangle of G[C_j, C_j]
// into the d x d scratch B, diag(c) returns G[c, c]; pruned heads get +inf.
template <class Block, class Diag>
int score_heads(double* err, const double* colsq, const char* alive, bool gcd, int64_t d, int64_t N, Block block,
                Diag diag) {
    const int64_t n_heads = N / d;
    const int nth = num_threads();
    std::vector<float> B(gcd ? (size_t)(nth * d * d) : 0);
    std::atomic<bool> pd{true};
    parallel_for(n_heads, [&](int64_t j, int t) {
        if (alive && !alive[j]) {
            err[j] = std::numeric_limits<double>::infinity();
            return;
        }
        const int64_t c0 = j * d;
        double e = 0.0;
        if (gcd) {
            float* Bt = &B[(size_t)(t * d * d)];
            block(j, Bt);
            if (blas::potrf_lower(Bt, (int)d, (int)d) != 0) {
                pd = false;
                return;
            }
            for (int64_t k = 0; k < d; k++) {
                const double l = Bt[k * d + k];
                e += colsq[c0 + k] / (l * l);
            }
        } else {
            for (int64_t k = 0; k < d; k++) {
                const double gk = diag(c0 + k);
                if (!(gk > 0.0)) {
                    pd = false;
                    return;
                }
                e += colsq[c0 + k] / gk;
            }
        }
        err[j] = e;
    }, nth);
    return pd ? OK : NOT_POSITIVE_DEFINITE;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// public functions

int prune_columns_cpu(float* W, double* loss, const float* H, const int64_t* cols, int64_t n_cols, float percdamp,
                      bool compensate, int64_t d_out, int64_t N) {
    *loss = 0.0;
    if (n_cols == 0) return OK;  // a no-op, as in the reference (not even dead inputs)
    const Scales sc = scales_of(H, N + 1, N, percdamp, max_abs(W, d_out * N));
    prepare_weight(W, H, sc.w_exp, d_out, N);
    double loss_run = 0.0;
    if (compensate) {
        Floats M;
        int st = factor_inverse(M, H, sc, N);
        if (st != OK) return st;
        Greedy g(W, M.data(), d_out, N, n_cols);
        st = remove_set(g, cols, n_cols, true, false, false, false);
        if (st != OK) return st;
        loss_run = g.loss;
    } else {
        loss_run = objective(W, H, cols, n_cols, sc, d_out, N);
        zero_columns(W, cols, n_cols, d_out, N);
    }
    return finish(W, loss, loss_run, sc, d_out, N);
}

int head_errors_cpu(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd, int64_t d_out,
                    int64_t N) {
    // scored on Hinv·4^-h_exp: ĝ scales by 4^-h_exp, so err by 4^h_exp (scale.h)
    const double g_scale = std::ldexp(1.0, -2 * scales_of(Hinv, N + 1, N, 0.0f, 0.0f).h_exp);
    std::vector<double> colsq((size_t)N), e((size_t)(N / head_dim));
    column_sq_norms(colsq.data(), W, d_out, N);
    const int64_t d = head_dim;
    // Hinv (a given H⁻¹) is read through its lower triangle, scaled by g_scale
    const int st = score_heads(
        e.data(), colsq.data(), nullptr, gcd, d, N,
        [&](int64_t j, float* B) {
            for (int64_t a = 0; a < d; a++)
                for (int64_t b = 0; b <= a; b++) B[a * d + b] = (float)(g_scale * (double)Hinv[(j * d + a) * N + j * d + b]);
        },
        [&](int64_t c) { return g_scale * (double)Hinv[c * (N + 1)]; });
    if (st != OK) return st;
    bool finite = true;
    for (size_t j = 0; j < e.size(); j++) {
        err[j] = (float)(e[j] * g_scale);
        finite = finite && std::isfinite(err[j]);
    }
    return finite ? OK : NOT_FINITE;
}

int prune_heads_cpu(float* W, int64_t* pruned, double* loss, const float* H, int64_t n_prune,
                    const int64_t* head_groups, int64_t n_groups, float percdamp, bool gcd, bool compensate,
                    int64_t head_dim, int64_t d_out, int64_t N) {
    const int64_t d = head_dim, n_heads = N / d;
    *loss = 0.0;
    if (n_prune == 0) return OK;  // W unchanged, as in the reference
    const Scales sc = scales_of(H, N + 1, N, percdamp, max_abs(W, d_out * N));
    prepare_weight(W, H, sc.w_exp, d_out, N);
    Floats M;
    int st = factor_inverse(M, H, sc, N);
    if (st != OK) return st;
    Greedy g(W, M.data(), d_out, N, n_prune * d);
    g.colsq.resize((size_t)N);
    column_sq_norms(g.colsq.data(), W, d_out, N);

    // the scores' view of G: its diagonal blocks (GCD) or its diagonal (−GCD)
    std::vector<float> blocks;
    if (gcd) {  // G[C_j, C_j] = M[c0:, C_j]ᵀ M[c0:, C_j] (lower triangle)
        blocks.resize((size_t)(n_heads * d * d));
        parallel_for(n_heads, [&](int64_t j, int) {
            const int64_t c0 = j * d;
            scipy_cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)d, (int)(N - c0), 1.0f, M.data() + c0 * N + c0,
                              (int)N, 0.0f, &blocks[(size_t)(j * d * d)], (int)d);
        });
    } else {
        g.diag.resize((size_t)N);
        inverse_diagonal(g.diag.data(), M.data(), N);
    }

    std::vector<char> alive((size_t)n_heads, 1);
    std::vector<int64_t> group_count((size_t)std::max<int64_t>(n_groups, 1), 0);
    const int64_t quota = head_groups ? n_prune / n_groups : n_prune;
    std::vector<double> err((size_t)n_heads);
    std::vector<int64_t> S((size_t)d);
    for (int64_t it = 0; it < n_prune; it++) {
        // 1. head errors (Eq. 5) on the current W and the current G (its downdated head blocks)
        st = score_heads(
            err.data(), g.colsq.data(), alive.data(), gcd, d, N,
            [&](int64_t j, float* B) { std::copy_n(&blocks[(size_t)(j * d * d)], d * d, B); },
            [&](int64_t c) { return g.diag[(size_t)c]; });
        if (st != OK) return st;
        // 2. the smallest error among heads whose group is under quota (ties: lowest index)
        int64_t best = -1;
        for (int64_t j = 0; j < n_heads; j++) {
            if (!alive[j] || (head_groups && group_count[head_groups[j]] >= quota)) continue;
            if (best < 0 || err[j] < err[best]) best = j;
        }
        assert(best >= 0);
        // 3. remove its d columns: exact compensation, then downdate G (not after the last)
        const bool downdate = it + 1 < n_prune;
        std::iota(S.begin(), S.end(), best * d);
        st = remove_set(g, S.data(), d, compensate, downdate, compensate, !gcd);
        if (st != OK) return st;
        alive[best] = 0;
        if (head_groups) group_count[head_groups[best]]++;
        if (downdate && gcd) {  // G[C_j, C_j] −= Ut[:, C_j]ᵀ Ut[:, C_j] for the heads left
            const float* Ut = g.U.data() + (g.R - d) * N;
            parallel_for(n_heads, [&](int64_t j, int) {
                if (!alive[j]) return;
                scipy_cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)d, (int)d, -1.0f, Ut + j * d, (int)N,
                                  1.0f, &blocks[(size_t)(j * d * d)], (int)d);
            });
        }
    }
    int64_t k = 0;
    for (int64_t j = 0; j < n_heads; j++)
        if (!alive[j]) pruned[k++] = j;
    double loss_run = g.loss;
    if (!compensate) {  // the cost of zeroing every pruned column at once
        std::vector<int64_t> P((size_t)(n_prune * d));
        for (int64_t a = 0; a < n_prune; a++) std::iota(&P[a * d], &P[a * d] + d, pruned[a] * d);
        loss_run = objective(W, H, P.data(), n_prune * d, sc, d_out, N);
        zero_columns(W, P.data(), n_prune * d, d_out, N);
    }
    return finish(W, loss, loss_run, sc, d_out, N);
}

int prune_channels_cpu(float* W, int64_t* pruned, double* loss, const float* H, const int64_t* group_sizes,
                       int64_t n_groups, float percdamp, bool compensate, int64_t d_out, int64_t N) {
    *loss = 0.0;
    if (n_groups == 0) return OK;  // W unchanged, as in the reference
    const Scales sc = scales_of(H, N + 1, N, percdamp, max_abs(W, d_out * N));
    prepare_weight(W, H, sc.w_exp, d_out, N);
    Floats M;
    int st = factor_inverse(M, H, sc, N);
    if (st != OK) return st;
    int64_t total = 0;
    for (int64_t k = 0; k < n_groups; k++) total += group_sizes[k];
    Greedy g(W, M.data(), d_out, N, total);
    g.colsq.resize((size_t)N);
    g.diag.resize((size_t)N);
    column_sq_norms(g.colsq.data(), W, d_out, N);
    inverse_diagonal(g.diag.data(), M.data(), N);

    std::vector<char> alive((size_t)N, 1);
    std::vector<double> err((size_t)N);
    std::vector<int64_t> order((size_t)N);
    for (int64_t k = 0; k < n_groups; k++) {
        const int64_t gs = group_sizes[k];
        // 1. per-column error on the plain diagonal (spec §4.2 step 2)
        for (int64_t c = 0; c < N; c++) {
            const double gcc = g.diag[(size_t)c];
            if (alive[c] && !(gcc > 0.0)) return NOT_POSITIVE_DEFINITE;
            err[c] = alive[c] ? g.colsq[(size_t)c] / gcc : std::numeric_limits<double>::infinity();
        }
        // 2. the gs smallest, ascending (ties: lowest index)
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + gs, order.end(), [&](int64_t a, int64_t b) {
            return err[a] < err[b] || (err[a] == err[b] && a < b);
        });
        // 3. remove them jointly (the order inside a group does not change the result)
        const bool downdate = k + 1 < n_groups;
        st = remove_set(g, order.data(), gs, compensate, downdate, compensate, downdate);
        if (st != OK) return st;
        for (int64_t a = 0; a < gs; a++) alive[order[a]] = 0;
    }
    int64_t k = 0;
    for (int64_t c = 0; c < N; c++)
        if (!alive[c]) pruned[k++] = c;
    double loss_run = g.loss;
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
