// ops/mhc_avx2.cpp — AVX2 + FMA bodies of the C-wide mHC/HC loops (compiled with -mavx2 -mfma,
// reached from mhc.cpp after cpu_features() said AVX2 is there): the fused Σx² + projection
// (rows, cols)·phiᵀ (for decode-sized T: phi rows streamed 6 at a time on the calling thread),
// the pre-aggregation, the post merge, the backward of both, the two-phase stream gradient of a
// site's backward (phase 1 optionally with the merge backward's dots; the next site's merge-
// backward head), and Sinkhorn 8 tokens per vector (one token alone, n <= 4: on row vectors).
// The gate math stays in mhc.cpp, which keeps the scalar references these are tested against.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ops/mhc.h"
#include "ops/simd_avx2.h"

namespace qwen::ops::detail {

namespace {

using V = simd::Avx2;

// Work (multiply-adds) above which a call splits its tokens over the op threads.
constexpr int64_t kParallelMinWork = int64_t(1) << 18;

// body(i) for i in [0, count), over the op threads if par; a serial call (the decode step's
// T = 1) does not enter OpenMP at all.
template <class F>
void for_each_index(int64_t count, bool par, F&& body) {
  if (par) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i) body(i);
  } else {
    for (int64_t i = 0; i < count; ++i) body(i);
  }
}

// Where the projection reads phi from: the F32 parameter itself, or the inference copy in IEEE
// half precision (mhc_pack_phi_half: row k = phi[k] / scale[k] rounded to F16, scale[k] a power of
// two), converted to F32 on load (vcvtph2ps, exact) and scaled after the row's sum. The sums are
// the F32 source's, in the same order, on the values scale[k]·half[k][c]: the half copy gives bit
// for bit what the F32 path gives on the dequantized phi (a power-of-two scale commutes with
// every rounding step away from under- and overflow).
struct PhiF32 {
  const float* p;
  __m256 load(int64_t k, int64_t cols, int64_t c) const { return _mm256_loadu_ps(p + k * cols + c); }
  __m256 load_tail(int64_t k, int64_t cols, int64_t c) const {  // lanes past cols: 0
    return _mm256_maskload_ps(p + k * cols + c, V::mask(cols - c));
  }
  const char* addr(int64_t k, int64_t cols, int64_t c) const {
    return reinterpret_cast<const char*>(p + k * cols + c);
  }
  PhiF32 rows_from(int64_t k, int64_t cols) const { return {p + k * cols}; }
  float finish(float s, int64_t) const { return s; }
};
struct PhiF16 {
  const uint16_t* p;
  const float* scale;
  __m256 load(int64_t k, int64_t cols, int64_t c) const {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + k * cols + c)));
  }
  __m256 load_tail(int64_t k, int64_t cols, int64_t c) const {
    alignas(16) uint16_t b[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // F16 zero
    std::memcpy(b, p + k * cols + c, size_t(cols - c) * 2);
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(b)));
  }
  const char* addr(int64_t k, int64_t cols, int64_t c) const {
    return reinterpret_cast<const char*>(p + k * cols + c);
  }
  PhiF16 rows_from(int64_t k, int64_t cols) const { return {p + k * cols, scale + k}; }
  float finish(float s, int64_t k) const { return s * scale[k]; }
};

// proj (TB, KB) and, if SQ, sumsq (TB) for TB rows of X against KB rows of phi, one pass over
// the cols. Register block: TB·KB accumulators + TB·SQ squares + TB row vectors + 1 phi vector
// <= 16 ymm for the (TB, KB) pairs picked in project_rows.
template <int TB, int KB, bool SQ, class Phi>
inline void project_block(const float* X, int64_t cols, const Phi& phi, float* proj, int64_t ldp,
                          float* sumsq) {
  __m256 acc[TB][KB];
  __m256 sq[TB];
  for (int t = 0; t < TB; ++t) {
    sq[t] = _mm256_setzero_ps();
    for (int k = 0; k < KB; ++k) acc[t][k] = _mm256_setzero_ps();
  }
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    __m256 xv[TB];
    for (int t = 0; t < TB; ++t) {
      xv[t] = _mm256_loadu_ps(X + t * cols + c);
      if constexpr (SQ) sq[t] = _mm256_fmadd_ps(xv[t], xv[t], sq[t]);
    }
    for (int k = 0; k < KB; ++k) {
      const __m256 pv = phi.load(k, cols, c);
      for (int t = 0; t < TB; ++t) acc[t][k] = _mm256_fmadd_ps(xv[t], pv, acc[t][k]);
    }
  }
  if (c < cols) {  // masked tail: lanes past cols load as 0
    const __m256i m = V::mask(cols - c);
    __m256 xv[TB];
    for (int t = 0; t < TB; ++t) {
      xv[t] = _mm256_maskload_ps(X + t * cols + c, m);
      if constexpr (SQ) sq[t] = _mm256_fmadd_ps(xv[t], xv[t], sq[t]);
    }
    for (int k = 0; k < KB; ++k) {
      const __m256 pv = phi.load_tail(k, cols, c);
      for (int t = 0; t < TB; ++t) acc[t][k] = _mm256_fmadd_ps(xv[t], pv, acc[t][k]);
    }
  }
  for (int t = 0; t < TB; ++t) {
    for (int k = 0; k < KB; ++k) proj[t * ldp + k] = phi.finish(V::hsum(acc[t][k]), k);
    if constexpr (SQ) sumsq[t] = V::hsum(sq[t]);
  }
}

// project_block<TB, kb, SQ> for a run-time kb in 1..12.
template <int TB, bool SQ, class Phi, int KB = 1>
inline void project_block_n(int kb, const float* X, int64_t cols, const Phi& phi, float* proj,
                            int64_t ldp, float* sumsq) {
  if constexpr (KB <= 12) {
    if (kb == KB)
      project_block<TB, KB, SQ>(X, cols, phi, proj, ldp, sumsq);
    else
      project_block_n<TB, SQ, Phi, KB + 1>(kb, X, cols, phi, proj, ldp, sumsq);
  }
}

