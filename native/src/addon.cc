// N-API bindings. Arguments are validated by the TypeScript wrapper (src/backend/native) before
// they get here; this layer still checks argument types so a wrong call throws instead of crashing,
// and turns every C++ exception into a JavaScript Error that names the op (see Dispatch).
#include <napi.h>

#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

#include "errors.h"
#include "gemm.h"
#include "kernels.h"
#include "quant.h"
#include "threadpool.h"

namespace ak = adaptkit;

namespace {

template <class T>
T* typed(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, bool nullable = false) {
  const Napi::Value v = info[i];
  if (nullable && (v.IsNull() || v.IsUndefined())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a " +
                                               (type == napi_float32_array ? "Float32Array" : "Int32Array"));
  }
  auto ta = v.As<Napi::TypedArray>();
  return reinterpret_cast<T*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
}

float* F(const Napi::CallbackInfo& info, size_t i, bool nullable = false) {
  return typed<float>(info, i, napi_float32_array, nullable);
}
int32_t* I(const Napi::CallbackInfo& info, size_t i) { return typed<int32_t>(info, i, napi_int32_array); }

// A Float32Array or an Int32Array (4-byte elements).
void* Any4(const Napi::CallbackInfo& info, size_t i) {
  const Napi::Value v = info[i];
  if (v.IsTypedArray()) {
    auto t = v.As<Napi::TypedArray>().TypedArrayType();
    if (t == napi_float32_array) return F(info, i);
    if (t == napi_int32_array) return I(info, i);
  }
  throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a Float32Array or Int32Array");
}

int64_t N(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number");
  return info[i].As<Napi::Number>().Int64Value();
}
double D(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}
bool B(const Napi::CallbackInfo& info, size_t i) { return info[i].ToBoolean().Value(); }

// meta: Float64Array [nd, shape..., (offset, strides...) per view]
struct Meta {
  int nd;
  int64_t shape[ak::kMaxDims];
};
Meta read_meta(const Napi::CallbackInfo& info, size_t i, int nviews, ak::Strided* views) {
  auto v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    throw Napi::TypeError::New(info.Env(), "meta must be a Float64Array");
  auto ta = v.As<Napi::Float64Array>();
  const double* m = ta.Data();
  Meta meta;
  meta.nd = static_cast<int>(m[0]);
  if (meta.nd < 0 || meta.nd > ak::kMaxDims || ta.ElementLength() != static_cast<size_t>(1 + meta.nd + nviews * (1 + meta.nd)))
    throw Napi::RangeError::New(info.Env(), "meta has the wrong length (at most 16 dims)");
  for (int d = 0; d < meta.nd; d++) meta.shape[d] = static_cast<int64_t>(m[1 + d]);
  for (int vi = 0; vi < nviews; vi++) {
    const double* p = m + 1 + meta.nd + vi * (1 + meta.nd);
    views[vi].offset = static_cast<int64_t>(p[0]);
    for (int d = 0; d < meta.nd; d++) views[vi].strides[d] = static_cast<int64_t>(p[1 + d]);
  }
  return meta;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  auto o = Napi::Object::New(info.Env());
  o.Set("kernel", ak::gemm_kernel_name());
  o.Set("threads", ak::ThreadPool::instance().threads());
  o.Set("maxThreads", ak::ThreadPool::max_threads());
  return o;
}

// A thread count in [1, max_threads()], or a RangeError naming the value and the range.
int thread_count(const Napi::CallbackInfo& info, size_t i) {
  const int max = ak::ThreadPool::max_threads();
  const double n = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : NAN;
  if (!(n >= 1 && n <= max && n == std::floor(n)))
    throw Napi::RangeError::New(info.Env(), "thread count must be an integer in [1, " + std::to_string(max) +
                                                "], got " + info[i].ToString().Utf8Value());
  return static_cast<int>(n);
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  const int n = thread_count(info, 0);
  ak::ThreadPool& pool = ak::ThreadPool::instance();
  try {
    pool.set_threads(n);
  } catch (const std::bad_alloc&) {
    throw ak::KernelError("cannot start " + std::to_string(n) + " threads (out of memory); " +
                          std::to_string(pool.threads()) + " running");
  } catch (const std::exception& e) {
    throw ak::KernelError("cannot start " + std::to_string(n) + " threads (" + e.what() + "); " +
                          std::to_string(pool.threads()) + " running");
  }
  return info.Env().Undefined();
}

