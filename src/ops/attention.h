// ops/attention.h — causal multi-head attention with grouped-query heads (GQA).
// flash_attention is tiled with an online softmax: it never holds more than a tile of scores,
// so memory is O(T·D) not O(T²). attention_ref materialises the full score matrix and is kept
// for tests and for the flash-vs-naive benchmark.
#pragma once
#include <cstdint>

namespace qwen::ops {

struct AttnShape {
  int64_t T = 0;      // new query tokens
  int64_t pos0 = 0;   // absolute position of the first query token (= keys already cached)
  int64_t H = 0;      // query heads
  int64_t KV = 0;     // key/value heads; query head h reads kv head h / (H / KV)
  int64_t D = 0;      // head dim
  float scale = 0;    // usually 1/sqrt(D)
};

// q:   (T, H, D) contiguous
// k,v: key/value rows for positions 0 .. pos0+T-1; the vector of position s and kv head g is at
//      k + s*kv_stride + g*D (kv_stride >= KV*D; a (S, KV, D) cache has kv_stride = KV*D)
// out: (T, H, D) contiguous
// Causal: query t (absolute position pos0+t) attends to keys 0 .. pos0+t.
// Threads: parallel over (head, query tile) with OpenMP.
void flash_attention(const float* q, const float* k, const float* v, int64_t kv_stride,
                     float* out, const AttnShape& s);

// Same, and also writes lse (H, T): the natural-log log-sum-exp of each query row's scaled
// scores, lse[h*T + t] = log(sum_{s <= pos0+t} exp(scale * q_t,h . k_s)). The training backward
// recomputes probabilities tile by tile as exp(scale * q.k - lse). lse may be nullptr.
void flash_attention(const float* q, const float* k, const float* v, int64_t kv_stride,
                     float* out, const AttnShape& s, float* lse);

// Same contract; builds the (H, T, pos0+T) score matrix explicitly. Optional lse (H, T) output.
void attention_ref(const float* q, const float* k, const float* v, int64_t kv_stride, float* out,
                   const AttnShape& s);
void attention_ref(const float* q, const float* k, const float* v, int64_t kv_stride, float* out,
                   const AttnShape& s, float* lse);

}  // namespace qwen::ops
