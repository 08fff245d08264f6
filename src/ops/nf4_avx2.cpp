// ops/nf4_avx2.cpp — AVX2 kernels for NF4 blocks (see nf4.h).
// Dequantise: the 16-entry f32 code table is looked up with two vpermps (codes 0-7 and 8-15,
// low 3 bits of each lane) and a blend on the code's bit 3. Matvec (decode, the hot path): four
// vpshufb byte-plane lookups per 32 codes (see nf4_permute_x), exact f32 code values, x permuted
// once per call; each block's sum is scaled by its absmax once (decoded from the double-quantised
// form by nf4_block_absmax, a chunk of blocks at a time).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "ops/nf4.h"

namespace qwen::ops::detail {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace

// Matvec layout. A block's 32 code bytes are split into two 32-byte index vectors (high
// nibbles: elements 2j; low nibbles: elements 2j+1). Each index vector is looked up with four
// vpshufb, one per byte of the f32 code values (the 16-entry table fits one shuffle exactly), and
// the four byte planes are interleaved back into f32 with unpack{lo,hi}_epi8 / _epi16, which work
// within 128-bit lanes. Vector q (0..3) of a plane holds, in lane position p, the value of code
// byte j = 4q + p (p < 4) or j = 16 + 4q + (p - 4) (p >= 4). x is permuted once per call to match:
// per block, 8 vectors: high-nibble plane q = 0..3, then low-nibble plane q = 0..3.
void nf4_permute_x(const float* x, float* xp, int64_t K) {
  for (int64_t b = 0; b < K / kNf4Block; ++b)
    for (int s = 0; s < 2; ++s)
      for (int q = 0; q < 4; ++q)
        for (int p = 0; p < 8; ++p) {
          const int j = p < 4 ? 4 * q + p : 16 + 4 * q + (p - 4);
          xp[b * kNf4Block + (s * 4 + q) * 8 + p] = x[b * kNf4Block + 2 * j + s];
        }
}

namespace {

struct BytePlanes {
  __m256i p[4];
  BytePlanes() {
    alignas(32) uint8_t t[4][32];
    for (int c = 0; c < 16; ++c) {
      uint32_t u;
      std::memcpy(&u, &kNf4Code[c], 4);
      for (int k = 0; k < 4; ++k) t[k][c] = t[k][c + 16] = uint8_t(u >> (8 * k));
    }
    for (int k = 0; k < 4; ++k) p[k] = _mm256_load_si256(reinterpret_cast<const __m256i*>(t[k]));
  }
};

// sum += Σ over the 4 vectors of one index plane of value(idx) · x.
inline void plane_dot(const BytePlanes& bp, __m256i idx, const float* xb, __m256& s0, __m256& s1) {
  const __m256i b0 = _mm256_shuffle_epi8(bp.p[0], idx), b1 = _mm256_shuffle_epi8(bp.p[1], idx);
  const __m256i b2 = _mm256_shuffle_epi8(bp.p[2], idx), b3 = _mm256_shuffle_epi8(bp.p[3], idx);
  const __m256i a = _mm256_unpacklo_epi8(b0, b1), b = _mm256_unpackhi_epi8(b0, b1);
  const __m256i c = _mm256_unpacklo_epi8(b2, b3), d = _mm256_unpackhi_epi8(b2, b3);
  s0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(a, c)), _mm256_loadu_ps(xb), s0);
  s1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(a, c)), _mm256_loadu_ps(xb + 8), s1);
  s0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(b, d)), _mm256_loadu_ps(xb + 16), s0);
  s1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(b, d)), _mm256_loadu_ps(xb + 24), s1);
}

}  // namespace

void nf4_matvec_rows_avx2(const Nf4View& v, const float* xp, float* y, int64_t n0, int64_t n1,
                          int64_t K, bool acc) {
  static const BytePlanes bp;
  const int64_t nb = K / kNf4Block;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  constexpr int64_t kChunk = 128;  // blocks whose absmax is decoded at once
  alignas(32) float am[kChunk];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = v.codes + n * nb * 32;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
      const int64_t cn = nb - c0 < kChunk ? nb - c0 : kChunk;
      nf4_block_absmax(v, n * nb + c0, cn, am);
      for (int64_t i = 0; i < cn; ++i) {
        const int64_t b = c0 + i;
        const uint8_t* blk = row + b * 32;
        _mm_prefetch(reinterpret_cast<const char*>(blk) + 768, _MM_HINT_T0);
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk));
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
        const __m256i lo = _mm256_and_si256(w, m4);
        const float* xb = xp + b * kNf4Block;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        plane_dot(bp, hi, xb, s0, s1);
        plane_dot(bp, lo, xb + 32, s2, s3);
        const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        const __m256 amv = _mm256_set1_ps(am[i]);
        if (b & 1) a1 = _mm256_fmadd_ps(amv, s, a1);
        else a0 = _mm256_fmadd_ps(amv, s, a0);
      }
    }
    const float t = hsum(_mm256_add_ps(a0, a1));
    y[n] = acc ? y[n] + t : t;
  }
}

void nf4_dequantize_blocks_avx2(const uint8_t* codes, const float* absmax, float* dst,
                                int64_t n_blocks) {
  const __m256 tlo = _mm256_loadu_ps(kNf4Code), thi = _mm256_loadu_ps(kNf4Code + 8);
  // Each byte feeds two lanes: the high nibble (shift right 4; bit 3 is bit 7 -> shift left 24)
  // first, then the low nibble (no shift; bit 3 -> shift left 28).
  const __m256i shr = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
  const __m256i shl = _mm256_setr_epi32(24, 28, 24, 28, 24, 28, 24, 28);
  const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = codes + b * 32;
    const __m256 am = _mm256_set1_ps(absmax[b]);
    float* o = dst + b * kNf4Block;
    for (int j = 0; j < 4; ++j) {
      // 8 code bytes -> 16 values, as two groups of 8.
      const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 8 * j));
      const __m128i d = _mm_shuffle_epi8(raw, dup);
      for (int h = 0; h < 2; ++h) {
        const __m256i e = _mm256_cvtepu8_epi32(h == 0 ? d : _mm_srli_si128(d, 8));
        const __m256i idx = _mm256_srlv_epi32(e, shr);
        const __m256 sel = _mm256_castsi256_ps(_mm256_sllv_epi32(e, shl));
        const __m256 wv = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, idx),
                                           _mm256_permutevar8x32_ps(thi, idx), sel);
        _mm256_storeu_ps(o + 16 * j + 8 * h, _mm256_mul_ps(wv, am));
      }
    }
  }
}

}  // namespace qwen::ops::detail
