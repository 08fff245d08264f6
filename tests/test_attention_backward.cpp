// tests/test_attention_backward.cpp — the attention training backward: the flash version (its
// public dispatching entry and each kernel set, portable and AVX2) against the naive reference
// on random odd shapes (T 1 .. 130, GQA ratios 1 / 2 / 4 and 3, D 8 .. 64 and odd D,
// kv_stride > KV·D), the accumulate (+=) contract, a central finite-difference check of the
// reference against a double-precision attention forward written here, thread-count agreement
// and bitwise run-to-run determinism, the inner AVX2 kernels against their portable twins, and
// the shape errors. K/V padding columns and 3 rows past the last position hold NaN, and dk / dv
// padding columns hold a sentinel, so a read or write outside the contract shows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/attention.h"
#include "ops/attention_backward.h"
#include "ops/attention_kernels.h"
#include "qwen/error.h"

namespace {

using qwen::ops::AttnShape;
using qwen::ops::detail::AttnBwdIsa;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kSentinel = 12345.0f;
inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

// One training step's attention inputs: q (T, H, D), k / v rows (T + 3, kv_stride) with NaN in
// the padding columns and the 3 extra rows, dout (T, H, D), and out / lse from flash_attention.
struct Problem {
  AttnShape s;
  int64_t kv_stride = 0;
  std::vector<float> q, k, v, dout, out, lse;
};

Problem make_problem(int64_t T, int64_t H, int64_t KV, int64_t D, int64_t pad, uint32_t seed) {
  Problem p;
  p.s = AttnShape{T, 0, H, KV, D, 1.0f / std::sqrt(float(D))};
  p.kv_stride = KV * D + pad;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  p.q.resize(sz(T * H * D));
  for (auto& x : p.q) x = 1.5f * nd(rng);  // a little sharper than N(0,1): peakier softmax rows
  p.k.assign(sz((T + 3) * p.kv_stride), kNaN);
  p.v.assign(sz((T + 3) * p.kv_stride), kNaN);
  for (int64_t j = 0; j < T; ++j)
    for (int64_t c = 0; c < KV * D; ++c) {
      p.k[sz(j * p.kv_stride + c)] = 1.5f * nd(rng);
      p.v[sz(j * p.kv_stride + c)] = nd(rng);
    }
  p.dout.resize(sz(T * H * D));
  for (auto& x : p.dout) x = nd(rng);
  p.out.assign(sz(T * H * D), kNaN);
  p.lse.assign(sz(H * T), kNaN);
  qwen::ops::flash_attention(p.q.data(), p.k.data(), p.v.data(), p.kv_stride, p.out.data(), p.s,
                             p.lse.data());
  return p;
}

struct Grads {
  std::vector<float> dq, dk, dv;
};

// Gradient buffers filled with `fill` (kv padding columns with the sentinel).
Grads make_grads(const Problem& p, float fill) {
  Grads g;
  g.dq.assign(p.q.size(), fill);
  g.dk.assign(sz(p.s.T * p.kv_stride), kSentinel);
  g.dv.assign(sz(p.s.T * p.kv_stride), kSentinel);
  for (int64_t j = 0; j < p.s.T; ++j)
    for (int64_t c = 0; c < p.s.KV * p.s.D; ++c)
      g.dk[sz(j * p.kv_stride + c)] = g.dv[sz(j * p.kv_stride + c)] = fill;
  return g;
}

Grads make_random_grads(const Problem& p, uint32_t seed) {
  Grads g = make_grads(p, 0.0f);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& x : g.dq) x = nd(rng);
  for (int64_t j = 0; j < p.s.T; ++j)
    for (int64_t c = 0; c < p.s.KV * p.s.D; ++c) {
      g.dk[sz(j * p.kv_stride + c)] = nd(rng);
      g.dv[sz(j * p.kv_stride + c)] = nd(rng);
    }
  return g;
}

enum class Impl { ref, flash, flash_portable, flash_avx2 };

