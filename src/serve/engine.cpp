// serve/engine.cpp — see engine.h.
#include "serve/engine.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "ops/matmul.h"
#include "ops/q8_0.h"
#include "ops/nf4.h"

namespace qwen::serve {

using Clock = std::chrono::steady_clock;

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kNone: return "";
  }
  return "";
}

// State shared by the engine and the handles: the intake queue and the cancellations.
struct RequestHandle::Shared {
  struct Pending {
    int64_t id;
    GenerationRequest req;
    std::shared_ptr<RequestHandle> handle;
    Clock::time_point t_submit;
  };
  std::mutex mu;
  std::condition_variable cv;  // wakes the engine thread
  std::deque<Pending> incoming;
  std::vector<int64_t> cancels;
  bool stop = false, drain = false;
  Clock::time_point deadline;
  int64_t next_id = 1;
  int64_t n_waiting = 0;  // scheduler's queue after the last step
  int64_t n_running = 0;  // scheduler's running requests after the last step
  int64_t n_active = 0;   // submitted, not finished
};

// ---- RequestHandle ------------------------------------------------------------------------

bool RequestHandle::next(RequestOutput* out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!new_data_) cv_.wait_for(lk, timeout, [&] { return new_data_; });
  if (!new_data_) return false;
  out->tokens.insert(out->tokens.end(), pending_.tokens.begin(), pending_.tokens.end());
  out->logprobs.insert(out->logprobs.end(), pending_.logprobs.begin(), pending_.logprobs.end());
  out->text += pending_.text;
  pending_.tokens.clear();
  pending_.logprobs.clear();
  pending_.text.clear();
  out->finished = pending_.finished;
  out->reason = pending_.reason;
  out->prompt_tokens = pending_.prompt_tokens;
  out->completion_tokens = pending_.completion_tokens;
  out->cached_tokens = pending_.cached_tokens;
  new_data_ = false;
  return true;
}

RequestOutput RequestHandle::wait() {
  RequestOutput out;
  while (!out.finished) next(&out, std::chrono::milliseconds(1000));
  return out;
}

void RequestHandle::cancel() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (done_ || cancel_sent_) return;
    cancel_sent_ = true;
  }
  {
    std::lock_guard<std::mutex> lk(engine_->mu);
    engine_->cancels.push_back(id_);
  }
  engine_->cv.notify_all();
}

bool RequestHandle::finished() const {
  std::lock_guard<std::mutex> lk(mu_);
  return done_;
}

void RequestHandle::push(const int32_t* tokens, size_t n_tokens, const float* logprobs,
                         size_t n_logprobs, std::string_view text, bool finished,
                         FinishReason reason, int64_t prompt_tokens, int64_t completion_tokens,
                         int64_t cached_tokens) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (n_tokens) pending_.tokens.insert(pending_.tokens.end(), tokens, tokens + n_tokens);
    if (n_logprobs)
      pending_.logprobs.insert(pending_.logprobs.end(), logprobs, logprobs + n_logprobs);
    pending_.text.append(text);
    pending_.finished = finished;
    pending_.reason = reason;
    pending_.prompt_tokens = prompt_tokens;
    pending_.completion_tokens = completion_tokens;
    pending_.cached_tokens = cached_tokens;
    new_data_ = true;
    done_ = finished;
  }
  cv_.notify_all();
}

void RequestHandle::reserve(size_t n_tokens, bool logprobs) {
  std::lock_guard<std::mutex> lk(mu_);
  pending_.tokens.reserve(n_tokens);
  if (logprobs) pending_.logprobs.reserve(n_tokens);
  pending_.text.reserve(64);
}

// ---- Engine -------------------------------------------------------------------------------

struct Engine::Active {
  int64_t id = 0;
  GenerationRequest req;
  std::shared_ptr<RequestHandle> handle;
  Rng rng;
  std::unique_ptr<StreamDecoder> dec;
  std::string held;  // text not released yet: it may be the start of a stop string
  Clock::time_point t_submit, t_last;
  int64_t n_generated = 0;
  int64_t n_cached = 0;
};

