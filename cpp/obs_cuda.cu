// Structured OBS on CUDA: the twin of obs_cpu.cpp / hessian_cpu.cpp (same algorithm, same
// normalisation (scale.h), losses, dead-input handling, masking of pruned heads and output
// checks; same names with _cuda). NOT RUN ON A DEVICE YET: written and compiled on a machine
// without a GPU; see docs/cpp.md.
//
// Dense algebra goes through cuBLAS and cuSOLVER, which are dlopen'ed on first use (the
// toolkit used to build ships neither library nor headers, and at run time torch's nvidia-*
// wheels have usually loaded them already): the few prototypes and enum values needed are
// declared below. Small kernels do the scaling, gathers, column norms, reductions and the
// bookkeeping; every kernel is a grid-stride loop over a flattened index, so no grid
// dimension limits the matrix sizes.
//
// Layout: cuBLAS is column-major, our matrices row-major, so a row-major (r, c) matrix is a
// column-major (c, r) one. H's row-major lower triangle is the column-major UPPER triangle,
// hence CUBLAS_FILL_MODE_UPPER for the factorisation.
//
// G and the downdates (the CPU core's "lazy" scheme, obs_cpu.cpp): G0 = H'⁻¹ is computed once
// (potrf + potri) and mirrored into FULL symmetric storage, so that a row of it is contiguous;
// it is never written again. The Ut of the removed sets are stacked in U (R x N, row-major),
// so the current G = G0 − UᵀU, and a removed set reads only its own rows:
//   X (s, N) = G0[S, :] − U[:, S]ᵀ U   (row copy + gemm)   same memory as Xᶜ (N, s)
//   X[:, removed] = 0
//   L_S = chol(X[:, S]) (lower)                                potrf
//   Xᶜ ← Xᶜ L_S⁻ᵀ, i.e. X ← L_S⁻¹ X = Ut, appended to U          trsm right, lower, transposed
//   Ec (s, d_out) = L_S⁻¹ W_Sᵀ = Eᵀ                            trsm left, lower; loss += ½ Σ Ec²
//   Wc (N, d_out) −= Xᶜ Ec            (W −= E Ut)               gemm
// and the scores' view of G is kept current from each new Ut: its diagonal (channels, −GCD)
// and its diagonal head blocks (GCD), one small kernel each. The CPU core gets G0's rows from
// M = L⁻¹ instead of potri (fewer flops on a CPU); the results are the same up to rounding.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "obs_cuda.h"
#include "scale.h"
#include "slimgpt.h"

namespace slimgpt {

// ---------------------------------------------------------------------------------------
// cuBLAS / cuSOLVER, dlopen'ed (prototypes as in cublas_api.h / cusolverDn.h)

typedef void* cublasHandle_t;
typedef void* cusolverDnHandle_t;
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUBLAS_FILL_MODE_LOWER = 0, CUBLAS_FILL_MODE_UPPER = 1 };
enum { CUBLAS_SIDE_LEFT = 0, CUBLAS_SIDE_RIGHT = 1 };
enum { CUBLAS_DIAG_NON_UNIT = 0 };

struct Lib {
    bool loaded = false;
    std::string error;
    int (*cublasCreate)(cublasHandle_t*) = nullptr;
    int (*cublasSetStream)(cublasHandle_t, cudaStream_t) = nullptr;
    int (*cublasSgemm)(cublasHandle_t, int, int, int, int, int, const float*, const float*, int,
                       const float*, int, const float*, float*, int) = nullptr;
    int (*cublasDgemm)(cublasHandle_t, int, int, int, int, int, const double*, const double*, int,
                       const double*, int, const double*, double*, int) = nullptr;
    int (*cublasSsyrk)(cublasHandle_t, int, int, int, int, const float*, const float*, int,
                       const float*, float*, int) = nullptr;
    int (*cublasStrsm)(cublasHandle_t, int, int, int, int, int, int, const float*, const float*,
                       int, float*, int) = nullptr;
    int (*cusolverDnCreate)(cusolverDnHandle_t*) = nullptr;
    int (*cusolverDnSetStream)(cusolverDnHandle_t, cudaStream_t) = nullptr;
    int (*cusolverDnSpotrf_bufferSize)(cusolverDnHandle_t, int, int, float*, int, int*) = nullptr;
    int (*cusolverDnSpotrf)(cusolverDnHandle_t, int, int, float*, int, float*, int, int*) = nullptr;
    int (*cusolverDnSpotri_bufferSize)(cusolverDnHandle_t, int, int, float*, int, int*) = nullptr;
    int (*cusolverDnSpotri)(cusolverDnHandle_t, int, int, float*, int, float*, int, int*) = nullptr;
    int (*cusolverDnSpotrfBatched)(cusolverDnHandle_t, int, int, float**, int, int*, int) = nullptr;
};

static thread_local std::string g_last_error;
const char* cuda_last_error() { return g_last_error.c_str(); }

static void* open_first(const char* const* names, std::string& tried) {
    for (const char* const* p = names; *p; p++) {
        if (void* h = dlopen(*p, RTLD_NOW | RTLD_GLOBAL)) return h;
        tried += std::string(" ") + *p;
    }
    return nullptr;
}

template <class F>
static bool sym(void* h, const char* name, F& f, std::string& err) {
    f = reinterpret_cast<F>(dlsym(h, name));
    if (!f) err += std::string(" missing symbol ") + name + ";";
    return f != nullptr;
}

