// ops/attention.cpp — causal GQA attention: the tiled flash-attention driver (work split, Q
// staging, causal tile skipping, online-softmax bookkeeping, merge of split key ranges), the
// portable inner kernels it falls back to without AVX2 / AVX-512, and the naive reference that
// materialises the whole score matrix. docs/flash-attention.md explains the technique.
//
// Work item = (kv head g, tile of Bq query tokens, key split). Its query block holds the Bq tokens
// × the G = H/KV query heads that read kv head g, row r = token (r / G), head g·G + r % G, so every
// K/V tile is loaded once for the whole group. Per thread the memory is the block's Q (M, D),
// its output accumulator (M, D), one transposed K tile (D, Bk) and one score tile (M, Bk):
// O(M·(D + Bk)), independent of T and S.
#include "ops/attention.h"

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
constexpr float kLn2 = 0.6931471805599453f;
using detail::kAttnBk;

// Per-thread scratch budget, in floats (384 KiB, within a 512 KiB L2): it sets how many query
// rows a work item holds. More rows = each K/V tile fetched from L3 serves more queries.
constexpr int64_t kScratchFloats = 96 * 1024;

// Query tokens per work item: as many as the scratch budget allows, a multiple of the key tile
// when that large (then the causal diagonal cuts tiles evenly), at most T, and small enough that
// there are at least 4 items per thread to balance the causal (uneven) work.
int64_t query_tile(int64_t T, int64_t KV, int64_t G, int64_t D, int n_threads) {
  const auto align = [](int64_t b) { return b >= kAttnBk ? b / kAttnBk * kAttnBk : b; };
  int64_t bq = align(std::max<int64_t>(1, kScratchFloats / (2 * D + kAttnBk) / G));
  bq = std::min(bq, T);  // decode: a block of just the T tokens' G heads
  while (bq > 16 && KV * ((T + bq - 1) / bq) < 4 * int64_t(n_threads)) bq = align(bq / 2);
  return bq;
}

[[noreturn]] void bad_shape(const char* fn, const std::string& what) {
  throw Error(std::string("ops::") + fn + ": " + what);
}

// Builds no string unless it throws (flash_attention runs every layer of every decode step).
void check_shape(const AttnShape& s, int64_t kv_stride, const char* fn) {
  if (s.T < 0 || s.pos0 < 0 || s.H <= 0 || s.KV <= 0 || s.D <= 0)
    bad_shape(fn, "bad shape T=" + std::to_string(s.T) + " pos0=" + std::to_string(s.pos0) +
                      " H=" + std::to_string(s.H) + " KV=" + std::to_string(s.KV) +
                      " D=" + std::to_string(s.D) + "; T, pos0 must be >= 0 and H, KV, D > 0");
  if (s.H % s.KV != 0)
    bad_shape(fn, "num_attention_heads " + std::to_string(s.H) +
                      " is not a multiple of num_key_value_heads " + std::to_string(s.KV) +
                      "; fix the model config");
  if (kv_stride < s.KV * s.D)
    bad_shape(fn, "kv_stride " + std::to_string(kv_stride) + " < KV*D = " +
                      std::to_string(s.KV * s.D) + "; K/V rows of one position must not overlap");
}

// Per-thread scratch that only grows: OpenMP keeps its threads, so after the first call of a
// shape no call allocates (the decode loop must not allocate).
thread_local std::vector<float> tl_tiles, tl_partials;
thread_local std::vector<int32_t> tl_n_valid;

template <class X>
X* workspace(std::vector<X>& buf, int64_t n) {
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// ---- portable inner kernels (plain loops; the reference for the AVX-512 ones) ----------------

void transpose_k_portable(const float* k, int64_t k_stride, int64_t nk, int64_t D, float* Kt) {
  for (int64_t d = 0; d < D; ++d) {
    float* row = Kt + d * kAttnBk;
    for (int64_t j = 0; j < nk; ++j) row[j] = k[j * k_stride + d];
    for (int64_t j = nk; j < kAttnBk; ++j) row[j] = 0.0f;
  }
}

void scores_portable(const float* Qs, int64_t M, int64_t D, const float* Kt, float* S) {
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * kAttnBk;
    for (int64_t j = 0; j < kAttnBk; ++j) s[j] = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = Qs[r * D + d];
      const float* kr = Kt + d * kAttnBk;
      for (int64_t j = 0; j < kAttnBk; ++j) s[j] += qd * kr[j];
    }
  }
}

