// tests/test_ops_backward.cpp — the backward passes of the small ops (RMSNorm, RoPE, SwiGLU,
// bias, embedding). Each gradient is checked against central finite differences of a
// double-precision forward written here (so a wrong formula cannot hide behind a matching wrong
// reference), the fast paths against their *_ref loops on odd shapes (vector tails, the OpenMP
// paths), and the "+=" contract by pre-filling every gradient output with random values.
// Tolerances come from f32 rounding bounds: a sum of n terms in f32 is off by at most
// γₙ·Σ|terms|, γₙ ≈ n·u, u = 2⁻²⁴ (Higham §3.1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "model/rope.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "qwen/config.h"
#include "qwen/error.h"

namespace {

constexpr double kU = 1.0 / 16777216.0;  // f32 unit roundoff 2⁻²⁴

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

std::vector<float> randn(int64_t n, uint32_t seed, float stddev = 1.0f, float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(mean, stddev);
  std::vector<float> v(sz(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

// |got[i] − want[i]| <= bound[i] for every element; reports the first offender.
void expect_within(const std::vector<float>& got, const std::vector<double>& want,
                   const std::vector<double>& bound, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_EQ(got.size(), bound.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(double(got[i]) - want[i]) <= bound[i])) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i]
                    << " (allowed " << bound[i] << ")";
      return;
    }
}

// Central finite differences of a double objective F over the float parameters p (perturbed in
// double through a copy): g[k] ≈ (F(p + h·e_k) − F(p − h·e_k)) / 2h. F is smooth and evaluated in
// double, so with h = 1e-4 the truncation error (h²·F'''/6) and the rounding error (1e-16/h)
// stay near 1e-9 relative, far below the f32 errors of the gradients under test.
std::vector<double> finite_diff(const std::vector<float>& p,
                                const std::function<double(const std::vector<double>&)>& F,
                                double h = 1e-4) {
  std::vector<double> q(p.begin(), p.end()), g(p.size());
  for (size_t k = 0; k < p.size(); ++k) {
    const double x0 = q[k];
    q[k] = x0 + h;
    const double fp = F(q);
    q[k] = x0 - h;
    const double fm = F(q);
    q[k] = x0;
    g[k] = (fp - fm) / (2 * h);
  }
  return g;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// got − prefill compared with want; bound = rel·max|want| (a whole-tensor scale: the FD checks
// only need to tell a right formula from a wrong one, which errs by O(max|want|)).
void expect_grad(const std::vector<float>& got, const std::vector<float>& prefill,
                 const std::vector<double>& want, double rel, const std::string& what) {
  double scale = 0.0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  ASSERT_GT(scale, 0.0) << what;
  std::vector<double> expect(want.size()), bound(want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    expect[i] = double(prefill[i]) + want[i];
    bound[i] = rel * scale + 4 * kU * std::fabs(double(prefill[i]));
  }
  expect_within(got, expect, bound, what);
}

// ---------------------------------------------------------------- RMSNorm

// Σ dy ∘ rmsnorm(x, w), all in double.
double rmsnorm_objective(const std::vector<double>& x, const std::vector<double>& w,
                         const std::vector<float>& dy, int64_t rows, int64_t C, double eps) {
  double F = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += x[sz(r * C + c)] * x[sz(r * C + c)];
    const double inv = 1.0 / std::sqrt(ss / double(C) + eps);
    for (int64_t c = 0; c < C; ++c)
      F += double(dy[sz(r * C + c)]) * x[sz(r * C + c)] * inv * w[sz(c)];
  }
  return F;
}

TEST(RmsNormBackward, MatchesFiniteDifferences) {
  const float eps = 1e-6f;
  for (auto [rows, C] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {4, 19}, {2, 40}}) {
    SCOPED_TRACE("rows " + std::to_string(rows) + " C " + std::to_string(C));
    const auto x = randn(rows * C, 1), w = randn(C, 2, 0.5f, 1.0f), dy = randn(rows * C, 3);
    const auto dx0 = randn(rows * C, 4), dw0 = randn(C, 5);
    for (bool fast : {true, false}) {
      std::vector<float> dx = dx0, dw = dw0;
      (fast ? qwen::ops::rmsnorm_backward : qwen::ops::rmsnorm_backward_ref)(
          x.data(), w.data(), dy.data(), dx.data(), dw.data(), rows, C, eps);
      const auto wd = to_double(w), xd = to_double(x);
      const auto gx = finite_diff(x, [&](const std::vector<double>& p) {
        return rmsnorm_objective(p, wd, dy, rows, C, eps);
      });
      const auto gw = finite_diff(w, [&](const std::vector<double>& p) {
        return rmsnorm_objective(xd, p, dy, rows, C, eps);
      });
      const std::string tag = fast ? "fast " : "ref ";
      if (C > 1) expect_grad(dx, dx0, gx, 1e-5, tag + "dx");  // C = 1: dx is exactly ~0
      expect_grad(dw, dw0, gw, 1e-5, tag + "dw");
    }
  }
}