static Lib& lib() {
    static Lib L;
    static std::once_flag once;
    std::call_once(once, [] {
        static const char* const blas_names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so", nullptr};
        static const char* const solver_names[] = {"libcusolver.so.12", "libcusolver.so.11", "libcusolver.so",
                                                   nullptr};
        std::string tried;
        void* hb = open_first(blas_names, tried);
        void* hs = open_first(solver_names, tried);
        if (!hb || !hs) {
            L.error = "could not dlopen cuBLAS/cuSOLVER (tried:" + tried +
                      "); import torch first or put the CUDA libraries on LD_LIBRARY_PATH";
            return;
        }
        std::string e;
        bool ok = sym(hb, "cublasCreate_v2", L.cublasCreate, e) & sym(hb, "cublasSetStream_v2", L.cublasSetStream, e) &
                  sym(hb, "cublasSgemm_v2", L.cublasSgemm, e) & sym(hb, "cublasDgemm_v2", L.cublasDgemm, e) &
                  sym(hb, "cublasSsyrk_v2", L.cublasSsyrk, e) & sym(hb, "cublasStrsm_v2", L.cublasStrsm, e) &
                  sym(hs, "cusolverDnCreate", L.cusolverDnCreate, e) &
                  sym(hs, "cusolverDnSetStream", L.cusolverDnSetStream, e) &
                  sym(hs, "cusolverDnSpotrf_bufferSize", L.cusolverDnSpotrf_bufferSize, e) &
                  sym(hs, "cusolverDnSpotrf", L.cusolverDnSpotrf, e) &
                  sym(hs, "cusolverDnSpotri_bufferSize", L.cusolverDnSpotri_bufferSize, e) &
                  sym(hs, "cusolverDnSpotri", L.cusolverDnSpotri, e) &
                  sym(hs, "cusolverDnSpotrfBatched", L.cusolverDnSpotrfBatched, e);
        if (!ok) {
            L.error = "cuBLAS/cuSOLVER loaded but incomplete:" + e;
            return;
        }
        L.loaded = true;
    });
    return L;
}

// one cuBLAS and one cuSOLVER handle per device, created on first use
struct Handles {
    cublasHandle_t blas = nullptr;
    cusolverDnHandle_t solver = nullptr;
};

static int handles(Handles& out, cudaStream_t stream) {
    Lib& L = lib();
    if (!L.loaded) {
        g_last_error = L.error;
        return CUDA_LIBRARY_MISSING;
    }
    static std::mutex mu;
    static std::vector<Handles> per_device;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        g_last_error = "cudaGetDevice failed";
        return CUDA_FAILED;
    }
    std::lock_guard<std::mutex> lock(mu);
    if ((int)per_device.size() <= dev) per_device.resize(dev + 1);
    Handles& h = per_device[dev];
    if (!h.blas && L.cublasCreate(&h.blas) != 0) {
        g_last_error = "cublasCreate failed";
        return CUDA_FAILED;
    }
    if (!h.solver && L.cusolverDnCreate(&h.solver) != 0) {
        g_last_error = "cusolverDnCreate failed";
        return CUDA_FAILED;
    }
    L.cublasSetStream(h.blas, stream);
    L.cusolverDnSetStream(h.solver, stream);
    out = h;
    return OK;
}

// error plumbing: every call site returns the status of the first failure
#define CK_CUDA(x)                                                                       \
    do {                                                                                 \
        cudaError_t e_ = (x);                                                            \
        if (e_ != cudaSuccess) {                                                         \
            g_last_error = std::string(#x) + ": " + cudaGetErrorString(e_);              \
            return CUDA_FAILED;                                                          \
        }                                                                                \
    } while (0)
#define CK_LIB(x)                                                                        \
    do {                                                                                 \
        int s_ = (x);                                                                    \
        if (s_ != 0) {                                                                   \
            g_last_error = std::string(#x) + " returned status " + std::to_string(s_);   \
            return CUDA_FAILED;                                                          \
        }                                                                                \
    } while (0)
#define CK(x)                      \
    do {                           \
        int st_ = (x);             \
        if (st_ != OK) return st_; \
    } while (0)

// device buffer freed at scope exit
template <class T>
struct DevBuf {
    T* p = nullptr;
    int alloc(size_t n) {
        if (n == 0) n = 1;
        CK_CUDA(cudaMalloc((void**)&p, n * sizeof(T)));
        return OK;
    }
    ~DevBuf() {
        if (p) cudaFree(p);
    }
};

// ---------------------------------------------------------------------------------------
// device discovery (never throws: the module imports without a driver)

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

void set_device_cuda(int device) { cudaSetDevice(device); }

// ---------------------------------------------------------------------------------------
// kernels (row-major indexing, as the CPU code; grid-stride loops over i in [0, n))

constexpr int THREADS = 256;
static inline unsigned blocks_for(int64_t n) {
    return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + THREADS - 1) / THREADS, 1 << 16));
}
#define FOR_EACH(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// adds the block's sum of v into *out (one atomic per block; blockDim.x == THREADS)
__device__ void block_sum_add(double* out, double v) {
    __shared__ double part[THREADS];
    part[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, part[0]);
}

template <class T>
__global__ void count_nonfinite_kernel(unsigned long long* count, const T* A, int64_t n) {
    unsigned long long c = 0;
    FOR_EACH(i, n) c += !isfinite(A[i]);
    if (c) atomicAdd(count, c);
}

// *m = max|A| as float bits (non-negative floats order as their bit patterns); A is finite
__global__ void max_abs_kernel(unsigned* m, const float* A, int64_t n) {
    unsigned v = 0;
    FOR_EACH(i, n) v = max(v, __float_as_uint(fabsf(A[i])));
    atomicMax(m, v);
}

// out = (float)(s · in): a power of two s, so exact unless the result leaves the float range
__global__ void scale_kernel(float* out, const float* in, double s, int64_t n) {
    FOR_EACH(i, n) out[i] = (float)(s * (double)in[i]);
}

// W ← W·s, with W[:, j] = 0 for the dead inputs j (H[j,j] == 0; spec §2.4)
__global__ void prepare_weight_kernel(float* W, const float* H, double s, int64_t d_out, int64_t N) {
    FOR_EACH(i, d_out * N) {
        const int64_t c = i % N;
        W[i] = H[c * (N + 1)] == 0.0f ? 0.0f : (float)(s * (double)W[i]);
    }
}

// diagonal of the prepared G (obs_cpu.cpp prepare_inverse): dead → 1, then + damp
__global__ void prepare_diag_kernel(float* G, const float* H, float damp, int64_t N) {
    FOR_EACH(j, N) {
        const int64_t jj = j * (N + 1);
        G[jj] = (H[jj] == 0.0f ? 1.0f : G[jj]) + damp;
    }
}

// lower triangle of H (float64): H·beta, or 0 when the Hessian starts (H is only written)
__global__ void start_hessian_kernel(double* H, double beta, bool fresh, int64_t N) {
    FOR_EACH(k, N * N) {
        const int64_t i = k / N, j = k % N;
        if (j <= i) H[k] = fresh ? 0.0 : H[k] * beta;
    }
}

// H (float64) += alpha · T (float32), lower triangle
__global__ void add_lower_kernel(double* H, const float* T, double alpha, int64_t N) {
    FOR_EACH(k, N * N) {
        if (k % N <= k / N) H[k] += alpha * (double)T[k];
    }
}

