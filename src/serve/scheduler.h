// serve/scheduler.h — continuous batching as a pure state machine (no model, no threads, no
// clocks): requests wait in a FIFO queue, run while they have KV blocks, and each step() spends a
// token budget over them and returns a plain description of what the next forward computes.
//
// One step, in order:
//  1. Running requests, oldest first: each gets all its uncomputed tokens up to the remaining
//     budget (1 token when decoding, a chunk when its prompt is still being prefilled, within the
//     prefill cap of SchedulerConfig::prefill_per_step). When the
//     blocks for them are not free, the newest running request is preempted (its blocks freed,
//     it goes back to the head of the queue to be recomputed later; prefix caching usually makes
//     that cheap) until they are, or until the request itself was the newest.
//  2. If nothing was preempted: waiting requests, first come first served, while the budget, the
//     running limit and the free blocks allow. A new request first reuses the cached full blocks
//     of its longest cached prefix (always leaving at least one token to compute, whose logits
//     give its next token), then allocates blocks for the chunk it computes now.
// A token is sampled for a chunk that reaches the end of its request's tokens (chunk.sample).
// After the forward the engine calls computed(plan) (full blocks enter the prefix cache), then
// append_token() or finish() for every sampled chunk. finish() also serves cancellation: the
// request's blocks are freed at once.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "serve/block_pool.h"

namespace qwen::serve {

struct SchedulerConfig {
  int32_t n_blocks = 0;           // KV blocks in the pool
  int32_t block_size = 16;        // tokens per block
  int64_t max_running = 64;       // sequences in flight (slots of the paged cache)
  int64_t max_step_tokens = 512;  // tokens computed in one step (decode + prefill chunks)
  // While some requests decode, the prompt tokens (prefill chunks, recomputation) of one step
  // are capped at max(prefill_per_step, number of decoding requests), so a step costs at most
  // about twice a decode step and arriving prompts do not stall the streams already running
  // (inter-token latency). 0: no cap beyond max_step_tokens. Without decoders it never applies.
  int64_t prefill_per_step = 0;
  bool prefix_caching = true;
};

struct SchedRequest {
  int64_t id = 0;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int64_t n_prompt = 0;
  int64_t max_tokens = 0;       // most tokens it will ever hold (prompt + max new tokens)
  int64_t n_computed = 0;       // tokens whose K/V are in its blocks (or being computed now)
  std::vector<int32_t> blocks;  // block table: logical block i -> physical block
  std::vector<uint64_t> hashes; // prefix-cache hashes of its first hashes.size() full blocks
  int32_t slot = -1;            // paged-cache slot while running
  bool running = false;
  int64_t n_preempted = 0;      // times it was preempted
  int64_t n_cached_tokens = 0;  // prompt tokens served from the prefix cache (last admission)
};

// Tokens [pos0, pos0 + n_tokens) of request id, at cache slot `slot`.
struct StepChunk {
  int64_t id = 0;
  int32_t slot = 0;
  int64_t pos0 = 0;
  int64_t n_tokens = 0;
  bool sample = false;  // the chunk ends the request's known tokens: sample its next token
};

struct StepPlan {
  std::vector<StepChunk> chunks;   // running requests first (admission order), then new ones
  std::vector<int64_t> preempted;  // ids sent back to the queue in this step
  std::vector<int64_t> admitted;   // ids that started (or restarted) running in this step
  int64_t n_tokens = 0;
  bool empty() const { return chunks.empty(); }
  // Empties the plan, keeping the vectors' memory (the engine reuses one plan every step).
  void clear() {
    chunks.clear();
    preempted.clear();
    admitted.clear();
    n_tokens = 0;
  }
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& cfg);
  const SchedulerConfig& config() const { return cfg_; }

  // Queues a request. Throws qwen::Error if the id is taken, the prompt is empty, max_new_tokens
  // < 1, or prompt + max_new_tokens needs more blocks than the whole pool (it could never run).
  void add(int64_t id, std::vector<int32_t> prompt, int64_t max_new_tokens);
  StepPlan step();
  // The same into *plan (cleared first), reusing its memory: a decode step allocates nothing.
  void step(StepPlan* plan);
  // After the forward pass of plan: blocks it filled enter the prefix cache.
  void computed(const StepPlan& plan);
  // The token sampled for a request's sample chunk.
  void append_token(int64_t id, int32_t token);
  // Removes a finished or cancelled request (waiting or running) and frees its blocks now.
  // Unknown ids are ignored.
  void finish(int64_t id);

  const SchedRequest* find(int64_t id) const;
  int64_t n_running() const { return int64_t(running_.size()); }
  int64_t n_waiting() const { return int64_t(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  const BlockPool& pool() const { return pool_; }
  BlockPool& pool() { return pool_; }
  int64_t blocks_for(int64_t n_tokens) const {
    return (n_tokens + cfg_.block_size - 1) / cfg_.block_size;
  }
  // Ids of running requests in admission order; waiting ones in queue order.
  std::vector<int64_t> running_ids() const;
  std::vector<int64_t> waiting_ids() const;
  int64_t n_preemptions() const { return n_preemptions_; }
  int64_t n_prefix_hit_tokens() const { return n_prefix_hit_tokens_; }

  // Checks that every block's count equals the number of tables holding it, that no block is
  // both free and in use, slots are distinct, waiting requests hold nothing, and the pool is
  // consistent. Returns "" or what is wrong.
  std::string check() const;

 private:
  void preempt(SchedRequest* r, StepPlan* plan);
  bool try_admit(SchedRequest* r, int64_t* budget, int64_t* prefill_left, StepPlan* plan);
  int32_t take_slot();

  SchedulerConfig cfg_;
  BlockPool pool_;
  std::unordered_map<int64_t, std::unique_ptr<SchedRequest>> reqs_;
  std::vector<SchedRequest*> running_;  // admission order (newest last)
  std::deque<SchedRequest*> waiting_;
  std::vector<uint8_t> slot_used_;
  std::vector<int32_t> hits_;     // try_admit's scratch: cached blocks of the prefix
  std::vector<uint64_t> hashes_;  // and their hashes
  int64_t n_preemptions_ = 0;
  int64_t n_prefix_hit_tokens_ = 0;
};

}  // namespace qwen::serve
