// Packed, register-blocked SGEMM (the GotoBLAS/BLIS structure): B is packed once per (jc, pc)
// block into NR-wide panels shared by all threads, each thread packs its own MC x KC block of A
// into MR-tall panels, and a micro-kernel keeps an MR x NR tile of C in registers.
#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "threadpool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define ADAPTKIT_X86 1
#endif

namespace adaptkit {

namespace {

struct KernelInfo {
  const char* name;
  int mr, nr;
  // C tile (mr x nr, row stride ldc) = (accumulate ? C : 0) + Apanel * Bpanel over kc.
  void (*kernel)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate);
};

// ---------- generic (portable C++, auto-vectorized) ----------
constexpr int GMR = 4, GNR = 16;
void kernel_generic(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool acc) {
  float t[GMR][GNR] = {};
  for (int64_t p = 0; p < kc; p++) {
    for (int i = 0; i < GMR; i++) {
      const float av = a[p * GMR + i];
      for (int j = 0; j < GNR; j++) t[i][j] += av * b[p * GNR + j];
    }
  }
  for (int i = 0; i < GMR; i++)
    for (int j = 0; j < GNR; j++) c[i * ldc + j] = acc ? c[i * ldc + j] + t[i][j] : t[i][j];
}

#ifdef ADAPTKIT_X86
// ---------- AVX2 + FMA: 6 x 16 ----------
__attribute__((target("avx2,fma"))) void kernel_avx2(int64_t kc, const float* a, const float* b, float* c,
                                                     int64_t ldc, bool acc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t p = 0; p < kc; p++) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 av = _mm256_broadcast_ss(a + 0);
    c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
    a += 6;
    b += 16;
  }
  __m256 r[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < 6; i++) {
    for (int j = 0; j < 2; j++) {
      float* dst = c + i * ldc + j * 8;
      __m256 v = r[i][j];
      if (acc) v = _mm256_add_ps(v, _mm256_loadu_ps(dst));
      _mm256_storeu_ps(dst, v);
    }
  }
}

// ---------- AVX-512: MR x (16*NV) (MR*NV accumulators, NV B vectors, A broadcast) ----------
template <int MR, int NV>
__attribute__((target("avx512f"))) void kernel_avx512(int64_t kc, const float* a, const float* b, float* c,
                                                       int64_t ldc, bool acc) {
  constexpr int NR = 16 * NV;
  __m512 r[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) r[i][j] = _mm512_setzero_ps();
  // the C tile is needed only at the end: start fetching it now so the stores do not stall
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16 * j), _MM_HINT_T0);
#pragma GCC unroll 2
  for (int64_t p = 0; p < kc; p++) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) bv[j] = _mm512_loadu_ps(b + 16 * j);
    _mm_prefetch(reinterpret_cast<const char*>(b + NR * 8), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(a + MR * 8), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
      const __m512 av = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; j++) r[i][j] = _mm512_fmadd_ps(av, bv[j], r[i][j]);
    }
    a += MR;
    b += NR;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) {
      float* dst = c + i * ldc + 16 * j;
      __m512 v = r[i][j];
      if (acc) v = _mm512_add_ps(v, _mm512_loadu_ps(dst));
      _mm512_storeu_ps(dst, v);
    }
  }
}
#endif

const KernelInfo kGeneric{"generic", GMR, GNR, kernel_generic};
#ifdef ADAPTKIT_X86
const KernelInfo kAvx2{"avx2", 6, 16, kernel_avx2};
#ifndef ADAPTKIT_AVX512_MR
#define ADAPTKIT_AVX512_MR 8
#endif
#ifndef ADAPTKIT_AVX512_NV
#define ADAPTKIT_AVX512_NV 2
#endif
const KernelInfo kAvx512{"avx512", ADAPTKIT_AVX512_MR, 16 * ADAPTKIT_AVX512_NV,
                         kernel_avx512<ADAPTKIT_AVX512_MR, ADAPTKIT_AVX512_NV>};
#endif

const KernelInfo* detect() {
#ifdef ADAPTKIT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return &kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &kAvx2;
#endif
  return &kGeneric;
}

const KernelInfo* g_kernel = detect();

