// Packed-weight products. Forward with few activation rows (decoding, m <= 8) streams each weight
// row once: a chunk of it is decoded into a stack buffer and FMA'd against every activation row
// while it is in L1. With more rows the decode cost is amortised instead: each thread decodes a
// tile of weight rows (L2-sized) into its own buffer and multiplies it with the packed SGEMM on
// that thread. The input gradient dy·W splits W's columns over the threads, so each thread owns a
// column slice of the output and no reduction across threads is needed.
//
// The SIMD width follows the GEMM kernel chosen at run time (gemm_kernel_name), so forcing a
// kernel with setGemmKernel also selects the matching dot-product kernel here.
#include "quant.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "errors.h"
#include "gemm.h"
#include "threadpool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define ADAPTKIT_X86 1
#endif

namespace adaptkit {

namespace {

// Values of a weight row decoded at once: a multiple of the 32-value GGUF blocks, so every chunk
// starts on a block boundary, and small enough (1 KB) to stay in L1 next to the activation rows.
constexpr int64_t CH = 256;
constexpr int64_t GEMV_MAX_M = 8;
// Decoded values per thread for the tiled paths: 256 KB, the L2 of most cores.
constexpr int64_t TILE_VALUES = 1 << 16;
// Below this many weight values a second thread costs more than it saves.
constexpr int64_t MIN_PARALLEL_VALUES = 1 << 14;

inline uint16_t u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

inline float bits_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// IEEE binary16 to f32, exact (subnormals normalised, inf and NaN kept).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return bits_float(sign | ((exp + 112) << 23) | (man << 13));
  if (man == 0) return bits_float(sign);
  uint32_t e = 0;
  while (!(man & 0x400)) {
    man <<= 1;
    e++;
  }
  return bits_float(sign | ((113 - e) << 23) | ((man & 0x3ff) << 13));
}

#ifdef ADAPTKIT_X86
const bool g_has_f16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
const bool g_has_avx2 = __builtin_cpu_supports("avx2");

// vcvtph2ps converts exactly, subnormals included, as half_to_float does.
__attribute__((target("avx,f16c"))) void f16_f16c(const uint8_t* p, int64_t len, float* dst) {
  int64_t t = 0;
  for (; t + 8 <= len; t += 8)
    _mm256_storeu_ps(dst + t, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * t))));
  for (; t < len; t++) dst[t] = half_to_float(u16(p + 2 * t));
}

// One q4_0 block: the nibbles widen to int32 lanes, so each value is one f32 product as in the scalar code.
__attribute__((target("avx2"))) void q4_0_block_avx2(const uint8_t* b, float* dst) {
  const __m256 d = _mm256_set1_ps(half_to_float(u16(b)));
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
  const __m128i mask = _mm_set1_epi8(15);
  const __m128i lo = _mm_and_si128(q, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
  const __m256i eight = _mm256_set1_epi32(8);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int j = 0; j < 4; j++) {
    const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[j]), eight);
    _mm256_storeu_ps(dst + 8 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
  }
}

// One q8_0 block.
__attribute__((target("avx2"))) void q8_0_block_avx2(const uint8_t* b, float* dst) {
  const __m256 d = _mm256_set1_ps(half_to_float(u16(b)));
  for (int j = 0; j < 4; j++) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * j));
    _mm256_storeu_ps(dst + 8 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
  }
}

// 16 values of a 4-bit tensor from the 8 bytes at p (first element even): the codes interleave in
// element order (high nibble first) and index the 16 levels as two 8-entry lane permutes.
__attribute__((target("avx2"))) void bnb4_16_avx2(const uint8_t* p, __m256 tlo, __m256 thi, __m256 s, float* dst) {
  const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(15);
  const __m128i codes = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), mask), _mm_and_si128(q, mask));
  const __m128i halves[2] = {codes, _mm_srli_si128(codes, 8)};
  for (int j = 0; j < 2; j++) {
    const __m256i idx = _mm256_cvtepu8_epi32(halves[j]);
    const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
    const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, idx), _mm256_permutevar8x32_ps(thi, idx), upper);
    _mm256_storeu_ps(dst + 8 * j, _mm256_mul_ps(v, s));
  }
}

