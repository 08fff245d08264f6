// ops/attention_w16_avx2.cpp — a test stand-in for the AVX-512 kernels on CPUs without AVX-512:
// attention_simd.h instantiated with 16-lane vectors built from pairs of AVX2 registers and the
// AVX-512 register-block shape (6 rows × 4 vectors), so the generic logic exactly as the AVX-512
// build runs it (16-lane masks and tails, 64-column P·V chunks, 4 vectors per score row) is
// tested wherever AVX2 is. Only the thin intrinsic wrappers of simd_avx512.h are not covered by
// it. Never used for speed: flash_attention dispatches to the real AVX-512 or AVX2 tables.
#include "ops/attention_simd.h"
#include "ops/simd_avx2.h"

namespace qwen::ops::detail {
namespace {

struct Avx2x2 {
  struct reg {
    __m256 lo, hi;
  };
  static constexpr int W = 16;
  static constexpr int kScoreRows = 6, kScoreVecs = 4;  // as simd::Avx512
  static constexpr int kPvRows = 6, kPvVecs = 4;
  using A = simd::Avx2;

  static reg zero() { return {A::zero(), A::zero()}; }
  static reg set1(float x) { return {A::set1(x), A::set1(x)}; }
  static reg load(const float* p) { return {A::load(p), A::load(p + 8)}; }
  static void store(float* p, reg v) {
    A::store(p, v.lo);
    A::store(p + 8, v.hi);
  }
  static reg load_n(const float* p, int64_t n) {
    return {A::load_n(p, n), A::load_n(p + 8, n - 8)};
  }
  static void store_n(float* p, reg v, int64_t n) {
    A::store_n(p, v.lo, n);
    A::store_n(p + 8, v.hi, n - 8);
  }
  static reg fma(reg a, reg b, reg c) {
    return {A::fma(a.lo, b.lo, c.lo), A::fma(a.hi, b.hi, c.hi)};
  }
  static reg add(reg a, reg b) { return {A::add(a.lo, b.lo), A::add(a.hi, b.hi)}; }
  static reg sub(reg a, reg b) { return {A::sub(a.lo, b.lo), A::sub(a.hi, b.hi)}; }
  static reg mul(reg a, reg b) { return {A::mul(a.lo, b.lo), A::mul(a.hi, b.hi)}; }
  static reg max(reg a, reg b) { return {A::max(a.lo, b.lo), A::max(a.hi, b.hi)}; }
  static reg keep_n(reg v, int64_t n) { return {A::keep_n(v.lo, n), A::keep_n(v.hi, n - 8)}; }
  static reg max_n(reg acc, reg v, int64_t n) {
    return {A::max_n(acc.lo, v.lo, n), A::max_n(acc.hi, v.hi, n - 8)};
  }
  static float hsum(reg v) { return A::hsum(A::add(v.lo, v.hi)); }
  static float hmax(reg v) { return A::hmax(A::max(v.lo, v.hi)); }
  static reg exp2(reg x) { return {A::exp2(x.lo), A::exp2(x.hi)}; }
};

}  // namespace

const AttnKernels& attn_kernels_w16_test() { return AttnSimd<Avx2x2>::table(); }

}  // namespace qwen::ops::detail
