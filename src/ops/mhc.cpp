// ops/mhc.cpp — mHC and HC site kernels (see ops/mhc.h for the contracts and docs/mhc.md for the
// math): the coefficient forward (fused Σx² + projection, gates, Sinkhorn), pre-aggregation, post
// merge, all their backwards (Sinkhorn unrolled through every normalisation), init and the Amax
// gain metric. One scalar body per function, templated on float / double; float calls go to the
// AVX2 loops of mhc_avx2.cpp where the CPU has them, and to gemm_f32 for the two projection
// products of the backward.
#include "ops/mhc.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "core/cpu.h"
#include "core/dtype.h"
#include "ops/matmul.h"
#include "qwen/error.h"

namespace qwen::ops {

namespace detail {
// mhc_avx2.cpp
void mhc_project_sumsq_avx2(const float* X, int64_t rows, int64_t cols, const float* phi,
                            const uint16_t* phi_h, const float* phi_scale, int64_t n_k,
                            float* proj, float* sumsq);
void mhc_pack_phi_half_avx2(const float* phi, int64_t rows, int64_t cols, uint16_t* h,
                            float* scale);
void mhc_pre_aggregate_avx2(const float* X, const float* h_pre, int64_t n_tok, int64_t n, int64_t C,
                            float* u);
void mhc_post_merge_avx2(const float* X, const float* h_res, const float* h_post, const float* F,
                         int64_t n_tok, int64_t n, int64_t C, float* X_out);
void mhc_pre_aggregate_backward_avx2(const float* X, const float* h_pre, const float* g_u,
                                     int64_t n_tok, int64_t n, int64_t C, float* g_X,
                                     float* g_h_pre);
void mhc_post_merge_backward_avx2(const float* X, const float* h_res, const float* h_post,
                                  const float* F, const float* G, int64_t n_tok, int64_t n,
                                  int64_t C, float* g_X, float* g_h_res, float* g_h_post,
                                  float* g_F);
void mhc_stream_init_avx2(const float* X, const float* G, const float* g_u, const float* h_res,
                          const float* h_pre, const float* coef, int64_t count, int64_t n,
                          int64_t C, float* g_X);
void mhc_stream_grad_block_avx2(const float* X, const float* gm, const float* coef,
                                const float* phi_p, int64_t count, int64_t n, int64_t C,
                                float* g_X, float* gphi_p, const float* next_X,
                                const float* next_G, const float* next_gu, int64_t next_count);
void mhc_stream_init_dots_avx2(const float* X, const float* G, const float* g_u, const float* h_res,
                               const float* h_pre, int64_t count, int64_t n, int64_t C,
                               float* g_X, float* g_h_res, float* g_h_pre);
void mhc_merge_head_avx2(const float* G, const float* F, const float* h_post, int64_t count,
                         int64_t n, int64_t C, float* g_F, float* g_h_post);
int64_t mhc_packed_phi_size(int64_t n, int64_t C);
void mhc_pack_phi_avx2(const float* phi, int64_t n, int64_t C, float* out);
void mhc_unpack_add_phi_avx2(const float* parts, int n_parts, int64_t stride, int64_t n, int64_t C,
                             int64_t blk0, int64_t blk1, float* g_phi);
void mhc_sinkhorn8_forward_avx2(const float* Z, float* H, int count, int64_t n, int iters);
void mhc_sinkhorn8_backward_avx2(const float* Z, const float* g_H, float* g_Z, int count, int64_t n,
                                 int iters, float* work);
}  // namespace detail

namespace {

// Tokens (or rows) times work above which the scalar loops split over the op threads.
constexpr int64_t kParallelMinWork = int64_t(1) << 18;

// body(i) for i in [0, count), over the op threads if par; serial calls (the decode step's T = 1)
// do not enter OpenMP at all.
template <class F>
void for_each_index(int64_t count, bool par, F&& body) {
  if (par) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i) body(i);
  } else {
    for (int64_t i = 0; i < count; ++i) body(i);
  }
}

template <class T>
bool use_avx2(bool simd) {
  if constexpr (std::is_same_v<T, float>)
    return simd && cpu_features().avx2;
  else
    return false;
}

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

// Which of the three gates coefficient k belongs to: 0 pre, 1 post, 2 res.
inline int group_of(int64_t k, int64_t n) { return k < n ? 0 : k < 2 * n ? 1 : 2; }

// proj (rows, n_k) = X (rows, cols)·phiᵀ and sumsq (rows) = Σ x², accumulated in double.
template <class T>
void project_sumsq_scalar(const T* X, int64_t rows, int64_t cols, const T* phi, int64_t n_k,
                          T* proj, T* sumsq) {
  const bool par = rows > 1 && rows * cols * n_k >= kParallelMinWork;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = X + r * cols;
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += double(x[c]) * double(x[c]);
    sumsq[r] = T(s);
    for (int64_t k = 0; k < n_k; ++k) {
      const T* w = phi + k * cols;
      double a = 0;
      for (int64_t c = 0; c < cols; ++c) a += double(w[c]) * double(x[c]);
      proj[r * n_k + k] = T(a);
    }
  }
}

// The rows / cols / phi rows of the projection in each mode (HC projects each stream alone).
struct ProjShape {
  int64_t rows, cols, n_k;
};
ProjShape proj_shape(const MhcDims& d, int64_t n_tok) {
  if (d.mode == HcMode::Mhc) return {n_tok, d.n * d.C, d.K()};
  return {n_tok * d.n, d.C, d.n + 2};
}

// mHC logits of one token: z (K) = r·(α_group ⊙ proj) + bias. The backward recomputes z_res
// with this same function, so it sees the forward's exact values.
template <class T>
void mhc_logits(int64_t n, int64_t K, T r, const T* proj, const MhcParams<T>& p, T* z) {
  for (int64_t k = 0; k < K; ++k) z[k] = r * (p.alpha[group_of(k, n)] * proj[k]) + p.bias[k];
}

// mHC gates of tokens [t0, t0 + count), count <= 8, from out.r and out.proj: z, h_pre, h_post and
// H_res (one Sinkhorn per token, or the AVX2 one with a token per lane).
template <class T>
void mhc_gates_group(const MhcDims& d, const MhcParams<T>& p, const MhcCoefs<T>& out, int64_t t0,
                     int64_t count, bool vec) {
  const int64_t n = d.n, K = d.K(), nn = n * n;
  T zres[8 * kMhcMaxStreams * kMhcMaxStreams];
  for (int64_t l = 0; l < count; ++l) {
    const int64_t t = t0 + l;
    T z[kMhcMaxStreams * kMhcMaxStreams + 2 * kMhcMaxStreams];
    mhc_logits(n, K, out.r[t * n], out.proj + t * K, p, z);
    for (int64_t i = 0; i < n; ++i) {
      out.h_pre[t * n + i] = sigmoid(z[i]);
      out.h_post[t * n + i] = T(2) * sigmoid(z[n + i]);
    }
    if (vec)
      std::copy(z + 2 * n, z + K, zres + l * nn);
    else
      sinkhorn_forward(z + 2 * n, out.h_res + t * nn, n, d.iters);
  }
  if constexpr (std::is_same_v<T, float>)
    if (vec) detail::mhc_sinkhorn8_forward_avx2(zres, out.h_res + t0 * nn, int(count), n, d.iters);
}

