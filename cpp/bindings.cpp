// nanobind bindings of the slimgpt C++ core: one name per operation, checks at this layer.
//
// Each operation is bound once with CPU arrays (nb::device::cpu) and, in a CUDA build, a
// second overload of the same name with CUDA arrays (torch CUDA tensors arrive zero-copy via
// DLPack); nanobind calls the first overload whose constraints match. Arrays are .noconvert():
// float64, strided or wrong-device input is rejected with a TypeError instead of copied.
// Everything that protects memory safety is checked here (shapes, index ranges, group quotas,
// finiteness) and raised as ValueError; the core in slimgpt.h / obs_cuda.h only asserts.
//
// Conventions (as gptq): W is updated IN PLACE; H is only read. Index outputs come back as
// NumPy int64 arrays on the host. slimgpt/ops.py wraps these into the functional API of
// slimgpt.reference (copies, dtype conversion, the damping retry).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "slimgpt.h"
#ifdef SLIMGPT_WITH_CUDA
#include "obs_cuda.h"
#endif

namespace nb = nanobind;
using namespace nb::literals;

template <class Device>
using Mat = nb::ndarray<float, nb::ndim<2>, nb::c_contig, Device>;
using CpuMat = Mat<nb::device::cpu>;
using Idx = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Vec = nb::ndarray<float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using IdxOut = nb::ndarray<nb::numpy, int64_t, nb::ndim<1>>;

// raised for slimgpt::NOT_POSITIVE_DEFINITE; a ValueError (as reference's error)
struct NotPositiveDefinite : std::runtime_error {
    using std::runtime_error::runtime_error;
};

static void check_status(int st, const char* what) {
    if (st == slimgpt::NOT_POSITIVE_DEFINITE)
        throw NotPositiveDefinite(std::string(what) +
                                  ": H (or a block of H⁻¹) is not positive definite in float32; "
                                  "increase percdamp");
}

static void fail(const std::string& msg) { throw nb::value_error(msg.c_str()); }

// ---------------------------------------------------------------------------------------
// checks shared by both devices

static void check_size(int64_t n, const char* name) {
    if (n <= 0 || n >= INT_MAX) fail(std::string(name) + " must be in [1, 2^31), got " + std::to_string(n));
}

template <class A>
static void check_W_H(const A& W, const A& H, int64_t& d_out, int64_t& N) {
    d_out = (int64_t)W.shape(0);
    N = (int64_t)W.shape(1);
    check_size(d_out, "W.shape[0] (d_out)");
    check_size(N, "W.shape[1] (d_in)");
    if ((int64_t)H.shape(0) != N || (int64_t)H.shape(1) != N)
        fail("H must be (d_in, d_in) = (" + std::to_string(N) + ", " + std::to_string(N) + "), got (" +
             std::to_string(H.shape(0)) + ", " + std::to_string(H.shape(1)) + ")");
}

static void check_percdamp(float percdamp) {
    if (!std::isfinite(percdamp) || percdamp < 0.0f) fail("percdamp must be finite and >= 0");
}

static bool all_finite(const float* p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!std::isfinite(p[i])) return false;
    return true;
}

static void check_finite_cpu(const CpuMat& A, const char* name) {
    if (!all_finite(A.data(), A.size())) fail(std::string(name) + " contains NaN or Inf");
}

static void check_head_dim(int64_t head_dim, int64_t N) {
    if (head_dim <= 0 || N % head_dim != 0)
        fail("head_dim must be a positive divisor of d_in = " + std::to_string(N) + ", got " +
             std::to_string(head_dim));
}

// columns: unique, in [0, N)
static void check_columns(const Idx& cols, int64_t N) {
    std::vector<char> seen((size_t)N, 0);
    for (size_t i = 0; i < cols.size(); i++) {
        const int64_t c = cols.data()[i];
        if (c < 0 || c >= N) fail("column index " + std::to_string(c) + " out of range [0, " + std::to_string(N) + ")");
        if (seen[(size_t)c]++) fail("column index " + std::to_string(c) + " repeated");
    }
}