Napi::Value SetGemmKernel(const Napi::CallbackInfo& info) {
  const std::string name = info[0].ToString().Utf8Value();
  return Napi::Boolean::New(info.Env(), ak::gemm_set_kernel(name.c_str()));
}

Napi::Value FmaPeak(const Napi::CallbackInfo& info) {
  const int threads = thread_count(info, 0);
  const double seconds = D(info, 1);
  // the calibration scales an iteration count by this, so it must be a sane, finite duration
  if (!(seconds > 0 && seconds <= 60))
    throw Napi::RangeError::New(info.Env(), "seconds must be in (0, 60], got " + info[1].ToString().Utf8Value());
  return Napi::Number::New(info.Env(), ak::fma_peak_gflops(threads, seconds));
}

Napi::Value Unary(const Napi::CallbackInfo& info) {
  auto x = info[1].As<Napi::TypedArray>();
  ak::unary(static_cast<int>(N(info, 0)), F(info, 1), F(info, 2), static_cast<int64_t>(x.ElementLength()));
  return info.Env().Undefined();
}

Napi::Value UnaryBackward(const Napi::CallbackInfo& info) {
  auto x = info[1].As<Napi::TypedArray>();
  ak::unary_backward(static_cast<int>(N(info, 0)), F(info, 1), F(info, 2), F(info, 3), F(info, 4),
                     static_cast<int64_t>(x.ElementLength()));
  return info.Env().Undefined();
}

// binary(op, meta, a, b, out)
Napi::Value Binary(const Napi::CallbackInfo& info) {
  ak::Strided v[2];
  Meta m = read_meta(info, 1, 2, v);
  v[0].data = F(info, 2);
  v[1].data = F(info, 3);
  ak::binary(static_cast<int>(N(info, 0)), m.nd, m.shape, v[0], v[1], F(info, 4));
  return info.Env().Undefined();
}

// where(meta, cond, a, b, out)
Napi::Value Where(const Napi::CallbackInfo& info) {
  ak::Strided v[3];
  Meta m = read_meta(info, 0, 3, v);
  v[0].data = F(info, 1);
  v[1].data = F(info, 2);
  v[2].data = F(info, 3);
  ak::where(m.nd, m.shape, v[0], v[1], v[2], F(info, 4));
  return info.Env().Undefined();
}

// copy(meta, src, dst)
Napi::Value Copy(const Napi::CallbackInfo& info) {
  ak::Strided v[2];
  Meta m = read_meta(info, 0, 2, v);
  v[0].data = Any4(info, 1);
  v[1].data = Any4(info, 2);
  ak::copy4(m.nd, m.shape, v[0], v[1]);
  return info.Env().Undefined();
}

Napi::Value Reduce(const Napi::CallbackInfo& info) {
  const bool is_max = B(info, 0);
  (is_max ? ak::reduce_max : ak::reduce_sum)(F(info, 1), N(info, 2), N(info, 3), N(info, 4), F(info, 5));
  return info.Env().Undefined();
}

// matmul(a, b, out, batch, m, n, k, lda, ldb, transA, transB, strideA, strideB, accumulate)
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  ak::GemmArgs g;
  g.a = F(info, 0);
  g.b = F(info, 1);
  g.c = F(info, 2);
  const int64_t batch = N(info, 3);
  g.m = N(info, 4);
  g.n = N(info, 5);
  g.k = N(info, 6);
  g.lda = N(info, 7);
  g.ldb = N(info, 8);
  g.trans_a = B(info, 9);
  g.trans_b = B(info, 10);
  g.accumulate = B(info, 13);
  ak::sgemm_batched(g, batch, N(info, 11), N(info, 12), g.m * g.n);
  return info.Env().Undefined();
}

