// ops/matmul_avx2.cpp — AVX2 + FMA kernels for the matrix products, for x86-64 CPUs without
// AVX-512 (compiled with -mavx2 -mfma -mf16c, reached through the runtime dispatch in matmul.cpp).
//
// GEMM: the blocked loop nest of matmul_driver.h around a 6x16 register micro-kernel (6 rows of A
// broadcast against two ymm of a k-major B panel: 12 accumulators + 2 B + 1 A of the 16 ymm).
// B panels are packed from the (N, K) weight rows by 8x8 in-register transposes, widening BF16
// (shift) or F16 (vcvtph2ps) to f32 on the way, or taken from a pre-packed weight.
// Matvec: one weight row at a time, four accumulators, each thread's rows read as two linear
// streams, every weight once; BF16 rows are loaded 16 at a time and split exactly into even (shift)
// and odd (AND) elements against a permuted copy of x; F16 is widened with vcvtph2ps.
// Packed matvec: four panels of a pre-packed weight at a time, in the GEMM kernel's order.
// (GCC 12's intrinsics headers trip -Wuninitialized on their own _mm*_undefined_* helpers, GCC
// bug 105593; the warning is silenced for the header only.)
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

// The first n (< 8) elements of a weight row as f32, the rest 0, reading nothing beyond them.
template <DType T>
inline __m256 load_part(const void* base, int64_t idx, int n) {
  alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int j = 0; j < n; ++j) t[j] = load1<T>(base, idx + j);
  return _mm256_load_ps(t);
}

// 8x8 f32 transpose in registers: r[i][j] -> r[j][i] (24 shuffles).
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4h + c] lane L holds column 4L + c of rows 4h .. 4h+3.
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

