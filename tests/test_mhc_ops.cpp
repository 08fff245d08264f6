// tests/test_mhc_ops.cpp — the mHC / HC site kernels of ops/mhc.h: float64 finite-difference
// checks of a whole site (coefficients -> Sinkhorn -> pre-aggregate -> a test sub-layer F -> post
// merge) in both modes, the unrolled Sinkhorn backward on its own, Sinkhorn's row and column sums,
// the n = 1 and init reductions to a plain residual, the float (AVX2) kernels against the scalar
// references and the float64 bodies on odd shapes, and the Amax gain helpers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "core/cpu.h"
#include "ops/mhc.h"
#include "qwen/error.h"

using namespace qwen::ops;

namespace {

std::vector<double> uniform(size_t n, double lo, double hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = d(rng);
  return v;
}
std::vector<double> normal(size_t n, double sd, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, sd);
  std::vector<double> v(n);
  for (double& x : v) x = d(rng);
  return v;
}
std::vector<float> to_f(const std::vector<double>& v) { return {v.begin(), v.end()}; }

// The test's sub-layer, with its own RMSNorm like a Qwen sub-layer: F(u) = tanh(rmsnorm(u)·A),
// A (C, C), no gain. y_c = tanh(Σ_k ρ·u_k·A[k][c]), ρ = 1/sqrt(mean(u²) + eps).
struct TestF {
  int64_t C = 0;
  std::vector<double> A;
  double eps = 1e-6;

  template <class T>
  void forward(const T* u, int64_t n_tok, T* y) const {
    for (int64_t t = 0; t < n_tok; ++t) {
      double ss = 0;
      for (int64_t k = 0; k < C; ++k) ss += double(u[t * C + k]) * double(u[t * C + k]);
      const double rho = 1.0 / std::sqrt(ss / double(C) + eps);
      for (int64_t c = 0; c < C; ++c) {
        double v = 0;
        for (int64_t k = 0; k < C; ++k) v += rho * double(u[t * C + k]) * A[size_t(k * C + c)];
        y[t * C + c] = T(std::tanh(v));
      }
    }
  }
  // g_u += dF/du ᵀ g_y (double only).
  void backward(const double* u, const double* g_y, int64_t n_tok, double* g_u) const {
    std::vector<double> y(static_cast<size_t>(C)), gyn(static_cast<size_t>(C));
    for (int64_t t = 0; t < n_tok; ++t) {
      const double* ut = u + t * C;
      forward(ut, 1, y.data());
      double ss = 0;
      for (int64_t k = 0; k < C; ++k) ss += ut[k] * ut[k];
      const double rho = 1.0 / std::sqrt(ss / double(C) + eps);
      // g_v = g_y (1 − y²); g_n = A g_v (n = ρ u); g_u = ρ g_n − ρ³/C (g_n·u) u.
      double dot = 0;
      for (int64_t k = 0; k < C; ++k) {
        double s = 0;
        for (int64_t c = 0; c < C; ++c)
          s += A[size_t(k * C + c)] * g_y[t * C + c] * (1 - y[size_t(c)] * y[size_t(c)]);
        gyn[size_t(k)] = s;
        dot += s * ut[k];
      }
      for (int64_t k = 0; k < C; ++k)
        g_u[t * C + k] += rho * gyn[size_t(k)] - rho * rho * rho / double(C) * dot * ut[k];
    }
  }
};

// One whole site in float64, through the library's double kernels.
struct Site {
  MhcDims d;
  std::vector<double> phi, bias, alpha;
  TestF f;
  int64_t T = 0;

  MhcParams<double> params() const { return {phi.data(), bias.data(), alpha.data()}; }

  // X_out for X; keeps the forward's buffers in the out-arguments when given.
  std::vector<double> forward(const std::vector<double>& X, std::vector<double>* coef_buf = nullptr,
                              std::vector<double>* u_out = nullptr,
                              std::vector<double>* y_out = nullptr) const {
    std::vector<double> cb(size_t(mhc_coefs_size(T, d.n)));
    const MhcCoefs<double> co = mhc_coefs_view(cb.data(), T, d.n);
    mhc_coefficients_forward(d, params(), X.data(), T, co);
    std::vector<double> u(size_t(T * d.C)), y(size_t(T * d.C)), out(X.size());
    mhc_pre_aggregate(d, X.data(), co.h_pre, T, u.data());
    f.forward(u.data(), T, y.data());
    mhc_post_merge(d, X.data(), co.h_res, co.h_post, y.data(), T, out.data());
    if (coef_buf) *coef_buf = cb;
    if (u_out) *u_out = u;
    if (y_out) *y_out = y;
    return out;
  }
  double loss(const std::vector<double>& X, const std::vector<double>& W) const {
    const std::vector<double> out = forward(X);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += W[i] * out[i];
    return s;
  }
  // Gradients of loss(X, W) = Σ W ⊙ X_out through the library's backward kernels.
  void backward(const std::vector<double>& X, const std::vector<double>& W, std::vector<double>& gX,
                std::vector<double>& gphi, std::vector<double>& gbias,
                std::vector<double>& galpha) const {
    std::vector<double> cb, u, y;
    forward(X, &cb, &u, &y);
    const MhcCoefs<double> co = mhc_coefs_view(cb.data(), T, d.n);
    const int64_t n = d.n;
    gX.assign(X.size(), 0.0);
    gphi.assign(phi.size(), 0.0);
    gbias.assign(bias.size(), 0.0);
    galpha.assign(3, 0.0);
    std::vector<double> g_hres(size_t(T * n * n), 0.0), g_hpost(size_t(T * n), 0.0),
        g_hpre(size_t(T * n), 0.0), g_y(size_t(T * d.C), 0.0), g_u(size_t(T * d.C), 0.0);
    mhc_post_merge_backward(d, X.data(), co.h_res, co.h_post, y.data(), W.data(), T, gX.data(),
                            g_hres.data(), g_hpost.data(), g_y.data());
    f.backward(u.data(), g_y.data(), T, g_u.data());
    mhc_pre_aggregate_backward(d, X.data(), co.h_pre, g_u.data(), T, gX.data(), g_hpre.data());
    mhc_coefficients_backward(d, params(), X.data(), co, g_hpre.data(), g_hpost.data(),
                              g_hres.data(), T, gX.data(),
                              MhcGrads<double>{gphi.data(), gbias.data(), galpha.data()});
  }
};

// Central differences of loss w.r.t. every entry of v, against the analytic gradient g.
// Tolerance: 1e-7 of the tensor's largest gradient (h = 1e-5: truncation ~h², roundoff ~1e-16/h).
void expect_fd(Site& s, std::vector<double>& v, const std::vector<double>& g,
               const std::vector<double>& X, const std::vector<double>& W, const char* what,
               bool v_is_X = false) {
  const double h = 1e-5;
  double gmax = 0;
  for (double x : g) gmax = std::max(gmax, std::fabs(x));
  ASSERT_GT(gmax, 1e-3) << what << ": gradient is (nearly) zero, the check would be empty";
  double worst = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + h;
    const double lp = s.loss(v_is_X ? v : X, W);
    v[i] = keep - h;
    const double lm = s.loss(v_is_X ? v : X, W);
    v[i] = keep;
    const double fd = (lp - lm) / (2 * h);
    worst = std::max(worst, std::fabs(fd - g[i]));
    EXPECT_NEAR(g[i], fd, 1e-7 * gmax) << what << "[" << i << "]";
  }
  std::printf("  %-6s %4zu entries, max |grad| %.3g, max |fd - grad| %.3g\n", what, v.size(), gmax,
              worst);
}

Site make_site(HcMode mode, int64_t n, int64_t C, int64_t T, uint64_t seed) {
  Site s;
  s.d.n = n;
  s.d.C = C;
  s.d.iters = 20;
  s.d.eps = 1e-6;
  s.d.mode = mode;
  s.T = T;
  s.f.C = C;
  s.f.A = normal(size_t(C * C), 1.0 / std::sqrt(double(C)), seed + 1);
  s.phi = normal(size_t(s.d.phi_size()), mode == HcMode::Mhc ? 0.3 : 0.5, seed + 2);
  s.bias = uniform(size_t(s.d.K()), -1, 1, seed + 3);
  if (mode == HcMode::Mhc) {
    // Sinkhorn logits of scale up to ~5: static part ±4 plus the dynamic part.
    auto br = uniform(size_t(n * n), -4, 4, seed + 4);
    std::copy(br.begin(), br.end(), s.bias.begin() + 2 * n);
  }
  s.alpha = uniform(3, 0.5, 1.5, seed + 5);
  return s;
}