void run(Impl impl, const Problem& p, Grads& g) {
  const float* args[] = {p.q.data(), p.k.data(), p.v.data()};
  switch (impl) {
    case Impl::ref:
      qwen::ops::attention_backward_ref(args[0], args[1], args[2], p.kv_stride, p.out.data(),
                                        p.dout.data(), p.lse.data(), g.dq.data(), g.dk.data(),
                                        g.dv.data(), p.s);
      break;
    case Impl::flash:
      qwen::ops::flash_attention_backward(args[0], args[1], args[2], p.kv_stride, p.out.data(),
                                          p.dout.data(), p.lse.data(), g.dq.data(), g.dk.data(),
                                          g.dv.data(), p.s);
      break;
    case Impl::flash_portable:
    case Impl::flash_avx2:
      qwen::ops::detail::flash_attention_backward_with(
          impl == Impl::flash_avx2 ? AttnBwdIsa::avx2 : AttnBwdIsa::portable, args[0], args[1],
          args[2], p.kv_stride, p.out.data(), p.dout.data(), p.lse.data(), g.dq.data(),
          g.dk.data(), g.dv.data(), p.s);
      break;
  }
}

// max |a − b| / (1 + max |b|) over one tensor's live entries (b the reference).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (b[i] == kSentinel) continue;
    const double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= num)) num = d;  // NaN propagates
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / (1.0 + den);
}

// The dk / dv padding columns still hold the sentinel (nothing was written there).
void expect_padding_untouched(const Problem& p, const Grads& g) {
  for (int64_t j = 0; j < p.s.T; ++j)
    for (int64_t c = p.s.KV * p.s.D; c < p.kv_stride; ++c) {
      ASSERT_EQ(g.dk[sz(j * p.kv_stride + c)], kSentinel) << "dk padding row " << j;
      ASSERT_EQ(g.dv[sz(j * p.kv_stride + c)], kSentinel) << "dv padding row " << j;
    }
}

// Flash (every kernel set and the public entry), started from random dq / dk / dv, must equal
// that start plus the reference's gradients. Both are f32 with different summation orders and
// exp implementations (P from lse vs a fresh softmax, D from out vs Σ P·dP); the largest
// measured difference over these shapes is 1.7e-6 of the tensor's scale.
constexpr double kTol = 1e-5;

void check(const Problem& p, const std::string& what) {
  SCOPED_TRACE(what);
  Grads ref = make_grads(p, 0.0f);
  run(Impl::ref, p, ref);
  const Grads start = make_random_grads(p, 7);
  Grads want = start;
  for (size_t i = 0; i < want.dq.size(); ++i) want.dq[i] += ref.dq[i];
  for (size_t i = 0; i < want.dk.size(); ++i)
    if (want.dk[i] != kSentinel) {
      want.dk[i] += ref.dk[i];
      want.dv[i] += ref.dv[i];
    }
  std::vector<Impl> impls{Impl::flash, Impl::flash_portable};
  if (qwen::cpu_features().avx2) impls.push_back(Impl::flash_avx2);
  for (Impl impl : impls) {
    SCOPED_TRACE("impl " + std::to_string(int(impl)));
    Grads got = start;
    run(impl, p, got);
    expect_padding_untouched(p, got);
    // The accumulated values are compared on the gradients' own scale.
    Grads diff = got;
    for (size_t i = 0; i < diff.dq.size(); ++i) diff.dq[i] -= start.dq[i];
    for (size_t i = 0; i < diff.dk.size(); ++i)
      if (diff.dk[i] != kSentinel) {
        diff.dk[i] -= start.dk[i];
        diff.dv[i] -= start.dv[i];
      }
    EXPECT_LE(rel_err(diff.dq, ref.dq), kTol) << "dq";
    EXPECT_LE(rel_err(diff.dk, ref.dk), kTol) << "dk";
    EXPECT_LE(rel_err(diff.dv, ref.dv), kTol) << "dv";
    // And the sum really is start + gradient (not overwritten): exact up to one rounding.
    EXPECT_LE(rel_err(got.dq, want.dq), kTol) << "dq accumulated";
    EXPECT_LE(rel_err(got.dk, want.dk), kTol) << "dk accumulated";
    EXPECT_LE(rel_err(got.dv, want.dv), kTol) << "dv accumulated";
  }
}

