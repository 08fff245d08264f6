// ops/attention_backward.cpp — the flash-attention training backward: its tiling driver (work
// split over threads, staging of q / dout / lse / D, the per-tile recomputation of P from lse,
// the dq reduction), the portable inner kernels it falls back to without AVX2, and the naive
// reference.
//
// Work item = (kv head g, n_sub consecutive key tiles of kAttnBk keys). The item holds each
// tile's K and V transposed (D, Bk), its K rows (Bk, D) and its dk, dv accumulators (Bk, D), and
// walks every query block that can see its keys (causal: queries t >= first key). A query block
// holds Bq tokens × the G = H/KV query heads of g, row r = token t0 + r/G, head g·G + r%G
// (M = Bq·G rows, about 64), staged once per call in that row order. Per (query block, key tile),
// with Qs = scale·log2(e)·Q:
//   S = Qs·Kᵀ, dP = dO·Vᵀ  (M, Bk)            the forward's score kernel
//   P = exp2(S − lse·log2 e), dS = P∘(dP − D)  grad_tile
//   dV += Pᵀ·dO, dK += dSᵀ·Qs                  tn_acc (dK is rescaled by ln 2 at the end)
//   dQt += dS·K                                the forward's P·V kernel, into an f32 tile that
//                                              the item's key tiles share
// and after the item's key tiles, dQt is added to the thread's f64 dq partial.
// dk / dv rows of an item have one writer. dq rows get contributions from every key tile, so
// each thread sums into its own (KV, T, G, D) partial, in double so that how the items are split
// over threads hardly shows, and the partials are added in thread order at the end (times scale).
// Items go to threads by a fixed greedy split (largest causal work first, to the least loaded
// thread), so a given thread count always does the same sums in the same order.
#include "ops/attention_backward.h"

#include <omp.h>

#include <algorithm>
#include <cassert>
#include <cmath>
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

[[noreturn]] void bad_shape(const char* fn, const std::string& what) {
  throw Error(std::string("ops::") + fn + ": " + what);
}

void check_shape(const AttnShape& s, int64_t kv_stride, const char* fn) {
  if (s.T < 0 || s.H <= 0 || s.KV <= 0 || s.D <= 0)
    bad_shape(fn, "bad shape T=" + std::to_string(s.T) + " H=" + std::to_string(s.H) +
                      " KV=" + std::to_string(s.KV) + " D=" + std::to_string(s.D) +
                      "; T must be >= 0 and H, KV, D > 0");
  if (s.pos0 != 0)
    bad_shape(fn, "pos0 = " + std::to_string(s.pos0) +
                      " but the training backward covers self-attention from position 0 only; "
                      "pass pos0 = 0");
  if (s.H % s.KV != 0)
    bad_shape(fn, "num_attention_heads " + std::to_string(s.H) +
                      " is not a multiple of num_key_value_heads " + std::to_string(s.KV) +
                      "; fix the model config");
  if (kv_stride < s.KV * s.D)
    bad_shape(fn, "kv_stride " + std::to_string(kv_stride) + " < KV*D = " +
                      std::to_string(s.KV * s.D) + "; K/V rows of one position must not overlap");
}

// Query tokens per block: a power of two dividing kAttnBk (so blocks start on the causal
// diagonal of every key block) with Bq·G <= 64 rows where possible.
int64_t query_block(int64_t G) {
  int64_t bq = kAttnBk;
  while (bq > 1 && bq * G > 64) bq /= 2;
  return bq;
}

// Scratch that only grows: per worker thread the tiles, per calling thread the shared buffers
// (staged rows, dq partials, the item split).
thread_local std::vector<float> tl_tiles, tl_stage;
thread_local std::vector<double> tl_dq_part;
thread_local std::vector<int32_t> tl_n_valid, tl_owner;
thread_local std::vector<int64_t> tl_loads;

template <class X>
X* workspace(std::vector<X>& buf, int64_t n) {
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// ---- portable inner kernels (plain loops; the reference for the AVX2 ones) --------------------

void grad_tile_portable(float* S, float* dP, int64_t M, int64_t ncols, const int32_t* n_valid,
                        const float* lse2, const float* Dv) {
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * kAttnBk;
    float* dp = dP + r * kAttnBk;
    const int64_t nv = std::min<int64_t>(n_valid[r], ncols);
    for (int64_t j = 0; j < nv; ++j) {
      const float p = std::exp2(s[j] - lse2[r]);
      s[j] = p;
      dp[j] = p * (dp[j] - Dv[r]);
    }
    for (int64_t j = std::max<int64_t>(nv, 0); j < ncols; ++j) s[j] = dp[j] = 0.0f;
  }
}

