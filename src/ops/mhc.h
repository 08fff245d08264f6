// ops/mhc.h — the per-token kernels of mHC (Manifold-Constrained Hyper-Connections, arXiv
// 2512.24880) and of its baseline HC (Hyper-Connections, arXiv 2409.19606): the residual stream is
// widened to n parallel streams X (n, C) per token, and every sub-layer site (attention, MLP) reads
// u = Σ_j h_pre[j]·X[j], runs its usual F (with its own RMSNorm), and writes
//   X_out[i] = Σ_j H_res[i][j]·X[j] + h_post[i]·F(u)          (row i = destination stream)
// with coefficients computed from X itself. The math, the choices and the sources are in
// docs/mhc.md; the spec is /work/shared/design/mhc.md (design notes, not read at run time).
//
// One site, T tokens, caller-owned buffers, no allocation in any forward function (the decoder
// calls the same functions with the T new tokens of a step). Everything is per token, so training
// (T = batch·sequence) and decoding (T = new tokens) share the code. Backward functions ACCUMULATE
// (+=) into every gradient output.
//
// Every function is a template over the scalar type and instantiated for float (the engine; AVX2
// paths picked at run time through cpu_features()) and double (scalar; the float64
// finite-difference tests). The *_ref functions run the scalar float code for tests and benchmarks.
//
// Parameter layout of one site (the same names and, where the spec allows, the same K in both
// modes; K = n² + 2n, groups [pre: 0..n) [post: n..2n) [res: 2n..K), res row-major, row = dest):
//   mode Mhc: phi (K, n·C)   bias (K)   alpha (3) = (pre, post, res) gates
//     x = X flattened stream-major (n·C); r = 1/sqrt(mean(x²) + eps)  (one RMS over all n·C)
//     z = r·(α_group ⊙ (phi·x)) + bias
//     h_pre = sigmoid(z_pre), h_post = 2·sigmoid(z_post), H_res = Sinkhorn(z_res as n×n)
//   mode Hc (dynamic HC, tanh, unconstrained; per-stream RMSNorm without gain — the mHC paper's
//   recap; the HC paper uses LayerNorm):
//     phi (n+2, C): row 0 = W_m (pre), row 1 = W_β (post), row 2+i = W_r column of destination i
//     bias (K): same groups as mHC = the static parts A_m, B, A_rᵀ (res in row = destination order)
//     alpha (3): (pre, post, res) gates; HC's Algorithm 2 has s_α = alpha_pre = alpha_res, s_β =
//       alpha_post — keep alpha_pre == alpha_res to reproduce it exactly
//     per stream j: r_j = 1/sqrt(mean_c(X[j]²) + eps), d_jq = r_j·(phi[q]·X[j])
//     h_pre[j] = α_pre·tanh(d_j0) + bias[j]          h_post[j] = α_post·tanh(d_j1) + bias[n+j]
//     H_res[i][j] = α_res·tanh(d_j,2+i) + bias[2n + i·n + j]  (source j's features set its weights)
//   HC's n·(n+2) projections are also K values per token, so both modes share MhcCoefs.
#pragma once
#include <cstdint>

namespace qwen::ops {

enum class HcMode : uint8_t { Mhc = 0, Hc = 1 };

constexpr int64_t kMhcMaxStreams = 16;  // n <= 16 (K <= 288): per-token scratch lives on the stack

// The sizes of one site. validate() throws qwen::Error on n outside 1..16, C < 1, iters < 1 (mHC)
// or eps < 0; every function below calls it.
struct MhcDims {
  int64_t n = 4;      // streams
  int64_t C = 0;      // hidden size
  int iters = 20;     // Sinkhorn iterations (mHC)
  double eps = 1e-6;  // the model's rms_norm_eps, in r
  HcMode mode = HcMode::Mhc;

