// ops/cross_entropy.h — the training loss: cross-entropy of the lm_head logits against the next
// tokens, fused with the lm_head product and its backward so that the (N, V) logits are never
// stored whole (at N = 2048, V = 151936 they would take 1.2 GB). Rows are processed in blocks;
// each block's logits are formed a vocabulary chunk at a time by ops::gemm_f32 with an online
// logsumexp, and the gradient products run on the same chunks.
#pragma once
#include <cstddef>
#include <cstdint>

namespace qwen::ops {

// h (N, C) final hidden states (after the final norm), W (V, C) f32 lm_head (or the tied
// embedding), targets (N) with target < 0 meaning "ignore this row". Computes logits = h·Wᵀ in
// blocks of rows × vocabulary chunks with an online logsumexp, loss_i = lse_i − logit_i[target_i].
// Returns the SUM of loss_i over the non-ignored rows (double) and writes their count to
// *n_counted (which may be nullptr).
// Gradients of grad_scale·Σ loss_i, with G = grad_scale·(softmax − onehot) per counted row:
//   dh (N, C) += G·W  (if dh != nullptr),   dW (V, C) += Gᵀ·h  (if dW != nullptr: nullptr for a
//   frozen head). Ignored rows contribute nothing (their dh rows are left untouched).
// The caller passes grad_scale = 1/(total counted targets) (times 1/grad_accum) to get the
// gradients of the mean loss. Scratch: O(row_block × vocab_chunk), see cross_entropy_plan.
// Deterministic for a given thread count. Non-finite inputs do not crash (the loss comes out
// NaN or inf; the caller reports it). Throws qwen::Error on a target >= V.
double cross_entropy_fused(const float* h, const float* W, const int32_t* targets, int64_t N,
                           int64_t C, int64_t V, float grad_scale, float* dh, float* dW,
                           int64_t* n_counted);

// Reference: full logits per row, plain loops, double accumulation everywhere (tests only; it
// allocates V·C doubles when dW is wanted). Same contract as cross_entropy_fused.
double cross_entropy_ref(const float* h, const float* W, const int32_t* targets, int64_t N,
                         int64_t C, int64_t V, float grad_scale, float* dh, float* dW,
                         int64_t* n_counted);

// ---- Blocking (benchmarks and tests choose it; cross_entropy_fused uses the automatic one) ----
// Counted rows are taken row_block at a time (gathered when ignored rows break them up). When
// vocab_chunk >= V the whole (row_block, V) logits tile is kept: one logits GEMM, the softmax in
// place, then dh += G·W and dW += Gᵀ·h_block. Otherwise pass 1 runs the logits GEMM chunk by
// chunk keeping a running max and sum per row, and pass 2 recomputes each chunk's logits, turns
// them into G in place and runs the two gradient GEMMs on that chunk (4 GEMMs instead of 3, in
// O(row_block × vocab_chunk) memory).
struct CrossEntropyPlan {
  int64_t row_block = 0;    // counted rows per block, > 0
  int64_t vocab_chunk = 0;  // vocabulary entries per logits chunk, > 0 (>= V: keep the tile)
};

// The plan cross_entropy_fused uses for these sizes (chosen from bench_cross_entropy figures):
// a kept tile of 256 rows (fewer when the tile would pass 32 MiB) for V <= 65536, else
// 256-row blocks with recomputed 8192-entry vocabulary chunks.
CrossEntropyPlan cross_entropy_plan(int64_t N, int64_t C, int64_t V);

// Scratch memory a plan allocates at most (logits chunk, gathered h and dh rows, row stats).
size_t cross_entropy_scratch_bytes(const CrossEntropyPlan& plan, int64_t C, int64_t V);

// cross_entropy_fused with an explicit plan (row_block and vocab_chunk must be > 0).
double cross_entropy_fused_plan(const CrossEntropyPlan& plan, const float* h, const float* W,
                                const int32_t* targets, int64_t N, int64_t C, int64_t V,
                                float grad_scale, float* dh, float* dW, int64_t* n_counted);

}  // namespace qwen::ops
