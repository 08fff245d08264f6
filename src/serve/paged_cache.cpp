// serve/paged_cache.cpp — see paged_cache.h.
#include "serve/paged_cache.h"

#include <algorithm>
#include <cassert>
#include <string>

#include "qwen/error.h"

namespace qwen::serve {

size_t PagedKvCache::block_bytes(const ModelConfig& c, int32_t block_size) {
  return 2 * size_t(c.num_hidden_layers) * size_t(c.kv_dim()) * size_t(block_size) * sizeof(float);
}

PagedKvCache::PagedKvCache(const ModelConfig& c, int32_t n_blocks, int32_t block_size,
                           int64_t n_slots)
    : n_blocks_(n_blocks),
      block_size_(block_size),
      n_layers_(c.num_hidden_layers),
      layer_floats_(size_t(n_blocks) * size_t(c.kv_dim()) * size_t(block_size)),
      block_bytes_(block_bytes(c, block_size)),
      slots_(size_t(n_slots)),
      batch_(size_t(std::max<int64_t>(n_slots, 0))) {
  if (n_blocks <= 0 || block_size <= 0 || n_slots <= 0)
    throw Error("paged KV cache: need blocks, block size and slots > 0");
  // Zero-filled now, so the whole pool is committed at start: the server's memory is fixed from
  // then on and any later growth of its RSS is a real leak.
  k_.reset(new float[layer_floats_ * size_t(n_layers_)]());
  v_.reset(new float[layer_floats_ * size_t(n_layers_)]());
}

void PagedKvCache::bind(int64_t slot, const int32_t* table, int64_t n_table, int64_t len) {
  assert(slot >= 0 && slot < n_seq());
  slots_[size_t(slot)] = Slot{table, n_table, len};
}

void PagedKvCache::unbind(int64_t slot) { slots_[size_t(slot)] = Slot{}; }

void PagedKvCache::append_and_attend(int64_t layer, int64_t seq, const float* k, const float* v,
                                     const float* q, float* out, const ops::AttnShape& s) {
  const Slot& sl = slots_[size_t(seq)];
  ops::PagedKv kv;
  kv.k = k_pool(layer);
  kv.v = v_pool(layer);
  kv.table = sl.table;
  kv.n_table = sl.n_table;
  kv.block_size = block_size_;
  ops::paged_kv_store(kv, k, v, s);
  ops::paged_attention(q, kv, out, s);
}

void PagedKvCache::append_and_attend_batch(int64_t layer, const KvAttendCall* calls, size_t n) {
  if (batch_.size() < n) batch_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const KvAttendCall& c = calls[i];
    const Slot& sl = slots_[size_t(c.seq)];
    ops::PagedCall& b = batch_[i];
    b.kv.k = k_pool(layer);
    b.kv.v = v_pool(layer);
    b.kv.table = sl.table;
    b.kv.n_table = sl.n_table;
    b.kv.block_size = block_size_;
    b.k = c.k;
    b.v = c.v;
    b.q = c.q;
    b.out = c.out;
    b.s = c.s;
  }
  ops::paged_store_and_attend_batch(batch_.data(), n);
}

}  // namespace qwen::serve
