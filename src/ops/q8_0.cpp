// ops/q8_0.cpp — Q8_0 (GGUF 8-bit blocks): gguf-exact quantisation, scalar references, runtime
// dispatch to the AVX2 kernels (q8_0_avx2.cpp), and the shared dequantise-panel matmul driver.
// Registers DType::Q8_0's kernel table for ops/quant.h.
#include "ops/q8_0.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu.h"
#include "ops/matmul.h"
#include "ops/quant.h"
#include "ops/quant_gguf.h"

namespace qwen::ops {

namespace {

// Threads only pay off above this many multiply-adds (fork/join costs microseconds).
constexpr int64_t kParMin = 1 << 16;

inline float block_d(const uint8_t* blk) {
  uint16_t h;
  std::memcpy(&h, blk, 2);
  return f16_to_f32(h);
}

}  // namespace

void q8_0_quantize(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
    const float* x = src + b * kQ8_0Block;
    uint8_t* blk = out + b * int64_t(kQ8_0BlockBytes);
    float amax = 0.0f;
    for (int i = 0; i < kQ8_0Block; ++i) amax = std::max(amax, std::fabs(x[i]));
    // As quants.py: d and its reciprocal in f32; d == 0 gives id = 0 (all codes 0).
    const float d = amax / 127.0f;
    const float id = d == 0.0f ? 0.0f : 1.0f / d;
    const uint16_t dh = f32_to_f16(d);
    std::memcpy(blk, &dh, 2);
    for (int i = 0; i < kQ8_0Block; ++i) {
      // np_roundf: sign(v) · (floor|v| + floor(2·frac)), i.e. round half away from zero.
      const float v = x[i] * id;
      const float a = std::fabs(v), fl = std::floor(a);
      const float r = fl + std::floor(2.0f * (a - fl));
      blk[2 + i] = uint8_t(int8_t(v < 0 ? -r : r));
    }
  }
}

void q8_0_dequantize_ref(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
    const uint8_t* blk = in + b * int64_t(kQ8_0BlockBytes);
    const float d = block_d(blk);
    for (int i = 0; i < kQ8_0Block; ++i) dst[b * kQ8_0Block + i] = d * float(int8_t(blk[2 + i]));
  }
}

void q8_0_dequantize(const void* src, float* dst, int64_t n) {
  if (cpu_features().avx2) return detail::q8_0_dequantize_avx2(src, dst, n);
  q8_0_dequantize_ref(src, dst, n);
}

void q8_0_matvec_ref(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  const auto* w = static_cast<const uint8_t*>(W);
  const int64_t nb = K / kQ8_0Block;
  for (int64_t n = 0; n < N; ++n) {
    float s = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = w + (n * nb + b) * int64_t(kQ8_0BlockBytes);
      float t = 0.0f;
      for (int i = 0; i < kQ8_0Block; ++i) t += float(int8_t(blk[2 + i])) * x[b * kQ8_0Block + i];
      s += block_d(blk) * t;
    }
    y[n] = acc ? y[n] + s : s;
  }
}

void q8_0_matvec(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  // 16-bit activations + integer block sums (falls back to q8_0_matvec_f32 without AVX2).
  gguf::q8_0_matvec_act16(W, x, y, N, K, acc);
}

void q8_0_matvec_f32(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  if (!cpu_features().avx2) return q8_0_matvec_ref(W, x, y, N, K, acc);
  // Static split in chunks of 8 rows: the weight stream is read once, in order, per thread.
  const int64_t n_chunks = (N + 7) / 8;
#pragma omp parallel for schedule(static) if (N * K >= kParMin)
  for (int64_t c = 0; c < n_chunks; ++c)
    detail::q8_0_matvec_rows_avx2(W, x, y, c * 8, std::min(N, c * 8 + 8), K, acc);
}

void q8_0_matmul_ref(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                     bool acc) {
  const size_t row_bytes = dtype_row_bytes(DType::Q8_0, K);
  std::vector<float> w(size_t(K), 0.0f);
  for (int64_t n = 0; n < N; ++n) {
    q8_0_dequantize_ref(static_cast<const uint8_t*>(W) + size_t(n) * row_bytes, w.data(), K);
    for (int64_t m = 0; m < M; ++m) {
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s += X[m * K + k] * w[size_t(k)];
      Y[m * N + n] = acc ? Y[m * N + n] + s : s;
    }
  }
}

static void q8_0_dequant_rows(const void* W, int64_t row0, int64_t n_rows, int64_t K, float* dst) {
  const size_t row_bytes = dtype_row_bytes(DType::Q8_0, K);
  q8_0_dequantize(static_cast<const uint8_t*>(W) + size_t(row0) * row_bytes, dst, n_rows * K);
}

void q8_0_matmul(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc) {
  if (M == 1) return q8_0_matvec(W, X, Y, N, K, acc);
  // Every M on the multi-row integer kernel (AVX2): each row sums as the M = 1 matvec does, so
  // results do not depend on M, and it is faster than dequantise + GEMM at every measured M
  // (docs/kernels.md, "Q8_0 multi-row kernel").
  if (gguf::q8_0_matmul_row_invariant()) return gguf::q8_0_matmul_act16(X, W, Y, M, N, K, acc);
  q8_0_matmul_dequant(X, W, Y, M, N, K, acc);
}

bool q8_0_matmul_row_invariant() { return gguf::q8_0_matmul_row_invariant(); }

void q8_0_matmul_dequant(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                         bool acc) {
  matmul_dequant_panels(X, W, DType::Q8_0, q8_0_dequant_rows, Y, M, N, K, acc);
}

void matmul_dequant_panels(const float* X, const void* W, DType t, DequantRowsFn dequant_rows,
                           float* Y, int64_t M, int64_t N, int64_t K, bool acc) {
  (void)t;
  if (M <= 0 || N <= 0) return;
  // Panels of about 4 MiB of f32 (at least 64 rows, a multiple of 16): wide enough for the GEMM
  // to run at full speed on every thread (1 MiB panels cost 20% at K = 2048), still in the L3.
  int64_t nb = std::max<int64_t>(64, (int64_t(1) << 20) / std::max<int64_t>(K, 1));
  nb = std::min(N, (nb + 15) / 16 * 16);
  thread_local std::vector<float> panel;
  if (panel.size() < size_t(nb * K)) panel.assign(size_t(nb * K), 0.0f);
  float* p = panel.data();
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    const int64_t rows = std::min(nb, N - n0);
    // Dequantise the panel on all threads, in chunks of 8 rows.
    const int64_t n_chunks = (rows + 7) / 8;
#pragma omp parallel for schedule(static) if (rows * K >= kParMin)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t r0 = c * 8, r1 = std::min(rows, r0 + 8);
      dequant_rows(W, n0 + r0, r1 - r0, K, p + r0 * K);
    }
    gemm_f32(false, true, M, rows, K, 1.0f, X, K, p, K, acc ? 1.0f : 0.0f, Y + n0, N);
  }
}

namespace detail {

static const QuantKernels kQ8_0Kernels = [] {
  QuantKernels k;
  k.dequantize = q8_0_dequantize;
  k.quantize = q8_0_quantize;
  k.matvec = q8_0_matvec;
  k.matvec_ref = q8_0_matvec_ref;
  k.matmul = q8_0_matmul;
  k.matmul_ref = q8_0_matmul_ref;
  return k;
}();

const QuantKernels* q8_0_kernels() { return &kQ8_0Kernels; }

}  // namespace detail

}  // namespace qwen::ops