// copy the lower triangle of the row-major N x N float64 A onto its upper triangle
__global__ void mirror_lower_kernel(double* A, int64_t N) {
    FOR_EACH(k, N * N) {
        const int64_t i = k / N, j = k % N;
        if (j > i) A[k] = A[j * N + i];
    }
}

// element (i, j) of the symmetric G kept in its row-major lower triangle
__device__ inline float sym_get(const float* G, int64_t N, int64_t i, int64_t j) {
    return i >= j ? G[i * N + j] : G[j * N + i];
}

// the row-major N x N float32 A: its lower triangle copied onto its upper one (full storage)
__global__ void mirror_lower_f32_kernel(float* A, int64_t N) {
    FOR_EACH(k, N * N) {
        const int64_t i = k / N, j = k % N;
        if (j > i) A[k] = A[j * N + i];
    }
}

// X (s, N) row-major = G[S, :] of the full symmetric G (contiguous rows)
__global__ void copy_rows_kernel(float* X, const float* G, const int64_t* S, int64_t s, int64_t N) {
    FOR_EACH(k, s * N) X[k] = G[S[k / N] * N + k % N];
}

// US (R, s) row-major = U[:, S]
__global__ void gather_cols_kernel(float* US, const float* U, const int64_t* S, int64_t R, int64_t s, int64_t N) {
    FOR_EACH(k, R * s) US[k] = U[(k / s) * N + S[k % s]];
}

// X[:, c] = 0 for the removed columns c (their rows/columns of G are gone)
__global__ void zero_removed_cols_kernel(float* X, const char* removed, int64_t s, int64_t N) {
    FOR_EACH(k, s * N) {
        if (removed[k % N]) X[k] = 0.0f;
    }
}

// LS (s, s) = X[:, S] (= G_SS)
__global__ void gather_set_block_kernel(float* LS, const float* X, const int64_t* S, int64_t s, int64_t N) {
    FOR_EACH(k, s * s) LS[k] = X[(k / s) * N + S[k % s]];
}

__global__ void mark_removed_kernel(char* removed, const int64_t* S, int64_t s) {
    FOR_EACH(k, s) removed[S[k]] = 1;
}

// diag[c] = G[c, c] (double)
__global__ void diag_init_kernel(double* diag, const float* G, int64_t N) {
    FOR_EACH(c, N) diag[c] = G[c * (N + 1)];
}

// diag G −= column norms² of the new Ut (s, N)
__global__ void diag_downdate_kernel(double* diag, const float* Ut, int64_t s, int64_t N) {
    FOR_EACH(c, N) {
        double acc = 0.0;
        for (int64_t r = 0; r < s; r++) {
            const double u = Ut[r * N + c];
            acc += u * u;
        }
        diag[c] -= acc;
    }
}

// B[j] (d, d) −= Ut[:, C_j]ᵀ Ut[:, C_j] for every head j (the pruned heads' blocks are never read)
__global__ void blocks_downdate_kernel(float* B, const float* Ut, int64_t s, int64_t d, int64_t N) {
    FOR_EACH(k, N * d) {
        const int64_t j = k / (d * d), a = (k / d) % d, b = k % d;
        float acc = 0.0f;
        for (int64_t r = 0; r < s; r++) acc += Ut[r * N + j * d + a] * Ut[r * N + j * d + b];
        B[k] -= acc;
    }
}

// Ec (s, d_out) column-major = W_Sᵀ: Ec[a + r*s] = W[r, S[a]]
__global__ void gather_WS_kernel(float* Ec, const float* W, const int64_t* S, int64_t s, int64_t d_out,
                                 int64_t N) {
    FOR_EACH(k, s * d_out) Ec[k] = W[(k / s) * N + S[k % s]];
}

// *out += Σ A² (double)
__global__ void sum_sq_kernel(double* out, const float* A, int64_t n) {
    double v = 0.0;
    FOR_EACH(i, n) v += (double)A[i] * (double)A[i];
    block_sum_add(out, v);
}

// W[:, S] = 0
__global__ void zero_W_cols_kernel(float* W, const int64_t* S, int64_t s, int64_t d_out, int64_t N) {
    FOR_EACH(k, s * d_out) W[(k / s) * N + S[k % s]] = 0.0f;
}

// colsq[c] = ||W[:,c]||² (double accumulation; consecutive threads read consecutive columns)
__global__ void column_sq_norms_kernel(double* colsq, const float* W, int64_t d_out, int64_t N) {
    FOR_EACH(c, N) {
        double acc = 0.0;
        for (int64_t r = 0; r < d_out; r++) {
            const double w = W[r * N + c];
            acc += w * w;
        }
        colsq[c] = acc;
    }
}

// B (n_heads, d, d): the diagonal blocks G[C_j, C_j]·g_scale, full
__global__ void gather_head_blocks_kernel(float* B, const float* G, double g_scale, int64_t d, int64_t N) {
    FOR_EACH(k, N * d) {
        const int64_t j = k / (d * d), a = (k / d) % d, b = k % d;
        B[k] = (float)(g_scale * (double)sym_get(G, N, j * d + a, j * d + b));
    }
}

// err[j] = Σ_k colsq[j d + k] / ĝ, ĝ = L_j[k,k]² (gcd) or g_scale·diag[c]; NaN when ĝ <= 0
__global__ void head_err_kernel(double* err, const double* colsq, const float* B, const double* diag, bool gcd,
                                double g_scale, int64_t d, int64_t n_heads) {
    FOR_EACH(j, n_heads) {
        double e = 0.0;
        for (int64_t k = 0; k < d; k++) {
            double g;
            if (gcd) {
                const double l = B[j * d * d + k * d + k];
                g = l * l;
            } else {
                g = g_scale * diag[j * d + k];
            }
            if (!(g > 0.0)) {
                e = nan("");
                break;
            }
            e += colsq[j * d + k] / g;
        }
        err[j] = e;
    }
}

// err[c] = colsq[c] / diag[c]; NaN when diag[c] <= 0 (not positive definite, as obs_cpu.cpp)
__global__ void channel_err_kernel(double* err, const double* colsq, const double* diag, int64_t N) {
    FOR_EACH(c, N) {
        const double g = diag[c];
        err[c] = g > 0.0 ? colsq[c] / g : nan("");
    }
}

