// ops/quant_gguf_avx2.cpp — AVX2 kernels of the GGUF 4-bit formats Q4_0 / Q4_1 (compiled with
// -mavx2 -mfma -mf16c, reached through the runtime dispatch in quant_gguf.cpp).
//
// Matvec: x is quantised once to 8-bit blocks (quantize_act); each weight block's 16 bytes are
// split into 32 nibbles (0..15, unsigned) and multiplied with the 32 signed activation bytes by
// vpmaddubsw (u8 x s8 -> pairs summed in i16: at most 2*15*127, no saturation) and vpmaddwd
// (-> 8 i32), converted to f32 and scaled by d_w*d_x; the offset of the format (Q4_0: -8*d_w,
// Q4_1: m) multiplies the block's d_x*sum(q_x) once per block. Four rows at a time share each
// activation load and keep four independent accumulator chains.
// Dequantisation to f32 tiles (prefill): nibbles -> i32 -> f32, one FMA per 8 values.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>

#include "ops/quant_gguf.h"

namespace qwen::ops::gguf::avx2 {
namespace {

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high (16..31).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

// 32 u8 (0..15) x 32 s8 -> 8 i32 partial sums, as f32.
inline __m256 dot_u4_s8(__m256i w, __m256i x) {
  const __m256i p16 = _mm256_maddubs_epi16(w, x);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

// Q4_0 (OFF = false: offset -8·d) and Q4_1 (OFF = true: offset m) share one kernel.
template <bool Q41>
void matvec_rows(const void* W, Q8Act a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc) {
  constexpr int64_t BB = Q41 ? 20 : 18;  // block bytes
  constexpr int QOFF = Q41 ? 4 : 2;      // offset of qs in the block
  const int64_t nb = K / 32;
  const size_t rb = size_t(nb * BB);
  const uint8_t* base = static_cast<const uint8_t*>(W);
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const uint8_t* p0 = base + size_t(r) * rb;
    const uint8_t* p1 = p0 + rb;
    const uint8_t* p2 = p1 + rb;
    const uint8_t* p3 = p2 + rb;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    float c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b));
      const float dx = a.d[b], sx = a.s[b];
      const int64_t o = b * BB;
      // prefetch about 12 blocks ahead in each of the four row streams
      _mm_prefetch(reinterpret_cast<const char*>(p0 + o + 256), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p1 + o + 256), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p2 + o + 256), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p3 + o + 256), _MM_HINT_T0);
      const float d0 = half(p0 + o), d1 = half(p1 + o), d2 = half(p2 + o), d3 = half(p3 + o);
      s0 = _mm256_fmadd_ps(dot_u4_s8(unpack_nibbles(p0 + o + QOFF), xq), _mm256_set1_ps(d0 * dx), s0);
      s1 = _mm256_fmadd_ps(dot_u4_s8(unpack_nibbles(p1 + o + QOFF), xq), _mm256_set1_ps(d1 * dx), s1);
      s2 = _mm256_fmadd_ps(dot_u4_s8(unpack_nibbles(p2 + o + QOFF), xq), _mm256_set1_ps(d2 * dx), s2);
      s3 = _mm256_fmadd_ps(dot_u4_s8(unpack_nibbles(p3 + o + QOFF), xq), _mm256_set1_ps(d3 * dx), s3);
      if constexpr (Q41) {
        c0 += half(p0 + o + 2) * sx;
        c1 += half(p1 + o + 2) * sx;
        c2 += half(p2 + o + 2) * sx;
        c3 += half(p3 + o + 2) * sx;
      } else {
        c0 -= 8.0f * d0 * sx;
        c1 -= 8.0f * d1 * sx;
        c2 -= 8.0f * d2 * sx;
        c3 -= 8.0f * d3 * sx;
      }
    }
    const float v0 = hsum(s0) + c0, v1 = hsum(s1) + c1, v2 = hsum(s2) + c2, v3 = hsum(s3) + c3;
    if (acc) {
      y[r] += v0, y[r + 1] += v1, y[r + 2] += v2, y[r + 3] += v3;
    } else {
      y[r] = v0, y[r + 1] = v1, y[r + 2] = v2, y[r + 3] = v3;
    }
  }
  for (; r < r1; ++r) {
    const uint8_t* p = base + size_t(r) * rb;
    __m256 s = _mm256_setzero_ps();
    float c = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b));
      const int64_t o = b * BB;
      const float d = half(p + o);
      s = _mm256_fmadd_ps(dot_u4_s8(unpack_nibbles(p + o + QOFF), xq), _mm256_set1_ps(d * a.d[b]), s);
      if constexpr (Q41) c += half(p + o + 2) * a.s[b];
      else c -= 8.0f * d * a.s[b];
    }
    const float v = hsum(s) + c;
    y[r] = acc ? y[r] + v : v;
  }
}

template <bool Q41>
void dequant_rows(const void* W, float* dst, int64_t r0, int64_t r1, int64_t K) {
  constexpr int64_t BB = Q41 ? 20 : 18;
  constexpr int QOFF = Q41 ? 4 : 2;
  const int64_t nb = K / 32;
  const uint8_t* p = static_cast<const uint8_t*>(W) + size_t(r0) * size_t(nb * BB);
  const int64_t total = (r1 - r0) * nb;  // rows are contiguous: one stream of blocks
  for (int64_t i = 0; i < total; ++i, p += BB, dst += 32) {
    const __m256 d = _mm256_set1_ps(half(p));
    const __m256 m = Q41 ? _mm256_set1_ps(half(p + 2)) : _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + QOFF));
    const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
    auto cvt = [&](__m128i v) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), d, m); };
    _mm256_storeu_ps(dst, cvt(lo));
    _mm256_storeu_ps(dst + 8, cvt(_mm_srli_si128(lo, 8)));
    _mm256_storeu_ps(dst + 16, cvt(hi));
    _mm256_storeu_ps(dst + 24, cvt(_mm_srli_si128(hi, 8)));
  }
}

}  // namespace

void quantize_act(const float* x, int64_t K, Q8Act a) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* xb = x + 32 * b;
    __m256 v[4];
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(xb + 8 * i);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
      q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // Sum of the 32 quantised values.
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    // i32 -> i8 in order: packs work per 128-bit lane, a final dword permute restores order.
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p = _mm256_packs_epi16(p01, p23);
    const __m256i ordered = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.q + 32 * b), ordered);
    a.d[b] = d;
    a.s[b] = d * float(_mm_cvtsi128_si32(s4));
  }
}

void matvec_rows_q4_0(const void* W, Q8Act a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc) {
  matvec_rows<false>(W, a, y, r0, r1, K, acc);
}
void matvec_rows_q4_1(const void* W, Q8Act a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc) {
  matvec_rows<true>(W, a, y, r0, r1, K, acc);
}
void dequantize_rows_q4_0(const void* W, float* dst, int64_t r0, int64_t r1, int64_t K) {
  dequant_rows<false>(W, dst, r0, r1, K);
}
void dequantize_rows_q4_1(const void* W, float* dst, int64_t r0, int64_t r1, int64_t K) {
  dequant_rows<true>(W, dst, r0, r1, K);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace qwen::ops::gguf::avx2