__attribute__((target("avx2"))) void bnb4_range_avx2(const QuantWeight& w, int64_t i, int64_t end, float* o) {
  const __m256 tlo = _mm256_loadu_ps(w.code), thi = _mm256_loadu_ps(w.code + 8);
  while (i < end) {
    const int64_t blk = i / w.blocksize;
    const int64_t stop = std::min(end, (blk + 1) * w.blocksize);
    const float s = w.absmax[blk];
    const __m256 sv = _mm256_set1_ps(s);
    if ((i & 1) && i < stop) {
      *o++ = w.code[w.data[i >> 1] & 15] * s;
      i++;
    }
    for (; i + 16 <= stop; i += 16, o += 16) bnb4_16_avx2(w.data + (i >> 1), tlo, thi, sv, o);
    for (; i < stop; i++) {
      const uint8_t byte = w.data[i >> 1];
      *o++ = w.code[(i & 1) ? (byte & 15) : (byte >> 4)] * s;
    }
  }
}
#endif

// Values [c0, c0 + len) of row r into dst. For q8_0 / q4_0, c0 and len are multiples of 32 (or
// len reaches the row's end, itself a multiple of 32). simd: the SIMD decoders may be used (off
// when the generic kernel is forced, so the portable decoders stay tested).
void decode(const QuantWeight& w, int64_t r, int64_t c0, int64_t len, float* __restrict dst, bool simd) {
  switch (w.kind) {
    case QuantKind::kQ8_0: {
      const uint8_t* b = w.data + (r * (w.k / 32) + c0 / 32) * 34;
#ifdef ADAPTKIT_X86
      if (simd && g_has_avx2) {
        for (int64_t j = 0; j < len; j += 32, b += 34) q8_0_block_avx2(b, dst + j);
        return;
      }
#endif
      for (int64_t j = 0; j < len; j += 32, b += 34) {
        const float d = half_to_float(u16(b));
        const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
        for (int t = 0; t < 32; t++) dst[j + t] = static_cast<float>(q[t]) * d;
      }
      return;
    }
    case QuantKind::kQ4_0: {
      const uint8_t* b = w.data + (r * (w.k / 32) + c0 / 32) * 18;
#ifdef ADAPTKIT_X86
      if (simd && g_has_avx2) {
        for (int64_t j = 0; j < len; j += 32, b += 18) q4_0_block_avx2(b, dst + j);
        return;
      }
#endif
      for (int64_t j = 0; j < len; j += 32, b += 18) {
        const float d = half_to_float(u16(b));
        for (int t = 0; t < 16; t++) {
          dst[j + t] = static_cast<float>((b[2 + t] & 15) - 8) * d;
          dst[j + t + 16] = static_cast<float>((b[2 + t] >> 4) - 8) * d;
        }
      }
      return;
    }
    case QuantKind::kBf16: {
      const uint8_t* p = w.data + 2 * (r * w.k + c0);
      for (int64_t t = 0; t < len; t++) dst[t] = bits_float(static_cast<uint32_t>(u16(p + 2 * t)) << 16);
      return;
    }
    case QuantKind::kF16: {
      const uint8_t* p = w.data + 2 * (r * w.k + c0);
#ifdef ADAPTKIT_X86
      if (simd && g_has_f16c) {
        f16_f16c(p, len, dst);
        return;
      }
#endif
      for (int64_t t = 0; t < len; t++) dst[t] = half_to_float(u16(p + 2 * t));
      return;
    }
    case QuantKind::kBnb4: {
      // blocks run over the flattened tensor, so a chunk may start or end inside one
#ifdef ADAPTKIT_X86
      if (simd && g_has_avx2) {
        bnb4_range_avx2(w, r * w.k + c0, r * w.k + c0 + len, dst);
        return;
      }
#endif
      int64_t i = r * w.k + c0;
      const int64_t end = i + len;
      float* o = dst;
      while (i < end) {
        const int64_t blk = i / w.blocksize;
        const int64_t stop = std::min(end, (blk + 1) * w.blocksize);
        const float s = w.absmax[blk];
        for (; i < stop; i++) {
          const uint8_t byte = w.data[i >> 1];
          *o++ = w.code[(i & 1) ? (byte & 15) : (byte >> 4)] * s;
        }
      }
      return;
    }
  }
}

// acc[i] += sum_t x[i * ldx + t] * w[t] for the M activation rows.
using DotFn = void (*)(const float* w, int64_t len, const float* x, int64_t ldx, float* acc);