#ifndef ADAPTKIT_KC
#define ADAPTKIT_KC 256
#endif
constexpr int64_t KC = ADAPTKIT_KC;
#ifndef ADAPTKIT_MC
#define ADAPTKIT_MC 112
#endif
constexpr int64_t MC_TARGET = ADAPTKIT_MC;  // rows of A per task (a multiple of MR is chosen below)
constexpr int64_t NC = 3072;

float* aligned_buffer(std::vector<float>& v, size_t n) {
  if (v.size() < n + 16) v.resize(n + 16);
  uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

#ifdef ADAPTKIT_X86
const bool g_has_avx2 = __builtin_cpu_supports("avx2");
alignas(64) const float kZeros[ADAPTKIT_KC] = {};

// Transposed B panel: nr rows of B (each contiguous in k) become kc lines of nr values. Rows past
// the edge read zeros. Eight rows x eight k-steps are moved at a time through an 8x8 register transpose.
__attribute__((target("avx2"))) void pack_bt_avx2(const GemmArgs& g, int64_t pc, int64_t kc, int64_t j,
                                                 int64_t nr, int64_t cols, float* dst) {
  const float* rows[64];
  for (int64_t q = 0; q < nr; q++) rows[q] = q < cols ? g.b + (j + q) * g.ldb + pc : kZeros;
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) {
    for (int64_t q = 0; q < nr; q += 8) {
      const __m256 r0 = _mm256_loadu_ps(rows[q] + p), r1 = _mm256_loadu_ps(rows[q + 1] + p);
      const __m256 r2 = _mm256_loadu_ps(rows[q + 2] + p), r3 = _mm256_loadu_ps(rows[q + 3] + p);
      const __m256 r4 = _mm256_loadu_ps(rows[q + 4] + p), r5 = _mm256_loadu_ps(rows[q + 5] + p);
      const __m256 r6 = _mm256_loadu_ps(rows[q + 6] + p), r7 = _mm256_loadu_ps(rows[q + 7] + p);
      const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
      const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
      const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
      const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
      float* d = dst + p * nr + q;
      _mm256_storeu_ps(d + 0 * nr, _mm256_permute2f128_ps(s0, s4, 0x20));
      _mm256_storeu_ps(d + 1 * nr, _mm256_permute2f128_ps(s1, s5, 0x20));
      _mm256_storeu_ps(d + 2 * nr, _mm256_permute2f128_ps(s2, s6, 0x20));
      _mm256_storeu_ps(d + 3 * nr, _mm256_permute2f128_ps(s3, s7, 0x20));
      _mm256_storeu_ps(d + 4 * nr, _mm256_permute2f128_ps(s0, s4, 0x31));
      _mm256_storeu_ps(d + 5 * nr, _mm256_permute2f128_ps(s1, s5, 0x31));
      _mm256_storeu_ps(d + 6 * nr, _mm256_permute2f128_ps(s2, s6, 0x31));
      _mm256_storeu_ps(d + 7 * nr, _mm256_permute2f128_ps(s3, s7, 0x31));
    }
  }
  for (; p < kc; p++)
    for (int64_t q = 0; q < nr; q++) dst[p * nr + q] = rows[q][p];
}
#endif

// Pack op(B)[pc:pc+kc, jc+j0 : jc+j0+nr*panels] into NR-wide panels (zero-padded).
void pack_b_panel(const GemmArgs& g, int64_t pc, int64_t kc, int64_t j, int64_t nr, float* dst) {
  const int64_t cols = std::min<int64_t>(nr, g.n - j);
  if (!g.trans_b) {
    for (int64_t p = 0; p < kc; p++) {
      const float* src = g.b + (pc + p) * g.ldb + j;
      float* d = dst + p * nr;
      std::memcpy(d, src, cols * sizeof(float));
      for (int64_t q = cols; q < nr; q++) d[q] = 0.f;
    }
  } else {
#ifdef ADAPTKIT_X86
    if (g_has_avx2 && nr % 8 == 0) {
      pack_bt_avx2(g, pc, kc, j, nr, cols, dst);
      return;
    }
#endif
    // B is stored transposed: gather nr rows of it, 8 k-steps at a time, writing whole lines
    const float* rows[64];
    for (int64_t q = 0; q < nr; q++) rows[q] = q < cols ? g.b + (j + q) * g.ldb + pc : nullptr;
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
      for (int64_t q = 0; q < nr; q++) {
        if (!rows[q]) {
          for (int u = 0; u < 8; u++) dst[(p + u) * nr + q] = 0.f;
          continue;
        }
        const float* src = rows[q] + p;
        for (int u = 0; u < 8; u++) dst[(p + u) * nr + q] = src[u];
      }
    }
    for (; p < kc; p++)
      for (int64_t q = 0; q < nr; q++) dst[p * nr + q] = rows[q] ? rows[q][p] : 0.f;
  }
}

