// slimgpt CUDA core: the twins of the *_cpu functions in slimgpt.h (same names with _cuda,
// same argument order, device pointers for matrices, a stream last; nullptr = the legacy
// default stream). Host pointers: `pruned`, `err`, `cols`, `head_groups`, `group_sizes`.
// cuBLAS and cuSOLVER are dlopen'ed on first use (libcublas.so.13/.12, libcusolver.so.12/.11),
// so the module links only the static cudart and imports on machines without a GPU or without
// those libraries. Each function synchronises its stream before returning.
#pragma once
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace slimgpt {

// extra return codes of the CUDA functions (slimgpt::Status has OK, NOT_POSITIVE_DEFINITE)
enum CudaStatus : int {
    CUDA_FAILED = 2,           // a CUDA / cuBLAS / cuSOLVER call failed (see cuda_last_error)
    CUDA_LIBRARY_MISSING = 3,  // libcublas / libcusolver could not be dlopen'ed
};

int cuda_device_count();                 // 0 without a driver or device; never throws
void set_device_cuda(int device);
const char* cuda_last_error();           // message of the last failure on this thread
// number of non-finite entries of a device array (-1 on a CUDA error)
int64_t count_nonfinite_cuda(const float* A, int64_t n, cudaStream_t stream);

int hessian_cuda(float* H, const float* X, int64_t n, int64_t N, cudaStream_t stream);
int accumulate_hessian_cuda(float* H, const float* X, int64_t n_seen, int64_t n, int64_t N,
                            cudaStream_t stream);
int prune_columns_cuda(float* W, const float* H, const int64_t* cols, int64_t n_cols,
                       float percdamp, bool compensate, int64_t d_out, int64_t N,
                       cudaStream_t stream);
int head_errors_cuda(float* err, const float* W, const float* Hinv, int64_t head_dim, bool gcd,
                     int64_t d_out, int64_t N, cudaStream_t stream);
int prune_heads_cuda(float* W, int64_t* pruned, const float* H, int64_t n_prune,
                     const int64_t* head_groups, int64_t n_groups, float percdamp, bool gcd,
                     bool compensate, int64_t head_dim, int64_t d_out, int64_t N,
                     cudaStream_t stream);
int prune_channels_cuda(float* W, int64_t* pruned, const float* H, const int64_t* group_sizes,
                        int64_t n_groups, float percdamp, bool compensate, int64_t d_out,
                        int64_t N, cudaStream_t stream);

}  // namespace slimgpt
