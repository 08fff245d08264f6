// ops/nf4_avx2.cpp — AVX2 kernels for NF4 blocks (see nf4.h).
// Dequantise: the 16-entry f32 code table is looked up with two vpermps (codes 0-7 and 8-15,
// low 3 bits of each lane) and a blend on the code's bit 3. Matvec, exact f32 (nf4_matvec_f32):
// four vpshufb byte-plane lookups per 32 codes (see nf4_permute_x), exact f32 code values, x
// permuted once per call; each block's sum is scaled by its absmax once (decoded from the
// double-quantised form by nf4_block_absmax, a chunk of blocks at a time). Matvec, 16-bit integer
// (nf4_matvec_i16, the previous decode kernel): see "16-bit integer matvec" below. Matvec, 8-bit
// integer (nf4_matvec, the decode hot path): see "8-bit integer matvec". Matmul, 8-bit integer
// (nf4_matmul_act8, M >= 2, each row bit-identical to the matvec): see "8-bit integer matmul" at
// the end.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/nf4.h"


namespace qwen::ops::detail {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The matvecs' final fold: the 8-lane sums of 4 weight rows -> y[0..4) (hadd tree), or of one
// row -> y[0]; y (+)= as acc says. Every NF4 kernel whose rows must be bit-identical to the
// matvec's (the 16- and 8-bit matvecs, the multi-row kernel) folds through these.
inline void fold4_store(__m256 a0, __m256 a1, __m256 a2, __m256 a3, float* y, bool acc) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  if (acc) t = _mm_add_ps(t, _mm_loadu_ps(y));
  _mm_storeu_ps(y, t);
}
inline void fold1_store(__m256 a, float* y, bool acc) {
  const float t = hsum(a);
  y[0] = acc ? y[0] + t : t;
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

// ---- 16-bit integer matvec (nf4_matvec_i16, the previous decode kernel; see nf4.h) ----
//
// Per block of 64 weights: the 32 code bytes give a high-nibble and a low-nibble index vector
// (elements 2j and 2j+1); each is looked up in the low-byte and the high-byte plane of the int16
// table kNf4CodeI16 (2 vpshufb) and the two byte vectors are interleaved into 32 int16 weights by
// unpack{lo,hi}_epi8 (2 unpacks). So 4 vpshufb + 4 unpacks per 64 weights (the exact f32 kernel
// above needs 8 + 16). vpmaddwd multiplies with the block's int16 activations (permuted once per
// call by nf4_quantize_act16 to match the unpack order) and sums pairs into i32.
//
// No overflow: each i32 lane of a block's sum collects 4 vpmaddwd x 2 products = 8 products,
// each |q_w·q_x| <= 8191·32767 = 268,394,497, so |lane| <= 8·268,394,497 = 2,147,155,976
// < 2^31 = 2,147,483,648 (it would hold up to a table scale of 8192, not beyond). An activation
// q_x is at most 32767 in magnitude (round(x·32767/max|x_b|), saturated by vpackssdw).
//
// Per block the 8 i32 lanes go to f32 (exact below 2^24, else one rounding) and one FMA adds them,
// times absmax_b · s_b / 8191, to the row's f32 accumulator; the block's absmax is decoded from
// the double-quantised form a chunk of whole rows at a time (row_scales) and multiplied by the
// activation scales before the rows are streamed, four rows at a time (rows_act16).

namespace {

// Software prefetch distance past the end of the current group of rows. Measured (2 threads,
// weights cold, 2026-11-28): without the prefetch the NF4 matvec took 93 / 111 / 38 us on
// 2048x768 / 768x2048 / 768x768, with it 71 / 81 / 27; 512, 1024 and 2048 B ahead were equal.
constexpr int64_t kPrefetchAct16 = 1024;

struct I16Planes {
  __m256i lo, hi;  // byte planes of the 16-entry int16 table, repeated in both 128-bit lanes
  I16Planes() {
    alignas(32) uint8_t l[32], h[32];
    for (int c = 0; c < 16; ++c) {
      const uint16_t u = uint16_t(kNf4CodeI16[c]);
      l[c] = l[c + 16] = uint8_t(u & 0xFF);
      h[c] = h[c + 16] = uint8_t(u >> 8);
    }
    lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(l));
    hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(h));
  }
};

