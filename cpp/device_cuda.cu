// Device discovery for has_cuda(): never throws, so the module imports without a driver.
#include <cuda_runtime.h>

int slimgpt_cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}
