// ops/matmul_avx512.cpp — AVX-512 kernels for the matrix products (compiled with -mavx512*,
// reached only through the runtime dispatch in matmul.cpp).
//
// GEMM: the blocked loop nest of matmul_driver.h around a 14x32 register micro-kernel: 14 rows of
// A broadcast against two zmm of a k-major B panel, 28 zmm accumulators (of 32), two FMA pipes
// kept busy by 28 independent dependency chains. B panels are packed from the (N, K) weight rows
// by 16x16 in-register transposes, converting BF16 (shift) or F16 (vcvtph2ps) to f32 on the way,
// so the kernel only ever sees f32 and accumulates in f32 (or taken from a pre-packed weight,
// BF16/F16 panels widened into the panel buffer).
//
// Matvec: one weight row at a time against x (which stays in L1), four accumulators; each thread
// reads its rows as one linear stream, every weight exactly once. BF16 rows are loaded 32 at a time
// and split into their even and odd elements with one shift and one AND (both exact), against a
// copy of x permuted the same way; F16 rows go through vcvtph2ps. Rows are split over the OpenMP
// team. Packed matvec: four panels of a pre-packed weight at a time, in the GEMM kernel's order.
#ifdef QWEN_AVX512_EMULATION
// Test build only: the same code against plain-C++ intrinsics (see matmul_avx512_emu.h).
#include "ops/matmul_avx512_emu.h"
#define QWEN_AVX512_NS avx512_emulated
#else
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* helpers
// (GCC bug 105593); silence it for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define QWEN_AVX512_NS avx512
#endif
#include <omp.h>

#include <cstdint>

#include "ops/matmul_driver.h"
#include "ops/matmul_internal.h"

namespace qwen::ops::detail::QWEN_AVX512_NS {
namespace {

// 16x16 f32 transpose in registers: r[i][j] -> r[j][i] (64 shuffles).
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + c] lane L holds column 4L + c of rows 4i .. 4i+3.
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 s0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
    const __m512 s1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 s2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 s3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(s0, s2, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(s1, s3, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(s0, s2, 0xDD);
    r[12 + c] = _mm512_shuffle_f32x4(s1, s3, 0xDD);
  }
}

inline __mmask16 mask16(int64_t n) {  // lowest min(n, 16) lanes
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// Up to 16 consecutive elements of a weight row as f32 (lanes beyond the mask are 0).
template <DType T>
inline __m512 load_row16(const void* base, int64_t idx, __mmask16 m) {
  if constexpr (T == DType::F32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + idx);
  } else if constexpr (T == DType::BF16) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + idx);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + idx);
    return _mm512_cvtph_ps(h);
  }
}

struct Traits {
  static constexpr int NR = 32, MR_MAX = 14;  // NR: avx512::kNR
  // Not tuned on AVX-512 hardware (the project machine's VM does not expose AVX-512): KC = 256
  // keeps the B panel (32 KiB) in Zen 5's 48 KiB L1, MC = 256 the A block (256 KiB) in L2.
  static constexpr int64_t KC = 256, MC = 256, NC = 512;

  // B rows of the weight (N, K): 16 rows x 16 k at a time, transposed into the k-major panel.
  template <DType T>
  static void pack_b_nk(const GemmProblem& p, int64_t k0, int64_t kc, int64_t n0, int nv,
                        float* dst) {
    constexpr int64_t es = T == DType::F32 ? 4 : 2;
    for (int g = 0; g < NR / 16; ++g) {
      const int rows = std::max(0, std::min(16, nv - 16 * g));
      if (rows == 0) {
        for (int64_t k = 0; k < kc; ++k)
          _mm512_store_ps(dst + k * NR + 16 * g, _mm512_setzero_ps());
        continue;
      }
      for (int64_t kk = 0; kk < kc; kk += 16) {
        const __mmask16 km = mask16(kc - kk);
        // Prefetch the same k range of the next panel's rows into L2, once per cache line, so
        // the next pack finds them there rather than in L3 / DRAM (as in the AVX2 file, where
        // it measurably cut the packing time).
        if ((kk * es) % 64 == 0 && n0 + NR + 16 * g + 15 < p.N) {
          for (int i = 0; i < 16; ++i)
            _mm_prefetch(
                static_cast<const char*>(p.B) + ((n0 + NR + 16 * g + i) * p.ldb + k0 + kk) * es,
                _MM_HINT_T1);
        }
        __m512 r[16];
        for (int i = 0; i < 16; ++i)
          r[i] = i < rows ? load_row16<T>(p.B, (n0 + 16 * g + i) * p.ldb + k0 + kk, km)
                          : _mm512_setzero_ps();
        transpose16(r);
        const int kv = int(std::min<int64_t>(16, kc - kk));
        for (int j = 0; j < kv; ++j) _mm512_store_ps(dst + (kk + j) * NR + 16 * g, r[j]);
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
    // B is (K, N) f32: each k row of the panel is a (masked) copy.
    const float* B = static_cast<const float*>(p.B);
    const __mmask16 m0 = mask16(nv), m1 = mask16(nv - 16);
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = B + (k0 + k) * p.ldb + n0;
      _mm512_store_ps(dst + k * NR, _mm512_maskz_loadu_ps(m0, src));
      _mm512_store_ps(dst + k * NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
    }
  }

  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

  // Transposed A (K, M): a tile's mr values of one k row, one masked load and one masked store.
  static void copy_a_t(const float* src, int mr, float* dst) {
    _mm512_mask_storeu_ps(dst, mask16(MR_MAX), _mm512_maskz_loadu_ps(mask16(mr), src));
  }

  // One k row of a B (K, N) panel: nv values, zero-padded to 32.
  static void copy_b_row(const float* src, int nv, float* dst) {
    _mm512_store_ps(dst, _mm512_maskz_loadu_ps(mask16(nv), src));
    _mm512_store_ps(dst + 16, _mm512_maskz_loadu_ps(mask16(nv - 16), src + 16));
  }

  // A packed 16-bit panel run (n values, n % 32 == 0) widened to f32 (exact).
  static void widen_panel(const void* src, DType dt, int64_t n, float* dst) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; i += 16) {
      const __m256i h = _mm256_maskz_loadu_epi16(__mmask16(0xFFFF), s + i);
      _mm512_store_ps(dst + i, dt == DType::BF16
                                   ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                   : _mm512_cvtph_ps(h));
    }
  }

