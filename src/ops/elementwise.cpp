// ops/elementwise.cpp — the small per-token ops: RMSNorm, rotary embedding, SwiGLU, residual add,
// softmax, exp. Plain loops (the compiler vectorises the independent ones); the exp-bound ops
// (swiglu, softmax, exp) dispatch to elementwise_avx512.cpp / elementwise_avx2.cpp (one body in
// elementwise_simd.h) when the CPU has them, and keep their std::exp loops as *_ref.
#include "ops/elementwise.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/cpu.h"

namespace qwen::ops {

namespace detail {
// elementwise_avx512.cpp, elementwise_avx2.cpp
void swiglu_avx512(const float* gate, const float* up, float* out, int64_t n);
void softmax_inplace_avx512(float* x, int64_t n);
void exp_f32_avx512(const float* x, float* y, int64_t n);
void swiglu_avx2(const float* gate, const float* up, float* out, int64_t n);
void softmax_inplace_avx2(float* x, int64_t n);
void exp_f32_avx2(const float* x, float* y, int64_t n);
}  // namespace detail

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t C, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    // Mean of squares accumulated in double (Hugging Face reduces in f32; double is at least as
    // close to the exact value), then the f32 steps in HF order: h = x * rsqrt(var + eps); w * h.
    // Four partial sums: independent add chains instead of one.
    double ss4[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 4 <= C; i += 4)
      for (int j = 0; j < 4; ++j) ss4[j] += double(xr[i + j]) * double(xr[i + j]);
    for (; i < C; ++i) ss4[0] += double(xr[i]) * double(xr[i]);
    const double ss = (ss4[0] + ss4[1]) + (ss4[2] + ss4[3]);
    const float var = float(ss / double(C));
    const float inv = float(1.0 / std::sqrt(double(var + eps)));
    for (int64_t c = 0; c < C; ++c) yr[c] = w[c] * (xr[c] * inv);
  }
}

void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, const int32_t* positions,
                const float* cos_tab, const float* sin_tab) {
  const int64_t half = D / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos_tab + int64_t(positions[t]) * half;
    const float* s = sin_tab + int64_t(positions[t]) * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* a = x + (t * n_heads + h) * D;  // first half
      float* b = a + half;                   // second half
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = a[i], x2 = b[i];
        a[i] = x1 * c[i] - x2 * s[i];
        b[i] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

void swiglu_ref(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  const CpuFeatures& cpu = cpu_features();
  if (cpu.avx512)
    detail::swiglu_avx512(gate, up, out, n);
  else if (cpu.avx2)
    detail::swiglu_avx2(gate, up, out, n);
  else
    swiglu_ref(gate, up, out, n);
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void softmax_inplace_ref(float* x, int64_t n) {
  if (n <= 0) return;
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void softmax_inplace(float* x, int64_t n) {
  const CpuFeatures& cpu = cpu_features();
  if (cpu.avx512)
    detail::softmax_inplace_avx512(x, n);
  else if (cpu.avx2)
    detail::softmax_inplace_avx2(x, n);
  else
    softmax_inplace_ref(x, n);
}

void exp_f32_ref(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

void exp_f32(const float* x, float* y, int64_t n) {
  const CpuFeatures& cpu = cpu_features();
  if (cpu.avx512)
    detail::exp_f32_avx512(x, y, n);
  else if (cpu.avx2)
    detail::exp_f32_avx2(x, y, n);
  else
    exp_f32_ref(x, y, n);
}

}  // namespace qwen::ops