// head_groups: one id in [0, n_groups) per head, n_prune divisible by n_groups, every group
// holds at least its quota. Returns n_groups (0 when there are no groups).
static int64_t check_head_groups(const std::optional<Idx>& groups, int64_t n_prune, int64_t n_heads) {
    if (n_prune < 0 || n_prune > n_heads)
        fail("n_prune must be in [0, n_heads = " + std::to_string(n_heads) + "], got " + std::to_string(n_prune));
    if (!groups) return 0;
    if ((int64_t)groups->size() != n_heads)
        fail("head_groups must have one entry per head (" + std::to_string(n_heads) + "), got " +
             std::to_string(groups->size()));
    int64_t n_groups = 0;
    for (int64_t j = 0; j < n_heads; j++) {
        const int64_t g = groups->data()[j];
        if (g < 0) fail("head_groups must be >= 0");
        n_groups = std::max(n_groups, g + 1);
    }
    if (n_prune % n_groups != 0)
        fail("n_prune = " + std::to_string(n_prune) + " is not divisible by the number of head groups " +
             std::to_string(n_groups));
    std::vector<int64_t> size((size_t)n_groups, 0);
    for (int64_t j = 0; j < n_heads; j++) size[(size_t)groups->data()[j]]++;
    for (int64_t g = 0; g < n_groups; g++)
        if (size[(size_t)g] < n_prune / n_groups)
            fail("head group " + std::to_string(g) + " has " + std::to_string(size[(size_t)g]) +
                 " heads, fewer than its quota " + std::to_string(n_prune / n_groups));
    return n_groups;
}

// group_sizes: positive, total <= N. Returns the total.
static int64_t check_group_sizes(const Idx& sizes, int64_t N) {
    int64_t total = 0;
    for (size_t k = 0; k < sizes.size(); k++) {
        const int64_t g = sizes.data()[k];
        if (g <= 0) fail("group_sizes must be positive, got " + std::to_string(g));
        total += g;
        if (total > N) fail("group_sizes sum to more than d_in = " + std::to_string(N));
    }
    return total;
}

static IdxOut make_index_array(std::vector<int64_t>&& v) {
    auto* heap = new std::vector<int64_t>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<int64_t>*>(p); });
    return IdxOut(heap->data(), {heap->size()}, owner);
}

// ---------------------------------------------------------------------------------------
// CPU overloads

static void hessian_cpu(CpuMat H, CpuMat X) {
    const int64_t n = (int64_t)X.shape(0), N = (int64_t)X.shape(1);
    check_size(n, "X.shape[0] (tokens)");
    check_size(N, "X.shape[1] (d_in)");
    if ((int64_t)H.shape(0) != N || (int64_t)H.shape(1) != N) fail("H must be (d_in, d_in)");
    check_finite_cpu(X, "X");
    nb::gil_scoped_release release;
    slimgpt::hessian_cpu(H.data(), X.data(), n, N);
}

static void accumulate_hessian_cpu(CpuMat H, CpuMat X, int64_t n_seen) {
    const int64_t n = (int64_t)X.shape(0), N = (int64_t)X.shape(1);
    check_size(n, "X.shape[0] (tokens)");
    check_size(N, "X.shape[1] (d_in)");
    if ((int64_t)H.shape(0) != N || (int64_t)H.shape(1) != N) fail("H must be (d_in, d_in)");
    if (n_seen < 0) fail("n_seen must be >= 0");
    check_finite_cpu(X, "X");
    check_finite_cpu(H, "H");
    nb::gil_scoped_release release;
    slimgpt::accumulate_hessian_cpu(H.data(), X.data(), n_seen, n, N);
}

static void prune_columns_cpu(CpuMat W, CpuMat H, Idx columns, float percdamp, bool compensate) {
    int64_t d_out, N;
    check_W_H(W, H, d_out, N);
    check_percdamp(percdamp);
    check_columns(columns, N);
    check_finite_cpu(W, "W");
    check_finite_cpu(H, "H");
    int st;
    {
        nb::gil_scoped_release release;
        st = slimgpt::prune_columns_cpu(W.data(), H.data(), columns.data(), (int64_t)columns.size(),
                                        percdamp, compensate, d_out, N);
    }
    check_status(st, "prune_columns");
}