template <class T>
void coefficients_forward_impl(const MhcDims& d, const MhcParams<T>& p, const T* X, int64_t n_tok,
                               const MhcCoefs<T>& out, bool simd) {
  d.validate("mhc_coefficients_forward");
  const int64_t n = d.n, K = d.K();
  const ProjShape ps = proj_shape(d, n_tok);
  // Σx² of each projection row goes into r first (mHC: token t's at r[t]; HC: (T, n) in place).
  if (use_avx2<T>(simd)) {
    if constexpr (std::is_same_v<T, float>) {
      const bool half = d.mode == HcMode::Mhc && p.phi_half;
      detail::mhc_project_sumsq_avx2(X, ps.rows, ps.cols, p.phi, half ? p.phi_half : nullptr,
                                     p.phi_half_scale, ps.n_k, out.proj, out.r);
    }
  } else {
    project_sumsq_scalar(X, ps.rows, ps.cols, p.phi, ps.n_k, out.proj, out.r);
  }

  if (d.mode == HcMode::Mhc) {
    // r: Σx² of token t sits at r[t]; walk back to front so no value is overwritten early.
    const T inv_cols = T(1) / T(n * d.C);
    for (int64_t t = n_tok - 1; t >= 0; --t) {
      const T s = out.r[t];
      const T r = T(1) / std::sqrt(s * inv_cols + T(d.eps));
      for (int64_t j = 0; j < n; ++j) out.r[t * n + j] = r;
    }
    // Groups of 8 tokens: the AVX2 Sinkhorn runs one token per lane.
    const int64_t n_groups = (n_tok + 7) / 8;
    const bool vec = use_avx2<T>(simd);
    const bool par = n_tok > 8 && n_tok * K * d.iters >= (int64_t(1) << 14);
    for_each_index(n_groups, par, [&](int64_t gi) {
      const int64_t t0 = gi * 8;
      mhc_gates_group(d, p, out, t0, std::min<int64_t>(8, n_tok - t0), vec);
    });
  } else {
    const T inv_cols = T(1) / T(d.C);
    const int64_t q = n + 2;
    for (int64_t t = 0; t < n_tok; ++t) {
      for (int64_t j = 0; j < n; ++j) {
        const T r = T(1) / std::sqrt(out.r[t * n + j] * inv_cols + T(d.eps));
        out.r[t * n + j] = r;
        const T* pr = out.proj + (t * n + j) * q;
        out.h_pre[t * n + j] = p.alpha[0] * std::tanh(r * pr[0]) + p.bias[j];
        out.h_post[t * n + j] = p.alpha[1] * std::tanh(r * pr[1]) + p.bias[n + j];
        for (int64_t i = 0; i < n; ++i)
          out.h_res[t * n * n + i * n + j] =
              p.alpha[2] * std::tanh(r * pr[2 + i]) + p.bias[2 * n + i * n + j];
      }
    }
  }
}

template <class T>
void pre_aggregate_impl(const MhcDims& d, const T* X, const T* h_pre, int64_t n_tok, T* u,
                        bool simd) {
  d.validate("mhc_pre_aggregate");
  const int64_t n = d.n, C = d.C;
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2<T>(simd)) return detail::mhc_pre_aggregate_avx2(X, h_pre, n_tok, n, C, u);
  }
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t c = 0; c < C; ++c) {
      T acc = 0;
      for (int64_t j = 0; j < n; ++j) acc += h_pre[t * n + j] * X[(t * n + j) * C + c];
      u[t * C + c] = acc;
    }
}

template <class T>
void post_merge_impl(const MhcDims& d, const T* X, const T* h_res, const T* h_post, const T* F,
                     int64_t n_tok, T* X_out, bool simd) {
  d.validate("mhc_post_merge");
  const int64_t n = d.n, C = d.C;
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2<T>(simd))
      return detail::mhc_post_merge_avx2(X, h_res, h_post, F, n_tok, n, C, X_out);
  }
  for (int64_t t = 0; t < n_tok; ++t) {
    const T* H = h_res + t * n * n;
    for (int64_t c = 0; c < C; ++c) {
      T xs[kMhcMaxStreams];  // column c of every stream, read before any write (X_out may be X)
      for (int64_t j = 0; j < n; ++j) xs[j] = X[(t * n + j) * C + c];
      const T f = F[t * C + c];
      for (int64_t i = 0; i < n; ++i) {
        T acc = h_post[t * n + i] * f;
        for (int64_t j = 0; j < n; ++j) acc += H[i * n + j] * xs[j];
        X_out[(t * n + i) * C + c] = acc;
      }
    }
  }
}

// mHC, AVX2, more than 4 tokens: one site's input side per group of 8 tokens while the group's
// streams (8·n·C floats) stay in cache: [the previous site's post merge into X_out,] Σx² and the
// projection, the gates and Sinkhorn, and u = Σ h_pre·X. The same kernels on the same tokens as
// the separate calls, so the values are bit for bit theirs. Xs is the site's input (X_out when
// merging: then Xprev, prev and F are the previous site's input, coefficients and sub-layer output).
void fused_site_in(const MhcDims& d, const MhcParams<float>& p, const float* Xs, int64_t n_tok,
                   const MhcCoefs<float>& out, float* u, const float* Xprev,
                   const MhcCoefs<float>* prev, const float* F, float* X_out) {
  const int64_t n = d.n, C = d.C, nc = n * C, K = d.K(), nn = n * n, n_groups = (n_tok + 7) / 8;
  const float inv_cols = 1.0f / float(nc);
  const bool par = n_tok > 8 && n_tok * K * nc >= kParallelMinWork;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t gi = 0; gi < n_groups; ++gi) {
    const int64_t t0 = gi * 8, count = std::min<int64_t>(8, n_tok - t0);
    if (prev)
      detail::mhc_post_merge_avx2(Xprev + t0 * nc, prev->h_res + t0 * nn, prev->h_post + t0 * n,
                                  F + t0 * C, count, n, C, X_out + t0 * nc);
    const float* Xg = Xs + t0 * nc;
    float sq[8];
    detail::mhc_project_sumsq_avx2(Xg, count, nc, p.phi, p.phi_half, p.phi_half_scale, K,
                                   out.proj + t0 * K, sq);
    for (int64_t l = 0; l < count; ++l) {
      const float r = 1.0f / std::sqrt(sq[l] * inv_cols + float(d.eps));
      for (int64_t j = 0; j < n; ++j) out.r[(t0 + l) * n + j] = r;
    }
    mhc_gates_group(d, p, out, t0, count, true);
    detail::mhc_pre_aggregate_avx2(Xg, out.h_pre + t0 * n, count, n, C, u + t0 * C);
  }
}

template <class T>
void site_in_impl(const MhcDims& d, const MhcParams<T>& p, const T* X, int64_t n_tok,
                  const MhcCoefs<T>& out, T* u) {
  d.validate("mhc_site_in");
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2<T>(true) && d.mode == HcMode::Mhc && n_tok > 4)
      return fused_site_in(d, p, X, n_tok, out, u, nullptr, nullptr, nullptr, nullptr);
  }
  coefficients_forward_impl(d, p, X, n_tok, out, true);
  pre_aggregate_impl(d, X, out.h_pre, n_tok, u, true);
}

