// serve/scheduler.cpp — see scheduler.h.
#include "serve/scheduler.h"

#include <algorithm>
#include <cassert>

#include "qwen/error.h"

namespace qwen::serve {

Scheduler::Scheduler(const SchedulerConfig& cfg)
    : cfg_(cfg), pool_(cfg.n_blocks, cfg.block_size), slot_used_(size_t(std::max<int64_t>(cfg.max_running, 0)), 0) {
  if (cfg.max_running <= 0) throw Error("scheduler: max_running must be at least 1");
  if (cfg.max_step_tokens <= 0) throw Error("scheduler: max_step_tokens must be at least 1");
}

void Scheduler::add(int64_t id, std::vector<int32_t> prompt, int64_t max_new_tokens) {
  if (reqs_.count(id)) throw Error("scheduler: request id " + std::to_string(id) + " is already queued");
  if (prompt.empty()) throw Error("scheduler: request " + std::to_string(id) + " has an empty prompt");
  if (max_new_tokens < 1) throw Error("scheduler: max_new_tokens must be at least 1");
  const int64_t max_tokens = int64_t(prompt.size()) + max_new_tokens;
  if (blocks_for(max_tokens) > cfg_.n_blocks)
    throw Error("a request of " + std::to_string(max_tokens) + " tokens needs " +
                std::to_string(blocks_for(max_tokens)) + " KV blocks but the cache has " +
                std::to_string(cfg_.n_blocks) + "; lower max_tokens or give the cache more memory");
  auto r = std::make_unique<SchedRequest>();
  r->id = id;
  r->n_prompt = int64_t(prompt.size());
  r->tokens = std::move(prompt);
  r->tokens.reserve(size_t(max_tokens));
  r->blocks.reserve(size_t(blocks_for(max_tokens)));  // no reallocation while it decodes
  r->hashes.reserve(size_t(blocks_for(max_tokens)));
  r->max_tokens = max_tokens;
  waiting_.push_back(r.get());
  reqs_.emplace(id, std::move(r));
}

int32_t Scheduler::take_slot() {
  for (size_t s = 0; s < slot_used_.size(); ++s)
    if (!slot_used_[s]) {
      slot_used_[s] = 1;
      return int32_t(s);
    }
  assert(false && "no free slot although running < max_running");
  return -1;
}

void Scheduler::preempt(SchedRequest* r, StepPlan* plan) {
  pool_.release_all(r->blocks);
  r->blocks.clear();
  r->hashes.clear();
  r->n_computed = 0;
  slot_used_[size_t(r->slot)] = 0;
  r->slot = -1;
  r->running = false;
  ++r->n_preempted;
  ++n_preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), r));
  waiting_.push_front(r);
  plan->preempted.push_back(r->id);
}

bool Scheduler::try_admit(SchedRequest* r, int64_t* budget, int64_t* prefill_left,
                          StepPlan* plan) {
  const int64_t bs = cfg_.block_size, n_tok = int64_t(r->tokens.size());
  // Longest cached prefix of full blocks, leaving at least one token to compute.
  std::vector<int32_t>& hits = hits_;
  std::vector<uint64_t>& hashes = hashes_;
  hits.clear();
  hashes.clear();
  int32_t hits_free = 0;
  if (cfg_.prefix_caching) {
    uint64_t parent = 0;
    const int64_t max_hits = (n_tok - 1) / bs;
    for (int64_t i = 0; i < max_hits; ++i) {
      const int32_t b = pool_.lookup(parent, r->tokens.data() + i * bs);
      if (b < 0) break;
      parent = BlockPool::chain_hash(parent, r->tokens.data() + i * bs, int32_t(bs));
      hits.push_back(b);
      hashes.push_back(parent);
      if (pool_.ref_count(b) == 0) ++hits_free;
    }
  }
  const int64_t n_hit = int64_t(hits.size()) * bs;
  const int64_t n = std::min({n_tok - n_hit, *budget, *prefill_left});
  if (n <= 0) return false;
  const int64_t need = blocks_for(n_hit + n) - int64_t(hits.size());
  if (need > pool_.n_free() - hits_free) return false;
  for (int32_t b : hits) pool_.acquire(b);
  r->blocks.assign(hits.begin(), hits.end());
  r->hashes.assign(hashes.begin(), hashes.end());
  const bool ok = pool_.allocate(int32_t(need), &r->blocks);
  assert(ok);
  (void)ok;
  r->n_computed = n_hit;
  r->n_cached_tokens = n_hit;
  n_prefix_hit_tokens_ += n_hit;
  r->slot = take_slot();
  r->running = true;
  running_.push_back(r);
  plan->admitted.push_back(r->id);
  plan->chunks.push_back(StepChunk{r->id, r->slot, r->n_computed, n, r->n_computed + n == n_tok});
  r->n_computed += n;
  plan->n_tokens += n;
  *budget -= n;
  *prefill_left -= n;
  return true;
}

StepPlan Scheduler::step() {
  StepPlan plan;
  step(&plan);
  return plan;
}