void add_to_f64_portable(double* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += double(src[i]);
}

void tn_acc_portable(const float* A, int64_t M, int64_t nk, const float* B, int64_t D, float* C) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t j = 0; j < nk; ++j) {
      const float a = A[r * kAttnBk + j];
      float* c = C + j * D;
      const float* b = B + r * D;
      for (int64_t d = 0; d < D; ++d) c[d] += a * b[d];
    }
}

// ---- the tiled driver ---------------------------------------------------------------------------

void backward_with(const detail::AttnKernels& fk, const detail::AttnBwdKernels& bk, const float* q,
                   const float* k, const float* v, int64_t kv_stride, const float* out,
                   const float* dout, const float* lse, float* dq, float* dk, float* dv,
                   const AttnShape& s) {
  check_shape(s, kv_stride, "flash_attention_backward");
  if (s.T == 0) return;
  const int64_t T = s.T, H = s.H, KV = s.KV, D = s.D, G = H / KV;
  const int64_t Bq = query_block(G), Mmax = Bq * G;
  const int n_max = omp_get_max_threads();
  const int64_t n_kb = (T + kAttnBk - 1) / kAttnBk;
  // Key tiles per item: several share one f32 dq tile (fewer f64 partial updates) and each
  // staged query block, as long as there are still >= 16 items to balance. From the shape only,
  // not the thread count, so that dq's f32 sums are the same whatever the thread count.
  int64_t n_sub = 4;
  while (n_sub > 1 && KV * ((n_kb + n_sub - 1) / n_sub) < 16) n_sub /= 2;
  const int64_t n_sb = (n_kb + n_sub - 1) / n_sub, n_items = KV * n_sb;
  const int64_t n_dq = T * H * D;  // one thread's dq partial, (KV, T, G, D)
  const float qscale = s.scale * kLog2e;

  // Staged once, in the order of the blocks' rows, (KV, T, G, ·): Qs = scale·log2(e)·q and dO
  // (D floats each), lse in log2 units and D_i = rowsum(dout ∘ out) (one float each).
  const int64_t n_rows = T * H;
  float* const Qs_all = workspace(tl_stage, 2 * n_rows * D + 2 * n_rows);
  float* const dOs_all = Qs_all + n_rows * D;
  float* const lse2_all = dOs_all + n_rows * D;
  float* const Dv_all = lse2_all + n_rows;
  double* const dq_part = workspace(tl_dq_part, int64_t(n_max) * n_dq);
  int32_t* const owner = workspace(tl_owner, n_items);
  int64_t* const loads = workspace(tl_loads, n_max);

  // Items in order of decreasing causal work (key tile kb is seen by T − kb·Bk queries), each
  // to the least loaded of n_max threads (lowest id on ties): fixed for a given thread count.
  std::fill(loads, loads + n_max, int64_t(0));
  for (int64_t it = 0; it < n_items; ++it) {
    const int th = int(std::min_element(loads, loads + n_max) - loads);
    owner[it] = th;
    const int64_t kb0 = (it / KV) * n_sub, kb1 = std::min(n_kb, kb0 + n_sub);
    for (int64_t kb = kb0; kb < kb1; ++kb) loads[th] += T - kb * kAttnBk;
  }

  // Three barriers in all (after staging, before the dq reduction, the region's end): few,
  // since on a loaded machine each one can cost a scheduler time slice.
#pragma omp parallel
  {
    const int n_th = omp_get_num_threads(), tid = omp_get_thread_num();
    assert(n_th <= n_max);
    double* const my_dq = dq_part + int64_t(tid) * n_dq;
    std::fill(my_dq, my_dq + n_dq, 0.0);

#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t src = t * H + h, dst = ((h / G) * T + t) * G + h % G;
        const float* qr = q + src * D;
        const float* gr = dout + src * D;
        const float* orow = out + src * D;
        float* qs = Qs_all + dst * D;
        float* gs = dOs_all + dst * D;
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) {
          qs[d] = qr[d] * qscale;
          gs[d] = gr[d];
          dot += gr[d] * orow[d];
        }
        lse2_all[dst] = lse[h * T + t] * kLog2e;
        Dv_all[dst] = dot;
      }

    // Per thread, per key tile of the item: Kt, Vt (D, Bk), dKa, dVa, K rows Kp (Bk, D); and dQt
    // (Mmax, D), S, dP (Mmax, Bk).
    const int64_t per_sub = 5 * D * kAttnBk;
    float* const subs = workspace(tl_tiles, n_sub * per_sub + Mmax * D + 2 * Mmax * kAttnBk);
    float* const dQt = subs + n_sub * per_sub;
    float* const S = dQt + Mmax * D;
    float* const dP = S + Mmax * kAttnBk;
    int32_t* const n_valid = workspace(tl_n_valid, Mmax);

    for (int64_t it = 0; it < n_items; ++it) {
      if (owner[it] % n_th != tid) continue;  // a smaller team than planned: still fixed
      const int64_t g = it % KV;
      const int64_t kb0 = (it / KV) * n_sub, kb1 = std::min(n_kb, kb0 + n_sub);
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        float* const Kt = subs + (kb - kb0) * per_sub;
        const int64_t k0 = kb * kAttnBk, nk = std::min(kAttnBk, T - k0);
        fk.transpose_k(k + k0 * kv_stride + g * D, kv_stride, nk, D, Kt);
        fk.transpose_k(v + k0 * kv_stride + g * D, kv_stride, nk, D, Kt + D * kAttnBk);
        std::fill(Kt + 2 * D * kAttnBk, Kt + 4 * D * kAttnBk, 0.0f);  // dKa, dVa
        float* const Kp = Kt + 4 * D * kAttnBk;
        for (int64_t j = 0; j < nk; ++j)
          std::copy_n(k + (k0 + j) * kv_stride + g * D, D, Kp + j * D);
      }

      // Bq divides kAttnBk, so t0 = kb0·Bk is a block start.
      for (int64_t t0 = kb0 * kAttnBk; t0 < T; t0 += Bq) {
        const int64_t t1 = std::min(T, t0 + Bq), M = (t1 - t0) * G;
        const int64_t row0 = (g * T + t0) * G;  // the block's first staged row
        const float* Qs = Qs_all + row0 * D;
        const float* dOs = dOs_all + row0 * D;
        std::fill(dQt, dQt + M * D, 0.0f);
        for (int64_t kb = kb0; kb < kb1; ++kb) {
          const int64_t k0 = kb * kAttnBk, nk = std::min(kAttnBk, T - k0);
          if (k0 >= t1) break;  // no query of the block sees this tile (nor the next)
          float* const Kt = subs + (kb - kb0) * per_sub;
          float* const Vt = Kt + D * kAttnBk;
          float* const dKa = Vt + D * kAttnBk;
          float* const dVa = dKa + kAttnBk * D;
          const float* const Kp = dVa + kAttnBk * D;
          const int64_t ncols = std::min(nk, t1 - k0);  // keys past t1−1: masked for every row
          for (int64_t t = t0, r = 0; t < t1; ++t)
            for (int64_t i = 0; i < G; ++i, ++r) n_valid[r] = int32_t(std::min(t - k0 + 1, nk));
          fk.scores(Qs, M, D, Kt, S);  // log2 units
          fk.scores(dOs, M, D, Vt, dP);
          bk.grad_tile(S, dP, M, ncols, n_valid, lse2_all + row0, Dv_all + row0);  // P, dS
          bk.tn_acc(S, M, ncols, dOs, D, dVa);
          bk.tn_acc(dP, M, ncols, Qs, D, dKa);
          fk.pv(dP, M, ncols, Kp, D, D, dQt);
        }
        bk.add_to_f64(my_dq + row0 * D, dQt, M * D);
      }

      for (int64_t kb = kb0; kb < kb1; ++kb) {
        const float* dKa = subs + (kb - kb0) * per_sub + 2 * D * kAttnBk;
        const float* dVa = dKa + kAttnBk * D;
        const int64_t k0 = kb * kAttnBk, nk = std::min(kAttnBk, T - k0);
        for (int64_t j = 0; j < nk; ++j) {
          float* dkr = dk + (k0 + j) * kv_stride + g * D;
          float* dvr = dv + (k0 + j) * kv_stride + g * D;
          for (int64_t d = 0; d < D; ++d) {
            dkr[d] += kLn2 * dKa[j * D + d];  // dK = scale·dSᵀ·Q = ln 2·dSᵀ·Qs
            dvr[d] += dVa[j * D + d];
          }
        }
      }
    }