void whole_site_fd(HcMode mode, int64_t n, int64_t C, int64_t T, uint64_t seed) {
  Site s = make_site(mode, n, C, T, seed);
  std::vector<double> X = normal(size_t(T * n * C), 1.0, seed + 6);
  const std::vector<double> W = normal(X.size(), 1.0, seed + 7);
  if (mode == HcMode::Mhc) {  // the test really exercises large logits
    std::vector<double> cb;
    s.forward(X, &cb);
    const MhcCoefs<double> co = mhc_coefs_view(cb.data(), T, n);
    double zmax = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 2 * n; k < s.d.K(); ++k)
        zmax = std::max(zmax, std::fabs(co.r[t * n] * s.alpha[2] * co.proj[t * s.d.K() + k] +
                                        s.bias[size_t(k)]));
    if (n > 1) {
      EXPECT_GT(zmax, 3.0);
    }
  }
  std::vector<double> gX, gphi, gbias, galpha;
  s.backward(X, W, gX, gphi, gbias, galpha);
  expect_fd(s, X, gX, X, W, "X", true);
  expect_fd(s, s.phi, gphi, X, W, "phi");
  expect_fd(s, s.bias, gbias, X, W, "bias");
  expect_fd(s, s.alpha, galpha, X, W, "alpha");
}

double max_abs_diff(const float* a, const double* b, size_t n, double* scale = nullptr) {
  double m = 0, s = 0;
  for (size_t i = 0; i < n; ++i) {
    m = std::max(m, std::fabs(double(a[i]) - b[i]));
    s = std::max(s, std::fabs(b[i]));
  }
  if (scale) *scale = s;
  return m;
}

}  // namespace

// ---- Finite differences (float64) ------------------------------------------------------------

TEST(MhcGrad, WholeSiteFiniteDifferenceN4) { whole_site_fd(HcMode::Mhc, 4, 5, 3, 100); }
TEST(MhcGrad, WholeSiteFiniteDifferenceN3) { whole_site_fd(HcMode::Mhc, 3, 7, 2, 200); }
TEST(MhcGrad, WholeSiteFiniteDifferenceN1) { whole_site_fd(HcMode::Mhc, 1, 6, 2, 300); }
TEST(MhcGrad, HcWholeSiteFiniteDifferenceN4) { whole_site_fd(HcMode::Hc, 4, 5, 3, 400); }
TEST(MhcGrad, HcWholeSiteFiniteDifferenceN2) { whole_site_fd(HcMode::Hc, 2, 9, 2, 500); }

TEST(MhcGrad, SinkhornUnrolledBackwardFiniteDifference) {
  for (int64_t n : {2, 3, 4, 6}) {
    const int iters = 20;
    std::vector<double> Z = uniform(size_t(n * n), -5, 5, 7 + n);
    const std::vector<double> W = normal(size_t(n * n), 1.0, 17 + n);
    std::vector<double> H(size_t(n * n)), gZ(size_t(n * n), 0.0),
        work(size_t(sinkhorn_work_size(n, iters)));
    auto loss = [&](const std::vector<double>& z) {
      sinkhorn_forward(z.data(), H.data(), n, iters);
      double s = 0;
      for (size_t i = 0; i < H.size(); ++i) s += W[i] * H[i];
      return s;
    };
    sinkhorn_backward(Z.data(), W.data(), gZ.data(), n, iters, work.data());
    double gmax = 0;
    for (double g : gZ) gmax = std::max(gmax, std::fabs(g));
    ASSERT_GT(gmax, 1e-3);
    for (size_t i = 0; i < Z.size(); ++i) {
      const double keep = Z[i], h = 1e-5;
      Z[i] = keep + h;
      const double lp = loss(Z);
      Z[i] = keep - h;
      const double lm = loss(Z);
      Z[i] = keep;
      EXPECT_NEAR(gZ[i], (lp - lm) / (2 * h), 1e-7 * gmax) << "n=" << n << " i=" << i;
    }
    // The gradient accumulates.
    std::vector<double> gZ2 = gZ;
    sinkhorn_backward(Z.data(), W.data(), gZ2.data(), n, iters, work.data());
    for (size_t i = 0; i < Z.size(); ++i) EXPECT_DOUBLE_EQ(gZ2[i], 2 * gZ[i]);
  }
}

// ---- Sinkhorn sums -----------------------------------------------------------------------------

// Rows (the last step) sum to 1 to rounding for any logits. Columns carry the truncation error:
// within 1e-6 after 20 iterations for logits in [-1, 1]; for logits in [-5, 5] they are not (a few
// percent at worst) and the test records how far off they are and that more iterations shrink it.
TEST(MhcSinkhorn, RowAndColumnSums) {
  for (int64_t n : {2, 3, 4, 8}) {
    for (double scale : {0.5, 1.0, 5.0}) {
      double worst_col_d = 0, worst_col_f = 0;
      for (int trial = 0; trial < 200; ++trial) {
        const std::vector<double> Z = uniform(size_t(n * n), -scale, scale, 1000 * n + trial);
        const std::vector<float> Zf = to_f(Z);
        std::vector<double> H(size_t(n * n)), H100(size_t(n * n));
        std::vector<float> Hf(size_t(n * n));
        sinkhorn_forward(Z.data(), H.data(), n, 20);
        sinkhorn_forward(Zf.data(), Hf.data(), n, 20);
        sinkhorn_forward(Z.data(), H100.data(), n, 100);
        double col20 = 0, col100 = 0;
        for (int64_t i = 0; i < n; ++i) {
          double rd = 0, rf = 0;
          for (int64_t j = 0; j < n; ++j) {
            rd += H[size_t(i * n + j)];
            rf += double(Hf[size_t(i * n + j)]);
            ASSERT_GT(Hf[size_t(i * n + j)], 0.0f);
          }
          ASSERT_NEAR(rd, 1.0, 1e-12);
          ASSERT_NEAR(rf, 1.0, 1e-6);
        }
        for (int64_t j = 0; j < n; ++j) {
          double cd = 0, cf = 0, c100 = 0;
          for (int64_t i = 0; i < n; ++i) {
            cd += H[size_t(i * n + j)];
            cf += double(Hf[size_t(i * n + j)]);
            c100 += H100[size_t(i * n + j)];
          }
          col20 = std::max(col20, std::fabs(cd - 1));
          col100 = std::max(col100, std::fabs(c100 - 1));
          worst_col_f = std::max(worst_col_f, std::fabs(cf - 1));
        }
        worst_col_d = std::max(worst_col_d, col20);
        EXPECT_LE(col100, col20 + 1e-15) << "more iterations must not move columns away from 1";
      }
      if (scale <= 1.0) {
        EXPECT_LE(worst_col_d, 1e-6) << "n=" << n << " scale=" << scale;
        EXPECT_LE(worst_col_f, 1e-6) << "n=" << n << " scale=" << scale;
      }
      std::printf(
          "  n=%lld logits in [-%.1f, %.1f]: max |column sum - 1| after 20 iters: f64 %.2e, f32 "
          "%.2e\n",
          (long long)n, scale, scale, worst_col_d, worst_col_f);
    }
  }
}

TEST(MhcSinkhorn, OneStreamIsExactlyOne) {
  for (double z : {-30.0, 0.0, 4.5}) {
    double H = 0;
    sinkhorn_forward(&z, &H, 1, 20);
    EXPECT_EQ(H, 1.0);
  }
}

// ---- Reductions to the plain residual
// ------------------------------------------------------------

// n = 1: H_res = [1] and X_out = X + h_post·F(h_pre·X), h_post = 2σ(z_post), h_pre = σ(z_pre).
TEST(MhcSite, OneStreamIsPlainResidual) {
  const int64_t C = 11, T = 3;
  Site s = make_site(HcMode::Mhc, 1, C, T, 900);
  const std::vector<double> X = normal(size_t(T * C), 1.0, 901);
  std::vector<double> cb, u, y;
  const std::vector<double> out = s.forward(X, &cb, &u, &y);
  const MhcCoefs<double> co = mhc_coefs_view(cb.data(), T, 1);
  for (int64_t t = 0; t < T; ++t) {
    EXPECT_EQ(co.h_res[t], 1.0);
    double ss = 0, m[3] = {0, 0, 0};
    for (int64_t c = 0; c < C; ++c) {
      ss += X[size_t(t * C + c)] * X[size_t(t * C + c)];
      for (int k = 0; k < 3; ++k) m[k] += s.phi[size_t(k * C + c)] * X[size_t(t * C + c)];
    }
    const double r = 1 / std::sqrt(ss / C + s.d.eps);
    const double hpre = 1 / (1 + std::exp(-(r * s.alpha[0] * m[0] + s.bias[0])));
    const double hpost = 2 / (1 + std::exp(-(r * s.alpha[1] * m[1] + s.bias[1])));
    EXPECT_NEAR(co.h_pre[t], hpre, 1e-14);
    EXPECT_NEAR(co.h_post[t], hpost, 1e-14);
    std::vector<double> uu(static_cast<size_t>(C)), yy(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) uu[size_t(c)] = hpre * X[size_t(t * C + c)];
    s.f.forward(uu.data(), 1, yy.data());
    for (int64_t c = 0; c < C; ++c)
      EXPECT_NEAR(out[size_t(t * C + c)], X[size_t(t * C + c)] + hpost * yy[size_t(c)], 1e-13);
  }
}