class Threads : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = qwen::num_threads(); }
  void TearDown() override { qwen::set_num_threads(saved_); }
  int saved_ = 1;
};

using AttentionBackward = Threads;

TEST_F(AttentionBackward, FlashMatchesReferenceOddShapes) {
  const int64_t Ts[] = {1, 7, 67, 130};
  const int64_t Ds[] = {8, 24, 32, 64};
  const int64_t HKV[][2] = {{2, 2}, {4, 2}, {8, 2}};  // GQA ratios 1, 2, 4
  uint32_t seed = 1;
  for (int64_t T : Ts)
    for (int64_t D : Ds)
      for (auto hk : HKV) {
        const int64_t pad = seed % 2 ? 5 : 0;
        check(make_problem(T, hk[0], hk[1], D, pad, seed++),
              "T=" + std::to_string(T) + " D=" + std::to_string(D) + " H=" +
                  std::to_string(hk[0]) + " KV=" + std::to_string(hk[1]));
      }
}

TEST_F(AttentionBackward, FlashMatchesReferenceMoreShapes) {
  // G = 3 (query blocks of 16 tokens = 48 rows), G = 12 (blocks of 4 tokens), D = 80 and 13,
  // T = 200 (several key blocks, a ragged last one); items of 4 key tiles (many kv heads: T = 300
  // gives items of tiles 0-3 and 4, T = 200 one item of 4 tiles per kv head); 2 and 3 threads.
  const int64_t cases[][4] = {{200, 12, 4, 64}, {129, 12, 1, 13}, {65, 6, 2, 80},
                              {64, 3, 3, 40},   {300, 16, 8, 16}, {200, 16, 16, 8}};
  uint32_t seed = 500;
  for (int n_threads : {2, 3}) {
    qwen::set_num_threads(n_threads);
    for (auto c : cases)
      check(make_problem(c[0], c[1], c[2], c[3], 3, seed++),
            "T=" + std::to_string(c[0]) + " H=" + std::to_string(c[1]) + " KV=" +
                std::to_string(c[2]) + " D=" + std::to_string(c[3]) +
                " threads=" + std::to_string(n_threads));
  }
}

// ---- finite differences of a double-precision forward against the reference -------------------

// out (T, H, D) of causal GQA attention in double (from float inputs widened, perturbed entries
// given as doubles).
void forward_double(const AttnShape& s, int64_t kv_stride, const std::vector<double>& q,
                    const std::vector<double>& k, const std::vector<double>& v,
                    std::vector<double>& out) {
  const int64_t G = s.H / s.KV;
  out.assign(sz(s.T * s.H * s.D), 0.0);
  std::vector<double> sc(sz(s.T));
  for (int64_t t = 0; t < s.T; ++t)
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t g = h / G;
      double mx = -1e300;
      for (int64_t j = 0; j <= t; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < s.D; ++d)
          dot += q[sz((t * s.H + h) * s.D + d)] * k[sz(j * kv_stride + g * s.D + d)];
        sc[sz(j)] = dot * double(s.scale);
        mx = std::max(mx, sc[sz(j)]);
      }
      double sum = 0;
      for (int64_t j = 0; j <= t; ++j) sum += (sc[sz(j)] = std::exp(sc[sz(j)] - mx));
      for (int64_t j = 0; j <= t; ++j)
        for (int64_t d = 0; d < s.D; ++d)
          out[sz((t * s.H + h) * s.D + d)] +=
              sc[sz(j)] / sum * v[sz(j * kv_stride + g * s.D + d)];
    }
}