template <class T>
void site_merge_in_impl(const MhcDims& d, const T* X, const MhcCoefs<T>& prev, const T* F,
                        int64_t n_tok, T* X_out, const MhcParams<T>& p_next,
                        const MhcCoefs<T>& next, T* u) {
  d.validate("mhc_site_merge_in");
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2<T>(true) && d.mode == HcMode::Mhc && n_tok > 4)
      return fused_site_in(d, p_next, X_out, n_tok, next, u, X, &prev, F, X_out);
  }
  post_merge_impl(d, X, prev.h_res, prev.h_post, F, n_tok, X_out, true);
  site_in_impl(d, p_next, X_out, n_tok, next, u);
}

template <class T>
void pre_aggregate_backward_impl(const MhcDims& d, const T* X, const T* h_pre, const T* g_u,
                                 int64_t n_tok, T* g_X, T* g_h_pre, bool simd) {
  d.validate("mhc_pre_aggregate_backward");
  const int64_t n = d.n, C = d.C;
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2<T>(simd))
      return detail::mhc_pre_aggregate_backward_avx2(X, h_pre, g_u, n_tok, n, C, g_X, g_h_pre);
  }
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t j = 0; j < n; ++j) {
      const T* x = X + (t * n + j) * C;
      const T* gu = g_u + t * C;
      const T h = h_pre[t * n + j];
      if (g_h_pre) {
        T acc = 0;
        for (int64_t c = 0; c < C; ++c) acc += gu[c] * x[c];
        g_h_pre[t * n + j] += acc;
      }
      if (g_X)
        for (int64_t c = 0; c < C; ++c) g_X[(t * n + j) * C + c] += h * gu[c];
    }
}

template <class T>
void post_merge_backward_impl(const MhcDims& d, const T* X, const T* h_res, const T* h_post,
                              const T* F, const T* G, int64_t n_tok, T* g_X, T* g_h_res,
                              T* g_h_post, T* g_F, bool simd) {
  d.validate("mhc_post_merge_backward");
  const int64_t n = d.n, C = d.C;
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2<T>(simd))
      return detail::mhc_post_merge_backward_avx2(X, h_res, h_post, F, G, n_tok, n, C, g_X, g_h_res,
                                                  g_h_post, g_F);
  }
  for (int64_t t = 0; t < n_tok; ++t) {
    const T* H = h_res + t * n * n;
    const T* g = G + t * n * C;
    const T* x = X + t * n * C;
    const T* f = F + t * C;
    for (int64_t i = 0; i < n; ++i) {
      const T* gi = g + i * C;
      if (g_h_post) {
        T acc = 0;
        for (int64_t c = 0; c < C; ++c) acc += gi[c] * f[c];
        g_h_post[t * n + i] += acc;
      }
      if (g_h_res)
        for (int64_t j = 0; j < n; ++j) {
          T acc = 0;
          for (int64_t c = 0; c < C; ++c) acc += gi[c] * x[j * C + c];
          g_h_res[t * n * n + i * n + j] += acc;
        }
      if (g_F)
        for (int64_t c = 0; c < C; ++c) g_F[t * C + c] += h_post[t * n + i] * gi[c];
      if (g_X)
        for (int64_t j = 0; j < n; ++j)
          for (int64_t c = 0; c < C; ++c) g_X[(t * n + j) * C + c] += H[i * n + j] * gi[c];
    }
  }
}

// g_X (rows, cols) += g_m (rows, n_k)·phi (n_k, cols) − coef[row]·X[row];
// g_phi (n_k, cols) += g_mᵀ·X.
template <class T>
void project_backward(const T* X, int64_t rows, int64_t cols, const T* phi, int64_t n_k,
                      const T* g_m, const T* coef, T* g_X, T* g_phi, bool simd) {
  if constexpr (std::is_same_v<T, float>) {
    if (simd) {
      if (g_X) gemm_f32(false, false, rows, cols, n_k, 1.0f, g_m, n_k, phi, cols, 1.0f, g_X, cols);
      if (g_phi) gemm_f32(true, false, n_k, cols, rows, 1.0f, g_m, n_k, X, cols, 1.0f, g_phi, cols);
      if (g_X) {
        const bool par = rows > 1 && rows * cols >= kParallelMinWork;
#pragma omp parallel for schedule(static) if (par)
        for (int64_t r = 0; r < rows; ++r) {
          const float a = coef[r];
          for (int64_t c = 0; c < cols; ++c) g_X[r * cols + c] -= a * X[r * cols + c];
        }
      }
      return;
    }
  }
  if (g_X)
    for (int64_t r = 0; r < rows; ++r) {
      T* gx = g_X + r * cols;
      const T* x = X + r * cols;
      for (int64_t k = 0; k < n_k; ++k) {
        const T gm = g_m[r * n_k + k];
        const T* w = phi + k * cols;
        for (int64_t c = 0; c < cols; ++c) gx[c] += gm * w[c];
      }
      for (int64_t c = 0; c < cols; ++c) gx[c] -= coef[r] * x[c];
    }
  if (g_phi)
    for (int64_t k = 0; k < n_k; ++k) {
      T* gw = g_phi + k * cols;
      for (int64_t r = 0; r < rows; ++r) {
        const T gm = g_m[r * n_k + k];
        const T* x = X + r * cols;
        for (int64_t c = 0; c < cols; ++c) gw[c] += gm * x[c];
      }
    }
}

