// nanobind bindings of the slimgpt C++ core: one name per operation, every check at this layer.
//
// Each operation is written once, as a template over the device: a traits struct per device
// (Cpu, and Cuda in CUDA builds) says whether an array is finite, selects the device and
// calls that device's core function. Each template is bound as a CPU overload and, in CUDA
// builds, a CUDA overload of the same name (torch CUDA tensors arrive zero-copy through
// DLPack); nanobind calls the first overload whose argument types match. A last overload of
// each name accepts any arguments and only explains in one line why none matched (dtype,
// layout, device, a read-only W, a bool where a count is expected, …) instead of nanobind's
// list of signatures. Every argument of the typed overloads loads without implicit
// conversion (arrays are .noconvert(): float64, strided or wrong-device input is refused,
// never copied), so that nanobind's strict first pass finds a valid call before the
// explaining overload.
//
// Checked here, before any use, for memory safety: shapes, sizes below 2^31 (32-bit BLAS),
// index ranges and uniqueness, counts, head-group quotas, group sizes (summed without
// overflow), percdamp and finiteness; raised as ValueError (TypeError for wrong types). The
// core in slimgpt.h / obs_cuda.h only asserts. A failed Cholesky (NOT_POSITIVE_DEFINITE) or a
// non-finite result (NOT_FINITE) is raised as NotPositiveDefiniteError, a ValueError.
//
// Conventions (as gptq): W, and the outputs H (hessian) and err (head_errors), are updated IN
// PLACE; every other array is only read, and read-only arrays are accepted there. Index
// outputs come back as NumPy int64 arrays on the host. slimgpt/ops.py wraps these into the
// functional API of slimgpt.reference (copies, dtype conversion, the damping retry).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"
#include "slimgpt.h"
#ifdef SLIMGPT_WITH_CUDA
#include "obs_cuda.h"
#endif

namespace nb = nanobind;
using namespace nb::literals;

// ---------------------------------------------------------------------------------------
// scalar arguments that load without implicit conversion, and never from a bool

static bool is_bool(PyObject* o) {  // True/False and NumPy's bool scalars
    return PyBool_Check(o) || std::strncmp(Py_TYPE(o)->tp_name, "numpy.bool", 10) == 0;
}

// An integer count: a Python int or an object with __index__ (NumPy integers).
struct Count {
    int64_t value;
};
// A real number: a Python int or float, or a NumPy integer or floating scalar.
struct Real {
    double value;
};

static bool is_real(PyObject* o) {
    const char* t = Py_TYPE(o)->tp_name;
    return !is_bool(o) && (PyFloat_Check(o) || PyLong_Check(o) || std::strncmp(t, "numpy.float", 11) == 0 ||
                           std::strncmp(t, "numpy.int", 9) == 0 || std::strncmp(t, "numpy.uint", 10) == 0);
}

namespace nanobind::detail {
template <> struct type_caster<Count> {
    NB_TYPE_CASTER(Count, const_name("int"))
    bool from_python(handle src, uint32_t, cleanup_list*) noexcept {
        if (is_bool(src.ptr()) || !PyIndex_Check(src.ptr())) return false;
        PyObject* i = PyNumber_Index(src.ptr());
        int overflow = 0;
        const long long v = i ? PyLong_AsLongLongAndOverflow(i, &overflow) : -1;
        Py_XDECREF(i);
        if (!i || overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return false;
        }
        value.value = (int64_t)v;
        return true;
    }
};
template <> struct type_caster<Real> {
    NB_TYPE_CASTER(Real, const_name("float"))
    bool from_python(handle src, uint32_t, cleanup_list*) noexcept {
        if (!is_real(src.ptr())) return false;
        const double v = PyFloat_AsDouble(src.ptr());  // an int beyond the double range fails
        if (v == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return false;
        }
        value.value = v;
        return true;
    }
};
}  // namespace nanobind::detail