  int64_t K() const { return n * n + 2 * n; }
  int64_t phi_rows() const { return mode == HcMode::Mhc ? K() : n + 2; }
  int64_t phi_cols() const { return mode == HcMode::Mhc ? n * C : C; }
  int64_t phi_size() const { return phi_rows() * phi_cols(); }
  void validate(const char* where = "mhc") const;
};

template <class T>
struct MhcParams {
  const T* phi = nullptr;    // (phi_rows, phi_cols), see above
  const T* bias = nullptr;   // (K)
  const T* alpha = nullptr;  // (3) pre, post, res
  // Optional inference copy of phi in IEEE half precision (mhc_pack_phi_half; mHC mode, float,
  // AVX2 only — elsewhere phi is read): the forward projections (mhc_coefficients_forward,
  // mhc_site_in, mhc_site_merge_in) then read half the bytes. The decoder sets it; training never
  // does (the backward always uses phi). What it changes is bounded in docs/mhc.md §10.1.
  const uint16_t* phi_half = nullptr;   // (phi_rows, phi_cols) F16 bits
  const float* phi_half_scale = nullptr;  // (phi_rows) powers of two
};

template <class T>
struct MhcGrads {  // all accumulate (+=)
  T* phi = nullptr;
  T* bias = nullptr;
  T* alpha = nullptr;
};

// What the forward computes per token and the backward reads again (kept, not recomputed: it is
// K + n² + 3n floats per token against the n·C of X itself).
template <class T>
struct MhcCoefs {
  T* r = nullptr;       // (T, n)    mHC: the one per-token 1/RMS, stored n times; HC: per stream
  T* proj = nullptr;    // (T, K)    mHC: phi·x; HC: (T, n, n+2) phi[q]·X[j] at [j·(n+2) + q]
  T* h_pre = nullptr;   // (T, n)
  T* h_post = nullptr;  // (T, n)
  T* h_res = nullptr;   // (T, n, n) row = destination stream
};

// One caller buffer of mhc_coefs_size(T, n) values holds the five blocks above, in that order.
int64_t mhc_coefs_size(int64_t n_tok, int64_t n);
template <class T>
MhcCoefs<T> mhc_coefs_view(T* buf, int64_t n_tok, int64_t n);

// ---- Forward ----------------------------------------------------------------------------------

// X (T, n, C) -> coefs for T tokens. mHC: one fused pass per token block gives Σx² and phi·x (a
// (T, n·C)·phiᵀ -> (T, K) product), then z, the gates and H_res (Sinkhorn, d.iters steps).
template <class T>
void mhc_coefficients_forward(const MhcDims& d, const MhcParams<T>& p, const T* X, int64_t n_tok,
                              const MhcCoefs<T>& out);

// u (T, C) = Σ_j h_pre[t, j]·X[t, j, :].   h_pre (T, n) (coefs.h_pre).
template <class T>
void mhc_pre_aggregate(const MhcDims& d, const T* X, const T* h_pre, int64_t n_tok, T* u);

// X_out (T, n, C) = H_res[t]·X[t] + h_post[t] ⊗ F[t].   H_res (T, n, n), h_post (T, n), F (T, C).
// X_out may be X (in place: each column block is read fully before it is written).
template <class T>
void mhc_post_merge(const MhcDims& d, const T* X, const T* h_res, const T* h_post, const T* F,
                    int64_t n_tok, T* X_out);

// One site's input side in one call: mhc_coefficients_forward then u (T, C) = Σ_j h_pre·X[j]
// (mhc_pre_aggregate). The AVX2 mHC path (more than 4 tokens) does both per group of 8 tokens
// while the group's streams are in cache (one read of X instead of two); the values are bit for
// bit those of the two calls.
template <class T>
void mhc_site_in(const MhcDims& d, const MhcParams<T>& p, const T* X, int64_t n_tok,
                 const MhcCoefs<T>& out, T* u);

// The post merge of one site followed by the next site's input side (training: the attention
// site's merge and the MLP site's coefficients): X_out = H_res·X + h_post ⊗ F with the coefficients
// `prev`, then mhc_site_in(d, p_next, X_out, n_tok, next, u). X_out may be X. The AVX2 mHC path
// does it per group of 8 tokens (the merged streams are projected while in cache); the values
// are bit for bit those of mhc_post_merge + mhc_site_in.
template <class T>
void mhc_site_merge_in(const MhcDims& d, const T* X, const MhcCoefs<T>& prev, const T* F,
                       int64_t n_tok, T* X_out, const MhcParams<T>& p_next,
                       const MhcCoefs<T>& next, T* u);

// ---- Backward (all outputs +=) -----------------------------------------------------------------

// From g_u (T, C): g_X[j] += h_pre[j]·g_u ; g_h_pre[j] += <g_u, X[j]>.
template <class T>
void mhc_pre_aggregate_backward(const MhcDims& d, const T* X, const T* h_pre, const T* g_u,
                                int64_t n_tok, T* g_X, T* g_h_pre);

// From G = dL/dX_out (T, n, C): g_X[j] += Σ_i H_res[i][j]·G[i] ; g_h_res[i][j] += <G[i], X[j]> ;
// g_h_post[i] += <G[i], F> ; g_F += Σ_i h_post[i]·G[i].   Any output pointer may be null (skipped).
template <class T>
void mhc_post_merge_backward(const MhcDims& d, const T* X, const T* h_res, const T* h_post,
                             const T* F, const T* G, int64_t n_tok, T* g_X, T* g_h_res, T* g_h_post,
                             T* g_F);

// From g_h_pre (T, n), g_h_post (T, n), g_h_res (T, n, n) (any may be null = zero) through the
// gates, Sinkhorn (unrolled, mHC) or tanh (HC), the RMS factor and the projection: g_X (T, n, C),
// g.phi, g.bias, g.alpha, all +=. X and coefs are the forward's. Allocates O(T·K) scratch
// (training path only).
template <class T>
void mhc_coefficients_backward(const MhcDims& d, const MhcParams<T>& p, const T* X,
                               const MhcCoefs<T>& coefs, const T* g_h_pre, const T* g_h_post,
                               const T* g_h_res, int64_t n_tok, T* g_X, const MhcGrads<T>& g);

// The rest of one site's backward in one call (training): after mhc_post_merge_backward with
// g_X = null (it gives g_h_res, g_h_post and dL/dF) and the sub-layer's backward (dL/du = g_u
// (T, C)), with G = dL/dX_out (T, n, C) as given to the merge backward:
//   g_X (T, n, C) = H_resᵀ·G + [pre-aggregate backward] + [coefficient backward]   OVERWRITTEN
//   g_h_pre (T, n): required scratch, receives dL/dh_pre (overwritten)
//   g.phi, g.bias, g.alpha += as in mhc_coefficients_backward (g_h_post, g_h_res may be null).
// It equals zeroing g_X and calling the three backward functions in turn (the scalar path; the
// _ref below); the AVX2 mHC path does it in one pass over X and G per 8 tokens.
template <class T>
void mhc_site_backward_streams(const MhcDims& d, const MhcParams<T>& p, const T* X,
                               const MhcCoefs<T>& coefs, const T* G, const T* g_u,
                               const T* g_h_post, const T* g_h_res, int64_t n_tok, T* g_h_pre,
                               T* g_X, const MhcGrads<T>& g);

// The merge-backward head of the NEXT site in backward order (the site below), for
// mhc_site_backward_fused: with G' = the g_X the call writes (= dL/d that site's output),
//   g_F (T, C) = Σ_i h_post[i]·G'[i]      g_h_post (T, n) = <G'[i], F>      both OVERWRITTEN
// i.e. mhc_post_merge_backward's g_F and g_h_post (into zeroed buffers) without its g_X and g_h_res
// parts. g_F may be the call's g_u and g_h_post its g_h_post (each token group reads those first).
template <class T>
struct MhcMergeHead {
  const T* F = nullptr;       // (T, C) the site's sub-layer output
  const T* h_post = nullptr;  // (T, n) its h_post
  T* g_F = nullptr;
  T* g_h_post = nullptr;
};

// mhc_site_backward_streams with the X side of the merge backward folded in (training): the
// caller runs mhc_post_merge_backward with g_X = g_h_res = null (or takes the previous call's
// `next` head), F's backward, then this, which computes g_h_res = <G[i], X[j]> itself (no input)
// and writes g_X, g_h_pre and accumulates g as mhc_site_backward_streams does; with next, it also
// writes the next site's merge-backward head from the finished g_X (no separate pass over it).
// The AVX2 mHC path takes the dots in the same pass that writes H_resᵀ·G + h_pre ⊗ g_u, and adds
// the RMS term with the phi products; the scalar path (_ref, double, HC) is the composition.
template <class T>
void mhc_site_backward_fused(const MhcDims& d, const MhcParams<T>& p, const T* X,
                             const MhcCoefs<T>& coefs, const T* G, const T* g_u, const T* g_h_post,
                             int64_t n_tok, T* g_h_pre, T* g_X, const MhcGrads<T>& g,
                             const MhcMergeHead<T>* next = nullptr);

// ---- Sinkhorn (one n×n matrix, row-major, row = destination) -----------------------------------

// H = Sinkhorn(Z): M = exp(Z − max Z), then iters times: divide each column by its sum, then each
// row by its sum (rows sum to 1 up to rounding; columns carry the truncation error). H may be Z.
template <class T>
void sinkhorn_forward(const T* Z, T* H, int64_t n, int iters);
// g_Z += dH/dZ ᵀ g_H through all 2·iters normalisations (unrolled, not the fixed-point gradient).
// work: sinkhorn_work_size(n, iters) values.
int64_t sinkhorn_work_size(int64_t n, int iters);
template <class T>
void sinkhorn_backward(const T* Z, const T* g_H, T* g_Z, int64_t n, int iters, T* work);

// ---- Inference copy of phi (F16) ---------------------------------------------------------------

// phi (phi_rows, phi_cols) F32 -> half (phi_rows, phi_cols) F16 bits and scale (phi_rows): row k
// is phi[k] / scale[k] rounded to nearest, scale[k] the power of two that puts the row's largest
// |value| in [2^14, 2^15) (1 for a zero row; never below 2^-126, so rows whose largest |value| is
// under 2^-111 are kept more coarsely). So each value is scale[k]·half[k][c] with a relative
// error of at most 2^-11 (absolute 2^-25·scale[k] for values below 2^-14·scale[k]), never an
// overflow. mhc_unpack_phi_half gives those values back as F32 (exactly; tests). Any mode, any CPU.
void mhc_pack_phi_half(const MhcDims& d, const float* phi, uint16_t* half, float* scale);
void mhc_unpack_phi_half(const MhcDims& d, const uint16_t* half, const float* scale, float* phi);

// ---- Model-level helpers -----------------------------------------------------------------------

// X (T, n, C) = n copies of e (T, C) (the embedding widened into every stream).
template <class T>
void mhc_expand(const T* e, int64_t n_tok, int64_t n, int64_t C, T* X);
// y (T, C) = Σ_j X[t, j] (streams summed before the final norm; also expand's backward);
// y += ... if accumulate (collapse's backward is expand).
template <class T>
void mhc_collapse(const T* X, int64_t n_tok, int64_t n, int64_t C, T* y, bool accumulate = false);

// ---- Init (spec §8 for mHC, HC Algorithm 2 for HC) ----------------------------------------------

struct MhcInitOptions {
  float alpha = 0.01f;       // all three gates (paper Table 5; HC's s_α = s_β)
  float phi_std = 0.02f;     // mHC: N(0, std²) for the pre and res rows of phi (HC: phi = 0)
  float pre_on = 1.0f;       // mHC bias_pre: +1 on stream (site mod n) ...
  float pre_off = -1.0f;     // ... -1 on the others (breaks the stream symmetry)
  float res_offdiag = 0.0f;  // mHC bias_res: 0 on the diagonal, this off it (0: H_res = J/n)
  uint64_t seed = 0;         // phi's random stream (mixed with the site index)
};

// Writes phi (phi_size), bias (K), alpha (3) for sub-layer site `site` (0-based over the model:
// 2·block + 0 for attention, + 1 for the MLP), so that with identical streams the model equals
// the plain pre-norm residual model at step 0:
//   mHC: alpha = 0.01; bias_post = 0 and the post rows of phi = 0, so h_post = 1 exactly; bias_pre
//        ±1 (h_pre only scales F's input, which F's RMSNorm removes); bias_res diag 0, off-diagonal
//        res_offdiag (rows of H_res sum to 1, so identical streams stay identical); pre and res
//        rows of phi ~ N(0, phi_std²).
//   HC:  phi = 0, alpha = 0.01, bias_pre = e_(site mod n), bias_post = 1, bias_res = I.
void mhc_init_site(const MhcDims& d, int64_t site, const MhcInitOptions& o, float* phi, float* bias,
                   float* alpha);

// ---- Amax gain (spec §10, paper Figs. 3, 7, 8)
// ---------------------------------------------------

struct HresGain {
  double forward = 0;          // max_i Σ_j |A[i][j]|  (largest absolute row sum)
  double backward = 0;         // max_j Σ_i |A[i][j]|  (largest absolute column sum)
  double min_col_sum = 0;      // min_j Σ_i A[i][j]
  double max_abs_log_col = 0;  // max_j |log Σ_i A[i][j]| (attenuation shows here, not in Amax)
};
HresGain hres_gain(const double* A, int64_t n);

// H (L, T, n, n): the H_res of every sub-layer site l = 0..L-1 for T tokens of one sequence.
// single[l] = gains of H_l, composite[l] = gains of A_l = H_{L-1}·…·H_{l+1}·H_l. Per token and
// then averaged over tokens (the paper's Figs. 3, 7), or, if average_matrices, of the
// token-averaged matrices (Fig. 8). Either output may be null.
void hres_gain_profile(const float* H, int64_t L, int64_t n_tok, int64_t n, bool average_matrices,
                       HresGain* single, HresGain* composite);

// ---- Scalar float references (tests, benchmarks)
// -------------------------------------------------
void mhc_coefficients_forward_ref(const MhcDims& d, const MhcParams<float>& p, const float* X,
                                  int64_t n_tok, const MhcCoefs<float>& out);
void mhc_pre_aggregate_ref(const MhcDims& d, const float* X, const float* h_pre, int64_t n_tok,
                           float* u);
void mhc_post_merge_ref(const MhcDims& d, const float* X, const float* h_res, const float* h_post,
                        const float* F, int64_t n_tok, float* X_out);
void mhc_post_merge_backward_ref(const MhcDims& d, const float* X, const float* h_res,
                                 const float* h_post, const float* F, const float* G, int64_t n_tok,
                                 float* g_X, float* g_h_res, float* g_h_post, float* g_F);
void mhc_coefficients_backward_ref(const MhcDims& d, const MhcParams<float>& p, const float* X,
                                   const MhcCoefs<float>& coefs, const float* g_h_pre,
                                   const float* g_h_post, const float* g_h_res, int64_t n_tok,
                                   float* g_X, const MhcGrads<float>& g);

void mhc_site_backward_streams_ref(const MhcDims& d, const MhcParams<float>& p, const float* X,
                                   const MhcCoefs<float>& coefs, const float* G, const float* g_u,
                                   const float* g_h_post, const float* g_h_res, int64_t n_tok,
                                   float* g_h_pre, float* g_X, const MhcGrads<float>& g);

void mhc_site_backward_fused_ref(const MhcDims& d, const MhcParams<float>& p, const float* X,
                                 const MhcCoefs<float>& coefs, const float* G, const float* g_u,
                                 const float* g_h_post, int64_t n_tok, float* g_h_pre, float* g_X,
                                 const MhcGrads<float>& g,
                                 const MhcMergeHead<float>* next = nullptr);

}  // namespace qwen::ops
