// fedyolo's ExecuTorch kernel library: fp32 GEMM-backed `fedyolo::linear.out` and `fedyolo::mm.out`.
//
// ExecuTorch's wheel runs its `linear`/`mm` on one core at 22-25 GFLOP/s (benchmarks/README.md,
// "ExecuTorch beside ORT"); these run a BLAS sgemm on every core. The BLAS is opened at run time
// (dlopen) from the path the Python loader hands to `fedyolo_et_kernels_init`: numpy's bundled OpenBLAS
// where numpy is installed, the system's libopenblas elsewhere (Debian/Jetson: apt `libopenblas0`).
// Kernels are registered into libexecutorch.so's one registry (the one the Python bindings and every
// program load read) under the `fedyolo` namespace, so they never clash with ExecuTorch's own ops.
//
// Build: `python -m fedyolo.runtime.et_kernels build` (g++ against the executorch wheel's headers).

#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <string>

#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Kernel;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::Span;

namespace {

// CBLAS's enums: row-major 101, no-transpose 111, transpose 112.
constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;

// sgemm with 32-bit (LP64) or 64-bit (ILP64, numpy's scipy_openblas64_) integers
using Sgemm32 = void (*)(int, int, int, int32_t, int32_t, int32_t, float, const float*, int32_t,
                         const float*, int32_t, float, float*, int32_t);
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                         const float*, int64_t, float, float*, int64_t);
Sgemm32 sgemm32 = nullptr;
Sgemm64 sgemm64 = nullptr;
std::string last_error;

// C (m×n, row-major) = A·B (+ C when accumulate); A is m×k (or k×m when trans_a), B k×n (or n×k).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, const float* b,
          float* c, bool accumulate) {
  const int ta = trans_a ? kTrans : kNoTrans, tb = trans_b ? kTrans : kNoTrans;
  const int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n;
  const float beta = accumulate ? 1.0f : 0.0f;
  if (sgemm64 != nullptr) {
    sgemm64(kRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, n);
  } else {
    sgemm32(kRowMajor, ta, tb, static_cast<int32_t>(m), static_cast<int32_t>(n),
            static_cast<int32_t>(k), 1.0f, a, static_cast<int32_t>(lda), b,
            static_cast<int32_t>(ldb), beta, c, static_cast<int32_t>(n));
  }
}

bool fp32(const Tensor& t) { return t.scalar_type() == ScalarType::Float; }

bool resize(Tensor& out, Span<const executorch::aten::SizesType> sizes) {
  return executorch::runtime::resize_tensor(
             out, executorch::aten::ArrayRef<executorch::aten::SizesType>(sizes.data(), sizes.size())) ==
         Error::Ok;
}

// linear.out(Tensor input, Tensor weight, Tensor? bias=None, *, Tensor(a!) out): input [..., k],
// weight [n, k] as stored (x·Wᵀ: no transposed copy), bias [n]
void linear_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  const Tensor& x = stack[0]->toTensor();
  const Tensor& w = stack[1]->toTensor();
  const bool has_bias = !stack[2]->isNone();
  Tensor& out = stack[3]->toTensor();
  if (!fp32(x) || !fp32(w) || !fp32(out) || w.dim() != 2 || x.dim() < 1 ||
      x.size(x.dim() - 1) != w.size(1)) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const int64_t k = w.size(1), n = w.size(0), m = k == 0 ? 0 : x.numel() / k;
  executorch::aten::SizesType sizes[16];
  for (int i = 0; i < x.dim() - 1; ++i) sizes[i] = x.size(i);
  sizes[x.dim() - 1] = static_cast<executorch::aten::SizesType>(n);
  if (x.dim() > 16 || !resize(out, {sizes, static_cast<size_t>(x.dim())})) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  float* c = out.mutable_data_ptr<float>();
  if (has_bias) {
    const Tensor& bias = stack[2]->toTensor();
    if (!fp32(bias) || bias.numel() != n) {
      ctx.fail(Error::InvalidArgument);
      return;
    }
    const float* b = bias.const_data_ptr<float>();
    for (int64_t i = 0; i < m; ++i) std::memcpy(c + i * n, b, sizeof(float) * n);
  }
  gemm(false, true, m, n, k, x.const_data_ptr<float>(), w.const_data_ptr<float>(), c, has_bias);
}

// mm.out(Tensor self, Tensor mat2, *, Tensor(a!) out)
void mm_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  const Tensor& a = stack[0]->toTensor();
  const Tensor& b = stack[1]->toTensor();
  Tensor& out = stack[2]->toTensor();
  if (!fp32(a) || !fp32(b) || !fp32(out) || a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(0)) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  const executorch::aten::SizesType sizes[2] = {
      static_cast<executorch::aten::SizesType>(a.size(0)),
      static_cast<executorch::aten::SizesType>(b.size(1))};
  if (!resize(out, {sizes, 2})) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  gemm(false, false, a.size(0), b.size(1), a.size(1), a.const_data_ptr<float>(),
       b.const_data_ptr<float>(), out.mutable_data_ptr<float>(), false);
}

const Kernel kKernels[] = {
    Kernel("fedyolo::linear.out", linear_out),
    Kernel("fedyolo::mm.out", mm_out),
};

}  // namespace

extern "C" {

// Opens the BLAS at `blas_path`, sets its threads (0: leave its default) and registers the kernels
// once. Returns 0, or -1 with the reason in fedyolo_et_kernels_error().
__attribute__((visibility("default"))) int fedyolo_et_kernels_init(const char* blas_path,
                                                                    int threads) {
  static bool registered = false;
  if (registered) return 0;
  void* blas = dlopen(blas_path, RTLD_NOW | RTLD_LOCAL);
  if (blas == nullptr) {
    last_error = std::string("cannot open the BLAS: ") + dlerror();
    return -1;
  }
  for (const char* name : {"scipy_cblas_sgemm64_", "cblas_sgemm64_"}) {
    if (sgemm64 == nullptr) sgemm64 = reinterpret_cast<Sgemm64>(dlsym(blas, name));
  }
  if (sgemm64 == nullptr) sgemm32 = reinterpret_cast<Sgemm32>(dlsym(blas, "cblas_sgemm"));
  if (sgemm64 == nullptr && sgemm32 == nullptr) {
    last_error = std::string(blas_path) + " has no cblas_sgemm";
    return -1;
  }
  if (threads > 0) {
    for (const char* name : {"scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                             "openblas_set_num_threads"}) {
      if (auto set = reinterpret_cast<void (*)(int)>(dlsym(blas, name))) {
        set(threads);
        break;
      }
    }
  }
  const Error e = executorch::runtime::register_kernels({kKernels, sizeof(kKernels) / sizeof(Kernel)});
  if (e != Error::Ok) {
    last_error = "ExecuTorch refused the kernels (error " + std::to_string(static_cast<int>(e)) + ")";
    return -1;
  }
  registered = true;
  return 0;
}

__attribute__((visibility("default"))) const char* fedyolo_et_kernels_error() {
  return last_error.c_str();
}

}  // extern "C"