// Position t (0..63) of a permuted activation block holds element kAct16Perm[t] of the block:
// t = 32·s + 16·h + p, s = 0 for the high nibbles (elements 2j), 1 for the low nibbles (2j+1);
// h = 0 for unpacklo_epi8, 1 for unpackhi_epi8; p the int16 position, whose code byte j is
// 8h + p for p < 8 (128-bit lane 0) and 16 + 8h + (p - 8) for p >= 8 (lane 1).
struct Act16Perm {
  uint8_t e[64];
  constexpr Act16Perm() : e() {
    for (int t = 0; t < 64; ++t) {
      const int s = t / 32, h = (t / 16) % 2, p = t % 16;
      const int j = p < 8 ? 8 * h + p : 16 + 8 * h + (p - 8);
      e[t] = uint8_t(2 * j + s);
    }
  }
};
constexpr Act16Perm kAct16Perm;

// The block's 8 i32 partial sums (8 products each) of its 64 int16 weights with the block's
// permuted activations x[0..3].
inline __m256i block_dot(const I16Planes& tp, const uint8_t* blk, const __m256i* x) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk));
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
  const __m256i lo = _mm256_and_si256(w, m4);
  const __m256i hl = _mm256_shuffle_epi8(tp.lo, hi), hh = _mm256_shuffle_epi8(tp.hi, hi);
  const __m256i ll = _mm256_shuffle_epi8(tp.lo, lo), lh = _mm256_shuffle_epi8(tp.hi, lo);
  const __m256i p0 = _mm256_madd_epi16(_mm256_unpacklo_epi8(hl, hh), x[0]);
  const __m256i p1 = _mm256_madd_epi16(_mm256_unpackhi_epi8(hl, hh), x[1]);
  const __m256i p2 = _mm256_madd_epi16(_mm256_unpacklo_epi8(ll, lh), x[2]);
  const __m256i p3 = _mm256_madd_epi16(_mm256_unpackhi_epi8(ll, lh), x[3]);
  return _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3));
}

// Rows n .. n + R (R = 4 or 1) of a chunk whose scales are sc (row-major, nb per row): each block's
// activations are loaded once for the R rows, which keep R independent FMA chains. The R rows
// are one contiguous stream of R·nb·32 code bytes, prefetched kPrefetchAct16 past the group's end
// (as the Q8_0 / Q4 matvecs of quant_gguf_avx2.cpp do).
template <int R>
inline void rows_act16(const I16Planes& tp, const uint8_t* codes, const int16_t* xq, const float* sc,
                       float* y, int64_t nb, bool acc) {
  const size_t rb = size_t(nb) * 32;
  __m256 a[R];
  for (int r = 0; r < R; ++r) a[r] = _mm256_setzero_ps();
  const char* pf = reinterpret_cast<const char*>(codes) + R * rb + kPrefetchAct16;
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i* xb = reinterpret_cast<const __m256i*>(xq + b * kNf4Block);
    const __m256i x[4] = {_mm256_loadu_si256(xb), _mm256_loadu_si256(xb + 1), _mm256_loadu_si256(xb + 2),
                          _mm256_loadu_si256(xb + 3)};
    if (R == 4) {
      _mm_prefetch(pf + 128 * b, _MM_HINT_T0);
      _mm_prefetch(pf + 128 * b + 64, _MM_HINT_T0);
    } else if (b % 2 == 0) {
      _mm_prefetch(pf + 32 * b, _MM_HINT_T0);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i d = block_dot(tp, codes + r * rb + size_t(b) * 32, x);
      a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(sc[r * nb + b]), a[r]);
    }
  }
  if constexpr (R == 4)
    fold4_store(a[0], a[1], a[2], a[3], y, acc);
  else
    fold1_store(a[0], y, acc);
}