// mHC init: with the embedding copied into every stream, every stream of the site's output equals
// the plain pre-norm residual x + F(x) (F normalises its input, so h_pre's scale drops out up to
// F's eps), h_post is exactly 1, and the streams stay identical; bias_pre breaks the symmetry.
TEST(MhcSite, InitEqualsPlainResidual) {
  const int64_t n = 4, C = 24, T = 3;
  for (HcMode mode : {HcMode::Mhc, HcMode::Hc}) {
    for (int64_t site : {0, 5}) {
      MhcDims d;
      d.n = n;
      d.C = C;
      d.mode = mode;
      std::vector<float> phi(size_t(d.phi_size())), bias(size_t(d.K())), alpha(3);
      mhc_init_site(d, site, MhcInitOptions{}, phi.data(), bias.data(), alpha.data());
      Site s;
      s.d = d;
      s.T = T;
      s.phi.assign(phi.begin(), phi.end());
      s.bias.assign(bias.begin(), bias.end());
      s.alpha.assign(alpha.begin(), alpha.end());
      s.f.C = C;
      s.f.A = normal(size_t(C * C), 1.0 / std::sqrt(double(C)), 77);
      s.f.eps = 1e-12;  // the residual form is exact up to F's eps (RMSNorm(c·x) vs RMSNorm(x))
      const std::vector<double> e = normal(size_t(T * C), 1.0, 78);
      std::vector<double> X(size_t(T * n * C));
      mhc_expand(e.data(), T, n, C, X.data());
      std::vector<double> cb;
      const std::vector<double> out = s.forward(X, &cb);
      const MhcCoefs<double> co = mhc_coefs_view(cb.data(), T, n);
      std::vector<double> ref(size_t(T * C));
      s.f.forward(e.data(), T, ref.data());
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < n; ++i) {
          EXPECT_EQ(co.h_post[t * n + i], 1.0);
          for (int64_t c = 0; c < C; ++c)
            EXPECT_NEAR(out[size_t((t * n + i) * C + c)],
                        e[size_t(t * C + c)] + ref[size_t(t * C + c)], 1e-12)
                << "mode " << int(mode) << " site " << site;
        }
        // Symmetry broken: stream site mod n is read more than the others.
        const int64_t on = site % n;
        for (int64_t j = 0; j < n; ++j)
          if (j != on) {
            EXPECT_GT(co.h_pre[t * n + on], co.h_pre[t * n + j] + 0.3);
          }
      }
      // The collapse (sum of streams) is n·(x + F(x)): the final RMSNorm removes the n.
      std::vector<double> y(size_t(T * C));
      mhc_collapse(out.data(), T, n, C, y.data());
      for (size_t k = 0; k < y.size(); ++k) EXPECT_NEAR(y[k], double(n) * (e[k] + ref[k]), 1e-11);
    }
  }
  // Init is deterministic, zero on phi's post rows, random elsewhere.
  MhcDims d;
  d.n = 4;
  d.C = 8;
  std::vector<float> a(size_t(d.phi_size())), b(a.size()), bias(24), alpha(3);
  mhc_init_site(d, 3, MhcInitOptions{}, a.data(), bias.data(), alpha.data());
  mhc_init_site(d, 3, MhcInitOptions{}, b.data(), bias.data(), alpha.data());
  EXPECT_EQ(a, b);
  const int64_t cols = d.phi_cols();
  double post = 0, rest = 0;
  for (int64_t k = 0; k < d.K(); ++k)
    for (int64_t c = 0; c < cols; ++c)
      (k >= 4 && k < 8 ? post : rest) += double(a[size_t(k * cols + c)]) * a[size_t(k * cols + c)];
  EXPECT_EQ(post, 0.0);
  const double sd = std::sqrt(rest / double((d.K() - 4) * cols));
  EXPECT_NEAR(sd, 0.02, 0.002);
}

// ---- Float kernels against the scalar references and the float64 bodies
// ---------------------------