// Pack op(A)[i0:i0+mc, pc:pc+kc] into MR-tall panels (zero-padded).
void pack_a_block(const GemmArgs& g, int64_t i0, int64_t mc, int64_t pc, int64_t kc, int64_t mr, float* dst) {
  for (int64_t ip = 0; ip < mc; ip += mr) {
    const int64_t rows = std::min<int64_t>(mr, mc - ip);
    float* d = dst + ip * kc;
    if (!g.trans_a) {
      for (int64_t r = 0; r < rows; r++) {
        const float* src = g.a + (i0 + ip + r) * g.lda + pc;
        for (int64_t p = 0; p < kc; p++) d[p * mr + r] = src[p];
      }
    } else {
      for (int64_t p = 0; p < kc; p++) {
        const float* src = g.a + (pc + p) * g.lda + i0 + ip;
        std::memcpy(d + p * mr, src, rows * sizeof(float));
      }
    }
    for (int64_t r = rows; r < mr; r++)
      for (int64_t p = 0; p < kc; p++) d[p * mr + r] = 0.f;
  }
}

thread_local std::vector<float> tl_apack;
thread_local std::vector<float> tl_bpack;

// One MC x NC block of C against packed A (mc rows) and packed B (nc columns).
void macro_kernel(const KernelInfo& K, const GemmArgs& g, int64_t i0, int64_t mc, int64_t j0, int64_t nc, int64_t kc,
                  const float* apack, const float* bpack, bool acc) {
  const int mr = K.mr, nr = K.nr;
  float edge[32 * 64];
  for (int64_t jp = 0; jp < nc; jp += nr) {
    const int64_t cols = std::min<int64_t>(nr, nc - jp);
    const float* bp = bpack + jp * kc;
    for (int64_t ip = 0; ip < mc; ip += mr) {
      const int64_t rows = std::min<int64_t>(mr, mc - ip);
      const float* ap = apack + ip * kc;
      float* cp = g.c + (i0 + ip) * g.n + j0 + jp;
      if (rows == mr && cols == nr) {
        K.kernel(kc, ap, bp, cp, g.n, acc);
      } else {
        K.kernel(kc, ap, bp, edge, nr, false);
        for (int64_t r = 0; r < rows; r++)
          for (int64_t q = 0; q < cols; q++)
            cp[r * g.n + q] = acc ? cp[r * g.n + q] + edge[r * nr + q] : edge[r * nr + q];
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define AK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AK_CLONES
#endif

// c[0:n] += alpha * b[0:n]
AK_CLONES void axpy_row(float alpha, const float* __restrict b, float* __restrict c, int64_t n) {
  for (int64_t j = 0; j < n; j++) c[j] += alpha * b[j];
}

// four dot products of a against b0..b3 (length k)
AK_CLONES void dot4(const float* __restrict a, const float* __restrict b0, const float* __restrict b1,
                    const float* __restrict b2, const float* __restrict b3, int64_t k, float* out) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t p = 0; p < k; p++) {
    s0 += a[p] * b0[p];
    s1 += a[p] * b1[p];
    s2 += a[p] * b2[p];
    s3 += a[p] * b3[p];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

AK_CLONES float dot1(const float* __restrict a, const float* __restrict b, int64_t k) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t p = 0; p < k; p++) s += a[p] * b[p];
  return s;
}

constexpr int64_t kSmallM = 4;

// Few rows (decoding): no packing, B streamed once, work split over columns of C.
void gemm_small_m(const GemmArgs& g, bool threads) {
  // rows of op(A), contiguous
  std::vector<float> arows(static_cast<size_t>(g.m * g.k));
  for (int64_t i = 0; i < g.m; i++)
    for (int64_t p = 0; p < g.k; p++) arows[i * g.k + p] = g.trans_a ? g.a[p * g.lda + i] : g.a[i * g.lda + p];
  const float* A = arows.data();
  ThreadPool& pool = ThreadPool::instance();
  const int nt = threads ? pool.threads() : 1;
  const int64_t chunk = std::max<int64_t>(64, ((g.n + 8 * nt - 1) / (8 * nt) + 15) / 16 * 16);
  const int tasks = static_cast<int>((g.n + chunk - 1) / chunk);
  auto work = [&](int t, int) {
    const int64_t j0 = t * chunk, j1 = std::min<int64_t>(g.n, j0 + chunk);
    if (!g.trans_b) {
      for (int64_t i = 0; i < g.m; i++) {
        float* c = g.c + i * g.n + j0;
        if (!g.accumulate) std::memset(c, 0, (j1 - j0) * sizeof(float));
        for (int64_t p = 0; p < g.k; p++) axpy_row(A[i * g.k + p], g.b + p * g.ldb + j0, c, j1 - j0);
      }
    } else {
      // four rows of B at a time stay in L1 while every row of A meets them: B is read from memory once
      int64_t j = j0;
      float d[4];
      for (; j + 4 <= j1; j += 4) {
        for (int64_t i = 0; i < g.m; i++) {
          float* c = g.c + i * g.n;
          dot4(A + i * g.k, g.b + j * g.ldb, g.b + (j + 1) * g.ldb, g.b + (j + 2) * g.ldb, g.b + (j + 3) * g.ldb, g.k, d);
          for (int q = 0; q < 4; q++) c[j + q] = g.accumulate ? c[j + q] + d[q] : d[q];
        }
      }
      for (; j < j1; j++) {
        for (int64_t i = 0; i < g.m; i++) {
          const float v = dot1(A + i * g.k, g.b + j * g.ldb, g.k);
          g.c[i * g.n + j] = g.accumulate ? g.c[i * g.n + j] + v : v;
        }
      }
    }
  };
  if (nt > 1 && tasks > 1) pool.parallel_for(tasks, work);
  else for (int t = 0; t < tasks; t++) work(t, 0);
}

thread_local std::vector<float> tl_ashared;

// Moderate M (up to a few hundred rows): A is small, so it is packed once up front, and the work is
// split over column slices of C. Each task packs its own slice of B and uses it at once, so packing
// overlaps with the other threads' compute and no barrier separates the two.
void gemm_column_slices(const KernelInfo& K, const GemmArgs& g, bool threads) {
  const int64_t mr = K.mr, nr = K.nr;
  const int64_t pm = (g.m + mr - 1) / mr;
  const int64_t npc = (g.k + KC - 1) / KC;
  // packed A: for each pc block, pm panels of kc x mr
  float* apack = aligned_buffer(tl_ashared, static_cast<size_t>(pm * mr * g.k));
  for (int64_t b = 0; b < npc; b++) {
    const int64_t pc = b * KC, kc = std::min<int64_t>(KC, g.k - pc);
    pack_a_block(g, 0, g.m, pc, kc, mr, apack + pm * mr * pc);
  }
  ThreadPool& pool = ThreadPool::instance();
  const int nt = threads ? pool.threads() : 1;
  const int64_t npanels = (g.n + nr - 1) / nr;
  int64_t per = std::max<int64_t>(1, std::min<int64_t>(8, npanels / (4 * nt)));
  const int tasks = static_cast<int>((npanels + per - 1) / per);
  auto work = [&](int t, int) {
    const int64_t p0 = t * per, p1 = std::min<int64_t>(npanels, p0 + per);
    const int64_t j0 = p0 * nr;
    const int64_t cols = std::min<int64_t>(g.n, p1 * nr) - j0;
    float* bpack = aligned_buffer(tl_bpack, static_cast<size_t>((p1 - p0) * nr * KC));
    for (int64_t b = 0; b < npc; b++) {
      const int64_t pc = b * KC, kc = std::min<int64_t>(KC, g.k - pc);
      for (int64_t q = p0; q < p1; q++) pack_b_panel(g, pc, kc, q * nr, nr, bpack + (q - p0) * nr * kc);
      macro_kernel(K, g, 0, g.m, j0, cols, kc, apack + pm * mr * pc, bpack, g.accumulate || pc > 0);
    }
  };
  if (nt > 1 && tasks > 1) pool.parallel_for(tasks, work);
  else for (int t = 0; t < tasks; t++) work(t, 0);
}

void sgemm_impl(const GemmArgs& g, bool threads) {
  const KernelInfo& K = *g_kernel;
  if (g.m > 0 && g.m <= kSmallM && g.n > 0 && g.k > 0) {
    gemm_small_m(g, threads);
    return;
  }
  if (g.m > 0 && g.m <= 256 && g.n >= 256 && g.k > 0) {
    gemm_column_slices(K, g, threads);
    return;
  }
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k <= 0) {
    if (!g.accumulate)
      for (int64_t i = 0; i < g.m; i++) std::memset(g.c + i * g.n, 0, g.n * sizeof(float));
    return;
  }
  ThreadPool& pool = ThreadPool::instance();
  const int nt = threads ? pool.threads() : 1;
  const int64_t mr = K.mr, nr = K.nr;
  // rows per task: a multiple of MR near MC_TARGET, smaller when M is small so every thread has work
  // M is cut into tasks of whole MR panels, evenly (sizes differ by at most one panel), at most
  // MC_TARGET rows each and a multiple of the thread count, so dynamic claiming balances well
  const int64_t pm = (g.m + mr - 1) / mr;
  int64_t mtasks = std::max<int64_t>(1, (pm * mr + MC_TARGET - 1) / MC_TARGET);
  if (nt > 1) mtasks = std::min<int64_t>(pm, ((mtasks + nt - 1) / nt) * nt);
  auto m_panel = [&](int64_t t) { return t * pm / mtasks; };
  // split N too when M alone cannot feed the threads
  int64_t nsplit = 1;
  const int64_t npanels = (g.n + nr - 1) / nr;
  while (mtasks * nsplit < 2 * nt && nsplit < npanels) nsplit++;
  const int64_t max_rows = ((pm + mtasks - 1) / mtasks) * mr;
  for (int64_t jc = 0; jc < g.n; jc += NC) {
    const int64_t nc = std::min<int64_t>(NC, g.n - jc);
    const int64_t ncp = ((nc + nr - 1) / nr) * nr;
    for (int64_t pc = 0; pc < g.k; pc += KC) {
      const int64_t kc = std::min<int64_t>(KC, g.k - pc);
      const bool acc = g.accumulate || pc > 0;
      float* bpack = aligned_buffer(tl_bpack, ncp * kc);
      const int64_t panels = ncp / nr;
      auto packb = [&](int t, int) {
        const int64_t per = (panels + 3) / 4;
        for (int64_t q = t * per; q < std::min<int64_t>(panels, (t + 1) * per); q++)
          pack_b_panel(g, pc, kc, jc + q * nr, nr, bpack + q * nr * kc);
      };
      if (nt > 1 && panels >= 8) pool.parallel_for(4, packb);
      else for (int t = 0; t < 4; t++) packb(t, 0);

      const int64_t panels_per_split = (panels + nsplit - 1) / nsplit;
      auto compute = [&](int task, int) {
        const int64_t it = task / nsplit, js = task % nsplit;
        const int64_t i0 = m_panel(it) * mr;
        const int64_t rows = std::min<int64_t>(m_panel(it + 1) * mr, g.m) - i0;
        if (rows <= 0) return;
        const int64_t p0 = js * panels_per_split;
        const int64_t p1 = std::min<int64_t>(panels, p0 + panels_per_split);
        if (p0 >= p1) return;
        const int64_t j0 = p0 * nr;
        const int64_t cols = std::min<int64_t>(nc, p1 * nr) - j0;
        float* apack = aligned_buffer(tl_apack, max_rows * kc);
        pack_a_block(g, i0, rows, pc, kc, mr, apack);
        macro_kernel(K, g, i0, rows, jc + j0, cols, kc, apack, bpack + j0 * kc, acc);
      };
      const int tasks = static_cast<int>(mtasks * nsplit);
      if (nt > 1) pool.parallel_for(tasks, compute);
      else for (int t = 0; t < tasks; t++) compute(t, 0);
    }
  }
}

}  // namespace