// Fast vs ref on odd shapes, with rows of very different scale. Bounds: the fast path sums x²
// and x∘w∘dy in f32 over 32 lanes (≤ C/32 + 8 additions per lane chain plus the final 8-lane
// reduction), so each dx term is off by at most (C/16 + 16)·u of its magnitude; dw sums rows in
// f32 in order: γ_rows of Σ|dy∘x·r|.
TEST(RmsNormBackward, FastMatchesRefOddShapes) {
  const float eps = 1e-5f;
  for (auto [rows, C] : {std::pair<int64_t, int64_t>{1, 1}, {2, 3}, {5, 8}, {3, 15}, {7, 17},
                         {6, 63}, {9, 64}, {4, 129}, {33, 773}, {300, 130}, {1029, 128}}) {
    SCOPED_TRACE("rows " + std::to_string(rows) + " C " + std::to_string(C));
    auto x = randn(rows * C, 11), w = randn(C, 12, 0.3f, 1.0f), dy = randn(rows * C, 13);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < C; ++c) x[sz(r * C + c)] *= std::pow(10.0f, float(r % 5 - 2));
    const auto dx0 = randn(rows * C, 14), dw0 = randn(C, 15);
    std::vector<float> dx = dx0, dw = dw0, dx_ref = dx0, dw_ref = dw0;
    qwen::ops::rmsnorm_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), rows, C, eps);
    qwen::ops::rmsnorm_backward_ref(x.data(), w.data(), dy.data(), dx_ref.data(), dw_ref.data(),
                                    rows, C, eps);
    std::vector<double> bdx(sz(rows * C)), bdw(sz(C), 0.0);
    const double k_dx = (double(C) / 16 + 16) * kU;
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0, sa = 0;
      for (int64_t c = 0; c < C; ++c) {
        const size_t k = sz(r * C + c);
        ss += double(x[k]) * x[k];
        sa += std::fabs(double(x[k]) * w[sz(c)] * dy[k]);
      }
      const double rr = 1.0 / std::sqrt(ss / double(C) + eps);
      for (int64_t c = 0; c < C; ++c) {
        const size_t k = sz(r * C + c);
        const double mag = std::fabs(double(dx0[k])) + rr * std::fabs(double(w[sz(c)]) * dy[k]) +
                           std::fabs(double(x[k])) * rr * rr * rr * sa / double(C);
        bdx[k] = k_dx * mag;
        bdw[sz(c)] += std::fabs(double(dy[k]) * x[k] * rr);
      }
    }
    for (int64_t c = 0; c < C; ++c)
      bdw[sz(c)] = (double(rows) + 8) * kU * (bdw[sz(c)] + std::fabs(double(dw0[sz(c)])));
    expect_within(dx, to_double(dx_ref), bdx, "dx");
    expect_within(dw, to_double(dw_ref), bdw, "dw");
    // A frozen weight (dw = nullptr) gives the same dx.
    std::vector<float> dx2 = dx0;
    qwen::ops::rmsnorm_backward(x.data(), w.data(), dy.data(), dx2.data(), nullptr, rows, C, eps);
    EXPECT_EQ(dx2, dx);
  }
}

// Qwen3's per-head q/k norm shape (rows = T·H, C = D = 128): dw sums over every head and token;
// the result must not depend on the thread count (columns own their row sums).
TEST(RmsNormBackward, PerHeadShapeIsThreadCountIndependent) {
  const int64_t T = 37, H = 14, D = 128, rows = T * H;
  const auto x = randn(rows * D, 21), w = randn(D, 22, 0.2f, 1.0f), dy = randn(rows * D, 23);
  const int saved = qwen::num_threads();
  std::vector<float> dx1(sz(rows * D), 0.0f), dw1(sz(D), 0.0f), dx2 = dx1, dw2 = dw1;
  qwen::set_num_threads(1);
  qwen::ops::rmsnorm_backward(x.data(), w.data(), dy.data(), dx1.data(), dw1.data(), rows, D, 1e-6f);
  qwen::set_num_threads(std::max(2, saved));
  qwen::ops::rmsnorm_backward(x.data(), w.data(), dy.data(), dx2.data(), dw2.data(), rows, D, 1e-6f);
  qwen::set_num_threads(saved);
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(dw1, dw2);
}

