// fedyolo's ExecuTorch kernel library: fp32 GEMM-backed `fedyolo::linear.out` and `fedyolo::mm.out`,
// a row-wise `fedyolo::permute.out`, and a vectorisable `fedyolo::erf.out` / `fedyolo::gelu.out`.
//
// ExecuTorch's wheel runs its `linear`/`mm` on one core at 22-25 GFLOP/s (benchmarks/README.md,
// "ExecuTorch beside ORT"); these run a BLAS sgemm on every core. The output's columns are cut into
// tiles that the calling thread and our own workers take in turn (a single-threaded sgemm per tile):
// when another process holds a core, the free thread takes the tiles the busy one cannot, where a
// BLAS's own static split waits for its slowest thread (measured: 2-thread OpenBLAS took 0.3-3 s a
// step under load, its threads spinning on each other). The BLAS is opened at run time
// (dlopen) from the path the Python loader hands to `fedyolo_et_kernels_init`: numpy's bundled OpenBLAS
// where numpy is installed, the system's libopenblas elsewhere (Debian/Jetson: apt `libopenblas0`).
// Kernels are registered into libexecutorch.so's one registry (the one the Python bindings and every
// program load read) under the `fedyolo` namespace, so they never clash with ExecuTorch's own ops.
//
// Build: `python -m fedyolo.runtime.et_kernels build` (g++ against the executorch wheel's headers).

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/event_tracer_hooks.h>
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

void sgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (sgemm64 != nullptr) {
    sgemm64(kRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  } else {
    sgemm32(kRowMajor, ta, tb, static_cast<int32_t>(m), static_cast<int32_t>(n),
            static_cast<int32_t>(k), 1.0f, a, static_cast<int32_t>(lda), b,
            static_cast<int32_t>(ldb), beta, c, static_cast<int32_t>(ldc));
  }
}

// The calling thread plus `workers`, taking tiles from one counter until none are left.
class TilePool {
 public:
  void start(int workers) {
    owner_ = getpid();
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  int size() const { return static_cast<int>(threads_.size()) + 1; }

  void run(int tiles, const std::function<void(int)>& fn) {
    if (threads_.empty() || tiles < 2 || getpid() != owner_) {  // a forked child has no workers
      for (int t = 0; t < tiles; ++t) fn(t);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      tiles_ = tiles;
      next_.store(0);
      active_ = static_cast<int>(threads_.size());
      ++generation_;
    }
    wake_.notify_all();
    take(fn, tiles);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return active_ == 0; });
  }

 private:
  void take(const std::function<void(int)>& fn, int tiles) {
    for (int t = next_.fetch_add(1); t < tiles; t = next_.fetch_add(1)) fn(t);
  }
  void work() {
    single_threaded_blas();
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* fn;
      int tiles;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        fn = fn_;
        tiles = tiles_;
      }
      take(*fn, tiles);
      std::lock_guard<std::mutex> lock(mu_);
      if (--active_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  pid_t owner_ = 0;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  int tiles_ = 0, active_ = 0;
  uint64_t generation_ = 0;
  std::atomic<int> next_{0};

 public:
  static void single_threaded_blas();
};

using SetThreadsLocal = int (*)(int);
SetThreadsLocal set_threads_local = nullptr;  // OpenBLAS >= 0.3.27: the calling thread's BLAS threads
void (*set_threads)(int) = nullptr;           // older: the process's
TilePool* pool = nullptr;                     // never freed: workers live as long as the process

void TilePool::single_threaded_blas() {
  if (set_threads_local != nullptr) set_threads_local(1);
}

// A tile: all rows and ~128 output columns, the count rounded up to a multiple of the threads so
// that none waits on the last tile of another (MiniLM, 2 threads: N = 384 → 4 tiles of 96).
constexpr int64_t kTileColumns = 128;