Napi::Value IndexSelect(const Napi::CallbackInfo& info) {
  auto idx = info[4].As<Napi::TypedArray>();
  ak::index_select4(Any4(info, 0), N(info, 1), N(info, 2), N(info, 3), I(info, 4),
                    static_cast<int64_t>(idx.ElementLength()), Any4(info, 5));
  return info.Env().Undefined();
}

Napi::Value IndexAdd(const Napi::CallbackInfo& info) {
  auto idx = info[4].As<Napi::TypedArray>();
  ak::index_add(F(info, 0), N(info, 1), N(info, 2), N(info, 3), I(info, 4), static_cast<int64_t>(idx.ElementLength()),
                F(info, 5));
  return info.Env().Undefined();
}

Napi::Value Softmax(const Napi::CallbackInfo& info) {
  ak::softmax(F(info, 0), N(info, 1), N(info, 2), F(info, 3), B(info, 4));
  return info.Env().Undefined();
}

Napi::Value SoftmaxBackward(const Napi::CallbackInfo& info) {
  ak::softmax_backward(F(info, 0), F(info, 1), N(info, 2), N(info, 3), F(info, 4), B(info, 5));
  return info.Env().Undefined();
}

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  ak::rmsnorm(F(info, 0), F(info, 1), N(info, 2), N(info, 3), static_cast<float>(D(info, 4)), F(info, 5), F(info, 6));
  return info.Env().Undefined();
}

Napi::Value RmsNormBackward(const Napi::CallbackInfo& info) {
  ak::rmsnorm_backward(F(info, 0), F(info, 1), F(info, 2), F(info, 3), N(info, 4), N(info, 5), F(info, 6, true),
                       F(info, 7, true));
  return info.Env().Undefined();
}

Napi::Value LayerNorm(const Napi::CallbackInfo& info) {
  ak::layernorm(F(info, 0), F(info, 1), F(info, 2), N(info, 3), N(info, 4), static_cast<float>(D(info, 5)), F(info, 6),
                F(info, 7), F(info, 8));
  return info.Env().Undefined();
}

Napi::Value LayerNormBackward(const Napi::CallbackInfo& info) {
  ak::layernorm_backward(F(info, 0), F(info, 1), F(info, 2), F(info, 3), F(info, 4), N(info, 5), N(info, 6),
                         F(info, 7, true), F(info, 8, true), F(info, 9, true));
  return info.Env().Undefined();
}

Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  ak::cross_entropy(F(info, 0), I(info, 1), N(info, 2), N(info, 3), static_cast<int32_t>(N(info, 4)), F(info, 5),
                    F(info, 6));
  return info.Env().Undefined();
}

Napi::Value CrossEntropyBackward(const Napi::CallbackInfo& info) {
  ak::cross_entropy_backward(F(info, 0), I(info, 1), F(info, 2), N(info, 3), N(info, 4),
                             static_cast<int32_t>(N(info, 5)), F(info, 6), F(info, 7));
  return info.Env().Undefined();
}

// attention(q, k, v, batch, heads, kvHeads, tq, tk, dim, scale, causal, mask, out, lse
//           [, gradOut, dq, dk, dv])
ak::Attention read_attention(const Napi::CallbackInfo& info, bool backward) {
  ak::Attention a{};
  a.q = F(info, 0);
  a.k = F(info, 1);
  a.v = F(info, 2);
  a.batch = N(info, 3);
  a.heads = N(info, 4);
  a.kv_heads = N(info, 5);
  a.tq = N(info, 6);
  a.tk = N(info, 7);
  a.dim = N(info, 8);
  a.scale = static_cast<float>(D(info, 9));
  a.causal = B(info, 10);
  a.key_mask = F(info, 11, true);
  a.out = F(info, 12);
  a.lse = F(info, 13);
  if (backward) {
    a.grad_out = F(info, 14);
    a.dq = F(info, 15);
    a.dk = F(info, 16);
    a.dv = F(info, 17);
  }
  return a;
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  ak::attention(read_attention(info, false));
  return info.Env().Undefined();
}

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  ak::attention_backward(read_attention(info, true));
  return info.Env().Undefined();
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  ak::rope(F(info, 0), F(info, 1), F(info, 2), N(info, 3), N(info, 4), N(info, 5), F(info, 6), B(info, 7));
  return info.Env().Undefined();
}