static void head_errors_cpu(Vec err, CpuMat W, CpuMat Hinv, int64_t head_dim, bool gcd) {
    int64_t d_out, N;
    check_W_H(W, Hinv, d_out, N);
    check_head_dim(head_dim, N);
    if ((int64_t)err.shape(0) != N / head_dim) fail("err must have n_heads entries");
    check_finite_cpu(W, "W");
    check_finite_cpu(Hinv, "Hinv");
    int st;
    {
        nb::gil_scoped_release release;
        st = slimgpt::head_errors_cpu(err.data(), W.data(), Hinv.data(), head_dim, gcd, d_out, N);
    }
    check_status(st, "head_errors");
}

static IdxOut prune_heads_cpu(CpuMat W, CpuMat H, int64_t n_prune, int64_t head_dim, float percdamp,
                              bool gcd, bool compensate, std::optional<Idx> head_groups) {
    int64_t d_out, N;
    check_W_H(W, H, d_out, N);
    check_head_dim(head_dim, N);
    check_percdamp(percdamp);
    const int64_t n_groups = check_head_groups(head_groups, n_prune, N / head_dim);
    check_finite_cpu(W, "W");
    check_finite_cpu(H, "H");
    std::vector<int64_t> pruned((size_t)n_prune);
    int st;
    {
        nb::gil_scoped_release release;
        st = slimgpt::prune_heads_cpu(W.data(), pruned.data(), H.data(), n_prune,
                                      head_groups ? head_groups->data() : nullptr, n_groups, percdamp,
                                      gcd, compensate, head_dim, d_out, N);
    }
    check_status(st, "prune_heads");
    return make_index_array(std::move(pruned));
}

static IdxOut prune_channels_cpu(CpuMat W, CpuMat H, Idx group_sizes, float percdamp, bool compensate) {
    int64_t d_out, N;
    check_W_H(W, H, d_out, N);
    check_percdamp(percdamp);
    const int64_t total = check_group_sizes(group_sizes, N);
    check_finite_cpu(W, "W");
    check_finite_cpu(H, "H");
    std::vector<int64_t> pruned((size_t)total);
    int st;
    {
        nb::gil_scoped_release release;
        st = slimgpt::prune_channels_cpu(W.data(), pruned.data(), H.data(), group_sizes.data(),
                                         (int64_t)group_sizes.size(), percdamp, compensate, d_out, N);
    }
    check_status(st, "prune_channels");
    return make_index_array(std::move(pruned));
}

static IdxOut dgs_group_sizes(int64_t T) {
    if (T < 0) fail("the number of channels to prune must be >= 0");
    std::vector<int64_t> sizes((size_t)T + 1);
    sizes.resize((size_t)slimgpt::dgs_group_sizes(sizes.data(), T));
    return make_index_array(std::move(sizes));
}

// ---------------------------------------------------------------------------------------
// CUDA overloads (same names, same checks; data stays on the device)
#ifdef SLIMGPT_WITH_CUDA
using CudaMat = Mat<nb::device::cuda>;

static void check_finite_cuda(const CudaMat& A, const char* name) {
    const int64_t bad = slimgpt::count_nonfinite_cuda(A.data(), (int64_t)A.size(), nullptr);
    if (bad < 0) throw std::runtime_error("CUDA error while checking " + std::string(name));
    if (bad > 0) fail(std::string(name) + " contains NaN or Inf");
}

static void check_same_device(const CudaMat& A, const CudaMat& B) {
    if (A.device_id() != B.device_id()) fail("all CUDA arrays must be on the same device");
    slimgpt::set_device_cuda(A.device_id());
}

static void check_cuda_status(int st, const char* what) {
    if (st == slimgpt::CUDA_LIBRARY_MISSING)
        throw std::runtime_error(std::string(what) + ": " + slimgpt::cuda_last_error());
    if (st == slimgpt::CUDA_FAILED)
        throw std::runtime_error(std::string(what) + ": CUDA error: " + slimgpt::cuda_last_error());
    check_status(st, what);
}