// sc[r·nb + b] = absmax of block b of row r0 + r (r < n_rows) · xs[b]. The absmax is bitsandbytes'
// f32 multiply, then add (as nf4_block_absmax; the empty asm keeps the compiler from fusing them
// into an FMA). Two passes: (1) the map values of the chunk's 8-bit absmax codes, copied with
// scalar loads and stores only (no floating-point work, which would compete with the dot products
// for the vector pipes); (2) per row and per run of blocks inside one nested block of 256 (no
// division per block), 8 at a time: (map·nested + offset)·xs. A vector tail may run up to 7 past
// a run's end: tmp, xs and sc are padded, and the next run (in increasing order) overwrites what
// it wrote there. A vpgatherdd lookup was slower than the scalar copy; pass (1)-(2) is ~5% faster
// than one scalar loop doing everything. Decoding the absmax costs ~25% of the matvec's time
// (docs/quantization.md), the price of keeping it double-quantised (4.13 bits per weight instead
// of 4.5 with f32 absmax): so inference loads NF4 folders with the absmax decoded once to f32
// (nf4_matrix_expand_absmax) and only a QLoRA base takes this path.
void row_scales(const Nf4View& v, int64_t r0, int64_t n_rows, int64_t nb, const float* xs, float* sc,
                float* tmp) {
  const int64_t g0 = r0 * nb, n = n_rows * nb;
  if (v.absmax_f32) {
    const float* am = v.absmax_f32 + g0;
    for (int64_t r = 0; r < n_rows; ++r)
      for (int64_t b = 0; b < nb; ++b) sc[r * nb + b] = am[r * nb + b] * xs[b];
    return;
  }
  const uint8_t* codes = v.absmax_codes + g0;
  const float* map = v.map;
#pragma GCC unroll 8
  for (int64_t i = 0; i < n; ++i) tmp[i] = map[codes[i]];
  const __m256 voff = _mm256_set1_ps(v.h->offset);
  const int64_t nbs = v.h->nested_blocksize;
  int64_t g = g0 / nbs, next = (g + 1) * nbs;  // nested block of global block index gi, its end
  int64_t gi = g0;
  for (int64_t r = 0; r < n_rows; ++r) {
    float* o = sc + r * nb;
    const float* t = tmp + r * nb;
    for (int64_t b = 0; b < nb;) {
      if (gi == next) ++g, next += nbs;
      const int64_t e = std::min(nb, b + (next - gi));
      const __m256 vn = _mm256_set1_ps(v.nested[g]);
      for (int64_t k = b; k < e; k += 8) {
        __m256 p = _mm256_mul_ps(_mm256_loadu_ps(t + k), vn);
        __asm__("" : "+x"(p));
        _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_add_ps(p, voff), _mm256_loadu_ps(xs + k)));
      }
      gi += e - b;
      b = e;
    }
  }
}

// Rows n0..n1 of an integer matvec: per chunk of whole rows (~512 blocks, a multiple of 4 rows;
// the blocks of consecutive rows are consecutive) the per-block scales absmax·xs are computed once
// (row_scales), then rows(n, 4 or 1, scales of row n) runs 4 rows at a time and the rest singly.
template <class Rows>
static void for_row_chunks(const Nf4View& v, int64_t n0, int64_t n1, int64_t nb, const float* xs,
                           Rows rows) {
  constexpr int64_t kChunkBlocks = 512;
  const int64_t rows_per_chunk = std::max<int64_t>(4, kChunkBlocks / nb / 4 * 4);
  thread_local std::vector<float> scv, tmpv;
  if (scv.size() < size_t(rows_per_chunk * nb + 8)) scv.resize(size_t(rows_per_chunk * nb + 8));
  if (tmpv.size() < size_t(rows_per_chunk * nb + 8)) tmpv.resize(size_t(rows_per_chunk * nb + 8));
  float* sc = scv.data();
  for (int64_t r0 = n0; r0 < n1; r0 += rows_per_chunk) {
    const int64_t r1 = r0 + rows_per_chunk < n1 ? r0 + rows_per_chunk : n1;
    row_scales(v, r0, r1 - r0, nb, xs, sc, tmpv.data());
    int64_t n = r0;
    for (; n + 4 <= r1; n += 4) rows(n, int64_t(4), sc + (n - r0) * nb);
    for (; n < r1; ++n) rows(n, int64_t(1), sc + (n - r0) * nb);
  }
}

