// tokenizer/bpe.cpp — BPE merge loop and the hash tables behind it (see bpe.h).
#include "tokenizer/bpe.h"

#include <algorithm>
#include <queue>

#include "tokenizer/unicode.h"

namespace qwen::tok {

// ---------------------------------------------------------------------------------- StrIdMap

void StrIdMap::reserve(size_t n) {
  size_t want = 16;
  while (want < n * 2) want <<= 1;
  if (want <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(want, Slot{});
  for (const Slot& s : old) {
    if (!s.hash) continue;
    size_t i = size_t(s.hash >> 40) & (want - 1);
    while (slots_[i].hash) i = (i + 1) & (want - 1);
    slots_[i] = s;
  }
}

void StrIdMap::grow() { reserve(std::max<size_t>(16, (n_ + 1) * 2)); }

void StrIdMap::set(std::string_view key, int32_t value) {
  if ((n_ + 1) * 2 > slots_.size()) grow();
  const uint64_t h = hash_bytes(key.data(), key.size());
  size_t mask = slots_.size() - 1, i = size_t(h >> 40) & mask;
  while (slots_[i].hash) {
    const Slot& s = slots_[i];
    if (s.hash == h && s.len == key.size() && arena_.compare(s.off, s.len, key) == 0) {
      slots_[i].value = value;
      return;
    }
    i = (i + 1) & mask;
  }
  slots_[i] = Slot{h, uint32_t(arena_.size()), uint32_t(key.size()), value};
  arena_.append(key);
  ++n_;
}

int32_t StrIdMap::find(std::string_view key, uint64_t h) const {
  if (slots_.empty()) return -1;
  size_t mask = slots_.size() - 1, i = size_t(h >> 40) & mask;
  for (;;) {
    const Slot& s = slots_[i];
    if (!s.hash) return -1;
    if (s.hash == h && s.len == key.size() &&
        std::memcmp(arena_.data() + s.off, key.data(), key.size()) == 0)
      return s.value;
    i = (i + 1) & mask;
  }
}

// ----------------------------------------------------------------------------------- PairMap

void PairMap::rehash(size_t n_slots) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(n_slots, Slot{});
  shift_ = 64 - __builtin_ctzll(n_slots);
  for (const Slot& s : old) {
    if (s.key == kEmpty) continue;
    size_t i = size_t((s.key * 0x9E3779B97F4A7C15ull) >> shift_);
    while (slots_[i].key != kEmpty) i = (i + 1) & (n_slots - 1);
    slots_[i] = s;
  }
}

void PairMap::reserve(size_t n) {
  size_t want = 16;
  while (want < n * 2) want <<= 1;
  if (want > slots_.size()) rehash(want);
}

void PairMap::set(int32_t a, int32_t b, uint32_t rank, int32_t merged) {
  if ((n_ + 1) * 2 > slots_.size()) reserve(std::max<size_t>(16, (n_ + 1) * 2));
  const uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
  size_t i = size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);
  while (slots_[i].key != kEmpty) {
    if (slots_[i].key == key) {
      slots_[i].rank = rank;
      slots_[i].merged = merged;
      return;
    }
    i = (i + 1) & (slots_.size() - 1);
  }
  slots_[i] = Slot{key, rank, merged};
  ++n_;
}

// -------------------------------------------------------------------------------- PieceCache

namespace {
constexpr size_t kCacheSlots = size_t(1) << 16;
}

PieceCache::PieceCache() : slots_(kCacheSlots) {}

void PieceCache::clear() {
  std::fill(slots_.begin(), slots_.end(), Slot{});
  keys_.clear();
  ids_.clear();
  used_ = 0;
}

const int32_t* PieceCache::find(std::string_view key, uint64_t h, uint32_t& n) const {
  size_t mask = slots_.size() - 1, i = size_t(h >> 40) & mask;
  for (;;) {
    const Slot& s = slots_[i];
    if (!s.hash) return nullptr;
    if (s.hash == h && s.key_len == key.size() &&
        std::memcmp(keys_.data() + s.key_off, key.data(), key.size()) == 0) {
      n = s.n_ids;
      return ids_.data() + s.ids_off;
    }
    i = (i + 1) & mask;
  }
}

void PieceCache::insert(std::string_view key, uint64_t h, const int32_t* ids, uint32_t n) {
  if (key.size() > kMaxKey || n > 0xFFFF) return;
  if ((used_ + 1) * 2 > slots_.size()) clear();
  size_t mask = slots_.size() - 1, i = size_t(h >> 40) & mask;
  while (slots_[i].hash) {
    if (slots_[i].hash == h && slots_[i].key_len == key.size() &&
        std::memcmp(keys_.data() + slots_[i].key_off, key.data(), key.size()) == 0)
      return;
    i = (i + 1) & mask;
  }
  slots_[i] = Slot{h, uint32_t(keys_.size()), uint16_t(key.size()), uint16_t(n),
                   uint32_t(ids_.size())};
  keys_.append(key);
  ids_.insert(ids_.end(), ids, ids + n);
  ++used_;
}

// ---------------------------------------------------------------------------------- BpeModel

void BpeModel::add_unit(std::string_view unit, int32_t id, std::vector<int32_t>& ids,
                        int& pending_unk) const {
  if (id >= 0) {
    if (pending_unk) {
      ids.push_back(unk_id);
      pending_unk = 0;
    }
    ids.push_back(id);
    return;
  }
  if (byte_fallback) {
    bool all = true;
    for (char c : unit) all = all && fallback_id[static_cast<unsigned char>(c)] >= 0;
    if (all) {
      for (char c : unit) ids.push_back(fallback_id[static_cast<unsigned char>(c)]);
      return;
    }
  }
  if (unk_id >= 0) {
    if (pending_unk && !fuse_unk) ids.push_back(unk_id);
    pending_unk = 1;
  }
  // no unk token: the symbol is dropped, as `tokenizers` does
}

