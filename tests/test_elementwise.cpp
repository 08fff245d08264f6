// tests/test_elementwise.cpp — RMSNorm, rotary embedding, SwiGLU, softmax, exp and the residual
// add against straightforward double-precision references written here, on odd sizes (vector
// tails), with in-place aliasing; plus RoPE's defining property: after rotating q by position m
// and k by position n, q·k depends only on m - n (and rotation keeps norms).
// The public entry points run the best SIMD path of this CPU; the *_ref loops are tested too.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ops/elementwise.h"

namespace {

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

std::vector<float> randn(int64_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, stddev);
  std::vector<float> v(sz(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

// |got - want| <= rel·|want| + abs, element by element; reports the first offender.
template <class G, class W>
void expect_close(const G& got, const W& want, double rel, double abs, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    if (!(std::fabs(g - w) <= rel * std::fabs(w) + abs)) {
      ADD_FAILURE() << what << ": element " << i << " got " << g << " want " << w;
      return;
    }
  }
}

TEST(RmsNorm, MatchesDoubleReference) {
  const int64_t rows = 6, C = 1001;
  std::vector<float> x = randn(rows * C, 1), w = randn(C, 2);
  for (int64_t r = 0; r < rows; ++r)  // rows of very different magnitude
    for (int64_t i = 0; i < C; ++i) x[sz(r * C + i)] *= std::pow(10.0f, float(r - 3));
  const float eps = 1e-6f;
  std::vector<double> want(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < C; ++i) ss += double(x[sz(r * C + i)]) * x[sz(r * C + i)];
    const double inv = 1.0 / std::sqrt(ss / C + double(eps));
    for (int64_t i = 0; i < C; ++i) want[sz(r * C + i)] = double(x[sz(r * C + i)]) * inv * w[sz(i)];
  }
  std::vector<float> y(x.size());
  qwen::ops::rmsnorm(x.data(), w.data(), y.data(), rows, C, eps);
  expect_close(y, want, 1e-6, 0.0, "rmsnorm");
  qwen::ops::rmsnorm(x.data(), w.data(), x.data(), rows, C, eps);  // in place
  expect_close(x, y, 0.0, 0.0, "rmsnorm in place");
}

TEST(RmsNorm, EpsDominatesTinyRows) {
  // mean(x^2) << eps: y = x·w/sqrt(eps) (a constant-zero row must stay zero, not NaN).
  const int64_t C = 33;
  std::vector<float> x(sz(C), 0.0f), w = randn(C, 3), y(sz(C), 1.0f);
  x[5] = 1e-6f;
  qwen::ops::rmsnorm(x.data(), w.data(), y.data(), 1, C, 1e-5f);
  std::vector<double> want(sz(C), 0.0);
  want[5] = 1e-6 * w[5] / std::sqrt(1e-12 / C + 1e-5);
  expect_close(y, want, 1e-6, 0.0, "tiny row");
}

// cos/sin tables (n_pos, D/2) for theta = 10000, computed in double, stored as float.
void rope_tables(int64_t n_pos, int64_t D, std::vector<float>& c, std::vector<float>& s) {
  c.resize(sz(n_pos * D / 2));
  s.resize(sz(n_pos * D / 2));
  for (int64_t p = 0; p < n_pos; ++p)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double ang = double(p) * std::pow(10000.0, -2.0 * double(i) / double(D));
      c[sz(p * D / 2 + i)] = float(std::cos(ang));
      s[sz(p * D / 2 + i)] = float(std::sin(ang));
    }
}

