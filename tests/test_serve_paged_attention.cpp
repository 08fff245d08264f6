// tests/test_serve_paged_attention.cpp — the paged attention kernel (ops/paged_attention.h)
// against its naive reference and against the contiguous attention reference of
// ops/attention.h fed the same keys: odd block sizes (1, 3, 5, 16, 17, 100), GQA ratios 1/2/4/6,
// odd head dims, prefill from 0, chunks at an offset, decode; block tables in shuffled order;
// every kernel table this CPU runs (AVX-512, AVX2, portable) and the dispatching entry point,
// plus the shared SIMD body instantiated with plain-C++ 16-lane traits shaped like the AVX-512
// ones (same width and register blocks), so the AVX-512 logic is exercised on CPUs without it. Pool slots that the sequence does not own
// hold NaN, so any read outside the table shows. Also: row invariance (a query gives the same bits
// whether it comes alone or inside a chunk, on 1 or 2 threads) and the errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "core/cpu.h"
#include "ops/attention.h"
#include "ops/paged_attention.h"
#include "ops/paged_attention_simd.h"
#include "qwen/error.h"

using qwen::ops::detail::PagedKernels;

namespace {

// Lane-by-lane stand-in for simd::Avx512 (16 floats, 6-row blocks, 4-vector chunks).
struct Emu16 {
  struct reg {
    float f[16];
  };
  static constexpr int W = 16;
  static constexpr int kScoreRows = 6, kScoreVecs = 4, kPvRows = 6, kPvVecs = 4;
  static reg zero() { return set1(0.0f); }
  static reg set1(float x) {
    reg r;
    for (float& v : r.f) v = x;
    return r;
  }
  static reg load(const float* p) {
    reg r;
    for (int i = 0; i < W; ++i) r.f[i] = p[i];
    return r;
  }
  static void store(float* p, reg v) {
    for (int i = 0; i < W; ++i) p[i] = v.f[i];
  }
  static reg load_n(const float* p, int64_t n) {  // reads only lanes < n, as masked loads do
    reg r = zero();
    for (int i = 0; i < W && i < n; ++i) r.f[i] = p[i];
    return r;
  }
  static void store_n(float* p, reg v, int64_t n) {
    for (int i = 0; i < W && i < n; ++i) p[i] = v.f[i];
  }
  template <class F>
  static reg map2(reg a, reg b, F f) {
    for (int i = 0; i < W; ++i) a.f[i] = f(a.f[i], b.f[i]);
    return a;
  }
  static reg fma(reg a, reg b, reg c) {
    for (int i = 0; i < W; ++i) c.f[i] = std::fma(a.f[i], b.f[i], c.f[i]);
    return c;
  }
  static reg add(reg a, reg b) { return map2(a, b, [](float x, float y) { return x + y; }); }
  static reg sub(reg a, reg b) { return map2(a, b, [](float x, float y) { return x - y; }); }
  static reg mul(reg a, reg b) { return map2(a, b, [](float x, float y) { return x * y; }); }
  static reg keep_n(reg v, int64_t n) {
    for (int i = 0; i < W; ++i)
      if (i >= n) v.f[i] = 0.0f;
    return v;
  }
  static reg max_n(reg acc, reg v, int64_t n) {
    for (int i = 0; i < W && i < n; ++i) acc.f[i] = std::max(acc.f[i], v.f[i]);
    return acc;
  }
  static float hsum(reg v) {
    float s = 0;
    for (float x : v.f) s += x;
    return s;
  }
  static float hmax(reg v) {
    float m = v.f[0];
    for (float x : v.f) m = std::max(m, x);
    return m;
  }
  static reg exp2(reg v) {
    for (float& x : v.f) x = std::exp2(std::clamp(x, -200.0f, 200.0f));
    return v;
  }
};

}  // namespace

