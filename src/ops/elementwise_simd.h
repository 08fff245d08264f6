// ops/elementwise_simd.h — internal: the exp-bound per-token ops (SwiGLU, softmax, exp) written
// once against a vector-traits type V (simd_avx2.h, simd_avx512.h) and instantiated by
// elementwise_avx2.cpp and elementwise_avx512.cpp. Tails use masked loads and stores, so no
// element past n is read or written. Include only from a *_avx2.cpp / *_avx512.cpp file.
#pragma once
#include <cstdint>
#include <limits>

namespace qwen::ops::detail {
namespace {

template <class V>
struct ElementwiseSimd {
  using reg = typename V::reg;
  static constexpr int W = V::W;

  static reg silu_mul(reg g, reg u) {  // g / (1 + exp(-g)) * u, in the order of swiglu_ref
    const reg e = V::exp(V::sub(V::zero(), g));
    return V::mul(V::div(g, V::add(V::set1(1.0f), e)), u);
  }

  static void swiglu(const float* gate, const float* up, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + W <= n; i += W) V::store(out + i, silu_mul(V::load(gate + i), V::load(up + i)));
    if (i < n)
      V::store_n(out + i, silu_mul(V::load_n(gate + i, n - i), V::load_n(up + i, n - i)), n - i);
  }

  static void exp(const float* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + W <= n; i += W) V::store(y + i, V::exp(V::load(x + i)));
    if (i < n) V::store_n(y + i, V::exp(V::load_n(x + i, n - i)), n - i);
  }

  static void softmax(float* x, int64_t n) {
    if (n <= 0) return;
    const int64_t nw = n - n % W, nt = n - nw;  // full vectors, tail lanes
    reg mx = V::set1(-std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < nw; i += W) mx = V::max(mx, V::load(x + i));
    if (nt) mx = V::max_n(mx, V::load_n(x + nw, nt), nt);
    const reg m = V::set1(V::hmax(mx));
    reg sum = V::zero();
    for (int64_t i = 0; i < nw; i += W) {
      const reg e = V::exp(V::sub(V::load(x + i), m));
      V::store(x + i, e);
      sum = V::add(sum, e);
    }
    if (nt) {
      const reg e = V::keep_n(V::exp(V::sub(V::load_n(x + nw, nt), m)), nt);
      V::store_n(x + nw, e, nt);
      sum = V::add(sum, e);
    }
    const reg inv = V::set1(1.0f / V::hsum(sum));
    for (int64_t i = 0; i < nw; i += W) V::store(x + i, V::mul(V::load(x + i), inv));
    if (nt) V::store_n(x + nw, V::mul(V::load_n(x + nw, nt), inv), nt);
  }
};

}  // namespace
}  // namespace qwen::ops::detail