void sgemm(const GemmArgs& g, bool threads) { sgemm_impl(g, threads); }

void sgemm_batched(const GemmArgs& g, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  // an empty C makes batch unbounded by any buffer; skip it before it becomes a task count
  if (batch <= 0 || g.m <= 0 || g.n <= 0) return;
  const double flops = 2.0 * g.m * g.n * g.k;
  if (batch <= 1 || flops >= 4e6 || batch > INT_MAX) {
    for (int64_t i = 0; i < batch; i++) {
      GemmArgs gi = g;
      gi.a += i * stride_a;
      gi.b += i * stride_b;
      gi.c += i * stride_c;
      sgemm_impl(gi, true);
    }
    return;
  }
  // many small GEMMs: one per task, each on one thread
  ThreadPool::instance().parallel_for(static_cast<int>(batch), [&](int i, int) {
    GemmArgs gi = g;
    gi.a += i * stride_a;
    gi.b += i * stride_b;
    gi.c += i * stride_c;
    sgemm_impl(gi, false);
  });
}

const char* gemm_kernel_name() { return g_kernel->name; }

bool gemm_set_kernel(const char* name) {
  const KernelInfo* best = detect();
  if (std::strcmp(name, "generic") == 0) { g_kernel = &kGeneric; return true; }
#ifdef ADAPTKIT_X86
  if (std::strcmp(name, "avx2") == 0 && (best == &kAvx2 || best == &kAvx512) &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) { g_kernel = &kAvx2; return true; }
  if (std::strcmp(name, "avx512") == 0 && best == &kAvx512) { g_kernel = &kAvx512; return true; }
#endif
  (void)best;
  return false;
}