namespace {

using qwen::ops::AttnShape;
using qwen::ops::PagedKv;
inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

struct Case {
  int64_t H, KV, D, bs, pos0, T;
};

struct Paged {
  std::vector<float> kpool, vpool;
  std::vector<int32_t> table;
  std::vector<float> k, v;  // contiguous (S, KV·D) copies of what was stored
};

// A pool with 2× the blocks the sequence needs (+3), the sequence's blocks chosen at random and
// in shuffled order; every position 0 .. pos0+T-1 stored with paged_kv_store in 1..3 pieces.
Paged make_paged(const Case& c, uint32_t seed, PagedKv* kv) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  const int64_t S = c.pos0 + c.T, kvd = c.KV * c.D;
  const int64_t n_seq_blocks = (S + c.bs - 1) / c.bs;
  const int64_t n_blocks = 2 * n_seq_blocks + 3;
  Paged p;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  p.kpool.assign(sz(n_blocks * kvd * c.bs), nan);
  p.vpool.assign(sz(n_blocks * kvd * c.bs), nan);
  std::vector<int32_t> ids(sz(n_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  p.table.assign(ids.begin(), ids.begin() + n_seq_blocks);
  p.k.resize(sz(S * kvd));
  p.v.resize(sz(S * kvd));
  for (auto& x : p.k) x = nd(rng);
  for (auto& x : p.v) x = nd(rng);
  kv->k = p.kpool.data();
  kv->v = p.vpool.data();
  kv->table = p.table.data();
  kv->n_table = int64_t(p.table.size());
  kv->block_size = c.bs;
  // Store in pieces, as prefill chunks would.
  int64_t pos = 0;
  while (pos < S) {
    const int64_t n = std::min<int64_t>(S - pos, 1 + int64_t(rng() % 37));
    AttnShape s{n, pos, c.H, c.KV, c.D, 1.0f};
    qwen::ops::paged_kv_store(*kv, p.k.data() + pos * kvd, p.v.data() + pos * kvd, s);
    pos += n;
  }
  return p;
}

std::vector<float> random_q(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> q(sz(c.T * c.H * c.D));
  for (auto& x : q) x = nd(rng);
  return q;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<float>::infinity();
    m = std::max(m, std::fabs(a[i] - b[i]));
  }
  return m;
}

// The kernel tables this CPU can run, with their names.
std::vector<std::pair<const char*, const PagedKernels*>> tables() {
  std::vector<std::pair<const char*, const PagedKernels*>> t;
  const qwen::CpuFeatures& cpu = qwen::cpu_features();
  if (cpu.avx512) t.push_back({"avx512", &qwen::ops::detail::paged_kernels_avx512()});
  if (cpu.avx2) t.push_back({"avx2", &qwen::ops::detail::paged_kernels_avx2()});
  t.push_back({"portable", &qwen::ops::detail::paged_kernels_portable()});
  t.push_back({"avx512-shaped emulation", &qwen::ops::detail::PagedSimd<Emu16>::table()});
  return t;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {4, 2, 8, 16, 0, 1},     {4, 2, 8, 16, 0, 37},    {8, 4, 64, 16, 0, 100},
      {8, 4, 64, 16, 100, 1},  {8, 4, 64, 16, 250, 7},  {6, 1, 24, 3, 10, 11},
      {6, 6, 12, 5, 0, 33},    {12, 4, 64, 17, 60, 65}, {4, 4, 33, 1, 9, 4},
      {8, 2, 40, 100, 150, 60}, {12, 2, 128, 32, 0, 70}, {2, 1, 7, 4, 1, 1},
  };
  return c;
}

TEST(PagedAttention, MatchesReferencesOnOddShapes) {
  uint32_t seed = 1;
  for (const Case& c : cases()) {
    SCOPED_TRACE(testing::Message() << "H" << c.H << " KV" << c.KV << " D" << c.D << " bs" << c.bs
                                    << " pos0 " << c.pos0 << " T" << c.T);
    PagedKv kv;
    Paged p = make_paged(c, seed++, &kv);
    const std::vector<float> q = random_q(c, seed++);
    AttnShape s{c.T, c.pos0, c.H, c.KV, c.D, 1.0f / std::sqrt(float(c.D))};
    const size_t n_out = sz(c.T * c.H * c.D);
    std::vector<float> ref(n_out), contig(n_out), fast(n_out), portable(n_out);
    qwen::ops::paged_attention_ref(q.data(), kv, ref.data(), s);
    // The contiguous reference on the keys as they were written: checks the layout end to end.
    qwen::ops::attention_ref(q.data(), p.k.data(), p.v.data(), c.KV * c.D, contig.data(), s);
    EXPECT_LT(max_abs_diff(ref, contig), 2e-5f);
    qwen::ops::paged_attention(q.data(), kv, fast.data(), s);
    EXPECT_LT(max_abs_diff(ref, fast), 2e-5f);
    qwen::ops::paged_attention_portable(q.data(), kv, portable.data(), s);
    EXPECT_LT(max_abs_diff(ref, portable), 2e-5f);
    for (const auto& [name, kern] : tables()) {
      std::vector<float> out(n_out);
      qwen::ops::detail::paged_attention_with(*kern, q.data(), kv, out.data(), s);
      EXPECT_LT(max_abs_diff(ref, out), 2e-5f) << name;
    }
  }
}

