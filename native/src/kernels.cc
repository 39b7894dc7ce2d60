// Hot elementwise, reduction, normalization, loss and attention kernels. Loops are written so the
// compiler vectorizes them; on x86-64 Linux each hot loop is cloned for AVX-512, AVX2 and the
// baseline, and the loader picks the best clone for the CPU at run time.
#include "kernels.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "errors.h"
#include "gemm.h"
#include "threadpool.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define AK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AK_CLONES
#endif

namespace adaptkit {

namespace {

ThreadPool& pool() { return ThreadPool::instance(); }

constexpr int64_t kMaxChunks = 16;

// Number of chunks parallel_range splits [0, n) into. It does not depend on the thread count, so
// chunked reductions give the same bits however many threads run them.
int64_t chunk_count(int64_t n, int64_t grain) {
  const int64_t c = (n + grain - 1) / std::max<int64_t>(grain, 1);
  return std::max<int64_t>(1, std::min<int64_t>(c, kMaxChunks));
}

// Split [0, n) into chunks of at least `grain` items over the pool. f(lo, hi, chunk): the chunk
// index (not the thread) identifies the work, so per-chunk partial results combine in a fixed
// order and results do not depend on scheduling.
template <class F>
void parallel_range(int64_t n, int64_t grain, F&& f) {
  const int64_t chunks = chunk_count(n, grain);
  const int64_t per = (n + chunks - 1) / chunks;
  auto run = [&](int c, int) {
    const int64_t lo = c * per, hi = std::min(n, lo + per);
    if (lo < hi) f(lo, hi, c);
  };
  if (chunks <= 1) f(0, n, 0);
  else pool().parallel_for(static_cast<int>(chunks), run);
}

inline float bits_to_float(int32_t b) {
  float f;
  __builtin_memcpy(&f, &b, 4);
  return f;
}

// exp with about 1 ulp error (Cephes polynomial), vectorizable: no calls, no branches.
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float r = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float f = x - r * 0.693359375f;
  f = f - r * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * f + 1.3981999507e-3f;
  y = y * f + 8.3334519073e-3f;
  y = y * f + 4.1665795894e-2f;
  y = y * f + 1.6666665459e-1f;
  y = y * f + 5.0000001201e-1f;
  y = y * f * f + f + 1.0f;
  return y * bits_to_float((static_cast<int32_t>(r) + 127) << 23);
}

inline float fast_tanh(float x) {
  const float ax = x < 0 ? -x : x;
  const float t = fast_exp(-2.0f * ax);
  float r = (1.0f - t) / (1.0f + t);
  r = ax < 4e-4f ? ax : r;
  return x < 0 ? -r : r;
}

inline float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// erf via Numerical Recipes' erfc Chebyshev fit (|error| < 1.2e-7), same formula as the js backend.
inline float fast_erf(float x) {
  const float z = x < 0 ? -x : x;
  const float t = 1.0f / (1.0f + 0.5f * z);
  const float p =
      -z * z - 1.26551223f +
      t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f + t * (0.27886807f +
      t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  const float r = t * fast_exp(p);
  return x >= 0 ? 1.0f - r : r - 1.0f;
}

constexpr float kSqrt1_2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
constexpr float kGeluC = 0.7978845608028654f;
constexpr float kGeluA = 0.044715f;

AK_CLONES void unary_range(int op, const float* __restrict x, float* __restrict out, int64_t n) {
  switch (op) {
    case U_NEG: for (int64_t i = 0; i < n; i++) out[i] = -x[i]; break;
    case U_EXP: for (int64_t i = 0; i < n; i++) out[i] = fast_exp(x[i]); break;
    case U_LOG: for (int64_t i = 0; i < n; i++) out[i] = std::log(x[i]); break;
    case U_SQRT: for (int64_t i = 0; i < n; i++) out[i] = std::sqrt(x[i]); break;
    case U_TANH: for (int64_t i = 0; i < n; i++) out[i] = fast_tanh(x[i]); break;
    case U_SIGMOID: for (int64_t i = 0; i < n; i++) out[i] = fast_sigmoid(x[i]); break;
    case U_RELU: for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : 0.0f; break;
    case U_GELU: for (int64_t i = 0; i < n; i++) out[i] = 0.5f * x[i] * (1.0f + fast_erf(x[i] * kSqrt1_2)); break;
    case U_GELU_TANH:
      for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        out[i] = 0.5f * v * (1.0f + fast_tanh(kGeluC * (v + kGeluA * v * v * v)));
      }
      break;
    case U_SILU: for (int64_t i = 0; i < n; i++) out[i] = x[i] * fast_sigmoid(x[i]); break;
    case U_ABS: for (int64_t i = 0; i < n; i++) out[i] = std::fabs(x[i]); break;
  }
}

AK_CLONES void unary_backward_range(int op, const float* __restrict x, const float* __restrict y,
                                    const float* __restrict g, float* __restrict out, int64_t n) {
  switch (op) {
    case U_NEG: for (int64_t i = 0; i < n; i++) out[i] = -g[i]; break;
    case U_EXP: for (int64_t i = 0; i < n; i++) out[i] = g[i] * y[i]; break;
    case U_LOG: for (int64_t i = 0; i < n; i++) out[i] = g[i] / x[i]; break;
    case U_SQRT: for (int64_t i = 0; i < n; i++) out[i] = g[i] * 0.5f / y[i]; break;
    case U_TANH: for (int64_t i = 0; i < n; i++) out[i] = g[i] * (1.0f - y[i] * y[i]); break;
    case U_SIGMOID: for (int64_t i = 0; i < n; i++) out[i] = g[i] * y[i] * (1.0f - y[i]); break;
    case U_RELU: for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0 ? g[i] : 0.0f; break;
    case U_GELU:
      for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        out[i] = g[i] * (0.5f * (1.0f + fast_erf(v * kSqrt1_2)) + v * kInvSqrt2Pi * fast_exp(-0.5f * v * v));
      }
      break;
    case U_GELU_TANH:
      for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        const float t = fast_tanh(kGeluC * (v + kGeluA * v * v * v));
        out[i] = g[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * kGeluA * v * v));
      }
      break;
    case U_SILU:
      for (int64_t i = 0; i < n; i++) {
        const float s = fast_sigmoid(x[i]);
        out[i] = g[i] * s * (1.0f + x[i] * (1.0f - s));
      }
      break;
    case U_ABS: for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0 ? g[i] : (x[i] < 0 ? -g[i] : 0.0f); break;
  }
}

