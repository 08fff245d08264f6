// ops/cross_entropy.cpp — fused lm_head + cross-entropy forward and backward (see
// cross_entropy.h for the contract and the two blockings). The three products per row block
// (logits = h·Wᵀ, dh += G·W, dW += Gᵀ·h) are ops::gemm_f32 calls, which use all op threads; the
// per-row softmax work between them is split over rows with OpenMP. Row losses are summed in
// row order in double, so the result depends only on the thread count given to gemm_f32.
#include "ops/cross_entropy.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "qwen/error.h"

namespace qwen::ops {

namespace {

// Counted rows' indices; throws on a target past the vocabulary.
std::vector<int64_t> counted_rows(const char* fn, const int32_t* targets, int64_t N, int64_t V) {
  std::vector<int64_t> idx;
  idx.reserve(size_t(N));
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] < 0) continue;
    if (int64_t(targets[i]) >= V)
      throw Error(std::string(fn) + ": target token " + std::to_string(targets[i]) + " at row " +
                  std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(V) +
                  "); check that the data was tokenized with this model's tokenizer");
    idx.push_back(i);
  }
  return idx;
}

float row_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// x = exp(x − m) in place; returns the sum of the new values.
float exp_shift_sum(float* x, int64_t n, float m) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) x[j] -= m;
  exp_f32(x, x, n);
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j];
  return s;
}

void scale_row(float* x, int64_t n, float a) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

template <class T>
std::unique_ptr<T[]> scratch(int64_t n) {
  return std::make_unique_for_overwrite<T[]>(size_t(std::max<int64_t>(n, 1)));
}

}  // namespace

CrossEntropyPlan cross_entropy_plan(int64_t N, int64_t C, int64_t V) {
  (void)N;
  (void)C;
  // Measured (bench_cross_entropy, N = 2048, 2 Zen 5 cores, AVX2): keeping the tile beats
  // recomputing logits by 10-35% at V = 8192 and 32000 for C = 256..768, and 256-row tiles beat
  // 64-row ones by 15-25% (the gradient GEMMs then have K = 256 instead of 64); row blocks that
  // are not a multiple of 64 cost up to 45% more (GEMM tails). So: the largest multiple of 64 up
  // to 256 rows whose (rows, V) tile fits in 32 MiB, if that is at least 128 rows (V <= 65536);
  // bigger vocabularies (Qwen's 151936) recompute 8192-entry chunks with 256-row blocks, which
  // measured as fast as a 64-row tile there in a quarter of its memory.
  constexpr int64_t kTileBytes = int64_t(32) << 20;
  const int64_t v = std::max<int64_t>(V, 1);
  const int64_t rows_fit = kTileBytes / (v * int64_t(sizeof(float))) / 64 * 64;
  CrossEntropyPlan p;
  if (rows_fit >= 128) {
    p.row_block = std::min<int64_t>(rows_fit, 256);
    p.vocab_chunk = v;
  } else {
    p.row_block = 256;
    p.vocab_chunk = 8192;
  }
  return p;
}

size_t cross_entropy_scratch_bytes(const CrossEntropyPlan& plan, int64_t C, int64_t V) {
  const int64_t rb = plan.row_block, vc = std::min(plan.vocab_chunk, V);
  return size_t(rb * vc) * sizeof(float)           // logits / G chunk
         + 2 * size_t(rb * C) * sizeof(float)      // gathered h rows, their dh rows
         + size_t(rb) * (2 * sizeof(float) + 2 * sizeof(double) + sizeof(int32_t));  // row stats
}

