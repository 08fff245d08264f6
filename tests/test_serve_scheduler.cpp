// tests/test_serve_scheduler.cpp — the block pool and the scheduler as pure state machines (no
// model): scripted scenarios checked with exact block ids, chunk positions and free-list order
// (admission, decode growth, chunked prefill under a token budget, preemption of the newest
// request and its recomputation, prefix-cache hits, eviction, cancellation), and a randomized run
// of arrivals, cancellations, preemptions and completions that checks after every operation that
// no block leaks and none is used twice.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "qwen/error.h"
#include "serve/block_pool.h"
#include "serve/scheduler.h"

namespace {

using qwen::serve::BlockPool;
using qwen::serve::Scheduler;
using qwen::serve::SchedulerConfig;
using qwen::serve::StepChunk;
using qwen::serve::StepPlan;
using V = std::vector<int32_t>;

V iota(int32_t from, int32_t n) {
  V v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), from);
  return v;
}

void expect_chunk(const StepChunk& c, int64_t id, int32_t slot, int64_t pos0, int64_t n, bool sample) {
  EXPECT_EQ(c.id, id);
  EXPECT_EQ(c.slot, slot);
  EXPECT_EQ(c.pos0, pos0);
  EXPECT_EQ(c.n_tokens, n);
  EXPECT_EQ(c.sample, sample);
}

V blocks(const Scheduler& s, int64_t id) { return s.find(id)->blocks; }

// ---- block pool ---------------------------------------------------------------------------

TEST(BlockPool, FreeListOrder) {
  BlockPool p(6, 4);
  EXPECT_EQ(p.free_list(), (V{0, 1, 2, 3, 4, 5}));
  V a, b;
  ASSERT_TRUE(p.allocate(3, &a));
  EXPECT_EQ(a, (V{0, 1, 2}));
  ASSERT_TRUE(p.allocate(2, &b));
  EXPECT_EQ(b, (V{3, 4}));
  EXPECT_FALSE(p.allocate(2, &b));  // only block 5 is free: nothing taken
  EXPECT_EQ(b, (V{3, 4}));
  EXPECT_EQ(p.n_free(), 1);
  p.release_all(a);  // last block first
  EXPECT_EQ(p.free_list(), (V{5, 2, 1, 0}));
  p.acquire(1);  // a prefix hit revives a free block
  EXPECT_EQ(p.free_list(), (V{5, 2, 0}));
  EXPECT_EQ(p.ref_count(1), 1);
  p.acquire(3);  // shared block in use
  EXPECT_EQ(p.ref_count(3), 2);
  p.release(3);
  EXPECT_EQ(p.ref_count(3), 1);
  EXPECT_EQ(p.check(), "");
  p.release(3);
  p.release(4);
  p.release(1);
  EXPECT_EQ(p.free_list(), (V{5, 2, 0, 3, 4, 1}));
  EXPECT_EQ(p.n_used(), 0);
  EXPECT_EQ(p.check(), "");
}

TEST(BlockPool, PrefixCacheLookupInsertEvict) {
  BlockPool p(4, 2);
  V a;
  ASSERT_TRUE(p.allocate(2, &a));  // 0, 1
  const int32_t t0[2] = {7, 8}, t1[2] = {9, 10};
  const uint64_t h0 = p.insert(0, 0, t0);
  const uint64_t h1 = p.insert(1, h0, t1);
  EXPECT_EQ(h0, BlockPool::chain_hash(0, t0, 2));
  EXPECT_EQ(h1, BlockPool::chain_hash(h0, t1, 2));
  EXPECT_EQ(p.lookup(0, t0), 0);
  EXPECT_EQ(p.lookup(h0, t1), 1);
  EXPECT_EQ(p.lookup(0, t1), -1);   // same tokens, other prefix
  EXPECT_EQ(p.lookup(h1, t1), -1);
  // An equal block computed by another sequence is not indexed twice.
  V b;
  ASSERT_TRUE(p.allocate(1, &b));  // 2
  EXPECT_EQ(p.insert(2, 0, t0), h0);
  EXPECT_FALSE(p.is_cached(2));
  EXPECT_EQ(p.lookup(0, t0), 0);
  // Freed cached blocks stay findable until allocate() hands them out again.
  p.release_all(a);  // free list: 3, 1, 0
  EXPECT_EQ(p.free_list(), (V{3, 1, 0}));
  EXPECT_EQ(p.lookup(h0, t1), 1);
  V c;
  ASSERT_TRUE(p.allocate(2, &c));  // 3, then 1 (evicted)
  EXPECT_EQ(c, (V{3, 1}));
  EXPECT_EQ(p.lookup(h0, t1), -1);
  EXPECT_FALSE(p.is_cached(1));
  EXPECT_EQ(p.lookup(0, t0), 0);
  EXPECT_EQ(p.n_cached(), 1);
  EXPECT_EQ(p.check(), "");
}