// ---------------------------------------------------------------------------------------
// errors

// raised for NOT_POSITIVE_DEFINITE and NOT_FINITE; a ValueError (as the reference's error)
struct NotPositiveDefinite : std::runtime_error {
    using std::runtime_error::runtime_error;
};

static void check_status(int st, const std::string& what, const char* detail) {
    switch (st) {
        case slimgpt::OK:
            return;
        case slimgpt::NOT_POSITIVE_DEFINITE:
            throw NotPositiveDefinite(what + ": H (or a block of H⁻¹) is not positive definite in float32; "
                                             "increase percdamp");
        case slimgpt::NOT_FINITE:
            throw NotPositiveDefinite(what + ": the result was not finite (NaN or Inf from finite inputs): "
                                             "H is numerically not positive definite; increase percdamp");
        case slimgpt::CUDA_LIBRARY_MISSING:
            throw std::runtime_error(what + ": " + detail);
        default:
            throw std::runtime_error(what + ": CUDA error: " + detail);
    }
}

[[noreturn]] static void fail(const std::string& msg) { throw nb::value_error(msg.c_str()); }

static std::string str(int64_t v) { return std::to_string(v); }

// ---------------------------------------------------------------------------------------
// checks shared by every operation and device

template <class D>
using Mat = nb::ndarray<float, nb::ndim<2>, nb::c_contig, typename D::device>;
template <class D>
using In = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, typename D::device>;
template <class D>
using Mat64 = nb::ndarray<double, nb::ndim<2>, nb::c_contig, typename D::device>;
using Vec = nb::ndarray<float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Idx = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using IdxOut = nb::ndarray<nb::numpy, int64_t, nb::ndim<1>>;

// a matrix dimension for the 32-bit BLAS: in [1, 2^31)
static void check_size(int64_t n, const char* name) {
    if (n < 1 || n > INT_MAX) fail(std::string(name) + " must be in [1, 2^31), got " + str(n));
}

static void check_count(int64_t n, const char* name, int64_t lo, int64_t hi) {
    if (n < lo || n > hi) fail(std::string(name) + " must be in [" + str(lo) + ", " + str(hi) + "], got " + str(n));
}

// H (N, N) for a W or X with N columns
template <class A>
static void check_square(const A& H, int64_t N, const char* name) {
    if ((int64_t)H.shape(0) != N || (int64_t)H.shape(1) != N)
        fail(std::string(name) + " must be (d_in, d_in) = (" + str(N) + ", " + str(N) + "), got (" +
             str((int64_t)H.shape(0)) + ", " + str((int64_t)H.shape(1)) + ")");
}

// W (d_out, N) and H (N, N); returns d_out, N
template <class A, class B>
static void check_W_H(const A& W, const B& H, const char* H_name, int64_t& d_out, int64_t& N) {
    d_out = (int64_t)W.shape(0);
    N = (int64_t)W.shape(1);
    check_size(d_out, "W.shape[0] (d_out)");
    check_size(N, "W.shape[1] (d_in)");
    check_square(H, N, H_name);
}

// all arrays on one device, which becomes the current one
template <class D, class A, class... B>
static void on_one_device(const A& a, const B&... b) {
    if (((b.device_id() != a.device_id()) || ...)) fail("all arrays must be on the same device");
    D::set_device(a.device_id());
}

template <class D, class A>
static void check_finite(const A& M, const char* name) {
    if (!D::finite(M.data(), M.size())) fail(std::string(name) + " contains NaN or Inf");
}

// the core takes percdamp as float32
static float check_percdamp(Real p) {
    if (!std::isfinite(p.value) || p.value < 0.0 || p.value > FLT_MAX)
        fail("percdamp must be a finite number in [0, 3.4e38], got " + std::to_string(p.value));
    return (float)p.value;
}

static void check_head_dim(int64_t head_dim, int64_t N) {
    if (head_dim < 1 || head_dim > N || N % head_dim != 0)
        fail("head_dim must be a positive divisor of d_in = " + str(N) + ", got " + str(head_dim));
}

