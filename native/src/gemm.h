#pragma once
#include <cstdint>

namespace adaptkit {

// C[m x n] (+)= op(A)[m x k] * op(B)[k x n], C row-major with ldc = n.
// op(A)(i, p) = trans_a ? a[p*lda + i] : a[i*lda + p]; likewise for B.
struct GemmArgs {
  const float* a;
  const float* b;
  float* c;
  int64_t m, n, k, lda, ldb;
  bool trans_a, trans_b, accumulate;
};

// threads: use the pool (true) or only the calling thread (false).
void sgemm(const GemmArgs& g, bool threads);

// Batched: batch GEMMs with element strides between consecutive A, B and C matrices.
void sgemm_batched(const GemmArgs& g, int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c);

// Name of the micro-kernel chosen at run time: "avx512", "avx2" or "generic".
const char* gemm_kernel_name();
// Force a kernel ("avx512" | "avx2" | "generic"); returns false if the CPU lacks it.
bool gemm_set_kernel(const char* name);

// GFLOP/s of a register-only FMA loop on `threads` threads at once (the machine's peak).
double fma_peak_gflops(int threads, double seconds);

}  // namespace adaptkit