TEST(MhcKernels, FloatMatchesRefAndDoubleOnOddShapes) {
  double worst_coef = 0, worst_bwd = 0;  // relative errors seen, printed at the end
  for (HcMode mode : {HcMode::Mhc, HcMode::Hc})
    for (int64_t n : {1, 2, 3, 4, 5, 9})
      for (int64_t C : {1, 7, 37, 100})
        for (int64_t T : {1, 2, 4, 7}) {
          SCOPED_TRACE("mode " + std::to_string(int(mode)) + " n " + std::to_string(n) + " C " +
                       std::to_string(C) + " T " + std::to_string(T));
          Site s = make_site(mode, n, C, T, 31 * n + 7 * C + T);
          const MhcDims& d = s.d;
          const std::vector<double> X = normal(size_t(T * n * C), 1.0, 5 + n + C + T);
          const std::vector<double> Fv = normal(size_t(T * C), 1.0, 6 + n + C + T);
          const std::vector<double> G = normal(size_t(T * n * C), 1.0, 8 + n + C + T);
          const std::vector<float> Xf = to_f(X), Ff = to_f(Fv), Gf = to_f(G);
          const std::vector<float> phif = to_f(s.phi), biasf = to_f(s.bias), alphaf = to_f(s.alpha);
          const MhcParams<float> pf{phif.data(), biasf.data(), alphaf.data()};
          const size_t ncb = size_t(mhc_coefs_size(T, n));
          std::vector<double> cbd(ncb);
          std::vector<float> cbf(ncb), cbr(ncb);
          const MhcCoefs<double> cd = mhc_coefs_view(cbd.data(), T, n);
          const MhcCoefs<float> cf = mhc_coefs_view(cbf.data(), T, n);
          const MhcCoefs<float> cr = mhc_coefs_view(cbr.data(), T, n);
          mhc_coefficients_forward(d, s.params(), X.data(), T, cd);
          mhc_coefficients_forward(d, pf, Xf.data(), T, cf);
          mhc_coefficients_forward_ref(d, pf, Xf.data(), T, cr);
          // Coefficients: r, projections, gates, H_res (float math on float inputs vs float64).
          double sc;
          for (size_t k = 0; k < ncb; ++k) {
            EXPECT_NEAR(cbf[k], cbr[k], 2e-5 * (1 + std::fabs(cbr[k]))) << "coef " << k;
            EXPECT_NEAR(cbf[k], cbd[k], 2e-5 * (1 + std::fabs(cbd[k]))) << "coef " << k;
            worst_coef = std::max(worst_coef, std::fabs(cbf[k] - cbd[k]) / (1 + std::fabs(cbd[k])));
          }
          // Pre-aggregate and post merge (with the float64 coefficients cast, so only the kernel
          // differs), the in-place merge too.
          std::vector<float> hpre(cd.h_pre, cd.h_pre + T * n), hpost(cd.h_post, cd.h_post + T * n),
              hres(cd.h_res, cd.h_res + T * n * n);
          const std::vector<double> hpre_d(hpre.begin(), hpre.end()),
              hpost_d(hpost.begin(), hpost.end()), hres_d(hres.begin(), hres.end());
          std::vector<double> ud(size_t(T * C)), od(X.size());
          std::vector<float> uf(ud.size()), ur(ud.size()), of(X.size()), orr(X.size());
          mhc_pre_aggregate(d, X.data(), hpre_d.data(), T, ud.data());
          mhc_pre_aggregate(d, Xf.data(), hpre.data(), T, uf.data());
          mhc_pre_aggregate_ref(d, Xf.data(), hpre.data(), T, ur.data());
          EXPECT_LE(max_abs_diff(uf.data(), ud.data(), ud.size(), &sc), 1e-5 * (1 + sc));
          EXPECT_LE(max_abs_diff(ur.data(), ud.data(), ud.size(), &sc), 1e-5 * (1 + sc));
          mhc_post_merge(d, X.data(), hres_d.data(), hpost_d.data(), Fv.data(), T, od.data());
          mhc_post_merge(d, Xf.data(), hres.data(), hpost.data(), Ff.data(), T, of.data());
          mhc_post_merge_ref(d, Xf.data(), hres.data(), hpost.data(), Ff.data(), T, orr.data());
          EXPECT_LE(max_abs_diff(of.data(), od.data(), od.size(), &sc), 1e-5 * (1 + sc));
          EXPECT_LE(max_abs_diff(orr.data(), od.data(), od.size(), &sc), 1e-5 * (1 + sc));
          std::vector<float> inplace = Xf;
          mhc_post_merge(d, inplace.data(), hres.data(), hpost.data(), Ff.data(), T,
                         inplace.data());
          EXPECT_EQ(inplace, of);
          // Post merge backward (accumulating onto nonzero starts).
          const std::vector<double> start = normal(size_t(T * n * C), 1.0, 99);
          std::vector<double> gXd(start.begin(), start.end()), gHd(size_t(T * n * n), 1.0),
              gpd(size_t(T * n), 1.0), gFd(size_t(T * C), 1.0);
          std::vector<float> gXf = to_f(gXd), gHf = to_f(gHd), gpf = to_f(gpd), gFf = to_f(gFd);
          std::vector<float> gXr = gXf, gHr = gHf, gpr = gpf, gFr = gFf;
          mhc_post_merge_backward(d, X.data(), hres_d.data(), hpost_d.data(), Fv.data(), G.data(),
                                  T, gXd.data(), gHd.data(), gpd.data(), gFd.data());
          mhc_post_merge_backward(d, Xf.data(), hres.data(), hpost.data(), Ff.data(), Gf.data(), T,
                                  gXf.data(), gHf.data(), gpf.data(), gFf.data());
          mhc_post_merge_backward_ref(d, Xf.data(), hres.data(), hpost.data(), Ff.data(), Gf.data(),
                                      T, gXr.data(), gHr.data(), gpr.data(), gFr.data());
          for (auto [f, r] : {std::pair{&gXf, &gXr}, {&gHf, &gHr}, {&gpf, &gpr}, {&gFf, &gFr}})
            for (size_t k = 0; k < f->size(); ++k)
              EXPECT_NEAR((*f)[k], (*r)[k], 1e-5 * (1 + std::fabs((*r)[k])) * std::sqrt(double(C)));
          EXPECT_LE(max_abs_diff(gXf.data(), gXd.data(), gXd.size(), &sc), 1e-5 * (1 + sc));
          EXPECT_LE(max_abs_diff(gHf.data(), gHd.data(), gHd.size(), &sc), 1e-5 * (1 + sc));
          EXPECT_LE(max_abs_diff(gpf.data(), gpd.data(), gpd.size(), &sc), 1e-5 * (1 + sc));
          EXPECT_LE(max_abs_diff(gFf.data(), gFd.data(), gFd.size(), &sc), 1e-5 * (1 + sc));
          // Pre-aggregate backward.
          const std::vector<double> gu = normal(size_t(T * C), 1.0, 123);
          const std::vector<float> guf = to_f(gu);
          std::vector<double> gX2d(start), ghd(size_t(T * n), 0.5);
          std::vector<float> gX2f = to_f(gX2d), ghf = to_f(ghd);
          mhc_pre_aggregate_backward(d, X.data(), hpre_d.data(), gu.data(), T, gX2d.data(),
                                     ghd.data());
          mhc_pre_aggregate_backward(d, Xf.data(), hpre.data(), guf.data(), T, gX2f.data(),
                                     ghf.data());
          EXPECT_LE(max_abs_diff(gX2f.data(), gX2d.data(), gX2d.size(), &sc), 1e-5 * (1 + sc));
          EXPECT_LE(max_abs_diff(ghf.data(), ghd.data(), ghd.size(), &sc), 1e-5 * (1 + sc));
          // Coefficient backward: float (gemm_f32) and float ref against float64, from the same
          // upstream gradients, on the float coefficients cast (so the kernels are compared, not
          // the float rounding of the forward).
          const std::vector<double> ghp = normal(size_t(T * n), 1.0, 201),
                                    ghq = normal(size_t(T * n), 1.0, 202),
                                    ghr = normal(size_t(T * n * n), 1.0, 203);
          const std::vector<float> ghpf = to_f(ghp), ghqf = to_f(ghq), ghrf = to_f(ghr);
          std::vector<double> cb2(cbf.begin(), cbf.end());
          const MhcCoefs<double> c2 = mhc_coefs_view(cb2.data(), T, n);
          const std::vector<double> phi2(phif.begin(), phif.end()),
              bias2(biasf.begin(), biasf.end()), alpha2(alphaf.begin(), alphaf.end()),
              X2(Xf.begin(), Xf.end());
          std::vector<double> bXd(start), bphid(phi2.size(), 0.25), bbd(bias2.size(), 0.5),
              bad(3, 1.0);
          mhc_coefficients_backward(d, MhcParams<double>{phi2.data(), bias2.data(), alpha2.data()},
                                    X2.data(), c2, ghp.data(), ghq.data(), ghr.data(), T,
                                    bXd.data(),
                                    MhcGrads<double>{bphid.data(), bbd.data(), bad.data()});
          for (int ref = 0; ref < 2; ++ref) {
            std::vector<float> bXf = to_f(start), bphif(phi2.size(), 0.25f),
                               bbf(bias2.size(), 0.5f), baf(3, 1.0f);
            const MhcGrads<float> gf{bphif.data(), bbf.data(), baf.data()};
            if (ref)
              mhc_coefficients_backward_ref(d, pf, Xf.data(), cf, ghpf.data(), ghqf.data(),
                                            ghrf.data(), T, bXf.data(), gf);
            else
              mhc_coefficients_backward(d, pf, Xf.data(), cf, ghpf.data(), ghqf.data(), ghrf.data(),
                                        T, bXf.data(), gf);
            // Float rounding through 40 Sinkhorn steps and the projection: measured <= 3e-6.
            const double tol = 2e-5;
            const double ex = max_abs_diff(bXf.data(), bXd.data(), bXd.size(), &sc);
            EXPECT_LE(ex, tol * (1 + sc)) << "ref " << ref;
            worst_bwd = std::max(worst_bwd, ex / (1 + sc));
            worst_bwd = std::max(
                worst_bwd, max_abs_diff(bphif.data(), bphid.data(), bphid.size(), &sc) / (1 + sc));
            worst_bwd = std::max(worst_bwd,
                                 max_abs_diff(bbf.data(), bbd.data(), bbd.size(), &sc) / (1 + sc));
            worst_bwd =
                std::max(worst_bwd, max_abs_diff(baf.data(), bad.data(), 3, &sc) / (1 + sc));
            EXPECT_LE(max_abs_diff(bphif.data(), bphid.data(), bphid.size(), &sc), tol * (1 + sc))
                << "ref " << ref;
            EXPECT_LE(max_abs_diff(bbf.data(), bbd.data(), bbd.size(), &sc), tol * (1 + sc))
                << "ref " << ref;
            EXPECT_LE(max_abs_diff(baf.data(), bad.data(), 3, &sc), tol * (1 + sc))
                << "ref " << ref;
          }
        }
  std::printf("  float vs float64: coefficients max rel. error %.2e, coefficient backward %.2e\n",
              worst_coef, worst_bwd);
}