// TB rows: the first block of phi rows also sums the squares, the rest go KB at a time.
template <int TB, class Phi>
void project_rows(const float* X, int64_t cols, const Phi& phi, int64_t n_k, float* proj,
                  float* sumsq) {
  constexpr int kb_sq = TB == 3 ? 3 : TB == 2 ? 5 : 12;  // with TB squares
  constexpr int kb = TB == 3 ? 4 : TB == 2 ? 6 : 12;
  int64_t k = std::min<int64_t>(kb_sq, n_k);
  project_block_n<TB, true>(int(k), X, cols, phi, proj, n_k, sumsq);
  while (k < n_k) {
    const int b = int(std::min<int64_t>(kb, n_k - k));
    project_block_n<TB, false>(b, X, cols, phi.rows_from(k, cols), proj + k, n_k, nullptr);
    k += b;
  }
}

}  // namespace

// Few rows (decode: T = 1): each X row against the phi rows streamed a few at a time (phi, K·n·C
// floats, is not cache-resident between tokens). Same sums in the same order as project_rows<1>
// (Σx² like the SQ block, each phi row alone), so a token's coefficients do not depend on T.
static float sumsq_row(const float* x, int64_t cols) {  // as project_block's SQ accumulator
  __m256 sq = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    sq = _mm256_fmadd_ps(v, v, sq);
  }
  if (c < cols) {
    const __m256 v = _mm256_maskload_ps(x + c, V::mask(cols - c));
    sq = _mm256_fmadd_ps(v, v, sq);
  }
  return V::hsum(sq);
}

// KB phi rows against one X row, reading each phi row as a stream with a software prefetch
// 256 values ahead (1 KB of F32 phi, 512 B of its F16 copy) (decode: phi comes from L3 or DRAM, and 12 rows 4 KB apart at once are more streams
// than the hardware prefetchers follow). One accumulator per row, the columns in order: the same
// sums as project_block<1, KB> (bit for bit).
// n_next: rows of the NEXT block (the KB rows after these) whose same columns are prefetched
// while this block streams, a whole block ahead (in the decoder phi is cold: the token streamed
// the weights of a sub-layer since this site last ran; measured in the model, fifth pass).
template <int KB, class Phi>
inline void project_stream_block(const float* x, int64_t cols, const Phi& phi, float* proj,
                                 int n_next = 0) {
  __m256 acc[KB];
  for (int k = 0; k < KB; ++k) acc[k] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + c), x1 = _mm256_loadu_ps(x + c + 8);
    for (int k = 0; k < n_next; ++k) _mm_prefetch(phi.addr(KB + k, cols, c), _MM_HINT_T0);
    for (int k = 0; k < KB; ++k) {
      _mm_prefetch(phi.addr(k, cols, c + 256), _MM_HINT_T0);
      acc[k] = _mm256_fmadd_ps(x0, phi.load(k, cols, c), acc[k]);
      acc[k] = _mm256_fmadd_ps(x1, phi.load(k, cols, c + 8), acc[k]);
    }
  }
  for (; c + 8 <= cols; c += 8) {
    const __m256 xv = _mm256_loadu_ps(x + c);
    for (int k = 0; k < KB; ++k) acc[k] = _mm256_fmadd_ps(xv, phi.load(k, cols, c), acc[k]);
  }
  if (c < cols) {
    const __m256 xv = _mm256_maskload_ps(x + c, V::mask(cols - c));
    for (int k = 0; k < KB; ++k) acc[k] = _mm256_fmadd_ps(xv, phi.load_tail(k, cols, c), acc[k]);
  }
  for (int k = 0; k < KB; ++k) proj[k] = phi.finish(V::hsum(acc[k]), k);
}

template <class Phi>
void project_stream_rows(const float* x, int64_t cols, const Phi& phi, int64_t k0, int64_t k1,
                         float* proj) {
  int64_t k = k0;
  for (; k + 6 <= k1; k += 6)
    project_stream_block<6>(x, cols, phi.rows_from(k, cols), proj + k,
                            int(std::min<int64_t>(6, k1 - k - 6)));
  for (; k + 4 <= k1; k += 4) project_stream_block<4>(x, cols, phi.rows_from(k, cols), proj + k);
  for (; k < k1; ++k) project_stream_block<1>(x, cols, phi.rows_from(k, cols), proj + k);
}

template <class Phi>
void project_sumsq(const float* X, int64_t rows, int64_t cols, const Phi& phi, int64_t n_k,
                   float* proj, float* sumsq) {
  // Few rows (decode): the calling thread streams the phi rows, 6 at a time (no parallel region
  // per site: splitting the rows over the op threads cost more in fork/join and in waiting for a
  // busy second core than it saved on 96 KB).
  if (rows <= 4 && n_k >= 4 && rows * cols * n_k >= (int64_t(1) << 14)) {
    for (int64_t r = 0; r < rows; ++r) {
      sumsq[r] = sumsq_row(X + r * cols, cols);
      project_stream_rows(X + r * cols, cols, phi, 0, n_k, proj + r * n_k);
    }
    return;
  }
  const int64_t n_blocks = (rows + 2) / 3;
  const bool par = rows > 3 && rows * cols * n_k >= kParallelMinWork;
  for_each_index(n_blocks, par, [&](int64_t b) {
    const int64_t r0 = b * 3;
    const int64_t tb = std::min<int64_t>(3, rows - r0);
    const float* x = X + r0 * cols;
    float* p = proj + r0 * n_k;
    if (tb == 3)
      project_rows<3>(x, cols, phi, n_k, p, sumsq + r0);
    else if (tb == 2)
      project_rows<2>(x, cols, phi, n_k, p, sumsq + r0);
    else
      project_rows<1>(x, cols, phi, n_k, p, sumsq + r0);
  });
}

// proj (rows, n_k) = X (rows, cols) · phiᵀ, phi (n_k, cols); sumsq (rows) = Σ_c X[row, c]². With
// phi_h (the F16 copy, scale per row) the projection reads it instead of phi.
void mhc_project_sumsq_avx2(const float* X, int64_t rows, int64_t cols, const float* phi,
                            const uint16_t* phi_h, const float* phi_scale, int64_t n_k,
                            float* proj, float* sumsq) {
  if (phi_h)
    project_sumsq(X, rows, cols, PhiF16{phi_h, phi_scale}, n_k, proj, sumsq);
  else
    project_sumsq(X, rows, cols, PhiF32{phi}, n_k, proj, sumsq);
}

