// ops/quant_gguf.cpp — the GGUF block formats Q4_0, Q4_1, Q4_K and Q6_K (ggml's layouts, see
// quant_gguf.h): scalar dequantisation, quantisation (Q4_0 / Q4_1, ggml's reference rounding),
// exact scalar references for matvec / matmul, and the dispatch to the AVX2 kernels of
// quant_gguf_avx2.cpp. Registered in the per-format table of ops/quant.h.
//
// Decode (matvec): Q4_0 / Q4_1 quantise x to 16-bit blocks once and use integer dot products
// (AVX2, error bound in quant_gguf.h); Q4_K / Q6_K dequantise one row at a time into f32 and
// take an f32 dot product. q8_0_matvec_act16 gives Q8_0 the same integer scheme (it is what the
// registered Q8_0 matvec of q8_0.cpp runs on AVX2).
// Prefill (matmul, M >= kMinGemmRows): weight rows are dequantised in panels of about 4 MiB of f32
// and multiplied with the f32 GEMM (ops::matmul_dequant_panels of q8_0.h, shared by the block
// formats), so the quantised matrix is read once per call and the arithmetic is the GEMM's.
#include "ops/quant_gguf.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/cpu.h"
#include "ops/q8_0.h"
#include "ops/quant.h"

namespace qwen::ops {
namespace gguf {

namespace {

inline float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
inline void f2h(float f, uint8_t* p) {
  const uint16_t h = f32_to_f16(f);
  std::memcpy(p, &h, 2);
}

// Q4_K's packed 6-bit scale and min of sub-block j (0..7).
inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Grow-only, 64-byte aligned per-thread buffer.
struct Buf {
  void* p = nullptr;
  size_t n = 0;
  ~Buf() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes > n) {
      std::free(p);
      n = (bytes + 63) / 64 * 64;
      p = std::aligned_alloc(64, n);
      if (!p) throw std::bad_alloc();
    }
    return p;
  }
};
thread_local Buf t_act, t_row;

QAct act_buffers(int64_t K) {
  const size_t nb = size_t(K / 32);
  const size_t qbytes = (size_t(K) * sizeof(int16_t) + 63) / 64 * 64;
  uint8_t* base = static_cast<uint8_t*>(t_act.get(qbytes + 2 * nb * sizeof(float)));
  QAct a;
  a.q = reinterpret_cast<int16_t*>(base);
  a.d = reinterpret_cast<float*>(base + qbytes);
  a.s = a.d + nb;
  return a;
}

}  // namespace

// ---------------------------------------------------------------- dequantisation

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; i += 32, b += 18, dst += 32) {
    const float d = h2f(b);
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * float(int(b[2 + j] & 0xF) - 8);
      dst[j + 16] = d * float(int(b[2 + j] >> 4) - 8);
    }
  }
}

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; i += 32, b += 20, dst += 32) {
    const float d = h2f(b), m = h2f(b + 2);
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * float(b[4 + j] & 0xF) + m;
      dst[j + 16] = d * float(b[4 + j] >> 4) + m;
    }
  }
}

