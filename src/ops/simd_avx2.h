// ops/simd_avx2.h — internal: the AVX2 + FMA vector traits (8 floats) that the generic kernels
// in attention_simd.h and elementwise_simd.h are written against, with a vectorised exp2 and exp.
// Include only from *_avx2.cpp files (everything is inline in a struct, compiled per file).
//
// exp2/exp: same reduction and polynomial as simd_avx512.h; AVX2 has no vscalefps, so 2^n is
// applied as two exact power-of-two factors 2^(n>>1)·2^(n-(n>>1)) built from exponent bits
// (|n| <= 200 keeps each factor a normal float), which rounds once at the end like vscalefps:
// gradual underflow to 0 (so -inf -> 0), overflow to +inf. NaN stays NaN (x goes second in
// max/min, which return the second operand on NaN).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace qwen::ops::simd {

struct Avx2 {
  using reg = __m256;
  static constexpr int W = 8;
  // Register blocks (16 ymm): scores 3 rows × 4 vectors of keys (12 accumulators);
  // P·V 4 rows × 3 vectors of output columns (12 accumulators).
  static constexpr int kScoreRows = 3, kScoreVecs = 4;
  static constexpr int kPvRows = 4, kPvVecs = 3;

  static __m256i mask(int64_t n) {  // lanes 0 .. n-1 all ones
    const int32_t c = n >= 8 ? 8 : n <= 0 ? 0 : int32_t(n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg load_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store_n(float* p, reg v, int64_t n) { _mm256_maskstore_ps(p, mask(n), v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static reg keep_n(reg v, int64_t n) { return _mm256_and_ps(v, _mm256_castsi256_ps(mask(n))); }
  static reg max_n(reg acc, reg v, int64_t n) {
    return _mm256_blendv_ps(acc, _mm256_max_ps(acc, v), _mm256_castsi256_ps(mask(n)));
  }
  static float hsum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(reg v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
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
  // p · 2^n for integral n in [-200, 200] (as floats), one rounding.
  static reg scale_pow2(reg p, reg n) {
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const reg f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const reg f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return mul(mul(p, f1), f2);
  }
  static reg exp2(reg x) {  // below -200: 0, above 200: +inf
    x = _mm256_max_ps(set1(-200.0f), x);
    x = _mm256_min_ps(set1(200.0f), x);
    const reg n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = sub(x, n);  // exact, |f| <= 1/2
    const reg p = poly7(f, 0.6931471805599453f, 0.2402265069591007f, 0.055504108664821576f,
                        0.009618129107628477f, 0.0013333558146428441f, 0.00015403530393381606f,
                        1.5252733804059838e-05f);
    return scale_pow2(p, n);
  }
  static reg exp(reg x) {  // below -138: 0, above 138: +inf
    x = _mm256_max_ps(set1(-138.0f), x);
    x = _mm256_min_ps(set1(138.0f), x);
    const reg n = _mm256_round_ps(mul(x, set1(1.4426950408889634f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n·ln2, ln2 = 0.693359375 (9 bits, so n·hi is exact) - 2.12194440e-4.
    reg r = _mm256_fnmadd_ps(n, set1(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, set1(-2.12194440054713e-4f), r);
    const reg p = poly7(r, 1.0f, 0.5f, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720, 1.0f / 5040);
    return scale_pow2(p, n);
  }
};

}  // namespace qwen::ops::simd
