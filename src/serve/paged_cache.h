// serve/paged_cache.h — the K/V storage of the paged cache: one pool of blocks per layer (layout
// in ops/paged_attention.h) and, per decoder slot, the block table and length of the sequence
// bound to it for the current step. It is a KvStore, so Decoder::forward runs over it unchanged:
// append_and_attend writes the new rows into blocks through the slot's table and attends with
// the paged kernel, which reads K/V through the same table (the sequence is never copied).
// The block bookkeeping (which blocks, shared prefixes) lives in serve/block_pool.h.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/decoder.h"
#include "ops/paged_attention.h"
#include "qwen/config.h"

namespace qwen::serve {

class PagedKvCache : public KvStore {
 public:
  // n_slots: sequences one forward may hold (the scheduler's max_running). The pools are
  // allocated and zeroed here.
  PagedKvCache(const ModelConfig& c, int32_t n_blocks, int32_t block_size, int64_t n_slots);

  // Bytes of K and V one block holds over all layers.
  static size_t block_bytes(const ModelConfig& c, int32_t block_size);

  int32_t n_blocks() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  size_t bytes() const { return size_t(n_blocks_) * block_bytes_; }

  // Binds a slot to a block table (n_table entries, not copied: it must stay valid and unchanged
  // until unbound or rebound) holding len computed tokens.
  void bind(int64_t slot, const int32_t* table, int64_t n_table, int64_t len);
  void unbind(int64_t slot);

  int64_t n_seq() const override { return int64_t(slots_.size()); }
  int64_t len(int64_t seq) const override { return slots_[size_t(seq)].len; }
  int64_t capacity(int64_t seq) const override {
    return slots_[size_t(seq)].n_table * block_size_;
  }
  void set_len(int64_t seq, int64_t n) override { slots_[size_t(seq)].len = n; }
  void append_and_attend(int64_t layer, int64_t seq, const float* k, const float* v,
                         const float* q, float* out, const ops::AttnShape& s) override;
  // All of a layer's calls in one parallel region (ops::paged_store_and_attend_batch).
  void append_and_attend_batch(int64_t layer, const KvAttendCall* calls, size_t n) override;

  // The layer's pools (tests read them).
  float* k_pool(int64_t layer) { return k_.get() + size_t(layer) * layer_floats_; }
  float* v_pool(int64_t layer) { return v_.get() + size_t(layer) * layer_floats_; }

 private:
  struct Slot {
    const int32_t* table = nullptr;
    int64_t n_table = 0;
    int64_t len = 0;
  };
  int32_t n_blocks_, block_size_;
  int64_t n_layers_;
  size_t layer_floats_ = 0, block_bytes_ = 0;
  std::unique_ptr<float[]> k_, v_;  // (L, n_blocks, KV, ...) each
  std::vector<Slot> slots_;
  std::vector<ops::PagedCall> batch_;  // append_and_attend_batch's calls (kept between steps)
};

}  // namespace qwen::serve
