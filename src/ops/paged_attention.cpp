// ops/paged_attention.cpp — the paged attention driver (work split, Q staging, tiles of whole
// blocks read through the block table, online-softmax bookkeeping), its portable inner kernels,
// the K/V store through the table, and the naive reference. See paged_attention.h.
//
// Work item = (kv head g, tile of Bq query tokens). Its query block holds the Bq tokens × the
// G = H/KV query heads that read kv head g (row r = token r / G, head g·G + r % G), so every
// K/V block is loaded once for the whole group. Per thread the memory is the block's Q (M, D),
// its accumulator (M, D) and one score tile (M, tile): independent of the sequence length.
// paged_store_and_attend_batch runs the items of several sequences (a decode step's layer) in
// one parallel region; every item is the same run_item, so results do not depend on the batch.
#include "ops/paged_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/attention_kernels.h"
#include "qwen/error.h"

namespace qwen::ops {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kRowsTarget = 64;          // query rows (tokens × grouped heads) per item
constexpr int64_t kParallelWork = 1 << 16;   // multiply-adds below which one thread does it all

// Builds no string unless it throws (it runs for every layer of every decode step, and the
// decode step must not allocate).
void check(const PagedKv& kv, const AttnShape& s, const char* fn) {
  const auto where = [fn] { return std::string("ops::") + fn + ": "; };
  if (s.T < 0 || s.pos0 < 0 || s.H <= 0 || s.KV <= 0 || s.D <= 0 || s.H % s.KV != 0)
    throw Error(where() + "bad shape T=" + std::to_string(s.T) + " pos0=" + std::to_string(s.pos0) +
                " H=" + std::to_string(s.H) + " KV=" + std::to_string(s.KV) + " D=" +
                std::to_string(s.D) + "; need T, pos0 >= 0, H, KV, D > 0 and H % KV == 0");
  if (kv.block_size <= 0 || !kv.k || !kv.v || (!kv.table && kv.n_table > 0))
    throw Error(where() + "block_size must be > 0 and the pools and table must be set");
  if (s.pos0 + s.T > kv.n_table * kv.block_size)
    throw Error(where() + "positions up to " + std::to_string(s.pos0 + s.T) + " need " +
                std::to_string((s.pos0 + s.T + kv.block_size - 1) / kv.block_size) +
                " blocks but the table holds " + std::to_string(kv.n_table) +
                "; allocate blocks before attending");
}

// Blocks per tile and the tile's width in keys.
int64_t blocks_per_tile(int64_t bs) { return std::max<int64_t>(1, detail::kPagedTileKeys / bs); }

// ---- portable inner kernels ----------------------------------------------------------------

void scores_portable(const float* Qs, int64_t M, int64_t D, const float* Kt, int64_t bs,
                     int64_t nk, float* S, int64_t lds) {
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * lds;
    for (int64_t j = 0; j < nk; ++j) s[j] = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = Qs[r * D + d];
      const float* kr = Kt + d * bs;
      for (int64_t j = 0; j < nk; ++j) s[j] += qd * kr[j];
    }
  }
}

void softmax_portable(float* S, int64_t lds, int64_t M, const int32_t* n_valid, float* m,
                      float* l, float* acc, int64_t D) {
  detail::online_softmax_rows_portable(S, lds, M, n_valid, m, l, acc, D);
}

void pv_portable(const float* P, int64_t lds, int64_t M, int64_t nk, const float* Vb, int64_t D,
                 float* acc) {
  for (int64_t r = 0; r < M; ++r) {
    float* a = acc + r * D;
    for (int64_t j = 0; j < nk; ++j) {
      const float p = P[r * lds + j];
      const float* vr = Vb + j * D;
      for (int64_t d = 0; d < D; ++d) a[d] += p * vr[d];
    }
  }
}

}  // namespace

