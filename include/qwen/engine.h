/// @file qwen/engine.h
/// @brief The serving engine, for many requests at once in your own program: continuous
/// batching (every step runs the decode tokens and prefill chunks of all running requests through
/// one forward pass) over a paged KV cache with prefix caching. submit() from any thread; read
/// each request's tokens and text as they arrive. qwen::Server puts the OpenAI-compatible HTTP
/// API of `qwen serve` in front of an Engine.
///
/// @code
///   qwen::Engine engine(model, tokenizer);
///   engine.start();
///   qwen::Request r = engine.submit("The capital of France is", gen_config);
///   qwen::Completion c = r.wait();
///   engine.stop();
/// @endcode
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qwen/generator.h"
#include "qwen/model.h"
#include "qwen/tokenizer.h"

namespace qwen::api {

/// Capacity of an Engine.
struct EngineConfig {
  int64_t max_running = 64;                  ///< sequences computed together
  int64_t max_queue = 256;                   ///< waiting requests before submit() refuses
  int64_t max_step_tokens = 512;             ///< tokens per step (prefill chunks + decodes)
  /// While other requests decode, prompt tokens per step are at most max(this, decoding
  /// requests): steadier inter-token latency, slower first tokens. 0 = only max_step_tokens.
  int64_t prefill_per_step = 32;
  size_t kv_cache_bytes = size_t(512) << 20; ///< memory of the paged KV cache
  /// Size the KV cache by tokens instead (rounded up to whole blocks); 0 = by kv_cache_bytes.
  int64_t kv_cache_tokens = 0;
  int32_t block_size = 16;                   ///< tokens per KV block
  int64_t max_model_len = 0;                 ///< tokens per sequence; 0 = max_position_embeddings
  bool prefix_caching = true;                ///< reuse the KV blocks of shared prompt prefixes
  /// A request's output is bit-identical alone or in a crowd. With packed weights (below) that
  /// holds by itself; otherwise a lone sequence runs with a 1-token companion row (one extra row
  /// per lone step).
  bool batch_invariant = true;
  /// Pack the float projection weights and the LM head once into the matrix-multiply kernel's
  /// layout while the engine lives: faster steps (a lone stream ~2x) for about the weights'
  /// bytes of extra memory. Quantised weights, LoRA adapters and mHC models are not packed.
  bool prepack_weights = true;
};

/// A request's output so far (or its increment, from Request::next).
struct Completion {
  std::vector<int32_t> tokens;  ///< generated ids (a stop id included)
  std::string text;             ///< detokenized text (stop strings and stop ids excluded)
  bool finished = false;        ///< the request is done
  std::string finish_reason;    ///< "stop", "length", "cancelled", or "" while running
  int64_t prompt_tokens = 0;    ///< prompt length
  int64_t completion_tokens = 0;///< tokens generated so far
  int64_t cached_tokens = 0;    ///< prompt tokens served from the prefix cache
};

/// A submitted request. Copies refer to the same request.
class Request {
 public:
  /// The engine's id of this request.
  int64_t id() const;
  /// Appends to *out what arrived since the last call (tokens, text) and copies the counts and
  /// the finish state; waits up to `timeout` when nothing is new. Returns true if something new
  /// (or the finish) was handed over.
  bool next(Completion* out, std::chrono::milliseconds timeout);
  /// Waits for the end and returns the whole output.
  Completion wait();
  /// Asks the engine to stop this request; its KV blocks are freed within one step.
  void cancel();
  /// True once the request has finished.
  bool finished() const;

  /// Library-internal state; not part of the stable API.
  struct Impl;
  /// Library-internal: wraps a submitted request.
  explicit Request(std::shared_ptr<Impl> impl);

 private:
  std::shared_ptr<Impl> impl_;
};

/// The serving engine: one thread owns the model, the cache and the scheduler.
class Engine {
 public:
  /// Without a tokenizer: prompts are ids, outputs have no text, stop strings are refused.
  explicit Engine(const Model& model, const EngineConfig& config = {});
  /// With a tokenizer: text prompts, text outputs, stop strings.
  Engine(const Model& model, const Tokenizer& tokenizer, const EngineConfig& config = {});
  /// Stops the engine (cancelling what runs) and frees the cache.
  ~Engine();

  /// Starts the engine thread. Requests may be submitted before.
  void start();
  /// Stops the engine thread: with drain, finishes every submitted request first (cancelling
  /// the rest after `timeout`, if it is not zero); otherwise cancels everything now. Idempotent.
  void stop(bool drain = true, std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

  /// Queues a request. GenerationConfig's max_new_tokens, sampling, seed and stops apply as in
  /// Generator; each request draws from its own seeded generator. Throws qwen::Error for a
  /// request that cannot run (empty prompt, id outside the vocabulary, too long, stop strings
  /// without a tokenizer), when the queue is full, and after stop().
  Request submit(const std::vector<int32_t>& prompt, const GenerationConfig& config);
  /// Encodes the prompt with the tokenizer, then as above.
  Request submit(const std::string& prompt, const GenerationConfig& config);

  /// Requests submitted and not yet finished.
  int64_t active_requests() const;
  /// Tokens per sequence at most (prompt + generated).
  int64_t max_model_len() const;
  /// The capacity in effect, defaults resolved: kv_cache_tokens = the KV blocks x block_size,
  /// kv_cache_bytes = their memory, max_model_len and max_step_tokens as the engine uses them.
  EngineConfig config() const;

  /// Library-internal state; not part of the stable API.
  struct Impl;
  /// Library-internal access to the state; not part of the stable API.
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

/// Settings of Server.
struct ServerConfig {
  std::string host = "127.0.0.1";  ///< address to listen on
  int port = 8080;                 ///< 0 = any free port (bind() returns it)
  std::string api_key;             ///< if set, /v1/* needs "Authorization: Bearer KEY"
  std::string model_name;          ///< the model id clients send and /v1/models lists
  int http_threads = 0;            ///< HTTP worker threads; 0 = max_running + max_queue + 16
};

/// The OpenAI-compatible HTTP API (POST /v1/completions, /v1/chat/completions with streaming;
/// GET /v1/models, /health, /metrics) in front of an Engine, as `qwen serve` runs it.
class Server {
 public:
  /// The engine must outlive the server; it needs a tokenizer for text prompts.
  Server(Engine& engine, const ServerConfig& config);
  ~Server();  ///< Stops listening.
  /// Binds the listening socket and returns the port. Throws qwen::Error if it cannot.
  int bind();
  /// Serves until shutdown(); call after bind(), typically on its own thread.
  void serve();
  /// New requests get 503, in-flight ones may finish within `grace`, the rest are cancelled,
  /// then serve() returns. Safe from any thread.
  void shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(0));

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