template <class T>
void coefficients_backward_impl(const MhcDims& d, const MhcParams<T>& p, const T* X,
                                const MhcCoefs<T>& co, const T* g_h_pre, const T* g_h_post,
                                const T* g_h_res, int64_t n_tok, T* g_X, const MhcGrads<T>& g,
                                bool simd) {
  d.validate("mhc_coefficients_backward");
  const int64_t n = d.n, K = d.K();
  const ProjShape ps = proj_shape(d, n_tok);
  // Per token: g_z (K) of the logits (mHC) / of the tanh arguments (HC, at [j·(n+2) + q]),
  // then g_m = dL/d proj (rows, n_k) and coef = g_r·r³/cols per projection row.
  std::vector<T> gz(size_t(n_tok * K), T(0)), gm(size_t(ps.rows * ps.n_k)), coef(size_t(ps.rows));
  if (d.mode == HcMode::Mhc) {
    const int64_t nc = n * d.C, nn = n * n, n_groups = (n_tok + 7) / 8;
    const bool vec = use_avx2<T>(simd);
    // Scalar: one token's Sinkhorn trace; AVX2: 8 tokens' (one per lane) plus alignment slack.
    const int64_t wsize =
        vec ? 8 * sinkhorn_work_size(n, d.iters) + 8 : sinkhorn_work_size(n, d.iters);
    const bool par = n_tok > 8 && n_tok * K * d.iters >= (int64_t(1) << 14);
#pragma omp parallel if (par)
    {
      std::vector<T> work(static_cast<size_t>(wsize));
#pragma omp for schedule(static)
      for (int64_t gi = 0; gi < n_groups; ++gi) {
        const int64_t t0 = gi * 8, count = std::min<int64_t>(8, n_tok - t0);
        T zres[8 * kMhcMaxStreams * kMhcMaxStreams], gres[8 * kMhcMaxStreams * kMhcMaxStreams];
        for (int64_t l = 0; l < count; ++l) {
          const int64_t t = t0 + l;
          T* gzt = gz.data() + t * K;
          for (int64_t i = 0; i < n; ++i) {
            if (g_h_pre) {  // h = σ(z): dh/dz = h(1 − h)
              const T h = co.h_pre[t * n + i];
              gzt[i] = g_h_pre[t * n + i] * h * (T(1) - h);
            }
            if (g_h_post) {  // h = 2σ(z): dh/dz = 2σ(1 − σ) = h(1 − h/2)
              const T h = co.h_post[t * n + i];
              gzt[n + i] = g_h_post[t * n + i] * h * (T(1) - T(0.5) * h);
            }
          }
          if (g_h_res) {  // z_res again, exactly as the forward computed it
            T z[kMhcMaxStreams * kMhcMaxStreams + 2 * kMhcMaxStreams];
            mhc_logits(n, K, co.r[t * n], co.proj + t * K, p, z);
            if (vec)
              std::copy(z + 2 * n, z + K, zres + l * nn);
            else
              sinkhorn_backward(z + 2 * n, g_h_res + t * nn, gzt + 2 * n, n, d.iters, work.data());
          }
        }
        if constexpr (std::is_same_v<T, float>) {
          if (vec && g_h_res) {
            std::fill(gres, gres + count * nn, 0.0f);
            detail::mhc_sinkhorn8_backward_avx2(zres, g_h_res + t0 * nn, gres, int(count), n,
                                                d.iters, work.data());
            for (int64_t l = 0; l < count; ++l)
              std::copy(gres + l * nn, gres + (l + 1) * nn, gz.data() + (t0 + l) * K + 2 * n);
          }
        }
        // z_k = r·α_g·m_k + b_k: dz/dm = r·α_g, dz/dr = α_g·m_k; r = (S/nC + eps)^(-1/2) gives
        // dr/dx = −r³·x/nC.
        for (int64_t t = t0; t < t0 + count; ++t) {
          const T* gzt = gz.data() + t * K;
          const T r = co.r[t * n];
          T g_r = 0;
          for (int64_t k = 0; k < K; ++k) {
            const T a = p.alpha[group_of(k, n)];
            gm[size_t(t * K + k)] = gzt[k] * a * r;
            g_r += gzt[k] * a * co.proj[t * K + k];
          }
          coef[size_t(t)] = g_r * r * r * r / T(nc);
        }
      }
    }
    // Parameter sums over tokens (serial: T·K values).
    for (int64_t t = 0; t < n_tok; ++t) {
      const T r = co.r[t * n];
      for (int64_t k = 0; k < K; ++k) {
        const T gzk = gz[size_t(t * K + k)];
        if (g.bias) g.bias[k] += gzk;
        if (g.alpha) g.alpha[group_of(k, n)] += gzk * r * co.proj[t * K + k];
      }
    }
  } else {
    // HC, per stream j: d_jq = r_j·proj_jq; h_pre[j] = α0·tanh(d_j0) + b, h_post[j] = α1·tanh(d_j1)
    // + b, H[i][j] = α2·tanh(d_j,2+i) + b. dtanh = 1 − tanh².
    const int64_t q = n + 2;
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t j = 0; j < n; ++j) {
        const T r = co.r[t * n + j];
        const T* pr = co.proj + (t * n + j) * q;
        T* gmj = gm.data() + (t * n + j) * q;
        T g_r = 0;
        for (int64_t e = 0; e < q; ++e) {
          T gh = 0;
          int64_t b_idx;
          int grp;
          if (e == 0) {
            gh = g_h_pre ? g_h_pre[t * n + j] : T(0);
            b_idx = j;
            grp = 0;
          } else if (e == 1) {
            gh = g_h_post ? g_h_post[t * n + j] : T(0);
            b_idx = n + j;
            grp = 1;
          } else {
            const int64_t i = e - 2;
            gh = g_h_res ? g_h_res[t * n * n + i * n + j] : T(0);
            b_idx = 2 * n + i * n + j;
            grp = 2;
          }
          const T th = std::tanh(r * pr[e]);
          const T gd = gh * p.alpha[grp] * (T(1) - th * th);
          gz[size_t(t * K + j * q + e)] = gd;
          gmj[e] = gd * r;
          g_r += gd * pr[e];
          if (g.bias) g.bias[b_idx] += gh;
          if (g.alpha) g.alpha[grp] += gh * th;
        }
        coef[size_t(t * n + j)] = g_r * r * r * r / T(d.C);
      }
  }
  project_backward(X, ps.rows, ps.cols, p.phi, ps.n_k, gm.data(), coef.data(), g_X, g.phi,
                   use_avx2<T>(simd));
}