template <int OP>
inline float apply(float a, float b) {
  if constexpr (OP == B_ADD) return a + b;
  if constexpr (OP == B_SUB) return a - b;
  if constexpr (OP == B_MUL) return a * b;
  if constexpr (OP == B_DIV) return a / b;
  if constexpr (OP == B_MAX) return a >= b ? a : b;
  if constexpr (OP == B_MIN) return a <= b ? a : b;
  if constexpr (OP == B_EQ) return a == b ? 1.0f : 0.0f;
  if constexpr (OP == B_NE) return a != b ? 1.0f : 0.0f;
  if constexpr (OP == B_LT) return a < b ? 1.0f : 0.0f;
  if constexpr (OP == B_LE) return a <= b ? 1.0f : 0.0f;
  if constexpr (OP == B_GT) return a > b ? 1.0f : 0.0f;
  if constexpr (OP == B_GE) return a >= b ? 1.0f : 0.0f;
  return 0.0f;
}

// One row of len elements; strides of 1 or 0 get their own loops so they vectorize.
template <int OP>
AK_CLONES void binary_row(const float* a, int64_t sa, const float* b, int64_t sb, float* out, int64_t len) {
  if (sa == 1 && sb == 1) {
    for (int64_t j = 0; j < len; j++) out[j] = apply<OP>(a[j], b[j]);
  } else if (sa == 1 && sb == 0) {
    const float bv = b[0];
    for (int64_t j = 0; j < len; j++) out[j] = apply<OP>(a[j], bv);
  } else if (sa == 0 && sb == 1) {
    const float av = a[0];
    for (int64_t j = 0; j < len; j++) out[j] = apply<OP>(av, b[j]);
  } else {
    for (int64_t j = 0; j < len; j++) out[j] = apply<OP>(a[j * sa], b[j * sb]);
  }
}

using RowFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t);
const RowFn kBinaryRows[B_COUNT] = {
    binary_row<B_ADD>, binary_row<B_SUB>, binary_row<B_MUL>, binary_row<B_DIV>, binary_row<B_MAX>, binary_row<B_MIN>,
    binary_row<B_EQ>, binary_row<B_NE>, binary_row<B_LT>, binary_row<B_LE>, binary_row<B_GT>, binary_row<B_GE>};

// Merge adjacent dims that are contiguous for every operand (fewer, longer rows).
int collapse(int nd, const int64_t* shape, int nv, const int64_t* const* strides, int64_t* oshape,
             int64_t (*ostrides)[kMaxDims]) {
  int m = 0;
  for (int d = 0; d < nd; d++) {
    if (shape[d] == 1) continue;
    bool merge = m > 0;
    for (int v = 0; v < nv && merge; v++) merge = ostrides[v][m - 1] == strides[v][d] * shape[d];
    if (merge) {
      oshape[m - 1] *= shape[d];
      for (int v = 0; v < nv; v++) ostrides[v][m - 1] = strides[v][d];
    } else {
      oshape[m] = shape[d];
      for (int v = 0; v < nv; v++) ostrides[v][m] = strides[v][d];
      m++;
    }
  }
  if (m == 0) {
    oshape[0] = 1;
    for (int v = 0; v < nv; v++) ostrides[v][0] = 0;
    m = 1;
  }
  return m;
}

