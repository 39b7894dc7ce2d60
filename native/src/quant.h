// Products with packed (quantized) weights that never hold an f32 copy of the matrix: blocks are
// decoded into a stack buffer (few activation rows) or a per-thread tile of rows (many) and
// multiplied at once.
#pragma once
#include <cstdint>

namespace adaptkit {

enum class QuantKind : int { kQ8_0 = 0, kQ4_0 = 1, kBf16 = 2, kF16 = 3, kBnb4 = 4 };

struct QuantWeight {
  QuantKind kind;
  // The packed bytes: GGUF blocks (q8_0: 34 bytes, q4_0: 18 bytes per 32 values of a row), 16-bit
  // little-endian patterns (bf16, f16), or two 4-bit codes per byte over the flattened tensor with
  // the even index in the high nibble (bitsandbytes nf4/fp4).
  const uint8_t* data;
  int64_t n, k;  // W is [n, k], row-major
  // bnb4 only: one f32 scale per `blocksize` values of the flattened tensor (nested absmax already
  // decoded by the caller) and the 16 levels a code stands for.
  const float* absmax;
  const float* code;
  int64_t blocksize;
};

// transpose = false: out [m, n] = x [m, k] · Wᵀ; true: out [m, k] = x [m, n] · W. out is overwritten.
// The caller has checked every length; q8_0 / q4_0 need k % 32 == 0.
void quant_matmul(const QuantWeight& w, const float* x, int64_t m, float* out, bool transpose);

}  // namespace adaptkit