// columns: unique, in [0, N)
static void check_columns(const Idx& cols, int64_t N) {
    std::vector<char> seen((size_t)N, 0);
    for (size_t i = 0; i < cols.size(); i++) {
        const int64_t c = cols.data()[i];
        if (c < 0 || c >= N) fail("column index " + str(c) + " out of range [0, " + str(N) + ")");
        if (seen[(size_t)c]++) fail("column index " + str(c) + " repeated");
    }
}

// head_groups: one id in [0, n_heads) per head, renumbered 0 .. n_groups-1 in increasing
// order (np.unique(ids, return_inverse=True), as reference/heads.py). n_prune must be a
// multiple of n_groups and every group must hold its quota n_prune / n_groups.
static int64_t dense_head_groups(std::vector<int64_t>& dense, const Idx& ids, int64_t n_prune,
                                 int64_t n_heads) {
    if ((int64_t)ids.size() != n_heads)
        fail("head_groups must have one entry per head (" + str(n_heads) + "), got " + str((int64_t)ids.size()));
    std::vector<char> used((size_t)n_heads, 0);
    for (int64_t j = 0; j < n_heads; j++) {
        const int64_t g = ids.data()[j];
        if (g < 0 || g >= n_heads)
            fail("head_groups ids must be in [0, n_heads = " + str(n_heads) + "), got " + str(g));
        used[(size_t)g] = 1;
    }
    std::vector<int64_t> rank((size_t)n_heads), size;
    int64_t n_groups = 0;
    for (int64_t g = 0; g < n_heads; g++)
        if (used[(size_t)g]) rank[(size_t)g] = n_groups++;
    dense.resize((size_t)n_heads);
    size.assign((size_t)n_groups, 0);
    for (int64_t j = 0; j < n_heads; j++) size[(size_t)(dense[(size_t)j] = rank[(size_t)ids.data()[j]])]++;
    if (n_prune % n_groups != 0)
        fail("n_prune = " + str(n_prune) + " is not a multiple of the " + str(n_groups) + " head groups");
    for (int64_t g = 0; g < n_groups; g++)
        if (size[(size_t)g] < n_prune / n_groups)
            fail("head group " + str(g) + " has " + str(size[(size_t)g]) + " heads, fewer than its quota " +
                 str(n_prune / n_groups));
    return n_groups;
}

// group_sizes: positive, summing to at most N (checked before each addition: no overflow).
// Returns the sum.
static int64_t check_group_sizes(const Idx& sizes, int64_t N) {
    int64_t total = 0;
    for (size_t k = 0; k < sizes.size(); k++) {
        const int64_t g = sizes.data()[k];
        if (g <= 0) fail("group_sizes must be positive, got " + str(g));
        if (g > N - total) fail("group_sizes sum to more than d_in = " + str(N));
        total += g;
    }
    return total;
}

static IdxOut make_index_array(std::vector<int64_t>&& v) {
    auto* heap = new std::vector<int64_t>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<int64_t>*>(p); });
    return IdxOut(heap->data(), {heap->size()}, owner);
}

// run the core without the GIL, then raise its status
template <class D, class F>
static void run(const char* what, F&& call) {
    int st;
    {
        nb::gil_scoped_release release;
        st = call();
    }
    check_status(st, what, D::last_error());
}

// ---------------------------------------------------------------------------------------
// devices