// Loads one 64-block of x into v (8 x 8 floats) and returns its largest |x|; NaNs are OR-ed into
// `bad` (a NaN compares unordered with itself), since max would drop them.
static inline float load_block_absmax(const float* xb, __m256 v[8], __m256& bad) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 mx = _mm256_setzero_ps();
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm256_loadu_ps(xb + 8 * i);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(v[i], v[i], _CMP_UNORD_Q));
    mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  return _mm_cvtss_f32(m4);
}

// A 64-block's activation scale for q = round(x·qmax/amax): s = amax/qmax (kept), r = qmax/amax
// (0 for a zero block). False when the block cannot take the integer path: amax infinite (a NaN
// is caught by load_block_absmax's `bad`), r overflowing, or s/table_scale (what the kernels
// multiply by) subnormal.
inline bool block_act_scale(float amax, float qmax, float table_scale, float& s, float& r) {
  if (!(amax <= 3.4e38f)) return false;
  s = amax / qmax;
  r = amax > 0.0f ? qmax / amax : 0.0f;
  return r <= 3.4e38f && (amax == 0.0f || s / table_scale >= 1.2e-38f);
}

}  // namespace

bool nf4_quantize_act16(const float* x, int64_t K, int16_t* xq, float* xs) {
  __m256 bad = _mm256_setzero_ps();
  alignas(32) int16_t nat[kNf4Block];
  for (int64_t b = 0; b < K / kNf4Block; ++b) {
    const float* xb = x + b * kNf4Block;
    __m256 v[8];
    const float amax = load_block_absmax(xb, v, bad);
    float s, r;
    if (!block_act_scale(amax, 32767.0f, 8191.0f, s, r)) return false;
    const __m256 inv = _mm256_set1_ps(r);
    for (int i = 0; i < 8; i += 2) {
      const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));      // round to nearest even
      const __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[i + 1], inv));
      // vpackssdw works per 128-bit lane; a qword permute restores the natural order.
      _mm256_store_si256(reinterpret_cast<__m256i*>(nat + 8 * i),
                         _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8));
    }
    int16_t* o = xq + b * kNf4Block;
    for (int t = 0; t < kNf4Block; ++t) o[t] = nat[kAct16Perm.e[t]];
    xs[b] = s / 8191.0f;
  }
  return _mm256_movemask_ps(bad) == 0;
}

void nf4_matvec_rows_act16_avx2(const Nf4View& v, const int16_t* xq, const float* xs, float* y,
                                int64_t n0, int64_t n1, int64_t K, bool acc) {
  static const I16Planes tp;
  const int64_t nb = K / kNf4Block;
  for_row_chunks(v, n0, n1, nb, xs, [&](int64_t n, int64_t rows, const float* sc) {
    if (rows == 4) rows_act16<4>(tp, v.codes + n * nb * 32, xq, sc, y + n, nb, acc);
    else rows_act16<1>(tp, v.codes + n * nb * 32, xq, sc, y + n, nb, acc);
  });
}


