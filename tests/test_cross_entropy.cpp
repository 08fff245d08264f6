// tests/test_cross_entropy.cpp — the fused lm_head + cross-entropy (ops/cross_entropy.h).
// The loss and both gradients are checked against a double-precision forward written here
// (central finite differences for dh and dW), the fused path against cross_entropy_ref on odd
// shapes under many blockings (row blocks and vocabulary chunks with tails, gathered rows around
// ignored targets, the kept-tile and the recomputing passes), plus the contract: "+=" into
// gradients, ignored and all-ignored rows, frozen head, bad targets, non-finite inputs,
// determinism. Tolerances come from f32 rounding bounds (γₙ ≈ n·u, u = 2⁻²⁴).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/cross_entropy.h"
#include "qwen/error.h"

namespace {

constexpr double kU = 1.0 / 16777216.0;  // f32 unit roundoff
constexpr int32_t kIgnore = -100;

using qwen::ops::CrossEntropyPlan;

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

std::vector<float> randn(int64_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, stddev);
  std::vector<float> v(sz(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

// Targets in [0, V), every `ignore_every`-th row (and row 1) ignored when ignore_every > 0.
std::vector<int32_t> make_targets(int64_t N, int64_t V, uint32_t seed, int ignore_every) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(sz(N));
  for (int64_t i = 0; i < N; ++i) {
    t[sz(i)] = int32_t(rng() % uint32_t(V));
    if (ignore_every > 0 && (i % ignore_every == ignore_every - 1 || i == 1)) t[sz(i)] = kIgnore;
  }
  return t;
}

struct Problem {
  int64_t N, C, V;
  std::vector<float> h, W;
  std::vector<int32_t> t;
};

Problem make_problem(int64_t N, int64_t C, int64_t V, uint32_t seed, int ignore_every,
                     float scale = 1.0f) {
  Problem p{N, C, V, randn(N * C, seed, scale), randn(V * C, seed + 1, 1.0f / std::sqrt(float(C))),
            make_targets(N, V, seed + 2, ignore_every)};
  return p;
}

// Σ over counted rows of lse − logit[t], all in double, with h and W given as doubles.
double loss_double(const std::vector<double>& h, const std::vector<double>& W,
                   const std::vector<int32_t>& t, int64_t N, int64_t C, int64_t V) {
  double total = 0.0;
  std::vector<double> l(sz(V));
  for (int64_t i = 0; i < N; ++i) {
    if (t[sz(i)] < 0) continue;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t v = 0; v < V; ++v) {
      double a = 0.0;
      for (int64_t c = 0; c < C; ++c) a += h[sz(i * C + c)] * W[sz(v * C + c)];
      l[sz(v)] = a;
      m = std::max(m, a);
    }
    double s = 0.0;
    for (double a : l) s += std::exp(a - m);
    total += m + std::log(s) - l[sz(t[sz(i)])];
  }
  return total;
}

// Error bounds for the fused f32 results against exact values: each logit is a C-term f32 dot
// product, off by at most ε_i = γ_C·max_v Σ_c|h_ic·W_vc|; lse and the target logit then move
// by ≤ ε_i each, and the f32 exp / sums add a few u. Softmax entries are off by a relative
// 2ε_i + 16u, so G = s·(p − onehot) entries are within that of s·(p + onehot). The gradient
// products add γ_K of Σ|G||·| (K = V for dh, K = counted rows for dW).
struct Bounds {
  double loss = 0.0;
  std::vector<double> dh, dW;
};

Bounds fused_bounds(const Problem& p, float grad_scale, const std::vector<float>& dh0,
                    const std::vector<float>& dW0) {
  const int64_t N = p.N, C = p.C, V = p.V;
  Bounds b;
  b.dh.assign(sz(N * C), 0.0);
  b.dW.assign(sz(V * C), 0.0);
  int64_t n_cnt = 0;
  for (int32_t t : p.t) n_cnt += t >= 0;
  const double gC = (double(C) + 2) * kU, gV = (double(V) + 2) * kU, gN = (double(n_cnt) + 2) * kU;
  std::vector<double> l(sz(V)), mag(sz(V));
  for (int64_t i = 0; i < N; ++i) {
    const int32_t t = p.t[sz(i)];
    if (t < 0) continue;
    double mmax = 0.0, m = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      double a = 0.0, am = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        a += double(p.h[sz(i * C + c)]) * p.W[sz(v * C + c)];
        am += std::fabs(double(p.h[sz(i * C + c)]) * p.W[sz(v * C + c)]);
      }
      l[sz(v)] = a;
      mmax = std::max(mmax, am);
      m = std::max(m, a);
    }
    double s = 0.0;
    for (double a : l) s += std::exp(a - m);
    const double lse = m + std::log(s), eps = gC * mmax;
    b.loss += 2 * eps + 16 * kU * (std::fabs(lse) + std::fabs(l[sz(t)]) + 1.0);
    const double rel = 2 * eps + 16 * kU;
    for (int64_t v = 0; v < V; ++v) {
      const double gmag = std::fabs(grad_scale) * (std::exp(l[sz(v)] - lse) + (v == t ? 1.0 : 0.0));
      for (int64_t c = 0; c < C; ++c) {
        b.dh[sz(i * C + c)] += (rel + gV) * gmag * std::fabs(p.W[sz(v * C + c)]);
        b.dW[sz(v * C + c)] += (rel + gN) * gmag * std::fabs(p.h[sz(i * C + c)]);
      }
    }
  }
  // The prefilled value takes part in every partial sum added into it (one per vocabulary chunk
  // for dh, one per row block for dW): γ_K of its magnitude too.
  for (size_t k = 0; k < b.dh.size(); ++k) b.dh[k] += gV * std::fabs(dh0[k]);
  for (size_t k = 0; k < b.dW.size(); ++k) b.dW[k] += gN * std::fabs(dW0[k]);
  return b;
}