TEST(RopeApply, MatchesRotateHalfReference) {
  for (int64_t D : {8, 24, 64, 128}) {
    const int64_t T = 7, nh = 3, n_pos = 4096;
    std::vector<float> c, s;
    rope_tables(n_pos, D, c, s);
    const std::vector<int32_t> pos = {0, 5, 4095, 17, 17, 1000, 1};  // any order, repeats
    std::vector<float> x = randn(T * nh * D, uint32_t(10 + D));
    std::vector<double> want(x.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < nh; ++h)
        for (int64_t i = 0; i < D / 2; ++i) {
          const size_t a = sz((t * nh + h) * D + i), b = a + sz(D / 2);
          const double cc = c[sz(pos[sz(t)] * D / 2 + i)], ss = s[sz(pos[sz(t)] * D / 2 + i)];
          want[a] = double(x[a]) * cc - double(x[b]) * ss;
          want[b] = double(x[b]) * cc + double(x[a]) * ss;
        }
    qwen::ops::rope_apply(x.data(), T, nh, D, pos.data(), c.data(), s.data());
    expect_close(x, want, 0.0, 1e-6, "rope D=" + std::to_string(D));
  }
}

TEST(RopeApply, DotProductDependsOnlyOnRelativePosition) {
  const int64_t D = 64, n_pos = 3000;
  std::vector<float> c, s;
  rope_tables(n_pos, D, c, s);
  const std::vector<float> q = randn(D, 21), k = randn(D, 22);
  auto rotated = [&](const std::vector<float>& v, int32_t p) {
    std::vector<float> r = v;
    qwen::ops::rope_apply(r.data(), 1, 1, D, &p, c.data(), s.data());
    return r;
  };
  auto dot = [](const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0;
    for (size_t i = 0; i < a.size(); ++i) d += double(a[i]) * b[i];
    return d;
  };
  const double qn = std::sqrt(dot(q, q)), kn = std::sqrt(dot(k, k));
  for (int32_t delta : {0, 1, 7, 100, 1500}) {
    const double base = dot(rotated(q, delta), rotated(k, 0));
    for (int32_t shift : {1, 13, 500, 1499}) {
      const double d = dot(rotated(q, delta + shift), rotated(k, shift));
      EXPECT_NEAR(d, base, 1e-5 * qn * kn) << "delta=" << delta << " shift=" << shift;
    }
  }
  // Position 0 is the identity, and rotation keeps the norm.
  expect_close(rotated(q, 0), q, 0.0, 0.0, "position 0");
  const auto r = rotated(q, 2999);
  EXPECT_NEAR(std::sqrt(dot(r, r)), qn, 1e-6 * qn);
  // Different relative positions do give different scores (the test can tell them apart).
  EXPECT_GT(std::fabs(dot(rotated(q, 1), rotated(k, 0)) - dot(rotated(q, 0), rotated(k, 0))), 1e-3);
}

double silu_mul_double(double g, double u) { return g / (1.0 + std::exp(-g)) * u; }

TEST(SwiGlu, MatchesDoubleReference) {
  const int64_t n = 1003;  // not a multiple of 8 or 16
  std::vector<float> g = randn(n, 31, 4.0f), u = randn(n, 32);
  const float extremes[] = {-1e4f, -100.0f, -88.0f, -30.0f, -1e-8f,
                            0.0f,  1e-8f,   30.0f,  100.0f, 1e4f};
  for (size_t i = 0; i < std::size(extremes); ++i) g[i * 97] = extremes[i];
  std::vector<double> want(sz(n));
  for (int64_t i = 0; i < n; ++i) want[sz(i)] = silu_mul_double(g[sz(i)], u[sz(i)]);
  std::vector<float> out(sz(n)), out_ref(sz(n));
  qwen::ops::swiglu(g.data(), u.data(), out.data(), n);
  qwen::ops::swiglu_ref(g.data(), u.data(), out_ref.data(), n);
  expect_close(out, want, 1e-6, 1e-40, "swiglu");
  expect_close(out_ref, want, 1e-6, 1e-40, "swiglu_ref");
  for (int64_t m : {1, 7, 8, 9, 15, 16, 17}) {  // tails alone
    std::vector<float> o(sz(m));
    qwen::ops::swiglu(g.data() + 100, u.data() + 100, o.data(), m);
    expect_close(o, std::vector<double>(want.begin() + 100, want.begin() + 100 + m), 1e-6, 1e-40,
                 "swiglu n=" + std::to_string(m));
  }
  qwen::ops::swiglu(g.data(), u.data(), g.data(), n);  // out aliases gate
  expect_close(g, out, 0.0, 0.0, "swiglu in place");
}