inline __m256i lane_mask(int n) {  // lanes < n set (n in 0..8)
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

struct Traits {
  static constexpr int NR = kNR, MR_MAX = 6;
  // Measured on Zen 5 (docs/kernels.md): KC = 768 (the whole K of the 768-wide model, so C is
  // written once) beat 256/384/512 by 3-10% against OpenBLAS in the same runs; the B panel
  // (48 KiB) then streams from L2, which has bandwidth to spare for 64 B per 6 FMA cycles.
  static constexpr int64_t KC = 768, MC = 192, NC = 1024;

  // B rows of the weight (N, K): 8 rows x 8 k at a time, transposed in registers into the
  // k-major panel (the two 8-row halves of the 16-wide panel are done one after the other).
  template <DType T>
  static void pack_b_nk(const GemmProblem& p, int64_t k0, int64_t kc, int64_t n0, int nv,
                        float* dst) {
    constexpr int64_t es = T == DType::F32 ? 4 : 2;
    for (int g = 0; g < NR / 8; ++g) {
      const int rows = std::max(0, std::min(8, nv - 8 * g));
      if (rows == 0) {
        for (int64_t k = 0; k < kc; ++k) _mm256_store_ps(dst + k * NR + 8 * g, _mm256_setzero_ps());
        continue;
      }
      for (int64_t kk = 0; kk < kc; kk += 8) {
        const int kv = int(std::min<int64_t>(8, kc - kk));
        // Prefetch the same k range of the next panel's rows into L2, once per cache line, so
        // the next pack finds them there rather than in L3 / DRAM (16 row streams are more than
        // the hardware prefetcher follows well).
        if ((kk * es) % 64 == 0 && n0 + NR + 8 * g + 7 < p.N) {
          for (int i = 0; i < 8; ++i)
            _mm_prefetch(
                static_cast<const char*>(p.B) + ((n0 + NR + 8 * g + i) * p.ldb + k0 + kk) * es,
                _MM_HINT_T1);
        }
        __m256 r[8];
        for (int i = 0; i < 8; ++i) {
          const int64_t idx = (n0 + 8 * g + i) * p.ldb + k0 + kk;
          r[i] = i >= rows ? _mm256_setzero_ps()
                 : kv == 8 ? load8<T>(p.B, idx)
                           : load_part<T>(p.B, idx, kv);
        }
        transpose8(r);
        for (int j = 0; j < kv; ++j) _mm256_store_ps(dst + (kk + j) * NR + 8 * g, r[j]);
      }
    }
  }

  static void pack_b(const GemmProblem& p, int64_t k0, int64_t kc, int64_t n0, int nv, float* dst) {
    if (p.b_nk) {
      switch (p.bt) {
        case DType::BF16: pack_b_nk<DType::BF16>(p, k0, kc, n0, nv, dst); return;
        case DType::F16: pack_b_nk<DType::F16>(p, k0, kc, n0, nv, dst); return;
        default: pack_b_nk<DType::F32>(p, k0, kc, n0, nv, dst); return;
      }
    }
    const float* B = static_cast<const float*>(p.B);
    if (nv == NR) {  // full panel: plain loads
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * p.ldb + n0;
        _mm256_store_ps(dst + k * NR, _mm256_loadu_ps(src));
        _mm256_store_ps(dst + k * NR + 8, _mm256_loadu_ps(src + 8));
      }
      return;
    }
    const __m256i m0 = lane_mask(std::min(nv, 8)), m1 = lane_mask(std::max(0, nv - 8));
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = B + (k0 + k) * p.ldb + n0;
      _mm256_store_ps(dst + k * NR, _mm256_maskload_ps(src, m0));
      _mm256_store_ps(dst + k * NR + 8, _mm256_maskload_ps(src + 8, m1));
    }
  }

  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

  // Transposed A (K, M): a tile's mr values of one k row, one masked load and one 8-wide store
  // (its 2 lanes past MR_MAX land on the next k, which overwrites them, or in the tile slack).
  static void copy_a_t(const float* src, int mr, float* dst) {
    _mm256_storeu_ps(dst, _mm256_maskload_ps(src, lane_mask(mr)));
  }

  // One k row of a B (K, N) panel: nv values, zero-padded to 16.
  static void copy_b_row(const float* src, int nv, float* dst) {
    if (nv == NR) {
      _mm256_store_ps(dst, _mm256_loadu_ps(src));
      _mm256_store_ps(dst + 8, _mm256_loadu_ps(src + 8));
    } else {
      _mm256_store_ps(dst, _mm256_maskload_ps(src, lane_mask(std::min(nv, 8))));
      _mm256_store_ps(dst + 8, _mm256_maskload_ps(src + 8, lane_mask(std::max(0, nv - 8))));
    }
  }

  // A packed 16-bit panel run (n values, n % 16 == 0) widened to f32 (exact).
  static void widen_panel(const void* src, DType dt, int64_t n, float* dst) {
    const __m128i* s = static_cast<const __m128i*>(src);
    if (dt == DType::BF16) {
      for (int64_t i = 0; i < n; i += 8)
        _mm256_store_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(
                                     _mm256_cvtepu16_epi32(_mm_load_si128(s + i / 8)), 16)));
    } else {
      for (int64_t i = 0; i < n; i += 8)
        _mm256_store_ps(dst + i, _mm256_cvtph_ps(_mm_load_si128(s + i / 8)));
    }
  }

  // y[panels lo..hi) (+)= W·x on a packed weight, in the GEMM kernel's summation order (what
  // kernel<1> computes for a one-row A): per k block, each output summed k by k by FMA from zero,
  // then stored (first block, no accumulate) or added to y. Four panels at a time: 8 FMA chains.
  template <DType T, int NP>
  static void matvec_np(const PackedWeight& P, const float* x, float* y, int64_t j,
                        bool accumulate) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t k0 = 0; k0 < P.K; k0 += KC) {
      const int64_t kc = std::min(KC, P.K - k0);
      const void* base[NP];
      for (int q = 0; q < NP; ++q) base[q] = P.panel(j + q, k0);
      __m256 c0[NP], c1[NP];
      for (int q = 0; q < NP; ++q) c0[q] = c1[q] = _mm256_setzero_ps();
#pragma GCC unroll 2
      for (int64_t k = 0; k < kc; ++k) {
        const __m256 a = _mm256_broadcast_ss(x + k0 + k);
        for (int q = 0; q < NP; ++q) {
          c0[q] = _mm256_fmadd_ps(a, load8<T>(base[q], k * NR), c0[q]);
          c1[q] = _mm256_fmadd_ps(a, load8<T>(base[q], k * NR + 8), c1[q]);
        }
      }
      const bool load_y = accumulate || k0 > 0;
      for (int q = 0; q < NP; ++q) {
        const int64_t n0 = (j + q) * NR;
        const int nv = int(std::min<int64_t>(NR, P.N - n0));
        float* yq = y + n0;
        if (nv == NR) {
          if (load_y) {
            c0[q] = _mm256_fmadd_ps(one, c0[q], _mm256_loadu_ps(yq));
            c1[q] = _mm256_fmadd_ps(one, c1[q], _mm256_loadu_ps(yq + 8));
          }
          _mm256_storeu_ps(yq, c0[q]);
          _mm256_storeu_ps(yq + 8, c1[q]);
        } else {
          const __m256i m0 = lane_mask(std::min(nv, 8)), m1 = lane_mask(std::max(0, nv - 8));
          if (load_y) {
            c0[q] = _mm256_fmadd_ps(one, c0[q], _mm256_maskload_ps(yq, m0));
            c1[q] = _mm256_fmadd_ps(one, c1[q], _mm256_maskload_ps(yq + 8, m1));
          }
          _mm256_maskstore_ps(yq, m0, c0[q]);
          _mm256_maskstore_ps(yq + 8, m1, c1[q]);
        }
      }
    }
  }

  template <DType T>
  static void matvec_panels_t(const PackedWeight& P, const float* x, float* y, int64_t lo,
                              int64_t hi, bool accumulate) {
    int64_t j = lo;
    for (; j + 4 <= hi; j += 4) matvec_np<T, 4>(P, x, y, j, accumulate);
    for (; j < hi; ++j) matvec_np<T, 1>(P, x, y, j, accumulate);
  }

  static void matvec_panels(const PackedWeight& P, const float* x, float* y, int64_t lo,
                            int64_t hi, bool accumulate) {
    switch (P.dt) {
      case DType::BF16: return matvec_panels_t<DType::BF16>(P, x, y, lo, hi, accumulate);
      case DType::F16: return matvec_panels_t<DType::F16>(P, x, y, lo, hi, accumulate);
      default: return matvec_panels_t<DType::F32>(P, x, y, lo, hi, accumulate);
    }
  }

  // Split micro-kernel for several row tiles sharing one B panel (matmul_driver.h, "k-chunked
  // tiles"): steps k in [k_lo, k_hi) of one row tile, accumulators carried in acc (2·MR vectors,
  // row r at acc[2r], acc[2r + 1]) between calls, zeroed first when zero. Each output is the same
  // FMA chain, k by k from zero, as in kernel<MR> (a spilled accumulator is stored and reloaded
  // exactly), so the results are bit-identical.
  template <int MR>
  static void kernel_part(int64_t k_lo, int64_t k_hi, const float* __restrict pa,
                          const float* __restrict pb, float* __restrict acc, bool zero) {
    __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      c0[r] = zero ? _mm256_setzero_ps() : _mm256_load_ps(acc + 16 * r);
      c1[r] = zero ? _mm256_setzero_ps() : _mm256_load_ps(acc + 16 * r + 8);
    }