TEST(AttentionBackwardReference, MatchesFiniteDifferences) {
  // loss = Σ out ∘ R, so dout = R. Central differences with step 1e-4 in double: truncation
  // ~1e-8·|f'''|, rounding ~1e-16/1e-4 — below the f32 reference's own error (measured at most
  // 2.3e-7 of the gradient scale here), so the tolerance is that of f32 arithmetic.
  const int64_t cases[][4] = {{7, 4, 2, 8}, {9, 4, 1, 6}, {5, 3, 3, 5}};
  uint32_t seed = 900;
  for (auto c : cases) {
    const int64_t T = c[0], H = c[1], KV = c[2], D = c[3];
    SCOPED_TRACE("T=" + std::to_string(T) + " H=" + std::to_string(H) +
                 " KV=" + std::to_string(KV) + " D=" + std::to_string(D));
    Problem p = make_problem(T, H, KV, D, 2, seed++);
    const AttnShape& s = p.s;
    Grads g = make_grads(p, 0.0f);
    run(Impl::ref, p, g);

    auto widen = [](const std::vector<float>& x) {
      std::vector<double> y(x.size());
      for (size_t i = 0; i < x.size(); ++i) y[i] = std::isnan(x[i]) ? 0.0 : double(x[i]);
      return y;
    };
    std::vector<double> q = widen(p.q), k = widen(p.k), v = widen(p.v), R = widen(p.dout), out;
    auto loss = [&]() {
      forward_double(s, p.kv_stride, q, k, v, out);
      double l = 0;
      for (size_t i = 0; i < out.size(); ++i) l += out[i] * R[i];
      return l;
    };
    const double h = 1e-4;
    auto fd = [&](std::vector<double>& x, size_t i) {
      const double x0 = x[i];
      x[i] = x0 + h;
      const double lp = loss();
      x[i] = x0 - h;
      const double lm = loss();
      x[i] = x0;
      return (lp - lm) / (2 * h);
    };
    double scale = 0;  // the gradients' scale, for a relative bound
    for (float x : g.dq) scale = std::max(scale, double(std::fabs(x)));
    double worst = 0;
    for (size_t i = 0; i < q.size(); ++i)
      worst = std::max(worst, std::fabs(fd(q, i) - double(g.dq[i])));
    for (int64_t j = 0; j < T; ++j)
      for (int64_t cc = 0; cc < KV * D; ++cc) {
        const size_t i = sz(j * p.kv_stride + cc);
        scale = std::max({scale, double(std::fabs(g.dk[i])), double(std::fabs(g.dv[i]))});
        worst = std::max(worst, std::fabs(fd(k, i) - double(g.dk[i])));
        worst = std::max(worst, std::fabs(fd(v, i) - double(g.dv[i])));
      }
    EXPECT_GT(scale, 0.1);  // a real signal to compare
    EXPECT_LE(worst / (1.0 + scale), 2e-6);
  }
}

// ---- threads ------------------------------------------------------------------------------------

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST_F(AttentionBackward, ThreadCountsAgreeAndRunsAreDeterministic) {
  const Problem p = make_problem(261, 12, 4, 32, 0, 4242);
  auto grads = [&](int n_threads) {
    qwen::set_num_threads(n_threads);
    Grads g = make_grads(p, 0.0f);
    run(Impl::flash, p, g);
    return g;
  };
  const Grads one = grads(1), two = grads(2), two_again = grads(2), three = grads(3),
              three_again = grads(3);
  // dk / dv have one writer per row whatever the thread count, so they agree exactly; dq sums
  // per-thread partials in double and rounds once, so it may differ by an ulp: within 1e-6
  // absolute (|x| < 1) or relative (|x| >= 1, where one ulp can exceed 1e-6).
  auto close = [](float a, float b) {
    return std::fabs(a - b) <= 1e-6f * std::max(1.0f, std::fabs(b));
  };
  for (const Grads* g : {&two, &three}) {
    for (size_t i = 0; i < one.dq.size(); ++i)
      ASSERT_TRUE(close(g->dq[i], one.dq[i]))
          << "dq " << i << ": " << g->dq[i] << " vs " << one.dq[i];
    EXPECT_TRUE(bitwise_equal(g->dk, one.dk));
    EXPECT_TRUE(bitwise_equal(g->dv, one.dv));
  }
  EXPECT_TRUE(bitwise_equal(two.dq, two_again.dq));
  EXPECT_TRUE(bitwise_equal(two.dk, two_again.dk));
  EXPECT_TRUE(bitwise_equal(two.dv, two_again.dv));
  EXPECT_TRUE(bitwise_equal(three.dq, three_again.dq));
  EXPECT_TRUE(bitwise_equal(three.dk, three_again.dk));
  EXPECT_TRUE(bitwise_equal(three.dv, three_again.dv));
}

