// tests/test_attention.cpp — flash attention against the naive reference and against a
// double-precision attention written here: causal prefill (pos0 = 0), chunked prefill / cache
// offset (pos0 > 0), decode (T = 1), GQA ratios 1/2/4/8, odd T, S and D, kv_stride > KV·D, the
// split-key path, lse, every kernel table (portable, AVX2, AVX-512, and the AVX-512 logic run
// with AVX2 register pairs where the CPU has no AVX-512) and 1-4 threads.
// K/V padding columns and the rows past pos0+T-1 hold NaN, so a read outside the contract shows.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/attention.h"
#include "ops/attention_kernels.h"
#include "qwen/error.h"

// Counts operator new calls, for the no-allocation-after-warm-up test. (g++ 12 sees free() of
// what these operator new returned and warns mismatched-new-delete; they are a matched pair.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<long> g_news{0};
void* operator new(size_t n) {
  ++g_news;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  ++g_news;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace {

using qwen::ops::AttnShape;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

struct Problem {
  AttnShape s;
  int64_t kv_stride = 0;
  std::vector<float> q, k, v;
};

// q (T, H, D) ~ N(0,1); K/V rows 0 .. pos0+T-1 ~ N(0,1) in the first KV·D floats of each
// kv_stride row; padding columns and 3 extra rows after the last position are NaN.
Problem make_problem(int64_t T, int64_t pos0, int64_t H, int64_t KV, int64_t D, int64_t pad,
                     uint32_t seed, float scale_mul = 1.0f) {
  Problem p;
  p.s = AttnShape{T, pos0, H, KV, D, scale_mul / std::sqrt(float(D))};
  p.kv_stride = KV * D + pad;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  p.q.resize(sz(T * H * D));
  for (auto& x : p.q) x = nd(rng);
  const int64_t S = pos0 + T, rows = S + 3;
  p.k.assign(sz(rows * p.kv_stride), kNaN);
  p.v.assign(sz(rows * p.kv_stride), kNaN);
  for (int64_t j = 0; j < S; ++j)
    for (int64_t c = 0; c < KV * D; ++c) {
      p.k[sz(j * p.kv_stride + c)] = nd(rng);
      p.v[sz(j * p.kv_stride + c)] = nd(rng);
    }
  return p;
}

// Straightforward attention in double: out (T, H, D), lse (H, T).
void attention_double(const Problem& p, std::vector<double>& out, std::vector<double>& lse) {
  const AttnShape& s = p.s;
  const int64_t G = s.H / s.KV;
  out.assign(sz(s.T * s.H * s.D), 0.0);
  lse.assign(sz(s.H * s.T), 0.0);
  for (int64_t t = 0; t < s.T; ++t)
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t g = h / G, n = s.pos0 + t + 1;
      std::vector<double> sc(sz(n));
      double mx = -1e300;
      for (int64_t j = 0; j < n; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < s.D; ++d)
          dot += double(p.q[sz((t * s.H + h) * s.D + d)]) *
                 double(p.k[sz(j * p.kv_stride + g * s.D + d)]);
        sc[sz(j)] = dot * double(s.scale);
        mx = std::max(mx, sc[sz(j)]);
      }
      double sum = 0;
      for (auto& x : sc) sum += (x = std::exp(x - mx));
      for (int64_t j = 0; j < n; ++j)
        for (int64_t d = 0; d < s.D; ++d)
          out[sz((t * s.H + h) * s.D + d)] +=
              sc[sz(j)] / sum * double(p.v[sz(j * p.kv_stride + g * s.D + d)]);
      lse[sz(h * s.T + t)] = mx + std::log(sum);
    }
}

template <class A, class B>
double max_abs_diff(const A& a, const B& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (double(a[i]) == double(b[i])) continue;  // equal, infinities included
    const double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = d;  // NaN propagates as NaN
  }
  return m;
}

struct Table {
  const char* name;
  const qwen::ops::detail::AttnKernels* k;
};

// Every kernel table this CPU can run: portable always, AVX2 and AVX-512 where present.
std::vector<Table> kernel_tables() {
  std::vector<Table> t{{"portable", &qwen::ops::detail::attn_kernels_portable()}};
  if (qwen::cpu_features().avx2) {
    t.push_back({"avx2", &qwen::ops::detail::attn_kernels_avx2()});
    t.push_back({"w16 (AVX-512 logic on AVX2)", &qwen::ops::detail::attn_kernels_w16_test()});
  }
  if (qwen::cpu_features().avx512)
    t.push_back({"avx512", &qwen::ops::detail::attn_kernels_avx512()});
  return t;
}