// ---------------------------------------------------------------- RoPE

qwen::ModelConfig rope_config(int64_t head_dim, const std::string& rope_scaling_json) {
  const std::string j =
      R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 10,)"
      R"( "hidden_size": )" + std::to_string(head_dim * 2) +
      R"(, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,)"
      R"( "num_key_value_heads": 1, "rope_theta": 10000.0, "max_position_embeddings": 4096,)"
      R"( "rope_scaling": )" + rope_scaling_json + "}";
  return qwen::ModelConfig::from_json(j, "test");
}

// Σ g ∘ rope(x) in double with the f32 table values.
double rope_objective(const std::vector<double>& x, const std::vector<float>& g, int64_t T,
                      int64_t H, int64_t D, const std::vector<int32_t>& pos,
                      const std::vector<float>& ct, const std::vector<float>& st) {
  const int64_t half = D / 2;
  double F = 0.0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const size_t a = sz((t * H + h) * D + i), b = a + sz(half);
        const double c = ct[sz(pos[sz(t)] * half + i)], s = st[sz(pos[sz(t)] * half + i)];
        F += g[a] * (x[a] * c - x[b] * s) + g[b] * (x[b] * c + x[a] * s);
      }
  return F;
}

TEST(RopeBackward, MatchesFiniteDifferencesWithRealTables) {
  const int64_t T = 4, H = 3, D = 18;
  const std::vector<int32_t> pos = {7, 0, 1500, 3};  // out of order, far positions
  for (const std::string& scaling :
       {std::string("null"),
        std::string(R"({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024})")}) {
    SCOPED_TRACE(scaling);
    const qwen::RopeFreqs f = qwen::rope_frequencies(rope_config(D, scaling));
    std::vector<float> ct, st;
    qwen::rope_tables(f, 2048, &ct, &st);
    const auto x = randn(T * H * D, 31), g = randn(T * H * D, 32);
    std::vector<float> dx = g;  // in place: gradient w.r.t. the output in, w.r.t. the input out
    qwen::ops::rope_apply_backward(dx.data(), T, H, D, pos.data(), ct.data(), st.data());
    const auto want = finite_diff(x, [&](const std::vector<double>& p) {
      return rope_objective(p, g, T, H, D, pos, ct, st);
    }, 1.0);  // linear in x: any step is exact up to rounding
    // Each output is two products and a sum: 3u of its term magnitudes, bounded here by
    // 4u·(|g1| + |g2|)·attention_factor.
    std::vector<double> bound(want.size());
    const int64_t half = D / 2;
    for (int64_t k = 0; k < T * H * D; ++k) {
      const int64_t base = k - k % D, i = k % D % half;
      bound[sz(k)] = 4 * kU * (std::fabs(g[sz(base + i)]) + std::fabs(g[sz(base + i + half)])) *
                     f.attention_factor + 1e-12;
    }
    expect_within(dx, want, bound, "rope dx");
  }
}

TEST(RopeBackward, UndoesTheForwardRotation) {
  // Without attention_factor the table rows are rotations, so backward(forward(x)) = x.
  const int64_t T = 5, H = 2, D = 64;
  const std::vector<int32_t> pos = {0, 1, 9, 100, 4095};
  const qwen::RopeFreqs f = qwen::rope_frequencies(rope_config(D, "null"));
  std::vector<float> ct, st;
  qwen::rope_tables(f, 4096, &ct, &st);
  const auto x = randn(T * H * D, 41);
  std::vector<float> y = x;
  qwen::ops::rope_apply(y.data(), T, H, D, pos.data(), ct.data(), st.data());
  EXPECT_NE(y, x);
  qwen::ops::rope_apply_backward(y.data(), T, H, D, pos.data(), ct.data(), st.data());
  // Forward and backward each round ~3u of |x1| + |x2| per component, and the f32 table row
  // is orthogonal to within ~2u: 32u·(|x1| + |x2|) of the element's pair bounds the round trip.
  std::vector<double> bound(x.size());
  const int64_t half = D / 2;
  for (int64_t k = 0; k < T * H * D; ++k) {
    const int64_t base = k - k % D, i = k % D % half;
    bound[sz(k)] = 32 * kU * (std::fabs(x[sz(base + i)]) + std::fabs(x[sz(base + i + half)]));
  }
  expect_within(y, to_double(x), bound, "backward(forward(x))");
}