__global__ void pointer_array_kernel(float** P, float* base, int64_t stride, int64_t n) {
    FOR_EACH(j, n) P[j] = base + j * stride;
}

// WP (d_out, p) row-major, float64 = W[:, P]
__global__ void gather_cols_f64_kernel(double* WP, const float* W, const int64_t* P, int64_t p, int64_t d_out,
                                       int64_t N) {
    FOR_EACH(k, d_out * p) WP[k] = W[(k / p) * N + P[k % p]];
}

// HB (p, nb) row-major, float64 = H'[P, P[b0 : b0+nb]] with H' = s·H, dead diagonal → 1, + damp
__global__ void gather_hblock_kernel(double* HB, const float* H, const int64_t* P, int64_t p, int64_t b0,
                                     int64_t nb, double s, float damp, int64_t N) {
    FOR_EACH(k, p * nb) {
        const int64_t i = P[k / nb], j = P[b0 + k % nb];
        double h = s * (double)H[i * N + j];
        if (i == j) h = (H[i * N + i] == 0.0f ? 1.0 : h) + (double)damp;
        HB[k] = h;
    }
}

// *out += Σ_{r,b} T[r, b] · WP[r, b0 + b]: the block's share of tr(W_P H'_PP W_Pᵀ)
__global__ void trace_block_kernel(double* out, const double* T, const double* WP, int64_t b0, int64_t nb,
                                   int64_t p, int64_t d_out) {
    double v = 0.0;
    FOR_EACH(k, d_out * nb) v += T[k] * WP[(k / nb) * p + b0 + k % nb];
    block_sum_add(out, v);
}

// ---------------------------------------------------------------------------------------
// building blocks