// ---- scheduler: scripted scenarios --------------------------------------------------------

SchedulerConfig cfg(int32_t n_blocks, int32_t bs, int64_t max_running, int64_t budget, bool cache) {
  SchedulerConfig c;
  c.n_blocks = n_blocks;
  c.block_size = bs;
  c.max_running = max_running;
  c.max_step_tokens = budget;
  c.prefix_caching = cache;
  return c;
}

TEST(Scheduler, AdmitDecodeGrowFinish) {
  Scheduler s(cfg(8, 4, 4, 16, false));
  s.add(1, iota(1, 6), 5);
  s.add(2, iota(100, 5), 5);
  StepPlan p = s.step();
  ASSERT_EQ(p.chunks.size(), 2u);
  expect_chunk(p.chunks[0], 1, 0, 0, 6, true);
  expect_chunk(p.chunks[1], 2, 1, 0, 5, true);
  EXPECT_EQ(p.admitted, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(p.n_tokens, 11);
  EXPECT_EQ(blocks(s, 1), (V{0, 1}));
  EXPECT_EQ(blocks(s, 2), (V{2, 3}));
  EXPECT_EQ(s.pool().free_list(), (V{4, 5, 6, 7}));
  s.computed(p);
  // Decode: one token each per step; request 1 needs a third block at position 8.
  for (int i = 0; i < 3; ++i) {
    s.append_token(1, 50 + i);
    s.append_token(2, 60 + i);
    p = s.step();
    ASSERT_EQ(p.chunks.size(), 2u);
    expect_chunk(p.chunks[0], 1, 0, 6 + i, 1, true);
    expect_chunk(p.chunks[1], 2, 1, 5 + i, 1, true);
    s.computed(p);
    ASSERT_EQ(s.check(), "");
  }
  EXPECT_EQ(blocks(s, 1), (V{0, 1, 4}));  // position 8 went into a new block
  EXPECT_EQ(blocks(s, 2), (V{2, 3}));
  s.finish(1);
  EXPECT_EQ(s.pool().free_list(), (V{5, 6, 7, 4, 1, 0}));
  s.finish(2);
  EXPECT_EQ(s.pool().free_list(), (V{5, 6, 7, 4, 1, 0, 3, 2}));
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(s.check(), "");
}

TEST(Scheduler, ChunkedPrefillUnderTokenBudget) {
  Scheduler s(cfg(8, 4, 4, 4, false));
  s.add(1, iota(1, 10), 2);
  s.add(2, iota(100, 3), 2);
  StepPlan p = s.step();
  ASSERT_EQ(p.chunks.size(), 1u);
  expect_chunk(p.chunks[0], 1, 0, 0, 4, false);
  EXPECT_EQ(s.waiting_ids(), (std::vector<int64_t>{2}));
  p = s.step();
  ASSERT_EQ(p.chunks.size(), 1u);
  expect_chunk(p.chunks[0], 1, 0, 4, 4, false);
  p = s.step();  // the rest of request 1 (2 tokens), then 2 tokens of request 2
  ASSERT_EQ(p.chunks.size(), 2u);
  expect_chunk(p.chunks[0], 1, 0, 8, 2, true);
  expect_chunk(p.chunks[1], 2, 1, 0, 2, false);
  EXPECT_EQ(blocks(s, 1), (V{0, 1, 2}));
  EXPECT_EQ(blocks(s, 2), (V{3}));
  s.append_token(1, 9);
  p = s.step();
  ASSERT_EQ(p.chunks.size(), 2u);
  expect_chunk(p.chunks[0], 1, 0, 10, 1, true);
  expect_chunk(p.chunks[1], 2, 1, 2, 1, true);
  EXPECT_EQ(s.check(), "");
}

// While requests decode, prompt tokens per step are capped at max(prefill_per_step, decoders);
// with nobody decoding the whole budget goes to prefill.
TEST(Scheduler, PrefillCapWhileOthersDecode) {
  SchedulerConfig c = cfg(16, 4, 4, 64, false);
  c.prefill_per_step = 3;
  Scheduler s(c);
  s.add(1, iota(1, 2), 10);
  StepPlan p = s.step();  // nobody decodes yet: no cap
  ASSERT_EQ(p.chunks.size(), 1u);
  expect_chunk(p.chunks[0], 1, 0, 0, 2, true);
  s.append_token(1, 50);
  s.add(2, iota(100, 10), 2);
  p = s.step();  // 1 decodes -> at most max(3, 1) = 3 prompt tokens
  ASSERT_EQ(p.chunks.size(), 2u);
  expect_chunk(p.chunks[0], 1, 0, 2, 1, true);
  expect_chunk(p.chunks[1], 2, 1, 0, 3, false);
  s.append_token(1, 51);
  s.add(3, iota(200, 5), 2);
  p = s.step();  // request 2's next 3 tokens spend the cap: 3 is not admitted
  ASSERT_EQ(p.chunks.size(), 2u);
  expect_chunk(p.chunks[0], 1, 0, 3, 1, true);
  expect_chunk(p.chunks[1], 2, 1, 3, 3, false);
  EXPECT_EQ(s.waiting_ids(), (std::vector<int64_t>{3}));
  s.append_token(1, 52);
  p = s.step();
  ASSERT_EQ(p.chunks.size(), 2u);
  expect_chunk(p.chunks[1], 2, 1, 6, 3, false);
  s.append_token(1, 53);
  p = s.step();  // 2 has one prompt token left (counts as decoding): max(3, 2) = 3 for request 3
  ASSERT_EQ(p.chunks.size(), 3u);
  expect_chunk(p.chunks[0], 1, 0, 5, 1, true);
  expect_chunk(p.chunks[1], 2, 1, 9, 1, true);
  expect_chunk(p.chunks[2], 3, 2, 0, 3, false);
  EXPECT_EQ(s.check(), "");
}

TEST(Scheduler, PreemptsNewestAndRecomputesIt) {
  Scheduler s(cfg(4, 2, 4, 16, false));
  s.add(1, iota(1, 3), 5);
  s.add(2, iota(100, 3), 5);
  StepPlan p = s.step();
  EXPECT_EQ(blocks(s, 1), (V{0, 1}));
  EXPECT_EQ(blocks(s, 2), (V{2, 3}));
  s.append_token(1, 10);
  s.append_token(2, 20);
  p = s.step();  // positions 3: no new blocks
  ASSERT_EQ(p.chunks.size(), 2u);
  EXPECT_TRUE(p.preempted.empty());
  s.append_token(1, 11);
  s.append_token(2, 21);
  p = s.step();  // request 1 needs a block at position 4: request 2 (newest) is preempted
  EXPECT_EQ(p.preempted, (std::vector<int64_t>{2}));
  ASSERT_EQ(p.chunks.size(), 1u);
  expect_chunk(p.chunks[0], 1, 0, 4, 1, true);
  EXPECT_EQ(blocks(s, 1), (V{0, 1, 3}));  // 2's blocks were freed last-first: 3, 2
  EXPECT_EQ(s.pool().free_list(), (V{2}));
  EXPECT_EQ(s.waiting_ids(), (std::vector<int64_t>{2}));
  EXPECT_EQ(s.find(2)->n_computed, 0);
  EXPECT_EQ(s.find(2)->tokens, (V{100, 101, 102, 20, 21}));  // generated tokens are kept
  EXPECT_EQ(s.n_preemptions(), 1);
  ASSERT_EQ(s.check(), "");
  s.append_token(1, 12);
  p = s.step();  // request 2 needs 3 blocks to recompute 5 tokens: only 1 free, it waits
  ASSERT_EQ(p.chunks.size(), 1u);
  expect_chunk(p.chunks[0], 1, 0, 5, 1, true);
  s.finish(1);
  EXPECT_EQ(s.pool().free_list(), (V{2, 3, 1, 0}));
  p = s.step();  // recomputation: all 5 tokens, then it samples its 3rd token
  ASSERT_EQ(p.chunks.size(), 1u);
  expect_chunk(p.chunks[0], 2, 0, 0, 5, true);
  EXPECT_EQ(p.admitted, (std::vector<int64_t>{2}));
  EXPECT_EQ(blocks(s, 2), (V{2, 3, 1}));
  EXPECT_EQ(s.check(), "");
}

TEST(Scheduler, RequestPreemptsItselfWhenNewest) {
  Scheduler s(cfg(4, 2, 4, 16, false));
  s.add(1, iota(1, 2), 4);    // block 0
  s.add(2, iota(10, 4), 4);   // blocks 1, 2
  StepPlan p = s.step();
  ASSERT_EQ(p.chunks.size(), 2u);
  EXPECT_EQ(blocks(s, 2), (V{1, 2}));
  s.append_token(1, 5);
  s.append_token(2, 6);
  p = s.step();  // 1 takes the last free block; 2 (the newest) then finds none and yields
  EXPECT_EQ(p.preempted, (std::vector<int64_t>{2}));
  ASSERT_EQ(p.chunks.size(), 1u);
  expect_chunk(p.chunks[0], 1, 0, 2, 1, true);
  EXPECT_EQ(blocks(s, 1), (V{0, 3}));
  EXPECT_EQ(s.pool().free_list(), (V{2, 1}));
  s.append_token(1, 7);
  s.finish(1);
  EXPECT_EQ(s.pool().free_list(), (V{2, 1, 3, 0}));
  s.add(3, iota(20, 2), 1);
  p = s.step();  // 2 goes first (head of the queue) and recomputes its 5 tokens, then 3
  ASSERT_EQ(p.chunks.size(), 2u);
  expect_chunk(p.chunks[0], 2, 0, 0, 5, true);
  expect_chunk(p.chunks[1], 3, 1, 0, 2, true);
  EXPECT_EQ(blocks(s, 2), (V{2, 1, 3}));
  EXPECT_EQ(blocks(s, 3), (V{0}));
  EXPECT_EQ(s.check(), "");
}

TEST(Scheduler, PrefixCacheSharesFullBlocks) {
  Scheduler s(cfg(8, 4, 4, 64, true));
  V prompt1 = iota(10, 10);  // blocks [10..13] [14..17] [18 19]
  s.add(1, prompt1, 3);
  StepPlan p = s.step();
  expect_chunk(p.chunks[0], 1, 0, 0, 10, true);
  EXPECT_EQ(blocks(s, 1), (V{0, 1, 2}));
  EXPECT_EQ(s.pool().n_cached(), 0);  // not before the forward ran
  s.computed(p);
  EXPECT_EQ(s.pool().n_cached(), 2);
  EXPECT_TRUE(s.pool().is_cached(0));
  EXPECT_TRUE(s.pool().is_cached(1));
  s.append_token(1, 99);

  V prompt2 = iota(10, 8);
  prompt2.insert(prompt2.end(), {30, 31, 32});
  s.add(2, prompt2, 3);
  p = s.step();
  ASSERT_EQ(p.chunks.size(), 2u);
  expect_chunk(p.chunks[0], 1, 0, 10, 1, true);
  expect_chunk(p.chunks[1], 2, 1, 8, 3, true);  // 8 prompt tokens from the cache
  EXPECT_EQ(blocks(s, 2), (V{0, 1, 3}));
  EXPECT_EQ(s.find(2)->n_cached_tokens, 8);
  EXPECT_EQ(s.pool().ref_count(0), 2);
  EXPECT_EQ(s.pool().ref_count(1), 2);
  s.computed(p);
  ASSERT_EQ(s.check(), "");

  s.finish(1);
  EXPECT_EQ(s.pool().free_list(), (V{4, 5, 6, 7, 2}));
  s.finish(2);
  EXPECT_EQ(s.pool().free_list(), (V{4, 5, 6, 7, 2, 3, 1, 0}));
  EXPECT_EQ(s.pool().n_cached(), 2);

  // A prompt that is exactly two cached blocks reuses only the first: its last token must be
  // computed to give logits. The hit takes block 0 off the free list.
  s.add(3, iota(10, 8), 2);
  p = s.step();
  expect_chunk(p.chunks[0], 3, 0, 4, 4, true);
  EXPECT_EQ(blocks(s, 3), (V{0, 4}));
  EXPECT_EQ(s.pool().free_list(), (V{5, 6, 7, 2, 3, 1}));
  s.computed(p);
  s.finish(3);
  // Allocation reaches block 1 and evicts it from the cache.
  s.add(4, iota(500, 28), 1);
  p = s.step();
  EXPECT_EQ(blocks(s, 4), (V{5, 6, 7, 2, 3, 1, 4}));
  EXPECT_FALSE(s.pool().is_cached(1));
  EXPECT_EQ(s.check(), "");
  EXPECT_EQ(s.n_prefix_hit_tokens(), 12);
}

TEST(Scheduler, CancelWaitingAndRunning) {
  Scheduler s(cfg(4, 4, 1, 16, false));
  s.add(1, iota(1, 5), 3);
  s.add(2, iota(1, 5), 3);
  StepPlan p = s.step();  // max_running 1: only request 1 runs
  EXPECT_EQ(s.running_ids(), (std::vector<int64_t>{1}));
  EXPECT_EQ(s.waiting_ids(), (std::vector<int64_t>{2}));
  s.finish(2);  // cancel while waiting
  EXPECT_EQ(s.n_waiting(), 0);
  s.finish(1);  // cancel while running: blocks back at once
  EXPECT_EQ(s.pool().n_free(), 4);
  EXPECT_EQ(s.pool().free_list(), (V{2, 3, 1, 0}));
  s.finish(42);  // unknown: ignored
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(s.check(), "");
}

TEST(Scheduler, RejectsWhatCanNeverRun) {
  Scheduler s(cfg(4, 4, 2, 16, false));
  EXPECT_THROW(s.add(1, {}, 3), qwen::Error);
  EXPECT_THROW(s.add(1, iota(0, 3), 0), qwen::Error);
  EXPECT_THROW(s.add(1, iota(0, 10), 7), qwen::Error);  // 17 tokens > 4 blocks of 4
  s.add(1, iota(0, 10), 6);
  EXPECT_THROW(s.add(1, iota(0, 3), 1), qwen::Error);  // id taken
}

// ---- randomized -----------------------------------------------------------------------------

// Arrivals, cancellations (waiting and running), completions and growth under a tight pool with
// prefix caching on: prompts share prefixes so blocks are shared and revived. After every
// operation: no leak, no double use. At the end every block is free.
TEST(Scheduler, RandomizedNoLeakNoDoubleUse) {
  int64_t total_preempted = 0, total_hits = 0;
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    std::mt19937 rng(seed);
    const int32_t bs = 1 + int32_t(rng() % 5);
    const int32_t n_blocks = 12 + int32_t(rng() % 20);
    SchedulerConfig sc = cfg(n_blocks, bs, 1 + int64_t(rng() % 6), 4 + int64_t(rng() % 40), seed % 3 != 0);
    sc.prefill_per_step = seed % 2 ? 0 : 1 + int64_t(rng() % 8);
    Scheduler s(sc);
    std::map<int64_t, int64_t> left;  // id -> tokens still to generate
    int64_t next_id = 1, preempted = 0;
    const V shared = iota(1000, 40);
    for (int op = 0; op < 1500; ++op) {
      const uint32_t r = rng() % 10;
      if (r < 3 && s.n_waiting() < 8) {
        const int64_t max_len = int64_t(n_blocks) * bs;
        const int64_t n_prompt = 1 + int64_t(rng() % std::min<int64_t>(30, max_len - 1));
        const int64_t n_new = 1 + int64_t(rng() % std::max<int64_t>(1, std::min<int64_t>(12, max_len - n_prompt)));
        V prompt(shared.begin(), shared.begin() + std::min<int64_t>(n_prompt, int64_t(rng() % 40)));
        while (int64_t(prompt.size()) < n_prompt) prompt.push_back(int32_t(rng() % 50));
        s.add(next_id, prompt, n_new);
        left[next_id++] = n_new;
      } else if (r < 4 && !left.empty()) {
        auto it = left.begin();
        std::advance(it, rng() % left.size());
        s.finish(it->first);
        left.erase(it);
      } else {
        StepPlan p = s.step();
        preempted += int64_t(p.preempted.size());
        ASSERT_EQ(s.check(), "") << "seed " << seed << " op " << op << " after step";
        s.computed(p);
        for (const StepChunk& c : p.chunks) {
          if (!c.sample) continue;
          if (--left[c.id] == 0) {
            s.finish(c.id);
            left.erase(c.id);
          } else {
            s.append_token(c.id, int32_t(rng() % 50));
          }
        }
      }
      ASSERT_EQ(s.check(), "") << "seed " << seed << " op " << op;
    }
    // Drain.
    for (int guard = 0; !s.idle(); ++guard) {
      ASSERT_LT(guard, 100000) << "scheduler made no progress";
      StepPlan p = s.step();
      s.computed(p);
      for (const StepChunk& c : p.chunks) {
        if (!c.sample) continue;
        if (--left[c.id] == 0) {
          s.finish(c.id);
          left.erase(c.id);
        } else {
          s.append_token(c.id, 7);
        }
      }
      ASSERT_EQ(s.check(), "");
    }
    EXPECT_EQ(s.pool().n_used(), 0);
    EXPECT_EQ(s.pool().n_free(), n_blocks);
    EXPECT_TRUE(left.empty());
    RecordProperty("preemptions_seed_" + std::to_string(seed), int(preempted));
    total_preempted += preempted;
    total_hits += s.n_prefix_hit_tokens();
  }
  // The scenarios must really exercise preemption and shared prefixes.
  EXPECT_GT(total_preempted, 0);
  EXPECT_GT(total_hits, 0);
}

}  // namespace