// ---------------------------------------------------------------- SwiGLU

double swiglu_objective(const std::vector<double>& g, const std::vector<double>& u,
                        const std::vector<float>& d) {
  double F = 0.0;
  for (size_t i = 0; i < g.size(); ++i) F += double(d[i]) * g[i] / (1.0 + std::exp(-g[i])) * u[i];
  return F;
}

TEST(SwigluBackward, MatchesFiniteDifferences) {
  const int64_t n = 37;
  auto g = randn(n, 51, 3.0f), u = randn(n, 52), d = randn(n, 53);
  g[0] = 0.0f;
  g[1] = -12.0f;
  g[2] = 15.0f;
  const auto dg0 = randn(n, 54), du0 = randn(n, 55);
  for (bool fast : {true, false}) {
    std::vector<float> dg = dg0, du = du0;
    (fast ? qwen::ops::swiglu_backward : qwen::ops::swiglu_backward_ref)(
        g.data(), u.data(), d.data(), dg.data(), du.data(), n);
    const auto gd = to_double(g), ud = to_double(u);
    const auto want_g = finite_diff(g, [&](const std::vector<double>& p) {
      return swiglu_objective(p, ud, d);
    });
    const auto want_u = finite_diff(u, [&](const std::vector<double>& p) {
      return swiglu_objective(gd, p, d);
    });
    // Per element: the f32 evaluation (σ through exp within 7u, then ~6 roundings; 1 + g(1−σ)
    // inherits |g|·u from σ's rounding) is within 32u of |prefill| + |d·u|·σ·(1 + |g|), resp.
    // |prefill| + |d·g·σ|; the FD adds ~1e-9 of |d·u| resp. |d·g|.
    std::vector<double> eg(sz(n)), eu(sz(n)), bg(sz(n)), bu(sz(n));
    for (size_t k = 0; k < sz(n); ++k) {
      const double s = 1.0 / (1.0 + std::exp(-double(g[k])));
      eg[k] = dg0[k] + want_g[k];
      eu[k] = du0[k] + want_u[k];
      bg[k] = 32 * kU * (std::fabs(dg0[k]) + std::fabs(double(d[k]) * u[k]) * s * (1 + std::fabs(g[k]))) +
              1e-9 * std::fabs(double(d[k]) * u[k]);
      bu[k] = 32 * kU * (std::fabs(du0[k]) + std::fabs(double(d[k]) * g[k]) * s) +
              1e-9 * std::fabs(double(d[k]) * g[k]);
    }
    expect_within(dg, eg, bg, fast ? "fast dgate" : "ref dgate");
    expect_within(du, eu, bu, fast ? "fast dup" : "ref dup");
  }
}

// Fast vs ref, odd lengths (tails, the threaded path) and extreme gates where exp(−g)
// overflows or underflows. Bound: the SIMD exp is within 4e-7 (7u) of std::exp, and each
// result is a handful of roundings: 32u of the magnitudes |prefill| + |d·u|·σ·(1 + |g|) and
// |prefill| + |d·g·σ|.
TEST(SwigluBackward, FastMatchesRefOddLengths) {
  for (int64_t n : {1, 7, 8, 9, 31, 1000, 70001}) {
    SCOPED_TRACE("n " + std::to_string(n));
    auto g = randn(n, 61, 4.0f), u = randn(n, 62), d = randn(n, 63);
    const float extremes[] = {0.0f, -0.0f, 88.0f, -88.0f, 100.0f, -100.0f, 150.0f, -150.0f, 1e-30f};
    for (size_t k = 0; k < std::size(extremes) && k < sz(n); ++k) g[sz(n) - 1 - k] = extremes[k];
    const auto dg0 = randn(n, 64), du0 = randn(n, 65);
    std::vector<float> dg = dg0, du = du0, dg_r = dg0, du_r = du0;
    qwen::ops::swiglu_backward(g.data(), u.data(), d.data(), dg.data(), du.data(), n);
    qwen::ops::swiglu_backward_ref(g.data(), u.data(), d.data(), dg_r.data(), du_r.data(), n);
    std::vector<double> bg(sz(n)), bu(sz(n));
    for (int64_t i = 0; i < n; ++i) {
      const size_t k = sz(i);
      const double s = 1.0 / (1.0 + std::exp(-double(g[k])));
      bg[k] = 32 * kU * (std::fabs(dg0[k]) + std::fabs(double(d[k]) * u[k]) * s * (1 + std::fabs(g[k])));
      bu[k] = 32 * kU * (std::fabs(du0[k]) + std::fabs(double(d[k]) * g[k]) * s);
    }
    expect_within(dg, to_double(dg_r), bg, "dgate");
    expect_within(du, to_double(du_r), bu, "dup");
    for (float v : dg) ASSERT_TRUE(std::isfinite(v));
  }
}