// Call row(r, offsets...) for rows [r0, r1) of a collapsed iteration space.
template <int NV, class F>
void for_rows(int nd, const int64_t* shape, const int64_t (*strides)[kMaxDims], const int64_t* base, int64_t r0,
              int64_t r1, F&& row) {
  int64_t idx[kMaxDims];
  int64_t off[NV];
  // decompose r0 into an index over the outer dims
  int64_t rem = r0;
  for (int d = nd - 2; d >= 0; d--) {
    idx[d] = rem % shape[d];
    rem /= shape[d];
  }
  for (int v = 0; v < NV; v++) {
    off[v] = base[v];
    for (int d = 0; d < nd - 1; d++) off[v] += idx[d] * strides[v][d];
  }
  for (int64_t r = r0; r < r1; r++) {
    row(r, off);
    for (int d = nd - 2; d >= 0; d--) {
      idx[d]++;
      for (int v = 0; v < NV; v++) off[v] += strides[v][d];
      if (idx[d] < shape[d]) break;
      for (int v = 0; v < NV; v++) off[v] -= strides[v][d] * shape[d];
      idx[d] = 0;
    }
  }
}

}  // namespace

void unary(int op, const float* x, float* out, int64_t n) {
  parallel_range(n, 1 << 15, [&](int64_t lo, int64_t hi, int) { unary_range(op, x + lo, out + lo, hi - lo); });
}

void unary_backward(int op, const float* x, const float* y, const float* g, float* out, int64_t n) {
  parallel_range(n, 1 << 15, [&](int64_t lo, int64_t hi, int) {
    unary_backward_range(op, x + lo, y + lo, g + lo, out + lo, hi - lo);
  });
}

void binary(int op, int nd, const int64_t* shape, const Strided& a, const Strided& b, float* out) {
  int64_t cs[kMaxDims];
  int64_t st[3][kMaxDims];
  int64_t ostr[kMaxDims];
  int64_t s = 1;
  for (int d = nd - 1; d >= 0; d--) {
    ostr[d] = s;
    s *= shape[d];
  }
  if (s == 0) return;
  const int64_t* strides[3] = {a.strides, b.strides, ostr};
  const int m = collapse(nd, shape, 3, strides, cs, st);
  const int64_t len = cs[m - 1];
  const int64_t rows = s / len;
  const int64_t base[3] = {a.offset, b.offset, 0};
  const float* ad = static_cast<const float*>(a.data);
  const float* bd = static_cast<const float*>(b.data);
  const RowFn fn = kBinaryRows[op];
  parallel_range(rows, std::max<int64_t>(1, (1 << 15) / len), [&](int64_t r0, int64_t r1, int) {
    for_rows<3>(m, cs, st, base, r0, r1, [&](int64_t, const int64_t* off) {
      fn(ad + off[0], st[0][m - 1], bd + off[1], st[1][m - 1], out + off[2], len);
    });
  });
}

void where(int nd, const int64_t* shape, const Strided& c, const Strided& a, const Strided& b, float* out) {
  int64_t cs[kMaxDims];
  int64_t st[4][kMaxDims];
  int64_t ostr[kMaxDims];
  int64_t s = 1;
  for (int d = nd - 1; d >= 0; d--) {
    ostr[d] = s;
    s *= shape[d];
  }
  if (s == 0) return;
  const int64_t* strides[4] = {c.strides, a.strides, b.strides, ostr};
  const int m = collapse(nd, shape, 4, strides, cs, st);
  const int64_t len = cs[m - 1];
  const int64_t base[4] = {c.offset, a.offset, b.offset, 0};
  const float* cd = static_cast<const float*>(c.data);
  const float* ad = static_cast<const float*>(a.data);
  const float* bd = static_cast<const float*>(b.data);
  const int64_t sc = st[0][m - 1], sa = st[1][m - 1], sb = st[2][m - 1];
  for_rows<4>(m, cs, st, base, 0, s / len, [&](int64_t, const int64_t* off) {
    for (int64_t j = 0; j < len; j++)
      out[off[3] + j] = cd[off[0] + j * sc] != 0.0f ? ad[off[1] + j * sa] : bd[off[2] + j * sb];
  });
}

