// fedyolo's ExecuTorch runner: a small C ABI over ExecuTorch's C++ `Module`, for ctypes.
//
// ExecuTorch's Python bindings link libtorch and take torch tensors: loading them costs ~190 MB of RSS
// before any program is (benchmarks/README.md, "ExecuTorch beside ORT"). This library links only
// libexecutorch.so (the C++ runtime: Program, Method, Module, the data loaders, FlatTensorDataMap) and
// libexecutorch_kernels_optimized.so (registers the optimized and portable kernels when loaded), as a
// phone's C++/Java runtime does. Inputs come in as (data pointer, dtype, shape) and are wrapped, not
// copied; outputs go back as (dtype, shape, data pointer) into the method's own memory, also not copied:
// the trainer writes its optimiser's updates into the parameter outputs in place. A failure comes back
// as a message naming the ExecuTorch error, the method and the input, never as an abort.
//
// Build: `python -m fedyolo.runtime.et_program build` (g++ against the executorch wheel's headers).

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>
#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/executor/method_meta.h>
#include <executorch/runtime/platform/platform.h>

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {

constexpr int kMaxDims = 16;  // ExecuTorch's kTensorDimensionLimit

// What one output is, for the caller (mirrored by `_Value` in runtime/et_program.py).
enum Kind : int32_t { kNone = 0, kTensor = 1, kInt = 2, kDouble = 3, kBool = 4, kString = 5, kOther = 6 };

struct Value {
  int32_t kind;
  int32_t dtype;  // ExecuTorch's ScalarType code (tensors)
  int32_t ndim;
  int32_t pad;
  int64_t shape[kMaxDims];
  void* data;      // tensors: the method's memory; strings: the characters (not NUL-terminated)
  int64_t length;  // strings: bytes; tensors: bytes of data
  int64_t integer; // ints and bools
  double number;   // doubles
};

struct Program {
  std::unique_ptr<Module> module;
  std::vector<EValue> outputs;  // of the last run: valid until the next run of any method
};

thread_local std::string last_error;
// ExecuTorch's first error log line since the call began: the cause behind its bare error code
thread_local std::string first_log;

// ExecuTorch's log sink while this library is loaded: its error lines become part of our messages (a
// fatal one is printed too, it aborts); info lines (CPU probing at each program load) are dropped.
void on_log(et_timestamp_t, et_pal_log_level_t level, const char*, const char*, size_t,
            const char* message, size_t length) {
  if (level == kFatal) std::fprintf(stderr, "ExecuTorch: %.*s\n", static_cast<int>(length), message);
  if ((level == kError || level == kFatal) && first_log.empty()) {
    first_log.assign(message, length);
    while (!first_log.empty() && (first_log.back() == '\n' || first_log.back() == '.')) first_log.pop_back();
  }
}

void begin_call() {
  static std::once_flag once;
  std::call_once(once, [] {
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(on_log, __FILE__));
  });
  first_log.clear();
}

// "ExecuTorch Error::NotSupported (0x10) <doing what>: <ExecuTorch's own log line>"
std::string describe(Error e, const std::string& doing) {
  char code[16];
  std::snprintf(code, sizeof code, "0x%x", static_cast<unsigned>(e));
  std::string text = std::string("ExecuTorch ") + executorch::runtime::to_string(e) + " (" + code + ") " + doing;
  return first_log.empty() ? text : text + ": " + first_log;
}

const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    case ScalarType::Bool: return "bool";
    case ScalarType::Double: return "float64";
    default: return "another dtype";
  }
}

std::string shape_text(const int64_t* shape, int ndim) {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// What the program plans for input `index` of `method`, for an error message.
std::string expected_input(Module& module, const std::string& method, size_t index) {
  auto meta = module.method_meta(method);
  if (!meta.ok()) return "";
  auto info = meta->input_tensor_meta(index);
  if (!info.ok()) return "";
  std::vector<int64_t> sizes(info->sizes().begin(), info->sizes().end());
  return std::string("; the program plans ") + dtype_name(info->scalar_type()) + " " +
         shape_text(sizes.data(), static_cast<int>(sizes.size())) + " (a dynamic dim may be smaller)";
}

void fill(const EValue& v, Value* out) {
  *out = Value{};
  if (v.isTensor()) {
    const auto& t = v.toTensor();
    out->kind = kTensor;
    out->dtype = static_cast<int32_t>(t.scalar_type());
    out->ndim = static_cast<int32_t>(t.dim());
    for (ssize_t d = 0; d < t.dim() && d < kMaxDims; ++d) out->shape[d] = t.size(d);
    out->data = t.mutable_data_ptr();
    out->length = static_cast<int64_t>(t.nbytes());
  } else if (v.isInt()) {
    out->kind = kInt;
    out->integer = v.toInt();
  } else if (v.isDouble()) {
    out->kind = kDouble;
    out->number = v.toDouble();
  } else if (v.isBool()) {
    out->kind = kBool;
    out->integer = v.toBool() ? 1 : 0;
  } else if (v.isString()) {
    auto s = v.toString();
    out->kind = kString;
    out->data = const_cast<char*>(s.data());
    out->length = static_cast<int64_t>(s.size());
  } else {
    out->kind = v.isNone() ? kNone : kOther;
  }
}

}  // namespace