namespace {

EngineConfig resolve(const Model& m, EngineConfig c) {
  const ModelConfig& mc = m.config();
  if (c.max_running < 1) throw Error("--max-running must be at least 1");
  if (c.max_queue < 0) throw Error("--max-queue must be >= 0");
  if (c.prefill_per_step < 0) throw Error("--prefill-per-step must be >= 0");
  if (c.block_size < 1 || c.block_size > 4096) throw Error("--block-size must be in 1 .. 4096");
  c.max_step_tokens = std::max(c.max_step_tokens, c.max_running);
  if (c.max_model_len <= 0) c.max_model_len = mc.max_position_embeddings;
  if (c.max_model_len > mc.max_position_embeddings && mc.rope_scaling.type != "dynamic")
    throw Error("--max-model-len " + std::to_string(c.max_model_len) +
                " exceeds the model's max_position_embeddings " +
                std::to_string(mc.max_position_embeddings) + "; lower it");
  const size_t bb = PagedKvCache::block_bytes(mc, c.block_size);
  if (c.n_blocks <= 0) {
    const size_t from_mem = c.kv_cache_bytes / bb;
    if (from_mem < 1)
      throw Error("the KV cache memory of " + std::to_string(c.kv_cache_bytes) +
                  " bytes holds no block of " + std::to_string(bb) +
                  " bytes; raise --kv-cache-mem");
    // No more than max_running sequences of the longest length can use.
    const int64_t useful = c.max_running * ((c.max_model_len + c.block_size - 1) / c.block_size);
    c.n_blocks = int32_t(std::min<int64_t>({int64_t(from_mem), useful, int64_t(INT32_MAX / 2)}));
  }
  c.max_model_len = std::min<int64_t>(c.max_model_len, int64_t(c.n_blocks) * c.block_size);
  return c;
}

SchedulerConfig sched_config(const EngineConfig& c) {
  SchedulerConfig s;
  s.n_blocks = c.n_blocks;
  s.block_size = c.block_size;
  s.max_running = c.max_running;
  s.max_step_tokens = c.max_step_tokens;
  s.prefill_per_step = c.prefill_per_step;
  s.prefix_caching = c.prefix_caching;
  return s;
}

}  // namespace

Engine::Engine(const Model& m, const Tokenizer* tok, const EngineConfig& cfg)
    : m_(m),
      tok_(tok),
      cfg_(resolve(m, cfg)),
      max_model_len_(cfg_.max_model_len),
      sched_(sched_config(cfg_)),
      cache_(m.config(), cfg_.n_blocks + 1, cfg_.block_size, cfg_.max_running + 1),
      decoder_(m, cfg_.max_step_tokens + 1),
      logits_(size_t(cfg_.max_running + 1) * size_t(m.config().vocab_size)),
      spare_block_(cfg_.n_blocks),
      shared_(std::make_shared<RequestHandle::Shared>()) {
  // OpenMP's thread count is per thread: a new thread starts from the defaults, not from what
  // set_num_threads() (qwen serve --threads) set on this one, so the engine thread applies it.
  n_threads_ = std::max(1, omp_get_max_threads());
  for (int i = 0; i < n_threads_; ++i) {
    samplers_.emplace_back(m.config().vocab_size);
    raw_.emplace_back(size_t(m.config().vocab_size));
  }
  const size_t n_rows = size_t(cfg_.max_running) + 1;
  chunks_.reserve(n_rows);
  plan_.chunks.reserve(n_rows);
  plan_.preempted.reserve(n_rows);
  plan_.admitted.reserve(n_rows);
  rows_.reserve(n_rows);
  row_active_.reserve(n_rows);
  sampled_.reserve(n_rows);
  logprob_.reserve(n_rows);
  text_.reserve(256);
  prepack();
  publish_state();
}

