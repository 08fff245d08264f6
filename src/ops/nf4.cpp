// ops/nf4.cpp — NF4 blocks (see nf4.h): code table, per-block quantisation, scalar references,
// runtime dispatch to the AVX2 kernels (nf4_avx2.cpp), and DType::NF4's kernel table.
#include "ops/nf4.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "ops/matmul.h"
#include "ops/q8_0.h"
#include "ops/quant.h"

namespace qwen::ops {

// The Python doubles of bitsandbytes' table, rounded to f32 as torch.tensor does.
const float kNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

namespace {

constexpr int64_t kParMin = 1 << 16;

struct Bounds {
  float b[15];
  Bounds() {
    for (int i = 0; i < 15; ++i) b[i] = (kNf4Code[i] + kNf4Code[i + 1]) / 2.0f;
  }
};
const Bounds kBounds;

inline float block_absmax(const uint8_t* blk) {
  float a;
  std::memcpy(&a, blk, 4);
  return a;
}

}  // namespace

uint8_t nf4_nearest_code(float v) {
  // torch.bucketize(v, bounds, right=False): the number of bounds strictly below v.
  uint8_t c = 0;
  for (int i = 0; i < 15; ++i) c += kBounds.b[i] < v ? 1 : 0;
  return c;
}

void nf4_quantize(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / kNf4Block; ++b) {
    const float* x = src + b * kNf4Block;
    uint8_t* blk = out + b * int64_t(kNf4BlockBytes);
    float amax = 0.0f;
    for (int i = 0; i < kNf4Block; ++i) amax = std::max(amax, std::fabs(x[i]));
    std::memcpy(blk, &amax, 4);
    // As bitsandbytes: x · (1 / max(absmax, 1e-38)), clamped to [-1, 1].
    const float inv = 1.0f / std::max(amax, 1e-38f);
    for (int j = 0; j < kNf4Block / 2; ++j) {
      const float v0 = std::clamp(x[2 * j] * inv, -1.0f, 1.0f);
      const float v1 = std::clamp(x[2 * j + 1] * inv, -1.0f, 1.0f);
      blk[4 + j] = uint8_t(nf4_nearest_code(v0) << 4 | nf4_nearest_code(v1));
    }
  }
}

void nf4_dequantize_ref(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kNf4Block; ++b) {
    const uint8_t* blk = in + b * int64_t(kNf4BlockBytes);
    const float a = block_absmax(blk);
    float* o = dst + b * kNf4Block;
    for (int j = 0; j < kNf4Block / 2; ++j) {
      o[2 * j] = kNf4Code[blk[4 + j] >> 4] * a;
      o[2 * j + 1] = kNf4Code[blk[4 + j] & 15] * a;
    }
  }
}

void nf4_dequantize(const void* src, float* dst, int64_t n) {
  if (cpu_features().avx2) return detail::nf4_dequantize_avx2(src, dst, n);
  nf4_dequantize_ref(src, dst, n);
}

void nf4_matvec_ref(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  const auto* w = static_cast<const uint8_t*>(W);
  const int64_t nb = K / kNf4Block;
  for (int64_t n = 0; n < N; ++n) {
    float s = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = w + (n * nb + b) * int64_t(kNf4BlockBytes);
      const float* xb = x + b * kNf4Block;
      float t = 0.0f;
      for (int j = 0; j < kNf4Block / 2; ++j)
        t += kNf4Code[blk[4 + j] >> 4] * xb[2 * j] + kNf4Code[blk[4 + j] & 15] * xb[2 * j + 1];
      s += block_absmax(blk) * t;
    }
    y[n] = acc ? y[n] + s : s;
  }
}

void nf4_matvec(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  if (!cpu_features().avx2) return nf4_matvec_ref(W, x, y, N, K, acc);
  thread_local std::vector<float> xp;
  if (xp.size() < size_t(K)) xp.resize(size_t(K));
  detail::nf4_permute_x(x, xp.data(), K);
  const float* xpp = xp.data();
  const int64_t n_chunks = (N + 7) / 8;
#pragma omp parallel for schedule(static) if (N * K >= kParMin)
  for (int64_t c = 0; c < n_chunks; ++c)
    detail::nf4_matvec_rows_avx2(W, xpp, y, c * 8, std::min(N, c * 8 + 8), K, acc);
}