extern "C" {

#define FEDYOLO_API __attribute__((visibility("default")))

// The message of the last failure on this thread.
FEDYOLO_API const char* fedyolo_et_error() { return last_error.c_str(); }

// Opens `program` (a .pte) with its named data in `data` (a .ptd; NULL or "" for none), both memory
// mapped, and checks the program's header. Returns a handle, or NULL with the reason in fedyolo_et_error().
FEDYOLO_API void* fedyolo_et_open(const char* program, const char* data) {
  begin_call();
  try {
    auto p = std::make_unique<Program>();
    const std::string data_path = data ? data : "";
    p->module = std::make_unique<Module>(program, data_path, Module::LoadMode::Mmap);
    const Error e = p->module->load();
    if (e != Error::Ok) {
      last_error = describe(e, std::string("loading ") + program + (data_path.empty() ? "" : " with " + data_path));
      return nullptr;
    }
    return p.release();
  } catch (const std::exception& ex) {
    last_error = std::string("opening ") + program + ": " + ex.what();
    return nullptr;
  }
}

FEDYOLO_API void fedyolo_et_close(void* handle) { delete static_cast<Program*>(handle); }

// Loads `method` now (planned memory, kernels, data), so a missing operator or tensor is found at open
// time rather than at the first step. Returns 0, or -1 with the reason.
FEDYOLO_API int fedyolo_et_load_method(void* handle, const char* method) {
  begin_call();
  auto* p = static_cast<Program*>(handle);
  const Error e = p->module->load_method(method);
  if (e != Error::Ok) {
    last_error = describe(e, std::string("loading method '") + method + "'");
    return -1;
  }
  return 0;
}

// Runs `method` on `n` tensor inputs: input i has dtype `dtypes[i]` (ExecuTorch ScalarType code), `ndims[i]`
// dims taken in turn from `shapes`, and its data at `data[i]` (read during the call only; the method
// copies it into its planned input memory, resizing a dynamic dim to the size given). Returns the number
// of outputs (read them with fedyolo_et_outputs), or -1 with the reason.
FEDYOLO_API int fedyolo_et_run(void* handle, const char* method, int n, const int32_t* dtypes,
                               const int32_t* ndims, const int64_t* shapes, void* const* data) {
  begin_call();
  auto* p = static_cast<Program*>(handle);
  Module& module = *p->module;
  try {
    p->outputs.clear();
    auto meta = module.method_meta(method);
    if (!meta.ok()) {
      last_error = describe(meta.error(), std::string("looking up method '") + method + "'");
      return -1;
    }
    if (meta->num_inputs() != static_cast<size_t>(n)) {
      last_error = "method '" + std::string(method) + "' takes " + std::to_string(meta->num_inputs()) +
                   " inputs, not " + std::to_string(n);
      return -1;
    }
    std::vector<TensorPtr> inputs;  // alive until the method has run
    inputs.reserve(n);
    const int64_t* shape = shapes;
    for (int i = 0; i < n; ++i) {
      if (ndims[i] < 0 || ndims[i] > kMaxDims) {
        last_error = "input " + std::to_string(i) + " of method '" + method + "' has " +
                     std::to_string(ndims[i]) + " dims; ExecuTorch takes at most 16";
        return -1;
      }
      std::vector<SizesType> sizes(shape, shape + ndims[i]);
      const auto dtype = static_cast<ScalarType>(dtypes[i]);
      inputs.push_back(executorch::extension::from_blob(data[i], std::move(sizes), dtype));
      const Error e = module.set_input(method, EValue(inputs.back()), i);
      if (e != Error::Ok) {
        last_error = describe(e, "setting input " + std::to_string(i) + " (" + dtype_name(dtype) + " " +
                                     shape_text(shape, ndims[i]) + ") of method '" + method + "'") +
                     expected_input(module, method, i);
        return -1;
      }
      shape += ndims[i];
    }
    auto out = module.execute(method, std::vector<EValue>{});
    if (!out.ok()) {
      last_error = describe(out.error(), std::string("running method '") + method + "'");
      return -1;
    }
    p->outputs = std::move(*out);
    return static_cast<int>(p->outputs.size());
  } catch (const std::exception& ex) {
    last_error = std::string("running method '") + method + "': " + ex.what();
    return -1;
  }
}

// The last run's outputs, the first `n` of them into `out`; returns how many were written.
FEDYOLO_API int fedyolo_et_outputs(void* handle, Value* out, int n) {
  auto* p = static_cast<Program*>(handle);
  const int count = std::min(n, static_cast<int>(p->outputs.size()));
  for (int i = 0; i < count; ++i) fill(p->outputs[i], &out[i]);
  return count;
}

}  // extern "C"
