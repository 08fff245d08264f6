// ops/attention_backward.h — the training backward of causal GQA self-attention (pos0 == 0):
// gradients of out = softmax(scale·q·kᵀ + causal mask)·v with respect to q, k and v.
// flash_attention_backward is tiled like the forward: it never materialises a T×T matrix but
// recomputes each (query block × key block) tile of probabilities from the forward's lse.
// attention_backward_ref builds the full score matrix and is kept for tests.
//
// Derivation (per head, row i = query, column j = key; P = softmax(S), S = scale·q·kᵀ):
//   dv = Pᵀ·dout, dP = dout·vᵀ, dS = P ∘ (dP − D) with D_i = Σ_j P_ij dP_ij = rowsum(dout ∘ out),
//   dq = scale·dS·k, dk = scale·dSᵀ·q  (the softmax Jacobian is diag(P_i) − P_i P_iᵀ).
#pragma once
#include <cstdint>

#include "ops/attention.h"

namespace qwen::ops {

// q (T, H, D) contiguous; k, v: the vector of position s and kv head g at k + s*kv_stride + g*D
// (kv_stride >= KV*D); out (T, H, D) and lse (H, T) from flash_attention(..., lse); dout (T, H, D).
// dq (T, H, D) contiguous, dk / dv with the same layout and kv_stride as k / v: the gradients are
// ADDED to what they hold (never overwritten); floats of dk / dv outside the KV*D columns of each
// row are not touched. Requires s.pos0 == 0 (self-attention over one sequence, causal); query
// head h reads kv head h / (H / KV). Bad shapes throw qwen::Error.
// Threads: OpenMP over (kv head, key blocks); each key block's dk / dv rows have one writer (the
// same sums whatever the thread count), and dq is summed in double from per-thread partials in
// thread order, so results are bitwise reproducible for a given thread count and dq agrees
// across thread counts to the last bit or so. Scratch is thread-local and reused across calls:
// 2·T·H·D floats of staged q / dout, T·H·D doubles of dq partial per thread, and small tiles.
void flash_attention_backward(const float* q, const float* k, const float* v, int64_t kv_stride,
                              const float* out, const float* dout, const float* lse, float* dq,
                              float* dk, float* dv, const AttnShape& s);

// Same contract (and accumulation), computed naively from the full (H, T, T) probability matrix.
// It normalises each softmax row itself and takes D_i = Σ_j P_ij dP_ij, so it reads neither out
// nor lse (either may be nullptr): an independent check of the flash version's use of them.
void attention_backward_ref(const float* q, const float* k, const float* v, int64_t kv_stride,
                            const float* out, const float* dout, const float* lse, float* dq,
                            float* dk, float* dv, const AttnShape& s);

namespace detail {

// The backward's own inner kernels (the tile products S = Q·Kᵀ, dP = dO·Vᵀ and dq += dS·K reuse
// the forward's AttnKernels). Tiles are (M, kAttnBk) row-major, as in attention_kernels.h.
struct AttnBwdKernels {
  // For each row r of the S / dP tiles, columns [0, ncols): with n = min(n_valid[r], ncols) live
  // columns, S := P = exp2(S − lse2[r]) on live columns, 0 elsewhere; dP := P ∘ (dP − Dv[r]).
  // Columns from ncols up to the next multiple of 8 may be overwritten too (with P / dS values
  // or zeros); later columns are not touched.
  void (*grad_tile)(float* S, float* dP, int64_t M, int64_t ncols, const int32_t* n_valid,
                    const float* lse2, const float* Dv);
  // C (nk, D; row stride D) += Aᵀ · B: A (M, kAttnBk) row-major, of which columns [0, nk) are
  // read; B (M, D) contiguous.
  void (*tn_acc)(const float* A, int64_t M, int64_t nk, const float* B, int64_t D, float* C);
  // dst (n) += src (n), widened to double.
  void (*add_to_f64)(double* dst, const float* src, int64_t n);
};

const AttnBwdKernels& attn_bwd_kernels_portable();
const AttnBwdKernels& attn_bwd_kernels_avx2();  // only call when cpu_features().avx2

// Which kernels flash_attention_backward_with runs (tests compare the two).
enum class AttnBwdIsa { portable, avx2 };

// flash_attention_backward with an explicit kernel set (avx2 only when the CPU has it).
void flash_attention_backward_with(AttnBwdIsa isa, const float* q, const float* k, const float* v,
                                   int64_t kv_stride, const float* out, const float* dout,
                                   const float* lse, float* dq, float* dk, float* dv,
                                   const AttnShape& s);

}  // namespace detail
}  // namespace qwen::ops
