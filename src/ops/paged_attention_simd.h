// ops/paged_attention_simd.h — internal: the paged attention inner kernels (contracts in
// paged_attention.h) written once against a vector-traits type V (simd_avx2.h, simd_avx512.h)
// and instantiated by paged_attention_avx2.cpp and paged_attention_avx512.cpp, so both ISAs share
// one tested body of logic (masks, tails, register blocks) and differ only in the traits.
// Include only from a *_avx2.cpp / *_avx512.cpp file; everything here has internal linkage.
//
// Register blocking: scores hold V::kScoreRows rows × up to V::kScoreVecs vectors of keys, P·V
// holds V::kPvRows rows × up to V::kPvVecs vectors of output columns. Every row's arithmetic is
// the same whatever block of rows it falls in (each accumulator is one row's own FMA chain), which
// keeps the kernel batch-invariant.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "ops/paged_attention.h"

namespace qwen::ops::detail {
namespace {

template <class V>
struct PagedSimd {
  using reg = typename V::reg;
  static constexpr int W = V::W;

  // S rows [0, R) × key vectors [0, NV) from column c0; nc live columns from c0 (the last vector
  // may be partial: loads and stores are masked, nothing past column c0 + nc is touched).
  template <int R, int NV>
  static void scores_block(const float* Qs, int64_t D, const float* Kt, int64_t bs, int64_t c0,
                           int64_t nc, float* S, int64_t lds) {
    reg acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
    const bool full = nc >= NV * W;
    for (int64_t d = 0; d < D; ++d) {
      const float* kr = Kt + d * bs + c0;
      reg kv[NV];
      for (int c = 0; c < NV; ++c) kv[c] = full ? V::load(kr + c * W) : V::load_n(kr + c * W, nc - c * W);
      for (int r = 0; r < R; ++r) {
        const reg qb = V::set1(Qs[r * D + d]);
        for (int c = 0; c < NV; ++c) acc[r][c] = V::fma(qb, kv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) {
        float* dst = S + r * lds + c0 + c * W;
        if (full) V::store(dst, acc[r][c]);
        else V::store_n(dst, acc[r][c], nc - c * W);
      }
  }

  template <int R>
  static void scores_rows(const float* Qs, int64_t D, const float* Kt, int64_t bs, int64_t nk,
                          float* S, int64_t lds) {
    constexpr int NVM = V::kScoreVecs;
    static_assert(NVM >= 1 && NVM <= 4, "dispatch below covers 1 .. 4 vectors");
    for (int64_t c0 = 0; c0 < nk; c0 += NVM * W) {
      const int64_t nc = std::min<int64_t>(NVM * W, nk - c0);
      switch ((nc + W - 1) / W) {
        case 4: if constexpr (NVM >= 4) scores_block<R, 4>(Qs, D, Kt, bs, c0, nc, S, lds); break;
        case 3: if constexpr (NVM >= 3) scores_block<R, 3>(Qs, D, Kt, bs, c0, nc, S, lds); break;
        case 2: if constexpr (NVM >= 2) scores_block<R, 2>(Qs, D, Kt, bs, c0, nc, S, lds); break;
        default: scores_block<R, 1>(Qs, D, Kt, bs, c0, nc, S, lds); break;
      }
    }
  }

  static void scores(const float* Qs, int64_t M, int64_t D, const float* Kt, int64_t bs,
                     int64_t nk, float* S, int64_t lds) {
    constexpr int R = V::kScoreRows;
    static_assert(R >= 1 && R <= 6, "remainder dispatch below covers up to 5 rows");
    int64_t r = 0;
    for (; r + R <= M; r += R) scores_rows<R>(Qs + r * D, D, Kt, bs, nk, S + r * lds, lds);
    const float* q = Qs + r * D;
    float* s = S + r * lds;
    switch (M - r) {
      case 5: scores_rows<5>(q, D, Kt, bs, nk, s, lds); break;
      case 4: scores_rows<4>(q, D, Kt, bs, nk, s, lds); break;
      case 3: scores_rows<3>(q, D, Kt, bs, nk, s, lds); break;
      case 2: scores_rows<2>(q, D, Kt, bs, nk, s, lds); break;
      case 1: scores_rows<1>(q, D, Kt, bs, nk, s, lds); break;
      default: break;
    }
  }

  static void softmax(float* S, int64_t lds, int64_t M, const int32_t* n_valid, float* m,
                      float* l, float* acc, int64_t D) {
    for (int64_t r = 0; r < M; ++r) {
      float* s = S + r * lds;
      const int64_t nv = n_valid[r];
      if (nv <= 0) {
        for (int64_t c = 0; c < lds; c += W) V::store(s + c, V::zero());
        continue;
      }
      reg mx = V::set1(-std::numeric_limits<float>::infinity());
      for (int64_t c = 0; c < nv; c += W) mx = V::max_n(mx, V::load(s + c), nv - c);
      const float m_old = m[r];
      const float m_new = std::max(m_old, V::hmax(mx));
      const reg mv = V::set1(m_new);
      reg sum = V::zero();
      for (int64_t c = 0; c < lds; c += W) {
        const reg p = c < nv ? V::keep_n(V::exp2(V::sub(V::load(s + c), mv)), nv - c) : V::zero();
        V::store(s + c, p);
        sum = V::add(sum, p);
      }
      const float alpha = std::exp2(m_old - m_new);  // 0 on the first tile (m_old = -inf)
      l[r] = l[r] * alpha + V::hsum(sum);
      m[r] = m_new;
      if (alpha != 1.0f) {
        float* a = acc + r * D;
        const reg av = V::set1(alpha);
        int64_t d = 0;
        for (; d + W <= D; d += W) V::store(a + d, V::mul(av, V::load(a + d)));
        if (d < D) V::store_n(a + d, V::mul(av, V::load_n(a + d, D - d)), D - d);
      }
    }
  }

  // acc rows [0, R) (stride D) × output vectors [0, NV) from column d0; nd live columns.
  template <int R, int NV>
  static void pv_block(const float* P, int64_t lds, int64_t nk, const float* Vb, int64_t D,
                       float* acc, int64_t d0, int64_t nd) {
    const bool full = nd >= NV * W;
    auto ld = [&](const float* p, int c) {
      return full ? V::load(p + c * W) : V::load_n(p + c * W, nd - c * W);
    };
    reg a[R][NV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) a[r][c] = ld(acc + r * D + d0, c);
    for (int64_t j = 0; j < nk; ++j) {
      const float* vr = Vb + j * D + d0;
      reg vv[NV];
      for (int c = 0; c < NV; ++c) vv[c] = ld(vr, c);
      for (int r = 0; r < R; ++r) {
        const reg pb = V::set1(P[r * lds + j]);
        for (int c = 0; c < NV; ++c) a[r][c] = V::fma(pb, vv[c], a[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) {
        float* dst = acc + r * D + d0 + c * W;
        if (full) V::store(dst, a[r][c]);
        else V::store_n(dst, a[r][c], nd - c * W);
      }
  }

  template <int R>
  static void pv_rows(const float* P, int64_t lds, int64_t nk, const float* Vb, int64_t D,
                      float* acc) {
    constexpr int NVM = V::kPvVecs;
    static_assert(NVM >= 1 && NVM <= 4, "dispatch below covers 1 .. 4 vectors");
    for (int64_t d0 = 0; d0 < D; d0 += NVM * W) {
      const int64_t nd = std::min<int64_t>(NVM * W, D - d0);
      switch ((nd + W - 1) / W) {
        case 4: if constexpr (NVM >= 4) pv_block<R, 4>(P, lds, nk, Vb, D, acc, d0, nd); break;
        case 3: if constexpr (NVM >= 3) pv_block<R, 3>(P, lds, nk, Vb, D, acc, d0, nd); break;
        case 2: if constexpr (NVM >= 2) pv_block<R, 2>(P, lds, nk, Vb, D, acc, d0, nd); break;
        default: pv_block<R, 1>(P, lds, nk, Vb, D, acc, d0, nd); break;
      }
    }
  }

  static void pv(const float* P, int64_t lds, int64_t M, int64_t nk, const float* Vb, int64_t D,
                 float* acc) {
    constexpr int R = V::kPvRows;
    static_assert(R >= 1 && R <= 6, "remainder dispatch below covers up to 5 rows");
    int64_t r = 0;
    for (; r + R <= M; r += R) pv_rows<R>(P + r * lds, lds, nk, Vb, D, acc + r * D);
    const float* p = P + r * lds;
    float* a = acc + r * D;
    switch (M - r) {
      case 5: pv_rows<5>(p, lds, nk, Vb, D, a); break;
      case 4: pv_rows<4>(p, lds, nk, Vb, D, a); break;
      case 3: pv_rows<3>(p, lds, nk, Vb, D, a); break;
      case 2: pv_rows<2>(p, lds, nk, Vb, D, a); break;
      case 1: pv_rows<1>(p, lds, nk, Vb, D, a); break;
      default: break;
    }
  }

  static const PagedKernels& table() {
    static const PagedKernels k{scores, softmax, pv};
    return k;
  }
};

}  // namespace
}  // namespace qwen::ops::detail