template <int M>
void dots_generic(const float* w, int64_t len, const float* x, int64_t ldx, float* acc) {
  for (int i = 0; i < M; i++) {
    const float* xi = x + i * ldx;
    float s[4] = {0, 0, 0, 0};
    int64_t t = 0;
    for (; t + 4 <= len; t += 4)
      for (int l = 0; l < 4; l++) s[l] += xi[t + l] * w[t + l];
    for (; t < len; t++) s[0] += xi[t] * w[t];
    acc[i] += (s[0] + s[1]) + (s[2] + s[3]);
  }
}

#ifdef ADAPTKIT_X86
template <int M>
__attribute__((target("avx2,fma"))) void dots_avx2(const float* w, int64_t len, const float* x, int64_t ldx, float* acc) {
  __m256 s[M];
  for (int i = 0; i < M; i++) s[i] = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    const __m256 wv = _mm256_loadu_ps(w + t);
    for (int i = 0; i < M; i++) s[i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * ldx + t), wv, s[i]);
  }
  for (int i = 0; i < M; i++) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s[i]), _mm256_extractf128_ps(s[i], 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    float r = _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
    for (int64_t u = t; u < len; u++) r += x[i * ldx + u] * w[u];
    acc[i] += r;
  }
}

template <int M>
__attribute__((target("avx512f"))) void dots_avx512(const float* w, int64_t len, const float* x, int64_t ldx, float* acc) {
  __m512 s[M];
  for (int i = 0; i < M; i++) s[i] = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) {
    const __m512 wv = _mm512_loadu_ps(w + t);
    for (int i = 0; i < M; i++) s[i] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * ldx + t), wv, s[i]);
  }
  if (t < len) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (len - t)) - 1);
    const __m512 wv = _mm512_maskz_loadu_ps(mask, w + t);
    for (int i = 0; i < M; i++) s[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + i * ldx + t), wv, s[i]);
  }
  // through memory: GCC 12's 512-bit extract intrinsics trip -Wuninitialized in its own header
  alignas(64) float lanes[16];
  for (int i = 0; i < M; i++) {
    _mm512_store_ps(lanes, s[i]);
    float r = 0;
    for (int l = 0; l < 16; l++) r += lanes[l];
    acc[i] += r;
  }
}
#endif

#define AK_DOT_TABLE(fn) {nullptr, fn<1>, fn<2>, fn<3>, fn<4>, fn<5>, fn<6>, fn<7>, fn<8>}
const DotFn kDotGeneric[GEMV_MAX_M + 1] = AK_DOT_TABLE(dots_generic);
#ifdef ADAPTKIT_X86
const DotFn kDotAvx2[GEMV_MAX_M + 1] = AK_DOT_TABLE(dots_avx2);
const DotFn kDotAvx512[GEMV_MAX_M + 1] = AK_DOT_TABLE(dots_avx512);
#endif

bool simd_decode() { return std::strcmp(gemm_kernel_name(), "generic") != 0; }

DotFn dot_kernel(int64_t m) {
#ifdef ADAPTKIT_X86
  const char* name = gemm_kernel_name();
  if (std::strcmp(name, "avx512") == 0) return kDotAvx512[m];
  if (std::strcmp(name, "avx2") == 0) return kDotAvx2[m];
#endif
  return kDotGeneric[m];
}

// Tasks of whole rows (or column slices): a few per thread so dynamic claiming balances, one when
// the matrix is too small to share.
int task_count(int64_t units, int64_t values) {
  const int nt = ThreadPool::instance().threads();
  if (nt <= 1 || values < MIN_PARALLEL_VALUES || units <= 1) return 1;
  return static_cast<int>(std::min<int64_t>(units, 4 * static_cast<int64_t>(nt)));
}

template <class F>
void run_tasks(int tasks, F&& f) {
  if (tasks > 1) ThreadPool::instance().parallel_for(tasks, f);
  else f(0, 0);
}

thread_local std::vector<float> tl_tile;
thread_local std::vector<float> tl_part;