// ---------------------------------------------------------------- bias

// y = x + b broadcast over rows: ∂(Σ dy∘y)/∂b is the column sums of dy. Finite differences of
// that forward on small shapes; double column sums on big ones (the threaded path).
TEST(BiasBackward, ColumnSumsAccumulate) {
  for (auto [rows, N] : {std::pair<int64_t, int64_t>{1, 1}, {3, 5}, {17, 257}, {300, 1000}}) {
    SCOPED_TRACE("rows " + std::to_string(rows) + " N " + std::to_string(N));
    const auto dy = randn(rows * N, 71), db0 = randn(N, 72);
    std::vector<float> db = db0;
    qwen::ops::bias_backward(dy.data(), db.data(), rows, N);
    std::vector<double> want(sz(N), 0.0);
    if (rows * N <= 5000) {
      const auto x = randn(rows * N, 73);
      want = finite_diff(db0, [&](const std::vector<double>& b) {
        double F = 0;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < N; ++c) F += double(dy[sz(r * N + c)]) * (x[sz(r * N + c)] + b[sz(c)]);
        return F;
      }, 1.0);
    } else {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < N; ++c) want[sz(c)] += dy[sz(r * N + c)];
    }
    std::vector<double> expect(sz(N)), bound(sz(N), 0.0);
    for (int64_t c = 0; c < N; ++c) {
      double sa = std::fabs(db0[sz(c)]);
      for (int64_t r = 0; r < rows; ++r) sa += std::fabs(dy[sz(r * N + c)]);
      expect[sz(c)] = db0[sz(c)] + want[sz(c)];
      // f32 sum of rows + 1 terms, plus the FD's own double rounding (F sums rows·N products).
      bound[sz(c)] = (double(rows) + 2) * kU * sa + 1e-12 * double(rows * N);
    }
    expect_within(db, expect, bound, "db");
  }
}

TEST(BiasBackward, ThreadCountIndependent) {
  const int64_t rows = 513, N = 1031;
  const auto dy = randn(rows * N, 81);
  const int saved = qwen::num_threads();
  std::vector<float> a(sz(N), 0.0f), b(sz(N), 0.0f);
  qwen::set_num_threads(1);
  qwen::ops::bias_backward(dy.data(), a.data(), rows, N);
  qwen::set_num_threads(std::max(2, saved));
  qwen::ops::bias_backward(dy.data(), b.data(), rows, N);
  qwen::set_num_threads(saved);
  EXPECT_EQ(a, b);
}

// ---------------------------------------------------------------- embedding

TEST(Embedding, ForwardCopiesRows) {
  const int64_t V = 11, C = 13;
  const auto table = randn(V * C, 91);
  const std::vector<int32_t> ids = {3, 0, 10, 3, 7};
  std::vector<float> out(ids.size() * sz(C));
  qwen::ops::embedding_forward(table.data(), V, C, ids.data(), int64_t(ids.size()), out.data());
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t c = 0; c < C; ++c)
      EXPECT_EQ(out[i * sz(C) + sz(c)], table[sz(ids[i] * C + c)]) << i << " " << c;
}