template <class T>
static int64_t count_nonfinite(const T* A, int64_t n, cudaStream_t stream) {
    unsigned long long* d = nullptr;
    unsigned long long h = 0;
    cudaError_t e = cudaMalloc(&d, sizeof(*d));
    if (e == cudaSuccess) e = cudaMemsetAsync(d, 0, sizeof(*d), stream);
    if (e == cudaSuccess) {
        count_nonfinite_kernel<<<blocks_for(n), THREADS, 0, stream>>>(d, A, n);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaMemcpyAsync(&h, d, sizeof(h), cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    if (d) cudaFree(d);
    if (e != cudaSuccess) g_last_error = std::string("count_nonfinite: ") + cudaGetErrorString(e);
    return e == cudaSuccess ? (int64_t)h : -1;
}
int64_t count_nonfinite_cuda(const float* A, int64_t n, cudaStream_t stream) { return count_nonfinite(A, n, stream); }
int64_t count_nonfinite_cuda(const double* A, int64_t n, cudaStream_t stream) { return count_nonfinite(A, n, stream); }

static int max_abs(float* out, const float* A, int64_t n, cudaStream_t stream) {
    DevBuf<unsigned> d;
    unsigned h = 0;
    CK(d.alloc(1));
    CK_CUDA(cudaMemsetAsync(d.p, 0, sizeof(unsigned), stream));
    max_abs_kernel<<<blocks_for(n), THREADS, 0, stream>>>(d.p, A, n);
    CK_CUDA(cudaGetLastError());
    CK_CUDA(cudaMemcpyAsync(&h, d.p, sizeof(unsigned), cudaMemcpyDeviceToHost, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    std::memcpy(out, &h, sizeof(float));
    return OK;
}

// the scales of a run on W and H (scale.h), from H's diagonal and max|W| brought to the host
static int scales(Scales& sc, const float* W, const float* H, float percdamp, int64_t d_out, int64_t N,
                  cudaStream_t stream) {
    std::vector<float> diag((size_t)N);
    float w_max = 0.0f;
    CK_CUDA(cudaMemcpy2DAsync(diag.data(), sizeof(float), H, sizeof(float) * (size_t)(N + 1), sizeof(float),
                              (size_t)N, cudaMemcpyDeviceToHost, stream));
    if (W) CK(max_abs(&w_max, W, d_out * N, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    sc = scales_of(diag.data(), 1, N, percdamp, w_max);
    return OK;
}

// potrf in place on a column-major n x n matrix; NOT_POSITIVE_DEFINITE when info > 0
static int potrf(const Handles& h, int uplo, float* A, int n, cudaStream_t stream) {
    Lib& L = lib();
    int lwork = 0, info = 0;
    CK_LIB(L.cusolverDnSpotrf_bufferSize(h.solver, uplo, n, A, n, &lwork));
    DevBuf<float> work;
    DevBuf<int> dinfo;
    CK(work.alloc((size_t)lwork));
    CK(dinfo.alloc(1));
    CK_LIB(L.cusolverDnSpotrf(h.solver, uplo, n, A, n, work.p, lwork, dinfo.p));
    CK_CUDA(cudaMemcpyAsync(&info, dinfo.p, sizeof(int), cudaMemcpyDeviceToHost, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    return info == 0 ? OK : NOT_POSITIVE_DEFINITE;
}

// W ← W·2^-w_exp with its dead columns zeroed (obs_cpu.cpp prepare_weight)
static int prepare_weight(float* W, const float* H, const Scales& sc, int64_t d_out, int64_t N,
                          cudaStream_t stream) {
    prepare_weight_kernel<<<blocks_for(d_out * N), THREADS, 0, stream>>>(W, H, std::ldexp(1.0, -sc.w_exp), d_out,
                                                                         N);
    CK_CUDA(cudaGetLastError());
    return OK;
}

// G ← (H'·4^-h_exp)⁻¹ in full symmetric storage (obs_cpu.cpp factor_inverse prepares the same H')
static int prepare_inverse(const Handles& h, float* G, const float* H, const Scales& sc, int64_t N,
                           cudaStream_t stream) {
    scale_kernel<<<blocks_for(N * N), THREADS, 0, stream>>>(G, H, std::ldexp(1.0, -2 * sc.h_exp), N * N);
    prepare_diag_kernel<<<blocks_for(N), THREADS, 0, stream>>>(G, H, sc.damp, N);
    CK_CUDA(cudaGetLastError());
    CK(potrf(h, CUBLAS_FILL_MODE_UPPER, G, (int)N, stream));
    Lib& L = lib();
    int lwork = 0, info = 0;
    CK_LIB(L.cusolverDnSpotri_bufferSize(h.solver, CUBLAS_FILL_MODE_UPPER, (int)N, G, (int)N, &lwork));
    DevBuf<float> work;
    DevBuf<int> dinfo;
    CK(work.alloc((size_t)lwork));
    CK(dinfo.alloc(1));
    CK_LIB(L.cusolverDnSpotri(h.solver, CUBLAS_FILL_MODE_UPPER, (int)N, G, (int)N, work.p, lwork, dinfo.p));
    mirror_lower_f32_kernel<<<blocks_for(N * N), THREADS, 0, stream>>>(G, N);
    CK_CUDA(cudaGetLastError());
    CK_CUDA(cudaMemcpyAsync(&info, dinfo.p, sizeof(int), cudaMemcpyDeviceToHost, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    return info == 0 ? OK : NOT_POSITIVE_DEFINITE;
}

// ½ tr(W_P H'_PP W_Pᵀ) in float64 and the run's units (obs_cpu.cpp objective); P on the device
static int objective(double* out, const Handles& h, const float* W, const float* H, const int64_t* P, int64_t p,
                     const Scales& sc, int64_t d_out, int64_t N, cudaStream_t stream) {
    const int64_t bs = std::min<int64_t>(p, 256);
    const double one = 1.0, zero = 0.0;
    DevBuf<double> WP, HB, T, acc;
    CK(WP.alloc((size_t)(d_out * p)));
    CK(HB.alloc((size_t)(p * bs)));
    CK(T.alloc((size_t)(d_out * bs)));
    CK(acc.alloc(1));
    CK_CUDA(cudaMemsetAsync(acc.p, 0, sizeof(double), stream));
    gather_cols_f64_kernel<<<blocks_for(d_out * p), THREADS, 0, stream>>>(WP.p, W, P, p, d_out, N);
    CK_CUDA(cudaGetLastError());
    for (int64_t b0 = 0; b0 < p; b0 += bs) {
        const int64_t nb = std::min(bs, p - b0);
        gather_hblock_kernel<<<blocks_for(p * nb), THREADS, 0, stream>>>(HB.p, H, P, p, b0, nb,
                                                                       std::ldexp(1.0, -2 * sc.h_exp), sc.damp, N);
        CK_CUDA(cudaGetLastError());
        // row-major T (d_out, nb) = WP HB, i.e. column-major Tᶜ (nb, d_out) = HBᶜ WPᶜ
        CK_LIB(lib().cublasDgemm(h.blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)nb, (int)d_out, (int)p, &one, HB.p, (int)nb,
                                 WP.p, (int)p, &zero, T.p, (int)nb));
        trace_block_kernel<<<blocks_for(d_out * nb), THREADS, 0, stream>>>(acc.p, T.p, WP.p, b0, nb, p, d_out);
        CK_CUDA(cudaGetLastError());
    }
    double sum = 0.0;
    CK_CUDA(cudaMemcpyAsync(&sum, acc.p, sizeof(double), cudaMemcpyDeviceToHost, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    *out = 0.5 * sum;
    return OK;
}

// Back to the caller's units (obs_cpu.cpp finish): W ← W·2^w_exp, *loss = loss_run·4^(w_exp + h_exp);
// NOT_FINITE when either is NaN/Inf
static int finish(float* W, double* loss, double loss_run, const Scales& sc, int64_t d_out, int64_t N,
                  cudaStream_t stream) {
    scale_kernel<<<blocks_for(d_out * N), THREADS, 0, stream>>>(W, W, std::ldexp(1.0, sc.w_exp), d_out * N);
    CK_CUDA(cudaGetLastError());
    const int64_t bad = count_nonfinite(W, d_out * N, stream);
    if (bad < 0) return CUDA_FAILED;
    *loss = std::ldexp(loss_run, 2 * (sc.w_exp + sc.h_exp));
    return bad == 0 && std::isfinite(*loss) ? OK : NOT_FINITE;
}

// The greedy state on the device (obs_cpu.cpp Greedy): G0 = H'⁻¹ (full, read only), the
// stacked Ut of the removed sets, and the scores' view of the current G = G0 − UᵀU
struct Greedy {
    const float* G = nullptr;  // G0 (N x N)
    DevBuf<float> U;           // (capacity, N); rows [R, R+s) hold the current set's rows, then its Ut
    int64_t R = 0;
    DevBuf<char> removed;      // (N): columns whose rows/columns of G are gone
    DevBuf<double> diag;       // (N): diag G, when kept (channels, −GCD)
    DevBuf<float> blocks;      // (n_heads, d, d): G[C_j, C_j], when kept (GCD)
    int64_t d = 0;
    double loss = 0.0;
    int init(const float* G0, int64_t capacity, int64_t N, bool keep_diag, int64_t head_dim, cudaStream_t stream) {
        G = G0;
        CK(U.alloc((size_t)(capacity * N)));
        CK(removed.alloc((size_t)N));
        CK_CUDA(cudaMemsetAsync(removed.p, 0, (size_t)N, stream));
        if (keep_diag) {
            CK(diag.alloc((size_t)N));
            diag_init_kernel<<<blocks_for(N), THREADS, 0, stream>>>(diag.p, G0, N);
        }
        if (head_dim) {
            d = head_dim;
            CK(blocks.alloc((size_t)(N * d)));
            gather_head_blocks_kernel<<<blocks_for(N * d), THREADS, 0, stream>>>(blocks.p, G0, 1.0, d, N);
        }
        CK_CUDA(cudaGetLastError());
        return OK;
    }
};

// remove_set of obs_cpu.cpp; S is a device array of s indices
static int remove_set(const Handles& h, Greedy& g, float* W, const int64_t* S, int64_t s, bool compensate,
                      bool downdate, int64_t d_out, int64_t N, cudaStream_t stream) {
    if (s == 0 || !(compensate || downdate)) return OK;
    Lib& L = lib();
    const float one = 1.0f, minus_one = -1.0f;
    float* X = g.U.p + g.R * N;  // G[S,:], then Ut; column-major it is Xᶜ (N, s)
    DevBuf<float> LS, US;
    CK(LS.alloc((size_t)(s * s)));
    copy_rows_kernel<<<blocks_for(s * N), THREADS, 0, stream>>>(X, g.G, S, s, N);
    CK_CUDA(cudaGetLastError());
    if (g.R > 0) {  // X −= U[:, S]ᵀ U, i.e. Xᶜ (N, s) −= Uᶜ (N, R) · US (R, s)
        CK(US.alloc((size_t)(g.R * s)));
        gather_cols_kernel<<<blocks_for(g.R * s), THREADS, 0, stream>>>(US.p, g.U.p, S, g.R, s, N);
        CK_CUDA(cudaGetLastError());
        CK_LIB(L.cublasSgemm(h.blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)N, (int)s, (int)g.R, &minus_one, g.U.p, (int)N,
                             US.p, (int)s, &one, X, (int)N));
    }
    zero_removed_cols_kernel<<<blocks_for(s * N), THREADS, 0, stream>>>(X, g.removed.p, s, N);
    gather_set_block_kernel<<<blocks_for(s * s), THREADS, 0, stream>>>(LS.p, X, S, s, N);
    CK_CUDA(cudaGetLastError());
    CK(potrf(h, CUBLAS_FILL_MODE_LOWER, LS.p, (int)s, stream));  // G_SS = L_S L_Sᵀ
    // Xᶜ (N, s) ← Xᶜ L_S⁻ᵀ, i.e. X ← L_S⁻¹ G[S,:] = Ut
    CK_LIB(L.cublasStrsm(h.blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, CUBLAS_DIAG_NON_UNIT,
                         (int)N, (int)s, &one, LS.p, (int)s, X, (int)N));
    if (compensate) {
        DevBuf<float> Ec;
        DevBuf<double> e2;
        CK(Ec.alloc((size_t)(s * d_out)));
        CK(e2.alloc(1));
        gather_WS_kernel<<<blocks_for(s * d_out), THREADS, 0, stream>>>(Ec.p, W, S, s, d_out, N);
        CK_CUDA(cudaGetLastError());
        // Ec (s, d_out) = L_S⁻¹ W_Sᵀ = Eᵀ
        CK_LIB(L.cublasStrsm(h.blas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT,
                             (int)s, (int)d_out, &one, LS.p, (int)s, Ec.p, (int)s));
        // the Eq. (1) cost of this set: ½ Σ ||e_i||²
        CK_CUDA(cudaMemsetAsync(e2.p, 0, sizeof(double), stream));
        sum_sq_kernel<<<blocks_for(s * d_out), THREADS, 0, stream>>>(e2.p, Ec.p, s * d_out);
        CK_CUDA(cudaGetLastError());
        // Wc (N, d_out) −= Xᶜ Ec, i.e. W −= E Ut (Eq. 4 for a set), then W[:, S] = 0 exactly
        CK_LIB(L.cublasSgemm(h.blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)d_out, (int)s, &minus_one, X, (int)N,
                             Ec.p, (int)s, &one, W, (int)N));
        zero_W_cols_kernel<<<blocks_for(s * d_out), THREADS, 0, stream>>>(W, S, s, d_out, N);
        CK_CUDA(cudaGetLastError());
        double e2_host = 0.0;
        CK_CUDA(cudaMemcpyAsync(&e2_host, e2.p, sizeof(double), cudaMemcpyDeviceToHost, stream));
        CK_CUDA(cudaStreamSynchronize(stream));  // Ec, e2 are freed at scope exit
        g.loss += 0.5 * e2_host;
    }
    if (downdate) {  // Eq. 3 for a set: G −= Utᵀ Ut, kept as the new rows of U
        if (g.diag.p) diag_downdate_kernel<<<blocks_for(N), THREADS, 0, stream>>>(g.diag.p, X, s, N);
        if (g.blocks.p) blocks_downdate_kernel<<<blocks_for(N * g.d), THREADS, 0, stream>>>(g.blocks.p, X, s, g.d, N);
        mark_removed_kernel<<<blocks_for(s), THREADS, 0, stream>>>(g.removed.p, S, s);
        CK_CUDA(cudaGetLastError());
        g.R += s;
    }
    CK_CUDA(cudaStreamSynchronize(stream));  // LS, US are freed at scope exit
    return OK;
}

// Eq. 5 into host err (n_heads) on G·g_scale; gcd: batched Cholesky of the diagonal blocks
// G[C_j, C_j] given in `blocks` (n_heads, d, d; copied, not changed), else ĝ from `diag`.
// Heads with alive[j] == 0 (already pruned) get +inf and their factorisations are not checked.
static int score_heads(const Handles& h, double* err, const float* W, const float* blocks, const double* diag,
                       const char* alive, bool gcd, double g_scale, int64_t d, int64_t d_out, int64_t N,
                       cudaStream_t stream) {
    const int64_t n_heads = N / d;
    DevBuf<double> colsq, derr;
    DevBuf<float> B;
    std::vector<int> info((size_t)n_heads, 0);
    CK(colsq.alloc((size_t)N));
    CK(derr.alloc((size_t)n_heads));
    column_sq_norms_kernel<<<blocks_for(N), THREADS, 0, stream>>>(colsq.p, W, d_out, N);
    CK_CUDA(cudaGetLastError());
    if (gcd) {
        CK(B.alloc((size_t)(N * d)));
        CK_CUDA(cudaMemcpyAsync(B.p, blocks, sizeof(float) * (size_t)(N * d), cudaMemcpyDeviceToDevice, stream));
        DevBuf<float*> P;
        DevBuf<int> infos;
        CK(P.alloc((size_t)n_heads));
        CK(infos.alloc((size_t)n_heads));
        pointer_array_kernel<<<blocks_for(n_heads), THREADS, 0, stream>>>(P.p, B.p, d * d, n_heads);
        CK_CUDA(cudaGetLastError());
        CK_LIB(lib().cusolverDnSpotrfBatched(h.solver, CUBLAS_FILL_MODE_LOWER, (int)d, P.p, (int)d, infos.p,
                                             (int)n_heads));
        CK_CUDA(cudaMemcpyAsync(info.data(), infos.p, sizeof(int) * (size_t)n_heads, cudaMemcpyDeviceToHost,
                                stream));
        CK_CUDA(cudaStreamSynchronize(stream));  // P, infos are freed at scope exit
    }
    head_err_kernel<<<blocks_for(n_heads), THREADS, 0, stream>>>(derr.p, colsq.p, B.p, diag, gcd, g_scale, d,
                                                                 n_heads);
    CK_CUDA(cudaGetLastError());
    CK_CUDA(cudaMemcpyAsync(err, derr.p, sizeof(double) * (size_t)n_heads, cudaMemcpyDeviceToHost, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    for (int64_t j = 0; j < n_heads; j++) {
        if (alive && !alive[j]) err[j] = std::numeric_limits<double>::infinity();
        else if (info[(size_t)j] != 0 || !(err[j] >= 0.0)) return NOT_POSITIVE_DEFINITE;
    }
    return OK;
}

// ---------------------------------------------------------------------------------------
// public functions

int hessian_cuda(double* H, const float* X, int64_t n, int64_t N, cudaStream_t stream) {
    return accumulate_hessian_cuda(H, X, 0, n, N, stream);
}

// hessian_cpu.cpp: float32 Ssyrk on blocks of X·2^-e into a float32 temporary T, added into
// the float64 H with the factor 4^e · 2/(n_seen+n)
int accumulate_hessian_cuda(double* H, const float* X, int64_t n_seen, int64_t n, int64_t N, cudaStream_t stream) {
    Handles h;
    CK(handles(h, stream));
    float x_max = 0.0f;
    CK(max_abs(&x_max, X, n * N, stream));
    const int e = exponent_of(x_max);
    const double total = (double)n_seen + (double)n;
    const double alpha = std::ldexp(2.0 / total, 2 * e), beta = (double)n_seen / total;
    start_hessian_kernel<<<blocks_for(N * N), THREADS, 0, stream>>>(H, beta, n_seen == 0, N);
    CK_CUDA(cudaGetLastError());
    const int64_t rows = std::clamp<int64_t>(HESSIAN_BLOCK_FLOATS / N, 1, n);
    const float one = 1.0f, zero = 0.0f;
    DevBuf<float> Xs, T;
    CK(Xs.alloc((size_t)(rows * N)));
    CK(T.alloc((size_t)(N * N)));
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t nr = std::min(rows, n - r0);
        scale_kernel<<<blocks_for(nr * N), THREADS, 0, stream>>>(Xs.p, X + r0 * N, std::ldexp(1.0, -e), nr * N);
        CK_CUDA(cudaGetLastError());
        // column-major: Xs is (N, nr), T = Xs Xsᵀ, upper = our lower triangle
        CK_LIB(lib().cublasSsyrk(h.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, (int)N, (int)nr, &one, Xs.p, (int)N,
                                 &zero, T.p, (int)N));
        add_lower_kernel<<<blocks_for(N * N), THREADS, 0, stream>>>(H, T.p, alpha, N);
        CK_CUDA(cudaGetLastError());
    }
    mirror_lower_kernel<<<blocks_for(N * N), THREADS, 0, stream>>>(H, N);
    CK_CUDA(cudaGetLastError());
    CK_CUDA(cudaStreamSynchronize(stream));  // Xs, T are freed at scope exit
    return OK;
}

int prune_columns_cuda(float* W, double* loss, const float* H, const int64_t* cols, int64_t n_cols, float percdamp,
                       bool compensate, int64_t d_out, int64_t N, cudaStream_t stream) {
    *loss = 0.0;
    if (n_cols == 0) return OK;
    Handles h;
    CK(handles(h, stream));
    Scales sc;
    CK(scales(sc, W, H, percdamp, d_out, N, stream));
    DevBuf<int64_t> S;
    CK(S.alloc((size_t)n_cols));
    CK_CUDA(cudaMemcpyAsync(S.p, cols, sizeof(int64_t) * (size_t)n_cols, cudaMemcpyHostToDevice, stream));
    CK(prepare_weight(W, H, sc, d_out, N, stream));
    double loss_run = 0.0;
    if (compensate) {
        DevBuf<float> G;
        CK(G.alloc((size_t)(N * N)));
        CK(prepare_inverse(h, G.p, H, sc, N, stream));
        Greedy g;
        CK(g.init(G.p, n_cols, N, false, 0, stream));
        CK(remove_set(h, g, W, S.p, n_cols, true, false, d_out, N, stream));
        loss_run = g.loss;
    } else {
        CK(objective(&loss_run, h, W, H, S.p, n_cols, sc, d_out, N, stream));
        zero_W_cols_kernel<<<blocks_for(n_cols * d_out), THREADS, 0, stream>>>(W, S.p, n_cols, d_out, N);
        CK_CUDA(cudaGetLastError());
    }
    return finish(W, loss, loss_run, sc, d_out, N, stream);
}

int head_errors_cuda(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd, int64_t d_out,
                     int64_t N, cudaStream_t stream) {
    Handles h;
    CK(handles(h, stream));
    Scales sc;  // scored on Hinv·4^-h_exp: err scales by 4^h_exp (obs_cpu.cpp head_errors_cpu)
    CK(scales(sc, nullptr, Hinv, 0.0f, d_out, N, stream));
    const double g_scale = std::ldexp(1.0, -2 * sc.h_exp);
    std::vector<double> e((size_t)(N / head_dim));
    DevBuf<float> B;  // the diagonal blocks Hinv[C_j, C_j]·g_scale (GCD) or Hinv's diagonal (−GCD)
    DevBuf<double> diag;
    if (gcd) {
        CK(B.alloc((size_t)(N * head_dim)));
        gather_head_blocks_kernel<<<blocks_for(N * head_dim), THREADS, 0, stream>>>(B.p, Hinv, g_scale, head_dim, N);
    } else {
        CK(diag.alloc((size_t)N));
        diag_init_kernel<<<blocks_for(N), THREADS, 0, stream>>>(diag.p, Hinv, N);
    }
    CK_CUDA(cudaGetLastError());
    CK(score_heads(h, e.data(), W, B.p, diag.p, nullptr, gcd, g_scale, head_dim, d_out, N, stream));
    bool finite = true;
    for (size_t j = 0; j < e.size(); j++) {
        err[j] = (float)(e[j] * g_scale);
        finite = finite && std::isfinite(err[j]);
    }
    return finite ? OK : NOT_FINITE;
}

int prune_heads_cuda(float* W, int64_t* pruned, double* loss, const float* H, int64_t n_prune,
                     const int64_t* head_groups, int64_t n_groups, float percdamp, bool gcd, bool compensate,
                     int64_t head_dim, int64_t d_out, int64_t N, cudaStream_t stream) {
    const int64_t d = head_dim, n_heads = N / d;
    *loss = 0.0;
    if (n_prune == 0) return OK;
    Handles h;
    CK(handles(h, stream));
    Scales sc;
    CK(scales(sc, W, H, percdamp, d_out, N, stream));
    DevBuf<float> G;
    DevBuf<int64_t> S;
    CK(G.alloc((size_t)(N * N)));
    CK(S.alloc((size_t)(n_prune * d)));
    CK(prepare_weight(W, H, sc, d_out, N, stream));
    CK(prepare_inverse(h, G.p, H, sc, N, stream));
    std::vector<char> alive((size_t)n_heads, 1);
    std::vector<int64_t> group_count((size_t)std::max<int64_t>(n_groups, 1), 0), hS((size_t)d);
    const int64_t quota = head_groups ? n_prune / n_groups : n_prune;
    std::vector<double> err((size_t)n_heads);
    Greedy g;  // the scores read G's diagonal blocks (GCD) or its diagonal (−GCD), kept current
    CK(g.init(G.p, n_prune * d, N, !gcd, gcd ? d : 0, stream));
    for (int64_t it = 0; it < n_prune; it++) {
        CK(score_heads(h, err.data(), W, g.blocks.p, g.diag.p, alive.data(), gcd, 1.0, d, d_out, N, stream));
        int64_t best = -1;
        for (int64_t j = 0; j < n_heads; j++) {
            if (!alive[j] || (head_groups && group_count[head_groups[j]] >= quota)) continue;
            if (best < 0 || err[j] < err[best]) best = j;
        }
        std::iota(hS.begin(), hS.end(), best * d);
        CK_CUDA(cudaMemcpyAsync(S.p, hS.data(), sizeof(int64_t) * (size_t)d, cudaMemcpyHostToDevice, stream));
        CK(remove_set(h, g, W, S.p, d, compensate, it + 1 < n_prune, d_out, N, stream));
        CK_CUDA(cudaStreamSynchronize(stream));  // hS is reused
        alive[best] = 0;
        if (head_groups) group_count[head_groups[best]]++;
    }
    int64_t k = 0;
    for (int64_t j = 0; j < n_heads; j++)
        if (!alive[j]) pruned[k++] = j;
    double loss_run = g.loss;
    if (!compensate) {  // the cost of zeroing every pruned column at once
        std::vector<int64_t> P((size_t)(n_prune * d));
        for (int64_t a = 0; a < n_prune; a++) std::iota(&P[a * d], &P[a * d] + d, pruned[a] * d);
        CK_CUDA(cudaMemcpyAsync(S.p, P.data(), sizeof(int64_t) * P.size(), cudaMemcpyHostToDevice, stream));
        CK(objective(&loss_run, h, W, H, S.p, n_prune * d, sc, d_out, N, stream));
        zero_W_cols_kernel<<<blocks_for(n_prune * d * d_out), THREADS, 0, stream>>>(W, S.p, n_prune * d, d_out, N);
        CK_CUDA(cudaGetLastError());
    }
    return finish(W, loss, loss_run, sc, d_out, N, stream);
}

int prune_channels_cuda(float* W, int64_t* pruned, double* loss, const float* H, const int64_t* group_sizes,
                        int64_t n_groups, float percdamp, bool compensate, int64_t d_out, int64_t N,
                        cudaStream_t stream) {
    *loss = 0.0;
    if (n_groups == 0) return OK;
    Handles h;
    CK(handles(h, stream));
    Scales sc;
    CK(scales(sc, W, H, percdamp, d_out, N, stream));
    DevBuf<float> G;
    DevBuf<int64_t> S;
    DevBuf<double> colsq, derr;
    CK(G.alloc((size_t)(N * N)));
    CK(S.alloc((size_t)N));
    CK(colsq.alloc((size_t)N));
    CK(derr.alloc((size_t)N));
    CK(prepare_weight(W, H, sc, d_out, N, stream));
    CK(prepare_inverse(h, G.p, H, sc, N, stream));
    std::vector<char> alive((size_t)N, 1);
    std::vector<double> err((size_t)N);
    std::vector<int64_t> order((size_t)N);
    int64_t total = 0;
    for (int64_t k = 0; k < n_groups; k++) total += group_sizes[k];
    Greedy gr;  // the scores read G's diagonal, kept current
    CK(gr.init(G.p, total, N, true, 0, stream));
    for (int64_t k = 0; k < n_groups; k++) {
        const int64_t g = group_sizes[k];
        column_sq_norms_kernel<<<blocks_for(N), THREADS, 0, stream>>>(colsq.p, W, d_out, N);
        channel_err_kernel<<<blocks_for(N), THREADS, 0, stream>>>(derr.p, colsq.p, gr.diag.p, N);
        CK_CUDA(cudaGetLastError());
        CK_CUDA(cudaMemcpyAsync(err.data(), derr.p, sizeof(double) * (size_t)N, cudaMemcpyDeviceToHost, stream));
        CK_CUDA(cudaStreamSynchronize(stream));
        for (int64_t c = 0; c < N; c++) {
            if (alive[c] && !(err[c] >= 0.0)) return NOT_POSITIVE_DEFINITE;
            if (!alive[c]) err[c] = std::numeric_limits<double>::infinity();
        }
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + g, order.end(), [&](int64_t a, int64_t b) {
            return err[a] < err[b] || (err[a] == err[b] && a < b);
        });
        CK_CUDA(cudaMemcpyAsync(S.p, order.data(), sizeof(int64_t) * (size_t)g, cudaMemcpyHostToDevice, stream));
        CK(remove_set(h, gr, W, S.p, g, compensate, k + 1 < n_groups, d_out, N, stream));
        CK_CUDA(cudaStreamSynchronize(stream));  // order is reused
        for (int64_t a = 0; a < g; a++) alive[order[a]] = 0;
    }
    int64_t k = 0;
    for (int64_t c = 0; c < N; c++)
        if (!alive[c]) pruned[k++] = c;
    double loss_run = gr.loss;
    if (!compensate) {  // the cost of zeroing every pruned column at once
        CK_CUDA(cudaMemcpyAsync(S.p, pruned, sizeof(int64_t) * (size_t)total, cudaMemcpyHostToDevice, stream));
        CK(objective(&loss_run, h, W, H, S.p, total, sc, d_out, N, stream));
        zero_W_cols_kernel<<<blocks_for(total * d_out), THREADS, 0, stream>>>(W, S.p, total, d_out, N);
        CK_CUDA(cudaGetLastError());
    }
    return finish(W, loss, loss_run, sc, d_out, N, stream);
}

}  // namespace slimgpt