// mHC, AVX2: the rest of a site's backward in one pass over the streams. Per group of 8 tokens
// (one per Sinkhorn lane): g_h_pre from the dots <g_u, X[j]>, the gate and Sinkhorn backward, g_m
// and the RMS term; then the stream gradient in two phases: g_X = H_resᵀ·G + h_pre ⊗ g_u −
// coef·X (written once), then g_X += g_m·phi and g_phi += g_mᵀ·X into a per-thread partial
// (summed in thread order afterwards, so the result does not depend on timing). Scratch: one
// calling-thread buffer, grown and kept (training path).
// dots (mhc_site_backward_fused): g_h_res is not an input; phase 1 runs first and also takes the
// dots <G[i], X[j]> and <g_u, X[j]> on the token in L1, and the RMS term −coef·X moves to phase 2
// (coef needs Sinkhorn's backward, which needs those dots). next: the next site's merge-backward
// head from the group's finished g_X, while it is in cache.
void fused_site_backward(const MhcDims& d, const MhcParams<float>& p, const float* X,
                         const MhcCoefs<float>& co, const float* G, const float* g_u,
                         const float* g_h_post, const float* g_h_res, int64_t n_tok,
                         float* g_h_pre, float* g_X, const MhcGrads<float>& g, bool dots,
                         const MhcMergeHead<float>* next) {
  constexpr int64_t kK = kMhcMaxStreams * kMhcMaxStreams + 2 * kMhcMaxStreams;
  const int64_t n = d.n, C = d.C, nc = n * C, K = d.K(), nn = n * n;
  const int64_t n_groups = (n_tok + 7) / 8;
  const bool par = n_tok > 8 && n_tok * K * nc >= kParallelMinWork;
  const int n_thr = par ? std::max(1, omp_get_max_threads()) : 1;
  const int64_t wsize = 8 * sinkhorn_work_size(n, d.iters) + 8;
  const int64_t np = detail::mhc_packed_phi_size(n, d.C), nblk = n * ((d.C + 7) / 8);
  const int64_t per = np + K + 3 + wsize;  // per thread: phi, bias, alpha partials, trace
  static thread_local std::vector<float> scratch;
  if (scratch.size() < size_t(np + n_thr * per)) scratch.resize(size_t(np + n_thr * per));
  float* const phi_p = scratch.data();  // phi packed
  float* const sbase = phi_p + np;
  detail::mhc_pack_phi_avx2(p.phi, n, d.C, phi_p);
  for (int t = 0; t < n_thr; ++t)  // zeroed here: a smaller team than asked leaves some unused
    std::fill(sbase + t * per, sbase + t * per + np + K + 3, 0.0f);
#pragma omp parallel num_threads(n_thr) if (par)
  {
    const int th = omp_get_thread_num();
    float* pphi = sbase + th * per;
    float* pb = pphi + np;
    float* pa = pb + K;
    float* work = pa + 3;
#pragma omp for schedule(static)
    for (int64_t gi = 0; gi < n_groups; ++gi) {
      const int64_t t0 = gi * 8, count = std::min<int64_t>(8, n_tok - t0);
      float ghp[8 * kMhcMaxStreams], gz[8 * kK], gm[8 * kK], coef[8];
      float zres[8 * kMhcMaxStreams * kMhcMaxStreams], gres[8 * kMhcMaxStreams * kMhcMaxStreams];
      float ghr[8 * kMhcMaxStreams * kMhcMaxStreams];
      const float* ghres_in = g_h_res ? g_h_res + t0 * nn : nullptr;
      if (dots) {  // phase 1 first: g_X without the RMS term, and the dots
        detail::mhc_stream_init_dots_avx2(X + t0 * nc, G + t0 * nc, g_u + t0 * C,
                                          co.h_res + t0 * nn, co.h_pre + t0 * n, count, n, C,
                                          g_X + t0 * nc, ghr, ghp);
        ghres_in = ghr;
      } else {
        std::fill(ghp, ghp + count * n, 0.0f);
        detail::mhc_pre_aggregate_backward_avx2(X + t0 * nc, co.h_pre + t0 * n, g_u + t0 * C,
                                                count, n, C, nullptr, ghp);
      }
      std::copy(ghp, ghp + count * n, g_h_pre + t0 * n);
      for (int64_t l = 0; l < count; ++l) {
        const int64_t t = t0 + l;
        float* gzt = gz + l * K;
        for (int64_t i = 0; i < n; ++i) {
          const float h = co.h_pre[t * n + i];  // h = σ(z): dh/dz = h(1 − h)
          gzt[i] = ghp[l * n + i] * h * (1.0f - h);
          const float hp = co.h_post[t * n + i];  // h = 2σ(z): dh/dz = h(1 − h/2)
          gzt[n + i] = g_h_post ? g_h_post[t * n + i] * hp * (1.0f - 0.5f * hp) : 0.0f;
        }
        if (ghres_in) {  // z_res again, exactly as the forward computed it
          float z[kK];
          mhc_logits(n, K, co.r[t * n], co.proj + t * K, p, z);
          std::copy(z + 2 * n, z + K, zres + l * nn);
        } else {
          std::fill(gzt + 2 * n, gzt + K, 0.0f);
        }
      }
      if (ghres_in) {
        std::fill(gres, gres + count * nn, 0.0f);
        detail::mhc_sinkhorn8_backward_avx2(zres, ghres_in, gres, int(count), n, d.iters, work);
        for (int64_t l = 0; l < count; ++l)
          std::copy(gres + l * nn, gres + (l + 1) * nn, gz + l * K + 2 * n);
      }
      // z_k = r·α_g·m_k + b_k: dz/dm = r·α_g, dz/dr = α_g·m_k; dr/dx = −r³·x/nC.
      for (int64_t l = 0; l < count; ++l) {
        const int64_t t = t0 + l;
        const float* gzt = gz + l * K;
        const float r = co.r[t * n];
        float g_r = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int grp = group_of(k, n);
          const float a = p.alpha[grp], m = co.proj[t * K + k];
          gm[l * K + k] = gzt[k] * a * r;
          g_r += gzt[k] * a * m;
          pb[k] += gzt[k];
          pa[grp] += gzt[k] * r * m;
        }
        coef[l] = g_r * r * r * r / float(nc);
      }
      // The stream gradient: phase 1 token by token (X, G, g_u read once, g_X written), then
      // phase 2 (the phi products) on the group while it is in cache, prefetching the next
      // group's inputs.
      if (!dots)
        detail::mhc_stream_init_avx2(X + t0 * nc, G + t0 * nc, g_u + t0 * C, co.h_res + t0 * nn,
                                     co.h_pre + t0 * n, coef, count, n, C, g_X + t0 * nc);
      const int64_t e = t0 + count, nx = std::clamp<int64_t>(n_tok - e, 0, 8);
      detail::mhc_stream_grad_block_avx2(X + t0 * nc, gm, dots ? coef : nullptr, phi_p, count, n,
                                         C, g_X + t0 * nc, pphi, nx ? X + e * nc : nullptr,
                                         nx ? G + e * nc : nullptr, nx ? g_u + e * C : nullptr,
                                         nx);
      if (next)  // g_X of the group is final: the next site's G
        detail::mhc_merge_head_avx2(g_X + t0 * nc, next->F + t0 * C, next->h_post + t0 * n,
                                    count, n, C, next->g_F + t0 * C, next->g_h_post + t0 * n);
    }
    if (g.phi) {  // the partials in thread order (after the loop's barrier), by column blocks
      const int nt = omp_get_num_threads();
      const int64_t q0 = nblk * th / nt, q1 = nblk * (th + 1) / nt;
      detail::mhc_unpack_add_phi_avx2(sbase, n_thr, per, n, d.C, q0, q1, g.phi);
    }
  }
  for (int t = 0; t < n_thr; ++t) {
    const float* pb = sbase + t * per + np;
    if (g.bias)
      for (int64_t k = 0; k < K; ++k) g.bias[k] += pb[k];
    if (g.alpha)
      for (int q = 0; q < 3; ++q) g.alpha[q] += pb[K + q];
  }
}

template <class T>
void site_backward_streams_impl(const MhcDims& d, const MhcParams<T>& p, const T* X,
                                const MhcCoefs<T>& co, const T* G, const T* g_u,
                                const T* g_h_post, const T* g_h_res, int64_t n_tok, T* g_h_pre,
                                T* g_X, const MhcGrads<T>& g, bool simd) {
  d.validate("mhc_site_backward_streams");
  const int64_t n = d.n, nc = d.n * d.C;
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2<T>(simd) && d.mode == HcMode::Mhc)
      return fused_site_backward(d, p, X, co, G, g_u, g_h_post, g_h_res, n_tok, g_h_pre, g_X, g,
                                 false, nullptr);
  }
  // The composition this equals: g_X = 0, H_resᵀ·G (the merge backward's g_X part), the
  // pre-aggregate backward, the coefficient backward.
  std::fill(g_X, g_X + n_tok * nc, T(0));
  std::fill(g_h_pre, g_h_pre + n_tok * n, T(0));
  post_merge_backward_impl(d, X, co.h_res, co.h_post, X /* F: not read */, G, n_tok, g_X,
                           static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                           static_cast<T*>(nullptr), simd);
  pre_aggregate_backward_impl(d, X, co.h_pre, g_u, n_tok, g_X, g_h_pre, simd);
  coefficients_backward_impl(d, p, X, co, g_h_pre, g_h_post, g_h_res, n_tok, g_X, g, simd);
}

template <class T>
void site_backward_fused_impl(const MhcDims& d, const MhcParams<T>& p, const T* X,
                              const MhcCoefs<T>& co, const T* G, const T* g_u, const T* g_h_post,
                              int64_t n_tok, T* g_h_pre, T* g_X, const MhcGrads<T>& g,
                              const MhcMergeHead<T>* next, bool simd) {
  d.validate("mhc_site_backward_fused");
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2<T>(simd) && d.mode == HcMode::Mhc)
      return fused_site_backward(d, p, X, co, G, g_u, g_h_post, nullptr, n_tok, g_h_pre, g_X, g,
                                 true, next);
  }
  // The composition this equals: the merge backward's g_h_res, the one-pass stream backward,
  // then the next site's merge-backward head from g_X (after g_u and g_h_post were read).
  std::vector<T> ghr(size_t(n_tok * d.n * d.n), T(0));
  post_merge_backward_impl(d, X, co.h_res, co.h_post, X /* F: not read */, G, n_tok,
                           static_cast<T*>(nullptr), ghr.data(), static_cast<T*>(nullptr),
                           static_cast<T*>(nullptr), simd);
  site_backward_streams_impl(d, p, X, co, G, g_u, g_h_post, ghr.data(), n_tok, g_h_pre, g_X, g,
                             simd);
  if (next) {
    std::fill(next->g_F, next->g_F + n_tok * d.C, T(0));
    std::fill(next->g_h_post, next->g_h_post + n_tok * d.n, T(0));
    post_merge_backward_impl(d, g_X /* X: not read */, co.h_res /* not read */, next->h_post,
                             next->F, g_X, n_tok, static_cast<T*>(nullptr),
                             static_cast<T*>(nullptr), next->g_h_post, next->g_F, simd);
  }
}

