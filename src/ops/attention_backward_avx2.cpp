// ops/attention_backward_avx2.cpp — the attention backward's own inner kernels (contracts in
// attention_backward.h) for AVX2 + FMA: the fused probability / dS tile and the transposed
// product C += Aᵀ·B that accumulates dV and dK, and the f32 → f64 add of the dq partials.
// Reached only through attn_bwd_kernels_avx2()
// after cpu_features() said AVX2 is there. Portable twins in attention_backward.cpp.
//
// tn_acc register block: R rows of C (= R columns of A, broadcast one float at a time) × NV
// 8-float vectors of C's columns, streamed over A's M rows: 4 × 3 = 12 accumulators, 3 B vectors
// and 1 broadcast fill the 16 ymm registers.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "ops/attention_backward.h"
#include "ops/attention_kernels.h"
#include "ops/simd_avx2.h"

namespace qwen::ops::detail {
namespace {

using V = simd::Avx2;
using reg = V::reg;
constexpr int W = V::W;
constexpr int kRows = 4, kVecs = 3;  // measured best of 4×3, 3×4, 5×2, 6×2 (M=48, D=64)

void grad_tile(float* S, float* dP, int64_t M, int64_t ncols, const int32_t* n_valid,
               const float* lse2, const float* Dv) {
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * kAttnBk;
    float* dp = dP + r * kAttnBk;
    const int64_t nv = std::clamp<int64_t>(n_valid[r], 0, ncols);
    const reg l = V::set1(lse2[r]), dvec = V::set1(Dv[r]);
    int64_t j = 0;
    for (; j + W <= nv; j += W) {
      const reg p = V::exp2(V::sub(V::load(s + j), l));
      V::store(s + j, p);
      V::store(dp + j, V::mul(p, V::sub(V::load(dp + j), dvec)));
    }
    if (j < nv) {  // tiles are kAttnBk (a multiple of W) wide, so whole vectors stay inside
      const reg p = V::keep_n(V::exp2(V::sub(V::load(s + j), l)), nv - j);
      V::store(s + j, p);
      V::store(dp + j, V::mul(p, V::sub(V::load(dp + j), dvec)));
      j += W;
    }
    for (; j < ncols; j += W) {
      V::store(s + j, V::zero());
      V::store(dp + j, V::zero());
    }
  }
}

// C rows [0, R) (stride D), NV vectors of columns, the last with wl lanes (1 .. W) when TAIL.
template <int R, int NV, bool TAIL>
void tn_block(const float* A, int64_t M, const float* B, int64_t D, float* C, int64_t wl) {
  auto ld = [&](const float* p, int c) {
    return TAIL && c == NV - 1 ? V::load_n(p + c * W, wl) : V::load(p + c * W);
  };
  reg acc[R][NV];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < NV; ++c) acc[i][c] = ld(C + i * D, c);
  for (int64_t r = 0; r < M; ++r) {
    const float* b = B + r * D;
    const float* a = A + r * kAttnBk;
    reg bv[NV];
    for (int c = 0; c < NV; ++c) bv[c] = ld(b, c);
    for (int i = 0; i < R; ++i) {
      const reg ab = V::set1(a[i]);
      for (int c = 0; c < NV; ++c) acc[i][c] = V::fma(ab, bv[c], acc[i][c]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < NV; ++c) {
      if (TAIL && c == NV - 1)
        V::store_n(C + i * D + c * W, acc[i][c], wl);
      else
        V::store(C + i * D + c * W, acc[i][c]);
    }
}

template <int R, bool TAIL>
void tn_chunk(int nv, const float* A, int64_t M, const float* B, int64_t D, float* C, int64_t wl) {
  static_assert(kVecs == 3, "chunk dispatch below covers up to 3 vectors");
  switch (nv) {
    case 3:
      tn_block<R, 3, TAIL>(A, M, B, D, C, wl);
      break;
    case 2:
      tn_block<R, 2, TAIL>(A, M, B, D, C, wl);
      break;
    default:
      tn_block<R, 1, TAIL>(A, M, B, D, C, wl);
      break;
  }
}

template <int R>
void tn_rows(const float* A, int64_t M, const float* B, int64_t D, float* C) {
  constexpr int64_t chunk = int64_t(kVecs) * W;
  for (int64_t d0 = 0; d0 < D; d0 += chunk) {
    const int64_t w = std::min(chunk, D - d0);
    const int nv = int((w + W - 1) / W);
    const int64_t wl = w - int64_t(nv - 1) * W;  // lanes of the last vector, 1 .. W
    if (wl == W)
      tn_chunk<R, false>(nv, A, M, B + d0, D, C + d0, wl);
    else
      tn_chunk<R, true>(nv, A, M, B + d0, D, C + d0, wl);
  }
}

void tn_acc(const float* A, int64_t M, int64_t nk, const float* B, int64_t D, float* C) {
  int64_t j = 0;
  for (; j + kRows <= nk; j += kRows) tn_rows<kRows>(A + j, M, B, D, C + j * D);
  static_assert(kRows == 4, "remainder dispatch below covers up to 3 rows");
  switch (nk - j) {
    case 3:
      tn_rows<3>(A + j, M, B, D, C + j * D);
      break;
    case 2:
      tn_rows<2>(A + j, M, B, D, C + j * D);
      break;
    case 1:
      tn_rows<1>(A + j, M, B, D, C + j * D);
      break;
    default:
      break;
  }
}

void add_to_f64(double* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    _mm256_storeu_pd(dst + i, _mm256_add_pd(_mm256_loadu_pd(dst + i),
                                            _mm256_cvtps_pd(_mm256_castps256_ps128(x))));
    _mm256_storeu_pd(dst + i + 4, _mm256_add_pd(_mm256_loadu_pd(dst + i + 4),
                                                _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1))));
  }
  for (; i < n; ++i) dst[i] += double(src[i]);
}

}  // namespace

const AttnBwdKernels& attn_bwd_kernels_avx2() {
  static const AttnBwdKernels k{grad_tile, tn_acc, add_to_f64};
  return k;
}

}  // namespace qwen::ops::detail
