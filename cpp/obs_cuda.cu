// Structured OBS on CUDA: the twin of obs_cpu.cpp / hessian_cpu.cpp (same algorithm, same
// names with _cuda). NOT RUN ON A DEVICE YET: written and compiled on a machine without a GPU;
// see docs/cpp.md.
//
// Dense algebra goes through cuBLAS and cuSOLVER, which are dlopen'ed on first use (the
// toolkit used to build ships neither library nor headers, and at run time torch's nvidia-*
// wheels have usually loaded them already): the few prototypes and enum values needed are
// declared below. Small kernels do the gathers, the column norms and the bookkeeping.
//
// Layout: cuBLAS is column-major, our matrices row-major, so a row-major (r, c) matrix is a
// column-major (c, r) one. G's row-major lower triangle is the column-major UPPER triangle,
// hence CUBLAS_FILL_MODE_UPPER for G throughout. The remove-set step, in column-major terms:
//   V (N, s) = G[:, S]               (gather)     same memory as Ut (s, N) row-major
//   L_S = chol(G_SS) (lower)                      potrf
//   V ← V L_S⁻ᵀ   = Utᵀ                           trsm right, lower, transposed
//   Ec (s, d_out) = L_S⁻¹ W_Sᵀ       = Eᵀ         trsm left, lower
//   Wc (N, d_out) −= V Ec            (W −= E Ut)  gemm
//   G −= V Vᵀ                        (downdate)   syrk, upper
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
                  sym(hb, "cublasSgemm_v2", L.cublasSgemm, e) & sym(hb, "cublasSsyrk_v2", L.cublasSsyrk, e) &
                  sym(hb, "cublasStrsm_v2", L.cublasStrsm, e) & sym(hs, "cusolverDnCreate", L.cusolverDnCreate, e) &
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
#define CK(x)                    \
    do {                         \
        int st_ = (x);           \
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
// kernels (row-major indexing, as the CPU code)

static inline unsigned blocks_for(int64_t n, int t = 256) { return (unsigned)((n + t - 1) / t); }

__global__ void count_nonfinite_kernel1(int* count, const float* A, int64_t n) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int c = 0;
    for (; i < n; i += stride) c += !isfinite(A[i]);
    if (c) atomicAdd(count, c);
}

// copy the lower triangle of the row-major N x N A onto its upper triangle
__global__ void mirror_lower_kernel1(float* A, int64_t N) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;  // column
    int64_t i = blockIdx.y;                                       // row
    if (j < N && j > i) A[i * N + j] = A[j * N + i];
}

// dead inputs: H[j,j] == 0 → H[j,j] = 1, W[:, j] = 0; diag[j] = H[j,j] afterwards
__global__ void dead_inputs_kernel1(float* G, float* W, float* diag, int64_t d_out, int64_t N) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j >= N) return;
    float h = G[j * N + j];
    if (h == 0.0f) {
        G[j * N + j] = h = 1.0f;
        for (int64_t r = 0; r < d_out; r++) W[r * N + j] = 0.0f;
    }
    diag[j] = h;
}

__global__ void add_diag_kernel1(float* G, float damp, int64_t N) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j < N) G[j * N + j] += damp;
}

// element (i, j) of the symmetric G kept in its row-major lower triangle
__device__ inline float sym_get(const float* G, int64_t N, int64_t i, int64_t j) {
    return i >= j ? G[i * N + j] : G[j * N + i];
}

// Ut (s, N) row-major = G[S, :]
__global__ void gather_rows_kernel1(float* Ut, const float* G, const int64_t* S, int64_t s, int64_t N) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t a = blockIdx.y;
    if (j < N) Ut[a * N + j] = sym_get(G, N, S[a], j);
}

// LS (s, s) = G[S, S]
__global__ void gather_block_kernel1(float* LS, const float* G, const int64_t* S, int64_t s, int64_t N) {
    int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t a = blockIdx.y;
    if (b < s) LS[a * s + b] = sym_get(G, N, S[a], S[b]);
}

// Ec (s, d_out) column-major = W_Sᵀ: Ec[a + r*s] = W[r, S[a]]
__global__ void gather_WS_kernel1(float* Ec, const float* W, const int64_t* S, int64_t s, int64_t N) {
    int64_t a = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t r = blockIdx.y;
    if (a < s) Ec[r * s + a] = W[r * N + S[a]];
}

// W[:, S] = 0
__global__ void zero_W_cols_kernel1(float* W, const int64_t* S, int64_t s, int64_t N) {
    int64_t a = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t r = blockIdx.y;
    if (a < s) W[r * N + S[a]] = 0.0f;
}