// Box–Muller normal draws from splitmix64 (the same values on every platform).
struct InitRng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (double(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double normal() {
    const double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace

// ---- Dims and buffers
// ----------------------------------------------------------------------------

void MhcDims::validate(const char* where) const {
  auto fail = [&](const std::string& what) { throw Error(std::string(where) + ": " + what); };
  if (n < 1 || n > kMhcMaxStreams)
    fail("stream count n = " + std::to_string(n) + " is outside 1.." +
         std::to_string(kMhcMaxStreams) + "; set hc_mult (n) in that range");
  if (C < 1) fail("hidden size C = " + std::to_string(C) + " must be at least 1");
  if (mode == HcMode::Mhc && iters < 1)
    fail("Sinkhorn iterations = " + std::to_string(iters) + " must be at least 1");
  if (!(eps >= 0)) fail("rms eps = " + std::to_string(eps) + " must be >= 0");
}

int64_t mhc_coefs_size(int64_t n_tok, int64_t n) {
  const int64_t K = n * n + 2 * n;
  return n_tok * (n + K + n + n + n * n);
}

template <class T>
MhcCoefs<T> mhc_coefs_view(T* buf, int64_t n_tok, int64_t n) {
  const int64_t K = n * n + 2 * n;
  MhcCoefs<T> c;
  c.r = buf;
  c.proj = c.r + n_tok * n;
  c.h_pre = c.proj + n_tok * K;
  c.h_post = c.h_pre + n_tok * n;
  c.h_res = c.h_post + n_tok * n;
  return c;
}

// ---- Sinkhorn ----------------------------------------------------------------------------------

namespace {

// M = exp(Z − max Z).
template <class T>
void sinkhorn_start(const T* Z, T* M, int64_t n) {
  const int64_t nn = n * n;
  T mx = Z[0];
  for (int64_t k = 1; k < nn; ++k) mx = std::max(mx, Z[k]);
  for (int64_t k = 0; k < nn; ++k) M[k] = std::exp(Z[k] - mx);
}

// One normalisation: out = in / s with s the column sums (col) or the row sums, applied as a
// multiply by the reciprocal, which is kept in inv (n). out may be in. Forward and backward both
// run this, so the backward differentiates exactly the values the forward produced.
template <class T>
void sinkhorn_step(const T* in, T* out, T* inv, int64_t n, bool col) {
  if (col) {
    for (int64_t j = 0; j < n; ++j) inv[j] = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) inv[j] += in[i * n + j];
    for (int64_t j = 0; j < n; ++j) inv[j] = T(1) / inv[j];
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) out[i * n + j] = in[i * n + j] * inv[j];
  } else {
    for (int64_t i = 0; i < n; ++i) {
      T s = 0;
      for (int64_t j = 0; j < n; ++j) s += in[i * n + j];
      inv[i] = T(1) / s;
      for (int64_t j = 0; j < n; ++j) out[i * n + j] = in[i * n + j] * inv[i];
    }
  }
}

}  // namespace

template <class T>
void sinkhorn_forward(const T* Z, T* H, int64_t n, int iters) {
  T inv[kMhcMaxStreams];
  sinkhorn_start(Z, H, n);
  for (int it = 0; it < iters; ++it) {
    sinkhorn_step(H, H, inv, n, true);   // columns
    sinkhorn_step(H, H, inv, n, false);  // rows
  }
}

int64_t sinkhorn_work_size(int64_t n, int iters) {
  // States S_0 .. S_2·iters (n² each), the reciprocal sums of the 2·iters steps (n each), g (n²).
  return (2 * int64_t(iters) + 2) * n * n + 2 * int64_t(iters) * n;
}

template <class T>
void sinkhorn_backward(const T* Z, const T* g_H, T* g_Z, int64_t n, int iters, T* work) {
  const int64_t nn = n * n, steps = 2 * int64_t(iters);
  T* S = work;                    // (steps + 1, n, n)
  T* inv = S + (steps + 1) * nn;  // (steps, n)
  T* g = inv + steps * n;         // (n, n)
  // The forward again, keeping every state.
  sinkhorn_start(Z, S, n);
  for (int64_t st = 0; st < steps; ++st)
    sinkhorn_step(S + st * nn, S + (st + 1) * nn, inv + st * n, n, st % 2 == 0);
  // Back through each normalisation out = in / s (s summed along the axis):
  // g_in = (g_out − Σ_axis g_out ⊙ out) / s.
  for (int64_t k = 0; k < nn; ++k) g[k] = g_H[k];
  for (int64_t st = steps - 1; st >= 0; --st) {
    const T* o = S + (st + 1) * nn;
    const T* iv = inv + st * n;
    const bool col = st % 2 == 0;
    for (int64_t a = 0; a < n; ++a) {
      T dot = 0;
      for (int64_t b = 0; b < n; ++b) {
        const int64_t k = col ? b * n + a : a * n + b;
        dot += g[k] * o[k];
      }
      for (int64_t b = 0; b < n; ++b) {
        const int64_t k = col ? b * n + a : a * n + b;
        g[k] = (g[k] - dot) * iv[a];
      }
    }
  }
  // M = exp(Z − max Z): dM/dZ = M (the max shift changes no output: the first column step
  // removes any common scale, so its gradient term is exactly zero).
  for (int64_t k = 0; k < nn; ++k) g_Z[k] += g[k] * S[k];
}

// ---- Public templates
// ----------------------------------------------------------------------------

template <class T>
void mhc_coefficients_forward(const MhcDims& d, const MhcParams<T>& p, const T* X, int64_t n_tok,
                              const MhcCoefs<T>& out) {
  coefficients_forward_impl(d, p, X, n_tok, out, true);
}
template <class T>
void mhc_pre_aggregate(const MhcDims& d, const T* X, const T* h_pre, int64_t n_tok, T* u) {
  pre_aggregate_impl(d, X, h_pre, n_tok, u, true);
}
template <class T>
void mhc_post_merge(const MhcDims& d, const T* X, const T* h_res, const T* h_post, const T* F,
                    int64_t n_tok, T* X_out) {
  post_merge_impl(d, X, h_res, h_post, F, n_tok, X_out, true);
}
template <class T>
void mhc_site_in(const MhcDims& d, const MhcParams<T>& p, const T* X, int64_t n_tok,
                 const MhcCoefs<T>& out, T* u) {
  site_in_impl(d, p, X, n_tok, out, u);
}
template <class T>
void mhc_site_merge_in(const MhcDims& d, const T* X, const MhcCoefs<T>& prev, const T* F,
                       int64_t n_tok, T* X_out, const MhcParams<T>& p_next,
                       const MhcCoefs<T>& next, T* u) {
  site_merge_in_impl(d, X, prev, F, n_tok, X_out, p_next, next, u);
}
template <class T>
void mhc_pre_aggregate_backward(const MhcDims& d, const T* X, const T* h_pre, const T* g_u,
                                int64_t n_tok, T* g_X, T* g_h_pre) {
  pre_aggregate_backward_impl(d, X, h_pre, g_u, n_tok, g_X, g_h_pre, true);
}
template <class T>
void mhc_post_merge_backward(const MhcDims& d, const T* X, const T* h_res, const T* h_post,
                             const T* F, const T* G, int64_t n_tok, T* g_X, T* g_h_res, T* g_h_post,
                             T* g_F) {
  post_merge_backward_impl(d, X, h_res, h_post, F, G, n_tok, g_X, g_h_res, g_h_post, g_F, true);
}
template <class T>
void mhc_coefficients_backward(const MhcDims& d, const MhcParams<T>& p, const T* X,
                               const MhcCoefs<T>& coefs, const T* g_h_pre, const T* g_h_post,
                               const T* g_h_res, int64_t n_tok, T* g_X, const MhcGrads<T>& g) {
  coefficients_backward_impl(d, p, X, coefs, g_h_pre, g_h_post, g_h_res, n_tok, g_X, g, true);
}

template <class T>
void mhc_site_backward_streams(const MhcDims& d, const MhcParams<T>& p, const T* X,
                               const MhcCoefs<T>& coefs, const T* G, const T* g_u,
                               const T* g_h_post, const T* g_h_res, int64_t n_tok, T* g_h_pre,
                               T* g_X, const MhcGrads<T>& g) {
  site_backward_streams_impl(d, p, X, coefs, G, g_u, g_h_post, g_h_res, n_tok, g_h_pre, g_X, g,
                             true);
}

template <class T>
void mhc_site_backward_fused(const MhcDims& d, const MhcParams<T>& p, const T* X,
                             const MhcCoefs<T>& coefs, const T* G, const T* g_u, const T* g_h_post,
                             int64_t n_tok, T* g_h_pre, T* g_X, const MhcGrads<T>& g,
                             const MhcMergeHead<T>* next) {
  site_backward_fused_impl(d, p, X, coefs, G, g_u, g_h_post, n_tok, g_h_pre, g_X, g, next, true);
}

// Both split their tokens over the op threads for training-sized T (memory-bound copies of
// (T, n, C): one thread does not reach the machine's bandwidth); per token the work and the
// order of the sums are the same either way.
template <class T>
void mhc_expand(const T* e, int64_t n_tok, int64_t n, int64_t C, T* X) {
  const bool par = n_tok > 1 && n_tok * n * C >= kParallelMinWork;
  for_each_index(n_tok, par, [&](int64_t t) {
    for (int64_t j = 0; j < n; ++j) std::memcpy(X + (t * n + j) * C, e + t * C, sizeof(T) * C);
  });
}

template <class T>
void mhc_collapse(const T* X, int64_t n_tok, int64_t n, int64_t C, T* y, bool accumulate) {
  const bool par = n_tok > 1 && n_tok * n * C >= kParallelMinWork;
  for_each_index(n_tok, par, [&](int64_t t) {
    T* yt = y + t * C;
    if (!accumulate) std::fill(yt, yt + C, T(0));
    for (int64_t j = 0; j < n; ++j) {
      const T* x = X + (t * n + j) * C;
      for (int64_t c = 0; c < C; ++c) yt[c] += x[c];
    }
  });
}

#define QWEN_MHC_INSTANTIATE(T)                                                                    \
  template MhcCoefs<T> mhc_coefs_view<T>(T*, int64_t, int64_t);                                    \
  template void sinkhorn_forward<T>(const T*, T*, int64_t, int);                                   \
  template void sinkhorn_backward<T>(const T*, const T*, T*, int64_t, int, T*);                    \
  template void mhc_coefficients_forward<T>(const MhcDims&, const MhcParams<T>&, const T*,         \
                                            int64_t, const MhcCoefs<T>&);                          \
  template void mhc_pre_aggregate<T>(const MhcDims&, const T*, const T*, int64_t, T*);             \
  template void mhc_post_merge<T>(const MhcDims&, const T*, const T*, const T*, const T*, int64_t, \
                                  T*);                                                             \
  template void mhc_site_in<T>(const MhcDims&, const MhcParams<T>&, const T*, int64_t,            \
                               const MhcCoefs<T>&, T*);                                            \
  template void mhc_site_merge_in<T>(const MhcDims&, const T*, const MhcCoefs<T>&, const T*,       \
                                     int64_t, T*, const MhcParams<T>&, const MhcCoefs<T>&, T*);    \
  template void mhc_pre_aggregate_backward<T>(const MhcDims&, const T*, const T*, const T*,        \
                                              int64_t, T*, T*);                                    \
  template void mhc_post_merge_backward<T>(const MhcDims&, const T*, const T*, const T*, const T*, \
                                           const T*, int64_t, T*, T*, T*, T*);                     \
  template void mhc_coefficients_backward<T>(const MhcDims&, const MhcParams<T>&, const T*,        \
                                             const MhcCoefs<T>&, const T*, const T*, const T*,     \
                                             int64_t, T*, const MhcGrads<T>&);                     \
  template void mhc_site_backward_streams<T>(const MhcDims&, const MhcParams<T>&, const T*,        \
                                             const MhcCoefs<T>&, const T*, const T*, const T*,     \
                                             const T*, int64_t, T*, T*, const MhcGrads<T>&);       \
  template void mhc_site_backward_fused<T>(const MhcDims&, const MhcParams<T>&, const T*,          \
                                           const MhcCoefs<T>&, const T*, const T*, const T*,       \
                                           int64_t, T*, T*, const MhcGrads<T>&,                    \
                                           const MhcMergeHead<T>*);                                \
  template void mhc_expand<T>(const T*, int64_t, int64_t, int64_t, T*);                            \
  template void mhc_collapse<T>(const T*, int64_t, int64_t, int64_t, T*, bool);

QWEN_MHC_INSTANTIATE(float)
QWEN_MHC_INSTANTIATE(double)
#undef QWEN_MHC_INSTANTIATE

// ---- Scalar float references
// ---------------------------------------------------------------------

void mhc_coefficients_forward_ref(const MhcDims& d, const MhcParams<float>& p, const float* X,
                                  int64_t n_tok, const MhcCoefs<float>& out) {
  coefficients_forward_impl(d, p, X, n_tok, out, false);
}
void mhc_pre_aggregate_ref(const MhcDims& d, const float* X, const float* h_pre, int64_t n_tok,
                           float* u) {
  pre_aggregate_impl(d, X, h_pre, n_tok, u, false);
}
void mhc_post_merge_ref(const MhcDims& d, const float* X, const float* h_res, const float* h_post,
                        const float* F, int64_t n_tok, float* X_out) {
  post_merge_impl(d, X, h_res, h_post, F, n_tok, X_out, false);
}
void mhc_post_merge_backward_ref(const MhcDims& d, const float* X, const float* h_res,
                                 const float* h_post, const float* F, const float* G, int64_t n_tok,
                                 float* g_X, float* g_h_res, float* g_h_post, float* g_F) {
  post_merge_backward_impl(d, X, h_res, h_post, F, G, n_tok, g_X, g_h_res, g_h_post, g_F, false);
}
void mhc_coefficients_backward_ref(const MhcDims& d, const MhcParams<float>& p, const float* X,
                                   const MhcCoefs<float>& coefs, const float* g_h_pre,
                                   const float* g_h_post, const float* g_h_res, int64_t n_tok,
                                   float* g_X, const MhcGrads<float>& g) {
  coefficients_backward_impl(d, p, X, coefs, g_h_pre, g_h_post, g_h_res, n_tok, g_X, g, false);
}

void mhc_site_backward_streams_ref(const MhcDims& d, const MhcParams<float>& p, const float* X,
                                   const MhcCoefs<float>& coefs, const float* G, const float* g_u,
                                   const float* g_h_post, const float* g_h_res, int64_t n_tok,
                                   float* g_h_pre, float* g_X, const MhcGrads<float>& g) {
  site_backward_streams_impl(d, p, X, coefs, G, g_u, g_h_post, g_h_res, n_tok, g_h_pre, g_X, g,
                             false);
}

void mhc_site_backward_fused_ref(const MhcDims& d, const MhcParams<float>& p, const float* X,
                                 const MhcCoefs<float>& coefs, const float* G, const float* g_u,
                                 const float* g_h_post, int64_t n_tok, float* g_h_pre, float* g_X,
                                 const MhcGrads<float>& g, const MhcMergeHead<float>* next) {
  site_backward_fused_impl(d, p, X, coefs, G, g_u, g_h_post, n_tok, g_h_pre, g_X, g, next, false);
}

// ---- Inference copy of phi (F16) ---------------------------------------------------------------

void mhc_pack_phi_half(const MhcDims& d, const float* phi, uint16_t* half, float* scale) {
  d.validate("mhc_pack_phi_half");
  const int64_t rows = d.phi_rows(), cols = d.phi_cols();
  if (cpu_features().avx2) return detail::mhc_pack_phi_half_avx2(phi, rows, cols, half, scale);
  for (int64_t k = 0; k < rows; ++k) {  // the same rule as the AVX2 pack, one value at a time
    const float* row = phi + k * cols;
    float mx = 0.0f;
    for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, std::fabs(row[c]));
    int e = 0;
    if (mx > 0.0f && std::isfinite(mx)) {
      std::frexp(mx, &e);
      e = std::max(e - 15, -126);  // the scale stays a normal float
    }
    scale[k] = std::ldexp(1.0f, e);
    const float inv = std::ldexp(1.0f, -e);
    for (int64_t c = 0; c < cols; ++c) half[k * cols + c] = f32_to_f16(row[c] * inv);
  }
}