TEST(Embedding, OutOfRangeIdsThrowAndWriteNothing) {
  const int64_t V = 5, C = 3;
  const auto table = randn(V * C, 92);
  for (int32_t bad : {5, -1, 1 << 30}) {
    const std::vector<int32_t> ids = {1, bad, 2};
    std::vector<float> out(9, 42.0f), dtab(sz(V * C), 7.0f);
    const std::vector<float> dout(9, 1.0f);
    try {
      qwen::ops::embedding_forward(table.data(), V, C, ids.data(), 3, out.data());
      ADD_FAILURE() << "no throw for id " << bad;
    } catch (const qwen::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("position 1"), std::string::npos) << e.what();
    }
    EXPECT_THROW(qwen::ops::embedding_backward(ids.data(), 3, dout.data(), dtab.data(), V, C),
                 qwen::Error);
    EXPECT_EQ(out, std::vector<float>(9, 42.0f));
    EXPECT_EQ(dtab, std::vector<float>(sz(V * C), 7.0f));
  }
}

// Σ dout ∘ table[ids]: the gradient scatters dout rows, duplicates accumulating. Checked by
// finite differences on a small table, then on a big one (threaded path, many duplicates)
// against a double scatter, and for thread-count independence.
TEST(Embedding, BackwardScattersWithDuplicates) {
  const int64_t V = 9, C = 6;
  const std::vector<int32_t> ids = {4, 1, 4, 8, 4, 0, 1};
  const int64_t n = int64_t(ids.size());
  const auto dout = randn(n * C, 93), dt0 = randn(V * C, 94);
  std::vector<float> dt = dt0;
  qwen::ops::embedding_backward(ids.data(), n, dout.data(), dt.data(), V, C);
  const auto want = finite_diff(dt0, [&](const std::vector<double>& tab) {
    double F = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < C; ++c) F += double(dout[sz(i * C + c)]) * tab[sz(ids[sz(i)] * C + c)];
    return F;
  }, 1.0);
  // f32 adds each of the k dout rows of an id into its row: within (k + 1)u of the magnitudes.
  std::vector<double> expect(dt0.size()), bound(dt0.size());
  for (int64_t v = 0; v < V; ++v) {
    const int64_t k = std::count(ids.begin(), ids.end(), int32_t(v));
    for (int64_t c = 0; c < C; ++c) {
      double mag = std::fabs(dt0[sz(v * C + c)]);
      for (int64_t i = 0; i < n; ++i)
        if (ids[sz(i)] == v) mag += std::fabs(dout[sz(i * C + c)]);
      expect[sz(v * C + c)] = dt0[sz(v * C + c)] + want[sz(v * C + c)];
      bound[sz(v * C + c)] = double(k + 1) * kU * mag + 1e-12;
    }
  }
  expect_within(dt, expect, bound, "dtable");
  for (int64_t c = 0; c < C; ++c) {  // rows never looked up keep their values exactly
    EXPECT_EQ(dt[sz(2 * C + c)], dt0[sz(2 * C + c)]);
    EXPECT_EQ(dt[sz(7 * C + c)], dt0[sz(7 * C + c)]);
  }
}

TEST(Embedding, BackwardLargeMatchesDoubleScatterAndIsThreadIndependent) {
  const int64_t V = 301, C = 771, n = 2049;
  std::vector<int32_t> ids(sz(n));
  std::mt19937 rng(95);
  for (auto& id : ids) id = int32_t(rng() % 40) * 7;  // few distinct rows: many duplicates
  const auto dout = randn(n * C, 96);
  std::vector<double> want(sz(V * C), 0.0), bound(sz(V * C), 0.0);
  std::vector<int> count(sz(V), 0);
  for (int64_t i = 0; i < n; ++i) {
    ++count[sz(ids[sz(i)])];
    for (int64_t c = 0; c < C; ++c) {
      want[sz(ids[sz(i)] * C + c)] += dout[sz(i * C + c)];
      bound[sz(ids[sz(i)] * C + c)] += std::fabs(dout[sz(i * C + c)]);
    }
  }
  for (int64_t v = 0; v < V; ++v)
    for (int64_t c = 0; c < C; ++c) bound[sz(v * C + c)] *= (count[sz(v)] + 1) * kU;
  const int saved = qwen::num_threads();
  std::vector<float> a(sz(V * C), 0.0f), b = a;
  qwen::set_num_threads(1);
  qwen::ops::embedding_backward(ids.data(), n, dout.data(), a.data(), V, C);
  qwen::set_num_threads(std::max(2, saved));
  qwen::ops::embedding_backward(ids.data(), n, dout.data(), b.data(), V, C);
  qwen::set_num_threads(saved);
  expect_within(b, want, bound, "dtable");
  EXPECT_EQ(a, b);
}

}  // namespace
