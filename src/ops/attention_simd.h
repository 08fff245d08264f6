// ops/attention_simd.h — internal: the flash-attention inner kernels (contracts in
// attention_kernels.h) written once against a vector-traits type V (simd_avx2.h, simd_avx512.h)
// and instantiated by attention_avx2.cpp and attention_avx512.cpp, so both ISAs share one tested
// body of logic (masks, tails, register blocks) and differ only in the traits.
// Include only from a *_avx2.cpp / *_avx512.cpp file; everything here has internal linkage.
//
// Register blocking: the score kernel holds a (V::kScoreRows × V::kScoreVecs·W) block of scores
// in registers and streams the transposed K tile once per block; the P·V kernel holds a
// (V::kPvRows × V::kPvVecs·W) block of the output accumulator and streams V rows once per block.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "ops/attention_kernels.h"

namespace qwen::ops::detail {
namespace {

// Lanes 0 .. n-1 of p (n in 1..7), the rest 0; nothing past p[n-1] is read.
inline __m256 load8_n(const float* p, int64_t n) {
  const __m256i m =
      _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_maskload_ps(p, m);
}

// r[i][c] -> r[c][i] for an 8 × 8 block of floats.
inline void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  // u_k: column k (rows 0-3 or 4-7) in the low 128 bits, column k+4 in the high 128 bits.
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

template <class V>
struct AttnSimd {
  using reg = typename V::reg;
  static constexpr int W = V::W;
  static_assert(kAttnBk % (W * V::kScoreVecs) == 0, "key tile must split into score blocks");

  static void transpose_k(const float* k, int64_t k_stride, int64_t nk, int64_t D, float* Kt) {
    // 8 keys × 8 dims at a time, transposed in registers (transpose8x8, AVX2 instructions, which
    // the AVX-512 build has too). Keys past nk are zero; dims past D are neither read nor stored.
    for (int64_t j0 = 0; j0 < kAttnBk; j0 += 8) {
      const int64_t nr = std::clamp<int64_t>(nk - j0, 0, 8);
      if (nr == 0) {
        for (int64_t d = 0; d < D; ++d)
          _mm256_storeu_ps(Kt + d * kAttnBk + j0, _mm256_setzero_ps());
        continue;
      }
      for (int64_t d0 = 0; d0 < D; d0 += 8) {
        const int64_t nc = std::min<int64_t>(8, D - d0);
        __m256 r[8];
        const float* src = k + j0 * k_stride + d0;
        if (nc == 8)
          for (int i = 0; i < 8; ++i)
            r[i] = i < nr ? _mm256_loadu_ps(src + i * k_stride) : _mm256_setzero_ps();
        else
          for (int i = 0; i < 8; ++i)
            r[i] = i < nr ? load8_n(src + i * k_stride, nc) : _mm256_setzero_ps();
        transpose8x8(r);
        for (int64_t c = 0; c < nc; ++c) _mm256_storeu_ps(Kt + (d0 + c) * kAttnBk + j0, r[c]);
      }
    }
  }

