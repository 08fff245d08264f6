// serve/block_pool.h — the bookkeeping of the paged KV cache: a fixed number of blocks of
// block_size token slots each, reference counts, a free list, and a prefix cache that finds a
// full block by the hash of its tokens and of everything before it (so a shared system prompt is
// computed once and its blocks are shared by every request that starts with it).
//
// No K/V data lives here (see serve/paged_cache.h); this is pure bookkeeping, tested with exact
// block ids. Free-list order: blocks start free in id order 0, 1, 2, ...; allocate() takes from
// the head; a block whose count drops to 0 goes to the tail. A freed block keeps its cached
// content (and hash) until allocate() hands it out again, so the least recently freed cached
// block is the first to be evicted, and a prefix-cache hit may revive a free block.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qwen::serve {

class BlockPool {
 public:
  BlockPool(int32_t n_blocks, int32_t block_size);

  int32_t n_blocks() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  int32_t n_free() const { return n_free_; }  // blocks with count 0 (cached ones included)
  int32_t n_used() const { return n_blocks_ - n_free_; }
  int32_t ref_count(int32_t block) const { return ref_[size_t(block)]; }

  // Takes n blocks from the head of the free list (dropping any cached hash they hold), each
  // with count 1, appended to *out. Returns false and takes nothing if fewer than n are free.
  bool allocate(int32_t n, std::vector<int32_t>* out);
  // Drops one reference; at 0 the block goes to the tail of the free list.
  void release(int32_t block);
  // Releases a sequence's blocks, last block first, so its tail is evicted before its prefix.
  void release_all(const std::vector<int32_t>& blocks);
  // Adds a reference to a block found in the prefix cache (taking it off the free list if free).
  void acquire(int32_t block);

  // ---- prefix cache ----
  // Hash of a full block: its tokens chained to the hash of the block before it (parent; 0 for
  // the first block of a sequence).
  static uint64_t chain_hash(uint64_t parent, const int32_t* tokens, int32_t n);
  // The cached block holding exactly these block_size tokens after the prefix whose hash is
  // parent, or -1. Does not take a reference.
  int32_t lookup(uint64_t parent, const int32_t* tokens) const;
  // Records that block (in use, full) holds these tokens after parent; returns its hash. If an
  // equal block is already cached the existing entry stays (this block is simply not indexed).
  uint64_t insert(int32_t block, uint64_t parent, const int32_t* tokens);
  int32_t n_cached() const { return n_index_; }
  bool is_cached(int32_t block) const { return cached_[size_t(block)] != 0; }
  // Forgets every cached hash (blocks stay as they are).
  void clear_cache();

  // Free-list contents, head first (tests).
  std::vector<int32_t> free_list() const;
  // Checks every internal invariant (counts, list links, index); returns "" or what is wrong.
  std::string check() const;

 private:
  void unlink(int32_t b);
  void push_tail(int32_t b);
  void uncache(int32_t b);
  // The prefix index: open addressing with linear probing over a power-of-two table of at
  // least 2 * n_blocks entries (at most n_blocks are used), so inserting and erasing never
  // allocate. Returns the entry holding hash h, or -1.
  int64_t index_find(uint64_t h) const;
  void index_insert(uint64_t h, int32_t b);
  void index_erase(int64_t i);

  int32_t n_blocks_, block_size_;
  int32_t n_free_ = 0;
  std::vector<int32_t> ref_;
  std::vector<int32_t> prev_, next_;  // free list links; index n_blocks_ is the sentinel
  std::vector<uint8_t> in_free_;
  // Prefix cache: hash -> block, and per block its hash, parent hash and tokens (verified on
  // lookup so that a hash collision can never hand out the wrong K/V).
  struct IndexEntry {
    uint64_t hash = 0;
    int32_t block = -1;  // -1: empty
  };
  std::vector<IndexEntry> index_;
  uint64_t index_mask_ = 0;
  int32_t n_index_ = 0;
  std::vector<uint8_t> cached_;
  std::vector<uint64_t> hash_, parent_;
  std::vector<int32_t> tokens_;  // (n_blocks, block_size)
};

}  // namespace qwen::serve