// The one-pass site backward (mhc_site_backward_streams: AVX2 for mHC) against its definition,
// the composition of the three backward functions (float64, and the float scalar _ref), on odd
// shapes, token counts that are not multiples of the 8-token groups, and a batch large enough to
// split over threads. Starting values of the outputs: g_X and g_h_pre garbage (overwritten), the
// parameter gradients nonzero (accumulated).
TEST(MhcKernels, FusedSiteBackwardMatchesComposition) {
  double worst = 0;
  struct Shape {
    int64_t n, C, T;
  };
  std::vector<Shape> shapes;
  for (int64_t n : {1, 2, 3, 4, 5, 9})
    for (int64_t C : {1, 7, 37, 100})
      for (int64_t T : {1, 5, 8, 9, 21}) shapes.push_back({n, C, T});
  shapes.push_back({4, 256, 67});
  shapes.push_back({3, 61, 300});
  for (HcMode mode : {HcMode::Mhc, HcMode::Hc})
    for (const Shape& sh : shapes) {
      const int64_t n = sh.n, C = sh.C, T = sh.T;
      SCOPED_TRACE("mode " + std::to_string(int(mode)) + " n " + std::to_string(n) + " C " +
                   std::to_string(C) + " T " + std::to_string(T));
      Site s = make_site(mode, n, C, T, 17 * n + 3 * C + T);
      const MhcDims& d = s.d;
      const std::vector<float> Xf = to_f(normal(size_t(T * n * C), 1.0, 41 + n + C + T)),
                               Gf = to_f(normal(size_t(T * n * C), 1.0, 42 + n + C + T)),
                               guf = to_f(normal(size_t(T * C), 1.0, 43 + n + C + T)),
                               ghqf = to_f(normal(size_t(T * n), 1.0, 44 + n + C + T)),
                               ghrf = to_f(normal(size_t(T * n * n), 1.0, 45 + n + C + T));
      const std::vector<float> phif = to_f(s.phi), biasf = to_f(s.bias), alphaf = to_f(s.alpha);
      const MhcParams<float> pf{phif.data(), biasf.data(), alphaf.data()};
      std::vector<float> cbf(size_t(mhc_coefs_size(T, n)));
      const MhcCoefs<float> cf = mhc_coefs_view(cbf.data(), T, n);
      mhc_coefficients_forward(d, pf, Xf.data(), T, cf);
      // Float64 on the same (float) inputs and coefficients.
      const auto up = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
      std::vector<double> cbd = up(cbf);
      const MhcCoefs<double> cd = mhc_coefs_view(cbd.data(), T, n);
      const std::vector<double> Xd = up(Xf), Gd = up(Gf), gud = up(guf), ghqd = up(ghqf),
                                ghrd = up(ghrf), phid = up(phif), biasd = up(biasf),
                                alphad = up(alphaf);
      std::vector<double> gXd(Xd.size(), 7.0), ghpd(size_t(T * n), 7.0),
          bphid(phid.size(), 0.25), bbd(biasd.size(), 0.5), bad(3, 1.0);
      mhc_site_backward_streams(d, MhcParams<double>{phid.data(), biasd.data(), alphad.data()},
                                Xd.data(), cd, Gd.data(), gud.data(), ghqd.data(), ghrd.data(), T,
                                ghpd.data(), gXd.data(),
                                MhcGrads<double>{bphid.data(), bbd.data(), bad.data()});
      for (int ref = 0; ref < 2; ++ref) {
        std::vector<float> gX(Xf.size(), 7.0f), ghp(size_t(T * n), 7.0f),
            bphi(phif.size(), 0.25f), bb(biasf.size(), 0.5f), ba(3, 1.0f);
        const MhcGrads<float> gf{bphi.data(), bb.data(), ba.data()};
        if (ref)
          mhc_site_backward_streams_ref(d, pf, Xf.data(), cf, Gf.data(), guf.data(), ghqf.data(),
                                        ghrf.data(), T, ghp.data(), gX.data(), gf);
        else
          mhc_site_backward_streams(d, pf, Xf.data(), cf, Gf.data(), guf.data(), ghqf.data(),
                                    ghrf.data(), T, ghp.data(), gX.data(), gf);
        const double tol = 2e-5;  // as the coefficient backward test above
        double sc;
        for (auto [f, dd] : {std::pair{&gX, &gXd}, {&ghp, &ghpd}, {&bphi, &bphid}, {&bb, &bbd},
                             {&ba, &bad}}) {
          const double e = max_abs_diff(f->data(), dd->data(), dd->size(), &sc);
          EXPECT_LE(e, tol * (1 + sc)) << "ref " << ref;
          worst = std::max(worst, e / (1 + sc));
        }
      }
    }
  std::printf("  one-pass site backward vs float64 composition: max rel. error %.2e\n", worst);
}

// mhc_site_backward_fused (g_h_res from its own dots, the RMS term in phase 2, and the next
// site's merge-backward head from the finished g_X) against the float64 composition: the merge
// backward's g_h_res, the three backward functions, then the head as mhc_post_merge_backward's g_F
// and g_h_post; with and without the head, and with the head's outputs aliasing g_u and g_h_post
// (how the trainer calls it). Outputs start as garbage (overwritten) or nonzero (accumulated).
TEST(MhcKernels, FusedSiteBackwardWithDotsAndHeadMatchesComposition) {
  double worst = 0;
  struct Shape {
    int64_t n, C, T;
  };
  std::vector<Shape> shapes;
  for (int64_t n : {1, 2, 3, 4, 5, 9})
    for (int64_t C : {1, 7, 37, 100})
      for (int64_t T : {1, 5, 8, 9, 21}) shapes.push_back({n, C, T});
  shapes.push_back({4, 256, 67});
  shapes.push_back({3, 61, 300});
  for (HcMode mode : {HcMode::Mhc, HcMode::Hc})
    for (const Shape& sh : shapes) {
      const int64_t n = sh.n, C = sh.C, T = sh.T;
      SCOPED_TRACE("mode " + std::to_string(int(mode)) + " n " + std::to_string(n) + " C " +
                   std::to_string(C) + " T " + std::to_string(T));
      Site s = make_site(mode, n, C, T, 19 * n + 5 * C + T);
      const MhcDims& d = s.d;
      const uint64_t sd = 61 + n + C + T;
      const std::vector<float> Xf = to_f(normal(size_t(T * n * C), 1.0, sd)),
                               Gf = to_f(normal(size_t(T * n * C), 1.0, sd + 1)),
                               guf = to_f(normal(size_t(T * C), 1.0, sd + 2)),
                               ghqf = to_f(normal(size_t(T * n), 1.0, sd + 3)),
                               Fnf = to_f(normal(size_t(T * C), 1.0, sd + 4)),
                               hpnf = to_f(uniform(size_t(T * n), 0.2, 1.8, sd + 5));
      const std::vector<float> phif = to_f(s.phi), biasf = to_f(s.bias), alphaf = to_f(s.alpha);
      const MhcParams<float> pf{phif.data(), biasf.data(), alphaf.data()};
      std::vector<float> cbf(size_t(mhc_coefs_size(T, n)));
      const MhcCoefs<float> cf = mhc_coefs_view(cbf.data(), T, n);
      mhc_coefficients_forward(d, pf, Xf.data(), T, cf);
      const auto up = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
      std::vector<double> cbd = up(cbf);
      const MhcCoefs<double> cd = mhc_coefs_view(cbd.data(), T, n);
      const std::vector<double> Xd = up(Xf), Gd = up(Gf), gud = up(guf), ghqd = up(ghqf),
                                phid = up(phif), biasd = up(biasf), alphad = up(alphaf),
                                Fnd = up(Fnf), hpnd = up(hpnf);
      // The float64 composition, spelled out with the separate functions.
      std::vector<double> ghrd(size_t(T * n * n), 0.0), gXd(Xd.size(), 7.0), ghpd(size_t(T * n), 7.0),
          bphid(phid.size(), 0.25), bbd(biasd.size(), 0.5), bad(3, 1.0), gFd(size_t(T * C), 0.0),
          ghpnd(size_t(T * n), 0.0);
      mhc_post_merge_backward(d, Xd.data(), cd.h_res, cd.h_post, Xd.data(), Gd.data(), T,
                              static_cast<double*>(nullptr), ghrd.data(),
                              static_cast<double*>(nullptr), static_cast<double*>(nullptr));
      mhc_site_backward_streams(d, MhcParams<double>{phid.data(), biasd.data(), alphad.data()},
                                Xd.data(), cd, Gd.data(), gud.data(), ghqd.data(), ghrd.data(), T,
                                ghpd.data(), gXd.data(),
                                MhcGrads<double>{bphid.data(), bbd.data(), bad.data()});
      mhc_post_merge_backward(d, Xd.data(), cd.h_res, hpnd.data(), Fnd.data(), gXd.data(), T,
                              static_cast<double*>(nullptr), static_cast<double*>(nullptr),
                              ghpnd.data(), gFd.data());
      for (int variant = 0; variant < 4; ++variant) {  // 0, 1: AVX2 / _ref with head; 2: no head;
        const bool ref = variant == 1, head = variant != 2, alias = variant == 3;  // 3: aliased
        std::vector<float> gX(Xf.size(), 7.0f), ghp(size_t(T * n), 7.0f),
            bphi(phif.size(), 0.25f), bb(biasf.size(), 0.5f), ba(3, 1.0f),
            gF(size_t(T * C), -3.0f), ghpn(size_t(T * n), -3.0f), gu = guf, ghq = ghqf;
        const MhcGrads<float> gf{bphi.data(), bb.data(), ba.data()};
        MhcMergeHead<float> nh{Fnf.data(), hpnf.data(), alias ? gu.data() : gF.data(),
                               alias ? ghq.data() : ghpn.data()};
        const MhcMergeHead<float>* np = head ? &nh : nullptr;
        if (ref)
          mhc_site_backward_fused_ref(d, pf, Xf.data(), cf, Gf.data(), gu.data(), ghq.data(), T,
                                      ghp.data(), gX.data(), gf, np);
        else
          mhc_site_backward_fused(d, pf, Xf.data(), cf, Gf.data(), gu.data(), ghq.data(), T,
                                  ghp.data(), gX.data(), gf, np);
        const double tol = 2e-5;  // as the coefficient backward test above
        double sc;
        std::vector<std::pair<const std::vector<float>*, const std::vector<double>*>> cmp = {
            {&gX, &gXd}, {&ghp, &ghpd}, {&bphi, &bphid}, {&bb, &bbd}, {&ba, &bad}};
        if (head) {
          cmp.push_back({alias ? &gu : &gF, &gFd});
          cmp.push_back({alias ? &ghq : &ghpn, &ghpnd});
        } else {  // untouched without a head
          EXPECT_EQ(gF, std::vector<float>(size_t(T * C), -3.0f));
          EXPECT_EQ(ghpn, std::vector<float>(size_t(T * n), -3.0f));
        }
        for (auto [f, dd] : cmp) {
          const double e = max_abs_diff(f->data(), dd->data(), dd->size(), &sc);
          EXPECT_LE(e, tol * (1 + sc)) << "variant " << variant;
          worst = std::max(worst, e / (1 + sc));
        }
      }
    }
  std::printf("  fused site backward (dots + head) vs float64 composition: max rel. error %.2e\n",
              worst);
}