// ---- 8-bit integer matvec (the registered decode kernel; see nf4.h for the error bound) ----
//
// Per block of 64 weights: the 32 code bytes give a high-nibble and a low-nibble index vector
// (elements 2j and 2j+1); one vpshufb each looks up the unsigned 8-bit table kNf4CodeU8 (t_c =
// round(NF4[c]·64) + 64, 0..128), one vpmaddubsw each multiplies with the block's int8
// activations (even elements for the high nibbles, odd for the low ones: nf4_quantize_act8's
// order) and adds pairs into int16, one vpmaddwd each with ones widens to i32. The table's offset
// of 64 is removed exactly per block by subtracting 64·Σ q_x (a per-call vector, lane 0). So
// 2 vpshufb + 2 vpmaddubsw + 2 vpmaddwd per 64 weights against 4 vpshufb + 4 unpacks + 4 vpmaddwd
// for the 16-bit kernel: on this AVX2 VM (Zen 3 class) it runs at about twice the speed per
// thread with the weights hot in L2 (docs/quantization.md).
//
// No saturation: a vpmaddubsw pair is at most 2·128·127 = 32512 < 32767 in magnitude (q_x is
// clamped to ±127, never −128); a block's i32 sum is at most 64·128·127 = 1,040,384 in magnitude.

namespace {

struct U8Table {
  __m256i t;  // the 16-entry table in both 128-bit lanes
  U8Table() {
    alignas(32) uint8_t b[32];
    for (int c = 0; c < 16; ++c) b[c] = b[c + 16] = kNf4CodeU8[size_t(c)];
    t = _mm256_load_si256(reinterpret_cast<const __m256i*>(b));
  }
};

// The block's 8 i32 partial sums of Σ_j (t_cj − 64)·q_xj (c: the row's codes, q_x: xh (even
// elements), xl (odd elements)); corr = (64·Σ q_x, 0, ..., 0).
inline __m256i block_dot8(__m256i tab, const uint8_t* blk, __m256i xh, __m256i xl, __m256i corr) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk));
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
  const __m256i lo = _mm256_and_si256(w, m4);
  const __m256i ph = _mm256_maddubs_epi16(_mm256_shuffle_epi8(tab, hi), xh);
  const __m256i pl = _mm256_maddubs_epi16(_mm256_shuffle_epi8(tab, lo), xl);
  return _mm256_sub_epi32(_mm256_add_epi32(_mm256_madd_epi16(ph, ones), _mm256_madd_epi16(pl, ones)), corr);
}

// Rows n .. n + R (R = 4 or 1) of a chunk whose scales are sc (row-major, nb per row), as
// rows_act16: each block's activations are loaded once for the R rows, R independent FMA chains,
// one contiguous stream of R·nb·32 code bytes prefetched kPrefetchAct16 past the group's end.
template <int R>
inline void rows_act8(__m256i tab, const uint8_t* codes, const int8_t* xq, const int32_t* xc, const float* sc,
                      float* y, int64_t nb, bool acc) {
  const size_t rb = size_t(nb) * 32;
  __m256 a[R];
  for (int r = 0; r < R; ++r) a[r] = _mm256_setzero_ps();
  const char* pf = reinterpret_cast<const char*>(codes) + R * rb + kPrefetchAct16;
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i* xb = reinterpret_cast<const __m256i*>(xq + b * kNf4Block);
    const __m256i xh = _mm256_loadu_si256(xb), xl = _mm256_loadu_si256(xb + 1);
    const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xc + b * 8));
    if (R == 4) {
      _mm_prefetch(pf + 128 * b, _MM_HINT_T0);
      _mm_prefetch(pf + 128 * b + 64, _MM_HINT_T0);
    } else if (b % 2 == 0) {
      _mm_prefetch(pf + 32 * b, _MM_HINT_T0);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i d = block_dot8(tab, codes + r * rb + size_t(b) * 32, xh, xl, corr);
      a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(sc[r * nb + b]), a[r]);
    }
  }
  if constexpr (R == 4)
    fold4_store(a[0], a[1], a[2], a[3], y, acc);
  else
    fold1_store(a[0], y, acc);
}

}  // namespace