namespace detail {

const PagedKernels& paged_kernels_portable() {
  static const PagedKernels k{scores_portable, softmax_portable, pv_portable};
  return k;
}

namespace {

// Per-thread scratch, kept between calls (a decode step attends once per layer): grows to the
// largest item, never shrinks.
struct ItemScratch {
  std::vector<float> Qs, S, acc, m, l;
  std::vector<int32_t> n_valid;
};
ItemScratch& item_scratch() {
  static thread_local ItemScratch sc;
  return sc;
}

// The split of one call into work items (kv head g, tile of Bq query tokens).
struct ItemPlan {
  int64_t G, Bq, n_qt, n_items;
};
ItemPlan item_plan(const AttnShape& s) {
  ItemPlan p;
  p.G = s.H / s.KV;
  p.Bq = std::max<int64_t>(1, kRowsTarget / p.G);
  p.n_qt = (s.T + p.Bq - 1) / p.Bq;
  p.n_items = s.KV * p.n_qt;
  return p;
}

// Work item it (0 .. n_items) of one call: the same arithmetic whichever thread runs it and
// whichever other calls share the parallel region.
void run_item(const PagedKernels& kern, const float* q, const PagedKv& kv, float* out,
              const AttnShape& s, const ItemPlan& pl, int64_t it) {
  const int64_t T = s.T, H = s.H, KV = s.KV, D = s.D, pos0 = s.pos0, bs = kv.block_size;
  const int64_t G = pl.G, Bq = pl.Bq, n_qt = pl.n_qt;
  const int64_t nb = blocks_per_tile(bs);        // blocks per tile
  const int64_t tile = nb * bs;                  // keys per tile
  const int64_t lds = (tile + 15) / 16 * 16;     // score row stride (whole 16-float vectors)
  const int64_t block_floats = KV * D * bs;
  const float qscale = s.scale * kLog2e;
  const auto sz = [](int64_t n) { return static_cast<size_t>(n); };
  ItemScratch& sc = item_scratch();
  const int64_t Mmax = std::min(Bq, T) * G;
  auto grow = [&](auto& v, int64_t n) {
    if (v.size() < sz(n)) v.resize(sz(n));
  };
  grow(sc.Qs, Mmax * D);
  grow(sc.S, Mmax * lds);
  grow(sc.acc, Mmax * D);
  grow(sc.m, Mmax);
  grow(sc.l, Mmax);
  grow(sc.n_valid, Mmax);
  std::vector<float>&Qs = sc.Qs, &S = sc.S, &acc = sc.acc, &m = sc.m, &l = sc.l;
  std::vector<int32_t>& n_valid = sc.n_valid;

  const int64_t qt = n_qt - 1 - it / KV;  // latest query tiles (most keys) first
  const int64_t g = it % KV;
  const int64_t t0 = qt * Bq, t1 = std::min(T, t0 + Bq);
  const int64_t M = (t1 - t0) * G;
  const int64_t p_lo = pos0 + t0, p_hi = pos0 + t1 - 1;
  std::fill(acc.begin(), acc.begin() + M * D, 0.0f);
  std::fill(m.begin(), m.begin() + M, -std::numeric_limits<float>::infinity());
  std::fill(l.begin(), l.begin() + M, 0.0f);
  for (int64_t r = 0; r < M; ++r) {
    const float* src = q + ((t0 + r / G) * H + g * G + r % G) * D;
    float* dst = Qs.data() + r * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * qscale;
  }
  const int64_t n_tiles = p_hi / tile + 1;
  for (int64_t ti = 0; ti < n_tiles; ++ti) {
    const int64_t k0 = ti * tile;
    const int64_t nk = std::min(tile, p_hi + 1 - k0);  // keys past p_hi are masked for all
    for (int64_t bi = 0; bi * bs < nk; ++bi) {
      const int64_t blk = kv.table[k0 / bs + bi];
      const float* Kt = kv.k + blk * block_floats + g * D * bs;
      kern.scores(Qs.data(), M, D, Kt, bs, std::min(bs, nk - bi * bs), S.data() + bi * bs, lds);
    }
    for (int64_t r = 0; r < M; ++r)
      n_valid[sz(r)] = int32_t(std::clamp<int64_t>(p_lo + r / G - k0 + 1, 0, nk));
    kern.softmax(S.data(), lds, M, n_valid.data(), m.data(), l.data(), acc.data(), D);
    for (int64_t bi = 0; bi * bs < nk; ++bi) {
      const int64_t blk = kv.table[k0 / bs + bi];
      const float* Vb = kv.v + blk * block_floats + g * bs * D;
      kern.pv(S.data() + bi * bs, lds, M, std::min(bs, nk - bi * bs), Vb, D, acc.data());
    }
  }
  for (int64_t r = 0; r < M; ++r) {
    const int64_t t = t0 + r / G, h = g * G + r % G;
    const float inv = 1.0f / l[sz(r)];
    float* o = out + (t * H + h) * D;
    for (int64_t d = 0; d < D; ++d) o[d] = acc[sz(r * D + d)] * inv;
  }
}

const PagedKernels& best_kernels() {
  const CpuFeatures& cpu = cpu_features();
  return cpu.avx512 ? paged_kernels_avx512() : cpu.avx2 ? paged_kernels_avx2()
                                                        : paged_kernels_portable();
}

}  // namespace

void paged_attention_with(const PagedKernels& kern, const float* q, const PagedKv& kv, float* out,
                          const AttnShape& s) {
  check(kv, s, "paged_attention");
  if (s.T == 0) return;
  const ItemPlan pl = item_plan(s);
  const int64_t work = s.T * s.H * s.D * (s.pos0 + s.T);
  const bool parallel = pl.n_items > 1 && work >= kParallelWork && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t it = 0; it < pl.n_items; ++it) run_item(kern, q, kv, out, s, pl, it);
}