struct Cpu {
    using device = nb::device::cpu;
    template <class T>
    static bool finite(const T* p, size_t n) {  // on the core's threads, 2^20 entries per task
        const int64_t chunk = int64_t(1) << 20, n_chunks = ((int64_t)n + chunk - 1) / chunk;
        std::atomic<bool> ok{true};
        nb::gil_scoped_release release;
        slimgpt::parallel_for(n_chunks, [&](int64_t c, int) {
            const T* q = p + c * chunk;
            const int64_t m = std::min<int64_t>(chunk, (int64_t)n - c * chunk);
            bool f = true;
            for (int64_t i = 0; i < m; i++) f &= std::isfinite(q[i]);
            if (!f) ok = false;
        });
        return ok;
    }
    static void set_device(int) {}
    static const char* last_error() { return ""; }
    static int hessian(double* H, const float* X, int64_t n, int64_t N) {
        slimgpt::hessian_cpu(H, X, n, N);
        return slimgpt::OK;
    }
    static int accumulate_hessian(double* H, const float* X, int64_t n_seen, int64_t n, int64_t N) {
        slimgpt::accumulate_hessian_cpu(H, X, n_seen, n, N);
        return slimgpt::OK;
    }
    static constexpr auto prune_columns = &slimgpt::prune_columns_cpu;
    static constexpr auto head_errors = &slimgpt::head_errors_cpu;
    static constexpr auto prune_heads = &slimgpt::prune_heads_cpu;
    static constexpr auto prune_channels = &slimgpt::prune_channels_cpu;
};

#ifdef SLIMGPT_WITH_CUDA
// the CUDA functions take the stream last: the legacy default stream here
struct Cuda {
    using device = nb::device::cuda;
    template <class T>
    static bool finite(const T* p, size_t n) {
        const int64_t bad = slimgpt::count_nonfinite_cuda(p, (int64_t)n, nullptr);
        if (bad < 0) throw std::runtime_error(std::string("CUDA error while checking for NaN/Inf: ") +
                                              slimgpt::cuda_last_error());
        return bad == 0;
    }
    static void set_device(int device) { slimgpt::set_device_cuda(device); }
    static const char* last_error() { return slimgpt::cuda_last_error(); }
    template <class... A>
    static int hessian(A... a) { return slimgpt::hessian_cuda(a..., nullptr); }
    template <class... A>
    static int accumulate_hessian(A... a) { return slimgpt::accumulate_hessian_cuda(a..., nullptr); }
    template <class... A>
    static int prune_columns(A... a) { return slimgpt::prune_columns_cuda(a..., nullptr); }
    template <class... A>
    static int head_errors(A... a) { return slimgpt::head_errors_cuda(a..., nullptr); }
    template <class... A>
    static int prune_heads(A... a) { return slimgpt::prune_heads_cuda(a..., nullptr); }
    template <class... A>
    static int prune_channels(A... a) { return slimgpt::prune_channels_cuda(a..., nullptr); }
};
#endif

// ---------------------------------------------------------------------------------------
// operations, once for every device

template <class D>
static void hessian(Mat64<D> H, In<D> X) {
    const int64_t n = (int64_t)X.shape(0), N = (int64_t)X.shape(1);
    check_size(n, "X.shape[0] (tokens)");
    check_size(N, "X.shape[1] (d_in)");
    check_square(H, N, "H");
    on_one_device<D>(H, X);
    check_finite<D>(X, "X");
    run<D>("hessian", [&] { return D::hessian(H.data(), X.data(), n, N); });
}

template <class D>
static void accumulate_hessian(Mat64<D> H, In<D> X, Count n_seen) {
    const int64_t n = (int64_t)X.shape(0), N = (int64_t)X.shape(1);
    check_size(n, "X.shape[0] (tokens)");
    check_size(N, "X.shape[1] (d_in)");
    check_square(H, N, "H");
    check_count(n_seen.value, "n_seen", 0, INT64_MAX - n);  // n_seen + n must fit in int64
    on_one_device<D>(H, X);
    check_finite<D>(X, "X");
    check_finite<D>(H, "H");
    run<D>("accumulate_hessian", [&] { return D::accumulate_hessian(H.data(), X.data(), n_seen.value, n, N); });
}