void mhc_unpack_phi_half(const MhcDims& d, const uint16_t* half, const float* scale, float* phi) {
  d.validate("mhc_unpack_phi_half");
  const int64_t rows = d.phi_rows(), cols = d.phi_cols();
  for (int64_t k = 0; k < rows; ++k)
    for (int64_t c = 0; c < cols; ++c) phi[k * cols + c] = f16_to_f32(half[k * cols + c]) * scale[k];
}

// ---- Init
// ----------------------------------------------------------------------------------------

void mhc_init_site(const MhcDims& d, int64_t site, const MhcInitOptions& o, float* phi, float* bias,
                   float* alpha) {
  d.validate("mhc_init_site");
  if (site < 0) throw Error("mhc_init_site: site index " + std::to_string(site) + " must be >= 0");
  const int64_t n = d.n, K = d.K(), on = site % n;
  for (int g = 0; g < 3; ++g) alpha[g] = o.alpha;
  if (d.mode == HcMode::Hc) {
    std::fill(phi, phi + d.phi_size(), 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      bias[j] = j == on ? 1.0f : 0.0f;
      bias[n + j] = 1.0f;
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) bias[2 * n + i * n + j] = i == j ? 1.0f : 0.0f;
    return;
  }
  InitRng rng{o.seed ^ (0xD1B54A32D192ED03ull * uint64_t(site + 1))};
  const int64_t cols = d.phi_cols();
  for (int64_t k = 0; k < K; ++k) {
    float* row = phi + k * cols;
    const bool post = k >= n && k < 2 * n;
    for (int64_t c = 0; c < cols; ++c) row[c] = post ? 0.0f : float(o.phi_std * rng.normal());
  }
  for (int64_t j = 0; j < n; ++j) {
    bias[j] = j == on ? o.pre_on : o.pre_off;
    bias[n + j] = 0.0f;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) bias[2 * n + i * n + j] = i == j ? 0.0f : o.res_offdiag;
}