static void hessian_cuda(CudaMat H, CudaMat X) {
    const int64_t n = (int64_t)X.shape(0), N = (int64_t)X.shape(1);
    check_size(n, "X.shape[0] (tokens)");
    check_size(N, "X.shape[1] (d_in)");
    if ((int64_t)H.shape(0) != N || (int64_t)H.shape(1) != N) fail("H must be (d_in, d_in)");
    check_same_device(H, X);
    check_finite_cuda(X, "X");
    nb::gil_scoped_release release;
    check_cuda_status(slimgpt::hessian_cuda(H.data(), X.data(), n, N, nullptr), "hessian");
}

static void accumulate_hessian_cuda(CudaMat H, CudaMat X, int64_t n_seen) {
    const int64_t n = (int64_t)X.shape(0), N = (int64_t)X.shape(1);
    check_size(n, "X.shape[0] (tokens)");
    check_size(N, "X.shape[1] (d_in)");
    if ((int64_t)H.shape(0) != N || (int64_t)H.shape(1) != N) fail("H must be (d_in, d_in)");
    if (n_seen < 0) fail("n_seen must be >= 0");
    check_same_device(H, X);
    check_finite_cuda(X, "X");
    check_finite_cuda(H, "H");
    nb::gil_scoped_release release;
    check_cuda_status(slimgpt::accumulate_hessian_cuda(H.data(), X.data(), n_seen, n, N, nullptr),
                      "accumulate_hessian");
}

static void prune_columns_cuda(CudaMat W, CudaMat H, Idx columns, float percdamp, bool compensate) {
    int64_t d_out, N;
    check_W_H(W, H, d_out, N);
    check_same_device(W, H);
    check_percdamp(percdamp);
    check_columns(columns, N);
    check_finite_cuda(W, "W");
    check_finite_cuda(H, "H");
    int st;
    {
        nb::gil_scoped_release release;
        st = slimgpt::prune_columns_cuda(W.data(), H.data(), columns.data(), (int64_t)columns.size(),
                                         percdamp, compensate, d_out, N, nullptr);
    }
    check_cuda_status(st, "prune_columns");
}

static void head_errors_cuda(Vec err, CudaMat W, CudaMat Hinv, int64_t head_dim, bool gcd) {
    int64_t d_out, N;
    check_W_H(W, Hinv, d_out, N);
    check_same_device(W, Hinv);
    check_head_dim(head_dim, N);
    if ((int64_t)err.shape(0) != N / head_dim) fail("err must have n_heads entries");
    check_finite_cuda(W, "W");
    check_finite_cuda(Hinv, "Hinv");
    int st;
    {
        nb::gil_scoped_release release;
        st = slimgpt::head_errors_cuda(err.data(), W.data(), Hinv.data(), head_dim, gcd, d_out, N, nullptr);
    }
    check_cuda_status(st, "head_errors");
}

static IdxOut prune_heads_cuda(CudaMat W, CudaMat H, int64_t n_prune, int64_t head_dim, float percdamp,
                               bool gcd, bool compensate, std::optional<Idx> head_groups) {
    int64_t d_out, N;
    check_W_H(W, H, d_out, N);
    check_same_device(W, H);
    check_head_dim(head_dim, N);
    check_percdamp(percdamp);
    const int64_t n_groups = check_head_groups(head_groups, n_prune, N / head_dim);
    check_finite_cuda(W, "W");
    check_finite_cuda(H, "H");
    std::vector<int64_t> pruned((size_t)n_prune);
    int st;
    {
        nb::gil_scoped_release release;
        st = slimgpt::prune_heads_cuda(W.data(), pruned.data(), H.data(), n_prune,
                                       head_groups ? head_groups->data() : nullptr, n_groups, percdamp,
                                       gcd, compensate, head_dim, d_out, N, nullptr);
    }
    check_cuda_status(st, "prune_heads");
    return make_index_array(std::move(pruned));
}