template <class D>
static double prune_columns(Mat<D> W, In<D> H, Idx columns, Real percdamp, bool compensate) {
    int64_t d_out, N;
    check_W_H(W, H, "H", d_out, N);
    const float p = check_percdamp(percdamp);
    check_columns(columns, N);
    on_one_device<D>(W, H);
    check_finite<D>(W, "W");
    check_finite<D>(H, "H");
    double loss = 0.0;
    run<D>("prune_columns", [&] {
        return D::prune_columns(W.data(), &loss, H.data(), columns.data(), (int64_t)columns.size(), p,
                                compensate, d_out, N);
    });
    return loss;
}

template <class D>
static void head_errors(Vec err, In<D> W, In<D> Hinv, Count head_dim, bool gcd) {
    int64_t d_out, N;
    check_W_H(W, Hinv, "Hinv", d_out, N);
    check_head_dim(head_dim.value, N);
    if ((int64_t)err.shape(0) != N / head_dim.value)
        fail("err must have n_heads = " + str(N / head_dim.value) + " entries, got " + str((int64_t)err.shape(0)));
    on_one_device<D>(W, Hinv);
    check_finite<D>(W, "W");
    check_finite<D>(Hinv, "Hinv");
    run<D>("head_errors",
           [&] { return D::head_errors(err.data(), W.data(), Hinv.data(), head_dim.value, gcd, d_out, N); });
}

template <class D>
static nb::tuple prune_heads(Mat<D> W, In<D> H, Count n_prune, Count head_dim, Real percdamp, bool gcd,
                             bool compensate, std::optional<Idx> head_groups) {
    int64_t d_out, N;
    check_W_H(W, H, "H", d_out, N);
    check_head_dim(head_dim.value, N);
    const int64_t n_heads = N / head_dim.value;
    check_count(n_prune.value, "n_prune", 0, n_heads);
    const float p = check_percdamp(percdamp);
    std::vector<int64_t> groups;
    const int64_t n_groups = head_groups ? dense_head_groups(groups, *head_groups, n_prune.value, n_heads) : 0;
    on_one_device<D>(W, H);
    check_finite<D>(W, "W");
    check_finite<D>(H, "H");
    std::vector<int64_t> pruned((size_t)n_prune.value);
    double loss = 0.0;
    run<D>("prune_heads", [&] {
        return D::prune_heads(W.data(), pruned.data(), &loss, H.data(), n_prune.value,
                              head_groups ? groups.data() : nullptr, n_groups, p, gcd, compensate, head_dim.value,
                              d_out, N);
    });
    return nb::make_tuple(make_index_array(std::move(pruned)), loss);
}

template <class D>
static nb::tuple prune_channels(Mat<D> W, In<D> H, Idx group_sizes, Real percdamp, bool compensate) {
    int64_t d_out, N;
    check_W_H(W, H, "H", d_out, N);
    const float p = check_percdamp(percdamp);
    const int64_t total = check_group_sizes(group_sizes, N);
    on_one_device<D>(W, H);
    check_finite<D>(W, "W");
    check_finite<D>(H, "H");
    std::vector<int64_t> pruned((size_t)total);
    double loss = 0.0;
    run<D>("prune_channels", [&] {
        return D::prune_channels(W.data(), pruned.data(), &loss, H.data(), group_sizes.data(),
                                 (int64_t)group_sizes.size(), p, compensate, d_out, N);
    });
    return nb::make_tuple(make_index_array(std::move(pruned)), loss);
}

static IdxOut dgs_group_sizes(Count T) {
    check_count(T.value, "T (the number of channels to prune)", 0, INT_MAX);
    std::vector<int64_t> sizes((size_t)slimgpt::dgs_group_sizes(nullptr, T.value));
    slimgpt::dgs_group_sizes(sizes.data(), T.value);
    return make_index_array(std::move(sizes));
}

static void set_num_threads(Count n) {
    check_count(n.value, "n (threads)", 1, 256);
    slimgpt::set_num_threads((int)n.value);
}