void paged_store_and_attend_batch_with(const PagedKernels& kern, const PagedCall* calls,
                                       size_t n_calls) {
  // Stores first (each call writes only its own sequence's positions), then every item of every
  // call in one region, calls in order, items of a call in paged_attention_with's order.
  int64_t n_items = 0, work = 0;
  for (size_t i = 0; i < n_calls; ++i) {
    const PagedCall& c = calls[i];
    check(c.kv, c.s, "paged_store_and_attend_batch");
    if (c.s.T == 0) continue;
    paged_kv_store(c.kv, c.k, c.v, c.s);
    n_items += item_plan(c.s).n_items;
    work += c.s.T * c.s.H * c.s.D * (c.s.pos0 + c.s.T);
  }
  if (n_items == 0) return;
  const bool parallel = n_items > 1 && work >= kParallelWork && omp_get_max_threads() > 1;
#pragma omp parallel if (parallel)
  {
    // Items are handed out in order (dynamic, one at a time): call i, item j at i's offset + j.
    size_t ci = 0;
    int64_t base = 0;
    ItemPlan pl = n_calls ? item_plan(calls[0].s) : ItemPlan{};
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < n_items; ++it) {
      // Each thread walks forward through the calls (its items come in increasing order).
      while (it >= base + pl.n_items) {  // a call with T = 0 has no items
        base += pl.n_items;
        pl = item_plan(calls[++ci].s);
      }
      const PagedCall& c = calls[ci];
      run_item(kern, c.q, c.kv, c.out, c.s, pl, it - base);
    }
  }
}

}  // namespace detail

void paged_kv_store(const PagedKv& kv, const float* k, const float* v, const AttnShape& s) {
  check(kv, s, "paged_kv_store");
  const int64_t KV = s.KV, D = s.D, bs = kv.block_size, block_floats = KV * D * bs;
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t pos = s.pos0 + t;
    const int64_t blk = kv.table[pos / bs], off = pos % bs;
    const float* kr = k + t * KV * D;
    const float* vr = v + t * KV * D;
    for (int64_t g = 0; g < KV; ++g) {
      float* kt = kv.k + blk * block_floats + g * D * bs + off;  // column off of Kᵀ (D, bs)
      for (int64_t d = 0; d < D; ++d) kt[d * bs] = kr[g * D + d];
      float* vd = kv.v + blk * block_floats + (g * bs + off) * D;
      std::copy(vr + g * D, vr + (g + 1) * D, vd);
    }
  }
}

void paged_attention(const float* q, const PagedKv& kv, float* out, const AttnShape& s) {
  detail::paged_attention_with(detail::best_kernels(), q, kv, out, s);
}

void paged_store_and_attend_batch(const PagedCall* calls, size_t n_calls) {
  detail::paged_store_and_attend_batch_with(detail::best_kernels(), calls, n_calls);
}

void paged_attention_portable(const float* q, const PagedKv& kv, float* out, const AttnShape& s) {
  detail::paged_attention_with(detail::paged_kernels_portable(), q, kv, out, s);
}

void paged_attention_ref(const float* q, const PagedKv& kv, float* out, const AttnShape& s) {
  check(kv, s, "paged_attention_ref");
  const int64_t T = s.T, H = s.H, KV = s.KV, D = s.D, S = s.pos0 + s.T, G = H / KV;
  const int64_t bs = kv.block_size, block_floats = KV * D * bs;
  if (T == 0) return;
  // Gather every key and value of the sequence into (S, KV, D), then plain softmax attention.
  std::vector<double> kk(size_t(S * KV * D)), vv(size_t(S * KV * D));
  for (int64_t p = 0; p < S; ++p) {
    const int64_t blk = kv.table[p / bs], off = p % bs;
    for (int64_t g = 0; g < KV; ++g)
      for (int64_t d = 0; d < D; ++d) {
        kk[size_t((p * KV + g) * D + d)] = kv.k[blk * block_floats + (g * D + d) * bs + off];
        vv[size_t((p * KV + g) * D + d)] = kv.v[blk * block_floats + (g * bs + off) * D + d];
      }
  }
  std::vector<double> sc(static_cast<size_t>(S));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / G, n = s.pos0 + t + 1;
      const float* qr = q + (t * H + h) * D;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t d = 0; d < D; ++d) acc += double(qr[d]) * kk[size_t((j * KV + g) * D + d)];
        sc[size_t(j)] = acc * s.scale;
        mx = std::max(mx, sc[size_t(j)]);
      }
      double sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += (sc[size_t(j)] = std::exp(sc[size_t(j)] - mx));
      float* o = out + (t * H + h) * D;
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += sc[size_t(j)] * vv[size_t((j * KV + g) * D + d)];
        o[d] = float(acc / sum);
      }
    }
}

}  // namespace qwen::ops