void scores_direct_portable(const float* Qs, int64_t M, int64_t D, const float* k, int64_t k_stride,
                            int64_t nk, float* S) {
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * kAttnBk;
    for (int64_t j = 0; j < nk; ++j) {
      float a = 0.0f;
      for (int64_t d = 0; d < D; ++d) a += Qs[r * D + d] * k[j * k_stride + d];
      s[j] = a;
    }
    for (int64_t j = nk; j < kAttnBk; ++j) s[j] = 0.0f;
  }
}

void softmax_update_portable(float* S, int64_t M, const int32_t* n_valid, float* m, float* l,
                             float* acc, int64_t D) {
  detail::online_softmax_rows_portable(S, kAttnBk, M, n_valid, m, l, acc, D);
}

void pv_portable(const float* P, int64_t M, int64_t nk, const float* v, int64_t v_stride, int64_t D,
                 float* acc) {
  for (int64_t r = 0; r < M; ++r) {
    float* a = acc + r * D;
    for (int64_t j = 0; j < nk; ++j) {
      const float p = P[r * kAttnBk + j];
      const float* vr = v + j * v_stride;
      for (int64_t d = 0; d < D; ++d) a[d] += p * vr[d];
    }
  }
}

}  // namespace

namespace detail {
const AttnKernels& attn_kernels_portable() {
  static const AttnKernels k{transpose_k_portable, scores_portable, softmax_update_portable,
                             pv_portable, scores_direct_portable};
  return k;
}
}  // namespace detail

// ---- flash attention --------------------------------------------------------------------------