bool nf4_quantize_act8(const float* x, int64_t K, int8_t* xq, int32_t* xc, float* xs) {
  // vpacksswb / vpackssdw work per 128-bit lane: after both, lane order is (0 4 1 5 2 6 3 7) in
  // dwords of 4 bytes; this permutation restores the natural order.
  const __m256i unlane = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  // Within each 16-byte lane: even bytes first, then odd bytes.
  const __m256i deint = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  __m256 bad = _mm256_setzero_ps();
  for (int64_t b = 0; b < K / kNf4Block; ++b) {
    const float* xb = x + b * kNf4Block;
    __m256 v[8];
    const float amax = load_block_absmax(xb, v, bad);
    float s, r;
    if (!block_act_scale(amax, 127.0f, 64.0f, s, r)) return false;
    const __m256 inv = _mm256_set1_ps(r);
    __m256i q[8];
    for (int i = 0; i < 8; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));  // nearest even
    // |q| <= 127 up to the f32 rounding of v·(127/amax) (<= 127·(1 + 2^-23)), which rounds to 127.
    __m256i qs = _mm256_setzero_si256();
    for (int i = 0; i < 8; ++i) qs = _mm256_add_epi32(qs, q[i]);
    // 64 int8 in natural order: two vectors of 32.
    for (int h = 0; h < 2; ++h) {
      const __m256i w0 = _mm256_packs_epi32(q[4 * h], q[4 * h + 1]);
      const __m256i w1 = _mm256_packs_epi32(q[4 * h + 2], q[4 * h + 3]);
      __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w0, w1), unlane);
      // -> per 16-byte lane: even then odd elements of that lane's 16
      bytes = _mm256_shuffle_epi8(bytes, deint);
      // (even 0-7 | odd 0-7 | even 8-15 | odd 8-15) in qwords -> (even 0-15 | odd 0-15)
      bytes = _mm256_permute4x64_epi64(bytes, 0xD8);
      alignas(32) int8_t t[32];
      _mm256_store_si256(reinterpret_cast<__m256i*>(t), bytes);
      std::memcpy(xq + b * kNf4Block + 16 * h, t, 16);       // even elements 32h .. 32h + 30
      std::memcpy(xq + b * kNf4Block + 32 + 16 * h, t + 16, 16);  // odd elements
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(qs), _mm256_extracti128_si256(qs, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    const int32_t sum = _mm_cvtsi128_si32(s4);
    int32_t* c = xc + b * 8;
    c[0] = kNf4CodeU8Offset * sum;
    for (int i = 1; i < 8; ++i) c[i] = 0;
    xs[b] = s / 64.0f;
  }
  return _mm256_movemask_ps(bad) == 0;
}

void nf4_matvec_rows_act8_avx2(const Nf4View& v, const int8_t* xq, const int32_t* xc, const float* xs,
                               float* y, int64_t n0, int64_t n1, int64_t K, bool acc) {
  static const U8Table tt;
  const __m256i tab = tt.t;
  const int64_t nb = K / kNf4Block;
  for_row_chunks(v, n0, n1, nb, xs, [&](int64_t n, int64_t rows, const float* sc) {
    if (rows == 4) rows_act8<4>(tab, v.codes + n * nb * 32, xq, xc, sc, y + n, nb, acc);
    else rows_act8<1>(tab, v.codes + n * nb * 32, xq, xc, sc, y + n, nb, acc);
  });
}

// ---- 8-bit integer matmul: several activation rows (nf4_matmul_act8; see nf4.h) ----
//
// The arithmetic of rows_act8, reorganised so that each weight block is decoded once per call
// (per panel of activation rows) and applied to every activation row: a group of 4 weight rows
// (or one of the last N % 4 rows) has its codes looked up once into the table bytes t_c (wd:
// per block, per row, 32 high-nibble then 32 low-nibble bytes) and its absmax decoded once
// (nf4_block_absmax: the values row_scales computes); then tiles of RW weight rows × 4 activation
// rows run the matvec's per-block steps unchanged: the same exact i32 lanes (vpmaddubsw, vpmaddwd
// with ones, minus 64·Σ q_x in lane 0), the same f32 scale absmax·xs (one f32 multiply), one FMA
// per block into one 8-lane accumulator per (weight row, activation row), blocks in order; and
// the same final fold (hadd of the 4 rows of a group, hsum for a single row), then + y when
// accumulating. So every output is bit-identical to nf4_matvec of its row. The activations come
// interleaved by tiles of 4 rows (Nf4ActTiles), so that a tile's inner loop walks 4 pointers.
// Tried and dropped (2026-11-28, one thread, this shared VM): llama.cpp's sign trick (signed
// table, vpsignb, |t − 64|, one vpmaddwd per pair, per-lane corrections; exact, bit-identical,
// but 1.2-1.5× slower) and the correction as a full 8-lane vector load (no gain).