// Files the weights of every matrix product with ops::prepack_weight (prepack_weights) and
// decides whether lone steps need the companion row: not when every product of the forward is
// M-invariant (a row's result does not depend on how many rows share the product): on a packed
// float weight (a packed 1-row product sums exactly as a batched one) or on a Q8_0 weight with
// the multi-row integer kernel (each row sums as the 1-row matvec, ops/q8_0.h), or on an NF4
// weight with its multi-row 8-bit kernel (the same property, ops/nf4.h).
void Engine::prepack() {
  bool all_invariant = !m_.config().use_mhc;
  const bool q8_invariant = ops::q8_0_matmul_row_invariant();
  const bool nf4_invariant = ops::nf4_matmul_row_invariant();
  auto file = [&](const Linear& l) {
    const bool packable = cfg_.prepack_weights && !dtype_is_quantized(l.dtype);
    if (packable && std::find(packed_.begin(), packed_.end(), l.w) == packed_.end()) {
      ops::prepack_weight(l.w, l.dtype, l.n_out, l.n_in);
      packed_.push_back(l.w);
      packed_bytes_ += ops::packed_weight_bytes(
          *ops::find_prepacked_weight(l.w, l.dtype, l.n_out, l.n_in));
    }
    const bool quant_invariant = (l.dtype == DType::Q8_0 && q8_invariant) ||
                                 (l.dtype == DType::NF4 && nf4_invariant);
    if (!(packable || quant_invariant) || l.lora) all_invariant = false;
  };
  try {
    for (const LayerWeights& L : m_.layers())
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) file(*l);
    file(m_.lm_head());
  } catch (...) {
    release_packed();
    throw;
  }
  companion_ = cfg_.batch_invariant && !all_invariant;
}

void Engine::release_packed() {
  for (const void* w : packed_) ops::release_prepacked_weight(w);
  packed_.clear();
  packed_bytes_ = 0;
}

Engine::~Engine() {
  stop(false);
  release_packed();
}