void dequantize_q4_k(const void* src, float* dst, int64_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; i += 256, b += 144) {
    const float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 16;
    for (int p = 0; p < 4; ++p, q += 32) {
      int sc, m;
      scale_min_k4(2 * p, scales, &sc, &m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      scale_min_k4(2 * p + 1, scales, &sc, &m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      for (int l = 0; l < 32; ++l) *dst++ = d1 * float(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *dst++ = d2 * float(q[l] >> 4) - m2;
    }
  }
}

void dequantize_q6_k(const void* src, float* dst, int64_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; i += 256, b += 210) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = h2f(b + 208);
    for (int half = 0; half < 2; ++half, dst += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        dst[l] = d * float(sc[is]) * float(q1);
        dst[l + 32] = d * float(sc[is + 2]) * float(q2);
        dst[l + 64] = d * float(sc[is + 4]) * float(q3);
        dst[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
    }
  }
}

// ---------------------------------------------------------------- quantisation (ggml's rules)

namespace {

// Q4_0: d = (the value of largest magnitude) / −8, q = min(15, trunc(x/d + 8.5)).
void quantize_q4_0(const float* x, void* dst, int64_t n) {
  uint8_t* b = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; i += 32, x += 32, b += 18) {
    float amax = 0, mx = 0;
    for (int j = 0; j < 32; ++j)
      if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), mx = x[j];
    const float d = mx / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    f2h(d, b);
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::min(15, int(int8_t(x[j] * id + 8.5f)));
      const int q1 = std::min(15, int(int8_t(x[j + 16] * id + 8.5f)));
      b[2 + j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

// Q4_1: m = min, d = (max − min)/15, q = min(15, trunc((x − m)/d + 0.5)).
void quantize_q4_1(const float* x, void* dst, int64_t n) {
  uint8_t* b = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; i += 32, x += 32, b += 20) {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < 32; ++j) mn = std::min(mn, x[j]), mx = std::max(mx, x[j]);
    const float d = (mx - mn) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    f2h(d, b);
    f2h(mn, b + 2);
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::min(15, int(int8_t((x[j] - mn) * id + 0.5f)));
      const int q1 = std::min(15, int(int8_t((x[j + 16] - mn) * id + 0.5f)));
      b[4 + j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

}  // namespace

void quantize_act_ref(const float* x, int64_t K, QAct a) {
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* xb = x + 32 * b;
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 32767.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int q = int(std::nearbyint(xb[j] * id));
      a.q[32 * b + j] = int16_t(q);
      sum += q;
    }
    a.d[b] = d;
    a.s[b] = d * float(sum);
  }
}

float dot_q4_0_act_ref(const void* row, QAct a, int64_t K) {
  const uint8_t* b = static_cast<const uint8_t*>(row);
  double acc = 0;
  for (int64_t k = 0; k < K / 32; ++k, b += 18) {
    int64_t dot = 0;
    for (int j = 0; j < 16; ++j)
      dot += int(b[2 + j] & 0xF) * a.q[32 * k + j] + int(b[2 + j] >> 4) * a.q[32 * k + j + 16];
    const float d = h2f(b);
    acc += double(d * a.d[k]) * dot - 8.0 * double(d) * double(a.s[k]);
  }
  return float(acc);
}

float dot_q4_1_act_ref(const void* row, QAct a, int64_t K) {
  const uint8_t* b = static_cast<const uint8_t*>(row);
  double acc = 0;
  for (int64_t k = 0; k < K / 32; ++k, b += 20) {
    int64_t dot = 0;
    for (int j = 0; j < 16; ++j)
      dot += int(b[4 + j] & 0xF) * a.q[32 * k + j] + int(b[4 + j] >> 4) * a.q[32 * k + j + 16];
    acc += double(h2f(b) * a.d[k]) * dot + double(h2f(b + 2)) * double(a.s[k]);
  }
  return float(acc);
}

float dot_q8_0_act_ref(const void* row, QAct a, int64_t K) {
  const uint8_t* b = static_cast<const uint8_t*>(row);
  double acc = 0;
  for (int64_t k = 0; k < K / 32; ++k, b += 34) {
    int64_t dot = 0;
    for (int j = 0; j < 32; ++j) dot += int(int8_t(b[2 + j])) * a.q[32 * k + j];
    acc += double(h2f(b) * a.d[k]) * dot;
  }
  return float(acc);
}

// ---------------------------------------------------------------- kernels per format

namespace {

using DequantFn = void (*)(const void*, float*, int64_t);

enum class Fmt { Q4_0, Q4_1, Q4_K, Q6_K };

constexpr DType dtype_of(Fmt f) {
  return f == Fmt::Q4_0 ? DType::Q4_0 : f == Fmt::Q4_1 ? DType::Q4_1 : f == Fmt::Q4_K ? DType::Q4_K : DType::Q6_K;
}
constexpr DequantFn dequant_of(Fmt f) {
  return f == Fmt::Q4_0 ? dequantize_q4_0
         : f == Fmt::Q4_1 ? dequantize_q4_1
         : f == Fmt::Q4_K ? dequantize_q4_k
                          : dequantize_q6_k;
}

// Rows [r0, r1) of W into f32 (ld K).
template <Fmt F>
void dequant_rows(const void* W, float* dst, int64_t r0, int64_t r1, int64_t K) {
  const bool avx2 = cpu_features().avx2;
  if (avx2 && F == Fmt::Q4_0) return avx2::dequantize_rows_q4_0(W, dst, r0, r1, K);
  if (avx2 && F == Fmt::Q4_1) return avx2::dequantize_rows_q4_1(W, dst, r0, r1, K);
  const size_t rb = dtype_row_bytes(dtype_of(F), K);
  for (int64_t r = r0; r < r1; ++r)
    dequant_of(F)(static_cast<const uint8_t*>(W) + size_t(r) * rb, dst + (r - r0) * K, K);
}

// Exact reference: y = W·x with the dequantised weights, accumulated in double.
template <Fmt F>
void matvec_ref(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  const size_t rb = dtype_row_bytes(dtype_of(F), K);
  std::unique_ptr<float[]> w(new float[size_t(K)]);
  for (int64_t n = 0; n < N; ++n) {
    dequant_of(F)(static_cast<const uint8_t*>(W) + size_t(n) * rb, w.get(), K);
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += double(w[size_t(k)]) * double(x[k]);
    y[n] = float(acc ? double(y[n]) + s : s);
  }
}

template <Fmt F>
void matmul_ref(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc) {
  for (int64_t m = 0; m < M; ++m) matvec_ref<F>(W, X + m * K, Y + m * N, N, K, acc);
}

// Threads for an (N, K) product: one below 128K weights (a parallel region costs microseconds; in
// SmolLM2's decode the 576 x 576 q/o projections gained from two threads, the 192 x 576 k/v ones
// did not measurably).
int threads_for(int64_t N, int64_t K) {
  return N * K < 2 * 65536 ? 1 : std::max(1, omp_get_max_threads());
}

// Contiguous row range of thread t of nt, in multiples of 4 rows.
inline void row_range(int64_t N, int t, int nt, int64_t* lo, int64_t* hi) {
  const int64_t groups = (N + 3) / 4;
  *lo = std::min(N, groups * t / nt * 4);
  *hi = std::min(N, groups * (t + 1) / nt * 4);
}

template <Fmt F>
void matvec_fast(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  const int nt = threads_for(N, K);
  if ((F == Fmt::Q4_0 || F == Fmt::Q4_1) && cpu_features().avx2) {
    QAct a = act_buffers(K);
    avx2::quantize_act(x, K, a);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      int64_t lo, hi;
      row_range(N, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
      if (hi > lo) {
        if (F == Fmt::Q4_0) avx2::matvec_rows_q4_0(W, a, y, lo, hi, K, acc);
        else avx2::matvec_rows_q4_1(W, a, y, lo, hi, K, acc);
      }
    }
    return;
  }
  // One row at a time: dequantise into a per-thread buffer, f32 dot product.
  const size_t rb = dtype_row_bytes(dtype_of(F), K);
  const bool avx2 = cpu_features().avx2;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    float* w = static_cast<float*>(t_row.get(size_t(K) * sizeof(float)));
    int64_t lo, hi;
    row_range(N, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    for (int64_t n = lo; n < hi; ++n) {
      dequant_of(F)(static_cast<const uint8_t*>(W) + size_t(n) * rb, w, K);
      float s;
      if (avx2) {
        s = avx2::dot_f32(w, x, K);
      } else {
        s = 0;
        for (int64_t k = 0; k < K; ++k) s += w[k] * x[k];
      }
      y[n] = acc ? y[n] + s : s;
    }
  }
}

}  // namespace

void q8_0_matvec_act16(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  if (!cpu_features().avx2) return q8_0_matvec_f32(W, x, y, N, K, acc);
  const int nt = threads_for(N, K);
  QAct a = act_buffers(K);
  avx2::quantize_act(x, K, a);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int64_t lo, hi;
    row_range(N, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    if (hi > lo) avx2::matvec_rows_q8_0(W, a, y, lo, hi, K, acc);
  }
}

namespace {
thread_local Buf t_acts, t_wq;
}  // namespace

void q8_0_matmul_act16(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                       bool acc) {
  if (M <= 0 || N <= 0) return;
  if (M == 1) return q8_0_matvec_act16(W, X, Y, N, K, acc);
  if (!cpu_features().avx2) return q8_0_matmul(X, W, Y, M, N, K, acc);
  // M activation rows quantised as the matvec does (q (M, K), d and s (M, K/32)), then the
  // weight rows split over the threads in multiples of 4, as in q8_0_matvec_act16.
  const int64_t nb = K / 32;
  const size_t qbytes = size_t(M * K) * sizeof(int16_t);
  uint8_t* base = static_cast<uint8_t*>(
      t_acts.get(qbytes + 2 * size_t(M * nb) * sizeof(float) + size_t(M) * sizeof(QAct) + 64));
  auto* d = reinterpret_cast<float*>(base + qbytes);
  auto* s = d + M * nb;
  auto* acts = reinterpret_cast<QAct*>((reinterpret_cast<uintptr_t>(s + M * nb) + 63) / 64 * 64);
  for (int64_t m = 0; m < M; ++m)
    acts[m] = QAct{reinterpret_cast<int16_t*>(base) + m * K, d + m * nb, s + m * nb};
  const int nt = M * N * K < 2 * 65536 ? 1 : std::max(1, omp_get_max_threads());
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) avx2::quantize_act(X + m * K, K, acts[m]);
    int64_t lo, hi;
    row_range(N, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    if (hi > lo) {
      const size_t wq_bytes = size_t(4 * K) * sizeof(int16_t);
      auto* wq = static_cast<int16_t*>(t_wq.get(wq_bytes + size_t(8 * nb) * sizeof(float)));
      auto* sc = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(wq) + wq_bytes);
      avx2::matmul_rows_q8_0(W, acts, M, Y, N, lo, hi, K, acc, wq, sc);
    }
  }
}