// A query row's result is the same bits alone (T = 1 at its position) or inside any chunk, with
// any thread count: what makes the server's output independent of the batch it runs in.
TEST(PagedAttention, RowInvariantAcrossChunksAndThreads) {
  const int saved = omp_get_max_threads();
  for (const Case& c : {Case{8, 4, 64, 16, 40, 50}, Case{6, 2, 20, 5, 3, 30}, Case{4, 1, 64, 16, 0, 70}}) {
    PagedKv kv;
    Paged p = make_paged(c, 77, &kv);
    const std::vector<float> q = random_q(c, 78);
    const float scale = 1.0f / std::sqrt(float(c.D));
    const int64_t row = c.H * c.D;
    for (const auto& [name, kern] : tables()) {
      auto run = [&, kern = kern](const float* qq, float* out, int64_t pos0, int64_t T) {
        AttnShape s{T, pos0, c.H, c.KV, c.D, scale};
        qwen::ops::detail::paged_attention_with(*kern, qq, kv, out, s);
      };
      omp_set_num_threads(2);
      std::vector<float> whole(sz(c.T * row));
      run(q.data(), whole.data(), c.pos0, c.T);
      omp_set_num_threads(1);
      std::vector<float> one(sz(row));
      for (int64_t t = 0; t < c.T; ++t) {
        run(q.data() + t * row, one.data(), c.pos0 + t, 1);
        ASSERT_EQ(0, std::memcmp(one.data(), whole.data() + t * row, sz(row) * 4))
            << "row " << t << " differs alone vs in a chunk (" << name << ")";
      }
      // A chunk starting in the middle.
      const int64_t t0 = c.T / 3, n = c.T - t0;
      std::vector<float> part(sz(n * row));
      omp_set_num_threads(2);
      run(q.data() + t0 * row, part.data(), c.pos0 + t0, n);
      ASSERT_EQ(0, std::memcmp(part.data(), whole.data() + t0 * row, sz(n * row) * 4));
    }
  }
  omp_set_num_threads(saved);
}

// A layer's calls of several sequences in one region (paged_store_and_attend_batch_with, what a
// decode step runs): each output is the same bits as the call alone (store + paged_attention),
// and the new rows land where paged_kv_store puts them, for each kernel table, 1 and 2 threads,
// a T = 0 call in the middle and sequences of different lengths (decode rows and prefill chunks).
TEST(PagedAttention, BatchOfSequencesMatchesOneCallAtATime) {
  const int saved = omp_get_max_threads();
  const int64_t H = 6, KV = 2, D = 20, bs = 5, kvd = KV * D, bfl = kvd * bs;
  const std::vector<std::pair<int64_t, int64_t>> seqs = {  // (pos0, T)
      {0, 1}, {37, 1}, {3, 9}, {64, 1}, {10, 0}, {0, 23}, {130, 1}, {19, 33}, {7, 2}};
  for (const auto& [name, kern] : tables())
    for (int threads : {1, 2}) {
      SCOPED_TRACE(testing::Message() << name << ", " << threads << " threads");
      omp_set_num_threads(threads);
      std::vector<Paged> alone, batched;
      std::vector<PagedKv> kv_alone(seqs.size()), kv_batched(seqs.size());
      std::vector<std::vector<float>> q(seqs.size()), out_alone(seqs.size()), out_batched(seqs.size());
      std::vector<qwen::ops::PagedCall> calls(seqs.size());
      for (size_t i = 0; i < seqs.size(); ++i) {
        const Case c{H, KV, D, bs, seqs[i].first, seqs[i].second};
        alone.push_back(make_paged(c, uint32_t(100 + i), &kv_alone[i]));
        batched.push_back(make_paged(c, uint32_t(100 + i), &kv_batched[i]));
        // The batched pool does not hold the new rows yet: the call must store them.
        Paged& b = batched.back();
        for (int64_t pos = c.pos0; pos < c.pos0 + c.T; ++pos) {
          const int64_t blk = b.table[sz(pos / bs)], off = pos % bs;
          for (int64_t g = 0; g < KV; ++g)
            for (int64_t d = 0; d < D; ++d) {  // the layout of ops/paged_attention.h
              b.kpool[sz(blk * bfl + (g * D + d) * bs + off)] = std::numeric_limits<float>::quiet_NaN();
              b.vpool[sz(blk * bfl + (g * bs + off) * D + d)] = std::numeric_limits<float>::quiet_NaN();
            }
        }
        q[i] = c.T > 0 ? random_q(c, uint32_t(200 + i)) : std::vector<float>(1);
        out_alone[i].assign(sz(std::max<int64_t>(1, c.T) * H * D), 0.f);
        out_batched[i] = out_alone[i];
        const AttnShape s{c.T, c.pos0, H, KV, D, 1.0f / std::sqrt(float(D))};
        const Paged& a = alone.back();
        qwen::ops::paged_kv_store(kv_alone[i], a.k.data() + c.pos0 * kvd,
                                  a.v.data() + c.pos0 * kvd, s);
        qwen::ops::detail::paged_attention_with(*kern, q[i].data(), kv_alone[i],
                                                out_alone[i].data(), s);
        calls[i].kv = kv_batched[i];
        calls[i].k = b.k.data() + c.pos0 * kvd;
        calls[i].v = b.v.data() + c.pos0 * kvd;
        calls[i].q = q[i].data();
        calls[i].out = out_batched[i].data();
        calls[i].s = s;
      }
      qwen::ops::detail::paged_store_and_attend_batch_with(*kern, calls.data(), calls.size());
      for (size_t i = 0; i < seqs.size(); ++i) {
        ASSERT_EQ(0, std::memcmp(out_alone[i].data(), out_batched[i].data(), out_alone[i].size() * 4))
            << "sequence " << i;
        ASSERT_EQ(0, std::memcmp(alone[i].kpool.data(), batched[i].kpool.data(), alone[i].kpool.size() * 4))
            << "K pool of sequence " << i;
        ASSERT_EQ(0, std::memcmp(alone[i].vpool.data(), batched[i].vpool.data(), alone[i].vpool.size() * 4))
            << "V pool of sequence " << i;
      }
    }
  omp_set_num_threads(saved);
}