void Engine::start() {
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop(bool drain, std::chrono::milliseconds timeout) {
  {
    std::lock_guard<std::mutex> lk(shared_->mu);
    if (!shared_->stop) {
      shared_->stop = true;
      shared_->drain = drain;
      shared_->deadline = Clock::now() + timeout;
    }
  }
  shared_->cv.notify_all();
  if (thread_.joinable()) thread_.join();
  if (!started_) {  // never ran: cancel whatever was submitted
    intake();
    for (auto& [id, a] : active_) {
      sched_.finish(id);
      a->handle->push(nullptr, 0, nullptr, 0, "", true, FinishReason::kCancelled,
                      int64_t(a->req.prompt.size()), a->n_generated, a->n_cached);
      metrics_.request_finished("cancelled");
    }
    std::lock_guard<std::mutex> lk(shared_->mu);
    shared_->n_active -= int64_t(active_.size());
    active_.clear();
  }
}

int64_t Engine::n_active() const {
  std::lock_guard<std::mutex> lk(shared_->mu);
  return shared_->n_active;
}

std::shared_ptr<RequestHandle> Engine::submit(GenerationRequest req) {
  const int64_t V = m_.config().vocab_size;
  const int64_t n = int64_t(req.prompt.size());
  if (n == 0) throw Error("the prompt is empty; send at least one token");
  for (int32_t id : req.prompt)
    if (id < 0 || id >= V)
      throw Error("prompt token id " + std::to_string(id) + " is out of range for vocab_size " +
                  std::to_string(V));
  if (req.max_tokens < 1) throw Error("max_tokens must be at least 1");
  if (n + req.max_tokens > max_model_len_)
    throw Error("the prompt of " + std::to_string(n) + " tokens plus max_tokens " +
                std::to_string(req.max_tokens) + " exceeds the context of " +
                std::to_string(max_model_len_) + " tokens; shorten the prompt or lower max_tokens");
  if ((req.want_text || !req.stop.empty()) && !tok_)
    throw Error("this model has no tokenizer, so text output and stop strings are unavailable");
  std::shared_ptr<RequestHandle> h;
  {
    std::lock_guard<std::mutex> lk(shared_->mu);
    if (shared_->stop) throw Error("the server is shutting down; retry elsewhere");
    // Requests that a free running slot will take at once do not count against the queue.
    const int64_t free_slots = cfg_.max_running - shared_->n_running;
    if (shared_->n_waiting + int64_t(shared_->incoming.size()) >= cfg_.max_queue + free_slots)
      throw QueueFull("the request queue is full (" + std::to_string(cfg_.max_queue) +
                      " waiting); retry later");
    const int64_t id = shared_->next_id++;
    h = std::shared_ptr<RequestHandle>(new RequestHandle(id, shared_));
    shared_->incoming.push_back({id, std::move(req), h, Clock::now()});
    ++shared_->n_active;
  }
  shared_->cv.notify_all();
  return h;
}

void Engine::intake() {
  {
    // Nothing new (most steps): return before constructing a deque, which allocates its map
    // even when empty (the decode step must not allocate).
    std::lock_guard<std::mutex> lk(shared_->mu);
    if (shared_->incoming.empty() && shared_->cancels.empty()) return;
  }
  std::deque<RequestHandle::Shared::Pending> incoming;
  std::vector<int64_t> cancels;
  {
    std::lock_guard<std::mutex> lk(shared_->mu);
    incoming.swap(shared_->incoming);
    cancels.swap(shared_->cancels);
  }
  for (auto& p : incoming) {
    auto a = std::make_unique<Active>();
    a->id = p.id;
    a->handle = p.handle;
    a->t_submit = p.t_submit;
    a->rng.reseed(p.req.sampling.seed);
    if (p.req.want_text && tok_) a->dec = std::make_unique<StreamDecoder>(*tok_, true);
    a->handle->reserve(size_t(p.req.max_tokens), p.req.want_logprobs);
    a->held.reserve(64);
    a->req = std::move(p.req);
    sched_.add(a->id, a->req.prompt, a->req.max_tokens);  // validated by submit()
    metrics_.prompt_tokens(int64_t(a->req.prompt.size()));
    active_.emplace(a->id, std::move(a));
  }
  for (int64_t id : cancels) {
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    sched_.finish(id);
    finish(*it->second, FinishReason::kCancelled);
    active_.erase(it);
  }
  if (!incoming.empty() || !cancels.empty()) publish_state();
}

void Engine::publish_state() {
  metrics_.set_state(sched_.n_running(), sched_.n_waiting(), sched_.pool().n_used(),
                     sched_.pool().n_blocks());
  std::lock_guard<std::mutex> lk(shared_->mu);
  shared_->n_waiting = sched_.n_waiting();
  shared_->n_running = sched_.n_running();
}

void Engine::finish(Active& a, FinishReason reason) {
  a.handle->push(nullptr, 0, nullptr, 0, "", true, reason, int64_t(a.req.prompt.size()),
                 a.n_generated, a.n_cached);
  on_finished(a, reason);
}

void Engine::on_finished(Active& a, FinishReason reason) {
  metrics_.request_finished(finish_reason_name(reason));
  metrics_.request_latency(std::chrono::duration<double>(Clock::now() - a.t_submit).count());
  std::lock_guard<std::mutex> lk(shared_->mu);
  --shared_->n_active;
}

namespace {

// Moves text from held to *out (appending): everything before the first stop string (*hit =
// true), or everything but the longest tail that could still grow into a stop string (all of it
// when final). Allocates nothing once the strings have grown to their working size.
void release_text(std::string& held, const std::vector<std::string>& stops, bool final,
                  bool* hit, std::string* out) {
  *hit = false;
  if (stops.empty()) {
    out->append(held);
    held.clear();
    return;
  }
  size_t first = std::string::npos;
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    const size_t p = held.find(s);
    if (p != std::string::npos && p < first) first = p;
  }
  if (first != std::string::npos) {
    *hit = true;
    out->append(held, 0, first);
    held.clear();
    return;
  }
  size_t keep = 0;
  if (!final)
    for (const std::string& s : stops)
      for (size_t k = std::min(s.size() - 1, held.size()); k > keep; --k)
        if (held.compare(held.size() - k, k, s, 0, k) == 0) {
          keep = k;
          break;
        }
  out->append(held, 0, held.size() - keep);
  held.erase(0, held.size() - keep);
}

}  // namespace