float* buffer(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

void forward_gemv(const QuantWeight& w, const float* x, int64_t m, float* out) {
  const bool simd = simd_decode();
  const DotFn dot = dot_kernel(m);
  const int64_t n = w.n, k = w.k;
  const int tasks = task_count(n, n * k);
  run_tasks(tasks, [&](int t, int) {
    const int64_t r0 = t * n / tasks, r1 = (t + 1) * n / tasks;
    alignas(64) float chunk[CH];
    float acc[GEMV_MAX_M];
    for (int64_t r = r0; r < r1; r++) {
      std::fill(acc, acc + m, 0.0f);
      for (int64_t c0 = 0; c0 < k; c0 += CH) {
        const int64_t len = std::min(CH, k - c0);
        decode(w, r, c0, len, chunk, simd);
        dot(chunk, len, x + c0, k, acc);
      }
      for (int64_t i = 0; i < m; i++) out[i * n + r] = acc[i];
    }
  });
}

void forward_tiled(const QuantWeight& w, const float* x, int64_t m, float* out) {
  const bool simd = simd_decode();
  const int64_t n = w.n, k = w.k;
  const int64_t rows = std::max<int64_t>(1, std::min(n, TILE_VALUES / k));
  const int64_t ntiles = (n + rows - 1) / rows;
  const int tasks = task_count(ntiles, n * k);
  run_tasks(tasks, [&](int t, int) {
    float* tile = buffer(tl_tile, rows * k);
    float* part = buffer(tl_part, m * rows);
    for (int64_t b = t * ntiles / tasks; b < (t + 1) * ntiles / tasks; b++) {
      const int64_t r0 = b * rows, nr = std::min(rows, n - r0);
      for (int64_t r = 0; r < nr; r++) decode(w, r0 + r, 0, k, tile + r * k, simd);
      GemmArgs g{x, tile, part, m, nr, k, k, k, false, true, false};
      sgemm(g, false);
      for (int64_t i = 0; i < m; i++) std::memcpy(out + i * n + r0, part + i * nr, static_cast<size_t>(nr) * sizeof(float));
    }
  });
}

void transposed(const QuantWeight& w, const float* x, int64_t m, float* out) {
  const bool simd = simd_decode();
  const int64_t n = w.n, k = w.k;
  // column slices of CH (block-aligned for q8_0 / q4_0) unless the row is shorter
  const int64_t cw = std::min(CH, k);
  const int64_t slices = (k + cw - 1) / cw;
  const int64_t rows = std::max<int64_t>(1, std::min(n, TILE_VALUES / cw));
  const int tasks = task_count(slices, n * k);
  run_tasks(tasks, [&](int t, int) {
    float* tile = buffer(tl_tile, rows * cw);
    float* part = buffer(tl_part, m * cw);
    for (int64_t s = t * slices / tasks; s < (t + 1) * slices / tasks; s++) {
      const int64_t c0 = s * cw, len = std::min(cw, k - c0);
      for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t nr = std::min(rows, n - r0);
        for (int64_t r = 0; r < nr; r++) decode(w, r0 + r, c0, len, tile + r * len, simd);
        // part [m, len] (+)= dy[:, r0:r0+nr] · tile [nr, len], dy's columns read in place
        GemmArgs g{x + r0, tile, part, m, len, nr, n, len, false, false, r0 > 0};
        sgemm(g, false);
      }
      for (int64_t i = 0; i < m; i++) std::memcpy(out + i * k + c0, part + i * len, static_cast<size_t>(len) * sizeof(float));
    }
  });
}

}  // namespace

void quant_matmul(const QuantWeight& w, const float* x, int64_t m, float* out, bool transpose) {
  switch (w.kind) {
    case QuantKind::kQ8_0:
    case QuantKind::kQ4_0:
      if (w.k % 32 != 0) throw KernelError("a q8_0 / q4_0 row length must be a multiple of 32, got " + std::to_string(w.k));
      break;
    case QuantKind::kBf16:
    case QuantKind::kF16:
      break;
    case QuantKind::kBnb4:
      if (w.blocksize <= 0 || !w.absmax || !w.code) throw KernelError("a 4-bit weight needs its absmax, code and blocksize");
      break;
    default:
      throw KernelError("unknown packed format " + std::to_string(static_cast<int>(w.kind)));
  }
  if (w.n < 0 || w.k < 0 || m < 0) throw KernelError("negative dimension");
  const int64_t outs = transpose ? m * w.k : m * w.n;
  if (m == 0 || w.n == 0 || w.k == 0) {
    std::fill(out, out + outs, 0.0f);
    return;
  }
  if (transpose) transposed(w, x, m, out);
  else if (m <= GEMV_MAX_M) forward_gemv(w, x, m, out);
  else forward_tiled(w, x, m, out);
}

}  // namespace adaptkit
