// ops/embedding.h — token embedding lookup (forward) and its gradient scatter (backward) for
// training: the table is f32 (V, C), one row per token id.
#pragma once
#include <cstdint>

namespace qwen::ops {

// out (n, C) = rows ids[0..n) of table (V, C). Throws qwen::Error naming the first id outside
// [0, V) before writing anything.
void embedding_forward(const float* table, int64_t V, int64_t C, const int32_t* ids, int64_t n,
                       float* out);

// Lookup is a row copy, so its gradient scatters: dtable (V, C) += dout (n, C) row i at row
// ids[i] (repeated ids accumulate). Rows are added in the order of i for every column, so the
// result is deterministic and independent of the thread count. Throws qwen::Error on an id
// outside [0, V), before writing anything.
void embedding_backward(const int32_t* ids, int64_t n, const float* dout, float* dtable, int64_t V,
                        int64_t C);

}  // namespace qwen::ops