void BpeModel::initial_symbols(std::string_view piece, std::vector<int32_t>& ids) const {
  ids.clear();
  int pending_unk = 0;
  if (byte_level) {
    for (char c : piece) {
      unsigned char b = static_cast<unsigned char>(c);
      int32_t id = byte_id[b];
      if (id >= 0 && !pending_unk) {
        ids.push_back(id);
        continue;
      }
      std::string unit;
      if (id < 0) append_utf8(unit, byte_to_cp()[b]);
      add_unit(unit, id, ids, pending_unk);
    }
  } else {
    size_t i = 0;
    while (i < piece.size()) {
      size_t len = std::min(utf8_len(static_cast<unsigned char>(piece[i])), piece.size() - i);
      std::string_view unit = piece.substr(i, len);
      add_unit(unit, vocab.find(unit), ids, pending_unk);
      i += len;
    }
  }
  if (pending_unk) ids.push_back(unk_id);
}

// Repeatedly merges the adjacent pair with the lowest rank (leftmost first). Quadratic, for
// short words: the same result as the priority queue (see merge_heap).
void BpeModel::merge_small(std::vector<int32_t>& ids, BpeScratch& s) const {
  const uint32_t kNone = ~uint32_t(0);
  size_t n = ids.size();
  if (n < 2) return;
  s.ranks.resize(n);
  s.merged.resize(n);
  int32_t* id = ids.data();
  uint32_t* rk = s.ranks.data();
  int32_t* mg = s.merged.data();
  for (size_t i = 0; i + 1 < n; ++i)
    if (!merges.find(id[i], id[i + 1], rk[i], mg[i])) rk[i] = kNone;
  while (n > 1) {
    size_t best = 0;
    uint32_t best_rank = rk[0];
    for (size_t i = 1; i + 1 < n; ++i)
      if (rk[i] < best_rank) best_rank = rk[i], best = i;
    if (best_rank == kNone) break;
    id[best] = mg[best];
    // drop symbol best+1 and pair best+1; pairs best-1 and best change
    std::memmove(id + best + 1, id + best + 2, (n - best - 2) * sizeof(int32_t));
    if (best + 2 < n) {
      std::memmove(rk + best + 1, rk + best + 2, (n - best - 2) * sizeof(uint32_t));
      std::memmove(mg + best + 1, mg + best + 2, (n - best - 2) * sizeof(int32_t));
    }
    --n;
    if (best + 1 < n && !merges.find(id[best], id[best + 1], rk[best], mg[best])) rk[best] = kNone;
    if (best > 0 && !merges.find(id[best - 1], id[best], rk[best - 1], mg[best - 1]))
      rk[best - 1] = kNone;
  }
  ids.resize(n);
}

// Hugging Face's algorithm for long words: a min-heap of (rank, position) over a linked list of
// symbols; entries made stale by earlier merges are skipped.
void BpeModel::merge_heap(std::vector<int32_t>& ids) const {
  struct Sym {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  struct Cand {
    uint32_t rank;
    uint32_t pos;
    int32_t merged;
    bool operator<(const Cand& o) const {  // priority_queue pops the "largest": lowest rank/pos
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  const size_t n = ids.size();
  std::vector<Sym> sym(n);
  std::vector<Cand> init;
  init.reserve(n);
  for (size_t i = 0; i < n; ++i) sym[i] = Sym{ids[i], int32_t(i) - 1, i + 1 < n ? int32_t(i + 1) : -1, true};
  for (size_t i = 0; i + 1 < n; ++i) {
    uint32_t r;
    int32_t m;
    if (merges.find(ids[i], ids[i + 1], r, m)) init.push_back(Cand{r, uint32_t(i), m});
  }
  std::priority_queue<Cand> q(std::less<Cand>(), std::move(init));
  while (!q.empty()) {
    Cand c = q.top();
    q.pop();
    Sym& left = sym[c.pos];
    if (!left.alive || left.next < 0) continue;
    Sym& right = sym[size_t(left.next)];
    uint32_t r;
    int32_t m;
    if (!merges.find(left.id, right.id, r, m) || m != c.merged) continue;
    left.id = c.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[size_t(right.next)].prev = int32_t(c.pos);
    if (left.prev >= 0 && merges.find(sym[size_t(left.prev)].id, left.id, r, m))
      q.push(Cand{r, uint32_t(left.prev), m});
    if (left.next >= 0 && merges.find(left.id, sym[size_t(left.next)].id, r, m))
      q.push(Cand{r, c.pos, m});
  }
  ids.clear();
  for (size_t i = 0; i < n; ++i)
    if (sym[i].alive) ids.push_back(sym[i].id);
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>& out, BpeScratch& s) const {
  if (piece.empty()) return;
  if (ignore_merges) {
    int32_t id = vocab.find(piece);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (byte_level && piece.size() == 1) {
    int32_t id = byte_id[static_cast<unsigned char>(piece[0])];
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const bool cacheable = piece.size() <= PieceCache::kMaxKey;
  uint64_t h = 0;
  if (cacheable) {
    h = hash_bytes(piece.data(), piece.size());
    uint32_t n = 0;
    if (const int32_t* hit = s.cache.find(piece, h, n)) {
      out.insert(out.end(), hit, hit + n);
      return;
    }
  }
  initial_symbols(piece, s.ids);
  if (s.ids.size() <= 64) merge_small(s.ids, s);
  else merge_heap(s.ids);
  out.insert(out.end(), s.ids.begin(), s.ids.end());
  if (cacheable) s.cache.insert(piece, h, s.ids.data(), uint32_t(s.ids.size()));
}

}  // namespace qwen::tok