namespace {

// Tile of RW weight rows (r0 .. r0 + RW of the group of G) × RA (≤ 4) activation rows of one
// activation tile. wd: the group's table bytes at (b·G + r)·64; xt, ct: the tile's activations at
// (b·4 + i)·64 and its corrections at b·4 + i; sc: scales at (b·G + r)·4 + i. Accumulators go to
// acc[r·4 + i].
template <int RW, int RA>
inline void tile_act8(const uint8_t* wd, int G, int r0, const int8_t* xt, const int32_t* ct,
                      const float* sc, int64_t nb, __m256* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 s[RW][RA];
  for (int r = 0; r < RW; ++r)
    for (int i = 0; i < RA; ++i) s[r][i] = _mm256_setzero_ps();
  const uint8_t* w = wd + r0 * 64;
  const float* scb = sc + r0 * 4;
  for (int64_t b = 0; b < nb; ++b, w += G * 64, xt += 4 * 64, ct += 4, scb += G * 4) {
    __m256i wh[RW], wl[RW];
    for (int r = 0; r < RW; ++r) {
      wh[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + r * 64));
      wl[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + r * 64 + 32));
    }
    for (int i = 0; i < RA; ++i) {
      const __m256i xh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt + i * 64));
      const __m256i xl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt + i * 64 + 32));
      const __m256i corr = _mm256_zextsi128_si256(_mm_cvtsi32_si128(ct[i]));
      for (int r = 0; r < RW; ++r) {
        const __m256i ph = _mm256_maddubs_epi16(wh[r], xh), pl = _mm256_maddubs_epi16(wl[r], xl);
        const __m256i d = _mm256_sub_epi32(
            _mm256_add_epi32(_mm256_madd_epi16(ph, ones), _mm256_madd_epi16(pl, ones)), corr);
        s[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_broadcast_ss(scb + r * 4 + i), s[r][i]);
      }
    }
  }
  for (int r = 0; r < RW; ++r)
    for (int i = 0; i < RA; ++i) acc[(r0 + r) * 4 + i] = s[r][i];
}

// Weight rows per tile (a divisor of 4): 2 × 4 activation rows = 8 accumulators (1 × 4 measured
// the same within this shared machine's noise).
constexpr int kTileW = 2;

// All tiles of a group of G rows for RA activation rows.
template <int RA>
inline void group_tiles(const uint8_t* wd, int G, const int8_t* xt, const int32_t* ct, const float* sc,
                        int64_t nb, __m256* acc) {
  if (G == 4) {
    for (int r0 = 0; r0 < 4; r0 += kTileW) tile_act8<kTileW, RA>(wd, G, r0, xt, ct, sc, nb, acc);
  } else {
    tile_act8<1, RA>(wd, G, 0, xt, ct, sc, nb, acc);
  }
}

}  // namespace