void Engine::emit(Active& a, int32_t token, float logprob, bool* finished) {
  const auto now = Clock::now();
  const bool first = a.n_generated == 0;
  metrics_.token(first, std::chrono::duration<double>(now - (first ? a.t_submit : a.t_last)).count());
  a.t_last = now;
  ++a.n_generated;

  FinishReason reason = FinishReason::kNone;
  std::string& text = text_;
  text.clear();
  bool hit = false;
  const bool is_stop_id =
      std::find(a.req.stop_ids.begin(), a.req.stop_ids.end(), token) != a.req.stop_ids.end();
  if (is_stop_id) {
    reason = FinishReason::kStop;
    if (a.dec) a.held += a.dec->flush();
    release_text(a.held, a.req.stop, true, &hit, &text);
  } else {
    if (a.dec) a.held += a.dec->push(token);
    release_text(a.held, a.req.stop, false, &hit, &text);
    if (hit) {
      reason = FinishReason::kStop;
    } else if (a.n_generated >= a.req.max_tokens) {
      reason = FinishReason::kLength;
      if (a.dec) a.held += a.dec->flush();
      release_text(a.held, a.req.stop, true, &hit, &text);
      if (hit) reason = FinishReason::kStop;
    }
  }
  *finished = reason != FinishReason::kNone;
  // The token and, when it ends the request, the finish in one hand-over.
  a.handle->push(&token, 1, &logprob, a.req.want_logprobs ? 1 : 0, text, *finished, reason,
                 int64_t(a.req.prompt.size()), a.n_generated, a.n_cached);
  if (*finished) on_finished(a, reason);
}