TEST(PagedAttention, StoreWritesTheRightSlots) {
  const Case c{4, 2, 6, 3, 0, 10};
  PagedKv kv;
  Paged p = make_paged(c, 5, &kv);
  const int64_t kvd = c.KV * c.D, bfl = kvd * c.bs;
  for (int64_t pos = 0; pos < c.T; ++pos) {
    const int64_t b = p.table[sz(pos / c.bs)], off = pos % c.bs;
    for (int64_t g = 0; g < c.KV; ++g)
      for (int64_t d = 0; d < c.D; ++d) {
        EXPECT_EQ(p.kpool[sz(b * bfl + (g * c.D + d) * c.bs + off)], p.k[sz(pos * kvd + g * c.D + d)]);
        EXPECT_EQ(p.vpool[sz(b * bfl + (g * c.bs + off) * c.D + d)], p.v[sz(pos * kvd + g * c.D + d)]);
      }
  }
  // Slots of blocks not in the table stay untouched (NaN).
  std::vector<char> in_table(p.kpool.size() / sz(bfl), 0);
  for (int32_t b : p.table) in_table[sz(b)] = 1;
  for (size_t b = 0; b < in_table.size(); ++b) {
    if (!in_table[b]) {
      EXPECT_TRUE(std::isnan(p.kpool[b * sz(bfl)]));
    }
  }
}

TEST(PagedAttention, ErrorsNameTheProblem) {
  const Case c{4, 2, 8, 4, 0, 8};
  PagedKv kv;
  Paged p = make_paged(c, 9, &kv);
  std::vector<float> q(sz(4 * 8 * 2)), out(q.size()), k(sz(2 * 16)), v(k.size());
  AttnShape past{2, 7, 4, 2, 8, 1.0f};  // positions 7, 8: the table covers 0 .. 7
  EXPECT_THROW(qwen::ops::paged_attention(q.data(), kv, out.data(), past), qwen::Error);
  EXPECT_THROW(qwen::ops::paged_kv_store(kv, k.data(), v.data(), past), qwen::Error);
  AttnShape bad{1, 0, 5, 2, 8, 1.0f};  // H % KV != 0
  EXPECT_THROW(qwen::ops::paged_attention(q.data(), kv, out.data(), bad), qwen::Error);
  try {
    qwen::ops::paged_attention(q.data(), kv, out.data(), past);
  } catch (const qwen::Error& e) {
    EXPECT_NE(std::string(e.what()).find("table holds 2"), std::string::npos) << e.what();
  }
}

}  // namespace