void expect_within(const std::vector<float>& got, const std::vector<double>& want,
                   const std::vector<double>& bound, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(double(got[i]) - want[i]) <= bound[i])) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i]
                    << " (allowed " << bound[i] << ")";
      return;
    }
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

using CeFn = std::function<double(const float*, const float*, const int32_t*, int64_t, int64_t,
                                  int64_t, float, float*, float*, int64_t*)>;

// Loss, dh and dW of `fn` against the double forward and central finite differences
// (step 1e-3 on O(1) inputs: truncation ~1e-7·F''' and rounding ~1e-13, both far below the
// f32 bounds).
void check_against_finite_differences(const CeFn& fn, const std::string& name) {
  SCOPED_TRACE(name);
  const Problem p = make_problem(6, 5, 11, 7, 4);  // rows 1 and 3 ignored
  int64_t n_cnt = -1;
  const float gs = 0.25f;
  const auto dh0 = randn(p.N * p.C, 8), dW0 = randn(p.V * p.C, 9);
  std::vector<float> dh = dh0, dW = dW0;
  const double loss = fn(p.h.data(), p.W.data(), p.t.data(), p.N, p.C, p.V, gs, dh.data(), dW.data(),
                         &n_cnt);
  EXPECT_EQ(n_cnt, 4);
  const auto hd = to_double(p.h), Wd = to_double(p.W);
  const Bounds b = fused_bounds(p, gs, dh0, dW0);
  EXPECT_NEAR(loss, loss_double(hd, Wd, p.t, p.N, p.C, p.V), b.loss);
  const double step = 1e-3;
  std::vector<double> want_dh(dh0.size()), want_dW(dW0.size());
  std::vector<double> q = hd;
  for (size_t k = 0; k < q.size(); ++k) {
    q[k] = hd[k] + step;
    const double fp = loss_double(q, Wd, p.t, p.N, p.C, p.V);
    q[k] = hd[k] - step;
    const double fm = loss_double(q, Wd, p.t, p.N, p.C, p.V);
    q[k] = hd[k];
    want_dh[k] = dh0[k] + gs * (fp - fm) / (2 * step);
  }
  q = Wd;
  for (size_t k = 0; k < q.size(); ++k) {
    q[k] = Wd[k] + step;
    const double fp = loss_double(hd, q, p.t, p.N, p.C, p.V);
    q[k] = Wd[k] - step;
    const double fm = loss_double(hd, q, p.t, p.N, p.C, p.V);
    q[k] = Wd[k];
    want_dW[k] = dW0[k] + gs * (fp - fm) / (2 * step);
  }
  std::vector<double> bdh = b.dh, bdW = b.dW;
  for (auto& x : bdh) x += 1e-8;  // finite-difference error
  for (auto& x : bdW) x += 1e-8;
  expect_within(dh, want_dh, bdh, "dh");
  expect_within(dW, want_dW, bdW, "dW");
  // Ignored rows' dh is untouched, bit for bit.
  for (int64_t i : {1, 3})
    for (int64_t c = 0; c < p.C; ++c) EXPECT_EQ(dh[sz(i * p.C + c)], dh0[sz(i * p.C + c)]);
}