static IdxOut prune_channels_cuda(CudaMat W, CudaMat H, Idx group_sizes, float percdamp, bool compensate) {
    int64_t d_out, N;
    check_W_H(W, H, d_out, N);
    check_same_device(W, H);
    check_percdamp(percdamp);
    const int64_t total = check_group_sizes(group_sizes, N);
    check_finite_cuda(W, "W");
    check_finite_cuda(H, "H");
    std::vector<int64_t> pruned((size_t)total);
    int st;
    {
        nb::gil_scoped_release release;
        st = slimgpt::prune_channels_cuda(W.data(), pruned.data(), H.data(), group_sizes.data(),
                                          (int64_t)group_sizes.size(), percdamp, compensate, d_out, N,
                                          nullptr);
    }
    check_cuda_status(st, "prune_channels");
    return make_index_array(std::move(pruned));
}
#endif  // SLIMGPT_WITH_CUDA

static bool has_cuda() {
#ifdef SLIMGPT_WITH_CUDA
    return slimgpt::cuda_device_count() > 0;
#else
    return false;
#endif
}

// ---------------------------------------------------------------------------------------

NB_MODULE(_core, m) {
    m.doc() = "slimgpt C++ core (CPU, and CUDA when built): the fast path of slimgpt.reference.\n"
              "W is updated in place; index results are NumPy int64 arrays.";
    m.def("has_cuda", &has_cuda, "True when built with CUDA and a CUDA device is visible.");
#ifdef SLIMGPT_WITH_CUDA
    m.attr("built_with_cuda") = true;
#else
    m.attr("built_with_cuda") = false;
#endif
    nb::exception<NotPositiveDefinite>(m, "NotPositiveDefiniteError", PyExc_ValueError);

    // one name per operation; the CUDA overload (if built) follows the CPU one
#ifdef SLIMGPT_WITH_CUDA
#define SLIMGPT_DEF(name, doc, ...)                              \
    m.def(#name, &name##_cpu, __VA_ARGS__, doc);                 \
    m.def(#name, &name##_cuda, __VA_ARGS__, doc)
#else
#define SLIMGPT_DEF(name, doc, ...) m.def(#name, &name##_cpu, __VA_ARGS__, doc)
#endif
    SLIMGPT_DEF(hessian, "H = 2 XᵀX / n, written into H (d_in, d_in); X is (n, d_in).",
                "H"_a.noconvert(), "X"_a.noconvert());
    SLIMGPT_DEF(accumulate_hessian,
                "Running mean in place: H ← H·n_seen/(n_seen+n) + 2 XᵀX/(n_seen+n).",
                "H"_a.noconvert(), "X"_a.noconvert(), "n_seen"_a);
    SLIMGPT_DEF(prune_columns,
                "OBS removal of a column set (Eqs. 3-4), W updated in place; H is only read.",
                "W"_a.noconvert(), "H"_a.noconvert(), "columns"_a.noconvert(), "percdamp"_a = 0.0f,
                "compensate"_a = true);
    SLIMGPT_DEF(head_errors, "Grouped-Cholesky head errors (Eq. 5) written into err (n_heads,).",
                "err"_a.noconvert(), "W"_a.noconvert(), "Hinv"_a.noconvert(), "head_dim"_a,
                "gcd"_a = true);
    SLIMGPT_DEF(prune_heads,
                "Greedy head pruning, one head per iteration (spec §3.3), W updated in place; "
                "returns the pruned heads (sorted int64).",
                "W"_a.noconvert(), "H"_a.noconvert(), "n_prune"_a, "head_dim"_a, "percdamp"_a = 0.0f,
                "gcd"_a = true, "compensate"_a = true, "head_groups"_a.noconvert() = nb::none());
    SLIMGPT_DEF(prune_channels,
                "DGS channel pruning with explicit group sizes (spec §4), W updated in place; "
                "returns the pruned channels (sorted int64).",
                "W"_a.noconvert(), "H"_a.noconvert(), "group_sizes"_a.noconvert(),
                "percdamp"_a = 0.0f, "compensate"_a = true);
#undef SLIMGPT_DEF
    m.def("dgs_group_sizes", &dgs_group_sizes, "T"_a, "The published DGS schedule for T channels (spec §4.2).");
}
