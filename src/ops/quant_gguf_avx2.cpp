// ops/quant_gguf_avx2.cpp — AVX2 kernels of the GGUF block formats Q4_0 / Q4_1 (and a Q8_0
// matvec with the same scheme) (compiled with -mavx2 -mfma -mf16c, reached through the runtime
// dispatch in quant_gguf.cpp).
//
// Matvec: x is quantised once to 16-bit blocks (quantize_act); each weight block's 16 bytes are
// widened to 16 i16 (vpmovzxbw), the low nibbles (elements 0..15) masked and the high nibbles
// (16..31) shifted out (Q8_0: its 32 int8 sign-extended, vpmovsxbw), multiplied with the
// activations by vpmaddwd (pairs summed into i32, no overflow), converted to f32 and scaled by
// d_w·d_x; the offset of the format (Q4_0: −8·d_w, Q4_1: m) multiplies the block's d_x·Σq_x once
// per block. Four rows at a time share each activation load and keep four independent chains.
// The four rows are one contiguous byte stream, prefetched 1 KiB past the group's end.
// Measured (bench_gguf_kernels, SmolLM2's 30 layers of matvecs from DRAM, 1 thread, old and new
// builds alternating on a loaded machine): the Q4_1 layers took 9.3 ms per token with per-row
// prefetches 512 B ahead and 5.3-6.9 ms with the stream prefetch (the K = 1536 down projection
// 3.1 -> 1.3-1.7 ms). llama.cpp's 8-bit activations (vpmaddubsw) would cost as many
// instructions per block and are 256 times less accurate.
// Dequantisation to f32 tiles (prefill): nibbles -> i32 -> f32, one FMA per 8 values.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>
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

// 16-bit activations: the block's 16 bytes widened to 16 i16 (vpmovzxbw); the low nibbles
// (elements 0..15) are an AND away, the high nibbles (16..31) a shift; vpmaddwd multiplies with
// the activations and sums pairs into i32 (at most 2·15·32767, no overflow).
inline __m256i idot_u4_s16(const uint8_t* qs, __m256i x0, __m256i x1) {
  const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  const __m256i lo = _mm256_and_si256(v, _mm256_set1_epi16(0x0F));
  const __m256i hi = _mm256_srli_epi16(v, 4);
  return _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
}
// Q8_0: the block's 32 int8 widened to i16 (vpmovsxbw, two halves); products at most
// 2·128·32767 per i32 lane.
inline __m256i idot_s8_s16(const uint8_t* qs, __m256i x0, __m256i x1) {
  const __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 16)));
  return _mm256_add_epi32(_mm256_madd_epi16(a, x0), _mm256_madd_epi16(b, x1));
}

enum class F { Q4_0, Q4_1, Q8_0 };

template <F FMT>
inline __m256i idot(const uint8_t* qs, __m256i x0, __m256i x1) {
  if constexpr (FMT == F::Q8_0) return idot_s8_s16(qs, x0, x1);
  else return idot_u4_s16(qs, x0, x1);
}

constexpr size_t kPrefetch = 1024;  // bytes past the end of the current group of rows