// quantMatmul(kind, data: Uint8Array, n, k, absmax: Float32Array | null, code: Float32Array | null,
//             blocksize, x, m, out, transpose)
Napi::Value QuantMatmul(const Napi::CallbackInfo& info) {
  const Napi::Value d = info[1];
  if (!d.IsTypedArray() || d.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(info.Env(), "argument 1 must be a Uint8Array");
  auto bytes = d.As<Napi::Uint8Array>();
  ak::QuantWeight w{};
  w.kind = static_cast<ak::QuantKind>(N(info, 0));
  w.data = bytes.Data();
  w.n = N(info, 2);
  w.k = N(info, 3);
  w.absmax = F(info, 4, true);
  w.code = F(info, 5, true);
  w.blocksize = N(info, 6);
  ak::quant_matmul(w, F(info, 7), N(info, 8), F(info, 9), B(info, 10));
  return info.Env().Undefined();
}

using BindingFn = Napi::Value (*)(const Napi::CallbackInfo&);
struct Binding {
  const char* name;
  BindingFn fn;
};

const Binding kBindings[] = {
    {"info", Info},
    {"setThreads", SetThreads},
    {"setGemmKernel", SetGemmKernel},
    {"fmaPeak", FmaPeak},
    {"unary", Unary},
    {"unaryBackward", UnaryBackward},
    {"binary", Binary},
    {"where", Where},
    {"copy", Copy},
    {"reduce", Reduce},
    {"matmul", Matmul},
    {"indexSelect", IndexSelect},
    {"indexAdd", IndexAdd},
    {"softmax", Softmax},
    {"softmaxBackward", SoftmaxBackward},
    {"rmsnorm", RmsNorm},
    {"rmsnormBackward", RmsNormBackward},
    {"layernorm", LayerNorm},
    {"layernormBackward", LayerNormBackward},
    {"crossEntropy", CrossEntropy},
    {"crossEntropyBackward", CrossEntropyBackward},
    {"attention", Attention},
    {"attentionBackward", AttentionBackward},
    {"rope", Rope},
    {"quantMatmul", QuantMatmul},
};

// node-addon-api turns only Napi::Error into a JavaScript exception; any other C++ exception
// crossing back into V8 aborts the process. One try per call, outside every kernel loop.
Napi::Value Dispatch(const Napi::CallbackInfo& info) {
  const Binding& b = *static_cast<const Binding*>(info.Data());
  const auto error = [&](const std::string& message) {
    return Napi::Error::New(info.Env(), std::string(b.name) + ": " + message);
  };
  try {
    return b.fn(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const ak::KernelError& e) {
    throw error(e.what());
  } catch (const std::bad_alloc&) {
    throw error("cannot allocate working memory (out of memory)");
  } catch (const std::length_error& e) {
    throw error(std::string("a buffer size is too large (") + e.what() + ")");
  } catch (const std::system_error& e) {
    throw error(std::string("system error: ") + e.what());
  } catch (const std::exception& e) {
    throw error(std::string("internal error: ") + e.what());
  } catch (...) {
    throw error("unknown internal error");
  }
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  for (const Binding& b : kBindings)
    exports.Set(b.name, Napi::Function::New<Dispatch>(env, b.name, const_cast<Binding*>(&b)));
  return exports;
}

}  // namespace

NODE_API_MODULE(adaptkit_native, Init)
