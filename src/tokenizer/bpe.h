// tokenizer/bpe.h — the BPE model of tokenizer.json: vocabulary and merge ranks in flat hash
// tables, the merge loop (lowest rank first, leftmost on ties — the order of Hugging Face's
// `Word::merge_all`), unknown / byte-fallback handling, and a per-thread cache of word -> ids.
// Symbols are byte strings: single bytes for byte-level BPE (the GPT-2 byte->unicode mapping is
// undone when the vocabulary is loaded), UTF-8 characters otherwise.
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace qwen::tok {

// 64-bit hash of a short byte string (never 0).
inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t(n) * 0xC2B2AE3D27D4EB4Full);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t w = 0;
    for (size_t i = 0; i < n; ++i) w |= uint64_t(static_cast<unsigned char>(p[i])) << (8 * i);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
  }
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 29;
  return h | 1;
}

// Byte string -> int32 (open addressing; keys live in one arena).
class StrIdMap {
 public:
  void reserve(size_t n);
  // Inserts or overwrites.
  void set(std::string_view key, int32_t value);
  int32_t find(std::string_view key) const { return find(key, hash_bytes(key.data(), key.size())); }
  int32_t find(std::string_view key, uint64_t h) const;
  size_t size() const { return n_; }

 private:
  struct Slot {
    uint64_t hash = 0;  // 0: empty
    uint32_t off = 0, len = 0;
    int32_t value = -1;
  };
  void grow();
  std::vector<Slot> slots_;
  std::string arena_;
  size_t n_ = 0;
};

// (left id, right id) -> (merge rank, merged id).
class PairMap {
 public:
  void reserve(size_t n);
  void set(int32_t a, int32_t b, uint32_t rank, int32_t merged);
  bool find(int32_t a, int32_t b, uint32_t& rank, int32_t& merged) const {
    if (slots_.empty()) return false;
    const uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    size_t i = size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);
    for (;;) {
      const Slot& s = slots_[i];
      if (s.key == key) {
        rank = s.rank;
        merged = s.merged;
        return true;
      }
      if (s.key == kEmpty) return false;
      i = (i + 1) & (slots_.size() - 1);
    }
  }
  size_t size() const { return n_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  struct Slot {
    uint64_t key = kEmpty;
    uint32_t rank = 0;
    int32_t merged = 0;
  };
  void rehash(size_t n_slots);
  std::vector<Slot> slots_;
  int shift_ = 64;
  size_t n_ = 0;
};

// Per-thread cache of piece -> ids, reset when full.
class PieceCache {
 public:
  static constexpr size_t kMaxKey = 64;  // longer pieces are not cached
  PieceCache();
  const int32_t* find(std::string_view key, uint64_t h, uint32_t& n) const;
  void insert(std::string_view key, uint64_t h, const int32_t* ids, uint32_t n);
  void clear();

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0;
    uint16_t key_len = 0, n_ids = 0;
    uint32_t ids_off = 0;
  };
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t used_ = 0;
};

struct BpeScratch {
  std::vector<int32_t> ids;
  std::vector<uint32_t> ranks;
  std::vector<int32_t> merged;
  PieceCache cache;
};

struct BpeModel {
  bool byte_level = false;  // symbols are bytes (ByteLevel pre-tokenizer) or UTF-8 characters
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  int32_t unk_id = -1;
  int64_t n_vocab_entries = 0;  // entries of model.vocab (what `tokenizers` calls its size)
  StrIdMap vocab;               // symbol bytes -> id (byte-level: raw bytes of the token)
  std::array<int32_t, 256> byte_id{};      // byte-level: id of each single byte, -1 if absent
  std::array<int32_t, 256> fallback_id{};  // "<0xXX>" tokens, -1 if absent
  PairMap merges;

  // Appends the ids of one pre-tokenized piece (non-empty) to out.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out, BpeScratch& s) const;

 private:
  void initial_symbols(std::string_view piece, std::vector<int32_t>& ids) const;
  void add_unit(std::string_view unit, int32_t id, std::vector<int32_t>& ids, int& pending_unk) const;
  void merge_small(std::vector<int32_t>& ids, BpeScratch& s) const;
  void merge_heap(std::vector<int32_t>& ids) const;
};

}  // namespace qwen::tok