void Engine::step_once() {
  const auto t0 = Clock::now();
  StepPlan& plan = plan_;
  sched_.step(&plan);
  if (!plan.preempted.empty()) metrics_.preemptions(int64_t(plan.preempted.size()));
  if (plan.empty()) {
    publish_state();
    return;
  }
  chunks_.clear();
  for (const StepChunk& c : plan.chunks) {
    const SchedRequest* r = sched_.find(c.id);
    cache_.bind(c.slot, r->blocks.data(), int64_t(r->blocks.size()), c.pos0);
    chunks_.push_back(SeqChunk{c.slot, c.n_tokens, r->tokens.data() + c.pos0});
  }
  if (companion_ && chunks_.size() == 1) {
    const int64_t spare_slot = cfg_.max_running;
    cache_.bind(spare_slot, &spare_block_, 1, 0);
    chunks_.push_back(SeqChunk{spare_slot, 1, &spare_token_});
  }
  for (int64_t id : plan.admitted) {
    const SchedRequest* r = sched_.find(id);
    Active& a = *active_.at(id);
    if (r->n_preempted == 0) {
      a.n_cached = r->n_cached_tokens;
      metrics_.prefix_hit_tokens(r->n_cached_tokens);
    }
  }
  decoder_.forward(cache_, chunks_.data(), chunks_.size(), LogitsMode::kLast, logits_.data());
  sched_.computed(plan);

  // Sample every chunk that ends its request's tokens (each request has its own Rng, so the
  // order does not matter); in parallel over requests only when the rows are big enough to
  // pay for waking the threads.
  rows_.clear();
  row_active_.clear();
  for (size_t i = 0; i < plan.chunks.size(); ++i)
    if (plan.chunks[i].sample) {
      rows_.push_back(int64_t(i));
      row_active_.push_back(active_.find(plan.chunks[i].id)->second.get());
    }
  const int64_t n_rows = int64_t(rows_.size());
  sampled_.resize(size_t(n_rows));
  logprob_.assign(size_t(n_rows), 0.0f);
  const int64_t V = m_.config().vocab_size;
  const int n_threads = int(samplers_.size());
  const bool parallel = n_threads > 1 && n_rows >= 4 && n_rows * V >= (int64_t(1) << 20);
  auto sample_row = [&](int64_t i, int tid) {
    const StepChunk& c = plan.chunks[size_t(rows_[size_t(i)])];
    const SchedRequest* r = sched_.find(c.id);
    Active& a = *row_active_[size_t(i)];
    Sampler& s = samplers_[size_t(tid)];
    const int32_t* gen = r->tokens.data() + r->n_prompt;
    const int64_t n_gen = int64_t(r->tokens.size()) - r->n_prompt;
    float* row = logits_.data() + rows_[size_t(i)] * V;
    float* raw = raw_[size_t(tid)].data();  // the row before sample() applies penalties to it
    if (a.req.want_logprobs) std::copy(row, row + V, raw);
    const int32_t tok = s.sample(row, a.req.sampling, a.rng, r->tokens.data(),
                                 int64_t(r->tokens.size()), gen, n_gen);
    sampled_[size_t(i)] = tok;
    if (a.req.want_logprobs) {
      const float mx = *std::max_element(raw, raw + V);
      double sum = 0;
      for (int64_t j = 0; j < V; ++j) sum += std::exp(double(raw[j] - mx));
      logprob_[size_t(i)] = float(double(raw[tok] - mx) - std::log(sum));
    }
  };
  if (parallel) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t i = 0; i < n_rows; ++i) sample_row(i, omp_get_thread_num());
  } else {
    for (int64_t i = 0; i < n_rows; ++i) sample_row(i, 0);
  }
  for (int64_t i = 0; i < n_rows; ++i) {
    Active& a = *row_active_[size_t(i)];
    const int64_t id = a.id;
    bool done = false;
    emit(a, sampled_[size_t(i)], logprob_[size_t(i)], &done);
    if (done) {
      sched_.finish(id);
      active_.erase(id);
    } else {
      sched_.append_token(id, sampled_[size_t(i)]);
    }
  }
  for (const SeqChunk& c : chunks_) cache_.unbind(c.seq);
  metrics_.step(plan.n_tokens, int64_t(plan.chunks.size()),
                std::chrono::duration<double>(Clock::now() - t0).count());
  publish_state();
}

void Engine::loop() {
  omp_set_num_threads(n_threads_);
  for (;;) {
    intake();
    bool stop, drain;
    Clock::time_point deadline;
    {
      std::unique_lock<std::mutex> lk(shared_->mu);
      if (sched_.idle() && !shared_->stop)
        shared_->cv.wait(lk, [&] {
          return shared_->stop || !shared_->incoming.empty() || !shared_->cancels.empty();
        });
      stop = shared_->stop;
      drain = shared_->drain;
      deadline = shared_->deadline;
    }
    if (stop) {
      intake();
      if (!drain || active_.empty() || Clock::now() >= deadline) break;
    }
    if (sched_.idle()) continue;
    try {
      step_once();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "qwen serve: engine step failed: %s; cancelling %zu requests\n",
                   e.what(), active_.size());
      for (auto& [id, a] : active_) {
        sched_.finish(id);
        finish(*a, FinishReason::kCancelled);
      }
      active_.clear();
      publish_state();
    }
  }
  // Cancel what is left (stop without drain, or the drain deadline passed).
  for (auto& [id, a] : active_) {
    sched_.finish(id);
    finish(*a, FinishReason::kCancelled);
  }
  active_.clear();
  publish_state();
}

void Engine::run_until_idle() {
  for (;;) {
    intake();
    if (sched_.idle()) {
      std::lock_guard<std::mutex> lk(shared_->mu);
      if (shared_->incoming.empty() && shared_->cancels.empty()) break;
      continue;
    }
    step_once();
  }
}

}  // namespace qwen::serve
