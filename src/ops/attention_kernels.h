// ops/attention_kernels.h — internal: the four inner kernels of flash attention, one tile at a
// time, behind a table of function pointers so the tiling driver (attention.cpp, baseline x86-64)
// can run the AVX-512 or AVX2 versions (attention_avx512.cpp / attention_avx2.cpp, one generic
// body in attention_simd.h) or the portable ones in attention.cpp, chosen at run time.
// Scores are kept in log2 units: the driver pre-multiplies q by scale·log2(e), so the softmax
// uses exp2, whose range reduction is exact.
#pragma once
#include <cstdint>

#include "ops/attention.h"

namespace qwen::ops::detail {

// Keys per tile. A K tile is transposed to (D, kAttnBk) so the score kernel runs along keys.
constexpr int64_t kAttnBk = 64;

struct AttnKernels {
  // Kt (D, kAttnBk) = transpose of nk key rows (row j at k + j*k_stride, D floats each);
  // columns nk .. kAttnBk-1 are zero.
  void (*transpose_k)(const float* k, int64_t k_stride, int64_t nk, int64_t D, float* Kt);
  // S (M, kAttnBk) = Qs (M, D) · Kt (D, kAttnBk)
  void (*scores)(const float* Qs, int64_t M, int64_t D, const float* Kt, float* S);
  // Online-softmax step for each row r, whose first n_valid[r] scores are live (the rest are
  // masked): m[r] = max(m[r], max live S), P = exp2(S - m[r]) on live columns and 0 elsewhere
  // (written over S, all kAttnBk columns), l[r] = l[r]·exp2(m_old - m_new) + sum P, and
  // acc row r (D floats) is multiplied by exp2(m_old - m_new).
  void (*softmax_update)(float* S, int64_t M, const int32_t* n_valid, float* m, float* l,
                         float* acc, int64_t D);
  // acc (M, D) += P (M, nk; row stride kAttnBk) · V (nk rows at v + j*v_stride, D floats each)
  void (*pv)(const float* P, int64_t M, int64_t nk, const float* v, int64_t v_stride, int64_t D,
             float* acc);
  // S (M, kAttnBk) = Qs (M, D) · Kᵀ straight from the nk key rows (row j at k + j*k_stride),
  // columns nk .. kAttnBk-1 zero; for M <= kDirectScoreRows (decode), where transposing a key
  // tile would cost as much as the scores themselves.
  void (*scores_direct)(const float* Qs, int64_t M, int64_t D, const float* k, int64_t k_stride,
                        int64_t nk, float* S);
};

// Query rows up to which the driver uses scores_direct instead of transpose_k + scores: one
// token's query heads of a kv head (G = 3 in SmolLM2 and the 124.7M shape).
constexpr int64_t kDirectScoreRows = 4;

const AttnKernels& attn_kernels_portable();
const AttnKernels& attn_kernels_avx2();    // only call when cpu_features().avx2
const AttnKernels& attn_kernels_avx512();  // only call when cpu_features().avx512
// Tests only, needs AVX2: the generic kernels with 16-lane vectors emulated by AVX2 register
// pairs and the AVX-512 block shape, so AVX-512's logic is exercised on AVX2-only machines.
const AttnKernels& attn_kernels_w16_test();

// flash_attention with an explicit kernel table (tests run both tables through the driver).
void flash_attention_with(const AttnKernels& kern, const float* q, const float* k, const float* v,
                          int64_t kv_stride, float* out, const AttnShape& s, float* lse);

// Portable online-softmax tile update with an explicit row stride (attention.cpp).
void online_softmax_rows_portable(float* S, int64_t lds, int64_t M, const int32_t* n_valid,
                                  float* m, float* l, float* acc, int64_t D);

}  // namespace qwen::ops::detail