static bool has_cuda() {
#ifdef SLIMGPT_WITH_CUDA
    return slimgpt::cuda_device_count() > 0;
#else
    return false;
#endif
}

// ---------------------------------------------------------------------------------------
// the explaining overload: why a call matched no typed overload, in one line

enum class Kind { OUT, IN, OUT64, OUT_VEC, INDICES, OPT_INDICES, COUNT, REAL, FLAG };
struct Param {
    const char* name;
    Kind kind;
    bool has_default;
};

static std::string dtype_name(nb::dlpack::dtype t) {
    static const char* const kinds[] = {"int", "uint", "float", "code 3 ", "bfloat", "complex", "bool"};
    if (t.code == (uint8_t)nb::dlpack::dtype_code::Bool) return "bool";
    return (t.code < 7 ? std::string(kinds[t.code]) : "dtype code " + str(t.code) + " ") + str(t.bits);
}

// one argument; `device` is the (type, id) of the first matrix, which all others must share
static void explain_arg(const std::string& fn, const Param& p, nb::handle h, std::pair<int, int>& device) {
    PyObject* o = h.ptr();
    const std::string name = fn + p.name, type = Py_TYPE(o)->tp_name;
    auto type_error = [&](const std::string& why) { throw nb::type_error((name + " " + why).c_str()); };
    const std::string repr = nb::repr(h).c_str();
    Count count;
    Real real;
    switch (p.kind) {
        case Kind::COUNT:
            if (nb::try_cast(h, count, false)) return;
            if (is_bool(o)) type_error("must be an integer, got the bool " + repr);
            if (!PyIndex_Check(o)) type_error("must be an integer, got " + type);
            fail(name + " = " + repr + " does not fit in 64 bits");
        case Kind::REAL:
            if (nb::try_cast(h, real, false)) return;
            if (!is_real(o)) type_error("must be a real number, got " + type);
            fail(name + " = " + repr + " does not fit in a double");
        case Kind::FLAG:
            if (!PyBool_Check(o)) type_error("must be True or False, got " + type);
            return;
        default:
            break;
    }
    if (p.kind == Kind::OPT_INDICES && h.is_none()) return;
    nb::ndarray<nb::ro> a;
    if (!nb::try_cast(h, a, false)) type_error("must be a NumPy array or a DLPack tensor, got " + type);
    const bool matrix = p.kind == Kind::OUT || p.kind == Kind::IN || p.kind == Kind::OUT64;
    const nb::dlpack::dtype want = p.kind == Kind::OUT64                                 ? nb::dtype<double>()
                                   : p.kind == Kind::INDICES || p.kind == Kind::OPT_INDICES ? nb::dtype<int64_t>()
                                                                                           : nb::dtype<float>();
    if (a.dtype() != want) type_error("must be a " + dtype_name(want) + " array, got " + dtype_name(a.dtype()));
    if (a.ndim() != (matrix ? 2u : 1u))
        type_error("must be " + std::string(matrix ? "2" : "1") + "-D, got " + str((int64_t)a.ndim()) + "-D");
    const int cpu = nb::device::cpu::value, cuda = nb::device::cuda::value;
    if (!matrix && a.device_type() != cpu) type_error("must be on the CPU (a NumPy array)");
    if (matrix) {
#ifdef SLIMGPT_WITH_CUDA
        if (a.device_type() != cpu && a.device_type() != cuda) type_error("must be a CPU or CUDA array");
#else
        if (a.device_type() == cuda) type_error("is a CUDA array, but this slimgpt._core was built without CUDA");
        if (a.device_type() != cpu) type_error("must be a CPU array");
#endif
        if (device.first < 0) device = {a.device_type(), a.device_id()};
        if (device != std::make_pair(a.device_type(), a.device_id()))
            type_error("is on another device than the first array: all arrays must be on one device");
    }
    nb::ndarray<nb::ro, nb::c_contig> contiguous;
    if (!nb::try_cast(h, contiguous, false)) type_error("must be C-contiguous (np.ascontiguousarray)");
    nb::ndarray<> writable;
    if ((p.kind == Kind::OUT || p.kind == Kind::OUT64 || p.kind == Kind::OUT_VEC) && !nb::try_cast(h, writable, false))
        type_error("is read-only, but it is written in place: pass a writable array");
}