#pragma omp barrier
#pragma omp for schedule(static) nowait
    for (int64_t th = 0; th < T * H; ++th) {  // dq += scale · Σ_threads partial, in thread order
      const int64_t t = th / H, h = th % H;
      const int64_t off = ((h / G) * T + t) * G * D + (h % G) * D;
      float* o = dq + th * D;
      for (int64_t d0 = 0; d0 < D; d0 += 64) {  // 64 columns at a time, loops that vectorise
        const int64_t nd = std::min<int64_t>(64, D - d0);
        double acc[64];
        std::copy_n(dq_part + off + d0, nd, acc);
        for (int p = 1; p < n_th; ++p) {
          const double* part = dq_part + int64_t(p) * n_dq + off + d0;
          for (int64_t d = 0; d < nd; ++d) acc[d] += part[d];
        }
        for (int64_t d = 0; d < nd; ++d)  // one rounding
          o[d0 + d] = float(double(o[d0 + d]) + double(s.scale) * acc[d]);
      }
    }
  }
}

}  // namespace

namespace detail {

const AttnBwdKernels& attn_bwd_kernels_portable() {
  static const AttnBwdKernels k{grad_tile_portable, tn_acc_portable, add_to_f64_portable};
  return k;
}

void flash_attention_backward_with(AttnBwdIsa isa, const float* q, const float* k, const float* v,
                                   int64_t kv_stride, const float* out, const float* dout,
                                   const float* lse, float* dq, float* dk, float* dv,
                                   const AttnShape& s) {
  if (isa == AttnBwdIsa::avx2)
    backward_with(attn_kernels_avx2(), attn_bwd_kernels_avx2(), q, k, v, kv_stride, out, dout, lse,
                  dq, dk, dv, s);
  else
    backward_with(attn_kernels_portable(), attn_bwd_kernels_portable(), q, k, v, kv_stride, out,
                  dout, lse, dq, dk, dv, s);
}

}  // namespace detail