double cross_entropy_fused_plan(const CrossEntropyPlan& plan, const float* h, const float* W,
                                const int32_t* targets, int64_t N, int64_t C, int64_t V,
                                float grad_scale, float* dh, float* dW, int64_t* n_counted) {
  assert(N >= 0 && C > 0 && V > 0 && plan.row_block > 0 && plan.vocab_chunk > 0);
  const std::vector<int64_t> idx = counted_rows("cross_entropy_fused", targets, N, V);
  const int64_t n_cnt = int64_t(idx.size());
  if (n_counted) *n_counted = n_cnt;
  if (n_cnt == 0) return 0.0;

  const int64_t rb = std::min(plan.row_block, n_cnt);
  const int64_t vc = std::min(plan.vocab_chunk, V);  // also the row stride of the tile
  const int64_t n_chunks = (V + vc - 1) / vc;
  const bool grads = dh != nullptr || dW != nullptr;

  auto tile = scratch<float>(rb * vc);       // (rb, vc) logits, then exp, then G
  std::unique_ptr<float[]> h_gather, dh_gather;  // (rb, C) each, only for broken-up rows
  auto row_m = scratch<float>(rb);           // running max
  auto row_s = scratch<double>(rb);          // running Σ exp(l − m)
  auto row_tl = scratch<float>(rb);          // target logit
  auto row_loss = scratch<double>(rb);
  auto row_t = scratch<int32_t>(rb);         // target
  float* L = tile.get();

  double total = 0.0;
  for (int64_t k0 = 0; k0 < n_cnt; k0 += rb) {
    const int64_t nb = std::min(rb, n_cnt - k0);
    const int64_t* ix = idx.data() + k0;
    const bool contiguous = ix[nb - 1] - ix[0] == nb - 1;
    const float* hb = h + ix[0] * C;
    if (!contiguous) {
      if (!h_gather) h_gather = scratch<float>(rb * C);
      for (int64_t i = 0; i < nb; ++i)
        std::copy(h + ix[i] * C, h + ix[i] * C + C, h_gather.get() + i * C);
      hb = h_gather.get();
    }
    for (int64_t i = 0; i < nb; ++i) {
      row_m[i] = -std::numeric_limits<float>::infinity();
      row_s[i] = 0.0;
      row_t[i] = targets[ix[i]];
      row_tl[i] = std::numeric_limits<float>::quiet_NaN();
    }

    // Pass 1: logits chunk by chunk, running max and sum (the chunk is left holding exp(l − m)).
    for (int64_t v0 = 0; v0 < V; v0 += vc) {
      const int64_t nv = std::min(vc, V - v0);
      gemm_f32(false, true, nb, nv, C, 1.0f, hb, C, W + v0 * C, C, 0.0f, L, vc);
#pragma omp parallel for schedule(static) if (nb * nv >= (int64_t(1) << 15))
      for (int64_t i = 0; i < nb; ++i) {
        float* row = L + i * vc;
        const int64_t t = row_t[i];
        if (t >= v0 && t < v0 + nv) row_tl[i] = row[t - v0];
        const float m_new = std::max(row_m[i], row_max(row, nv));
        const float cs = exp_shift_sum(row, nv, m_new);
        row_s[i] = row_s[i] * std::exp(double(row_m[i]) - double(m_new)) + double(cs);
        row_m[i] = m_new;
      }
    }
    for (int64_t i = 0; i < nb; ++i)
      row_loss[i] = double(row_m[i]) + std::log(row_s[i]) - double(row_tl[i]);
    for (int64_t i = 0; i < nb; ++i) total += row_loss[i];
    if (!grads) continue;

    // Pass 2: G = grad_scale·(softmax − onehot) chunk by chunk, then the gradient products.
    float* dhb = nullptr;
    if (dh) {
      if (contiguous) {
        dhb = dh + ix[0] * C;
      } else {
        if (!dh_gather) dh_gather = scratch<float>(rb * C);
        dhb = dh_gather.get();
      }
    }
    for (int64_t v0 = 0, c = 0; v0 < V; v0 += vc, ++c) {
      const int64_t nv = std::min(vc, V - v0);
      const bool recompute = n_chunks > 1;
      if (recompute) gemm_f32(false, true, nb, nv, C, 1.0f, hb, C, W + v0 * C, C, 0.0f, L, vc);
#pragma omp parallel for schedule(static) if (nb * nv >= (int64_t(1) << 15))
      for (int64_t i = 0; i < nb; ++i) {
        float* row = L + i * vc;
        const float a = float(double(grad_scale) / row_s[i]);
        if (recompute) exp_shift_sum(row, nv, row_m[i]);
        scale_row(row, nv, a);
        const int64_t t = row_t[i];
        if (t >= v0 && t < v0 + nv) row[t - v0] -= grad_scale;
      }
      if (dhb)  // dh_block (nb, C) += G (nb, nv) · W_chunk (nv, C)
        gemm_f32(false, false, nb, C, nv, 1.0f, L, vc, W + v0 * C, C,
                 (contiguous || c > 0) ? 1.0f : 0.0f, dhb, C);
      if (dW)  // dW_chunk (nv, C) += Gᵀ (nv, nb) · h_block (nb, C)
        gemm_f32(true, false, nv, C, nb, 1.0f, L, vc, hb, C, 1.0f, dW + v0 * C, C);
    }
    if (dh && !contiguous)
      for (int64_t i = 0; i < nb; ++i) {
        float* dst = dh + ix[i] * C;
        const float* src = dhb + i * C;
        for (int64_t j = 0; j < C; ++j) dst[j] += src[j];
      }
  }
  return total;
}