void copy4(int nd, const int64_t* shape, const Strided& src, Strided& dst) {
  int64_t cs[kMaxDims];
  int64_t st[2][kMaxDims];
  int64_t s = 1;
  for (int d = 0; d < nd; d++) s *= shape[d];
  if (s == 0) return;
  const int64_t* strides[2] = {src.strides, dst.strides};
  const int m = collapse(nd, shape, 2, strides, cs, st);
  const int64_t len = cs[m - 1];
  const int64_t base[2] = {src.offset, dst.offset};
  const uint32_t* sd = static_cast<const uint32_t*>(src.data);
  uint32_t* dd = static_cast<uint32_t*>(const_cast<void*>(dst.data));
  const int64_t ss = st[0][m - 1], ds = st[1][m - 1];
  parallel_range(s / len, std::max<int64_t>(1, (1 << 16) / len), [&](int64_t r0, int64_t r1, int) {
    for_rows<2>(m, cs, st, base, r0, r1, [&](int64_t, const int64_t* off) {
      if (ss == 1 && ds == 1) {
        std::memmove(dd + off[1], sd + off[0], len * 4);
      } else {
        for (int64_t j = 0; j < len; j++) dd[off[1] + j * ds] = sd[off[0] + j * ss];
      }
    });
  });
}

namespace {
AK_CLONES void sum_block(const float* __restrict x, int64_t n, int64_t inner, float* __restrict out) {
  if (inner == 1) {
    float acc[16] = {};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
      for (int q = 0; q < 16; q++) acc[q] += x[j + q];
    float s = 0;
    for (int q = 0; q < 16; q++) s += acc[q];
    for (; j < n; j++) s += x[j];
    out[0] = s;
    return;
  }
  for (int64_t i = 0; i < inner; i++) out[i] = 0.0f;
  for (int64_t j = 0; j < n; j++) {
    const float* row = x + j * inner;
    for (int64_t i = 0; i < inner; i++) out[i] += row[i];
  }
}
}  // namespace

// An empty output leaves the other extents unbounded by any buffer, and looping over them could
// run for 2^53 iterations writing nothing; the kernels below return first instead.
void reduce_sum(const float* x, int64_t outer, int64_t n, int64_t inner, float* out) {
  if (outer <= 0 || inner <= 0) return;
  if (outer == 1 && inner > 1 && n > 1) {
    // column sums (e.g. a bias gradient): split the columns over threads
    parallel_range(inner, std::max<int64_t>(16, (1 << 15) / n), [&](int64_t lo, int64_t hi, int) {
      for (int64_t i = lo; i < hi; i++) out[i] = 0.0f;
      for (int64_t j = 0; j < n; j++) {
        const float* row = x + j * inner;
        for (int64_t i = lo; i < hi; i++) out[i] += row[i];
      }
    });
    return;
  }
  parallel_range(outer, std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, n * inner)), [&](int64_t lo, int64_t hi, int) {
    for (int64_t o = lo; o < hi; o++) sum_block(x + o * n * inner, n, inner, out + o * inner);
  });
}

void reduce_max(const float* x, int64_t outer, int64_t n, int64_t inner, float* out) {
  if (inner <= 0) return;
  for (int64_t o = 0; o < outer; o++) {
    const float* xb = x + o * n * inner;
    float* ob = out + o * inner;
    for (int64_t i = 0; i < inner; i++) ob[i] = xb[i];
    for (int64_t j = 1; j < n; j++) {
      const float* row = xb + j * inner;
      for (int64_t i = 0; i < inner; i++)
        if (row[i] > ob[i] || std::isnan(row[i])) ob[i] = row[i];
    }
  }
}

void index_select4(const void* x, int64_t outer, int64_t rows, int64_t inner, const int32_t* idx, int64_t nidx,
                   void* out) {
  if (inner <= 0 || nidx <= 0) return;
  const uint32_t* xs = static_cast<const uint32_t*>(x);
  uint32_t* os = static_cast<uint32_t*>(out);
  parallel_range(outer * nidx, std::max<int64_t>(1, 4096 / std::max<int64_t>(inner, 1)), [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; r++) {
      const int64_t o = r / nidx, j = r % nidx;
      std::memcpy(os + r * inner, xs + (o * rows + idx[j]) * inner, inner * 4);
    }
  });
}

void index_add(const float* src, int64_t outer, int64_t rows, int64_t inner, const int32_t* idx, int64_t nidx,
               float* out) {
  if (inner <= 0 || nidx <= 0) return;
  // rows may repeat in idx: split over the inner dim so no two threads touch one element
  parallel_range(inner, 256, [&](int64_t lo, int64_t hi, int) {
    for (int64_t o = 0; o < outer; o++)
      for (int64_t j = 0; j < nidx; j++) {
        const float* s = src + (o * nidx + j) * inner;
        float* d = out + (o * rows + idx[j]) * inner;
        for (int64_t i = lo; i < hi; i++) d[i] += s[i];
      }
  });
}