// Runs flash (every kernel table, and the public dispatching entry) and the naive reference on
// one problem and compares all of them with the double-precision result.
void check(const Problem& p, double tol, const std::string& what) {
  SCOPED_TRACE(what);
  const AttnShape& s = p.s;
  std::vector<double> want, want_lse;
  attention_double(p, want, want_lse);
  const size_t n_out = sz(s.T * s.H * s.D), n_lse = sz(s.H * s.T);

  std::vector<float> ref(n_out, kNaN), ref_lse(n_lse, kNaN);
  qwen::ops::attention_ref(p.q.data(), p.k.data(), p.v.data(), p.kv_stride, ref.data(), s,
                           ref_lse.data());
  EXPECT_LE(max_abs_diff(ref, want), tol) << "attention_ref vs double";
  EXPECT_LE(max_abs_diff(ref_lse, want_lse), tol) << "attention_ref lse vs double";

  std::vector<float> out(n_out, kNaN), lse(n_lse, kNaN);
  qwen::ops::flash_attention(p.q.data(), p.k.data(), p.v.data(), p.kv_stride, out.data(), s);
  EXPECT_LE(max_abs_diff(out, want), tol) << "flash_attention vs double";
  EXPECT_LE(max_abs_diff(out, ref), tol) << "flash_attention vs attention_ref";

  for (const Table& t : kernel_tables()) {
    std::fill(out.begin(), out.end(), kNaN);
    std::fill(lse.begin(), lse.end(), kNaN);
    qwen::ops::detail::flash_attention_with(*t.k, p.q.data(), p.k.data(), p.v.data(), p.kv_stride,
                                            out.data(), s, lse.data());
    const char* name = t.name;
    EXPECT_LE(max_abs_diff(out, want), tol) << name << " flash vs double";
    EXPECT_LE(max_abs_diff(lse, want_lse), tol) << name << " flash lse vs double";
  }
}

class Threads : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = qwen::num_threads(); }
  void TearDown() override { qwen::set_num_threads(saved_); }
  int saved_ = 1;
};

using FlashAttention = Threads;

constexpr double kTol = 1e-5;

TEST_F(FlashAttention, PrefillFromZero) {
  const int64_t Ts[] = {1, 7, 64, 65, 150};
  const int64_t Ds[] = {8, 24, 64, 80, 128};
  uint32_t seed = 1;
  for (int64_t T : Ts)
    for (int64_t D : Ds)
      check(make_problem(T, 0, 4, 2, D, 0, seed++), kTol,
            "T=" + std::to_string(T) + " D=" + std::to_string(D));
}

TEST_F(FlashAttention, GqaRatios) {
  // H/KV = 1, 2, 4, 8 (and 3, 7 for row blocks that do not divide evenly).
  const int64_t HKV[][2] = {{4, 4}, {4, 2}, {8, 2}, {8, 1}, {12, 4}, {14, 2}};
  uint32_t seed = 100;
  for (auto hk : HKV)
    check(make_problem(97, 0, hk[0], hk[1], 24, 0, seed++), kTol,
          "H=" + std::to_string(hk[0]) + " KV=" + std::to_string(hk[1]));
}

TEST_F(FlashAttention, CacheOffsetChunkedPrefill) {
  // pos0 > 0: the block's queries see all cached keys plus a causal part of their own chunk.
  const int64_t cases[][3] = {{33, 5, 64}, {70, 64, 24}, {129, 200, 80}, {3, 1000, 8}};
  uint32_t seed = 200;
  for (auto c : cases)
    check(make_problem(c[0], c[1], 6, 2, c[2], 0, seed++), kTol,
          "T=" + std::to_string(c[0]) + " pos0=" + std::to_string(c[1]) +
              " D=" + std::to_string(c[2]));
}

TEST_F(FlashAttention, ChunkedPrefillEqualsOneShot) {
  // Two chunks through a shared cache give the same rows as one prefill over both.
  Problem whole = make_problem(150, 0, 8, 2, 64, 0, 7);
  std::vector<float> one(whole.q.size()), chunked(whole.q.size());
  qwen::ops::flash_attention(whole.q.data(), whole.k.data(), whole.v.data(), whole.kv_stride,
                             one.data(), whole.s);
  const int64_t T1 = 61, row = 8 * 64;
  AttnShape a = whole.s, b = whole.s;
  a.T = T1;
  b.T = 150 - T1;
  b.pos0 = T1;
  qwen::ops::flash_attention(whole.q.data(), whole.k.data(), whole.v.data(), whole.kv_stride,
                             chunked.data(), a);
  qwen::ops::flash_attention(whole.q.data() + T1 * row, whole.k.data(), whole.v.data(),
                             whole.kv_stride, chunked.data() + T1 * row, b);
  EXPECT_LE(max_abs_diff(one, chunked), 1e-6);
}