// rows/cols S of G (lower triangle) = 0, then G[q,q] = 1
__global__ void zero_G_kernel1(float* G, const int64_t* S, int64_t s, int64_t N) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t a = blockIdx.y;
    if (j >= N) return;
    int64_t q = S[a];
    if (j == q) G[q * N + q] = 1.0f;
    else if (j < q) G[q * N + j] = 0.0f;
    else G[j * N + q] = 0.0f;
}

// colsq[c] = ||W[:,c]||² (double accumulation; consecutive threads read consecutive columns)
__global__ void column_sq_norms_kernel1(double* colsq, const float* W, int64_t d_out, int64_t N) {
    int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (c >= N) return;
    double acc = 0.0;
    for (int64_t r = 0; r < d_out; r++) {
        double w = W[r * N + c];
        acc += w * w;
    }
    colsq[c] = acc;
}

// blocks (n_heads, d, d) = G[C_j, C_j] (full symmetric blocks)
__global__ void gather_head_blocks_kernel1(float* B, const float* G, int64_t d, int64_t N) {
    int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;  // within block, a*d + b
    int64_t j = blockIdx.y;
    if (k >= d * d) return;
    int64_t a = k / d, b = k % d;
    B[j * d * d + k] = sym_get(G, N, j * d + a, j * d + b);
}

// err[j] = Σ_k colsq[j d + k] / ĝ, ĝ = L_j[k,k]² (gcd) or G[c,c]
__global__ void head_err_kernel1(double* err, const double* colsq, const float* B, const float* G, int gcd,
                                 int64_t d, int64_t n_heads, int64_t N) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j >= n_heads) return;
    double e = 0.0;
    for (int64_t k = 0; k < d; k++) {
        double g;
        if (gcd) {
            double l = B[j * d * d + k * d + k];
            g = l * l;
        } else {
            g = G[(j * d + k) * N + j * d + k];
        }
        e += colsq[j * d + k] / g;
    }
    err[j] = e;
}

__global__ void channel_err_kernel1(double* err, const double* colsq, const float* G, int64_t N) {
    int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (c < N) err[c] = colsq[c] / (double)G[c * N + c];
}

__global__ void pointer_array_kernel1(float** P, float* base, int64_t stride, int64_t n) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j < n) P[j] = base + j * stride;
}

// ---------------------------------------------------------------------------------------
// building blocks