// C (m×n, row-major) = A·B (+ C when accumulate); A is m×k, B is k×n (or n×k when trans_b).
void gemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c,
          bool accumulate) {
  const float beta = accumulate ? 1.0f : 0.0f;
  const int64_t threads = pool->size();
  const int64_t want = ((n + kTileColumns - 1) / kTileColumns + threads - 1) / threads * threads;
  const int64_t width = std::max<int64_t>(16, ((n + want - 1) / want + 15) / 16 * 16);
  const int tiles = static_cast<int>((n + width - 1) / width);
  const int previous = set_threads_local != nullptr ? set_threads_local(1) : 0;
  pool->run(tiles, [&](int t) {
    const int64_t j = t * width, w = std::min(width, n - j);
    const float* bt = trans_b ? b + j * k : b + j;
    sgemm(kNoTrans, trans_b ? kTrans : kNoTrans, m, w, k, a, k, bt, trans_b ? k : n, beta, c + j, n);
  });
  if (set_threads_local != nullptr) set_threads_local(previous);
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
  executorch::runtime::internal::EventTracerProfileOpScope scope(ctx.internal_event_tracer(),
                                                                  "fedyolo::linear.out");
  gemm(true, m, n, k, x.const_data_ptr<float>(), w.const_data_ptr<float>(), c, has_bias);
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
  executorch::runtime::internal::EventTracerProfileOpScope scope(ctx.internal_event_tracer(),
                                                                  "fedyolo::mm.out");
  gemm(false, a.size(0), b.size(1), a.size(1), a.const_data_ptr<float>(), b.const_data_ptr<float>(),
       out.mutable_data_ptr<float>(), false);
}

// permute.out(Tensor self, int[] dims, *, Tensor(a!) out): a contiguous copy in the permuted order.
// ExecuTorch's portable permute_copy computes every element's index (~7 ns an element, 10% of the
// MiniLM step); here the output's last dimension is one strided run per row (a memcpy when it stays
// last), the rest an odometer.
template <typename T>
void permute_rows(const T* in, T* out, int nd, const int64_t* sizes, const int64_t* strides) {
  const int64_t inner = sizes[nd - 1], step = strides[nd - 1];
  int64_t rows = 1;
  for (int i = 0; i < nd - 1; ++i) rows *= sizes[i];
  int64_t index[16] = {0};
  int64_t offset = 0;
  for (int64_t r = 0; r < rows; ++r, out += inner) {
    if (step == 1) {
      std::memcpy(out, in + offset, sizeof(T) * inner);
    } else {
      const T* src = in + offset;
      for (int64_t t = 0; t < inner; ++t) out[t] = src[t * step];
    }
    for (int i = nd - 2; i >= 0; --i) {  // next row: advance the odometer
      offset += strides[i];
      if (++index[i] < sizes[i]) break;
      offset -= strides[i] * sizes[i];
      index[i] = 0;
    }
  }
}

void permute_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  const Tensor& in = stack[0]->toTensor();
  const auto dims = stack[1]->toIntList();
  Tensor& out = stack[2]->toTensor();
  const int nd = static_cast<int>(in.dim());
  if (nd < 1 || nd > 16 || static_cast<int>(dims.size()) != nd || in.scalar_type() != out.scalar_type()) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  int64_t contiguous[16], sizes[16], strides[16];
  executorch::aten::SizesType out_sizes[16];
  for (int i = nd - 1, s = 1; i >= 0; s *= static_cast<int>(in.size(i)), --i) contiguous[i] = s;
  for (int i = 0; i < nd; ++i) {
    const int64_t d = dims[i] < 0 ? dims[i] + nd : dims[i];
    if (d < 0 || d >= nd || in.strides()[i] != contiguous[i]) {  // a non-default dim order: not ours
      ctx.fail(Error::InvalidArgument);
      return;
    }
    sizes[i] = in.size(d);
    strides[i] = contiguous[d];
    out_sizes[i] = static_cast<executorch::aten::SizesType>(sizes[i]);
  }
  if (!resize(out, {out_sizes, static_cast<size_t>(nd)})) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  executorch::runtime::internal::EventTracerProfileOpScope scope(ctx.internal_event_tracer(),
                                                                  "fedyolo::permute.out");
  if (in.numel() == 0) return;
  switch (in.element_size()) {
    case 4:
      permute_rows(in.const_data_ptr<int32_t>(), out.mutable_data_ptr<int32_t>(), nd, sizes, strides);
      break;
    case 8:
      permute_rows(in.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), nd, sizes, strides);
      break;
    case 2:
      permute_rows(in.const_data_ptr<int16_t>(), out.mutable_data_ptr<int16_t>(), nd, sizes, strides);
      break;
    case 1:
      permute_rows(in.const_data_ptr<int8_t>(), out.mutable_data_ptr<int8_t>(), nd, sizes, strides);
      break;
    default:
      ctx.fail(Error::InvalidArgument);
  }
}

