// ops/elementwise.cpp — the small per-token ops: RMSNorm, rotary embedding, SwiGLU, residual add,
// softmax, exp, and the backward passes of RMSNorm, RoPE, SwiGLU and bias. Plain loops (the
// compiler vectorises the independent ones); the exp-bound ops (swiglu, softmax, exp) dispatch to
// elementwise_avx512.cpp / elementwise_avx2.cpp (one body in elementwise_simd.h) when the CPU has
// them, and keep their std::exp loops as *_ref. The RMSNorm and SwiGLU backward kernels are in
// elementwise_backward_avx2.cpp; the drivers here split them over OpenMP threads.
#include "ops/elementwise.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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
// elementwise_backward_avx2.cpp
float rmsnorm_backward_row_avx2(const float* x, const float* w, const float* dy, float* dx,
                                int64_t C, float eps);
void rmsnorm_backward_dw_avx2(const float* x, const float* dy, const float* r, float* dw,
                              int64_t rows, int64_t C, int64_t c0, int64_t c1);
void swiglu_backward_avx2(const float* gate, const float* up, const float* dout, float* dgate,
                          float* dup, int64_t n);
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

// ---- Backward passes ----

namespace {

// Work below this many elements runs on one thread (an OpenMP fork costs a few microseconds).
constexpr int64_t kParallelMin = int64_t(1) << 15;

// Plain-loop RMSNorm row (double sums): dx += r·(w∘dy) − x·r³·mean(x∘w∘dy); returns r.
float rmsnorm_backward_row_scalar(const float* x, const float* w, const float* dy, float* dx,
                                  int64_t C, float eps) {
  double ss = 0.0, dot = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    ss += double(x[c]) * double(x[c]);
    dot += double(x[c]) * double(w[c]) * double(dy[c]);
  }
  const double r = 1.0 / std::sqrt(ss / double(C) + double(eps));
  const double coef = r * r * r * dot / double(C);
  for (int64_t c = 0; c < C; ++c)
    dx[c] += float(r * double(w[c]) * double(dy[c]) - double(x[c]) * coef);
  return float(r);
}

void rmsnorm_backward_dw_scalar(const float* x, const float* dy, const float* r, float* dw,
                                int64_t rows, int64_t C, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    float acc = 0.0f;
    for (int64_t row = 0; row < rows; ++row) acc += dy[row * C + c] * r[row] * x[row * C + c];
    dw[c] += acc;
  }
}

}  // namespace

void rmsnorm_backward_ref(const float* x, const float* w, const float* dy, float* dx, float* dw,
                          int64_t rows, int64_t C, float eps) {
  std::vector<double> dw_acc(dw ? size_t(C) : 0, 0.0);
  for (int64_t row = 0; row < rows; ++row) {
    const float* xr = x + row * C;
    const float* dyr = dy + row * C;
    const float r = rmsnorm_backward_row_scalar(xr, w, dyr, dx + row * C, C, eps);
    if (dw)
      for (int64_t c = 0; c < C; ++c) dw_acc[size_t(c)] += double(dyr[c]) * double(xr[c]) * r;
  }
  if (dw)
    for (int64_t c = 0; c < C; ++c) dw[c] += float(dw_acc[size_t(c)]);
}

void rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                      int64_t rows, int64_t C, float eps) {
  if (rows <= 0 || C <= 0) return;
  const bool avx2 = cpu_features().avx2;
  const auto row_fn = avx2 ? detail::rmsnorm_backward_row_avx2 : rmsnorm_backward_row_scalar;
  const auto dw_fn = avx2 ? detail::rmsnorm_backward_dw_avx2 : rmsnorm_backward_dw_scalar;
  const bool par = rows * C >= kParallelMin && rows > 1;
  std::vector<float> r(static_cast<size_t>(rows));
  // Pass 1, rows split over threads: dx and the per-row r.
#pragma omp parallel for schedule(static) if (par)
  for (int64_t row = 0; row < rows; ++row)
    r[size_t(row)] = row_fn(x + row * C, w, dy + row * C, dx + row * C, C, eps);
  if (!dw) return;
  // Pass 2, columns split over threads in blocks of 64: every column sums its rows in order.
  const int64_t n_blocks = (C + 63) / 64;
#pragma omp parallel for schedule(static) if (par && n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; ++b)
    dw_fn(x, dy, r.data(), dw, rows, C, b * 64, std::min(C, b * 64 + 64));
}

void rope_apply_backward(float* dx, int64_t T, int64_t n_heads, int64_t D, const int32_t* positions,
                         const float* cos_tab, const float* sin_tab) {
  const int64_t half = D / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos_tab + int64_t(positions[t]) * half;
    const float* s = sin_tab + int64_t(positions[t]) * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* a = dx + (t * n_heads + h) * D;  // first half
      float* b = a + half;                    // second half
      for (int64_t i = 0; i < half; ++i) {
        const float g1 = a[i], g2 = b[i];
        a[i] = g1 * c[i] + g2 * s[i];
        b[i] = g2 * c[i] - g1 * s[i];
      }
    }
  }
}

void swiglu_backward_ref(const float* gate, const float* up, const float* dout, float* dgate,
                         float* dup, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float s = 1.0f / (1.0f + std::exp(-g));
    dup[i] += dout[i] * (g * s);
    dgate[i] += dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
  }
}

void swiglu_backward(const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup, int64_t n) {
  const auto fn = cpu_features().avx2 ? detail::swiglu_backward_avx2 : swiglu_backward_ref;
  constexpr int64_t kBlock = 8192;  // elements per task (a multiple of the vector width)
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t i0 = b * kBlock, m = std::min(kBlock, n - i0);
    fn(gate + i0, up + i0, dout + i0, dgate + i0, dup + i0, m);
  }
}

void bias_backward(const float* dy, float* db, int64_t rows, int64_t N) {
  constexpr int64_t kCols = 256;  // columns per task; each sums its rows in order
  const int64_t n_blocks = (N + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (rows * N >= kParallelMin && n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = b * kCols, nc = std::min(kCols, N - c0);
    float acc[kCols];
    for (int64_t c = 0; c < nc; ++c) acc[c] = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = dy + r * N + c0;
      for (int64_t c = 0; c < nc; ++c) acc[c] += row[c];
    }
    for (int64_t c = 0; c < nc; ++c) db[c0 + c] += acc[c];
  }
}

}  // namespace qwen::ops