void nf4_matmul_rows_act8_avx2(const Nf4View& v, const Nf4ActTiles& a, int64_t n0, int64_t n1,
                               int64_t n_single, int64_t K, bool acc) {
  static const U8Table tt;
  const __m256i tab = tt.t, m4 = _mm256_set1_epi8(0x0F);
  const int64_t nb = K / kNf4Block, M = a.M;
  // Activation rows per panel: their int8 rows (K bytes each) stay in L2 while every weight
  // group of the thread's range passes over them.
  const int64_t panel = std::max<int64_t>(4, (int64_t(96) << 10) / std::max<int64_t>(K, 1) / 4 * 4);
  thread_local std::vector<uint8_t> wdv;
  thread_local std::vector<float> amv, scv;
  if (wdv.size() < size_t(4 * nb * 64 + 32)) wdv.resize(size_t(4 * nb * 64 + 32));
  if (amv.size() < size_t(8 * nb)) amv.resize(size_t(8 * nb));
  if (scv.size() < size_t(16 * nb)) scv.resize(size_t(16 * nb));
  uint8_t* wd = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(wdv.data()) + 31) / 32 * 32);
  float* am = amv.data();
  float* amt = am + 4 * nb;
  float* sc = scv.data();
  alignas(32) __m256 accb[16];
  for (int64_t p0 = 0; p0 < M; p0 += panel) {
    const int64_t p1 = std::min(M, p0 + panel);
    for (int64_t n = n0; n < n1;) {
      const int G = (n < n_single && n + 4 <= n1) ? 4 : 1;
      // Decode the group: table bytes of every block and row, and the rows' absmax.
      const uint8_t* codes = v.codes + n * nb * 32;
      const char* pf = reinterpret_cast<const char*>(codes) + G * nb * 32 + kPrefetchAct16;
      for (int64_t b = 0; b < nb; ++b) {
        if (p0 == 0) _mm_prefetch(pf + 128 * b, _MM_HINT_T0), _mm_prefetch(pf + 128 * b + 64, _MM_HINT_T0);
        for (int r = 0; r < G; ++r) {
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + (r * nb + b) * 32));
          __m256i* o = reinterpret_cast<__m256i*>(wd + (b * G + r) * 64);
          _mm256_store_si256(o, _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(w, 4), m4)));
          _mm256_store_si256(o + 1, _mm256_shuffle_epi8(tab, _mm256_and_si256(w, m4)));
        }
      }
      nf4_block_absmax(v, n * nb, G * nb, am);
      for (int r = 0; r < G; ++r)  // amt[b·G + r]: the absmax by block, then row
        for (int64_t b = 0; b < nb; ++b) amt[b * G + r] = am[r * nb + b];
      for (int64_t i0 = p0; i0 < p1; i0 += 4) {
        const int ra = int(std::min<int64_t>(4, p1 - i0));
        // sc[(b·G + r)·4 + i] = absmax · xs, one f32 multiply as in row_scales (lanes i >= ra
        // of the last tile are not read)
        const float* xs4 = a.s + (i0 / 4) * nb * 4;
        for (int64_t b = 0; b < nb; ++b) {
          const __m128 x4 = _mm_loadu_ps(xs4 + b * 4);
          for (int r = 0; r < G; ++r)
            _mm_storeu_ps(sc + (b * G + r) * 4, _mm_mul_ps(_mm_set1_ps(amt[b * G + r]), x4));
        }
        const int8_t* xt = a.q + (i0 / 4) * nb * 256;
        const int32_t* ct = a.c + (i0 / 4) * nb * 4;
        switch (ra) {
          case 4: group_tiles<4>(wd, G, xt, ct, sc, nb, accb); break;
          case 3: group_tiles<3>(wd, G, xt, ct, sc, nb, accb); break;
          case 2: group_tiles<2>(wd, G, xt, ct, sc, nb, accb); break;
          default: group_tiles<1>(wd, G, xt, ct, sc, nb, accb); break;
        }
        for (int i = 0; i < ra; ++i) {
          float* y = a.y[i0 + i] + n;
          if (G == 4)  // as rows_act8<4>
            fold4_store(accb[0 * 4 + i], accb[1 * 4 + i], accb[2 * 4 + i], accb[3 * 4 + i], y, acc);
          else  // as rows_act8<1>
            fold1_store(accb[i], y, acc);
        }
      }
      n += G;
    }
  }
}

}  // namespace qwen::ops::detail