// erf as a ratio of two polynomials in x² over [-4, 4] (±1 beyond, where fp32 erf is ±1): max error
// 4.2e-7 against math.erf over [-6, 6], pure arithmetic, so the compiler vectorises the loop. The
// portable erf and gelu took ~13-15 ns an element (68 ms of the MiniLM step).
inline float fast_erf(float x) {
  x = std::min(4.0f, std::max(-4.0f, x));
  const float x2 = x * x;
  float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = x2 * p + -2.10102402082508e-06f;
  p = x2 * p + -5.69250639462346e-05f;
  p = x2 * p + -7.34990630326855e-04f;
  p = x2 * p + -2.95459980854025e-03f;
  p = x2 * p + -1.60960333262415e-02f;
  float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = x2 * q + -1.68282697438203e-03f;
  q = x2 * q + -7.37332916720468e-03f;
  q = x2 * q + -1.42647390514189e-02f;
  return x * p / q;
}

// erf.out(Tensor self, *, Tensor(a!) out) and gelu.out(Tensor self, *, Tensor(a!) out) (the erf GELU)
template <bool kGelu>
void elementwise_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  const Tensor& in = stack[0]->toTensor();
  Tensor& out = stack[1]->toTensor();
  if (!fp32(in) || !fp32(out) ||
      executorch::runtime::resize_tensor(out, in.sizes()) != Error::Ok) {
    ctx.fail(Error::InvalidArgument);
    return;
  }
  executorch::runtime::internal::EventTracerProfileOpScope scope(
      ctx.internal_event_tracer(), kGelu ? "fedyolo::gelu.out" : "fedyolo::erf.out");
  const float* x = in.const_data_ptr<float>();
  float* y = out.mutable_data_ptr<float>();
  const int64_t n = in.numel();
  for (int64_t i = 0; i < n; ++i) {
    y[i] = kGelu ? 0.5f * x[i] * (1.0f + fast_erf(x[i] * 0.70710678118654752f)) : fast_erf(x[i]);
  }
}

const Kernel kKernels[] = {
    Kernel("fedyolo::linear.out", linear_out),
    Kernel("fedyolo::mm.out", mm_out),
    Kernel("fedyolo::permute.out", permute_out),
    Kernel("fedyolo::erf.out", elementwise_out<false>),
    Kernel("fedyolo::gelu.out", elementwise_out<true>),
};

}  // namespace

extern "C" {

// Opens the BLAS at `blas_path`, starts `threads` - 1 workers (0: one thread per core) and registers
// the kernels once. Returns 0, or -1 with the reason in fedyolo_et_kernels_error().
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
  set_threads_local = reinterpret_cast<SetThreadsLocal>(dlsym(blas, "openblas_set_num_threads_local"));
  if (set_threads_local == nullptr) {
    // no per-thread setting: the whole BLAS single-threaded, our tiles give the parallelism
    for (const char* name : {"scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                             "openblas_set_num_threads"}) {
      if (set_threads == nullptr) set_threads = reinterpret_cast<void (*)(int)>(dlsym(blas, name));
    }
    if (set_threads != nullptr) set_threads(1);
  }
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  pool = new TilePool();
  pool->start((threads > 0 ? threads : (cores > 0 ? cores : 1)) - 1);
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