void detail::flash_attention_with(const AttnKernels& kern, const float* q, const float* k,
                                  const float* v, int64_t kv_stride, float* out, const AttnShape& s,
                                  float* lse) {
  check_shape(s, kv_stride, "flash_attention");
  if (s.T == 0) return;
  const int64_t T = s.T, H = s.H, KV = s.KV, D = s.D, pos0 = s.pos0;
  const int64_t G = H / KV;  // query heads per kv head
  const int n_threads = omp_get_max_threads();
  const int64_t Bq = query_tile(T, KV, G, D, n_threads);  // query tokens per item
  const int64_t Mmax = Bq * G;                            // query rows per item
  const int64_t n_qt = (T + Bq - 1) / Bq;
  const float qscale = s.scale * kLog2e;  // scores in log2 units: exp(x) = exp2(x·log2 e)

  // Split the key range of each (g, query tile) when the items do not share out evenly over the
  // threads (decode with few kv heads: 1 kv head on 2 threads, or SmolLM2's 3 on 2): then each
  // split keeps its own (m, l, acc) and they are merged. n_split minimises the busiest thread's
  // share, ceil(n_base·s / threads) / s items of a whole (g, tile) (3 heads on 2 threads: 2 for
  // s = 1, 1.5 for s = 2); a split needs at least two key tiles.
  const int64_t n_base = KV * n_qt;
  const int64_t n_key_tiles_max = (pos0 + T + kAttnBk - 1) / kAttnBk;
  int64_t n_split = 1;
  if (n_base % n_threads != 0 && n_base < 4 * int64_t(n_threads)) {
    int64_t best_c = (n_base + n_threads - 1) / n_threads;  // busiest share for s = 1, over s
    const int64_t s_max = std::min<int64_t>(n_key_tiles_max / 2, 2 * int64_t(n_threads));
    for (int64_t sp = 2; sp <= s_max; ++sp) {
      const int64_t c = (n_base * sp + n_threads - 1) / n_threads;
      if (c * n_split < best_c * sp) best_c = c, n_split = sp;  // c / sp < best_c / n_split
    }
  }
  const int64_t n_items = n_base * n_split;

  // Split partials: (item, M, D) accumulators and (item, M) m, l; only when n_split > 1. They
  // live in the calling thread's workspace, the per-item buffers in each worker's, so a call
  // allocates nothing once the workspaces have grown to the shape (decode allocates nothing).
  float* part = nullptr;
  if (n_split > 1) part = workspace(tl_partials, n_items * Mmax * (D + 2));
  float* const part_acc = part;
  float* const part_m = part ? part + n_items * Mmax * D : nullptr;
  float* const part_l = part ? part_m + n_items * Mmax : nullptr;

#pragma omp parallel
  {
    // Per thread: Qs (Mmax, D), Kt (D, Bk), S (Mmax, Bk), acc (Mmax, D), m, l (Mmax).
    float* const Qs = workspace(tl_tiles, Mmax * D * 2 + D * kAttnBk + Mmax * kAttnBk + 2 * Mmax);
    float* const Kt = Qs + Mmax * D;
    float* const S = Kt + D * kAttnBk;
    float* const acc_buf = S + Mmax * kAttnBk;
    float* const m_buf = acc_buf + Mmax * D;
    float* const l_buf = m_buf + Mmax;
    int32_t* const n_valid = workspace(tl_n_valid, Mmax);

#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < n_items; ++it) {
      // Latest query tiles first: they see the most keys (causal), so the long items start early.
      const int64_t qt = n_qt - 1 - it / (KV * n_split);
      const int64_t g = (it / n_split) % KV;
      const int64_t sp = it % n_split;
      const int64_t t0 = qt * Bq, t1 = std::min(T, t0 + Bq);
      const int64_t M = (t1 - t0) * G;
      const int64_t p_lo = pos0 + t0, p_hi = pos0 + t1 - 1;  // positions of the block's queries
      const int64_t n_kt = p_hi / kAttnBk + 1;               // key tiles that any row can see
      const int64_t kt_lo = n_kt * sp / n_split, kt_hi = n_kt * (sp + 1) / n_split;

      const int64_t slot = it;  // = base index b · n_split + sp, as the merge below reads it
      float* acc = n_split > 1 ? part_acc + slot * Mmax * D : acc_buf;
      float* m = n_split > 1 ? part_m + slot * Mmax : m_buf;
      float* l = n_split > 1 ? part_l + slot * Mmax : l_buf;
      std::fill(acc, acc + M * D, 0.0f);
      std::fill(m, m + M, -std::numeric_limits<float>::infinity());
      std::fill(l, l + M, 0.0f);

      // Stage the block's queries, pre-scaled: row r = token t0 + r/G, head g·G + r%G.
      for (int64_t r = 0; r < M; ++r) {
        const float* src = q + ((t0 + r / G) * H + g * G + r % G) * D;
        float* dst = Qs + r * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * qscale;
      }

      for (int64_t kt = kt_lo; kt < kt_hi; ++kt) {
        const int64_t k0 = kt * kAttnBk;
        const int64_t nk = std::min(kAttnBk, p_hi + 1 - k0);  // keys past p_hi are masked for all
        const int64_t off = k0 * kv_stride + g * D;
        if (M <= detail::kDirectScoreRows) {
          kern.scores_direct(Qs, M, D, k + off, kv_stride, nk, S);
        } else {
          kern.transpose_k(k + off, kv_stride, nk, D, Kt);
          kern.scores(Qs, M, D, Kt, S);
        }
        for (int64_t r = 0; r < M; ++r) {
          const int64_t pos = p_lo + r / G;
          n_valid[r] = int32_t(std::clamp<int64_t>(pos - k0 + 1, 0, nk));
        }
        kern.softmax_update(S, M, n_valid, m, l, acc, D);
        kern.pv(S, M, nk, v + off, kv_stride, D, acc);
      }

      if (n_split == 1) {
        for (int64_t r = 0; r < M; ++r) {
          const int64_t t = t0 + r / G, h = g * G + r % G;
          const float inv = 1.0f / l[r];
          float* o = out + (t * H + h) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = acc[r * D + d] * inv;
          if (lse) lse[h * T + t] = m[r] * kLn2 + std::log(l[r]);
        }
      }
    }
  }

  if (n_split > 1) {
    // Merge the splits of each (g, query tile): rescale each to the common max, then normalise.
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n_base; ++b) {
      const int64_t qt = n_qt - 1 - b / KV, g = b % KV;
      const int64_t t0 = qt * Bq, t1 = std::min(T, t0 + Bq);
      const int64_t M = (t1 - t0) * G;
      for (int64_t r = 0; r < M; ++r) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t sp = 0; sp < n_split; ++sp)
          mx = std::max(mx, part_m[(b * n_split + sp) * Mmax + r]);
        float l_sum = 0.0f;
        const int64_t t = t0 + r / G, h = g * G + r % G;
        float* o = out + (t * H + h) * D;
        std::fill(o, o + D, 0.0f);
        for (int64_t sp = 0; sp < n_split; ++sp) {
          const int64_t slot = b * n_split + sp;
          const float w = std::exp2(part_m[slot * Mmax + r] - mx);  // 0 for empty splits
          if (w == 0.0f) continue;
          l_sum += w * part_l[slot * Mmax + r];
          const float* a = part_acc + (slot * Mmax + r) * D;
          for (int64_t d = 0; d < D; ++d) o[d] += w * a[d];
        }
        const float inv = 1.0f / l_sum;
        for (int64_t d = 0; d < D; ++d) o[d] *= inv;
        if (lse) lse[h * T + t] = mx * kLn2 + std::log(l_sum);
      }
    }
  }
}