bool q8_0_matmul_row_invariant() { return cpu_features().avx2; }

namespace {

// Rows [row0, row0 + n) of W as f32, for the shared dequantise-a-panel GEMM driver (q8_0.h).
template <Fmt F>
void dequant_panel_rows(const void* W, int64_t row0, int64_t n, int64_t K, float* dst) {
  dequant_rows<F>(static_cast<const uint8_t*>(W) + size_t(row0) * dtype_row_bytes(dtype_of(F), K), dst, 0, n, K);
}

// Below this many rows of X a matmul is M matvecs (a dequantised panel would be reused too
// little to pay for itself).
constexpr int64_t kMinGemmRows = 4;

template <Fmt F>
void matmul_fast(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc) {
  if (M < kMinGemmRows) {
    for (int64_t m = 0; m < M; ++m) matvec_fast<F>(W, X + m * K, Y + m * N, N, K, acc);
    return;
  }
  matmul_dequant_panels(X, W, dtype_of(F), dequant_panel_rows<F>, Y, M, N, K, acc);
}

template <Fmt F>
const QuantKernels* table() {
  static const QuantKernels k = [] {
    QuantKernels t;
    t.dequantize = dequant_of(F);
    if constexpr (F == Fmt::Q4_0) t.quantize = quantize_q4_0;
    if constexpr (F == Fmt::Q4_1) t.quantize = quantize_q4_1;
    t.matvec = matvec_fast<F>;
    t.matvec_ref = matvec_ref<F>;
    t.matmul = matmul_fast<F>;
    t.matmul_ref = matmul_ref<F>;
    return t;
  }();
  return &k;
}

}  // namespace
}  // namespace gguf

namespace detail {
const QuantKernels* q4_0_kernels() { return gguf::table<gguf::Fmt::Q4_0>(); }
const QuantKernels* q4_1_kernels() { return gguf::table<gguf::Fmt::Q4_1>(); }
const QuantKernels* q4_k_kernels() { return gguf::table<gguf::Fmt::Q4_K>(); }
const QuantKernels* q6_k_kernels() { return gguf::table<gguf::Fmt::Q6_K>(); }
}  // namespace detail

}  // namespace qwen::ops