// ---- inner kernels: AVX2 against portable ------------------------------------------------------

TEST(AttentionBackwardKernels, Avx2MatchesPortable) {
  if (!qwen::cpu_features().avx2) GTEST_SKIP() << "no AVX2 on this CPU: the AVX2 kernels under test would fault (SIGILL); "
                    "the portable kernels used here are checked by FlashMatchesReference* above";
  using qwen::ops::detail::kAttnBk;
  const auto& fast = qwen::ops::detail::attn_bwd_kernels_avx2();
  const auto& slow = qwen::ops::detail::attn_bwd_kernels_portable();
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> ui(-3, int(kAttnBk) + 3);
  for (int64_t M : {1, 3, 5, 48, 67}) {
    for (int64_t ncols : {1, 7, 8, 33, 64}) {
      SCOPED_TRACE("grad_tile M=" + std::to_string(M) + " ncols=" + std::to_string(ncols));
      std::vector<float> S(sz(M * kAttnBk)), dP(S.size()), lse2(sz(M)), Dv(sz(M));
      std::vector<int32_t> nv(sz(M));
      for (auto& x : S) x = 3.0f * nd(rng);
      for (auto& x : dP) x = nd(rng);
      for (auto& x : lse2) x = 4.0f + nd(rng);
      for (auto& x : Dv) x = nd(rng);
      for (auto& x : nv) x = ui(rng);
      // Columns past ncols are never touched; mark them to check.
      for (int64_t r = 0; r < M; ++r)
        for (int64_t j = ncols; j < kAttnBk; ++j)
          S[sz(r * kAttnBk + j)] = dP[sz(r * kAttnBk + j)] = kNaN;
      std::vector<float> S1 = S, dP1 = dP, S2 = S, dP2 = dP;
      slow.grad_tile(S1.data(), dP1.data(), M, ncols, nv.data(), lse2.data(), Dv.data());
      fast.grad_tile(S2.data(), dP2.data(), M, ncols, nv.data(), lse2.data(), Dv.data());
      for (int64_t r = 0; r < M; ++r)
        for (int64_t j = 0; j < ncols; ++j) {
          const size_t i = sz(r * kAttnBk + j);
          // exp2 polynomial vs std::exp2: relative 4e-7.
          ASSERT_NEAR(S2[i], S1[i], 1e-6 * std::fabs(S1[i]) + 1e-30) << r << "," << j;
          ASSERT_NEAR(dP2[i], dP1[i], 1e-6 * (std::fabs(dP1[i]) + std::fabs(S1[i])))
              << r << "," << j;
        }
    }
  }
  for (int64_t n : {1, 7, 8, 9, 77}) {
    SCOPED_TRACE("add_to_f64 n=" + std::to_string(n));
    std::vector<float> src(sz(n));
    std::vector<double> dst(sz(n) + 1, 0.0);
    for (auto& x : src) x = nd(rng);
    for (size_t i = 0; i < sz(n); ++i) dst[i] = double(nd(rng)) / 3.0;
    dst[sz(n)] = 99.0;  // past the end: untouched
    std::vector<double> d1 = dst, d2 = dst;
    slow.add_to_f64(d1.data(), src.data(), n);
    fast.add_to_f64(d2.data(), src.data(), n);
    EXPECT_EQ(0, std::memcmp(d1.data(), d2.data(), d2.size() * sizeof(double)));  // exact adds
    EXPECT_EQ(d2[sz(n)], 99.0);
  }
  for (int64_t M : {1, 5, 48, 64}) {
    for (int64_t nk : {1, 3, 6, 61, 64}) {
      for (int64_t D : {1, 7, 24, 40, 64, 67}) {
        SCOPED_TRACE("tn_acc M=" + std::to_string(M) + " nk=" + std::to_string(nk) +
                     " D=" + std::to_string(D));
        std::vector<float> A(sz(M * kAttnBk)), B(sz(M * D)), C(sz((kAttnBk + 1) * D), kSentinel);
        for (auto& x : A) x = nd(rng);
        for (auto& x : B) x = nd(rng);
        for (int64_t i = 0; i < nk * D; ++i) C[sz(i)] = nd(rng);
        for (int64_t r = 0; r < M; ++r)  // columns past nk are not read
          for (int64_t j = nk; j < kAttnBk; ++j) A[sz(r * kAttnBk + j)] = kNaN;
        std::vector<float> C1 = C, C2 = C;
        slow.tn_acc(A.data(), M, nk, B.data(), D, C1.data());
        fast.tn_acc(A.data(), M, nk, B.data(), D, C2.data());
        for (size_t i = 0; i < C.size(); ++i) {
          if (int64_t(i) >= nk * D) {
            ASSERT_EQ(C2[i], kSentinel) << "wrote past row nk at " << i;
            continue;
          }
          // Same M products in the same order, fused or not: each side's rounding error is at
          // most M·2^-24·(|C0| + Σ|a·b|), so they differ by at most twice that.
          const int64_t j = int64_t(i) / D, d = int64_t(i) % D;
          double mag = std::fabs(double(C[i]));
          for (int64_t r = 0; r < M; ++r)
            mag += std::fabs(double(A[sz(r * kAttnBk + j)]) * double(B[sz(r * D + d)]));
          ASSERT_NEAR(C2[i], C1[i], 2.0 * double(M + 1) * std::ldexp(1.0, -24) * mag) << i;
        }
      }
    }
  }
}