TEST(Softmax, MatchesDoubleReference) {
  for (int64_t n : {1, 7, 16, 33, 1001}) {
    std::vector<float> x = randn(n, uint32_t(40 + n), 5.0f);
    if (n > 3) x[2] = -std::numeric_limits<float>::infinity();  // masked entry
    if (n > 10) x[9] = 80.0f;                                   // large: needs max-subtraction
    double mx = -1e300;
    for (float v : x) mx = std::max(mx, double(v));
    std::vector<double> want(sz(n));
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += want[sz(i)] = std::exp(double(x[sz(i)]) - mx);
    for (auto& w : want) w /= sum;
    std::vector<float> a = x, b = x;
    qwen::ops::softmax_inplace(a.data(), n);
    qwen::ops::softmax_inplace_ref(b.data(), n);
    expect_close(a, want, 1e-5, 1e-12, "softmax n=" + std::to_string(n));
    expect_close(b, want, 1e-5, 1e-12, "softmax_ref n=" + std::to_string(n));
  }
}

TEST(Exp, RelativeErrorOverTheFloatRange) {
  // A grid of step 0.0173 over [-87.3, 88.7] plus random points; exp there is a normal float.
  std::vector<float> x;
  for (double v = -87.3; v < 88.7; v += 0.0173) x.push_back(float(v));
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> ud(-87.3f, 88.7f);
  for (int i = 0; i < 20000; ++i) x.push_back(ud(rng));
  std::vector<float> y(x.size()), y_ref(x.size());
  qwen::ops::exp_f32(x.data(), y.data(), int64_t(x.size()));
  qwen::ops::exp_f32_ref(x.data(), y_ref.data(), int64_t(x.size()));
  std::vector<double> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = std::exp(double(x[i]));
  expect_close(y, want, 4e-7, 0.0, "exp_f32");
  expect_close(y_ref, want, 4e-7, 0.0, "exp_f32_ref");
}

TEST(Exp, LimitsAndSpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {-inf,
                                -1e30f,
                                -200.0f,
                                -104.0f,
                                89.0f,
                                100.0f,
                                1e30f,
                                inf,
                                0.0f,
                                -0.0f,
                                std::numeric_limits<float>::quiet_NaN()};
  std::vector<float> y(x.size(), 123.0f);
  qwen::ops::exp_f32(x.data(), y.data(), int64_t(x.size()));
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(y[i], 0.0f) << "x=" << x[i];
  for (size_t i = 4; i < 8; ++i) EXPECT_EQ(y[i], inf) << "x=" << x[i];
  EXPECT_EQ(y[8], 1.0f);
  EXPECT_EQ(y[9], 1.0f);
  EXPECT_TRUE(std::isnan(y[10]));
  // Results in the subnormal range: absolute error within half a subnormal step plus 4e-7 rel.
  std::vector<float> xs;
  for (double v = -103.0; v < -87.4; v += 0.37) xs.push_back(float(v));
  std::vector<float> ys(xs.size());
  qwen::ops::exp_f32(xs.data(), ys.data(), int64_t(xs.size()));
  std::vector<double> want(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) want[i] = std::exp(double(xs[i]));
  expect_close(ys, want, 4e-7, 1.5e-45, "exp_f32 subnormal");
}

TEST(AddInplace, Adds) {
  const int64_t n = 37;
  std::vector<float> y = randn(n, 50), x = randn(n, 51);
  std::vector<double> want(sz(n));
  for (int64_t i = 0; i < n; ++i) want[sz(i)] = double(y[sz(i)]) + x[sz(i)];
  qwen::ops::add_inplace(y.data(), x.data(), n);
  expect_close(y, want, 6e-8, 1e-30, "add_inplace");
}

}  // namespace
