// serve/engine.h — the serving engine: one thread owns the model, the paged KV cache and the
// scheduler, and runs step after step; each step batches every scheduled token of every
// sequence (decode tokens and prefill chunks) into one Decoder::forward, so all sequences share
// the matrix multiplies. Other threads only submit requests and read their outputs through a
// RequestHandle (mutex + condition variable); cancelling a handle frees its KV blocks on the
// engine's next turn (within one step).
//
// Per request: its own sampling parameters and its own Rng seeded from its seed, so the same seed
// gives the same tokens alone or in a crowd (the batched forward is row-invariant: see
// ops/paged_attention.h, and EngineConfig::batch_invariant). Text is produced incrementally (StreamDecoder) when a tokenizer is
// given, and stop strings are matched on it here, so a request stops at the exact token.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "generate/sampler.h"
#include "model/decoder.h"
#include "model/model.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"
#include "serve/metrics.h"
#include "serve/paged_cache.h"
#include "serve/scheduler.h"

namespace qwen::serve {

struct EngineConfig {
  int64_t max_running = 64;       // sequences computed together
  int64_t max_queue = 256;        // requests waiting for admission before submit() refuses
  int64_t max_step_tokens = 512;  // tokens per step (raised to max_running if smaller)
  int64_t prefill_per_step = 32;  // prompt tokens per step while others decode: at most
                                  // max(this, decoding requests); 0 = only max_step_tokens
  int32_t block_size = 16;        // tokens per KV block
  int32_t n_blocks = 0;           // KV blocks; 0: from kv_cache_bytes
  size_t kv_cache_bytes = size_t(512) << 20;
  int64_t max_model_len = 0;      // tokens per sequence; 0: the model's max_position_embeddings
  bool prefix_caching = true;
  // A request's output is bit-identical alone or batched. On packed weights (prepack_weights)
  // and on Q8_0 weights (whose multi-row integer kernel sums each row as the 1-row matvec,
  // ops/q8_0.h) that holds by itself; otherwise a step never runs a single sequence alone: it then gets a
  // 1-token companion on a spare slot, so every matrix multiply has at least 2 rows and takes
  // the same kernel path as in a crowd (an unpacked 1-row product goes to a matrix-vector kernel
  // that rounds differently), for one extra row per lone step. false: no companion either way.
  bool batch_invariant = true;
  // Pack every float projection weight and the LM head once into the GEMM kernel's panel layout
  // (ops::prepack_weight; released when the engine is destroyed), so a step's products read the
  // weights as linear streams without per-call repacking. Costs about the weights' bytes again.
  // The weights must not change while the engine lives. On packed weights a 1-row product rounds
  // exactly as a batched one (ops/matmul.h), so when every product of the forward is on a packed
  // weight or a Q8_0 weight (no LoRA, no mHC) batch_invariant needs no companion row.
  bool prepack_weights = true;
};

// A full queue (HTTP 429).
class QueueFull : public Error {
 public:
  using Error::Error;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;              // new tokens at most (>= 1)
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;        // end after one of these (its text is not emitted)
  std::vector<std::string> stop;        // end before the first of these strings in the text
  bool want_text = true;                // detokenize (needs the engine's tokenizer)
  bool want_logprobs = false;           // log-probability of each generated token under the
                                        // model (raw logits, before penalties and temperature)
};

enum class FinishReason { kNone, kStop, kLength, kCancelled };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", null -> ""

// What a request has produced; RequestHandle::next() hands it out piece by piece.
struct RequestOutput {
  std::vector<int32_t> tokens;  // generated ids (a stop id included)
  std::vector<float> logprobs;  // one per token when want_logprobs
  std::string text;             // detokenized text (stop strings and stop ids excluded)
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;    // prompt tokens served from the prefix cache
};

class Engine;

class RequestHandle {
 public:
  int64_t id() const { return id_; }
  // Moves everything that arrived since the last call into *out (appending tokens and text, and
  // copying the counts and finish state). Waits up to timeout when nothing is new. Returns true
  // if something new (or the finish) was handed over.
  bool next(RequestOutput* out, std::chrono::milliseconds timeout);
  // Waits for the end and returns the whole output.
  RequestOutput wait();
  // Asks the engine to stop this request; its blocks are freed on the engine's next turn and
  // the output finishes with FinishReason::kCancelled (unless it had finished already).
  void cancel();
  bool finished() const;

