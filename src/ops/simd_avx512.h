// ops/simd_avx512.h — internal: the AVX-512 vector traits (16 floats) that the generic kernels in
// attention_simd.h and elementwise_simd.h are written against, with a vectorised exp2 and exp.
// Include only from *_avx512.cpp files (everything is inline in a struct, compiled per file).
//
// exp2/exp: exact argument reduction (exp2: x = n + f, |f| <= 1/2; exp: Cody–Waite with a
// two-part ln 2), degree-7 Taylor polynomial (truncation below 6e-9 relative), scaling by 2^n
// with vscalefps, which gives exact 0 on underflow (so -inf -> 0) and +inf on overflow.
// NaN stays NaN: max/min return their second operand when one is NaN, so x goes second.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace qwen::ops::simd {

struct Avx512 {
  using reg = __m512;
  static constexpr int W = 16;
  // Register blocks (32 zmm): scores 6 rows × 4 vectors of keys (24 accumulators);
  // P·V 6 rows × 4 vectors of output columns (24 accumulators).
  static constexpr int kScoreRows = 6, kScoreVecs = 4;
  static constexpr int kPvRows = 6, kPvVecs = 4;

  static __mmask16 mask(int64_t n) {  // lanes 0 .. n-1
    return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
  }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg load_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store_n(float* p, reg v, int64_t n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg keep_n(reg v, int64_t n) { return _mm512_maskz_mov_ps(mask(n), v); }
  static reg max_n(reg acc, reg v, int64_t n) { return _mm512_mask_max_ps(acc, mask(n), acc, v); }
  static float hsum(reg v) { return _mm512_reduce_add_ps(v); }
  static float hmax(reg v) { return _mm512_reduce_max_ps(v); }
  static reg poly7(reg x, float c1, float c2, float c3, float c4, float c5, float c6, float c7) {
    reg p = set1(c7);
    p = fma(p, x, set1(c6));
    p = fma(p, x, set1(c5));
    p = fma(p, x, set1(c4));
    p = fma(p, x, set1(c3));
    p = fma(p, x, set1(c2));
    p = fma(p, x, set1(c1));
    return fma(p, x, set1(1.0f));
  }
  static reg exp2(reg x) {  // below -200: 0, above 200: +inf
    x = _mm512_max_ps(set1(-200.0f), x);
    x = _mm512_min_ps(set1(200.0f), x);
    const reg n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = sub(x, n);  // exact, |f| <= 1/2
    const reg p = poly7(f, 0.6931471805599453f, 0.2402265069591007f, 0.055504108664821576f,
                        0.009618129107628477f, 0.0013333558146428441f, 0.00015403530393381606f,
                        1.5252733804059838e-05f);
    return _mm512_scalef_ps(p, n);
  }
  static reg exp(reg x) {  // below -140: 0, above 140: +inf
    x = _mm512_max_ps(set1(-140.0f), x);
    x = _mm512_min_ps(set1(140.0f), x);
    const reg n = _mm512_roundscale_ps(mul(x, set1(1.4426950408889634f)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n·ln2, ln2 = 0.693359375 (9 bits, so n·hi is exact) - 2.12194440e-4.
    reg r = _mm512_fnmadd_ps(n, set1(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, set1(-2.12194440054713e-4f), r);
    const reg p = poly7(r, 1.0f, 0.5f, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720, 1.0f / 5040);
    return _mm512_scalef_ps(p, n);
  }
};

}  // namespace qwen::ops::simd