double cross_entropy_fused(const float* h, const float* W, const int32_t* targets, int64_t N,
                           int64_t C, int64_t V, float grad_scale, float* dh, float* dW,
                           int64_t* n_counted) {
  return cross_entropy_fused_plan(cross_entropy_plan(N, C, V), h, W, targets, N, C, V, grad_scale,
                                  dh, dW, n_counted);
}

double cross_entropy_ref(const float* h, const float* W, const int32_t* targets, int64_t N,
                         int64_t C, int64_t V, float grad_scale, float* dh, float* dW,
                         int64_t* n_counted) {
  const std::vector<int64_t> idx = counted_rows("cross_entropy_ref", targets, N, V);
  if (n_counted) *n_counted = int64_t(idx.size());
  std::vector<double> logits(static_cast<size_t>(V)), dh_row(static_cast<size_t>(C));
  std::vector<double> dW_acc(dW ? static_cast<size_t>(V * C) : 0, 0.0);
  double total = 0.0;
  for (const int64_t i : idx) {
    const float* hr = h + i * C;
    for (int64_t v = 0; v < V; ++v) {
      double acc = 0.0;
      for (int64_t c = 0; c < C; ++c) acc += double(hr[c]) * double(W[v * C + c]);
      logits[size_t(v)] = acc;
    }
    double m = -std::numeric_limits<double>::infinity();
    for (const double l : logits) m = std::max(m, l);
    double s = 0.0;
    for (const double l : logits) s += std::exp(l - m);
    const double lse = m + std::log(s);
    const int64_t t = targets[i];
    total += lse - logits[size_t(t)];
    if (!dh && !dW) continue;
    std::fill(dh_row.begin(), dh_row.end(), 0.0);
    for (int64_t v = 0; v < V; ++v) {
      const double g = double(grad_scale) * (std::exp(logits[size_t(v)] - lse) - (v == t ? 1.0 : 0.0));
      for (int64_t c = 0; c < C; ++c) {
        dh_row[size_t(c)] += g * double(W[v * C + c]);
        if (dW) dW_acc[size_t(v * C + c)] += g * double(hr[c]);
      }
    }
    if (dh)
      for (int64_t c = 0; c < C; ++c) dh[i * C + c] += float(dh_row[size_t(c)]);
  }
  if (dW)
    for (int64_t k = 0; k < V * C; ++k) dW[k] += float(dW_acc[size_t(k)]);
  return total;
}

}  // namespace qwen::ops