void flash_attention(const float* q, const float* k, const float* v, int64_t kv_stride, float* out,
                     const AttnShape& s, float* lse) {
  const CpuFeatures& cpu = cpu_features();
  const detail::AttnKernels& kern = cpu.avx512 ? detail::attn_kernels_avx512()
                                    : cpu.avx2 ? detail::attn_kernels_avx2()
                                               : detail::attn_kernels_portable();
  detail::flash_attention_with(kern, q, k, v, kv_stride, out, s, lse);
}

void flash_attention(const float* q, const float* k, const float* v, int64_t kv_stride, float* out,
                     const AttnShape& s) {
  flash_attention(q, k, v, kv_stride, out, s, nullptr);
}

// ---- naive reference --------------------------------------------------------------------------

void attention_ref(const float* q, const float* k, const float* v, int64_t kv_stride, float* out,
                   const AttnShape& s, float* lse) {
  check_shape(s, kv_stride, "attention_ref");
  const int64_t T = s.T, H = s.H, KV = s.KV, D = s.D, S = s.pos0 + s.T, G = H / KV;
  if (T == 0) return;
  // K transposed per kv head, (KV, D, S), so the score loop runs along keys; scores (H, T, S).
  std::vector<float> kt(size_t(KV * D * S));
  for (int64_t g = 0; g < KV; ++g)
    for (int64_t j = 0; j < S; ++j)
      for (int64_t d = 0; d < D; ++d)
        kt[size_t((g * D + d) * S + j)] = k[j * kv_stride + g * D + d];
  std::vector<float> scores(size_t(H * T * S));

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ht = 0; ht < H * T; ++ht) {
    const int64_t h = ht / T, t = ht % T, g = h / G;
    const int64_t n = s.pos0 + t + 1;  // keys 0 .. pos0+t are visible
    float* sc = scores.data() + ht * S;
    const float* qr = q + (t * H + h) * D;
    for (int64_t j = 0; j < S; ++j) sc[j] = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = qr[d];
      const float* kd = kt.data() + (g * D + d) * S;
      for (int64_t j = 0; j < n; ++j) sc[j] += qd * kd[j];
    }
    for (int64_t j = 0; j < n; ++j) sc[j] *= s.scale;
    for (int64_t j = n; j < S; ++j) sc[j] = -std::numeric_limits<float>::infinity();
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < S; ++j) mx = std::max(mx, sc[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < S; ++j) {
      sc[j] = std::exp(sc[j] - mx);
      sum += sc[j];
    }
    float* o = out + (t * H + h) * D;
    for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const float p = sc[j] / sum;
      const float* vr = v + j * kv_stride + g * D;
      for (int64_t d = 0; d < D; ++d) o[d] += p * vr[d];
    }
    if (lse) lse[h * T + t] = mx + std::log(sum);
  }
}

void attention_ref(const float* q, const float* k, const float* v, int64_t kv_stride, float* out,
                   const AttnShape& s) {
  attention_ref(q, k, v, kv_stride, out, s, nullptr);
}

}  // namespace qwen::ops

namespace qwen::ops::detail {

// One online-softmax step over a tile of scores (M rows, row stride lds, the first n_valid[r]
// live): scores become exp2(s - m_new), and the running max m, sum l and accumulator acc
// (M, D) are rescaled by exp2(m_old - m_new). Shared by flash and paged attention.
void online_softmax_rows_portable(float* S, int64_t lds, int64_t M, const int32_t* n_valid,
                                  float* m, float* l, float* acc, int64_t D) {
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * lds;
    const int64_t nv = n_valid[r];
    if (nv <= 0) {
      std::fill(s, s + lds, 0.0f);
      continue;
    }
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < nv; ++j) mx = std::max(mx, s[j]);
    const float m_new = std::max(m[r], mx);
    float sum = 0.0f;
    for (int64_t j = 0; j < nv; ++j) {
      s[j] = std::exp2(s[j] - m_new);
      sum += s[j];
    }
    for (int64_t j = nv; j < lds; ++j) s[j] = 0.0f;
    const float alpha = std::exp2(m[r] - m_new);
    l[r] = l[r] * alpha + sum;
    m[r] = m_new;
    if (alpha != 1.0f)
      for (int64_t d = 0; d < D; ++d) acc[r * D + d] *= alpha;
  }
}

}  // namespace qwen::ops::detail