// h (rows, cols) = phi[k] / scale[k] rounded to F16 (nearest even), scale[k] = the power of two
// that puts the row's largest |value| in [2^14, 2^15) (1 for a zero row; at least 2^-126), so no
// value overflows F16's 65504 and the relative rounding is at most 2^-11 down to |phi| =
// 2^-29·max|row|.
void mhc_pack_phi_half_avx2(const float* phi, int64_t rows, int64_t cols, uint16_t* h,
                            float* scale) {
  for (int64_t k = 0; k < rows; ++k) {
    const float* row = phi + k * cols;
    float mx = 0.0f;
    for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, std::fabs(row[c]));
    int e = 0;
    if (mx > 0.0f && std::isfinite(mx)) {
      std::frexp(mx, &e);  // mx = f·2^e, f in [0.5, 1): mx·2^(15−e) in [2^14, 2^15)
      e = std::max(e - 15, -126);  // the scale stays a normal float (rows below 2^-111: coarser)
    }
    scale[k] = std::ldexp(1.0f, e);
    const __m256 inv = _mm256_set1_ps(std::ldexp(1.0f, -e));
    uint16_t* o = h + k * cols;
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c),
                       _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(row + c), inv),
                                       _MM_FROUND_TO_NEAREST_INT));
    if (c < cols) {
      alignas(16) uint16_t b[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(b),
                      _mm256_cvtps_ph(_mm256_mul_ps(V::load_n(row + c, cols - c), inv),
                                      _MM_FROUND_TO_NEAREST_INT));
      std::memcpy(o + c, b, size_t(cols - c) * 2);
    }
  }
}

// ---- The C-wide loops --------------------------------------------------------------------------
// Column blocks of 8 with plain loads/stores, one masked tail block (masked stores are slow on
// some cores). The stream count is a compile-time N for n <= 8 (accumulators stay in registers)
// and run time (N = 0) above.

namespace {

template <bool Full>
inline __m256 ld(const float* p, int64_t w) {
  if constexpr (Full)
    return _mm256_loadu_ps(p);
  else
    return V::load_n(p, w);
}
template <bool Full>
inline void st(float* p, __m256 v, int64_t w) {
  if constexpr (Full)
    _mm256_storeu_ps(p, v);
  else
    V::store_n(p, v, w);
}

// f(c, std::bool_constant<full>, width) for the column blocks of 0..C.
template <class F>
inline void for_col_blocks(int64_t C, F&& f) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) f(c, std::true_type{}, int64_t(8));
  if (c < C) f(c, std::false_type{}, C - c);
}

// f(std::integral_constant<int, N>) with N = n for n <= 8, else N = 0 (run-time n).
template <class F>
inline void with_streams(int64_t n, F&& f) {
  switch (n) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 7:
      return f(std::integral_constant<int, 7>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
    default:
      return f(std::integral_constant<int, 0>{});
  }
}

template <int N>
void pre_aggregate_token(const float* x, const float* h, int64_t n_rt, int64_t C, float* u) {
  const int64_t n = N ? N : n_rt;
  for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
    constexpr bool kFull = decltype(full)::value;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j)
      acc = _mm256_fmadd_ps(_mm256_set1_ps(h[j]), ld<kFull>(x + j * C + c, w), acc);
    st<kFull>(u + c, acc, w);
  });
}

template <int N>
void post_merge_token(const float* x, const float* H, const float* hp, const float* f, int64_t n_rt,
                      int64_t C, float* o) {
  const int64_t n = N ? N : n_rt;
  for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
    constexpr bool kFull = decltype(full)::value;
    __m256 xv[N ? N : kMhcMaxStreams];
    for (int64_t j = 0; j < n; ++j) xv[j] = ld<kFull>(x + j * C + c, w);
    const __m256 fv = ld<kFull>(f + c, w);
    for (int64_t i = 0; i < n; ++i) {
      __m256 acc = _mm256_mul_ps(_mm256_set1_ps(hp[i]), fv);
      for (int64_t j = 0; j < n; ++j)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(H[i * n + j]), xv[j], acc);
      st<kFull>(o + i * C + c, acc, w);
    }
  });
}

template <int N>
void pre_aggregate_backward_token(const float* x, const float* h, const float* gu, int64_t n_rt,
                                  int64_t C, float* gx, float* gh) {
  const int64_t n = N ? N : n_rt;
  __m256 acc[N ? N : kMhcMaxStreams];
  for (int64_t j = 0; j < n; ++j) acc[j] = _mm256_setzero_ps();
  for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
    constexpr bool kFull = decltype(full)::value;
    const __m256 g = ld<kFull>(gu + c, w);
    if (gh)
      for (int64_t j = 0; j < n; ++j)
        acc[j] = _mm256_fmadd_ps(g, ld<kFull>(x + j * C + c, w), acc[j]);
    if (gx)
      for (int64_t j = 0; j < n; ++j) {
        float* p = gx + j * C + c;
        st<kFull>(p, _mm256_fmadd_ps(_mm256_set1_ps(h[j]), g, ld<kFull>(p, w)), w);
      }
  });
  if (gh)
    for (int64_t j = 0; j < n; ++j) gh[j] += V::hsum(acc[j]);
}

