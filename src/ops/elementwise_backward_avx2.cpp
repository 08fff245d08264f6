// ops/elementwise_backward_avx2.cpp — AVX2 + FMA kernels of the RMSNorm and SwiGLU backward
// passes (8-float vectors, masked tails: no element past the end is read or written). The
// drivers in elementwise.cpp split the work over threads and reach these only after
// cpu_features() said AVX2 is there; the formulas are those of the *_ref loops there.
#include <cmath>
#include <cstdint>

#include "ops/simd_avx2.h"

namespace qwen::ops::detail {

using V = simd::Avx2;
using reg = V::reg;

// One RMSNorm row: dx (C) += r·(w∘dy) − x·r³·mean(x∘w∘dy); returns r = 1/sqrt(mean(x²)+eps).
float rmsnorm_backward_row_avx2(const float* x, const float* w, const float* dy, float* dx,
                                int64_t C, float eps) {
  // Two vectors per step, two accumulators per sum: independent FMA chains.
  reg ss0 = V::zero(), ss1 = V::zero(), dt0 = V::zero(), dt1 = V::zero();
  int64_t i = 0;
  for (; i + 16 <= C; i += 16) {
    const reg x0 = V::load(x + i), x1 = V::load(x + i + 8);
    ss0 = V::fma(x0, x0, ss0);
    ss1 = V::fma(x1, x1, ss1);
    dt0 = V::fma(V::mul(x0, V::load(w + i)), V::load(dy + i), dt0);
    dt1 = V::fma(V::mul(x1, V::load(w + i + 8)), V::load(dy + i + 8), dt1);
  }
  for (; i < C; i += 8) {  // masked loads give 0 past C
    const reg x0 = V::load_n(x + i, C - i);
    ss0 = V::fma(x0, x0, ss0);
    dt0 = V::fma(V::mul(x0, V::load_n(w + i, C - i)), V::load_n(dy + i, C - i), dt0);
  }
  const double ss = double(V::hsum(V::add(ss0, ss1)));
  const double dot = double(V::hsum(V::add(dt0, dt1)));
  const double r = 1.0 / std::sqrt(ss / double(C) + double(eps));
  const reg rv = V::set1(float(r));
  const reg coef = V::set1(float(r * r * r * dot / double(C)));
  i = 0;
  for (; i + 8 <= C; i += 8) {
    const reg t = V::mul(V::load(w + i), V::load(dy + i));
    const reg d = V::fma(t, rv, V::load(dx + i));
    V::store(dx + i, _mm256_fnmadd_ps(V::load(x + i), coef, d));
  }
  if (i < C) {
    const int64_t n = C - i;
    const reg t = V::mul(V::load_n(w + i, n), V::load_n(dy + i, n));
    const reg d = V::fma(t, rv, V::load_n(dx + i, n));
    V::store_n(dx + i, _mm256_fnmadd_ps(V::load_n(x + i, n), coef, d), n);
  }
  return float(r);
}

namespace {

// dw[c0 : c0 + 8·NV] += Σ_rows dy[row, c]·x[row, c]·r[row], rows in order; the last vector may
// be partial (n_last lanes).
template <int NV>
void rmsnorm_dw_cols(const float* x, const float* dy, const float* r, float* dw, int64_t rows,
                     int64_t C, int64_t c0, int64_t n_last) {
  reg acc[NV];
  for (int k = 0; k < NV; ++k) acc[k] = V::zero();
  for (int64_t row = 0; row < rows; ++row) {
    const float* xr = x + row * C + c0;
    const float* dr = dy + row * C + c0;
    const reg rv = V::set1(r[row]);
    for (int k = 0; k < NV - 1; ++k)
      acc[k] = V::fma(V::mul(V::load(dr + 8 * k), rv), V::load(xr + 8 * k), acc[k]);
    const int k = NV - 1;
    const reg xl = n_last == 8 ? V::load(xr + 8 * k) : V::load_n(xr + 8 * k, n_last);
    const reg dl = n_last == 8 ? V::load(dr + 8 * k) : V::load_n(dr + 8 * k, n_last);
    acc[k] = V::fma(V::mul(dl, rv), xl, acc[k]);
  }
  for (int k = 0; k < NV - 1; ++k)
    V::store(dw + c0 + 8 * k, V::add(V::load(dw + c0 + 8 * k), acc[k]));
  const int k = NV - 1;
  V::store_n(dw + c0 + 8 * k, V::add(V::load_n(dw + c0 + 8 * k, n_last), acc[k]), n_last);
}

}  // namespace

// dw[c0, c1) += Σ_rows dy∘x·r over the column range (c0 a multiple of 8 or the range start).
void rmsnorm_backward_dw_avx2(const float* x, const float* dy, const float* r, float* dw,
                              int64_t rows, int64_t C, int64_t c0, int64_t c1) {
  int64_t c = c0;
  for (; c + 64 <= c1; c += 64) rmsnorm_dw_cols<8>(x, dy, r, dw, rows, C, c, 8);
  for (; c + 16 <= c1; c += 16) rmsnorm_dw_cols<2>(x, dy, r, dw, rows, C, c, 8);
  if (c < c1) {
    const int64_t n = c1 - c;  // 1 .. 15
    if (n > 8)
      rmsnorm_dw_cols<2>(x, dy, r, dw, rows, C, c, n - 8);
    else
      rmsnorm_dw_cols<1>(x, dy, r, dw, rows, C, c, n);
  }
}

namespace {

// dg += d·u·s·(1 + g(1−s)), du += d·g·s, s = σ(g) = 1/(1+exp(−g)).
inline void swiglu_bwd_vec(reg g, reg u, reg d, reg& dg, reg& du) {
  const reg one = V::set1(1.0f);
  const reg s = V::div(one, V::add(one, V::exp(V::sub(V::zero(), g))));
  du = V::fma(d, V::mul(g, s), du);
  const reg ds = V::mul(s, V::fma(g, V::sub(one, s), one));
  dg = V::fma(V::mul(d, u), ds, dg);
}

}  // namespace

void swiglu_backward_avx2(const float* gate, const float* up, const float* dout, float* dgate,
                          float* dup, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    reg dg = V::load(dgate + i), du = V::load(dup + i);
    swiglu_bwd_vec(V::load(gate + i), V::load(up + i), V::load(dout + i), dg, du);
    V::store(dgate + i, dg);
    V::store(dup + i, du);
  }
  if (i < n) {
    const int64_t m = n - i;
    reg dg = V::load_n(dgate + i, m), du = V::load_n(dup + i, m);
    swiglu_bwd_vec(V::load_n(gate + i, m), V::load_n(up + i, m), V::load_n(dout + i, m), dg, du);
    V::store_n(dgate + i, dg, m);
    V::store_n(dup + i, du, m);
  }
}

}  // namespace qwen::ops::detail