template <F FMT>
void matvec_rows(const void* W, QAct a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc) {
  constexpr bool Q41 = FMT == F::Q4_1;
  constexpr int64_t BB = FMT == F::Q4_1 ? 20 : FMT == F::Q4_0 ? 18 : 34;
  constexpr int QOFF = Q41 ? 4 : 2;
  const int64_t nb = K / 32;
  const size_t rb = size_t(nb * BB);
  const uint8_t* base = static_cast<const uint8_t*>(W);
  int64_t r = r0;
  // Four rows per pass. Each row's block dot product is 8 i32 partial sums; three vphaddd fold
  // the four rows into one vector (row r's sum in lanes r and r + 4), so the conversion to f32,
  // the scale and the accumulation are one instruction each for all four rows, and the four
  // rows' scales (and Q4_1 offsets) are converted with one vcvtph2ps.
  const __m256i d_idx = Q41 ? _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6) : _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3);
  const __m256i m_idx = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
  for (; r + 4 <= r1; r += 4) {
    const uint8_t* p0 = base + size_t(r) * rb;
    const uint8_t* p1 = p0 + rb;
    const uint8_t* p2 = p1 + rb;
    const uint8_t* p3 = p2 + rb;
    __m256 acc4 = _mm256_setzero_ps(), off4 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b + 16));
      const int64_t o = b * BB;
      // The four rows are one contiguous stream of 4·rb bytes, read 4·BB bytes per block: prefetch
      // as many bytes, kPrefetch past the group's end (per-row prefetches 512 B ahead left the
      // reads latency-bound: 7.5 -> 11.6 GB/s from DRAM on one thread, bench_gguf_kernels).
      const char* pf = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p0) + 4 * rb + kPrefetch + size_t(4 * o));
      _mm_prefetch(pf, _MM_HINT_T0);
      _mm_prefetch(pf + 64, _MM_HINT_T0);
      const __m256i i01 = _mm256_hadd_epi32(idot<FMT>(p0 + o + QOFF, x0, x1), idot<FMT>(p1 + o + QOFF, x0, x1));
      const __m256i i23 = _mm256_hadd_epi32(idot<FMT>(p2 + o + QOFF, x0, x1), idot<FMT>(p3 + o + QOFF, x0, x1));
      const __m256 dots = _mm256_cvtepi32_ps(_mm256_hadd_epi32(i01, i23));  // r0 r1 r2 r3 | r0 r1 r2 r3
      __m256 sc;
      if constexpr (Q41) {  // (d, m) of each row: 4 bytes
        int32_t w0, w1, w2, w3;
        std::memcpy(&w0, p0 + o, 4), std::memcpy(&w1, p1 + o, 4), std::memcpy(&w2, p2 + o, 4), std::memcpy(&w3, p3 + o, 4);
        sc = _mm256_cvtph_ps(_mm_setr_epi32(w0, w1, w2, w3));  // d0 m0 d1 m1 d2 m2 d3 m3
        off4 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(sc, m_idx), _mm256_set1_ps(a.s[b]), off4);
      } else {  // d of each row: 2 bytes
        uint16_t h0, h1, h2, h3;
        std::memcpy(&h0, p0 + o, 2), std::memcpy(&h1, p1 + o, 2), std::memcpy(&h2, p2 + o, 2), std::memcpy(&h3, p3 + o, 2);
        sc = _mm256_cvtph_ps(_mm_setr_epi16(short(h0), short(h1), short(h2), short(h3), 0, 0, 0, 0));
        if constexpr (FMT == F::Q4_0)
          off4 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(sc, d_idx), _mm256_set1_ps(-8.0f * a.s[b]), off4);
      }
      const __m256 d4 = _mm256_mul_ps(_mm256_permutevar8x32_ps(sc, d_idx), _mm256_set1_ps(a.d[b]));
      acc4 = _mm256_fmadd_ps(dots, d4, acc4);
    }
    // lanes 0..3 and 4..7 hold the two halves of each row's sum; the offsets are duplicated
    const __m128 v = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(acc4), _mm256_extractf128_ps(acc4, 1)),
                                _mm256_castps256_ps128(off4));
    if (acc) _mm_storeu_ps(y + r, _mm_add_ps(_mm_loadu_ps(y + r), v));
    else _mm_storeu_ps(y + r, v);
  }
  for (; r < r1; ++r) {
    const uint8_t* p = base + size_t(r) * rb;
    __m256 s = _mm256_setzero_ps();
    float c = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b + 16));
      const int64_t o = b * BB;
      const float d = half(p + o);
      s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot<FMT>(p + o + QOFF, x0, x1)), _mm256_set1_ps(d * a.d[b]), s);
      if constexpr (FMT == F::Q4_1) c += half(p + o + 2) * a.s[b];
      else if constexpr (FMT == F::Q4_0) c -= 8.0f * d * a.s[b];
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

void quantize_act(const float* x, int64_t K, QAct a) {
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
    const float d = _mm_cvtss_f32(m4) / 32767.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
      q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    // i32 -> i16 in order: vpackssdw works per 128-bit lane, a qword permute restores the order.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.q + 32 * b),
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.q + 32 * b + 16),
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xD8));
    a.d[b] = d;
    a.s[b] = d * float(_mm_cvtsi128_si32(s4));
  }
}