template <int N>
void post_merge_backward_token(const float* x, const float* H, const float* hp, const float* f,
                               const float* g, int64_t n_rt, int64_t C, float* gx, float* gH,
                               float* ghp, float* gF) {
  const int64_t n = N ? N : n_rt;
  // Dot products, one destination i at a time: n + 1 accumulators.
  if (gH || ghp) {
    for (int64_t i = 0; i < n; ++i) {
      __m256 acc[(N ? N : kMhcMaxStreams) + 1];
      for (int64_t j = 0; j <= n; ++j) acc[j] = _mm256_setzero_ps();
      for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
        constexpr bool kFull = decltype(full)::value;
        const __m256 gi = ld<kFull>(g + i * C + c, w);
        if (gH)
          for (int64_t j = 0; j < n; ++j)
            acc[j] = _mm256_fmadd_ps(gi, ld<kFull>(x + j * C + c, w), acc[j]);
        if (ghp) acc[n] = _mm256_fmadd_ps(gi, ld<kFull>(f + c, w), acc[n]);
      });
      if (gH)
        for (int64_t j = 0; j < n; ++j) gH[i * n + j] += V::hsum(acc[j]);
      if (ghp) ghp[i] += V::hsum(acc[n]);
    }
  }
  // Transposed mixes: g_X = H_resᵀ·G, g_F = h_postᵀ·G.
  if (gx || gF) {
    for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
      constexpr bool kFull = decltype(full)::value;
      __m256 gv[N ? N : kMhcMaxStreams];
      for (int64_t i = 0; i < n; ++i) gv[i] = ld<kFull>(g + i * C + c, w);
      if (gx)
        for (int64_t j = 0; j < n; ++j) {
          float* p = gx + j * C + c;
          __m256 acc = ld<kFull>(p, w);
          for (int64_t i = 0; i < n; ++i)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(H[i * n + j]), gv[i], acc);
          st<kFull>(p, acc, w);
        }
      if (gF) {
        __m256 acc = ld<kFull>(gF + c, w);
        for (int64_t i = 0; i < n; ++i) acc = _mm256_fmadd_ps(_mm256_set1_ps(hp[i]), gv[i], acc);
        st<kFull>(gF + c, acc, w);
      }
    });
  }
}

}  // namespace

// u (T, C) = Σ_j h_pre[t, j]·X[t, j].
void mhc_pre_aggregate_avx2(const float* X, const float* h_pre, int64_t n_tok, int64_t n, int64_t C,
                            float* u) {
  const bool par = n_tok > 1 && n_tok * n * C >= kParallelMinWork;
  with_streams(n, [&](auto NC) {
    constexpr int N = decltype(NC)::value;
    for_each_index(n_tok, par, [&](int64_t t) {
      pre_aggregate_token<N>(X + t * n * C, h_pre + t * n, n, C, u + t * C);
    });
  });
}

// X_out (T, n, C) = H_res·X + h_post ⊗ F; X_out may be X: a column block of all n streams is in
// registers before any of it is written.
void mhc_post_merge_avx2(const float* X, const float* h_res, const float* h_post, const float* F,
                         int64_t n_tok, int64_t n, int64_t C, float* X_out) {
  const bool par = n_tok > 1 && n_tok * n * n * C >= kParallelMinWork;
  with_streams(n, [&](auto NC) {
    constexpr int N = decltype(NC)::value;
    for_each_index(n_tok, par, [&](int64_t t) {
      post_merge_token<N>(X + t * n * C, h_res + t * n * n, h_post + t * n, F + t * C, n, C,
                          X_out + t * n * C);
    });
  });
}

// g_X[j] += h_pre[j]·g_u ; g_h_pre[j] += <g_u, X[j]> (null outputs skipped).
void mhc_pre_aggregate_backward_avx2(const float* X, const float* h_pre, const float* g_u,
                                     int64_t n_tok, int64_t n, int64_t C, float* g_X,
                                     float* g_h_pre) {
  const bool par = n_tok > 1 && n_tok * n * C >= kParallelMinWork;
  with_streams(n, [&](auto NC) {
    constexpr int N = decltype(NC)::value;
    for_each_index(n_tok, par, [&](int64_t t) {
      pre_aggregate_backward_token<N>(X + t * n * C, h_pre + t * n, g_u + t * C, n, C,
                                      g_X ? g_X + t * n * C : nullptr,
                                      g_h_pre ? g_h_pre + t * n : nullptr);
    });
  });
}

// g_X[j] += Σ_i H[i][j]·G[i] ; g_H[i][j] += <G[i], X[j]> ; g_h_post[i] += <G[i], F> ;
// g_F += Σ_i h_post[i]·G[i]. Null outputs skipped.
void mhc_post_merge_backward_avx2(const float* X, const float* h_res, const float* h_post,
                                  const float* F, const float* G, int64_t n_tok, int64_t n,
                                  int64_t C, float* g_X, float* g_h_res, float* g_h_post,
                                  float* g_F) {
  const bool par = n_tok > 1 && n_tok * n * n * C >= kParallelMinWork;
  with_streams(n, [&](auto NC) {
    constexpr int N = decltype(NC)::value;
    for_each_index(n_tok, par, [&](int64_t t) {
      post_merge_backward_token<N>(
          X + t * n * C, h_res + t * n * n, h_post + t * n, F + t * C, G + t * n * C, n, C,
          g_X ? g_X + t * n * C : nullptr, g_h_res ? g_h_res + t * n * n : nullptr,
          g_h_post ? g_h_post + t * n : nullptr, g_F ? g_F + t * C : nullptr);
    });
  });
}

// ---- The fused stream gradient of a site's backward (mhc_site_backward_streams) --------------
// Per token and stream j:
//   g_X[t] = Σ_i H[t][i][j]·G[t][i] + h_pre[t][j]·g_u[t] − coef[t]·X[t] + Σ_k gm[t][k]·phi[k]
//   gphi[k] += Σ_t gm[t][k]·X[t]
// in two phases per group of (up to 8) tokens: phase 1 (mhc_stream_init_avx2) token by token, the
// first three terms, reading X, G and g_u of the token in order and writing g_X; phase 2
// (mhc_stream_grad_block_avx2) the phi products, on the group's X and g_X that phase 1 just
// brought into cache. (One loop that loaded X, G and g_u of 4 tokens per column block in front of
// each K-long chain stalled on those ~24 scattered stream loads: ~12 % slower.) phi and the gphi
// partial are read in the packed layout of mhc_pack_phi_avx2: the K rows of one column block are
// 8·K contiguous floats, not K rows n·C apart (with n·C a multiple of 1024 those all fall in one L1
// set and the K loop thrashes it). Registers: TB x, TB acc, phi, gphi, one broadcast.
// mhc_site_backward_fused uses phase 1 with dots (mhc_stream_init_dots_avx2: no RMS term, which
// phase 2 then adds from its coef argument) and the head of the next site (mhc_merge_head_avx2).