// A single token (the decode step) takes other code paths than a batch (phi rows split over the
// threads; for n <= 4 a one-token Sinkhorn on row vectors): the coefficients of each token alone
// must be bit for bit those it gets inside a batch of 8 (the 8-lane path).
TEST(MhcKernels, SingleTokenEqualsBatchBitForBit) {
  for (int64_t n : {1, 2, 3, 4, 5})
    for (int64_t C : {7, 256}) {
      SCOPED_TRACE("n " + std::to_string(n) + " C " + std::to_string(C));
      const int64_t T = 8;
      Site s = make_site(HcMode::Mhc, n, C, T, 900 + n + C);
      // make_site's logits are of scale ~5, so Sinkhorn has work to do.
      const std::vector<float> X = to_f(normal(size_t(T * n * C), 1.0, 77 + n));
      const std::vector<float> phi = to_f(s.phi), bias = to_f(s.bias), alpha = to_f(s.alpha);
      const MhcParams<float> p{phi.data(), bias.data(), alpha.data()};
      std::vector<float> cb(size_t(mhc_coefs_size(T, n)));
      const MhcCoefs<float> c = mhc_coefs_view(cb.data(), T, n);
      mhc_coefficients_forward(s.d, p, X.data(), T, c);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<float> c1b(size_t(mhc_coefs_size(1, n)));
        const MhcCoefs<float> c1 = mhc_coefs_view(c1b.data(), 1, n);
        mhc_coefficients_forward(s.d, p, X.data() + t * n * C, 1, c1);
        for (int64_t k = 0; k < n * n; ++k) {
          ASSERT_TRUE(std::isfinite(c1.h_res[k])) << t;
          ASSERT_EQ(c1.h_res[k], c.h_res[t * n * n + k]) << t;
        }
        for (int64_t k = 0; k < n; ++k) {
          ASSERT_EQ(c1.h_pre[k], c.h_pre[t * n + k]) << t;
          ASSERT_EQ(c1.h_post[k], c.h_post[t * n + k]) << t;
        }
      }
    }
}

// Sizes where the kernels split tokens over threads: same results as the scalar references.
TEST(MhcKernels, LargeBatchMatchesRef) {
  const int64_t T = 67, n = 4, C = 256;
  Site s = make_site(HcMode::Mhc, n, C, T, 4242);
  const MhcDims& d = s.d;
  const std::vector<float> X = to_f(normal(size_t(T * n * C), 1.0, 1)),
                           Fv = to_f(normal(size_t(T * C), 1.0, 2)),
                           G = to_f(normal(size_t(T * n * C), 1.0, 3));
  const std::vector<float> phi = to_f(s.phi), bias = to_f(s.bias), alpha = to_f(s.alpha);
  const MhcParams<float> p{phi.data(), bias.data(), alpha.data()};
  std::vector<float> cb(size_t(mhc_coefs_size(T, n))), cbr(cb.size());
  const MhcCoefs<float> c = mhc_coefs_view(cb.data(), T, n), cr = mhc_coefs_view(cbr.data(), T, n);
  mhc_coefficients_forward(d, p, X.data(), T, c);
  mhc_coefficients_forward_ref(d, p, X.data(), T, cr);
  for (size_t k = 0; k < cb.size(); ++k)
    ASSERT_NEAR(cb[k], cbr[k], 2e-5 * (1 + std::fabs(cbr[k]))) << k;
  std::vector<float> o(X.size()), orr(X.size());
  mhc_post_merge(d, X.data(), c.h_res, c.h_post, Fv.data(), T, o.data());
  mhc_post_merge_ref(d, X.data(), c.h_res, c.h_post, Fv.data(), T, orr.data());
  for (size_t k = 0; k < o.size(); ++k) ASSERT_NEAR(o[k], orr[k], 1e-5 * (1 + std::fabs(orr[k])));
  std::vector<float> gX(X.size(), 0.0f), gH(size_t(T * n * n), 0.0f), gp(size_t(T * n), 0.0f),
      gF(size_t(T * C), 0.0f);
  std::vector<float> gXr = gX, gHr = gH, gpr = gp, gFr = gF;
  mhc_post_merge_backward(d, X.data(), c.h_res, c.h_post, Fv.data(), G.data(), T, gX.data(),
                          gH.data(), gp.data(), gF.data());
  mhc_post_merge_backward_ref(d, X.data(), c.h_res, c.h_post, Fv.data(), G.data(), T, gXr.data(),
                              gHr.data(), gpr.data(), gFr.data());
  for (auto [f, r] : {std::pair{&gX, &gXr}, {&gH, &gHr}, {&gp, &gpr}, {&gF, &gFr}})
    for (size_t k = 0; k < f->size(); ++k)
      ASSERT_NEAR((*f)[k], (*r)[k], 2e-5 * (1 + std::fabs((*r)[k])) * std::sqrt(double(C)));
  std::vector<float> bX(X.size(), 0.0f), bphi(phi.size(), 0.0f), bb(bias.size(), 0.0f), ba(3, 0.0f);
  std::vector<float> bXr = bX, bphir = bphi, bbr = bb, bar = ba;
  mhc_coefficients_backward(d, p, X.data(), c, gp.data(), gp.data(), gH.data(), T, bX.data(),
                            MhcGrads<float>{bphi.data(), bb.data(), ba.data()});
  mhc_coefficients_backward_ref(d, p, X.data(), c, gp.data(), gp.data(), gH.data(), T, bXr.data(),
                                MhcGrads<float>{bphir.data(), bbr.data(), bar.data()});
  for (auto [f, r] : {std::pair{&bX, &bXr}, {&bphi, &bphir}, {&bb, &bbr}, {&ba, &bar}}) {
    double sc = 0;
    for (float v : *r) sc = std::max(sc, double(std::fabs(v)));
    for (size_t k = 0; k < f->size(); ++k) ASSERT_NEAR((*f)[k], (*r)[k], 2e-5 * (1 + sc));
  }
}

// Expand and collapse split their tokens over the threads at training sizes (here 300 tokens of
// n·C = 1029 floats): every token's copies and sums as the definition gives them, in every
// stream order the sum uses (the accumulate variant adds to what is there).
TEST(MhcKernels, ExpandCollapseLargeBatch) {
  const int64_t T = 300, n = 3, C = 343;
  const std::vector<float> e = to_f(normal(size_t(T * C), 1.0, 31)),
                           X = to_f(normal(size_t(T * n * C), 1.0, 32));
  std::vector<float> Xe(size_t(T * n * C), -1.0f);
  mhc_expand(e.data(), T, n, C, Xe.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < C; ++c)
        ASSERT_EQ(Xe[size_t((t * n + j) * C + c)], e[size_t(t * C + c)]) << t << " " << j;
  std::vector<float> y(size_t(T * C), 5.0f), ya(size_t(T * C), 0.5f);
  mhc_collapse(X.data(), T, n, C, y.data());
  mhc_collapse(X.data(), T, n, C, ya.data(), true);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) {
      float s = 0.0f, sa = 0.5f;
      for (int64_t j = 0; j < n; ++j) {
        s += X[size_t((t * n + j) * C + c)];
        sa += X[size_t((t * n + j) * C + c)];
      }
      ASSERT_EQ(y[size_t(t * C + c)], s) << t << " " << c;
      ASSERT_EQ(ya[size_t(t * C + c)], sa) << t << " " << c;
    }
}

// ---- Amax gain
// -------------------------------------------------------------------------------------

TEST(MhcGain, SingleMatrix) {
  const double A[4] = {1, -2, 3, 4};  // rows (1, -2), (3, 4)
  const HresGain g = hres_gain(A, 2);
  EXPECT_DOUBLE_EQ(g.forward, 7);      // |3| + |4|
  EXPECT_DOUBLE_EQ(g.backward, 6);     // |-2| + |4|
  EXPECT_DOUBLE_EQ(g.min_col_sum, 2);  // -2 + 4
  EXPECT_DOUBLE_EQ(g.max_abs_log_col, std::log(4.0));
}