namespace {
AK_CLONES void softmax_row(const float* __restrict x, float* __restrict out, int64_t cols, bool log) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < cols; j++) m = x[j] > m ? x[j] : m;
  if (m == -INFINITY) m = 0;
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < cols; j++) {
    const float e = fast_exp(x[j] - m);
    out[j] = e;
    s += e;
  }
  if (log) {
    const float lse = m + std::log(s);
    for (int64_t j = 0; j < cols; j++) out[j] = x[j] - lse;
  } else {
    const float inv = 1.0f / s;
    for (int64_t j = 0; j < cols; j++) out[j] *= inv;
  }
}

AK_CLONES void softmax_backward_row(const float* __restrict y, const float* __restrict g, float* __restrict out,
                                    int64_t cols, bool log) {
  float s = 0;
  if (log) {
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < cols; j++) s += g[j];
    for (int64_t j = 0; j < cols; j++) out[j] = g[j] - fast_exp(y[j]) * s;
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < cols; j++) s += g[j] * y[j];
    for (int64_t j = 0; j < cols; j++) out[j] = y[j] * (g[j] - s);
  }
}
}  // namespace

void softmax(const float* x, int64_t rows, int64_t cols, float* out, bool log) {
  if (cols <= 0) return;
  parallel_range(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; r++) softmax_row(x + r * cols, out + r * cols, cols, log);
  });
}

void softmax_backward(const float* y, const float* g, int64_t rows, int64_t cols, float* out, bool log) {
  if (cols <= 0) return;
  parallel_range(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; r++) softmax_backward_row(y + r * cols, g + r * cols, out + r * cols, cols, log);
  });
}

namespace {
AK_CLONES void rmsnorm_rows(const float* __restrict x, const float* __restrict w, int64_t r0, int64_t r1, int64_t cols,
                            float eps, float* __restrict out, float* __restrict rstd) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * cols;
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < cols; j++) ss += xr[j] * xr[j];
    const float rs = 1.0f / std::sqrt(ss / cols + eps);
    rstd[r] = rs;
    float* o = out + r * cols;
    for (int64_t j = 0; j < cols; j++) o[j] = xr[j] * rs * w[j];
  }
}

AK_CLONES void rmsnorm_backward_rows(const float* __restrict x, const float* __restrict w, const float* __restrict rstd,
                                     const float* __restrict g, int64_t r0, int64_t r1, int64_t cols,
                                     float* __restrict dx, float* __restrict dw) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * cols;
    const float* gr = g + r * cols;
    const float rs = rstd[r];
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < cols; j++) dot += gr[j] * w[j] * xr[j];
    dot *= rs;
    if (dw)
      for (int64_t j = 0; j < cols; j++) dw[j] += gr[j] * xr[j] * rs;
    if (dx) {
      const float mdot = dot / cols;
      float* d = dx + r * cols;
      for (int64_t j = 0; j < cols; j++) d[j] = rs * (gr[j] * w[j] - xr[j] * rs * mdot);
    }
  }
}

// Per-thread partial sums for weight gradients, combined after the parallel pass.
struct Partials {
  std::vector<float> buf;
  int64_t cols;
  int n;
  Partials(int threads, int64_t c, int count) : buf(static_cast<size_t>(threads) * c * count, 0.0f), cols(c), n(count) {}
  float* at(int thread, int which) { return buf.data() + (static_cast<int64_t>(thread) * n + which) * cols; }
  void reduce(int threads, int which, float* dst) {
    if (!dst) return;
    for (int64_t j = 0; j < cols; j++) dst[j] = 0;
    for (int t = 0; t < threads; t++) {
      const float* p = at(t, which);
      for (int64_t j = 0; j < cols; j++) dst[j] += p[j];
    }
  }
};
}  // namespace

void rmsnorm(const float* x, const float* w, int64_t rows, int64_t cols, float eps, float* out, float* rstd) {
  parallel_range(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi, int) {
    rmsnorm_rows(x, w, lo, hi, cols, eps, out, rstd);
  });
}

void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* g, int64_t rows, int64_t cols,
                      float* dx, float* dw) {
  const int nt = static_cast<int>(chunk_count(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1))));
  Partials part(nt, cols, 1);
  parallel_range(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi, int t) {
    rmsnorm_backward_rows(x, w, rstd, g, lo, hi, cols, dx, dw ? part.at(t, 0) : nullptr);
  });
  part.reduce(nt, 0, dw);
}