namespace {

// Software prefetch of up to three byte ranges, a few cache lines per call: the stream pass
// touches ~7·TB rows n·C apart at once (X, G, g_u, g_X of TB tokens), more than the hardware
// prefetchers follow, so each group of tokens fetches the next group's X, G and g_u (into L2)
// while it computes.
struct RangePrefetch {
  const char* p[3] = {nullptr, nullptr, nullptr};
  const char* end[3] = {nullptr, nullptr, nullptr};
  int r = 0;
  void step(int lines) {
    while (lines > 0 && r < 3) {
      if (p[r] >= end[r]) {
        ++r;
        continue;
      }
      _mm_prefetch(p[r], _MM_HINT_T1);
      p[r] += 64;
      --lines;
    }
  }
};

// Phase 1, one token: g_X[j] = −coef·X[j] + h_pre[j]·g_u + Σ_i H[i][j]·G[i] for every stream j,
// the streams of the token read in order (the hardware prefetchers follow them).
template <int N>
void stream_init_token(const float* x, const float* g, const float* gu, const float* H,
                       const float* hpre, float coef, int64_t n_rt, int64_t C, float* gx) {
  const int64_t n = N ? N : n_rt;
  const __m256 mc = _mm256_set1_ps(-coef);
  for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
    constexpr bool kFull = decltype(full)::value;
    __m256 gv[N ? N : kMhcMaxStreams];
    for (int64_t i = 0; i < n; ++i) gv[i] = ld<kFull>(g + i * C + c, w);
    const __m256 gum = ld<kFull>(gu + c, w);
    for (int64_t j = 0; j < n; ++j) {
      __m256 a = _mm256_mul_ps(mc, ld<kFull>(x + j * C + c, w));
      a = _mm256_fmadd_ps(_mm256_set1_ps(hpre[j]), gum, a);
      for (int64_t i = 0; i < n; ++i) a = _mm256_fmadd_ps(_mm256_set1_ps(H[i * n + j]), gv[i], a);
      st<kFull>(gx + j * C + c, a, w);
    }
  });
}

// Phase 1 of the fused site backward (mhc_site_backward_fused), one token: g_X[j] = h_pre[j]·g_u +
// Σ_i H[i][j]·G[i] (written; the RMS term comes in phase 2), and the dots of the merge and
// pre-aggregate backwards on the token's X, G and g_u while they are in L1: g_hpre[j] =
// <g_u, X[j]>, g_hres[i][j] = <G[i], X[j]> (overwritten). Each dot is summed in the order of
// pre_aggregate_backward_token / post_merge_backward_token (same values).
template <int N>
void stream_init_dots_token(const float* x, const float* g, const float* gu, const float* H,
                            const float* hpre, int64_t n_rt, int64_t C, float* gx, float* ghres,
                            float* ghpre) {
  const int64_t n = N ? N : n_rt;
  constexpr int64_t kN = N ? N : kMhcMaxStreams;
  __m256 dp[kN];
  for (int64_t j = 0; j < n; ++j) dp[j] = _mm256_setzero_ps();
  for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
    constexpr bool kFull = decltype(full)::value;
    __m256 gv[kN];
    for (int64_t i = 0; i < n; ++i) gv[i] = ld<kFull>(g + i * C + c, w);
    const __m256 gum = ld<kFull>(gu + c, w);
    for (int64_t j = 0; j < n; ++j) {
      dp[j] = _mm256_fmadd_ps(gum, ld<kFull>(x + j * C + c, w), dp[j]);
      __m256 a = _mm256_mul_ps(_mm256_set1_ps(hpre[j]), gum);
      for (int64_t i = 0; i < n; ++i) a = _mm256_fmadd_ps(_mm256_set1_ps(H[i * n + j]), gv[i], a);
      st<kFull>(gx + j * C + c, a, w);
    }
  });
  for (int64_t j = 0; j < n; ++j) ghpre[j] = V::hsum(dp[j]);
  // <G[i], X[j]>, two destinations i per sweep (2n accumulators).
  for (int64_t i0 = 0; i0 < n; i0 += 2) {
    const bool two = i0 + 1 < n;
    __m256 a0[kN], a1[kN];
    for (int64_t j = 0; j < n; ++j) a0[j] = a1[j] = _mm256_setzero_ps();
    for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
      constexpr bool kFull = decltype(full)::value;
      const __m256 g0 = ld<kFull>(g + i0 * C + c, w);
      const __m256 g1 = two ? ld<kFull>(g + (i0 + 1) * C + c, w) : _mm256_setzero_ps();
      for (int64_t j = 0; j < n; ++j) {
        const __m256 xj = ld<kFull>(x + j * C + c, w);
        a0[j] = _mm256_fmadd_ps(g0, xj, a0[j]);
        if (two) a1[j] = _mm256_fmadd_ps(g1, xj, a1[j]);
      }
    });
    for (int64_t j = 0; j < n; ++j) {
      ghres[i0 * n + j] = V::hsum(a0[j]);
      if (two) ghres[(i0 + 1) * n + j] = V::hsum(a1[j]);
    }
  }
}

// The head of a site's merge backward, one token, overwriting: g_F = Σ_i h_post[i]·G[i],
// g_hpost[i] = <G[i], F> (the values of post_merge_backward_token into zeroed outputs).
template <int N>
void merge_head_token(const float* g, const float* f, const float* hp, int64_t n_rt, int64_t C,
                      float* gF, float* ghp) {
  const int64_t n = N ? N : n_rt;
  constexpr int64_t kN = N ? N : kMhcMaxStreams;
  __m256 acc[kN];
  for (int64_t i = 0; i < n; ++i) acc[i] = _mm256_setzero_ps();
  for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
    constexpr bool kFull = decltype(full)::value;
    const __m256 fv = ld<kFull>(f + c, w);
    __m256 a = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
      const __m256 gi = ld<kFull>(g + i * C + c, w);
      acc[i] = _mm256_fmadd_ps(gi, fv, acc[i]);
      a = _mm256_fmadd_ps(_mm256_set1_ps(hp[i]), gi, a);
    }
    st<kFull>(gF + c, a, w);
  });
  for (int64_t i = 0; i < n; ++i) ghp[i] = V::hsum(acc[i]);
}