void nf4_matmul_ref(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                    bool acc) {
  const size_t row_bytes = size_t(K / kNf4Block) * kNf4BlockBytes;
  std::vector<float> w(size_t(K), 0.0f);
  for (int64_t n = 0; n < N; ++n) {
    nf4_dequantize_ref(static_cast<const uint8_t*>(W) + size_t(n) * row_bytes, w.data(), K);
    for (int64_t m = 0; m < M; ++m) {
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s += X[m * K + k] * w[size_t(k)];
      Y[m * N + n] = acc ? Y[m * N + n] + s : s;
    }
  }
}

static void nf4_dequant_rows(const void* W, int64_t row0, int64_t n_rows, int64_t K, float* dst) {
  const size_t row_bytes = size_t(K / kNf4Block) * kNf4BlockBytes;
  nf4_dequantize(static_cast<const uint8_t*>(W) + size_t(row0) * row_bytes, dst, n_rows * K);
}

void nf4_matmul(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc) {
  if (M == 1) return nf4_matvec(W, X, Y, N, K, acc);
  matmul_dequant_panels(X, W, DType::NF4, nf4_dequant_rows, Y, M, N, K, acc);
}

void nf4_matmul_input_backward_ref(const float* dY, const void* W, float* dX, int64_t M, int64_t N,
                                   int64_t K, bool accumulate) {
  const size_t row_bytes = size_t(K / kNf4Block) * kNf4BlockBytes;
  std::vector<float> w(size_t(N * K));
  for (int64_t n = 0; n < N; ++n)
    nf4_dequantize_ref(static_cast<const uint8_t*>(W) + size_t(n) * row_bytes, w.data() + n * K, K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      float s = 0.0f;
      for (int64_t n = 0; n < N; ++n) s += dY[m * N + n] * w[size_t(n * K + k)];
      dX[m * K + k] = accumulate ? dX[m * K + k] + s : s;
    }
}

void nf4_matmul_input_backward(const float* dY, const void* W, float* dX, int64_t M, int64_t N,
                               int64_t K, bool accumulate) {
  if (M <= 0 || K <= 0) return;
  if (N <= 0) {
    if (!accumulate) std::fill(dX, dX + M * K, 0.0f);
    return;
  }
  // Panels of W rows (n0 .. n0+nb) dequantised to f32 (nb, K); dX += dY[:, n0:n0+nb] · panel.
  int64_t nb = std::max<int64_t>(64, (int64_t(1) << 20) / K);
  nb = std::min(N, (nb + 15) / 16 * 16);
  thread_local std::vector<float> panel;
  if (panel.size() < size_t(nb * K)) panel.assign(size_t(nb * K), 0.0f);
  float* p = panel.data();
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    const int64_t rows = std::min(nb, N - n0);
    const int64_t n_chunks = (rows + 7) / 8;
#pragma omp parallel for schedule(static) if (rows * K >= kParMin)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t r0 = c * 8, r1 = std::min(rows, r0 + 8);
      nf4_dequant_rows(W, n0 + r0, r1 - r0, K, p + r0 * K);
    }
    const float beta = (accumulate || n0 > 0) ? 1.0f : 0.0f;
    gemm_f32(false, false, M, K, rows, 1.0f, dY + n0, N, p, K, beta, dX, K);
  }
}

namespace detail {

static const QuantKernels kNf4Kernels = [] {
  QuantKernels k;
  k.dequantize = nf4_dequantize;
  k.quantize = nf4_quantize;
  k.matvec = nf4_matvec;
  k.matvec_ref = nf4_matvec_ref;
  k.matmul = nf4_matmul;
  k.matmul_ref = nf4_matmul_ref;
  return k;
}();

const QuantKernels* nf4_kernels() { return &kNf4Kernels; }

}  // namespace detail

}  // namespace qwen::ops
