// slimgpt CUDA core: the twins of the *_cpu functions in slimgpt.h (same names with _cuda,
// same argument order and statuses, device pointers for matrices, a stream last; nullptr =
// the legacy default stream). Host pointers: `pruned`, `loss`, `err`, `cols`, `head_groups`,
// `group_sizes`. cuBLAS and cuSOLVER are dlopen'ed on first use (libcublas.so.13/.12,
// libcusolver.so.12/.11), so the module links only the static cudart and imports on machines
// without a GPU or without those libraries. Each function synchronises its stream before
// returning. Failures of CUDA itself are CUDA_FAILED / CUDA_LIBRARY_MISSING (slimgpt.h) with
// a message in cuda_last_error().
#pragma once
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace slimgpt {

int cuda_device_count();          // 0 without a driver or device; never throws
void set_device_cuda(int device);
const char* cuda_last_error();    // message of the last failure on this thread
// number of non-finite entries of a device array (-1 on a CUDA error)
int64_t count_nonfinite_cuda(const float* A, int64_t n, cudaStream_t stream);
int64_t count_nonfinite_cuda(const double* A, int64_t n, cudaStream_t stream);

int hessian_cuda(double* H, const float* X, int64_t n, int64_t N, cudaStream_t stream);
int accumulate_hessian_cuda(double* H, const float* X, int64_t n_seen, int64_t n, int64_t N,
                            cudaStream_t stream);
int prune_columns_cuda(float* W, double* loss, const float* H, const int64_t* cols,
                       int64_t n_cols, float percdamp, bool compensate, int64_t d_out, int64_t N,
                       cudaStream_t stream);
int head_errors_cuda(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd,
                     int64_t d_out, int64_t N, cudaStream_t stream);
int prune_heads_cuda(float* W, int64_t* pruned, double* loss, const float* H, int64_t n_prune,
                     const int64_t* head_groups, int64_t n_groups, float percdamp, bool gcd,
                     bool compensate, int64_t head_dim, int64_t d_out, int64_t N,
                     cudaStream_t stream);
int prune_channels_cuda(float* W, int64_t* pruned, double* loss, const float* H,
                        const int64_t* group_sizes, int64_t n_groups, float percdamp,
                        bool compensate, int64_t d_out, int64_t N, cudaStream_t stream);

}  // namespace slimgpt