TEST(MhcGain, ProfileComposesFromTheTop) {
  const int64_t L = 5, T = 3, n = 3;
  const std::vector<double> Hd = uniform(size_t(L * T * n * n), -1, 1, 42);
  const std::vector<float> H = to_f(Hd);
  std::vector<HresGain> single(L), comp(L), single_m(L), comp_m(L);
  hres_gain_profile(H.data(), L, T, n, false, single.data(), comp.data());
  hres_gain_profile(H.data(), L, T, n, true, single_m.data(), comp_m.data());
  auto mat = [&](int64_t l, int64_t t) {
    std::vector<double> m(size_t(n * n));
    for (int64_t k = 0; k < n * n; ++k) m[size_t(k)] = double(H[size_t((l * T + t) * n * n + k)]);
    return m;
  };
  auto mul = [&](const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> c(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < n; ++k)
        for (int64_t j = 0; j < n; ++j)
          c[size_t(i * n + j)] += a[size_t(i * n + k)] * b[size_t(k * n + j)];
    return c;
  };
  for (int64_t l = 0; l < L; ++l) {
    double fs = 0, bs = 0, fc = 0, bc = 0;
    std::vector<double> avg(size_t(n * n), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      // A_l = H_{L-1}·…·H_l, multiplied left to right here.
      std::vector<double> A = mat(L - 1, t);
      for (int64_t m = L - 2; m >= l; --m) A = mul(A, mat(m, t));
      fc += hres_gain(A.data(), n).forward / T;
      bc += hres_gain(A.data(), n).backward / T;
      fs += hres_gain(mat(l, t).data(), n).forward / T;
      bs += hres_gain(mat(l, t).data(), n).backward / T;
    }
    EXPECT_NEAR(comp[size_t(l)].forward, fc, 1e-12);
    EXPECT_NEAR(comp[size_t(l)].backward, bc, 1e-12);
    EXPECT_NEAR(single[size_t(l)].forward, fs, 1e-12);
    EXPECT_NEAR(single[size_t(l)].backward, bs, 1e-12);
    // Matrix-averaged mode: the composite of the token-mean matrices.
    auto mean = [&](int64_t ll) {
      std::vector<double> m(size_t(n * n), 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const auto x = mat(ll, t);
        for (size_t k = 0; k < m.size(); ++k) m[k] += x[k] / T;
      }
      return m;
    };
    std::vector<double> A = mean(L - 1);
    for (int64_t m = L - 2; m >= l; --m) A = mul(A, mean(m));
    EXPECT_NEAR(comp_m[size_t(l)].forward, hres_gain(A.data(), n).forward, 1e-12);
    EXPECT_NEAR(comp_m[size_t(l)].backward, hres_gain(A.data(), n).backward, 1e-12);
  }
}

// mHC's hard check (spec §10): forward gain 1 per layer and per composite, from the rows.
TEST(MhcGain, MhcForwardGainIsOne) {
  const int64_t L = 24, T = 4, n = 4;
  std::vector<float> H(size_t(L * T * n * n));
  for (int64_t m = 0; m < L * T; ++m) {
    const std::vector<float> Z = to_f(uniform(size_t(n * n), -5, 5, 500 + m));
    sinkhorn_forward(Z.data(), H.data() + m * n * n, n, 20);
  }
  std::vector<HresGain> single(L), comp(L);
  hres_gain_profile(H.data(), L, T, n, false, single.data(), comp.data());
  double worst_bwd = 0;
  for (int64_t l = 0; l < L; ++l) {
    EXPECT_NEAR(single[size_t(l)].forward, 1.0, 1e-6);
    EXPECT_NEAR(comp[size_t(l)].forward, 1.0, 1e-6);
    worst_bwd = std::max(worst_bwd, comp[size_t(l)].backward);
  }
  EXPECT_GE(worst_bwd, 1.0);  // columns are only approximately 1: the backward gain shows it
  std::printf("  24 layers, logits in [-5, 5]: max composite backward gain %.4f\n", worst_bwd);
}

// ---- User errors
// -----------------------------------------------------------------------------------

TEST(MhcErrors, BadDimsThrowOneLine) {
  MhcDims d;
  d.C = 8;
  std::vector<float> buf(4096), X(4096);
  const MhcCoefs<float> co = mhc_coefs_view(buf.data(), 1, 4);
  const MhcParams<float> p{buf.data(), buf.data(), buf.data()};
  for (int64_t n : {0, 17}) {
    d.n = n;
    try {
      mhc_coefficients_forward(d, p, X.data(), 1, co);
      FAIL() << "n = " << n << " accepted";
    } catch (const qwen::Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("n = " + std::to_string(n)), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos);
    }
  }
  d.n = 4;
  d.iters = 0;
  EXPECT_THROW(mhc_coefficients_forward(d, p, X.data(), 1, co), qwen::Error);
  d.iters = 20;
  d.C = 0;
  EXPECT_THROW(mhc_post_merge(d, X.data(), X.data(), X.data(), X.data(), 1, buf.data()),
               qwen::Error);
}

// The fused input side of a site (mhc_site_in: coefficients + pre-aggregation per group of 8
// tokens) and the fused merge + next site's input side (mhc_site_merge_in, also in place) give
// bit for bit what the separate calls give, in both modes, for token counts around the group
// size and the decode sizes, and in float64.
TEST(MhcKernels, FusedSiteInEqualsSeparateCallsBitForBit) {
  for (HcMode mode : {HcMode::Mhc, HcMode::Hc})
    for (int64_t n : {1, 3, 4, 5})
      for (int64_t C : {7, 72})
        for (int64_t T : {1, 4, 5, 8, 13, 67}) {
          SCOPED_TRACE("mode " + std::to_string(int(mode)) + " n " + std::to_string(n) + " C " +
                       std::to_string(C) + " T " + std::to_string(T));
          Site a = make_site(mode, n, C, T, 31 + n + C + T);
          Site b = make_site(mode, n, C, T, 57 + n + C + T);
          const MhcDims& d = a.d;
          const std::vector<float> X = to_f(normal(size_t(T * n * C), 1.0, 5 + T)),
                                   Fv = to_f(normal(size_t(T * C), 1.0, 6 + T));
          const std::vector<float> pa = to_f(a.phi), ba = to_f(a.bias), aa = to_f(a.alpha);
          const std::vector<float> pb = to_f(b.phi), bb = to_f(b.bias), ab = to_f(b.alpha);
          const MhcParams<float> P1{pa.data(), ba.data(), aa.data()}, P2{pb.data(), bb.data(), ab.data()};
          const size_t cs = size_t(mhc_coefs_size(T, n));
          // Separate calls.
          std::vector<float> c1(cs), c2(cs), u1(size_t(T * C)), u2(size_t(T * C)), Xm(X.size());
          const MhcCoefs<float> v1 = mhc_coefs_view(c1.data(), T, n), v2 = mhc_coefs_view(c2.data(), T, n);
          mhc_coefficients_forward(d, P1, X.data(), T, v1);
          mhc_pre_aggregate(d, X.data(), v1.h_pre, T, u1.data());
          mhc_post_merge(d, X.data(), v1.h_res, v1.h_post, Fv.data(), T, Xm.data());
          mhc_coefficients_forward(d, P2, Xm.data(), T, v2);
          mhc_pre_aggregate(d, Xm.data(), v2.h_pre, T, u2.data());
          // Fused: out of place, then in place.
          std::vector<float> f1(cs, -7.0f), f2(cs, -7.0f), w1(u1.size(), -7.0f), w2(u2.size(), -7.0f),
              Xf(X.size(), -7.0f);
          const MhcCoefs<float> g1 = mhc_coefs_view(f1.data(), T, n), g2 = mhc_coefs_view(f2.data(), T, n);
          mhc_site_in(d, P1, X.data(), T, g1, w1.data());
          mhc_site_merge_in(d, X.data(), g1, Fv.data(), T, Xf.data(), P2, g2, w2.data());
          for (size_t k = 0; k < cs; ++k) {
            ASSERT_EQ(f1[k], c1[k]) << k;
            ASSERT_EQ(f2[k], c2[k]) << k;
          }
          for (size_t k = 0; k < u1.size(); ++k) {
            ASSERT_EQ(w1[k], u1[k]) << k;
            ASSERT_EQ(w2[k], u2[k]) << k;
          }
          for (size_t k = 0; k < X.size(); ++k) ASSERT_EQ(Xf[k], Xm[k]) << k;
          std::vector<float> Xi = X, f3(cs, -7.0f), w3(u2.size(), -7.0f);
          const MhcCoefs<float> g3 = mhc_coefs_view(f3.data(), T, n);
          mhc_site_merge_in(d, Xi.data(), g1, Fv.data(), T, Xi.data(), P2, g3, w3.data());
          for (size_t k = 0; k < X.size(); ++k) ASSERT_EQ(Xi[k], Xm[k]) << k;
          for (size_t k = 0; k < cs; ++k) ASSERT_EQ(f3[k], c2[k]) << k;
          for (size_t k = 0; k < u2.size(); ++k) ASSERT_EQ(w3[k], u2[k]) << k;
          // float64: the scalar path, same composition.
          const std::vector<double> Xd = normal(size_t(T * n * C), 1.0, 5 + T);
          std::vector<double> cd(cs), ud(size_t(T * C)), ce(cs), ue(ud.size());
          const MhcParams<double> Pd{a.phi.data(), a.bias.data(), a.alpha.data()};
          mhc_coefficients_forward(d, Pd, Xd.data(), T, mhc_coefs_view(cd.data(), T, n));
          mhc_pre_aggregate(d, Xd.data(), mhc_coefs_view(cd.data(), T, n).h_pre, T, ud.data());
          mhc_site_in(d, Pd, Xd.data(), T, mhc_coefs_view(ce.data(), T, n), ue.data());
          ASSERT_EQ(cd, ce);
          ASSERT_EQ(ud, ue);
        }
}