// ---------- FMA peak ----------
namespace {
#ifdef ADAPTKIT_X86
__attribute__((target("avx512f"))) double peak_avx512(int64_t iters) {
  __m512 acc[24];
  for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps(1.0f + i * 1e-3f);
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return 24.0 * 16 * 2 * static_cast<double>(iters);
}
__attribute__((target("avx2,fma"))) double peak_avx2(int64_t iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps(1.0f + i * 1e-3f);
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  }
  __m256 s = acc[0];
  for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return 12.0 * 8 * 2 * static_cast<double>(iters);
}
#endif
double peak_generic(int64_t iters) {
  float acc[64];
  for (int i = 0; i < 64; i++) acc[i] = 1.0f + i * 1e-3f;
  for (int64_t it = 0; it < iters; it++)
    for (int i = 0; i < 64; i++) acc[i] = acc[i] * 0.999999f + 1e-7f;
  float s = 0;
  for (int i = 0; i < 64; i++) s += acc[i];
  volatile float sink = s;
  (void)sink;
  return 64.0 * 2 * static_cast<double>(iters);
}

double peak_once(int64_t iters) {
#ifdef ADAPTKIT_X86
  if (std::strcmp(g_kernel->name, "avx512") == 0) return peak_avx512(iters);
  if (std::strcmp(g_kernel->name, "avx2") == 0) return peak_avx2(iters);
#endif
  return peak_generic(iters);
}
}  // namespace

double fma_peak_gflops(int threads, double seconds) {
  ThreadPool& pool = ThreadPool::instance();
  const int nt = std::max(1, std::min(threads, pool.threads()));
  // calibrate the iteration count on one thread
  int64_t iters = 1 << 16;
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    peak_once(iters);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > seconds / 4 || iters > (int64_t(1) << 34)) {
      iters = static_cast<int64_t>(iters * (seconds / std::max(dt, 1e-9)));
      break;
    }
    iters *= 4;
  }
  std::vector<double> flops(nt, 0.0);
  auto t0 = std::chrono::steady_clock::now();
  if (nt == 1) {
    flops[0] = peak_once(iters);
  } else {
    // every task waits until all have started, so the loops really run at the same time
    std::atomic<int> started{0};
    pool.parallel_for(nt, [&](int i, int) {
      started.fetch_add(1);
      while (started.load() < nt) {
      }
      flops[i] = peak_once(iters);
    });
  }
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double total = 0;
  for (double f : flops) total += f;
  return total / dt / 1e9;
}

}  // namespace adaptkit