// ---- errors -------------------------------------------------------------------------------------

TEST(AttentionBackwardErrors, BadShapesThrow) {
  const Problem p = make_problem(5, 4, 2, 8, 0, 1);
  Grads g = make_grads(p, 0.0f);
  auto call = [&](AttnShape s, int64_t kv_stride) {
    qwen::ops::flash_attention_backward(p.q.data(), p.k.data(), p.v.data(), kv_stride,
                                        p.out.data(), p.dout.data(), p.lse.data(), g.dq.data(),
                                        g.dk.data(), g.dv.data(), s);
  };
  AttnShape s = p.s;
  s.pos0 = 3;
  EXPECT_THROW(call(s, p.kv_stride), qwen::Error);
  s = p.s;
  s.KV = 3;
  EXPECT_THROW(call(s, p.kv_stride), qwen::Error);
  s = p.s;
  EXPECT_THROW(call(s, p.s.KV * p.s.D - 1), qwen::Error);
  s.D = 0;
  EXPECT_THROW(call(s, p.kv_stride), qwen::Error);
  try {
    s = p.s;
    s.pos0 = 1;
    call(s, p.kv_stride);
  } catch (const qwen::Error& e) {
    EXPECT_NE(std::string(e.what()).find("pos0"), std::string::npos) << e.what();
  }
  s = p.s;
  s.pos0 = 2;
  EXPECT_THROW(qwen::ops::attention_backward_ref(p.q.data(), p.k.data(), p.v.data(), p.kv_stride,
                                                 nullptr, p.dout.data(), nullptr, g.dq.data(),
                                                 g.dk.data(), g.dv.data(), s),
               qwen::Error);
  // T = 0 is a no-op.
  s = p.s;
  s.T = 0;
  Grads before = g;
  call(s, p.kv_stride);
  EXPECT_TRUE(bitwise_equal(before.dq, g.dq));
}

}  // namespace