TEST_F(FlashAttention, Decode) {
  // T = 1 against long caches, including lengths off the 64-key tile grid.
  const int64_t Ss[] = {1, 2, 63, 64, 65, 511, 1300};
  uint32_t seed = 300;
  for (int64_t S : Ss)
    for (int64_t KV : {1, 2, 4})
      check(make_problem(1, S - 1, 8, KV, 64, 0, seed++), kTol,
            "S=" + std::to_string(S) + " KV=" + std::to_string(KV));
}

TEST_F(FlashAttention, DecodeSplitKeysAcrossThreads) {
  // With fewer (kv head, query tile) items than threads, the key range is split and merged.
  uint32_t seed = 400;
  for (int threads : {1, 2, 3, 4}) {
    qwen::set_num_threads(threads);
    for (int64_t T : {1, 2, 5})
      check(make_problem(T, 900, 4, 1, 80, 0, seed++), kTol,
            "threads=" + std::to_string(threads) + " T=" + std::to_string(T));
  }
}

TEST_F(FlashAttention, StridedKvCache) {
  // kv_stride > KV·D (e.g. K and V rows interleaved in one buffer, or a padded cache).
  uint32_t seed = 500;
  for (int64_t pad : {1, 13, 64})
    check(make_problem(77, 20, 6, 3, 24, pad, seed++), kTol, "pad=" + std::to_string(pad));
}

TEST_F(FlashAttention, ThreadCountsGiveSameResult) {
  Problem p = make_problem(130, 10, 12, 4, 64, 0, 9);
  std::vector<float> base(p.q.size()), out(p.q.size());
  qwen::set_num_threads(1);
  qwen::ops::flash_attention(p.q.data(), p.k.data(), p.v.data(), p.kv_stride, base.data(), p.s);
  for (int threads : {2, 3}) {
    qwen::set_num_threads(threads);
    qwen::ops::flash_attention(p.q.data(), p.k.data(), p.v.data(), p.kv_stride, out.data(), p.s);
    EXPECT_EQ(max_abs_diff(out, base), 0.0) << "threads=" << threads;
  }
}

TEST_F(FlashAttention, SharpScores) {
  // Scores with std ~8 (scale 8/sqrt(D)): softmax is nearly one-hot and the running max moves a
  // lot between tiles. Float scores carry an absolute error ~|score|·1e-7·sqrt(D), so the
  // tolerance grows with the score range for every float implementation alike.
  uint32_t seed = 600;
  for (int64_t D : {24, 128})
    check(make_problem(150, 40, 4, 2, D, 0, seed++, 8.0f), 5e-5, "D=" + std::to_string(D));
}

