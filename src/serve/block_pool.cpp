// serve/block_pool.cpp — see block_pool.h.
#include "serve/block_pool.h"

#include <cassert>
#include <algorithm>
#include <cstring>
#include <string>

#include "qwen/error.h"

namespace qwen::serve {

BlockPool::BlockPool(int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks),
      block_size_(block_size),
      ref_(size_t(n_blocks), 0),
      prev_(size_t(n_blocks) + 1),
      next_(size_t(n_blocks) + 1),
      in_free_(size_t(n_blocks), 0),
      cached_(size_t(n_blocks), 0),
      hash_(size_t(n_blocks), 0),
      parent_(size_t(n_blocks), 0),
      tokens_(size_t(n_blocks) * size_t(block_size), 0) {
  if (n_blocks <= 0 || block_size <= 0)
    throw Error("KV cache: need at least one block of at least one token (got " +
                std::to_string(n_blocks) + " blocks of " + std::to_string(block_size) + ")");
  size_t cap = 16;
  while (cap < 2 * size_t(n_blocks)) cap *= 2;
  index_.assign(cap, IndexEntry{});
  index_mask_ = cap - 1;
  prev_[size_t(n_blocks)] = next_[size_t(n_blocks)] = n_blocks;  // empty circular list
  for (int32_t b = 0; b < n_blocks; ++b) push_tail(b);
}

void BlockPool::unlink(int32_t b) {
  assert(in_free_[size_t(b)]);
  next_[size_t(prev_[size_t(b)])] = next_[size_t(b)];
  prev_[size_t(next_[size_t(b)])] = prev_[size_t(b)];
  in_free_[size_t(b)] = 0;
  --n_free_;
}

void BlockPool::push_tail(int32_t b) {
  assert(!in_free_[size_t(b)]);
  const int32_t s = n_blocks_, last = prev_[size_t(s)];
  next_[size_t(last)] = b;
  prev_[size_t(b)] = last;
  next_[size_t(b)] = s;
  prev_[size_t(s)] = b;
  in_free_[size_t(b)] = 1;
  ++n_free_;
}

int64_t BlockPool::index_find(uint64_t h) const {
  for (uint64_t i = h & index_mask_;; i = (i + 1) & index_mask_) {
    const IndexEntry& e = index_[size_t(i)];
    if (e.block < 0) return -1;
    if (e.hash == h) return int64_t(i);
  }
}

void BlockPool::index_insert(uint64_t h, int32_t b) {
  assert(n_index_ < n_blocks_);
  uint64_t i = h & index_mask_;
  while (index_[size_t(i)].block >= 0) i = (i + 1) & index_mask_;
  index_[size_t(i)] = IndexEntry{h, b};
  ++n_index_;
}

void BlockPool::index_erase(int64_t at) {
  // Backward-shift deletion: move later entries of the probe run into the hole unless their
  // home slot lies cyclically in (hole, entry], so every entry stays reachable from its home.
  uint64_t hole = uint64_t(at), j = uint64_t(at);
  for (;;) {
    j = (j + 1) & index_mask_;
    const IndexEntry& e = index_[size_t(j)];
    if (e.block < 0) break;
    const uint64_t home = e.hash & index_mask_;
    const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    index_[size_t(hole)] = e;
    hole = j;
  }
  index_[size_t(hole)] = IndexEntry{};
  --n_index_;
}

void BlockPool::uncache(int32_t b) {
  if (!cached_[size_t(b)]) return;
  const int64_t i = index_find(hash_[size_t(b)]);
  if (i >= 0 && index_[size_t(i)].block == b) index_erase(i);
  cached_[size_t(b)] = 0;
}

bool BlockPool::allocate(int32_t n, std::vector<int32_t>* out) {
  if (n < 0 || n > n_free_) return false;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t b = next_[size_t(n_blocks_)];
    unlink(b);
    uncache(b);
    ref_[size_t(b)] = 1;
    out->push_back(b);
  }
  return true;
}

void BlockPool::release(int32_t b) {
  assert(b >= 0 && b < n_blocks_ && ref_[size_t(b)] > 0);
  if (--ref_[size_t(b)] == 0) push_tail(b);
}

void BlockPool::release_all(const std::vector<int32_t>& blocks) {
  for (size_t i = blocks.size(); i-- > 0;) release(blocks[i]);
}

void BlockPool::acquire(int32_t b) {
  assert(b >= 0 && b < n_blocks_);
  if (ref_[size_t(b)] == 0) unlink(b);
  ++ref_[size_t(b)];
}