// Phase 2, TB tokens whose g_X holds phase 1's values, one column block (pos; packed blocks pp
// and gp_p): g_X[t] += Σ_k gm[t][k]·phi[k] and gphi[k] += Σ_t gm[t][k]·X[t]. One accumulator per
// token: TB x, TB acc, phi, gphi and a broadcast stay in registers (a second accumulator per
// token spilled at TB = 4); consecutive calls are independent, so the out-of-order core overlaps
// their K-long chains.
// coef (TB) or null: the tile first adds −coef[t]·X[t] (the RMS term, when phase 1 left it out).
template <int TB, bool kFull>
inline void stream_grad_tile(const float* X, const float* gm, const float* coef, const float* pp,
                             int64_t nc, int64_t pos, int64_t w, int64_t K, float* gX,
                             float* gp_p) {
  __m256 xv[TB], acc[TB];
  for (int t = 0; t < TB; ++t) {
    xv[t] = ld<kFull>(X + t * nc + pos, w);
    acc[t] = ld<kFull>(gX + t * nc + pos, w);
    if (coef) acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(coef[t]), xv[t], acc[t]);
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m256 pv = _mm256_loadu_ps(pp + k * 8);
    __m256 gp = _mm256_loadu_ps(gp_p + k * 8);
    for (int t = 0; t < TB; ++t) {
      const __m256 g = _mm256_broadcast_ss(gm + t * K + k);
      acc[t] = _mm256_fmadd_ps(g, pv, acc[t]);
      gp = _mm256_fmadd_ps(g, xv[t], gp);
    }
    _mm256_storeu_ps(gp_p + k * 8, gp);
  }
  for (int t = 0; t < TB; ++t) st<kFull>(gX + t * nc + pos, acc[t], w);
}

}  // namespace

// Packed phi (n·⌈C/8⌉ blocks of K × 8 floats, lanes past C zero): block (j, b) row k lane l =
// phi[k][j·C + 8b + l]. unpack_add does g_phi += Σ_p parts[p] for n_parts packed partials
// `stride` floats apart, over the blocks [b0, b1) (a thread's share).
int64_t mhc_packed_phi_size(int64_t n, int64_t C) {
  return n * ((C + 7) / 8) * (n * n + 2 * n) * 8;
}

void mhc_pack_phi_avx2(const float* phi, int64_t n, int64_t C, float* out) {
  const int64_t K = n * n + 2 * n, nc = n * C, nb = (C + 7) / 8;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t b = 0; b < nb; ++b) {
      float* o = out + (j * nb + b) * K * 8;
      const int64_t w = std::min<int64_t>(8, C - 8 * b);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t l = 0; l < 8; ++l)
          o[k * 8 + l] = l < w ? phi[k * nc + j * C + 8 * b + l] : 0.0f;
    }
}

void mhc_unpack_add_phi_avx2(const float* parts, int n_parts, int64_t stride, int64_t n, int64_t C,
                             int64_t blk0, int64_t blk1, float* g_phi) {
  const int64_t K = n * n + 2 * n, nc = n * C, nb = (C + 7) / 8;
  for (int64_t q = blk0; q < blk1; ++q) {
    const int64_t j = q / nb, b = q % nb, w = std::min<int64_t>(8, C - 8 * b);
    for (int64_t k = 0; k < K; ++k) {
      __m256 s = _mm256_loadu_ps(parts + (q * K + k) * 8);
      for (int p = 1; p < n_parts; ++p)
        s = _mm256_add_ps(s, _mm256_loadu_ps(parts + p * stride + (q * K + k) * 8));
      float* dst = g_phi + k * nc + j * C + 8 * b;
      if (w == 8)
        _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), s));
      else
        V::store_n(dst, _mm256_add_ps(V::load_n(dst, w), s), w);
    }
  }
}

// Phase 1 of the stream gradient for count tokens (see above): g_X[t] = H_res[t]ᵀ·G[t] +
// h_pre[t] ⊗ g_u[t] − coef[t]·X[t], written (not accumulated), token by token.
void mhc_stream_init_avx2(const float* X, const float* G, const float* g_u, const float* h_res,
                          const float* h_pre, const float* coef, int64_t count, int64_t n,
                          int64_t C, float* g_X) {
  const int64_t nc = n * C;
  with_streams(n, [&](auto NC) {
    constexpr int N = decltype(NC)::value;
    for (int64_t t = 0; t < count; ++t)
      stream_init_token<N>(X + t * nc, G + t * nc, g_u + t * C, h_res + t * n * n, h_pre + t * n,
                           coef[t], n, C, g_X + t * nc);
  });
}

// Phase 1 of the fused site backward for count tokens (see stream_init_dots_token): g_X (count,
// n, C) written, g_h_res (count, n, n) and g_h_pre (count, n) overwritten.
void mhc_stream_init_dots_avx2(const float* X, const float* G, const float* g_u, const float* h_res,
                               const float* h_pre, int64_t count, int64_t n, int64_t C,
                               float* g_X, float* g_h_res, float* g_h_pre) {
  const int64_t nc = n * C, nn = n * n;
  with_streams(n, [&](auto NC) {
    constexpr int N = decltype(NC)::value;
    for (int64_t t = 0; t < count; ++t)
      stream_init_dots_token<N>(X + t * nc, G + t * nc, g_u + t * C, h_res + t * nn,
                                h_pre + t * n, n, C, g_X + t * nc, g_h_res + t * nn,
                                g_h_pre + t * n);
  });
}

// The merge-backward head for count tokens (see merge_head_token): g_F (count, C) and g_h_post
// (count, n) overwritten from G (count, n, C), F (count, C), h_post (count, n).
void mhc_merge_head_avx2(const float* G, const float* F, const float* h_post, int64_t count,
                         int64_t n, int64_t C, float* g_F, float* g_h_post) {
  with_streams(n, [&](auto NC) {
    constexpr int N = decltype(NC)::value;
    for (int64_t t = 0; t < count; ++t)
      merge_head_token<N>(G + t * n * C, F + t * C, h_post + t * n, n, C, g_F + t * C,
                          g_h_post + t * n);
  });
}

