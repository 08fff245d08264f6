// ops/matmul_avx2.cpp — AVX2 + FMA kernels for the matrix products, for x86-64 CPUs without
// AVX-512 (compiled with -mavx2 -mfma -mf16c, reached through the runtime dispatch in matmul.cpp).
//
// GEMM: the blocked loop nest of matmul_driver.h around a 6x16 register micro-kernel (6 rows of A
// broadcast against two ymm of a k-major B panel: 12 accumulators + 2 B + 1 A of the 16 ymm).
// B panels are converted to f32 a row at a time and scattered into the k-major panel.
// Matvec: 4 weight rows at a time, two accumulators per row, weights streamed once; BF16 is
// widened with a zero-extend and shift, F16 with vcvtph2ps.
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* helpers
// (GCC bug 105593); silence it for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <omp.h>

#include <cstdint>

#include "ops/matmul_driver.h"
#include "ops/matmul_internal.h"

namespace qwen::ops::detail::avx2 {
namespace {

// 8 consecutive elements of a weight row as f32.
template <DType T>
inline __m256 load8(const void* base, int64_t idx) {
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + idx);
  } else if constexpr (T == DType::BF16) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + idx));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + idx));
    return _mm256_cvtph_ps(h);
  }
}

template <DType T>
inline float load1(const void* base, int64_t idx) {
  if constexpr (T == DType::F32) {
    return static_cast<const float*>(base)[idx];
  } else if constexpr (T == DType::BF16) {
    // Local conversion (not dtype.h's inline one: an ISA-flagged copy of a shared inline
    // function could be picked by the linker for baseline code).
    const uint32_t u = uint32_t(static_cast<const uint16_t*>(base)[idx]) << 16;
    return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(int(u))));
  } else {
    return _cvtsh_ss(static_cast<const uint16_t*>(base)[idx]);
  }
}

inline __m256i lane_mask(int n) {  // lanes < n set (n in 0..8)
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

struct Traits {
  static constexpr int NR = 16, MR_MAX = 6;
  static constexpr int64_t KC = 256, MC = 192, NC = 512;

  template <DType T>
  static void pack_b_nk(const GemmProblem& p, int64_t k0, int64_t kc, int64_t n0, int nv,
                        float* dst) {
    for (int i = 0; i < NR; ++i) {
      if (i >= nv) {
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + i] = 0.0f;
        continue;
      }
      const int64_t row = (n0 + i) * p.ldb + k0;
      int64_t k = 0;
      alignas(32) float tmp[8];
      for (; k + 8 <= kc; k += 8) {
        _mm256_store_ps(tmp, load8<T>(p.B, row + k));
        for (int j = 0; j < 8; ++j) dst[(k + j) * NR + i] = tmp[j];
      }
      for (; k + 1 < kc; ++k) dst[k * NR + i] = load1<T>(p.B, row + k);
    }
  }

  static void pack_b(const GemmProblem& p, int64_t k0, int64_t kc, int64_t n0, int nv,
                     float* dst) {
    if (p.b_nk) {
      switch (p.bt) {
        case DType::BF16: pack_b_nk<DType::BF16>(p, k0, kc, n0, nv, dst); return;
        case DType::F16: pack_b_nk<DType::F16>(p, k0, kc, n0, nv, dst); return;
        default: pack_b_nk<DType::F32>(p, k0, kc, n0, nv, dst); return;
      }
    }
    const float* B = static_cast<const float*>(p.B);
    const __m256i m0 = lane_mask(std::min(nv, 8)), m1 = lane_mask(std::max(0, nv - 8));
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = B + (k0 + k) * p.ldb + n0;
      _mm256_store_ps(dst + k * NR, _mm256_maskload_ps(src, m0));
      _mm256_store_ps(dst + k * NR + 8, _mm256_maskload_ps(src + 8, m1));
    }
  }

  template <int MR>
  static void kernel(int64_t kc, const float* __restrict pa, const float* __restrict pb,
                     float* __restrict C, int64_t ldc, int nv, float alpha, float beta,
                     bool first) {
    __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
      const __m256 b0 = _mm256_load_ps(pb + k * NR), b1 = _mm256_load_ps(pb + k * NR + 8);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(pa + r * KC + k);
        c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
      }
    }
    const __m256i m0 = lane_mask(std::min(nv, 8)), m1 = lane_mask(std::max(0, nv - 8));
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      float* cr = C + r * ldc;
      __m256 o0, o1;
      if (first && beta == 0.0f) {
        o0 = _mm256_mul_ps(va, c0[r]);
        o1 = _mm256_mul_ps(va, c1[r]);
      } else {
        __m256 y0 = _mm256_maskload_ps(cr, m0), y1 = _mm256_maskload_ps(cr + 8, m1);
        if (first && beta != 1.0f) {
          y0 = _mm256_mul_ps(vb, y0);
          y1 = _mm256_mul_ps(vb, y1);
        }
        o0 = _mm256_fmadd_ps(va, c0[r], y0);
        o1 = _mm256_fmadd_ps(va, c1[r], y1);
      }
      _mm256_maskstore_ps(cr, m0, o0);
      _mm256_maskstore_ps(cr + 8, m1, o1);
    }
  }
};

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

template <DType T, int R>
inline void dot_rows(const void* W, const float* x, float* y, int64_t n, int64_t K,
                     bool accumulate) {
  __m256 a0[R], a1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      a0[r] = _mm256_fmadd_ps(load8<T>(W, (n + r) * K + k), x0, a0[r]);
      a1[r] = _mm256_fmadd_ps(load8<T>(W, (n + r) * K + k + 8), x1, a1[r]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 x0 = _mm256_loadu_ps(x + k);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) a0[r] = _mm256_fmadd_ps(load8<T>(W, (n + r) * K + k), x0, a0[r]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(a0[r], a1[r]));
    for (int64_t j = k; j < K; ++j) s += load1<T>(W, (n + r) * K + j) * x[j];
    y[n + r] = accumulate ? y[n + r] + s : s;
  }
}

template <DType T>
void matvec_t(const void* W, const float* x, float* y, int64_t N, int64_t K, bool accumulate) {
  constexpr int R = 4;
  const int64_t n_blocks = N / R;
  const bool par = N * K >= kParallelMinMacs;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t b = 0; b < n_blocks; ++b) dot_rows<T, R>(W, x, y, b * R, K, accumulate);
  for (int64_t n = n_blocks * R; n < N; ++n) dot_rows<T, 1>(W, x, y, n, K, accumulate);
}

}  // namespace

void gemm(const GemmProblem& p) { gemm_run<Traits>(p); }

void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate) {
  switch (wt) {
    case DType::F32: matvec_t<DType::F32>(W, x, y, N, K, accumulate); return;
    case DType::F16: matvec_t<DType::F16>(W, x, y, N, K, accumulate); return;
    case DType::BF16: matvec_t<DType::BF16>(W, x, y, N, K, accumulate); return;
    default: return;  // rejected by the dispatcher
  }
}

}  // namespace qwen::ops::detail::avx2