// The F16 inference copy of phi (mhc_pack_phi_half; the decoder's projections read it):
// (1) every packed value is phi within 2^-11 relative (2^-25·scale absolute below F16's normal
//     range), the row scale is a power of two with max|row|/scale in [2^14, 2^15) (a floor of
//     2^-126 for rows under 2^-111), zero rows too;
// (2) the coefficients computed from the copy are bit for bit those of the F32 path on the
//     unpacked values (decode sizes, batches, fused site_in / merge_in), where AVX2 is; elsewhere
//     the copy is ignored and phi itself is read;
// (3) the projection differs from the F32 phi's by at most
//     (2^-11 + 2·(nC/8 + 4)·2^-24)·Σ_c |phi_kc·x_c| + 2^-25·scale_k·Σ_c |x_c|
//     (the F16 rounding of each value plus the f32 sums of both paths), per token and row.
TEST(MhcKernels, HalfPhiCopy) {
  // (1) Rows of very different magnitudes, a zero row, odd widths.
  for (int64_t C : {1, 7, 37, 256}) {
    const MhcDims d{2, C, 20, 1e-6, HcMode::Mhc};
    const int64_t rows = d.phi_rows(), cols = d.phi_cols();
    std::vector<float> phi = to_f(normal(size_t(rows * cols), 1.0, 11 + C));
    const float mags[] = {1e-30f, 1e-8f, 0.02f, 1.0f, 3e4f, 1e30f, 0.0f, 0.5f, 1e-36f};
    for (int64_t k = 0; k < rows; ++k)
      for (int64_t c = 0; c < cols; ++c) phi[size_t(k * cols + c)] *= mags[k % 9];
    std::vector<uint16_t> h(phi.size());
    std::vector<float> scale(static_cast<size_t>(rows)), back(phi.size());
    mhc_pack_phi_half(d, phi.data(), h.data(), scale.data());
    mhc_unpack_phi_half(d, h.data(), scale.data(), back.data());
    for (int64_t k = 0; k < rows; ++k) {
      double mx = 0;
      for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, std::fabs(double(phi[size_t(k * cols + c)])));
      int e = 0;
      ASSERT_EQ(std::frexp(double(scale[size_t(k)]), &e), 0.5) << k;  // a power of two
      if (mx > 0) {
        if (scale[size_t(k)] > std::ldexp(1.0f, -126)) {  // else the floor (rows under 2^-111)
          ASSERT_GE(mx / scale[size_t(k)], 16384.0) << k;
        }
        ASSERT_LT(mx / scale[size_t(k)], 32768.0) << k;
      } else {
        ASSERT_EQ(scale[size_t(k)], 1.0f);
      }
      for (int64_t c = 0; c < cols; ++c) {
        const double v = phi[size_t(k * cols + c)], b = back[size_t(k * cols + c)];
        ASSERT_LE(std::fabs(b - v), std::ldexp(std::fabs(v), -11) + std::ldexp(double(scale[size_t(k)]), -25))
            << k << " " << c;
      }
    }
  }
  // (2) and (3).
  double worst_ratio = 0;  // observed |Δm| / Σ|phi·x|
  for (int64_t n : {1, 2, 3, 4, 5})
    for (int64_t C : {7, 37, 256})
      for (int64_t T : {1, 2, 5, 8, 13}) {
        SCOPED_TRACE("n " + std::to_string(n) + " C " + std::to_string(C) + " T " + std::to_string(T));
        Site s = make_site(HcMode::Mhc, n, C, T, 700 + n + C + T);
        const MhcDims& d = s.d;
        const int64_t nc = n * C, K = d.K();
        const std::vector<float> X = to_f(normal(size_t(T * nc), 1.0, 90 + T)),
                                 Fv = to_f(normal(size_t(T * C), 1.0, 91 + T));
        const std::vector<float> phi = to_f(s.phi), bias = to_f(s.bias), alpha = to_f(s.alpha);
        std::vector<uint16_t> h(phi.size());
        std::vector<float> scale(static_cast<size_t>(K)), back(phi.size());
        mhc_pack_phi_half(d, phi.data(), h.data(), scale.data());
        mhc_unpack_phi_half(d, h.data(), scale.data(), back.data());
        MhcParams<float> ph{phi.data(), bias.data(), alpha.data()};
        ph.phi_half = h.data();
        ph.phi_half_scale = scale.data();
        const MhcParams<float> pf{phi.data(), bias.data(), alpha.data()};
        const MhcParams<float> pb{back.data(), bias.data(), alpha.data()};
        // Where the copy is read (AVX2), the F32 path on the unpacked values; elsewhere phi's.
        const MhcParams<float>& pe = qwen::cpu_features().avx2 ? pb : pf;
        const size_t cs = size_t(mhc_coefs_size(T, n));
        std::vector<float> a(cs), b(cs), f(cs), ua(size_t(T * C)), ub(ua.size());
        mhc_coefficients_forward(d, ph, X.data(), T, mhc_coefs_view(a.data(), T, n));
        mhc_coefficients_forward(d, pe, X.data(), T, mhc_coefs_view(b.data(), T, n));
        mhc_coefficients_forward(d, pf, X.data(), T, mhc_coefs_view(f.data(), T, n));
        for (size_t k = 0; k < cs; ++k) ASSERT_EQ(a[k], b[k]) << k;
        std::fill(a.begin(), a.end(), -7.0f);
        mhc_site_in(d, ph, X.data(), T, mhc_coefs_view(a.data(), T, n), ua.data());
        mhc_site_in(d, pe, X.data(), T, mhc_coefs_view(b.data(), T, n), ub.data());
        for (size_t k = 0; k < cs; ++k) ASSERT_EQ(a[k], b[k]) << k;
        for (size_t k = 0; k < ua.size(); ++k) ASSERT_EQ(ua[k], ub[k]) << k;
        {  // the merge + next site's input side (training's call; the copy must be honoured too)
          std::vector<float> Xa(X.size()), Xb(X.size()), na(cs), nb(cs);
          const MhcCoefs<float> prev = mhc_coefs_view(f.data(), T, n);
          mhc_site_merge_in(d, X.data(), prev, Fv.data(), T, Xa.data(), ph,
                            mhc_coefs_view(na.data(), T, n), ua.data());
          mhc_site_merge_in(d, X.data(), prev, Fv.data(), T, Xb.data(), pe,
                            mhc_coefs_view(nb.data(), T, n), ub.data());
          for (size_t k = 0; k < cs; ++k) ASSERT_EQ(na[k], nb[k]) << k;
        }
        // (3) the projection against F32 phi's.
        const MhcCoefs<float> ca = mhc_coefs_view(a.data(), T, n), cf = mhc_coefs_view(f.data(), T, n);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t k = 0; k < K; ++k) {
            double sa = 0, sx = 0;
            for (int64_t c = 0; c < nc; ++c) {
              sa += std::fabs(double(phi[size_t(k * nc + c)]) * X[size_t(t * nc + c)]);
              sx += std::fabs(double(X[size_t(t * nc + c)]));
            }
            const double dm = std::fabs(double(ca.proj[t * K + k]) - cf.proj[t * K + k]);
            const double bound = (std::ldexp(1.0, -11) + 2.0 * double(nc / 8 + 4) * std::ldexp(1.0, -24)) * sa +
                                 std::ldexp(double(scale[size_t(k)]), -25) * sx;
            ASSERT_LE(dm, bound) << t << " " << k;
            if (sa > 0) worst_ratio = std::max(worst_ratio, dm / sa);
          }
      }
  std::printf("F16 phi copy: worst |m_half - m_f32| / sum|phi*x| = %.2e (bound's first term 2^-11 = %.2e)\n",
              worst_ratio, std::ldexp(1.0, -11));
}
