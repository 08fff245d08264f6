// ops/paged_attention.h — causal grouped-query attention whose keys and values live in fixed-size
// blocks of a shared pool, reached through a per-sequence block table (the server's paged KV
// cache). Nothing is copied into a contiguous buffer: the kernel walks the table block by block
// with an online softmax, as the contiguous flash attention (ops/attention.h) walks key tiles.
//
// Layout of one layer's pool (chosen so that the score loop runs along keys with no transpose):
//   K: block b, kv head g holds Kᵀ (D, block_size) at k + (b·KV + g)·D·block_size
//   V: block b, kv head g holds V  (block_size, D) at v + (b·KV + g)·block_size·D
//
// Batch invariance: the result for one query row depends only on its position and the cached
// K/V, never on how many other rows, chunks or threads share the call (fixed key tiles at
// multiples of the tile width, no key splitting), so a sequence decodes to the same bits alone
// or in a crowd.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/attention.h"

namespace qwen::ops {

struct PagedKv {
  float* k = nullptr;              // the layer's K pool (layout above)
  float* v = nullptr;              // the layer's V pool
  const int32_t* table = nullptr;  // logical block i of the sequence -> physical block id
  int64_t n_table = 0;             // entries in table (positions < n_table·block_size exist)
  int64_t block_size = 0;          // tokens per block
};

// Floats one block holds for one layer, K or V: KV·D·block_size.
inline int64_t paged_block_floats(int64_t KV, int64_t D, int64_t block_size) {
  return KV * D * block_size;
}

// Stores the rows k, v (s.T, KV·D) at positions s.pos0 .. s.pos0+s.T-1 through the table.
// Throws qwen::Error if a position falls past the table.
void paged_kv_store(const PagedKv& kv, const float* k, const float* v, const AttnShape& s);

// q (T, H, D) contiguous, out (T, H, D) contiguous. Query t (position pos0+t) attends to the
// keys at positions 0 .. pos0+t, read through kv.table. Parallel over (kv head, query tile)
// with OpenMP when the call is large enough to pay for it.
void paged_attention(const float* q, const PagedKv& kv, float* out, const AttnShape& s);

// The same with the portable (scalar loop) inner kernels, whatever the CPU (tests compare;
// detail::paged_attention_with runs any kernel table).
// One sequence's part of a batched call: store its new rows k, v (s.T, KV·D) through kv, then
// attend q (s.T, H, D) into out (s.T, H, D), as paged_kv_store + paged_attention.
struct PagedCall {
  PagedKv kv;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* q = nullptr;
  float* out = nullptr;
  AttnShape s;
};

// paged_kv_store + paged_attention for every call, with the attention work of all calls in one
// parallel region (a decode step's sequences of one layer: one fork/join instead of one per
// sequence, and the team balances items across sequences). Each output is bit-identical to the
// one-call path. Calls must write disjoint positions (different sequences).
void paged_store_and_attend_batch(const PagedCall* calls, size_t n_calls);

void paged_attention_portable(const float* q, const PagedKv& kv, float* out, const AttnShape& s);

// Naive reference: gathers every key of the sequence and materialises the score matrix.
void paged_attention_ref(const float* q, const PagedKv& kv, float* out, const AttnShape& s);

namespace detail {

// Keys per softmax tile: whole blocks, as many as fit in 64 keys (one block when larger). Tiles
// start at multiples of the tile width, so the tiling never depends on the call.
constexpr int64_t kPagedTileKeys = 64;

// The inner kernels, one tile at a time (portable loops in paged_attention.cpp; AVX2 and
// AVX-512 instantiations of paged_attention_simd.h in paged_attention_avx2/avx512.cpp).
// Scores are in log2 units (q is pre-scaled by scale·log2 e).
struct PagedKernels {
  // S[r, j] = Σ_d Qs[r, d]·Kt[d, j] for rows r < M, keys j < nk; Qs (M, D), Kt (D, bs), S row
  // stride lds. Columns nk .. of S are left as they are.
  void (*scores)(const float* Qs, int64_t M, int64_t D, const float* Kt, int64_t bs, int64_t nk,
                 float* S, int64_t lds);
  // Online-softmax step per row r whose first n_valid[r] columns are live: m, l, acc row (D) are
  // updated as in flash attention and S becomes P = exp2(S - m_new) on live columns, 0 on the
  // other columns < lds (lds is a multiple of 16). Rows with n_valid 0 keep m, l, acc; P = 0.
  void (*softmax)(float* S, int64_t lds, int64_t M, const int32_t* n_valid, float* m, float* l,
                  float* acc, int64_t D);
  // acc (M, D) += P (M, nk; row stride lds) · Vb (nk, D) with Vb rows contiguous.
  void (*pv)(const float* P, int64_t lds, int64_t M, int64_t nk, const float* Vb, int64_t D,
             float* acc);
};

const PagedKernels& paged_kernels_portable();
const PagedKernels& paged_kernels_avx2();    // only call when cpu_features().avx2
const PagedKernels& paged_kernels_avx512();  // only call when cpu_features().avx512

void paged_attention_with(const PagedKernels& kern, const float* q, const PagedKv& kv, float* out,
                          const AttnShape& s);
void paged_store_and_attend_batch_with(const PagedKernels& kern, const PagedCall* calls,
                                       size_t n_calls);

}  // namespace detail
}  // namespace qwen::ops