// Bind the arguments as Python would and explain the first one that no overload accepts.
[[noreturn]] static void explain(const char* fn_name, const std::vector<Param>& params, nb::args args,
                                 nb::kwargs kwargs) {
    const std::string fn = std::string(fn_name) + "(): ";
    std::vector<nb::handle> bound(params.size());
    if (args.size() > params.size())
        throw nb::type_error((fn + "takes at most " + str((int64_t)params.size()) + " arguments, got " +
                              str((int64_t)args.size())).c_str());
    for (size_t i = 0; i < args.size(); i++) bound[i] = args[i];
    for (auto [key, value] : kwargs) {
        const std::string k = nb::str(key).c_str();
        size_t i = 0;
        while (i < params.size() && k != params[i].name) i++;
        if (i == params.size()) throw nb::type_error((fn + "unexpected keyword argument '" + k + "'").c_str());
        if (bound[i]) throw nb::type_error((fn + "got multiple values for argument '" + k + "'").c_str());
        bound[i] = value;
    }
    std::pair<int, int> device{-1, -1};
    for (size_t i = 0; i < params.size(); i++) {
        if (bound[i]) explain_arg(fn, params[i], bound[i], device);
        else if (!params[i].has_default)
            throw nb::type_error((fn + "missing argument '" + params[i].name + "'").c_str());
    }
    throw nb::type_error((fn + "the arguments match no signature (see help(slimgpt._core." + fn_name + "))").c_str());
}

static auto explainer(const char* name, std::vector<Param> params) {
    return [name, params](nb::args args, nb::kwargs kwargs) { explain(name, params, args, kwargs); };
}
static const char* const EXPLAIN_DOC =
    "Any other arguments: raises TypeError (or ValueError) naming the first argument that fits no "
    "signature above.";

// ---------------------------------------------------------------------------------------