 private:
  friend class Engine;
  struct Shared;
  RequestHandle(int64_t id, std::shared_ptr<Shared> engine) : id_(id), engine_(std::move(engine)) {}
  // Engine side. tokens / logprobs may be null when their counts are 0.
  void push(const int32_t* tokens, size_t n_tokens, const float* logprobs, size_t n_logprobs,
            std::string_view text, bool finished, FinishReason reason, int64_t prompt_tokens,
            int64_t completion_tokens, int64_t cached_tokens);
  // Sizes the pending buffers for a whole request, so push() does not allocate while the
  // reader keeps up (or at all, for the token ids, if it never reads before the end).
  void reserve(size_t n_tokens, bool logprobs);

  int64_t id_;
  std::shared_ptr<Shared> engine_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  RequestOutput pending_;
  bool new_data_ = false;
  bool done_ = false;
  bool cancel_sent_ = false;
};

class Engine {
 public:
  // tok may be null (then requests must set want_text = false and stop strings are refused).
  Engine(const Model& m, const Tokenizer* tok, const EngineConfig& cfg);
  ~Engine();

  // Starts the engine thread.
  void start();
  // Stops it. drain: keep stepping until every submitted request is done (after timeout the
  // rest are cancelled); otherwise cancel everything now. Joins the thread. Idempotent.
  void stop(bool drain, std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

  // Queues a request. Throws QueueFull when max_queue requests wait already, qwen::Error for a
  // request that can never run (empty prompt, id out of the vocabulary, too long, ...), and
  // qwen::Error after stop().
  std::shared_ptr<RequestHandle> submit(GenerationRequest req);

  // Without the engine thread (tests): steps until every submitted request is done.
  void run_until_idle();

  const EngineConfig& config() const { return cfg_; }
  int64_t max_model_len() const { return max_model_len_; }
  int32_t n_blocks() const { return cfg_.n_blocks; }
  const Model& model() const { return m_; }
  const Tokenizer* tokenizer() const { return tok_; }
  Metrics& metrics() { return metrics_; }
  // Requests submitted and not yet finished.
  int64_t n_active() const;
  // Engine-thread state, for tests and /health: blocks in use after the last step.
  int64_t kv_blocks_used() const { return metrics_.kv_blocks_used(); }
  // Engine-thread counters (read them when the engine is not running, e.g. in tests).
  int64_t n_preemptions() const { return sched_.n_preemptions(); }
  // Weights packed by this engine (prepack_weights) and their packed bytes; whether a lone
  // sequence runs with the companion row.
  int64_t n_packed_weights() const { return int64_t(packed_.size()); }
  size_t packed_weight_bytes() const { return packed_bytes_; }
  bool uses_companion_row() const { return companion_; }

 private:
  struct Active;
  void loop();
  // Takes submitted requests and cancellations into the scheduler. Engine thread only.
  void intake();
  void step_once();
  void emit(Active& a, int32_t token, float logprob, bool* finished);
  void finish(Active& a, FinishReason reason);
  // The bookkeeping of a finished request (metrics, active count); its output is pushed already.
  void on_finished(Active& a, FinishReason reason);
  void publish_state();
  void prepack();
  void release_packed();

  const Model& m_;
  const Tokenizer* tok_;
  EngineConfig cfg_;
  int64_t max_model_len_ = 0;
  Scheduler sched_;
  PagedKvCache cache_;
  Decoder decoder_;
  std::vector<Sampler> samplers_;  // one per OpenMP thread
  int n_threads_ = 1;              // the creating thread's OpenMP thread count (--threads)
  std::vector<float> logits_;      // (max_running + 1, V)
  std::vector<const void*> packed_;  // weights this engine filed with ops::prepack_weight
  size_t packed_bytes_ = 0;
  bool companion_ = false;         // lone steps get the companion row (see batch_invariant)
  int32_t spare_block_ = 0;        // the companion row's block (past the scheduler's blocks)
  int32_t spare_token_ = 0;
  std::vector<int32_t> stop_default_;
  Metrics metrics_;

  std::shared_ptr<RequestHandle::Shared> shared_;
  std::thread thread_;
  bool started_ = false;

  // Engine-thread state. The per-step buffers are sized at construction and reused, so a
  // decode step does not allocate.
  std::unordered_map<int64_t, std::unique_ptr<Active>> active_;
  std::vector<SeqChunk> chunks_;
  StepPlan plan_;
  std::vector<int64_t> rows_;              // plan chunks that sample
  std::vector<Active*> row_active_;        // their requests
  std::vector<int32_t> sampled_;           // their tokens
  std::vector<float> logprob_;             // and log-probabilities
  std::vector<std::vector<float>> raw_;    // per sampler: a logits row before penalties
  std::string text_;                       // emit()'s text of one token
};

}  // namespace qwen::serve