namespace {
AK_CLONES void layernorm_rows(const float* __restrict x, const float* __restrict w, const float* __restrict b,
                              int64_t r0, int64_t r1, int64_t cols, float eps, float* __restrict out,
                              float* __restrict mean, float* __restrict rstd) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * cols;
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < cols; j++) s += xr[j];
    const float mu = s / cols;
    float v = 0;
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < cols; j++) v += (xr[j] - mu) * (xr[j] - mu);
    const float rs = 1.0f / std::sqrt(v / cols + eps);
    mean[r] = mu;
    rstd[r] = rs;
    float* o = out + r * cols;
    for (int64_t j = 0; j < cols; j++) o[j] = (xr[j] - mu) * rs * w[j] + b[j];
  }
}

AK_CLONES void layernorm_backward_rows(const float* __restrict x, const float* __restrict w,
                                       const float* __restrict mean, const float* __restrict rstd,
                                       const float* __restrict g, int64_t r0, int64_t r1, int64_t cols,
                                       float* __restrict dx, float* __restrict dw, float* __restrict db) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * cols;
    const float* gr = g + r * cols;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t j = 0; j < cols; j++) {
      const float xh = (xr[j] - mu) * rs;
      const float gw = gr[j] * w[j];
      sg += gw;
      sgx += gw * xh;
    }
    if (dw)
      for (int64_t j = 0; j < cols; j++) dw[j] += gr[j] * (xr[j] - mu) * rs;
    if (db)
      for (int64_t j = 0; j < cols; j++) db[j] += gr[j];
    if (dx) {
      sg /= cols;
      sgx /= cols;
      float* d = dx + r * cols;
      for (int64_t j = 0; j < cols; j++) d[j] = rs * (gr[j] * w[j] - sg - (xr[j] - mu) * rs * sgx);
    }
  }
}
}  // namespace

void layernorm(const float* x, const float* w, const float* b, int64_t rows, int64_t cols, float eps, float* out,
               float* mean, float* rstd) {
  parallel_range(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi, int) {
    layernorm_rows(x, w, b, lo, hi, cols, eps, out, mean, rstd);
  });
}

void layernorm_backward(const float* x, const float* w, const float* mean, const float* rstd, const float* g,
                        int64_t rows, int64_t cols, float* dx, float* dw, float* db) {
  const int nt = static_cast<int>(chunk_count(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1))));
  Partials part(nt, cols, 2);
  parallel_range(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi, int t) {
    layernorm_backward_rows(x, w, mean, rstd, g, lo, hi, cols, dx, dw ? part.at(t, 0) : nullptr,
                            db ? part.at(t, 1) : nullptr);
  });
  part.reduce(nt, 0, dw);
  part.reduce(nt, 1, db);
}

namespace {
AK_CLONES float row_lse(const float* __restrict x, int64_t cols) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < cols; j++) m = x[j] > m ? x[j] : m;
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < cols; j++) s += fast_exp(x[j] - m);
  return m + std::log(s);
}

AK_CLONES void ce_backward_row(const float* __restrict x, float lse, float scale, float* __restrict d, int64_t cols) {
  for (int64_t j = 0; j < cols; j++) d[j] = scale * fast_exp(x[j] - lse);
}
}  // namespace

void cross_entropy(const float* logits, const int32_t* targets, int64_t rows, int64_t cols, int32_t ignore,
                   float* loss, float* lse) {
  parallel_range(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; r++) {
      const float* x = logits + r * cols;
      const float l = row_lse(x, cols);
      lse[r] = l;
      loss[r] = targets[r] == ignore ? 0.0f : l - x[targets[r]];
    }
  });
}

void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, int64_t rows, int64_t cols,
                            int32_t ignore, const float* scale, float* dlogits) {
  parallel_range(rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; r++) {
      float* d = dlogits + r * cols;
      if (targets[r] == ignore) {
        std::memset(d, 0, cols * sizeof(float));
        continue;
      }
      ce_backward_row(logits + r * cols, lse[r], scale[r], d, cols);
      d[targets[r]] -= scale[r];
    }
  });
}

namespace {
AK_CLONES float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

inline int64_t last_key(const Attention& a, int64_t t) { return a.causal ? t + a.tk - a.tq : a.tk - 1; }

}  // namespace