  // y[panels lo..hi) (+)= W·x on a packed weight, in the GEMM kernel's summation order (what
  // kernel<1> computes for a one-row A). Four panels at a time: 8 FMA chains.
  template <DType T, int NP>
  static void matvec_np(const PackedWeight& P, const float* x, float* y, int64_t j,
                        bool accumulate) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t k0 = 0; k0 < P.K; k0 += KC) {
      const int64_t kc = std::min(KC, P.K - k0);
      const void* base[NP];
      for (int q = 0; q < NP; ++q) base[q] = P.panel(j + q, k0);
      __m512 c0[NP], c1[NP];
      for (int q = 0; q < NP; ++q) c0[q] = c1[q] = _mm512_setzero_ps();
      for (int64_t k = 0; k < kc; ++k) {
        const __m512 a = _mm512_set1_ps(x[k0 + k]);
        for (int q = 0; q < NP; ++q) {
          c0[q] = _mm512_fmadd_ps(a, load_row16<T>(base[q], k * NR, 0xFFFF), c0[q]);
          c1[q] = _mm512_fmadd_ps(a, load_row16<T>(base[q], k * NR + 16, 0xFFFF), c1[q]);
        }
      }
      const bool load_y = accumulate || k0 > 0;
      for (int q = 0; q < NP; ++q) {
        const int64_t n0 = (j + q) * NR;
        const __mmask16 m0 = mask16(P.N - n0), m1 = mask16(P.N - n0 - 16);
        float* yq = y + n0;
        if (load_y) {
          c0[q] = _mm512_fmadd_ps(one, c0[q], _mm512_maskz_loadu_ps(m0, yq));
          c1[q] = _mm512_fmadd_ps(one, c1[q], _mm512_maskz_loadu_ps(m1, yq + 16));
        }
        _mm512_mask_storeu_ps(yq, m0, c0[q]);
        _mm512_mask_storeu_ps(yq + 16, m1, c1[q]);
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

  // C (MR, nv) (+)= A (MR, kc) · B panel (kc, 32); A row-major with row stride KC (AK = false)
  // or k-major with stride MR_MAX (AK = true, the transposed-A packing).
  // If PF, the line pf.p + k·pf.step is prefetched into L2 at steps k < pf.n.
  template <int MR, bool AK, bool PF>
  static void kernel(int64_t kc, const float* __restrict pa, const float* __restrict pb,
                     float* __restrict C, int64_t ldc, int nv, float alpha, float beta,
                     bool first, const Prefetch& pf) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
      if constexpr (PF)
        if (k < pf.n) _mm_prefetch(pf.p + k * pf.step, _MM_HINT_T1);
      const __m512 b0 = _mm512_load_ps(pb + k * NR), b1 = _mm512_load_ps(pb + k * NR + 16);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const __m512 a = _mm512_set1_ps(AK ? pa[k * MR_MAX + r] : pa[r * KC + k]);
        c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
      }
    }
    const __mmask16 m0 = mask16(nv), m1 = mask16(nv - 16);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      float* cr = C + r * ldc;
      __m512 o0, o1;
      if (first && beta == 0.0f) {
        o0 = _mm512_mul_ps(va, c0[r]);
        o1 = _mm512_mul_ps(va, c1[r]);
      } else {
        __m512 y0 = _mm512_maskz_loadu_ps(m0, cr), y1 = _mm512_maskz_loadu_ps(m1, cr + 16);
        if (first && beta != 1.0f) {
          y0 = _mm512_mul_ps(vb, y0);
          y1 = _mm512_mul_ps(vb, y1);
        }
        o0 = _mm512_fmadd_ps(va, c0[r], y0);
        o1 = _mm512_fmadd_ps(va, c1[r], y1);
      }
      _mm512_mask_storeu_ps(cr, m0, o0);
      _mm512_mask_storeu_ps(cr + 16, m1, o1);
    }
  }
};