// Multi-row Q8_0 (see quant_gguf.h): a group of four weight rows is decoded once (int8 -> i16,
// block-interleaved, 256 B per block, and the four scales as f32 in matvec_rows' lane order) and
// applied to every activation row, R rows at a time; per (group, activation row) the arithmetic
// is matvec_rows<Q8_0>'s instruction for instruction (the same integer lanes, the same f32
// conversion, scale product, FMA chain over blocks and final fold), so each row's result is
// bit-identical to the matvec of that row.
namespace {

template <int R>
void q8_0_tile(const int16_t* wq, const float* sc, const QAct* a, float* const* y, int64_t nb,
               bool acc) {
  __m256 acc4[R];
  for (int i = 0; i < R; ++i) acc4[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i* w = reinterpret_cast<const __m256i*>(wq + 128 * b);
    const __m256 s = _mm256_load_ps(sc + 8 * b);
    for (int i = 0; i < R; ++i) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i].q + 32 * b));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i].q + 32 * b + 16));
      const __m256i d0 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_load_si256(w + 0), x0),
                                          _mm256_madd_epi16(_mm256_load_si256(w + 1), x1));
      const __m256i d1 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_load_si256(w + 2), x0),
                                          _mm256_madd_epi16(_mm256_load_si256(w + 3), x1));
      const __m256i d2 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_load_si256(w + 4), x0),
                                          _mm256_madd_epi16(_mm256_load_si256(w + 5), x1));
      const __m256i d3 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_load_si256(w + 6), x0),
                                          _mm256_madd_epi16(_mm256_load_si256(w + 7), x1));
      const __m256 dots = _mm256_cvtepi32_ps(
          _mm256_hadd_epi32(_mm256_hadd_epi32(d0, d1), _mm256_hadd_epi32(d2, d3)));
      const __m256 d4 = _mm256_mul_ps(s, _mm256_set1_ps(a[i].d[b]));
      acc4[i] = _mm256_fmadd_ps(dots, d4, acc4[i]);
    }
  }
  for (int i = 0; i < R; ++i) {
    // as matvec_rows: the two halves, plus the (zero) offset of the format
    const __m128 v = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(acc4[i]), _mm256_extractf128_ps(acc4[i], 1)),
                                _mm_setzero_ps());
    if (acc) _mm_storeu_ps(y[i], _mm_add_ps(_mm_loadu_ps(y[i]), v));
    else _mm_storeu_ps(y[i], v);
  }
}

}  // namespace

void matmul_rows_q8_0(const void* W, const QAct* a, int64_t M, float* Y, int64_t ldy, int64_t r0,
                      int64_t r1, int64_t K, bool acc, int16_t* wq, float* sc) {
  const int64_t nb = K / 32;
  const size_t rb = size_t(nb * 34);
  const uint8_t* base = static_cast<const uint8_t*>(W);
  const __m256i d_idx = _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3);
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const uint8_t* p0 = base + size_t(r) * rb;
    // Decode the group: block b holds rows 0..3's 32 values as i16 (two vectors per row).
    for (int64_t b = 0; b < nb; ++b) {
      __m256i* w = reinterpret_cast<__m256i*>(wq + 128 * b);
      // the next group's stream, as matvec_rows prefetches (the lm_head is read from DRAM)
      const char* pf = reinterpret_cast<const char*>(p0) + 4 * rb + kPrefetch + size_t(4 * 34 * b);
      _mm_prefetch(pf, _MM_HINT_T0);
      _mm_prefetch(pf + 64, _MM_HINT_T0);
      _mm_prefetch(pf + 128, _MM_HINT_T0);
      uint16_t h[4];
      for (int j = 0; j < 4; ++j) {
        const uint8_t* blk = p0 + size_t(j) * rb + size_t(b * 34);
        std::memcpy(&h[j], blk, 2);
        _mm256_store_si256(w + 2 * j, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))));
        _mm256_store_si256(w + 2 * j + 1, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18))));
      }
      const __m256 s4 = _mm256_cvtph_ps(_mm_setr_epi16(short(h[0]), short(h[1]), short(h[2]), short(h[3]), 0, 0, 0, 0));
      _mm256_store_ps(sc + 8 * b, _mm256_permutevar8x32_ps(s4, d_idx));
    }
    constexpr int kR = 4;
    float* y[kR];
    int64_t m = 0;
    for (; m + kR <= M; m += kR) {
      for (int i = 0; i < kR; ++i) y[i] = Y + (m + i) * ldy + r;
      q8_0_tile<kR>(wq, sc, a + m, y, nb, acc);
    }
    if (m + 2 <= M) {
      for (int i = 0; i < 2; ++i) y[i] = Y + (m + i) * ldy + r;
      q8_0_tile<2>(wq, sc, a + m, y, nb, acc);
      m += 2;
    }
    if (m < M) {
      y[0] = Y + m * ldy + r;
      q8_0_tile<1>(wq, sc, a + m, y, nb, acc);
    }
  }
  if (r < r1)  // the last rows of W (N % 4): matvec_rows' one-row path, row by row
    for (int64_t m = 0; m < M; ++m) matvec_rows<F::Q8_0>(W, a[m], Y + m * ldy, r, r1, K, acc);
}

void matvec_rows_q4_0(const void* W, QAct a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc) {
  matvec_rows<F::Q4_0>(W, a, y, r0, r1, K, acc);
}
void matvec_rows_q4_1(const void* W, QAct a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc) {
  matvec_rows<F::Q4_1>(W, a, y, r0, r1, K, acc);
}
void matvec_rows_q8_0(const void* W, QAct a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc) {
  matvec_rows<F::Q8_0>(W, a, y, r0, r1, K, acc);
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