// Phase 2 for count tokens (1..8, g_X holding phase 1's values): 4 tokens at a time over all
// column blocks (one pass over the packed phi and the gphi partial per 4 tokens; running the
// group's token quads back to back on one column block chains their gphi updates through
// store-to-load forwarding, which measured slower). next_X / next_G / next_gu, next_count: the
// next group's inputs, prefetched into L2 spread over the column blocks.
// coef (count) or null: also add −coef[t]·X[t] (phase 1 of the fused backward leaves it out).
void mhc_stream_grad_block_avx2(const float* X, const float* gm, const float* coef,
                                const float* phi_p, int64_t count, int64_t n, int64_t C,
                                float* g_X, float* gphi_p, const float* next_X,
                                const float* next_G, const float* next_gu, int64_t next_count) {
  const int64_t K = n * n + 2 * n, nc = n * C, nb = (C + 7) / 8;
  RangePrefetch pf;
  const float* starts[3] = {next_X, next_G, next_gu};
  const int64_t lens[3] = {next_count * nc, next_count * nc, next_count * C};
  for (int q = 0; q < 3; ++q) {
    pf.p[q] = reinterpret_cast<const char*>(starts[q]);
    pf.end[q] = starts[q] ? pf.p[q] + 4 * lens[q] : pf.p[q];
  }
  const int64_t iters = ((count + 3) / 4) * n * nb;
  const int pf_lines = int((4 * (2 * nc + C) * next_count / 64 + iters - 1) / iters);
  for (int64_t t0 = 0; t0 < count; t0 += 4) {
    const float* Xt = X + t0 * nc;
    const float* gmt = gm + t0 * K;
    const float* ct = coef ? coef + t0 : nullptr;
    float* gXt = g_X + t0 * nc;
    const int64_t tb = std::min<int64_t>(4, count - t0);
    for (int64_t j = 0; j < n; ++j)
      for_col_blocks(C, [&](int64_t c, auto full, int64_t w) {
        constexpr bool kFull = decltype(full)::value;
        const int64_t pos = j * C + c, blk = (j * nb + c / 8) * K * 8;
        pf.step(pf_lines);
        if (tb == 4)
          stream_grad_tile<4, kFull>(Xt, gmt, ct, phi_p + blk, nc, pos, w, K, gXt,
                                     gphi_p + blk);
        else if (tb == 3)
          stream_grad_tile<3, kFull>(Xt, gmt, ct, phi_p + blk, nc, pos, w, K, gXt,
                                     gphi_p + blk);
        else if (tb == 2)
          stream_grad_tile<2, kFull>(Xt, gmt, ct, phi_p + blk, nc, pos, w, K, gXt,
                                     gphi_p + blk);
        else
          stream_grad_tile<1, kFull>(Xt, gmt, ct, phi_p + blk, nc, pos, w, K, gXt,
                                     gphi_p + blk);
      });
  }
}

// ---- Sinkhorn, 8 tokens at once (token l in lane l)
// ---------------------------------------------- The same steps in the same order as the scalar
// sinkhorn_step in mhc.cpp (sums in the same order, reciprocal, multiply); only exp is the vector
// one of simd_avx2.h (within 4e-7 of std::exp). Z, H, g_H, g_Z: count (1..8) matrices of n·n
// floats, back to back; unused lanes repeat lane 0.

namespace {

inline __m256 gather_lanes(const float* base, int64_t stride, int count, int64_t k) {
  alignas(32) float v[8];
  for (int l = 0; l < 8; ++l) v[l] = base[(l < count ? l : 0) * stride + k];
  return _mm256_load_ps(v);
}

inline void scatter_lanes(__m256 x, float* base, int64_t stride, int count, int64_t k, bool add) {
  alignas(32) float v[8];
  _mm256_store_ps(v, x);
  for (int l = 0; l < count; ++l) {
    if (add)
      base[l * stride + k] += v[l];
    else
      base[l * stride + k] = v[l];
  }
}

// M (nn vectors) = exp(Z − max Z) per lane. N: n at compile time (0: run time n_rt), as in
// with_streams; with N known the loops unroll and the matrix stays in registers where it fits.
template <int N>
inline void sinkhorn8_start(const float* Z, int count, int64_t n_rt, __m256* M) {
  const int64_t n = N ? N : n_rt, nn = n * n;
  __m256 mx = gather_lanes(Z, nn, count, 0);
  M[0] = mx;
  for (int64_t k = 1; k < nn; ++k) {
    M[k] = gather_lanes(Z, nn, count, k);
    mx = _mm256_max_ps(mx, M[k]);
  }
  for (int64_t k = 0; k < nn; ++k) M[k] = V::exp(_mm256_sub_ps(M[k], mx));
}

template <int N, bool kCol>
inline void sinkhorn8_step(const __m256* in, __m256* out, __m256* inv, int64_t n_rt) {
  const int64_t n = N ? N : n_rt;
  const __m256 one = _mm256_set1_ps(1.0f);
  if constexpr (kCol) {
    for (int64_t j = 0; j < n; ++j) inv[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) inv[j] = _mm256_add_ps(inv[j], in[i * n + j]);
    for (int64_t j = 0; j < n; ++j) inv[j] = _mm256_div_ps(one, inv[j]);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) out[i * n + j] = _mm256_mul_ps(in[i * n + j], inv[j]);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      __m256 s = _mm256_setzero_ps();
      for (int64_t j = 0; j < n; ++j) s = _mm256_add_ps(s, in[i * n + j]);
      inv[i] = _mm256_div_ps(one, s);
      for (int64_t j = 0; j < n; ++j) out[i * n + j] = _mm256_mul_ps(in[i * n + j], inv[i]);
    }
  }
}

}  // namespace

