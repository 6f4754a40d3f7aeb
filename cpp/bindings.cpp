// nanobind bindings of the slimgpt C++ core: one name per operation, checks at this layer.
// The operations mirror reference/ function for function (docs/equations.md).
#include <nanobind/nanobind.h>

namespace nb = nanobind;

#ifdef SLIMGPT_WITH_CUDA
int slimgpt_cuda_device_count();  // cpp/device_cuda.cu
#endif

static bool has_cuda() {
#ifdef SLIMGPT_WITH_CUDA
    return slimgpt_cuda_device_count() > 0;
#else
    return false;
#endif
}

NB_MODULE(_core, m) {
    m.doc() = "slimgpt C++ core (CPU, and CUDA when built): the fast path of slimgpt.reference";
    m.def("has_cuda", &has_cuda, "True when built with CUDA and a CUDA device is visible.");
#ifdef SLIMGPT_WITH_CUDA
    m.attr("built_with_cuda") = true;
#else
    m.attr("built_with_cuda") = false;
#endif
}
