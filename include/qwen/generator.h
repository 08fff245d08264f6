/// @file qwen/generator.h
/// @brief Text generation from one prompt: sampling settings (temperature, top-k, top-p, min-p,
/// repetition penalty, seed), stop tokens and stop strings, and a streaming callback that
/// receives each token and the text it completes.
///
/// @code
///   qwen::Generator gen(model, tokenizer);
///   qwen::GenerationConfig g;
///   g.temperature = 0.8f; g.top_p = 0.9f; g.max_new_tokens = 64;
///   gen.generate("Once upon a time", g, [](int32_t, std::string_view text) {
///     std::cout << text << std::flush;
///     return true;                 // false stops generation
///   });
/// @endcode
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "qwen/model.h"
#include "qwen/tokenizer.h"

namespace qwen::api {

/// How to pick the next tokens and when to stop. The filters apply in this order: repetition
/// penalty, temperature, top-k, top-p, min-p; then one draw from a generator seeded with `seed`.
struct GenerationConfig {
  int64_t max_new_tokens = 64;     ///< new tokens at most (>= 1)
  float temperature = 1.0f;        ///< 0 = greedy (argmax)
  int top_k = 0;                   ///< keep the k most likely tokens; 0 = off
  float top_p = 1.0f;              ///< nucleus: smallest set with probability >= top_p; 1 = off
  float min_p = 0.0f;              ///< drop tokens below min_p x the top probability; 0 = off
  float repetition_penalty = 1.0f; ///< CTRL-style, on prompt and generated ids; 1 = off
  uint64_t seed = 0;               ///< the same seed gives the same tokens
  std::vector<int32_t> stop_ids;   ///< end after emitting one of these ids
  std::vector<std::string> stop;   ///< end before the first of these strings (needs a tokenizer)
  /// Also stop on the model's eos ids (config.json) and the tokenizer's stop ids
  /// (eos, <|im_end|>, <|endoftext|>).
  bool stop_at_eos = true;
};

/// What one generate() call produced.
struct GenerationResult {
  std::vector<int32_t> tokens;  ///< generated ids (a stop id included, when one ended it)
  std::string text;             ///< their text, stop strings and special tokens left out
  std::string finish_reason;    ///< "stop" (stop id or string), "length" or "cancelled" (callback)
  int64_t prompt_tokens = 0;    ///< prompt length in tokens
  double prefill_tok_s = 0;     ///< prompt tokens per second
  double decode_tok_s = 0;      ///< generated tokens per second after the first
};

/// Streaming callback: called once per generated token with its id and the text that became
/// final with it (possibly empty: an unfinished UTF-8 sequence or a possible stop-string prefix
/// is held back; always empty without a tokenizer). Return false to stop generating.
using StreamCallback = std::function<bool(int32_t token, std::string_view text)>;

/// Generates from a Model. The KV cache is sized for the longest prompt + max_new_tokens seen
/// so far (grown on demand), so one Generator serves many calls without reallocating.
/// Not thread-safe: use one Generator per thread (they may share the Model).
class Generator {
 public:
  /// Without a tokenizer: prompts are ids, results have no text, stop strings are refused.
  explicit Generator(const Model& model);
  /// With a tokenizer: text prompts, streamed text, stop strings.
  Generator(const Model& model, const Tokenizer& tokenizer);
  ~Generator();                                ///< Frees the cache.
  Generator(Generator&&) noexcept;             ///< Moves the generator.
  Generator& operator=(Generator&&) noexcept;  ///< Moves the generator.

  /// Generates after the prompt ids. Throws qwen::Error on an empty prompt, an id outside the
  /// vocabulary, prompt + max_new_tokens beyond max_position_embeddings (allowed with "dynamic"
  /// rope scaling, which extends the context), or bad settings.
  GenerationResult generate(const std::vector<int32_t>& prompt, const GenerationConfig& config,
                            const StreamCallback& on_token = nullptr);
  /// Encodes the prompt with the tokenizer (special tokens per tokenizer_config.json), then as
  /// above. Throws qwen::Error without a tokenizer.
  GenerationResult generate(const std::string& prompt, const GenerationConfig& config,
                            const StreamCallback& on_token = nullptr);

  /// Bytes held by the KV cache now.
  size_t kv_cache_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
