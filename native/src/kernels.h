#pragma once
#include <cstdint>

namespace adaptkit {

enum UnaryOp { U_NEG, U_EXP, U_LOG, U_SQRT, U_TANH, U_SIGMOID, U_RELU, U_GELU, U_GELU_TANH, U_SILU, U_ABS, U_COUNT };
enum BinaryOp { B_ADD, B_SUB, B_MUL, B_DIV, B_MAX, B_MIN, B_EQ, B_NE, B_LT, B_LE, B_GT, B_GE, B_COUNT };

constexpr int kMaxDims = 16;

struct Strided {
  const void* data;
  int64_t offset;
  int64_t strides[kMaxDims];
};

void unary(int op, const float* x, float* out, int64_t n);
void unary_backward(int op, const float* x, const float* y, const float* g, float* out, int64_t n);
// out (contiguous, shape) = a op b over broadcast strided views
void binary(int op, int nd, const int64_t* shape, const Strided& a, const Strided& b, float* out);
void where(int nd, const int64_t* shape, const Strided& c, const Strided& a, const Strided& b, float* out);
// 4-byte elements (f32 or i32), strided to strided
void copy4(int nd, const int64_t* shape, const Strided& src, Strided& dst);
void reduce_sum(const float* x, int64_t outer, int64_t n, int64_t inner, float* out);
void reduce_max(const float* x, int64_t outer, int64_t n, int64_t inner, float* out);
void index_select4(const void* x, int64_t outer, int64_t rows, int64_t inner, const int32_t* idx, int64_t nidx, void* out);
void index_add(const float* src, int64_t outer, int64_t rows, int64_t inner, const int32_t* idx, int64_t nidx, float* out);
void softmax(const float* x, int64_t rows, int64_t cols, float* out, bool log);
void softmax_backward(const float* y, const float* g, int64_t rows, int64_t cols, float* out, bool log);
void rmsnorm(const float* x, const float* w, int64_t rows, int64_t cols, float eps, float* out, float* rstd);
void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* g, int64_t rows, int64_t cols,
                      float* dx, float* dw);
void layernorm(const float* x, const float* w, const float* b, int64_t rows, int64_t cols, float eps, float* out,
               float* mean, float* rstd);
void layernorm_backward(const float* x, const float* w, const float* mean, const float* rstd, const float* g,
                        int64_t rows, int64_t cols, float* dx, float* dw, float* db);
void cross_entropy(const float* logits, const int32_t* targets, int64_t rows, int64_t cols, int32_t ignore,
                   float* loss, float* lse);
void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, int64_t rows, int64_t cols,
                            int32_t ignore, const float* scale, float* dlogits);

struct Attention {
  const float *q, *k, *v;
  int64_t batch, heads, kv_heads, tq, tk, dim;
  float scale;
  bool causal;
  const float* key_mask;  // [batch, tk] or null
  float* out;
  float* lse;
  // backward only
  const float* grad_out;
  float *dq, *dk, *dv;
};
void attention(const Attention& a);
void attention_backward(const Attention& a);
void rope(const float* x, const float* cos, const float* sin, int64_t outer, int64_t t, int64_t d, float* out,
          bool inverse);

}  // namespace adaptkit
