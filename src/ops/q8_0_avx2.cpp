// ops/q8_0_avx2.cpp — AVX2 + FMA + F16C kernels for Q8_0 blocks (see q8_0.h): dequantise and the
// decode matrix-vector product. The matvec widens each block's int8 values to f32 and multiplies
// with f32 x (no activation quantisation, so the result equals the exact dot product up to f32
// summation order); decode is limited by reading the 34-byte blocks from DRAM.
#include <immintrin.h>

#include <cstring>

#include "ops/q8_0.h"

namespace qwen::ops::detail {

namespace {

constexpr int kPrefetch = 1024;  // bytes ahead of the block being read

inline __m256 cvt8(const uint8_t* q) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}

inline float load_d(const uint8_t* blk) {
  uint16_t h;
  std::memcpy(&h, blk, 2);
  return _cvtsh_ss(h);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Sum of the 32 products of one block with x.
inline __m256 block_dot(const uint8_t* blk, const float* x) {
  const uint8_t* q = blk + 2;
  __m256 p0 = _mm256_mul_ps(cvt8(q), _mm256_loadu_ps(x));
  __m256 p1 = _mm256_mul_ps(cvt8(q + 8), _mm256_loadu_ps(x + 8));
  p0 = _mm256_fmadd_ps(cvt8(q + 16), _mm256_loadu_ps(x + 16), p0);
  p1 = _mm256_fmadd_ps(cvt8(q + 24), _mm256_loadu_ps(x + 24), p1);
  return _mm256_add_ps(p0, p1);
}

}  // namespace

void q8_0_dequantize_avx2(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
    const uint8_t* blk = in + b * int64_t(kQ8_0BlockBytes);
    const __m256 d = _mm256_set1_ps(load_d(blk));
    float* o = dst + b * kQ8_0Block;
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(o + 8 * j, _mm256_mul_ps(d, cvt8(blk + 2 + 8 * j)));
  }
}

void q8_0_matvec_rows_avx2(const void* W, const float* x, float* y, int64_t n0, int64_t n1,
                           int64_t K, bool acc) {
  const int64_t nb = K / kQ8_0Block;
  const auto* w = static_cast<const uint8_t*>(W);
  int64_t n = n0;
  // Two rows at a time: two independent accumulator chains per row, x blocks shared.
  for (; n + 2 <= n1; n += 2) {
    const uint8_t* r0 = w + n * nb * int64_t(kQ8_0BlockBytes);
    const uint8_t* r1 = r0 + nb * int64_t(kQ8_0BlockBytes);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      const uint8_t* p0 = r0 + b * int64_t(kQ8_0BlockBytes);
      const uint8_t* p1 = r1 + b * int64_t(kQ8_0BlockBytes);
      const float* xb = x + b * kQ8_0Block;
      // Software prefetch ahead of the two row streams (the hardware prefetcher alone leaves
      // DRAM bandwidth unused at this compute density).
      _mm_prefetch(reinterpret_cast<const char*>(p0) + kPrefetch, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p1) + kPrefetch, _MM_HINT_T0);
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(load_d(p0)), block_dot(p0, xb), a0);
      c0 = _mm256_fmadd_ps(_mm256_set1_ps(load_d(p1)), block_dot(p1, xb), c0);
      a1 = _mm256_fmadd_ps(_mm256_set1_ps(load_d(p0 + kQ8_0BlockBytes)),
                           block_dot(p0 + kQ8_0BlockBytes, xb + kQ8_0Block), a1);
      c1 = _mm256_fmadd_ps(_mm256_set1_ps(load_d(p1 + kQ8_0BlockBytes)),
                           block_dot(p1 + kQ8_0BlockBytes, xb + kQ8_0Block), c1);
    }
    for (; b < nb; ++b) {
      const uint8_t* p0 = r0 + b * int64_t(kQ8_0BlockBytes);
      const uint8_t* p1 = r1 + b * int64_t(kQ8_0BlockBytes);
      const float* xb = x + b * kQ8_0Block;
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(load_d(p0)), block_dot(p0, xb), a0);
      c0 = _mm256_fmadd_ps(_mm256_set1_ps(load_d(p1)), block_dot(p1, xb), c0);
    }
    const float s0 = hsum(_mm256_add_ps(a0, a1)), s1 = hsum(_mm256_add_ps(c0, c1));
    y[n] = acc ? y[n] + s0 : s0;
    y[n + 1] = acc ? y[n + 1] + s1 : s1;
  }
  for (; n < n1; ++n) {
    const uint8_t* r0 = w + n * nb * int64_t(kQ8_0BlockBytes);
    __m256 a0 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* p0 = r0 + b * int64_t(kQ8_0BlockBytes);
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(load_d(p0)), block_dot(p0, x + b * kQ8_0Block), a0);
    }
    const float s0 = hsum(a0);
    y[n] = acc ? y[n] + s0 : s0;
  }
}

}  // namespace qwen::ops::detail