TEST(CrossEntropy, RefMatchesFiniteDifferences) {
  check_against_finite_differences(qwen::ops::cross_entropy_ref, "ref");
}

TEST(CrossEntropy, FusedMatchesFiniteDifferences) {
  check_against_finite_differences(qwen::ops::cross_entropy_fused, "fused auto");
  for (CrossEntropyPlan plan : {CrossEntropyPlan{1, 1}, CrossEntropyPlan{2, 3}, CrossEntropyPlan{3, 100}}) {
    check_against_finite_differences(
        [plan](const float* h, const float* W, const int32_t* t, int64_t N, int64_t C, int64_t V,
               float gs, float* dh, float* dW, int64_t* n) {
          return qwen::ops::cross_entropy_fused_plan(plan, h, W, t, N, C, V, gs, dh, dW, n);
        },
        "plan " + std::to_string(plan.row_block) + "x" + std::to_string(plan.vocab_chunk));
  }
}

// Fused vs the double reference on odd shapes and blockings; both accumulate into the same
// random prefill. The bounds are those of the fused f32 path (the reference is ~exact).
// The automatic plan runs on all op threads; the ~150 other blockings on one thread, since each
// is hundreds of tiny GEMMs whose OpenMP fork/join dominates on a loaded 2-core machine (the
// threaded paths are covered by the automatic plan here and by the tests below).
TEST(CrossEntropy, FusedMatchesRefOnOddShapesAndPlans) {
  const int saved_threads = qwen::num_threads();
  struct Shape { int64_t N, C, V; int ignore_every; float scale; };
  for (const Shape s : {Shape{1, 1, 1, 0, 1.0f}, Shape{1, 3, 2, 0, 1.0f}, Shape{7, 13, 37, 3, 1.0f},
                        Shape{67, 33, 1001, 5, 3.0f}, Shape{130, 70, 515, 0, 1.0f},
                        Shape{41, 129, 300, 2, 8.0f}}) {
    const Problem p = make_problem(s.N, s.C, s.V, uint32_t(s.N * 131 + s.V), s.ignore_every, s.scale);
    int64_t n_cnt = 0;
    for (int32_t t : p.t) n_cnt += t >= 0;
    const float gs = 1.0f / float(std::max<int64_t>(n_cnt, 1));
    const auto dh0 = randn(s.N * s.C, 17), dW0 = randn(s.V * s.C, 18);
    std::vector<float> dh_ref = dh0, dW_ref = dW0;
    int64_t n_ref = -1;
    const double loss_ref = qwen::ops::cross_entropy_ref(p.h.data(), p.W.data(), p.t.data(), s.N,
                                                         s.C, s.V, gs, dh_ref.data(),
                                                         dW_ref.data(), &n_ref);
    EXPECT_EQ(n_ref, n_cnt);
    const Bounds b = fused_bounds(p, gs, dh0, dW0);
    std::vector<CrossEntropyPlan> plans = {qwen::ops::cross_entropy_plan(s.N, s.C, s.V)};
    for (int64_t rb : {1, 3, 16, 64, 256})
      for (int64_t vc : {int64_t(1), int64_t(7), int64_t(64), int64_t(333), s.V, 4 * s.V})
        if ((rb > 1 || s.N <= 67) && (vc > 1 || s.V <= 37))  // tiny blocks only on small shapes
          plans.push_back({rb, vc});
    for (const CrossEntropyPlan& plan : plans) {
      SCOPED_TRACE("N " + std::to_string(s.N) + " C " + std::to_string(s.C) + " V " +
                   std::to_string(s.V) + " plan " + std::to_string(plan.row_block) + "x" +
                   std::to_string(plan.vocab_chunk));
      std::vector<float> dh = dh0, dW = dW0;
      int64_t n = -1;
      qwen::set_num_threads(&plan == &plans[0] ? saved_threads : 1);
      const double loss = qwen::ops::cross_entropy_fused_plan(plan, p.h.data(), p.W.data(),
                                                              p.t.data(), s.N, s.C, s.V, gs,
                                                              dh.data(), dW.data(), &n);
      qwen::set_num_threads(saved_threads);
      EXPECT_EQ(n, n_cnt);
      EXPECT_NEAR(loss, loss_ref, b.loss);
      expect_within(dh, to_double(dh_ref), b.dh, "dh");
      expect_within(dW, to_double(dW_ref), b.dW, "dW");
    }
  }
}