// ---- matvec ----

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// dot(W row n, x) with four accumulators (four independent FMA chains), 64 weights per step.
// For BF16, xs is x permuted per 32-chunk (16 even-index then 16 odd-index elements) and zero
// padded to a multiple of 32.
template <DType T>
inline float dot_row(const void* W, const float* xs, int64_t n, int64_t K) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t k = 0;
  if constexpr (T == DType::BF16) {
    // 32 weights per load, split exactly into the even elements (shift) and the odd ones (AND).
    const uint16_t* w = static_cast<const uint16_t*>(W) + n * K;
    const __m512i hi = _mm512_set1_epi32(int(0xFFFF0000u));
    for (; k + 64 <= K; k += 64) {
      const __m512i v0 = _mm512_loadu_si512(w + k), v1 = _mm512_loadu_si512(w + k + 32);
      a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), _mm512_load_ps(xs + k),
                           a0);
      a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, hi)),
                           _mm512_load_ps(xs + k + 16), a1);
      a2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)),
                           _mm512_load_ps(xs + k + 32), a2);
      a3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v1, hi)),
                           _mm512_load_ps(xs + k + 48), a3);
    }
    for (; k < K; k += 32) {  // up to two 32-chunks, the last one masked (xs is zero padded)
      const __mmask32 km = K - k >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << (K - k)) - 1u);
      const __m512i v = _mm512_maskz_loadu_epi16(km, w + k);
      a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_load_ps(xs + k),
                           a0);
      a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi)),
                           _mm512_load_ps(xs + k + 16), a1);
    }
  } else {
    const int64_t i0 = n * K;
    for (; k + 64 <= K; k += 64) {
      a0 = _mm512_fmadd_ps(load_row16<T>(W, i0 + k, 0xFFFF), _mm512_loadu_ps(xs + k), a0);
      a1 = _mm512_fmadd_ps(load_row16<T>(W, i0 + k + 16, 0xFFFF), _mm512_loadu_ps(xs + k + 16), a1);
      a2 = _mm512_fmadd_ps(load_row16<T>(W, i0 + k + 32, 0xFFFF), _mm512_loadu_ps(xs + k + 32), a2);
      a3 = _mm512_fmadd_ps(load_row16<T>(W, i0 + k + 48, 0xFFFF), _mm512_loadu_ps(xs + k + 48), a3);
    }
    for (; k < K; k += 16) {  // up to four 16-chunks, the last one masked
      const __mmask16 km = mask16(K - k);
      a0 = _mm512_fmadd_ps(load_row16<T>(W, i0 + k, km), _mm512_maskz_loadu_ps(km, xs + k), a0);
    }
  }
  return hsum(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Rows split evenly over the team (static schedule): each thread reads one contiguous part of W,
// row after row, as a single linear stream for the hardware prefetcher (the layout that was
// fastest for the AVX2 kernel on DRAM-resident weights).
template <DType T>
void matvec_t(const void* W, const float* xs, float* y, int64_t N, int64_t K, bool accumulate) {
  const bool par = N * K >= kParallelMinMacs;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t n = 0; n < N; ++n) {
    const float s = dot_row<T>(W, xs, n, K);
    y[n] = accumulate ? y[n] + s : s;
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
    case DType::F32: matvec_t<DType::F32>(W, x, y, N, K, accumulate); return;
    case DType::F16: matvec_t<DType::F16>(W, x, y, N, K, accumulate); return;
    case DType::BF16: {
      const int64_t kp = (K + 31) / 32 * 32;
      float* xs = scratch(2, size_t(kp));
      for (int64_t c = 0; c < kp; c += 32)
        for (int j = 0; j < 16; ++j) {
          const int64_t e = c + 2 * j, o = c + 2 * j + 1;
          xs[c + j] = e < K ? x[e] : 0.0f;
          xs[c + 16 + j] = o < K ? x[o] : 0.0f;
        }
      matvec_t<DType::BF16>(W, xs, y, N, K, accumulate);
      return;
    }
    default: return;  // rejected by the dispatcher
  }
}

}  // namespace qwen::ops::detail::QWEN_AVX512_NS