#pragma GCC unroll 4
    for (int64_t k = k_lo; k < k_hi; ++k) {
      const __m256 b0 = _mm256_load_ps(pb + k * NR), b1 = _mm256_load_ps(pb + k * NR + 8);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(pa + r * KC + k);
        c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      _mm256_store_ps(acc + 16 * r, c0[r]);
      _mm256_store_ps(acc + 16 * r + 8, c1[r]);
    }
  }

  // The epilogue of kernel<MR> on accumulators left in acc by kernel_part<MR>.
  template <int MR>
  static void store_part(const float* __restrict acc, float* __restrict C, int64_t ldc, int nv,
                         float alpha, float beta, bool first) {
    __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      c0[r] = _mm256_load_ps(acc + 16 * r);
      c1[r] = _mm256_load_ps(acc + 16 * r + 8);
    }
    store_tile<MR>(c0, c1, C, ldc, nv, alpha, beta, first);
  }

  // C tile (MR, nv) = alpha·acc + beta·C on the first k block (C not read when beta == 0),
  // C += alpha·acc on later ones.
  template <int MR>
  static inline __attribute__((always_inline)) void store_tile(const __m256* c0, const __m256* c1,
                                                               float* __restrict C, int64_t ldc,
                                                               int nv, float alpha, float beta,
                                                               bool first) {
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    const bool load_c = !(first && beta == 0.0f), scale_c = first && beta != 1.0f;
    if (nv == NR) {  // full tile: plain loads and stores (vmaskmov is slow on some CPUs)
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        float* cr = C + r * ldc;
        __m256 o0 = _mm256_mul_ps(va, c0[r]), o1 = _mm256_mul_ps(va, c1[r]);
        if (load_c) {
          __m256 y0 = _mm256_loadu_ps(cr), y1 = _mm256_loadu_ps(cr + 8);
          if (scale_c) y0 = _mm256_mul_ps(vb, y0), y1 = _mm256_mul_ps(vb, y1);
          o0 = _mm256_fmadd_ps(va, c0[r], y0);
          o1 = _mm256_fmadd_ps(va, c1[r], y1);
        }
        _mm256_storeu_ps(cr, o0);
        _mm256_storeu_ps(cr + 8, o1);
      }
      return;
    }
    const __m256i m0 = lane_mask(std::min(nv, 8)), m1 = lane_mask(std::max(0, nv - 8));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      float* cr = C + r * ldc;
      __m256 o0 = _mm256_mul_ps(va, c0[r]), o1 = _mm256_mul_ps(va, c1[r]);
      if (load_c) {
        __m256 y0 = _mm256_maskload_ps(cr, m0), y1 = _mm256_maskload_ps(cr + 8, m1);
        if (scale_c) y0 = _mm256_mul_ps(vb, y0), y1 = _mm256_mul_ps(vb, y1);
        o0 = _mm256_fmadd_ps(va, c0[r], y0);
        o1 = _mm256_fmadd_ps(va, c1[r], y1);
      }
      _mm256_maskstore_ps(cr, m0, o0);
      _mm256_maskstore_ps(cr + 8, m1, o1);
    }
  }

  // A (MR, kc) is row-major with row stride KC (AK = false) or k-major with stride MR_MAX
  // (AK = true, the transposed-A packing); B panel (kc, 16) k-major.
  // If PF, the line pf.p + k·pf.step is prefetched into L2 at steps k < pf.n.
  template <int MR, bool AK, bool PF>
  static void kernel(int64_t kc, const float* __restrict pa, const float* __restrict pb,
                     float* __restrict C, int64_t ldc, int nv, float alpha, float beta,
                     bool first, const Prefetch& pf) {
    __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
      if constexpr (PF)
        if (k < pf.n) _mm_prefetch(pf.p + k * pf.step, _MM_HINT_T1);
      const __m256 b0 = _mm256_load_ps(pb + k * NR), b1 = _mm256_load_ps(pb + k * NR + 8);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(AK ? pa + k * MR_MAX + r : pa + r * KC + k);
        c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
      }
    }
    store_tile<MR>(c0, c1, C, ldc, nv, alpha, beta, first);
  }
};

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// 16-bit weights are prefetched this many bytes ahead of the loads (16 cache lines; the
// prefetch runs past the row end into the next row of the same stream, which is the next
// one read). BF16 decode of the 124.7M shape, 2 threads, interleaved A/B (2026-11-28): no
// prefetch 102-113 tok/s, 512 B 127-140, 1 KiB 135-146, 2 KiB 122-131. F32 rows, which the
// loop consumes at twice the bytes per iteration, gained nothing at any distance (the
// hardware prefetchers keep up), so they are not prefetched.
constexpr int kPrefetch16 = 1024;