// A vocabulary above the kept-tile limit (V > 65536) takes the recomputing plan automatically.
TEST(CrossEntropy, LargeVocabularyAutoPlanMatchesRef) {
  const Problem p = make_problem(70, 8, 70001, 5, 6, 2.0f);
  const CrossEntropyPlan plan = qwen::ops::cross_entropy_plan(p.N, p.C, p.V);
  EXPECT_LT(plan.vocab_chunk, p.V);
  EXPECT_LE(qwen::ops::cross_entropy_scratch_bytes(plan, p.C, p.V), size_t(16) << 20);
  const float gs = 1.0f / 57;
  const std::vector<float> dh0(sz(p.N * p.C), 0.0f), dW0(sz(p.V * p.C), 0.0f);
  std::vector<float> dh = dh0, dW = dW0, dh_ref = dh0, dW_ref = dW0;
  const double loss = qwen::ops::cross_entropy_fused(p.h.data(), p.W.data(), p.t.data(), p.N, p.C,
                                                     p.V, gs, dh.data(), dW.data(), nullptr);
  const double loss_ref = qwen::ops::cross_entropy_ref(p.h.data(), p.W.data(), p.t.data(), p.N,
                                                       p.C, p.V, gs, dh_ref.data(), dW_ref.data(),
                                                       nullptr);
  const Bounds b = fused_bounds(p, gs, dh0, dW0);
  EXPECT_NEAR(loss, loss_ref, b.loss);
  expect_within(dh, to_double(dh_ref), b.dh, "dh");
  expect_within(dW, to_double(dW_ref), b.dW, "dW");
}

TEST(CrossEntropy, LossOnlyAndFrozenHeadGiveTheSameLoss) {
  const Problem p = make_problem(50, 24, 777, 3, 7);
  std::vector<float> dh(sz(p.N * p.C), 0.0f), dW(sz(p.V * p.C), 0.0f), dh2 = dh;
  int64_t n1 = 0, n2 = 0, n3 = 0;
  const double a = qwen::ops::cross_entropy_fused(p.h.data(), p.W.data(), p.t.data(), p.N, p.C,
                                                  p.V, 0.1f, dh.data(), dW.data(), &n1);
  const double b = qwen::ops::cross_entropy_fused(p.h.data(), p.W.data(), p.t.data(), p.N, p.C,
                                                  p.V, 0.1f, nullptr, nullptr, &n2);
  const double c = qwen::ops::cross_entropy_fused(p.h.data(), p.W.data(), p.t.data(), p.N, p.C,
                                                  p.V, 0.1f, dh2.data(), nullptr, &n3);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_EQ(n1, n2);
  EXPECT_EQ(n1, n3);
  EXPECT_EQ(dh, dh2);  // dh does not depend on whether dW is wanted
}

TEST(CrossEntropy, AllIgnoredRowsChangeNothing) {
  const int64_t N = 9, C = 6, V = 20;
  const auto h = randn(N * C, 1), W = randn(V * C, 2);
  const std::vector<int32_t> t(sz(N), kIgnore);
  const auto dh0 = randn(N * C, 3), dW0 = randn(V * C, 4);
  for (bool ref : {false, true}) {
    std::vector<float> dh = dh0, dW = dW0;
    int64_t n = -1;
    const double loss = (ref ? qwen::ops::cross_entropy_ref : qwen::ops::cross_entropy_fused)(
        h.data(), W.data(), t.data(), N, C, V, 1.0f, dh.data(), dW.data(), &n);
    EXPECT_EQ(loss, 0.0);
    EXPECT_EQ(n, 0);
    EXPECT_EQ(dh, dh0);
    EXPECT_EQ(dW, dW0);
  }
}