namespace {
thread_local std::vector<float> tl_s, tl_dp;

// C[m x n] (+)= op(A) op(B) on the calling thread only (kernels below already run one task per thread).
inline void gemm1(const float* a, int64_t lda, bool ta, const float* b, int64_t ldb, bool tb, float* c, int64_t m, int64_t n,
                  int64_t k, bool acc) {
  GemmArgs g{a, b, c, m, n, k, lda, ldb, ta, tb, acc};
  sgemm(g, false);
}

// Scores of one head, masked: s[t, j] = scale q_t·k_j, or -inf where key j is hidden from query t.
void masked_scores(const Attention& a, const float* q, const float* k, const float* mask, float* s) {
  gemm1(q, a.dim, false, k, a.dim, true, s, a.tq, a.tk, a.dim, false);
  for (int64_t t = 0; t < a.tq; t++) {
    float* row = s + t * a.tk;
    const int64_t last = last_key(a, t);
    for (int64_t j = 0; j < a.tk; j++) {
      row[j] = (j > last || (mask && mask[j] == 0.0f)) ? -INFINITY : row[j] * a.scale;
    }
  }
}

// The T x T score scratch is the one buffer here sized by arguments alone (dim = 0 or a long
// sequence makes it huge while the inputs stay small). Every thread keeps its own, so the total is
// checked up front; an allocation that still fails on a worker comes back through the pool and is
// reported by scratch_failed.
std::string scratch_for(const Attention& a) {
  return a.tq == a.tk ? "T=" + std::to_string(a.tq) : "tq=" + std::to_string(a.tq) + ", tk=" + std::to_string(a.tk);
}

// Number of tasks (one per head), once it is known to fit the pool's int task index and every
// running thread's scratch to fit in memory.
int attention_tasks(const Attention& a, int64_t heads, int buffers) {
  if (a.kv_heads <= 0 || a.heads % a.kv_heads != 0) throw KernelError("heads must be a multiple of kv heads");
  const int64_t tasks = mul_or_neg(a.batch, heads);
  if (tasks < 0 || tasks > INT_MAX)
    throw KernelError("batch x heads = " + std::to_string(a.batch) + " x " + std::to_string(heads) +
                      " is more than " + std::to_string(INT_MAX) + " tasks");
  if (tasks == 0) return 0;
  const int64_t elems = mul_or_neg(mul_or_neg(a.tq, a.tk), buffers);
  const double per_thread = 4.0 * static_cast<double>(a.tq) * static_cast<double>(a.tk) * buffers;
  const int concurrent = static_cast<int>(std::min<int64_t>(tasks, pool().threads()));
  const double total = per_thread * concurrent;
  const double ram = physical_memory_bytes();
  if (elems < 0 || static_cast<uint64_t>(elems) > std::vector<float>().max_size() || (ram > 0 && total > ram)) {
    std::string why = concurrent > 1 ? std::to_string(concurrent) + " threads x " + format_bytes(per_thread) + "; " : "";
    why += ram > 0 ? "more than the " + format_bytes(ram) + " of physical memory" : "too large to address";
    throw KernelError("cannot allocate " + format_bytes(total) + " of scratch for " + scratch_for(a) + " (" + why + ")");
  }
  return static_cast<int>(tasks);
}

[[noreturn]] void scratch_failed(const Attention& a, int buffers) {
  const double per_thread = 4.0 * static_cast<double>(a.tq) * static_cast<double>(a.tk) * buffers;
  throw KernelError("cannot allocate " + format_bytes(per_thread) + " of scratch for " + scratch_for(a) +
                    " (out of memory)");
}

void attention_heads(const Attention& a, int tasks) {
  const int64_t D = a.dim, group = a.heads / a.kv_heads;
  pool().parallel_for(tasks, [&](int bh, int) {
    const int64_t b = bh / a.heads, h = bh % a.heads, kvh = h / group;
    const float* q = a.q + bh * a.tq * D;
    const float* k = a.k + (b * a.kv_heads + kvh) * a.tk * D;
    const float* v = a.v + (b * a.kv_heads + kvh) * a.tk * D;
    const float* mask = a.key_mask ? a.key_mask + b * a.tk : nullptr;
    if (tl_s.size() < static_cast<size_t>(a.tq * a.tk)) tl_s.resize(a.tq * a.tk);
    float* s = tl_s.data();
    masked_scores(a, q, k, mask, s);
    for (int64_t t = 0; t < a.tq; t++) {
      float* row = s + t * a.tk;
      float m = -INFINITY;
      for (int64_t j = 0; j < a.tk; j++) m = row[j] > m ? row[j] : m;
      if (m == -INFINITY) {
        for (int64_t j = 0; j < a.tk; j++) row[j] = 0.0f;
        a.lse[bh * a.tq + t] = -INFINITY;
        continue;
      }
      float l = 0;
      for (int64_t j = 0; j < a.tk; j++) {
        const float p = row[j] == -INFINITY ? 0.0f : fast_exp(row[j] - m);
        row[j] = p;
        l += p;
      }
      const float inv = 1.0f / l;
      for (int64_t j = 0; j < a.tk; j++) row[j] *= inv;
      a.lse[bh * a.tq + t] = m + std::log(l);
    }
    gemm1(s, a.tk, false, v, D, false, a.out + bh * a.tq * D, a.tq, D, a.tk, false);
  });
}

void attention_backward_heads(const Attention& a, int tasks) {
  const int64_t D = a.dim, group = a.heads / a.kv_heads;
  // one task per (batch, kv head): it owns dk/dv of that head, so nothing is shared
  pool().parallel_for(tasks, [&](int bk, int) {
    const int64_t b = bk / a.kv_heads, kvh = bk % a.kv_heads;
    const float* k = a.k + bk * a.tk * D;
    const float* v = a.v + bk * a.tk * D;
    float* dk = a.dk + bk * a.tk * D;
    float* dv = a.dv + bk * a.tk * D;
    std::memset(dk, 0, a.tk * D * sizeof(float));
    std::memset(dv, 0, a.tk * D * sizeof(float));
    const float* mask = a.key_mask ? a.key_mask + b * a.tk : nullptr;
    const size_t need = static_cast<size_t>(a.tq * a.tk);
    if (tl_s.size() < need) tl_s.resize(need);
    if (tl_dp.size() < need) tl_dp.resize(need);
    float* p = tl_s.data();
    float* dp = tl_dp.data();
    for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
      const int64_t bh = b * a.heads + h;
      const float* q = a.q + bh * a.tq * D;
      const float* go = a.grad_out + bh * a.tq * D;
      const float* o = a.out + bh * a.tq * D;
      float* dq = a.dq + bh * a.tq * D;
      // P from the saved log-sum-exp
      masked_scores(a, q, k, mask, p);
      for (int64_t t = 0; t < a.tq; t++) {
        const float lse = a.lse[bh * a.tq + t];
        float* row = p + t * a.tk;
        for (int64_t j = 0; j < a.tk; j++) row[j] = (lse == -INFINITY || row[j] == -INFINITY) ? 0.0f : fast_exp(row[j] - lse);
      }
      // dV += Pᵀ dO ; dP = dO Vᵀ
      gemm1(p, a.tk, true, go, D, false, dv, a.tk, D, a.tq, true);
      gemm1(go, D, false, v, D, true, dp, a.tq, a.tk, D, false);
      // dS = P ∘ (dP − rowsum(dO ∘ O)) · scale
      for (int64_t t = 0; t < a.tq; t++) {
        const float dsum = dot(go + t * D, o + t * D, D);
        float* pr = p + t * a.tk;
        const float* dpr = dp + t * a.tk;
        for (int64_t j = 0; j < a.tk; j++) pr[j] = pr[j] * (dpr[j] - dsum) * a.scale;
      }
      // dQ = dS K ; dK += dSᵀ Q
      gemm1(p, a.tk, false, k, D, false, dq, a.tq, D, a.tk, false);
      gemm1(p, a.tk, true, q, D, false, dk, a.tk, D, a.tq, true);
    }
  });
}
}  // namespace