int64_t count_nonfinite_cuda(const float* A, int64_t n, cudaStream_t stream) {
    int* d = nullptr;
    int h = 0;
    if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) return -1;
    cudaMemsetAsync(d, 0, sizeof(int), stream);
    count_nonfinite_kernel1<<<std::min<unsigned>(blocks_for(n), 4096), 256, 0, stream>>>(d, A, n);
    cudaError_t e = cudaMemcpyAsync(&h, d, sizeof(int), cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    cudaFree(d);
    return e == cudaSuccess ? (int64_t)h : -1;
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

// G ← (damped H with dead inputs handled)⁻¹, kept in the row-major lower triangle
static int prepare_inverse(const Handles& h, float* G, float* W, const float* H, float percdamp,
                           int64_t d_out, int64_t N, cudaStream_t stream) {
    CK_CUDA(cudaMemcpyAsync(G, H, sizeof(float) * (size_t)(N * N), cudaMemcpyDeviceToDevice, stream));
    DevBuf<float> diag;
    CK(diag.alloc((size_t)N));
    dead_inputs_kernel1<<<blocks_for(N), 256, 0, stream>>>(G, W, diag.p, d_out, N);
    CK_CUDA(cudaGetLastError());
    if (percdamp > 0.0f) {
        std::vector<float> hd((size_t)N);
        CK_CUDA(cudaMemcpyAsync(hd.data(), diag.p, sizeof(float) * (size_t)N, cudaMemcpyDeviceToHost, stream));
        CK_CUDA(cudaStreamSynchronize(stream));
        double mean = 0.0;
        for (float v : hd) mean += v;
        add_diag_kernel1<<<blocks_for(N), 256, 0, stream>>>(G, (float)((double)percdamp * mean / (double)N), N);
        CK_CUDA(cudaGetLastError());
    }
    CK(potrf(h, CUBLAS_FILL_MODE_UPPER, G, (int)N, stream));
    Lib& L = lib();
    int lwork = 0, info = 0;
    CK_LIB(L.cusolverDnSpotri_bufferSize(h.solver, CUBLAS_FILL_MODE_UPPER, (int)N, G, (int)N, &lwork));
    DevBuf<float> work;
    DevBuf<int> dinfo;
    CK(work.alloc((size_t)lwork));
    CK(dinfo.alloc(1));
    CK_LIB(L.cusolverDnSpotri(h.solver, CUBLAS_FILL_MODE_UPPER, (int)N, G, (int)N, work.p, lwork, dinfo.p));
    CK_CUDA(cudaMemcpyAsync(&info, dinfo.p, sizeof(int), cudaMemcpyDeviceToHost, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    return info == 0 ? OK : NOT_POSITIVE_DEFINITE;
}

// remove_set of obs_cpu.cpp; S is a device array of s indices
static int remove_set(const Handles& h, float* W, float* G, const int64_t* S, int64_t s, bool compensate,
                      bool downdate, int64_t d_out, int64_t N, cudaStream_t stream) {
    if (s == 0) return OK;
    Lib& L = lib();
    const float one = 1.0f, minus_one = -1.0f;
    if (compensate || downdate) {
        DevBuf<float> V, LS;
        CK(V.alloc((size_t)(s * N)));
        CK(LS.alloc((size_t)(s * s)));
        gather_rows_kernel1<<<dim3(blocks_for(N), (unsigned)s), 256, 0, stream>>>(V.p, G, S, s, N);
        gather_block_kernel1<<<dim3(blocks_for(s), (unsigned)s), 256, 0, stream>>>(LS.p, G, S, s, N);
        CK_CUDA(cudaGetLastError());
        CK(potrf(h, CUBLAS_FILL_MODE_LOWER, LS.p, (int)s, stream));  // G_SS = L_S L_Sᵀ
        // V (N, s) col-major ← V L_S⁻ᵀ = Utᵀ
        CK_LIB(L.cublasStrsm(h.blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, CUBLAS_DIAG_NON_UNIT,
                             (int)N, (int)s, &one, LS.p, (int)s, V.p, (int)N));
        if (compensate) {
            DevBuf<float> Ec;
            CK(Ec.alloc((size_t)(s * d_out)));
            gather_WS_kernel1<<<dim3(blocks_for(s), (unsigned)d_out), 256, 0, stream>>>(Ec.p, W, S, s, N);
            CK_CUDA(cudaGetLastError());
            // Ec (s, d_out) = L_S⁻¹ W_Sᵀ = Eᵀ
            CK_LIB(L.cublasStrsm(h.blas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT,
                                 (int)s, (int)d_out, &one, LS.p, (int)s, Ec.p, (int)s));
            // Wc (N, d_out) −= V Ec, i.e. W −= E Ut (Eq. 4 for a set)
            CK_LIB(L.cublasSgemm(h.blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)d_out, (int)s, &minus_one, V.p,
                                 (int)N, Ec.p, (int)s, &one, W, (int)N));
        }
        if (downdate) {
            // Eq. 3 for a set: G −= V Vᵀ (column-major upper = our lower triangle)
            CK_LIB(L.cublasSsyrk(h.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, (int)N, (int)s, &minus_one, V.p,
                                 (int)N, &one, G, (int)N));
            zero_G_kernel1<<<dim3(blocks_for(N), (unsigned)s), 256, 0, stream>>>(G, S, s, N);
            CK_CUDA(cudaGetLastError());
        }
        CK_CUDA(cudaStreamSynchronize(stream));  // V, LS, Ec are freed at scope exit
    }
    zero_W_cols_kernel1<<<dim3(blocks_for(s), (unsigned)d_out), 256, 0, stream>>>(W, S, s, N);
    CK_CUDA(cudaGetLastError());
    return OK;
}

// Eq. 5 for all heads into host err (n_heads); gcd: batched Cholesky of the diagonal blocks
static int score_heads(const Handles& h, double* err, const float* W, const float* G, bool gcd, int64_t d,
                       int64_t d_out, int64_t N, cudaStream_t stream) {
    const int64_t n_heads = N / d;
    DevBuf<double> colsq, derr;
    DevBuf<float> B;
    CK(colsq.alloc((size_t)N));
    CK(derr.alloc((size_t)n_heads));
    column_sq_norms_kernel1<<<blocks_for(N), 256, 0, stream>>>(colsq.p, W, d_out, N);
    CK_CUDA(cudaGetLastError());
    if (gcd) {
        CK(B.alloc((size_t)(n_heads * d * d)));
        gather_head_blocks_kernel1<<<dim3(blocks_for(d * d), (unsigned)n_heads), 256, 0, stream>>>(B.p, G, d, N);
        DevBuf<float*> P;
        DevBuf<int> infos;
        CK(P.alloc((size_t)n_heads));
        CK(infos.alloc((size_t)n_heads));
        pointer_array_kernel1<<<blocks_for(n_heads), 256, 0, stream>>>(P.p, B.p, d * d, n_heads);
        CK_CUDA(cudaGetLastError());
        CK_LIB(lib().cusolverDnSpotrfBatched(h.solver, CUBLAS_FILL_MODE_LOWER, (int)d, P.p, (int)d, infos.p,
                                             (int)n_heads));
        std::vector<int> hinfo((size_t)n_heads);
        CK_CUDA(cudaMemcpyAsync(hinfo.data(), infos.p, sizeof(int) * (size_t)n_heads, cudaMemcpyDeviceToHost, stream));
        CK_CUDA(cudaStreamSynchronize(stream));
        for (int v : hinfo)
            if (v != 0) return NOT_POSITIVE_DEFINITE;
    }
    head_err_kernel1<<<blocks_for(n_heads), 256, 0, stream>>>(derr.p, colsq.p, B.p, G, gcd ? 1 : 0, d, n_heads, N);
    CK_CUDA(cudaGetLastError());
    CK_CUDA(cudaMemcpyAsync(err, derr.p, sizeof(double) * (size_t)n_heads, cudaMemcpyDeviceToHost, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    for (int64_t j = 0; j < n_heads; j++)
        if (!(err[j] >= 0.0)) return NOT_POSITIVE_DEFINITE;  // NaN from a non-positive diagonal
    return OK;
}

// ---------------------------------------------------------------------------------------
// public functions

int hessian_cuda(float* H, const float* X, int64_t n, int64_t N, cudaStream_t stream) {
    return accumulate_hessian_cuda(H, X, 0, n, N, stream);
}

int accumulate_hessian_cuda(float* H, const float* X, int64_t n_seen, int64_t n, int64_t N, cudaStream_t stream) {
    Handles h;
    CK(handles(h, stream));
    const double total = (double)(n_seen + n);
    const float alpha = (float)(2.0 / total), beta = (float)((double)n_seen / total);
    // column-major: X is (N, n), H = α X Xᵀ + β H, upper = our lower triangle
    CK_LIB(lib().cublasSsyrk(h.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, (int)N, (int)n, &alpha, X, (int)N, &beta,
                             H, (int)N));
    mirror_lower_kernel1<<<dim3(blocks_for(N), (unsigned)N), 256, 0, stream>>>(H, N);
    CK_CUDA(cudaGetLastError());
    CK_CUDA(cudaStreamSynchronize(stream));
    return OK;
}

int prune_columns_cuda(float* W, const float* H, const int64_t* cols, int64_t n_cols, float percdamp,
                       bool compensate, int64_t d_out, int64_t N, cudaStream_t stream) {
    if (n_cols == 0) return OK;
    Handles h;
    CK(handles(h, stream));
    DevBuf<float> G;
    DevBuf<int64_t> S;
    CK(G.alloc((size_t)(N * N)));
    CK(S.alloc((size_t)n_cols));
    CK_CUDA(cudaMemcpyAsync(S.p, cols, sizeof(int64_t) * (size_t)n_cols, cudaMemcpyHostToDevice, stream));
    if (compensate) {
        CK(prepare_inverse(h, G.p, W, H, percdamp, d_out, N, stream));
    } else {  // only the dead inputs of W are touched
        DevBuf<float> diag;
        CK(diag.alloc((size_t)N));
        CK_CUDA(cudaMemcpyAsync(G.p, H, sizeof(float) * (size_t)(N * N), cudaMemcpyDeviceToDevice, stream));
        dead_inputs_kernel1<<<blocks_for(N), 256, 0, stream>>>(G.p, W, diag.p, d_out, N);
        CK_CUDA(cudaGetLastError());
    }
    CK(remove_set(h, W, G.p, S.p, n_cols, compensate, false, d_out, N, stream));
    CK_CUDA(cudaStreamSynchronize(stream));
    return OK;
}

int head_errors_cuda(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd, int64_t d_out,
                     int64_t N, cudaStream_t stream) {
    Handles h;
    CK(handles(h, stream));
    std::vector<double> e((size_t)(N / head_dim));
    int st = score_heads(h, e.data(), W, Hinv, gcd, head_dim, d_out, N, stream);
    for (size_t j = 0; j < e.size(); j++) err[j] = (float)e[j];
    return st;
}

int prune_heads_cuda(float* W, int64_t* pruned, const float* H, int64_t n_prune, const int64_t* head_groups,
                     int64_t n_groups, float percdamp, bool gcd, bool compensate, int64_t head_dim, int64_t d_out,
                     int64_t N, cudaStream_t stream) {
    if (n_prune == 0) return OK;
    const int64_t d = head_dim, n_heads = N / d;
    Handles h;
    CK(handles(h, stream));
    DevBuf<float> G;
    DevBuf<int64_t> S;
    CK(G.alloc((size_t)(N * N)));
    CK(S.alloc((size_t)d));
    CK(prepare_inverse(h, G.p, W, H, percdamp, d_out, N, stream));
    std::vector<char> alive((size_t)n_heads, 1);
    std::vector<int64_t> group_count((size_t)std::max<int64_t>(n_groups, 1), 0), hS((size_t)d);
    const int64_t quota = head_groups ? n_prune / n_groups : n_prune;
    std::vector<double> err((size_t)n_heads);
    for (int64_t it = 0; it < n_prune; it++) {
        CK(score_heads(h, err.data(), W, G.p, gcd, d, d_out, N, stream));
        int64_t best = -1;
        for (int64_t j = 0; j < n_heads; j++) {
            if (!alive[j] || (head_groups && group_count[head_groups[j]] >= quota)) continue;
            if (best < 0 || err[j] < err[best]) best = j;
        }
        std::iota(hS.begin(), hS.end(), best * d);
        CK_CUDA(cudaMemcpyAsync(S.p, hS.data(), sizeof(int64_t) * (size_t)d, cudaMemcpyHostToDevice, stream));
        CK(remove_set(h, W, G.p, S.p, d, compensate, it + 1 < n_prune, d_out, N, stream));
        CK_CUDA(cudaStreamSynchronize(stream));  // hS is reused
        alive[best] = 0;
        if (head_groups) group_count[head_groups[best]]++;
    }
    int64_t k = 0;
    for (int64_t j = 0; j < n_heads; j++)
        if (!alive[j]) pruned[k++] = j;
    return OK;
}

int prune_channels_cuda(float* W, int64_t* pruned, const float* H, const int64_t* group_sizes, int64_t n_groups,
                        float percdamp, bool compensate, int64_t d_out, int64_t N, cudaStream_t stream) {
    if (n_groups == 0) return OK;
    Handles h;
    CK(handles(h, stream));
    DevBuf<float> G;
    DevBuf<int64_t> S;
    DevBuf<double> colsq, derr;
    CK(G.alloc((size_t)(N * N)));
    CK(S.alloc((size_t)N));
    CK(colsq.alloc((size_t)N));
    CK(derr.alloc((size_t)N));
    CK(prepare_inverse(h, G.p, W, H, percdamp, d_out, N, stream));
    std::vector<char> alive((size_t)N, 1);
    std::vector<double> err((size_t)N);
    std::vector<int64_t> order((size_t)N);
    for (int64_t k = 0; k < n_groups; k++) {
        const int64_t g = group_sizes[k];
        column_sq_norms_kernel1<<<blocks_for(N), 256, 0, stream>>>(colsq.p, W, d_out, N);
        channel_err_kernel1<<<blocks_for(N), 256, 0, stream>>>(derr.p, colsq.p, G.p, N);
        CK_CUDA(cudaGetLastError());
        CK_CUDA(cudaMemcpyAsync(err.data(), derr.p, sizeof(double) * (size_t)N, cudaMemcpyDeviceToHost, stream));
        CK_CUDA(cudaStreamSynchronize(stream));
        for (int64_t c = 0; c < N; c++) {
            if (alive[c] && !(err[c] >= 0.0)) return NOT_POSITIVE_DEFINITE;
            if (!alive[c]) err[c] = std::numeric_limits<double>::infinity();
        }
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + g, order.end(),
                          [&](int64_t a, int64_t b) { return err[a] < err[b] || (err[a] == err[b] && a < b); });
        CK_CUDA(cudaMemcpyAsync(S.p, order.data(), sizeof(int64_t) * (size_t)g, cudaMemcpyHostToDevice, stream));
        CK(remove_set(h, W, G.p, S.p, g, compensate, k + 1 < n_groups, d_out, N, stream));
        CK_CUDA(cudaStreamSynchronize(stream));  // order is reused
        for (int64_t a = 0; a < g; a++) alive[order[a]] = 0;
    }
    int64_t k = 0;
    for (int64_t c = 0; c < N; c++)
        if (!alive[c]) pruned[k++] = c;
    return OK;
}

}  // namespace slimgpt