// dot(W row n, x) with four accumulators (four independent FMA chains). For BF16, xs is x
// permuted per 16-chunk (8 even-index then 8 odd-index elements) for the full chunks; the
// K % 16 tail uses x.
template <DType T>
inline float dot_row(const void* W, const float* x, const float* xs, int64_t n, int64_t K) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t k = 0;
  if constexpr (T == DType::BF16) {
    // 16 weights per load, split exactly into the even elements (shift) and the odd ones (AND).
    const uint16_t* w = static_cast<const uint16_t*>(W) + n * K;
    const __m256i hi = _mm256_set1_epi32(int(0xFFFF0000u));
    for (; k + 32 <= K; k += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k) + kPrefetch16, _MM_HINT_T0);
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 16));
      a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), _mm256_loadu_ps(xs + k),
                           a0);
      a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v0, hi)),
                           _mm256_loadu_ps(xs + k + 8), a1);
      a2 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)),
                           _mm256_loadu_ps(xs + k + 16), a2);
      a3 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v1, hi)),
                           _mm256_loadu_ps(xs + k + 24), a3);
    }
    if (k + 16 <= K) {
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
      a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), _mm256_loadu_ps(xs + k),
                           a0);
      a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v0, hi)),
                           _mm256_loadu_ps(xs + k + 8), a1);
      k += 16;
    }
  } else {
    for (; k + 32 <= K; k += 32) {
      const int64_t i = n * K + k;
      if constexpr (T == DType::F16)
        _mm_prefetch(reinterpret_cast<const char*>(static_cast<const uint16_t*>(W) + i) + kPrefetch16, _MM_HINT_T0);
      a0 = _mm256_fmadd_ps(load8<T>(W, i), _mm256_loadu_ps(x + k), a0);
      a1 = _mm256_fmadd_ps(load8<T>(W, i + 8), _mm256_loadu_ps(x + k + 8), a1);
      a2 = _mm256_fmadd_ps(load8<T>(W, i + 16), _mm256_loadu_ps(x + k + 16), a2);
      a3 = _mm256_fmadd_ps(load8<T>(W, i + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    for (; k + 8 <= K; k += 8)
      a0 = _mm256_fmadd_ps(load8<T>(W, n * K + k), _mm256_loadu_ps(x + k), a0);
  }
  float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; k < K; ++k) s += load1<T>(W, n * K + k) * x[k];
  return s;
}

// Rows split evenly over the team; each thread reads its part of W as two linear streams (the
// rows of its first and second half, alternately), which the hardware prefetchers follow: two
// streams read DRAM-resident weights 12-16% faster than one (F32 and BF16, docs/kernels.md),
// three or four were not faster still. Every row is one dot_row, so the result does not depend
// on the thread count.
template <DType T>
void matvec_t(const void* W, const float* x, const float* xs, float* y, int64_t N, int64_t K,
              bool accumulate) {
  const bool par = N * K >= kParallelMinMacs;
#pragma omp parallel if (par)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t lo = N * tid / nt, hi = N * (tid + 1) / nt;
    const int64_t half = (hi - lo + 1) / 2;
    for (int64_t i = 0; i < half; ++i)
      for (int64_t n : {lo + i, lo + half + i}) {
        if (n >= hi) continue;
        const float s = dot_row<T>(W, x, xs, n, K);
        y[n] = accumulate ? y[n] + s : s;
      }
  }
}

}  // namespace

void gemm(const GemmProblem& p) { gemm_run<Traits>(p); }

void matvec_packed(const PackedWeight& P, const float* x, float* y, bool accumulate) {
  matvec_packed_run<Traits>(P, x, y, accumulate);
}

void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate) {
  switch (wt) {
    case DType::F32: matvec_t<DType::F32>(W, x, nullptr, y, N, K, accumulate); return;
    case DType::F16: matvec_t<DType::F16>(W, x, nullptr, y, N, K, accumulate); return;
    case DType::BF16: {
      const int64_t kf = K / 16 * 16;
      float* xs = scratch(2, size_t(kf) + 1);
      for (int64_t c = 0; c < kf; c += 16)
        for (int j = 0; j < 8; ++j) {
          xs[c + j] = x[c + 2 * j];
          xs[c + 8 + j] = x[c + 2 * j + 1];
        }
      matvec_t<DType::BF16>(W, x, xs, y, N, K, accumulate);
      return;
    }
    default: return;  // rejected by the dispatcher
  }
}

}  // namespace qwen::ops::detail::avx2
