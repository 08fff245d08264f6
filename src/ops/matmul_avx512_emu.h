// ops/matmul_avx512_emu.h — a plain-C++ stand-in for the few AVX-512 intrinsics that
// matmul_avx512.cpp uses, written from the operation descriptions in Intel's Intrinsics Guide,
// lane by lane. It exists for one reason: tests/test_matmul.cpp compiles the AVX-512 kernel file a
// second time against it (QWEN_AVX512_EMULATION), so the AVX-512 blocking, packing, transposes,
// masks and tails are tested against the scalar reference even on a CPU or VM without AVX-512.
// Not used by the library. Aligned loads/stores abort on a misaligned address, as the hardware
// faults; masked loads read only the enabled lanes, as the hardware does not fault on the others.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/dtype.h"

namespace qwen::ops::detail::avx512_emulated {

struct __m512 {
  float f[16];
};
struct __m512d {
  double d[8];
};
struct __m512i {
  uint32_t u[16];
};
struct __m256i {
  uint16_t h[16];
};
using __mmask16 = uint16_t;
using __mmask32 = uint32_t;

// The hardware faults on a misaligned aligned access; so does the stand-in (even with NDEBUG).
inline void require_aligned64(const void* p, const char* what) {
  if ((reinterpret_cast<uintptr_t>(p) & 63u) != 0) {
    std::fprintf(stderr, "%s: address %p is not 64-byte aligned (the CPU would fault)\n", what, p);
    std::abort();
  }
}

template <class To, class From>
inline To bits(const From& v) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  std::memcpy(&t, &v, sizeof t);
  return t;
}

inline __m512 _mm512_setzero_ps() { return __m512{}; }
inline __m512 _mm512_set1_ps(float a) {
  __m512 r;
  for (float& x : r.f) x = a;
  return r;
}
inline __m512i _mm512_set1_epi32(int a) {
  __m512i r;
  for (uint32_t& x : r.u) x = uint32_t(a);
  return r;
}
inline __m512 _mm512_load_ps(const float* p) {
  require_aligned64(p, "_mm512_load_ps");
  __m512 r;
  std::memcpy(r.f, p, 64);
  return r;
}
inline __m512 _mm512_loadu_ps(const float* p) {
  __m512 r;
  std::memcpy(r.f, p, 64);
  return r;
}
inline void _mm512_store_ps(float* p, __m512 a) {
  require_aligned64(p, "_mm512_store_ps");
  std::memcpy(p, a.f, 64);
}
inline void _mm512_storeu_ps(float* p, __m512 a) { std::memcpy(p, a.f, 64); }
inline __m512 _mm512_maskz_loadu_ps(__mmask16 k, const float* p) {
  __m512 r{};
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) r.f[i] = p[i];
  return r;
}
inline void _mm512_mask_storeu_ps(float* p, __mmask16 k, __m512 a) {
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) p[i] = a.f[i];
}
inline __m256i _mm256_maskz_loadu_epi16(__mmask16 k, const void* p) {
  __m256i r{};
  const uint16_t* s = static_cast<const uint16_t*>(p);
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) r.h[i] = s[i];
  return r;
}
inline __m512i _mm512_maskz_loadu_epi16(__mmask32 k, const void* p) {
  uint16_t h[32] = {};
  const uint16_t* s = static_cast<const uint16_t*>(p);
  for (int i = 0; i < 32; ++i)
    if (k >> i & 1) h[i] = s[i];
  return bits<__m512i>(h);
}

inline __m512i _mm512_loadu_si512(const void* p) {
  __m512i r;
  std::memcpy(r.u, p, 64);
  return r;
}
constexpr int _MM_HINT_T0 = 3, _MM_HINT_T1 = 2;  // prefetches only move data between caches
inline void _mm_prefetch(const void*, int) {}

