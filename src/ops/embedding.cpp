// ops/embedding.cpp — embedding lookup and gradient scatter (see embedding.h). The forward copies
// rows; the backward adds each dout row into its table row, threads owning disjoint column
// ranges so two equal ids never race and every column sums its rows in input order.
#include "ops/embedding.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "qwen/error.h"

namespace qwen::ops {

namespace {

void check_ids(const char* fn, const int32_t* ids, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || int64_t(ids[i]) >= V)
      throw Error(std::string(fn) + ": token id " + std::to_string(ids[i]) + " at position " +
                  std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(V) +
                  "); check that the tokenizer matches the model");
}

}  // namespace

void embedding_forward(const float* table, int64_t V, int64_t C, const int32_t* ids, int64_t n,
                       float* out) {
  check_ids("embedding_forward", ids, n, V);
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * C, table + int64_t(ids[i]) * C, size_t(C) * sizeof(float));
}

void embedding_backward(const int32_t* ids, int64_t n, const float* dout, float* dtable, int64_t V,
                        int64_t C) {
  check_ids("embedding_backward", ids, n, V);
  constexpr int64_t kCols = 128;  // columns per task
  const int64_t n_blocks = (C + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (n * C >= (int64_t(1) << 16) && n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = b * kCols, c1 = std::min(C, c0 + kCols);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = dtable + int64_t(ids[i]) * C;
      const float* src = dout + i * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

}  // namespace qwen::ops