TEST(AttentionKernels, SimdMatchesPortable) {
  // Each SIMD table against the plain loops, kernel by kernel, on odd tile shapes: rows that are
  // not a multiple of the register block, D not a multiple of the vector width, partial key
  // tiles, rows with 0 .. nk live scores and rows on their first tile (m = -inf).
  using qwen::ops::detail::kAttnBk;
  const auto tables = kernel_tables();
  // Every SIMD table this CPU can run is present (the loop below covers each one; on a CPU
  // without AVX2 only the portable table exists and the public-entry tests cover it).
  const size_t want_tables = 1 + (qwen::cpu_features().avx2 ? 2 : 0) +
                             (qwen::cpu_features().avx512 ? 1 : 0);
  ASSERT_EQ(tables.size(), want_tables);
  const auto& b = qwen::ops::detail::attn_kernels_portable();
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (size_t ti = 1; ti < tables.size(); ++ti) {
    const auto& a = *tables[ti].k;
    for (int64_t D : {1, 8, 17, 64, 80, 130})
      for (int64_t M : {1, 2, 4, 5, 6, 7, 13}) {
        SCOPED_TRACE(std::string(tables[ti].name) + " D=" + std::to_string(D) +
                     " M=" + std::to_string(M));
        const int64_t nk = 1 + int64_t(rng() % kAttnBk), stride = D + 3;
        std::vector<float> kv(sz(nk * stride));
        for (auto& x : kv) x = nd(rng);
        std::vector<float> kt_a(sz(D * kAttnBk), kNaN), kt_b(sz(D * kAttnBk), kNaN);
        a.transpose_k(kv.data(), stride, nk, D, kt_a.data());
        b.transpose_k(kv.data(), stride, nk, D, kt_b.data());
        EXPECT_EQ(max_abs_diff(kt_a, kt_b), 0.0);

        std::vector<float> qs(sz(M * D));
        for (auto& x : qs) x = nd(rng);
        std::vector<float> s_a(sz(M * kAttnBk)), s_b(sz(M * kAttnBk));
        a.scores(qs.data(), M, D, kt_a.data(), s_a.data());
        b.scores(qs.data(), M, D, kt_b.data(), s_b.data());
        EXPECT_LE(max_abs_diff(s_a, s_b), 1e-5 * std::sqrt(double(D)));
        // The decode score kernel (no transpose) against the portable one and the tiled scores;
        // columns past nk must be zero like the transposed tile's.
        std::vector<float> d_a(sz(M * kAttnBk), kNaN), d_b(sz(M * kAttnBk), kNaN);
        a.scores_direct(qs.data(), M, D, kv.data(), stride, nk, d_a.data());
        b.scores_direct(qs.data(), M, D, kv.data(), stride, nk, d_b.data());
        EXPECT_LE(max_abs_diff(d_a, d_b), 1e-5 * std::sqrt(double(D)));
        EXPECT_LE(max_abs_diff(d_a, s_a), 1e-5 * std::sqrt(double(D)));
        for (int64_t r = 0; r < M; ++r)
          for (int64_t j = nk; j < kAttnBk; ++j) ASSERT_EQ(d_a[sz(r * kAttnBk + j)], 0.0f);
        s_b = s_a;

        std::vector<int32_t> n_valid(sz(M));
        for (auto& n : n_valid) n = int32_t(rng() % (nk + 1));
        std::vector<float> m_a(sz(M)), l_a(sz(M)), acc_a(sz(M * D));
        for (int64_t r = 0; r < M; ++r) {
          m_a[sz(r)] = r % 2 ? -std::numeric_limits<float>::infinity() : nd(rng);
          l_a[sz(r)] = r % 2 ? 0.0f : 1.5f;
        }
        for (auto& x : acc_a) x = nd(rng);
        auto m_b = m_a, l_b = l_a, acc_b = acc_a;
        a.softmax_update(s_a.data(), M, n_valid.data(), m_a.data(), l_a.data(), acc_a.data(), D);
        b.softmax_update(s_b.data(), M, n_valid.data(), m_b.data(), l_b.data(), acc_b.data(), D);
        EXPECT_EQ(max_abs_diff(m_a, m_b), 0.0);
        EXPECT_LE(max_abs_diff(l_a, l_b), 1e-5 * kAttnBk);
        EXPECT_LE(max_abs_diff(s_a, s_b), 1e-6);
        EXPECT_LE(max_abs_diff(acc_a, acc_b), 1e-6);

        a.pv(s_a.data(), M, nk, kv.data(), stride, D, acc_a.data());
        b.pv(s_a.data(), M, nk, kv.data(), stride, D, acc_b.data());
        EXPECT_LE(max_abs_diff(acc_a, acc_b), 2e-5);
      }
  }
}

TEST_F(FlashAttention, NoAllocationAfterWarmUp) {
  // The decode loop calls flash_attention every layer and token; its scratch must be reused.
  for (int threads : {1, 2}) {
    qwen::set_num_threads(threads);
    for (int64_t KV : {1, 4}) {  // KV = 1 with 2 threads takes the split-keys path
      Problem p = make_problem(1, 700, 8, KV, 64, 0, 3);
      std::vector<float> out(p.q.size());
      qwen::ops::flash_attention(p.q.data(), p.k.data(), p.v.data(), p.kv_stride, out.data(), p.s);
      const long before = g_news.load();
      for (int i = 0; i < 3; ++i)
        qwen::ops::flash_attention(p.q.data(), p.k.data(), p.v.data(), p.kv_stride, out.data(),
                                   p.s);
      EXPECT_EQ(g_news.load() - before, 0) << "threads=" << threads << " KV=" << KV;
    }
  }
}

TEST(FlashAttentionErrors, BadShapesThrow) {
  std::vector<float> buf(4096, 0.0f), out(4096);
  AttnShape s{4, 0, 6, 4, 8, 0.35f};  // 6 heads do not split over 4 kv heads
  EXPECT_THROW(qwen::ops::flash_attention(buf.data(), buf.data(), buf.data(), 32, out.data(), s),
               qwen::Error);
  s.KV = 3;
  EXPECT_THROW(qwen::ops::flash_attention(buf.data(), buf.data(), buf.data(), 23, out.data(), s),
               qwen::Error);  // kv_stride < KV*D
  s.D = 0;
  EXPECT_THROW(qwen::ops::attention_ref(buf.data(), buf.data(), buf.data(), 24, out.data(), s),
               qwen::Error);
  s.D = 8;
  EXPECT_NO_THROW(
      qwen::ops::flash_attention(buf.data(), buf.data(), buf.data(), 24, out.data(), s));
}

TEST(FlashAttentionErrors, EmptyQueryIsANoOp) {
  std::vector<float> buf(64, 1.0f), out(64, 7.0f);
  AttnShape s{0, 5, 2, 1, 8, 0.35f};
  qwen::ops::flash_attention(buf.data(), buf.data(), buf.data(), 8, out.data(), s);
  for (float x : out) EXPECT_EQ(x, 7.0f);
}

}  // namespace