void Scheduler::step(StepPlan* out) {
  StepPlan& plan = *out;
  plan.clear();
  int64_t budget = cfg_.max_step_tokens;
  // Prefill cap: only while some request decodes (has exactly one token left to compute).
  int64_t n_decoding = 0;
  for (const SchedRequest* r : running_) n_decoding += int64_t(r->tokens.size()) - r->n_computed == 1;
  int64_t prefill_left = cfg_.prefill_per_step > 0 && n_decoding > 0
                             ? std::max(cfg_.prefill_per_step, n_decoding)
                             : cfg_.max_step_tokens;
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    SchedRequest* r = running_[i];
    const int64_t n_tok = int64_t(r->tokens.size());
    const int64_t left = n_tok - r->n_computed;
    assert(left >= 1 && "a running request has no token to compute (missing append_token?)");
    const bool decode = left == 1;
    const int64_t n = std::min({left, budget, decode ? left : prefill_left});
    if (n <= 0) {  // a prefill while the cap is spent: it waits, decoders after it still run
      ++i;
      continue;
    }
    const int64_t need = blocks_for(r->n_computed + n) - int64_t(r->blocks.size());
    bool self = false;
    while (need > pool_.n_free()) {
      SchedRequest* victim = running_.back();
      self = victim == r;
      preempt(victim, &plan);
      if (self) break;
    }
    if (self) break;  // r was the newest: nothing after it runs this step
    if (need > 0) pool_.allocate(int32_t(need), &r->blocks);
    plan.chunks.push_back(StepChunk{r->id, r->slot, r->n_computed, n, r->n_computed + n == n_tok});
    r->n_computed += n;
    plan.n_tokens += n;
    budget -= n;
    if (!decode) prefill_left -= n;
    ++i;
  }
  if (plan.preempted.empty()) {
    while (!waiting_.empty() && budget > 0 && prefill_left > 0 &&
           int64_t(running_.size()) < cfg_.max_running) {
      if (!try_admit(waiting_.front(), &budget, &prefill_left, &plan)) break;
      waiting_.pop_front();
    }
  }
}

void Scheduler::computed(const StepPlan& plan) {
  if (!cfg_.prefix_caching) return;
  const int64_t bs = cfg_.block_size;
  for (const StepChunk& c : plan.chunks) {
    auto it = reqs_.find(c.id);
    if (it == reqs_.end()) continue;
    SchedRequest* r = it->second.get();
    if (!r->running) continue;
    const int64_t n_full = std::min<int64_t>(r->n_computed / bs, int64_t(r->blocks.size()));
    while (int64_t(r->hashes.size()) < n_full) {
      const size_t i = r->hashes.size();
      const uint64_t parent = i == 0 ? 0 : r->hashes[i - 1];
      r->hashes.push_back(pool_.insert(r->blocks[i], parent, r->tokens.data() + int64_t(i) * bs));
    }
  }
}

void Scheduler::append_token(int64_t id, int32_t token) {
  auto it = reqs_.find(id);
  assert(it != reqs_.end());
  SchedRequest* r = it->second.get();
  assert(r->running && r->n_computed == int64_t(r->tokens.size()));
  r->tokens.push_back(token);
}

void Scheduler::finish(int64_t id) {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return;
  SchedRequest* r = it->second.get();
  if (r->running) {
    pool_.release_all(r->blocks);
    slot_used_[size_t(r->slot)] = 0;
    running_.erase(std::find(running_.begin(), running_.end(), r));
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), r));
  }
  reqs_.erase(it);
}

const SchedRequest* Scheduler::find(int64_t id) const {
  auto it = reqs_.find(id);
  return it == reqs_.end() ? nullptr : it->second.get();
}

std::vector<int64_t> Scheduler::running_ids() const {
  std::vector<int64_t> out;
  for (const SchedRequest* r : running_) out.push_back(r->id);
  return out;
}

std::vector<int64_t> Scheduler::waiting_ids() const {
  std::vector<int64_t> out;
  for (const SchedRequest* r : waiting_) out.push_back(r->id);
  return out;
}

std::string Scheduler::check() const {
  std::string e = pool_.check();
  if (!e.empty()) return "block pool: " + e;
  std::vector<int32_t> refs(size_t(pool_.n_blocks()), 0);
  std::vector<uint8_t> slots(slot_used_.size(), 0);
  if (int64_t(running_.size() + waiting_.size()) != int64_t(reqs_.size()))
    return "requests neither running nor waiting";
  for (const SchedRequest* r : running_) {
    const std::string who = "request " + std::to_string(r->id);
    if (!r->running) return who + " is in the running list but not marked running";
    if (r->slot < 0 || size_t(r->slot) >= slots.size() || slots[size_t(r->slot)]++)
      return who + " has a bad or shared slot";
    if (!slot_used_[size_t(r->slot)]) return who + " holds a slot marked free";
    if (int64_t(r->blocks.size()) < blocks_for(r->n_computed)) return who + " has too few blocks";
    if (r->n_computed > int64_t(r->tokens.size())) return who + " computed more tokens than it has";
    for (int32_t b : r->blocks) {
      if (b < 0 || b >= pool_.n_blocks()) return who + " holds an invalid block id";
      ++refs[size_t(b)];
    }
    for (size_t i = 0; i + 1 < r->blocks.size(); ++i)
      for (size_t j = i + 1; j < r->blocks.size(); ++j)
        if (r->blocks[i] == r->blocks[j]) return who + " holds block " + std::to_string(r->blocks[i]) + " twice";
  }
  for (const SchedRequest* r : waiting_)
    if (r->running || !r->blocks.empty() || r->slot >= 0 || r->n_computed != 0)
      return "waiting request " + std::to_string(r->id) + " holds blocks, a slot or computed tokens";
  for (int32_t b = 0; b < pool_.n_blocks(); ++b)
    if (refs[size_t(b)] != pool_.ref_count(b))
      return "block " + std::to_string(b) + " has count " + std::to_string(pool_.ref_count(b)) +
             " but " + std::to_string(refs[size_t(b)]) + " tables hold it";
  for (size_t s = 0; s < slots.size(); ++s)
    if (bool(slots[s]) != bool(slot_used_[s])) return "slot " + std::to_string(s) + " leaked";
  return "";
}

}  // namespace qwen::serve