// ---- Amax gain
// -----------------------------------------------------------------------------------

HresGain hres_gain(const double* A, int64_t n) {
  HresGain g;
  g.min_col_sum = 1e300;
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t j = 0; j < n; ++j) s += std::fabs(A[i * n + j]);
    g.forward = std::max(g.forward, s);
  }
  for (int64_t j = 0; j < n; ++j) {
    double s = 0, sa = 0;
    for (int64_t i = 0; i < n; ++i) {
      s += A[i * n + j];
      sa += std::fabs(A[i * n + j]);
    }
    g.backward = std::max(g.backward, sa);
    g.min_col_sum = std::min(g.min_col_sum, s);
    g.max_abs_log_col = std::max(g.max_abs_log_col, std::fabs(std::log(s)));
  }
  return g;
}

void hres_gain_profile(const float* H, int64_t L, int64_t n_tok, int64_t n, bool average_matrices,
                       HresGain* single, HresGain* composite) {
  if (n < 1 || n > kMhcMaxStreams || L < 0 || n_tok < 1)
    throw Error("hres_gain_profile: need 1 <= n <= 16, L >= 0 and at least one token (got n = " +
                std::to_string(n) + ", L = " + std::to_string(L) +
                ", T = " + std::to_string(n_tok) + ")");
  const int64_t nn = n * n;
  // The matrices to walk: per token, or one token-averaged matrix per layer.
  std::vector<double> mats;
  int64_t T = n_tok;
  if (average_matrices) {
    mats.assign(size_t(L * nn), 0.0);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t k = 0; k < nn; ++k) mats[size_t(l * nn + k)] += H[(l * n_tok + t) * nn + k];
    for (double& v : mats) v /= double(n_tok);
    T = 1;
  } else {
    mats.assign(H, H + L * n_tok * nn);
  }
  auto add = [&](HresGain& acc, const HresGain& g) {
    acc.forward += g.forward / double(T);
    acc.backward += g.backward / double(T);
    acc.min_col_sum += g.min_col_sum / double(T);
    acc.max_abs_log_col += g.max_abs_log_col / double(T);
  };
  if (single) std::fill(single, single + L, HresGain{});
  if (composite) std::fill(composite, composite + L, HresGain{});
  std::vector<double> A(static_cast<size_t>(nn)), B(static_cast<size_t>(nn));
  for (int64_t t = 0; t < T; ++t) {
    // A = H_{L-1}·…·H_l, built from the top: A ← A·H_l.
    std::fill(A.begin(), A.end(), 0.0);
    for (int64_t i = 0; i < n; ++i) A[size_t(i * n + i)] = 1.0;
    for (int64_t l = L - 1; l >= 0; --l) {
      const double* Hl = mats.data() + (l * T + t) * nn;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t k = 0; k < n; ++k) s += A[size_t(i * n + k)] * Hl[k * n + j];
          B[size_t(i * n + j)] = s;
        }
      A.swap(B);
      if (single) add(single[l], hres_gain(Hl, n));
      if (composite) add(composite[l], hres_gain(A.data(), n));
    }
  }
}

}  // namespace qwen::ops