void flash_attention_backward(const float* q, const float* k, const float* v, int64_t kv_stride,
                              const float* out, const float* dout, const float* lse, float* dq,
                              float* dk, float* dv, const AttnShape& s) {
  detail::flash_attention_backward_with(
      cpu_features().avx2 ? detail::AttnBwdIsa::avx2 : detail::AttnBwdIsa::portable, q, k, v,
      kv_stride, out, dout, lse, dq, dk, dv, s);
}

// ---- naive reference ----------------------------------------------------------------------------

void attention_backward_ref(const float* q, const float* k, const float* v, int64_t kv_stride,
                            const float* /*out*/, const float* dout, const float* /*lse*/,
                            float* dq, float* dk, float* dv, const AttnShape& s) {
  check_shape(s, kv_stride, "attention_backward_ref");
  const int64_t T = s.T, H = s.H, D = s.D, G = s.H / s.KV;
  if (T == 0) return;
  // P and dS, (H, T, T): row (h, t) holds keys 0 .. t, the rest 0.
  std::vector<float> P(size_t(H * T * T), 0.0f), dS(size_t(H * T * T), 0.0f);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ht = 0; ht < H * T; ++ht) {
    const int64_t h = ht / T, t = ht % T, g = h / G, n = t + 1;
    const float* qr = q + (t * H + h) * D;
    const float* gr = dout + (t * H + h) * D;
    float* p = P.data() + ht * T;
    float* ds = dS.data() + ht * T;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const float* kr = k + j * kv_stride + g * D;
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) dot += qr[d] * kr[d];
      p[j] = dot * s.scale;
      mx = std::max(mx, p[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
    for (int64_t j = 0; j < n; ++j) p[j] /= sum;
    float Di = 0.0f;  // Σ_j P_j dP_j
    for (int64_t j = 0; j < n; ++j) {
      const float* vr = v + j * kv_stride + g * D;
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) dot += gr[d] * vr[d];
      ds[j] = dot;  // dP for now
      Di += p[j] * dot;
    }
    for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - Di);
    float* o = dq + (t * H + h) * D;
    for (int64_t j = 0; j < n; ++j) {
      const float* kr = k + j * kv_stride + g * D;
      for (int64_t d = 0; d < D; ++d) o[d] += s.scale * ds[j] * kr[d];
    }
  }

  // dk, dv of key j, kv head g: sums over the group's heads and the queries t >= j.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t jg = 0; jg < T * s.KV; ++jg) {
    const int64_t j = jg / s.KV, g = jg % s.KV;
    float* dkr = dk + j * kv_stride + g * D;
    float* dvr = dv + j * kv_stride + g * D;
    for (int64_t h = g * G; h < (g + 1) * G; ++h)
      for (int64_t t = j; t < T; ++t) {
        const float p = P[size_t((h * T + t) * T + j)], ds = dS[size_t((h * T + t) * T + j)];
        const float* qr = q + (t * H + h) * D;
        const float* gr = dout + (t * H + h) * D;
        for (int64_t d = 0; d < D; ++d) {
          dkr[d] += s.scale * ds * qr[d];
          dvr[d] += p * gr[d];
        }
      }
  }
}

}  // namespace qwen::ops