void attention(const Attention& a) {
  const int tasks = attention_tasks(a, a.heads, 1);
  try {
    attention_heads(a, tasks);
  } catch (const std::bad_alloc&) {
    scratch_failed(a, 1);
  } catch (const std::length_error&) {
    scratch_failed(a, 1);
  }
}

void attention_backward(const Attention& a) {
  const int tasks = attention_tasks(a, a.kv_heads, 2);
  try {
    attention_backward_heads(a, tasks);
  } catch (const std::bad_alloc&) {
    scratch_failed(a, 2);
  } catch (const std::length_error&) {
    scratch_failed(a, 2);
  }
}

void rope(const float* x, const float* cos, const float* sin, int64_t outer, int64_t t, int64_t d, float* out,
          bool inverse) {
  if (d <= 0) return;  // see reduce_sum
  const int64_t half = d / 2;
  const float sign = inverse ? -1.0f : 1.0f;
  parallel_range(outer * t, std::max<int64_t>(1, 8192 / std::max<int64_t>(d, 1)), [&](int64_t lo, int64_t hi, int) {
    for (int64_t r = lo; r < hi; r++) {
      const int64_t p = r % t;
      const float* xr = x + r * d;
      float* o = out + r * d;
      const float* c = cos + p * half;
      const float* s = sin + p * half;
      for (int64_t i = 0; i < half; i++) {
        const float x1 = xr[i], x2 = xr[i + half], sv = sign * s[i];
        o[i] = x1 * c[i] - x2 * sv;
        o[i + half] = x2 * c[i] + x1 * sv;
      }
    }
  });
}

}  // namespace adaptkit