NB_MODULE(_core, m) {
    m.doc() = "slimgpt C++ core (CPU, and CUDA when built): the fast path of slimgpt.reference.\n"
              "W is updated in place; index results are NumPy int64 arrays; losses are floats.";
    m.def("has_cuda", &has_cuda, "True when built with CUDA and a CUDA device is visible.");
    // OpenBLAS always runs on one thread: the core splits its work over its own threads
    slimgpt::single_threaded_blas();
#ifdef SLIMGPT_WITH_CUDA
    m.attr("built_with_cuda") = true;
#else
    m.attr("built_with_cuda") = false;
#endif
    nb::exception<NotPositiveDefinite>(m, "NotPositiveDefiniteError", PyExc_ValueError);

    // one name per operation: the CPU overload, the CUDA one (if built), then the explainer
#ifdef SLIMGPT_WITH_CUDA
#define SLIMGPT_DEF_CUDA(name, ...) m.def(#name, &name<Cuda>, __VA_ARGS__);
#else
#define SLIMGPT_DEF_CUDA(name, ...)
#endif
#define SLIMGPT_DEF(name, params, ...)         \
    m.def(#name, &name<Cpu>, __VA_ARGS__);     \
    SLIMGPT_DEF_CUDA(name, __VA_ARGS__)        \
    m.def(#name, explainer(#name, params), EXPLAIN_DOC)

    using K = Kind;
    SLIMGPT_DEF(hessian, std::vector<Param>({{"H", K::OUT64, false}, {"X", K::IN, false}}), "H"_a.noconvert(),
                "X"_a.noconvert(),
                "H = 2 XᵀX / n written into the float64 H (d_in, d_in); X is float32 (n, d_in).");
    SLIMGPT_DEF(accumulate_hessian,
                std::vector<Param>({{"H", K::OUT64, false}, {"X", K::IN, false}, {"n_seen", K::COUNT, false}}),
                "H"_a.noconvert(), "X"_a.noconvert(), "n_seen"_a,
                "Running mean in place, float64 H: H ← H·n_seen/(n_seen+n) + 2 XᵀX/(n_seen+n).");
    SLIMGPT_DEF(prune_columns,
                std::vector<Param>({{"W", K::OUT, false},
                                    {"H", K::IN, false},
                                    {"columns", K::INDICES, false},
                                    {"percdamp", K::REAL, true},
                                    {"compensate", K::FLAG, true}}),
                "W"_a.noconvert(), "H"_a.noconvert(), "columns"_a.noconvert(), "percdamp"_a = 0.0,
                "compensate"_a = true,
                "OBS removal of a column set (Eqs. 3-4), W updated in place; returns the loss "
                "(reference.downdate.prune_columns(..., return_loss=True)).");
    SLIMGPT_DEF(head_errors,
                std::vector<Param>({{"err", K::OUT_VEC, false},
                                    {"W", K::IN, false},
                                    {"Hinv", K::IN, false},
                                    {"head_dim", K::COUNT, false},
                                    {"gcd", K::FLAG, true}}),
                "err"_a.noconvert(), "W"_a.noconvert(), "Hinv"_a.noconvert(), "head_dim"_a, "gcd"_a = true,
                "Grouped-Cholesky head errors (Eq. 5) written into err (n_heads,).");
    SLIMGPT_DEF(prune_heads,
                std::vector<Param>({{"W", K::OUT, false},
                                    {"H", K::IN, false},
                                    {"n_prune", K::COUNT, false},
                                    {"head_dim", K::COUNT, false},
                                    {"percdamp", K::REAL, true},
                                    {"gcd", K::FLAG, true},
                                    {"compensate", K::FLAG, true},
                                    {"head_groups", K::OPT_INDICES, true}}),
                "W"_a.noconvert(), "H"_a.noconvert(), "n_prune"_a, "head_dim"_a, "percdamp"_a = 0.0, "gcd"_a = true,
                "compensate"_a = true, "head_groups"_a.noconvert() = nb::none(),
                "Greedy head pruning, one head per iteration (spec §3.3), W updated in place; returns "
                "(pruned heads as sorted int64, loss).");
    SLIMGPT_DEF(prune_channels,
                std::vector<Param>({{"W", K::OUT, false},
                                    {"H", K::IN, false},
                                    {"group_sizes", K::INDICES, false},
                                    {"percdamp", K::REAL, true},
                                    {"compensate", K::FLAG, true}}),
                "W"_a.noconvert(), "H"_a.noconvert(), "group_sizes"_a.noconvert(), "percdamp"_a = 0.0,
                "compensate"_a = true,
                "DGS channel pruning with explicit group sizes (spec §4), W updated in place; returns "
                "(pruned channels as sorted int64, loss).");
#undef SLIMGPT_DEF
#undef SLIMGPT_DEF_CUDA
    m.def("get_num_threads", &slimgpt::num_threads,
          "Threads of the CPU core (default: SLIMGPT_NUM_THREADS, else the CPUs this process may use).");
    m.def("set_num_threads", &set_num_threads, "n"_a,
          "Set the threads of the CPU core (1-256). Results do not depend on it; OpenBLAS stays on one thread.");
    m.def("set_num_threads", explainer("set_num_threads", {{"n", K::COUNT, false}}), EXPLAIN_DOC);
    m.def("dgs_group_sizes", &dgs_group_sizes, "T"_a, "The published DGS schedule for T channels (spec §4.2).");
    m.def("dgs_group_sizes", explainer("dgs_group_sizes", {{"T", K::COUNT, false}}), EXPLAIN_DOC);
}