TEST(CrossEntropy, TargetOutsideVocabularyThrows) {
  const int64_t N = 4, C = 3, V = 10;
  const auto h = randn(N * C, 1), W = randn(V * C, 2);
  const std::vector<int32_t> t = {1, -1, 10, 2};
  std::vector<float> dh(sz(N * C), 0.0f), dW(sz(V * C), 0.0f);
  try {
    qwen::ops::cross_entropy_fused(h.data(), W.data(), t.data(), N, C, V, 1.0f, dh.data(),
                                   dW.data(), nullptr);
    ADD_FAILURE() << "no throw";
  } catch (const qwen::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("10"), std::string::npos) << m;
    EXPECT_NE(m.find("row 2"), std::string::npos) << m;
  }
  EXPECT_EQ(dh, std::vector<float>(sz(N * C), 0.0f));
  EXPECT_THROW(qwen::ops::cross_entropy_ref(h.data(), W.data(), t.data(), N, C, V, 1.0f, nullptr,
                                            nullptr, nullptr),
               qwen::Error);
}

// NaN or inf in the inputs gives a non-finite loss, not a crash; other rows stay finite in dh.
TEST(CrossEntropy, NonFiniteInputsDoNotCrash) {
  const int64_t N = 40, C = 16, V = 300;
  auto h = randn(N * C, 1), W = randn(V * C, 2);
  const auto t = make_targets(N, V, 3, 0);
  for (CrossEntropyPlan plan : {CrossEntropyPlan{8, 64}, CrossEntropyPlan{64, 1000}}) {
    auto h1 = h;
    h1[sz(5 * C + 3)] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> dh(sz(N * C), 0.0f), dW(sz(V * C), 0.0f);
    double loss = qwen::ops::cross_entropy_fused_plan(plan, h1.data(), W.data(), t.data(), N, C, V,
                                                      1.0f, dh.data(), dW.data(), nullptr);
    EXPECT_TRUE(std::isnan(loss));
    for (int64_t c = 0; c < C; ++c) EXPECT_TRUE(std::isfinite(dh[sz(7 * C + c)]));
    auto W1 = W;
    W1[sz(17 * C)] = std::numeric_limits<float>::infinity();
    loss = qwen::ops::cross_entropy_fused_plan(plan, h.data(), W1.data(), t.data(), N, C, V, 1.0f,
                                               dh.data(), dW.data(), nullptr);
    EXPECT_FALSE(std::isfinite(loss));
  }
}

TEST(CrossEntropy, DeterministicAcrossCalls) {
  const Problem p = make_problem(150, 40, 1100, 11, 9);
  std::vector<float> dh1(sz(p.N * p.C), 0.0f), dW1(sz(p.V * p.C), 0.0f), dh2 = dh1, dW2 = dW1;
  for (CrossEntropyPlan plan : {qwen::ops::cross_entropy_plan(p.N, p.C, p.V), CrossEntropyPlan{64, 512}}) {
    std::fill(dh1.begin(), dh1.end(), 0.0f);
    std::fill(dW1.begin(), dW1.end(), 0.0f);
    std::fill(dh2.begin(), dh2.end(), 0.0f);
    std::fill(dW2.begin(), dW2.end(), 0.0f);
    const double a = qwen::ops::cross_entropy_fused_plan(plan, p.h.data(), p.W.data(), p.t.data(),
                                                         p.N, p.C, p.V, 0.01f, dh1.data(),
                                                         dW1.data(), nullptr);
    const double b = qwen::ops::cross_entropy_fused_plan(plan, p.h.data(), p.W.data(), p.t.data(),
                                                         p.N, p.C, p.V, 0.01f, dh2.data(),
                                                         dW2.data(), nullptr);
    EXPECT_EQ(a, b);
    EXPECT_EQ(dh1, dh2);
    EXPECT_EQ(dW1, dW2);
  }
}

}  // namespace