uint64_t BlockPool::chain_hash(uint64_t parent, const int32_t* tokens, int32_t n) {
  // FNV-style mixing of 64-bit words through a splitmix64 finaliser per word.
  auto mix = [](uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  uint64_t h = mix(parent ^ 0x5157454e4b56ull);
  for (int32_t i = 0; i < n; ++i) h = mix(h ^ uint64_t(uint32_t(tokens[i])));
  return mix(h ^ uint64_t(n));
}

int32_t BlockPool::lookup(uint64_t parent, const int32_t* tokens) const {
  const uint64_t h = chain_hash(parent, tokens, block_size_);
  const int64_t i = index_find(h);
  if (i < 0) return -1;
  const int32_t b = index_[size_t(i)].block;
  if (parent_[size_t(b)] != parent ||
      std::memcmp(tokens_.data() + size_t(b) * size_t(block_size_), tokens,
                  size_t(block_size_) * sizeof(int32_t)) != 0)
    return -1;  // a 64-bit collision: treat as a miss
  return b;
}

uint64_t BlockPool::insert(int32_t b, uint64_t parent, const int32_t* tokens) {
  assert(ref_[size_t(b)] > 0);
  const uint64_t h = chain_hash(parent, tokens, block_size_);
  if (cached_[size_t(b)]) return h;  // already indexed (a shared prefix block)
  if (index_find(h) >= 0) return h;  // an equal block is cached already
  index_insert(h, b);
  cached_[size_t(b)] = 1;
  hash_[size_t(b)] = h;
  parent_[size_t(b)] = parent;
  std::memcpy(tokens_.data() + size_t(b) * size_t(block_size_), tokens,
              size_t(block_size_) * sizeof(int32_t));
  return h;
}

void BlockPool::clear_cache() {
  std::fill(index_.begin(), index_.end(), IndexEntry{});
  n_index_ = 0;
  std::fill(cached_.begin(), cached_.end(), 0);
}

std::vector<int32_t> BlockPool::free_list() const {
  std::vector<int32_t> out;
  for (int32_t b = next_[size_t(n_blocks_)]; b != n_blocks_; b = next_[size_t(b)]) out.push_back(b);
  return out;
}

std::string BlockPool::check() const {
  int32_t n = 0;
  std::vector<uint8_t> seen(size_t(n_blocks_), 0);
  for (int32_t b = next_[size_t(n_blocks_)]; b != n_blocks_; b = next_[size_t(b)]) {
    if (b < 0 || b >= n_blocks_) return "free list holds an invalid id " + std::to_string(b);
    if (seen[size_t(b)]) return "block " + std::to_string(b) + " is twice on the free list";
    seen[size_t(b)] = 1;
    if (prev_[size_t(next_[size_t(b)])] != b) return "broken free-list link at " + std::to_string(b);
    if (ref_[size_t(b)] != 0) return "block " + std::to_string(b) + " is free with count " + std::to_string(ref_[size_t(b)]);
    if (++n > n_blocks_) return "free list is cyclic";
  }
  if (n != n_free_) return "free count " + std::to_string(n_free_) + " but the list holds " + std::to_string(n);
  for (int32_t b = 0; b < n_blocks_; ++b) {
    if (ref_[size_t(b)] < 0) return "negative count on block " + std::to_string(b);
    if (bool(in_free_[size_t(b)]) != bool(seen[size_t(b)])) return "free flag wrong on block " + std::to_string(b);
    if (ref_[size_t(b)] == 0 && !seen[size_t(b)]) return "block " + std::to_string(b) + " has count 0 but is not free (leak)";
  }
  int32_t n_cached = 0;
  for (int32_t b = 0; b < n_blocks_; ++b) n_cached += cached_[size_t(b)];
  int32_t n_entries = 0;
  for (const IndexEntry& e : index_) {
    if (e.block < 0) continue;
    ++n_entries;
    if (e.block >= n_blocks_) return "prefix index holds an invalid block id";
    if (!cached_[size_t(e.block)] || hash_[size_t(e.block)] != e.hash)
      return "prefix index entry for block " + std::to_string(e.block) + " is stale";
    if (index_find(e.hash) < 0 || index_[size_t(index_find(e.hash))].block != e.block)
      return "prefix index entry for block " + std::to_string(e.block) + " is unreachable";
  }
  if (n_entries != n_index_ || n_cached != n_index_) return "prefix index and cached flags disagree";
  return "";
}

}  // namespace qwen::serve