// One token, n <= 4 (the decode step): the matrix as n row vectors of 4 lanes. A column step is
// then n vector adds, ONE division and n multiplies (the 8-lane version, built for 8 tokens,
// spends a division per column and per row on a single token); a row step is a column step of
// the transpose. Sums in the scalar order (rows 0, 1, ... added in turn), 1/s then multiply, so
// the values are those of sinkhorn8 (only exp is the vector one).
static void sinkhorn1_forward_n4(const float* Z, float* H, int64_t n, int iters) {
  alignas(16) float m[16];
  for (int k = 0; k < 16; ++k) m[k] = 1.0f;  // padding lanes: 1 (never read back)
  float mx = Z[0];
  for (int64_t k = 1; k < n * n; ++k) mx = std::max(mx, Z[k]);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) m[i * 4 + j] = Z[i * n + j] - mx;
  const __m256 e01 = V::exp(_mm256_load_ps(m)), e23 = V::exp(_mm256_load_ps(m + 8));
  __m128 r[4] = {_mm256_castps256_ps128(e01), _mm256_extractf128_ps(e01, 1),
                 _mm256_castps256_ps128(e23), _mm256_extractf128_ps(e23, 1)};
  for (int64_t i = n; i < 4; ++i) r[i] = _mm_set1_ps(1.0f);
  const __m128 one = _mm_set1_ps(1.0f);
  auto col_step = [&](__m128* v) {
    __m128 s = v[0];
    for (int64_t i = 1; i < n; ++i) s = _mm_add_ps(s, v[i]);
    const __m128 inv = _mm_div_ps(one, s);
    for (int64_t i = 0; i < n; ++i) v[i] = _mm_mul_ps(v[i], inv);
  };
  for (int it = 0; it < iters; ++it) {
    col_step(r);
    _MM_TRANSPOSE4_PS(r[0], r[1], r[2], r[3]);
    col_step(r);  // the rows of the original
    _MM_TRANSPOSE4_PS(r[0], r[1], r[2], r[3]);
  }
  for (int64_t i = 0; i < n; ++i) {
    _mm_store_ps(m + i * 4, r[i]);
    for (int64_t j = 0; j < n; ++j) H[i * n + j] = m[i * 4 + j];
  }
}

namespace {

template <int N>
void sinkhorn8_forward(const float* Z, float* H, int count, int64_t n_rt, int iters) {
  const int64_t n = N ? N : n_rt, nn = n * n;
  __m256 M[N ? N * N : kMhcMaxStreams * kMhcMaxStreams], inv[N ? N : kMhcMaxStreams];
  sinkhorn8_start<N>(Z, count, n, M);
  for (int it = 0; it < iters; ++it) {
    sinkhorn8_step<N, true>(M, M, inv, n);
    sinkhorn8_step<N, false>(M, M, inv, n);
  }
  for (int64_t k = 0; k < nn; ++k) scatter_lanes(M[k], H, nn, count, k, false);
}

// Back through one normalisation out = in·(1/s) (kCol: s the column sums): g_in = (g_out −
// Σ_axis g_out ⊙ out)·(1/s), in place on g.
template <int N, bool kCol>
inline void sinkhorn8_step_back(__m256* g, const __m256* o, const __m256* iv, int64_t n_rt) {
  const int64_t n = N ? N : n_rt;
  for (int64_t a = 0; a < n; ++a) {
    __m256 dot = _mm256_setzero_ps();
    for (int64_t b = 0; b < n; ++b) {
      const int64_t k = kCol ? b * n + a : a * n + b;
      dot = _mm256_fmadd_ps(g[k], o[k], dot);
    }
    for (int64_t b = 0; b < n; ++b) {
      const int64_t k = kCol ? b * n + a : a * n + b;
      g[k] = _mm256_mul_ps(_mm256_sub_ps(g[k], dot), iv[a]);
    }
  }
}

template <int N>
void sinkhorn8_backward(const float* Z, const float* g_H, float* g_Z, int count, int64_t n_rt,
                        int iters, float* work) {
  const int64_t n = N ? N : n_rt, nn = n * n, steps = 2 * int64_t(iters);
  // Work as vectors, 32-byte aligned inside the caller's buffer.
  __m256* S = reinterpret_cast<__m256*>((reinterpret_cast<uintptr_t>(work) + 31) & ~uintptr_t(31));
  __m256* inv = S + (steps + 1) * nn;
  __m256 g[N ? N * N : kMhcMaxStreams * kMhcMaxStreams];
  sinkhorn8_start<N>(Z, count, n, S);
  for (int64_t st = 0; st < steps; st += 2) {  // column step, then row step
    sinkhorn8_step<N, true>(S + st * nn, S + (st + 1) * nn, inv + st * n, n);
    sinkhorn8_step<N, false>(S + (st + 1) * nn, S + (st + 2) * nn, inv + (st + 1) * n, n);
  }
  for (int64_t k = 0; k < nn; ++k) g[k] = gather_lanes(g_H, nn, count, k);
  for (int64_t st = steps - 1; st >= 1; st -= 2) {  // row step st, then column step st − 1
    sinkhorn8_step_back<N, false>(g, S + (st + 1) * nn, inv + st * n, n);
    sinkhorn8_step_back<N, true>(g, S + st * nn, inv + (st - 1) * n, n);
  }
  for (int64_t k = 0; k < nn; ++k)
    scatter_lanes(_mm256_mul_ps(g[k], S[k]), g_Z, nn, count, k, true);
}

}  // namespace

void mhc_sinkhorn8_forward_avx2(const float* Z, float* H, int count, int64_t n, int iters) {
  if (count == 1 && n <= 4) return sinkhorn1_forward_n4(Z, H, n, iters);
  with_streams(n, [&](auto NC) {
    sinkhorn8_forward<decltype(NC)::value>(Z, H, count, n, iters);
  });
}

// g_Z += unrolled backward of the forward above. work: 8·sinkhorn_work_size(n, iters) floats.
void mhc_sinkhorn8_backward_avx2(const float* Z, const float* g_H, float* g_Z, int count, int64_t n,
                                 int iters, float* work) {
  with_streams(n, [&](auto NC) {
    sinkhorn8_backward<decltype(NC)::value>(Z, g_H, g_Z, count, n, iters, work);
  });
}

}  // namespace qwen::ops::detail