  // S rows [0, R), key columns [c0, c0 + kScoreVecs·W).
  template <int R>
  static void scores_block(const float* Qs, int64_t D, const float* Kt, float* S, int64_t c0) {
    constexpr int NV = V::kScoreVecs;
    reg acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
    for (int64_t d = 0; d < D; ++d) {
      const float* kr = Kt + d * kAttnBk + c0;
      reg kv[NV];
      for (int c = 0; c < NV; ++c) kv[c] = V::load(kr + c * W);
      for (int r = 0; r < R; ++r) {
        const reg qb = V::set1(Qs[r * D + d]);
        for (int c = 0; c < NV; ++c) acc[r][c] = V::fma(qb, kv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) V::store(S + r * kAttnBk + c0 + c * W, acc[r][c]);
  }

  template <int R>
  static void scores_rows(const float* Qs, int64_t D, const float* Kt, float* S) {
    for (int64_t c0 = 0; c0 < kAttnBk; c0 += V::kScoreVecs * W) scores_block<R>(Qs, D, Kt, S, c0);
  }

  static void scores(const float* Qs, int64_t M, int64_t D, const float* Kt, float* S) {
    constexpr int R = V::kScoreRows;
    int64_t r = 0;
    for (; r + R <= M; r += R) scores_rows<R>(Qs + r * D, D, Kt, S + r * kAttnBk);
    const float* q = Qs + r * D;
    float* s = S + r * kAttnBk;
    static_assert(R <= 6, "remainder dispatch below covers up to 5 rows");
    switch (M - r) {
      case 5:
        scores_rows<5>(q, D, Kt, s);
        break;
      case 4:
        scores_rows<4>(q, D, Kt, s);
        break;
      case 3:
        scores_rows<3>(q, D, Kt, s);
        break;
      case 2:
        scores_rows<2>(q, D, Kt, s);
        break;
      case 1:
        scores_rows<1>(q, D, Kt, s);
        break;
      default:
        break;
    }
  }

  // One row with nv live scores (1 .. kAttnBk); FULL: nv == kAttnBk, no lane masks needed.
  template <bool FULL>
  static void softmax_row(float* s, int64_t nv, float& m, float& l, float* a, int64_t D) {
    constexpr int NC = int(kAttnBk / W);
    reg x[NC];
    reg mx = V::set1(-std::numeric_limits<float>::infinity());
    for (int c = 0; c < NC; ++c) {
      x[c] = V::load(s + c * W);
      mx = FULL ? V::max(mx, x[c]) : V::max_n(mx, x[c], nv - c * W);
    }
    const float m_old = m;
    const float m_new = std::max(m_old, V::hmax(mx));
    const reg mv = V::set1(m_new);
    reg sum = V::zero();
    for (int c = 0; c < NC; ++c) {
      reg p = V::exp2(V::sub(x[c], mv));
      if (!FULL) p = V::keep_n(p, nv - c * W);
      V::store(s + c * W, p);
      sum = V::add(sum, p);
    }
    const float alpha = std::exp2(m_old - m_new);  // 0 on the first tile (m_old = -inf)
    l = l * alpha + V::hsum(sum);
    m = m_new;
    if (alpha != 1.0f) {
      const reg av = V::set1(alpha);
      int64_t d = 0;
      for (; d + W <= D; d += W) V::store(a + d, V::mul(av, V::load(a + d)));
      if (d < D) V::store_n(a + d, V::mul(av, V::load_n(a + d, D - d)), D - d);
    }
  }

  static void softmax_update(float* S, int64_t M, const int32_t* n_valid, float* m, float* l,
                             float* acc, int64_t D) {
    for (int64_t r = 0; r < M; ++r) {
      float* s = S + r * kAttnBk;
      const int64_t nv = n_valid[r];
      if (nv >= kAttnBk)
        softmax_row<true>(s, nv, m[r], l[r], acc + r * D, D);
      else if (nv > 0)
        softmax_row<false>(s, nv, m[r], l[r], acc + r * D, D);
      else
        for (int64_t c = 0; c < kAttnBk; c += W) V::store(s + c, V::zero());
    }
  }

  // acc rows [0, R) (stride D), NV vectors of columns; with TAIL the last vector has only wl
  // lanes (1 .. W-1), read and written masked.
  template <int R, int NV, bool TAIL>
  static void pv_block(const float* P, int64_t nk, const float* v, int64_t v_stride, float* acc,
                       int64_t D, int64_t wl) {
    auto ld = [&](const float* p, int c) {
      return TAIL && c == NV - 1 ? V::load_n(p + c * W, wl) : V::load(p + c * W);
    };
    reg a[R][NV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) a[r][c] = ld(acc + r * D, c);
    for (int64_t j = 0; j < nk; ++j) {
      const float* vr = v + j * v_stride;
      reg vv[NV];
      for (int c = 0; c < NV; ++c) vv[c] = ld(vr, c);
      for (int r = 0; r < R; ++r) {
        const reg pb = V::set1(P[r * kAttnBk + j]);
        for (int c = 0; c < NV; ++c) a[r][c] = V::fma(pb, vv[c], a[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) {
        if (TAIL && c == NV - 1)
          V::store_n(acc + r * D + c * W, a[r][c], wl);
        else
          V::store(acc + r * D + c * W, a[r][c]);
      }
  }

  template <int R, bool TAIL>
  static void pv_chunk(int nv, const float* P, int64_t nk, const float* v, int64_t v_stride,
                       float* acc, int64_t D, int64_t wl) {
    static_assert(V::kPvVecs <= 4, "chunk dispatch below covers up to 4 vectors");
    switch (nv) {
      case 4:
        pv_block<R, 4, TAIL>(P, nk, v, v_stride, acc, D, wl);
        break;
      case 3:
        pv_block<R, 3, TAIL>(P, nk, v, v_stride, acc, D, wl);
        break;
      case 2:
        pv_block<R, 2, TAIL>(P, nk, v, v_stride, acc, D, wl);
        break;
      default:
        pv_block<R, 1, TAIL>(P, nk, v, v_stride, acc, D, wl);
        break;
    }
  }

  template <int R>
  static void pv_rows(const float* P, int64_t nk, const float* v, int64_t v_stride, float* acc,
                      int64_t D) {
    constexpr int64_t chunk = int64_t(V::kPvVecs) * W;
    for (int64_t d0 = 0; d0 < D; d0 += chunk) {
      const int64_t w = std::min(chunk, D - d0);
      const int nv = int((w + W - 1) / W);
      const int64_t wl = w - int64_t(nv - 1) * W;  // lanes of the last vector, 1 .. W
      if (wl == W)
        pv_chunk<R, false>(nv, P, nk, v + d0, v_stride, acc + d0, D, wl);
      else
        pv_chunk<R, true>(nv, P, nk, v + d0, v_stride, acc + d0, D, wl);
    }
  }

  static void pv(const float* P, int64_t M, int64_t nk, const float* v, int64_t v_stride, int64_t D,
                 float* acc) {
    constexpr int R = V::kPvRows;
    static_assert(R <= 6, "remainder dispatch below covers up to 5 rows");
    int64_t r = 0;
    for (; r + R <= M; r += R) pv_rows<R>(P + r * kAttnBk, nk, v, v_stride, acc + r * D, D);
    const float* p = P + r * kAttnBk;
    float* a = acc + r * D;
    switch (M - r) {
      case 5:
        pv_rows<5>(p, nk, v, v_stride, a, D);
        break;
      case 4:
        pv_rows<4>(p, nk, v, v_stride, a, D);
        break;
      case 3:
        pv_rows<3>(p, nk, v, v_stride, a, D);
        break;
      case 2:
        pv_rows<2>(p, nk, v, v_stride, a, D);
        break;
      case 1:
        pv_rows<1>(p, nk, v, v_stride, a, D);
        break;
      default:
        break;
    }
  }

  // Decode scores without the transpose: R query rows against 4 keys at a time, 8 dims per FMA
  // (AVX2 instructions, which the AVX-512 build has too), the 4 keys' partial sums of a row
  // reduced with two rounds of hadd.
  template <int R>
  static void scores_direct_rows(const float* Qs, int64_t D, const float* k, int64_t ks, int64_t nk,
                                 float* S) {
    const int64_t D8 = D / 8 * 8, dt = D - D8;
    int64_t j = 0;
    for (; j + 4 <= nk; j += 4) {
      const float* kj = k + j * ks;
      __m256 acc[R][4];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_setzero_ps();
      for (int64_t d = 0; d < D8; d += 8) {
        __m256 kv[4];
        for (int c = 0; c < 4; ++c) kv[c] = _mm256_loadu_ps(kj + c * ks + d);
        for (int r = 0; r < R; ++r) {
          const __m256 q = _mm256_loadu_ps(Qs + r * D + d);
          for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_fmadd_ps(q, kv[c], acc[r][c]);
        }
      }
      if (dt) {
        __m256 kv[4];
        for (int c = 0; c < 4; ++c) kv[c] = load8_n(kj + c * ks + D8, dt);
        for (int r = 0; r < R; ++r) {
          const __m256 q = load8_n(Qs + r * D + D8, dt);
          for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_fmadd_ps(q, kv[c], acc[r][c]);
        }
      }
      for (int r = 0; r < R; ++r) {
        // lanes: (key 0 half 0, key 1 half 0, key 2 half 0, key 3 half 0 | the same, half 1)
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[r][0], acc[r][1]),
                                        _mm256_hadd_ps(acc[r][2], acc[r][3]));
        _mm_storeu_ps(S + r * kAttnBk + j,
                      _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
      }
    }
    for (; j < nk; ++j) {
      const float* kj = k + j * ks;
      for (int r = 0; r < R; ++r) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t d = 0; d < D8; d += 8)
          a = _mm256_fmadd_ps(_mm256_loadu_ps(Qs + r * D + d), _mm256_loadu_ps(kj + d), a);
        if (dt) a = _mm256_fmadd_ps(load8_n(Qs + r * D + D8, dt), load8_n(kj + D8, dt), a);
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        S[r * kAttnBk + j] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
      }
    }
    for (int r = 0; r < R; ++r) std::fill(S + r * kAttnBk + nk, S + (r + 1) * kAttnBk, 0.0f);
  }

  static void scores_direct(const float* Qs, int64_t M, int64_t D, const float* k, int64_t ks,
                            int64_t nk, float* S) {
    int64_t r = 0;
    for (; r + 3 <= M; r += 3) scores_direct_rows<3>(Qs + r * D, D, k, ks, nk, S + r * kAttnBk);
    if (M - r == 2) scores_direct_rows<2>(Qs + r * D, D, k, ks, nk, S + r * kAttnBk);
    if (M - r == 1) scores_direct_rows<1>(Qs + r * D, D, k, ks, nk, S + r * kAttnBk);
  }

  static const AttnKernels& table() {
    static const AttnKernels k{transpose_k, scores, softmax_update, pv, scores_direct};
    return k;
  }
};

}  // namespace
}  // namespace qwen::ops::detail