inline __m512 _mm512_add_ps(__m512 a, __m512 b) {
  for (int i = 0; i < 16; ++i) a.f[i] += b.f[i];
  return a;
}
inline __m512 _mm512_mul_ps(__m512 a, __m512 b) {
  for (int i = 0; i < 16; ++i) a.f[i] *= b.f[i];
  return a;
}
inline __m512 _mm512_fmadd_ps(__m512 a, __m512 b, __m512 c) {  // a·b + c, one rounding
  for (int i = 0; i < 16; ++i) c.f[i] = std::fma(a.f[i], b.f[i], c.f[i]);
  return c;
}
inline float _mm512_reduce_add_ps(__m512 a) {
  float s = 0;
  for (float x : a.f) s += x;
  return s;
}

inline __m512i _mm512_and_si512(__m512i a, __m512i b) {
  for (int i = 0; i < 16; ++i) a.u[i] &= b.u[i];
  return a;
}
inline __m512i _mm512_slli_epi32(__m512i a, unsigned n) {
  for (uint32_t& x : a.u) x = n > 31 ? 0 : x << n;
  return a;
}
inline __m512i _mm512_cvtepu16_epi32(__m256i a) {  // zero-extend 16 x u16 -> 16 x u32
  __m512i r;
  for (int i = 0; i < 16; ++i) r.u[i] = a.h[i];
  return r;
}
inline __m512 _mm512_cvtph_ps(__m256i a) {
  __m512 r;
  for (int i = 0; i < 16; ++i) r.f[i] = qwen::f16_to_f32(a.h[i]);
  return r;
}

inline __m512 _mm512_castsi512_ps(__m512i a) { return bits<__m512>(a); }
inline __m512d _mm512_castps_pd(__m512 a) { return bits<__m512d>(a); }
inline __m512 _mm512_castpd_ps(__m512d a) { return bits<__m512>(a); }

// Within each 128-bit lane j: (a0 b0 a1 b1) of the lane's elements.
inline __m512 _mm512_unpacklo_ps(__m512 a, __m512 b) {
  __m512 r;
  for (int j = 0; j < 4; ++j) {
    r.f[4 * j + 0] = a.f[4 * j + 0];
    r.f[4 * j + 1] = b.f[4 * j + 0];
    r.f[4 * j + 2] = a.f[4 * j + 1];
    r.f[4 * j + 3] = b.f[4 * j + 1];
  }
  return r;
}
// Within each 128-bit lane j: (a2 b2 a3 b3).
inline __m512 _mm512_unpackhi_ps(__m512 a, __m512 b) {
  __m512 r;
  for (int j = 0; j < 4; ++j) {
    r.f[4 * j + 0] = a.f[4 * j + 2];
    r.f[4 * j + 1] = b.f[4 * j + 2];
    r.f[4 * j + 2] = a.f[4 * j + 3];
    r.f[4 * j + 3] = b.f[4 * j + 3];
  }
  return r;
}
// Within each 128-bit lane j (two doubles): (a0 b0) / (a1 b1).
inline __m512d _mm512_unpacklo_pd(__m512d a, __m512d b) {
  __m512d r;
  for (int j = 0; j < 4; ++j) {
    r.d[2 * j] = a.d[2 * j];
    r.d[2 * j + 1] = b.d[2 * j];
  }
  return r;
}
inline __m512d _mm512_unpackhi_pd(__m512d a, __m512d b) {
  __m512d r;
  for (int j = 0; j < 4; ++j) {
    r.d[2 * j] = a.d[2 * j + 1];
    r.d[2 * j + 1] = b.d[2 * j + 1];
  }
  return r;
}
// 128-bit lanes: (a[imm 1:0], a[imm 3:2], b[imm 5:4], b[imm 7:6]).
inline __m512 _mm512_shuffle_f32x4(__m512 a, __m512 b, int imm) {
  __m512 r;
  const int sel[4] = {imm & 3, (imm >> 2) & 3, (imm >> 4) & 3, (imm >> 6) & 3};
  for (int j = 0; j < 4; ++j) {
    const __m512& src = j < 2 ? a : b;
    for (int i = 0; i < 4; ++i) r.f[4 * j + i] = src.f[4 * sel[j] + i];
  }
  return r;
}

}  // namespace qwen::ops::detail::avx512_emulated
