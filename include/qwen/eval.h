/// @file qwen/eval.h
/// @brief Measuring a model: the perplexity of a token sequence (sliding windows for sequences
/// longer than the context), and the speed of prompt processing and generation. What
/// `qwen eval` and `qwen bench` report.
///
/// @code
///   qwen::Model m = qwen::Model::load("my-model");
///   qwen::Tokenizer tok = qwen::Tokenizer::from_dir("my-model");
///   qwen::PerplexityResult p = qwen::evaluate_perplexity(m, tok.encode(text));
///   std::printf("perplexity %.3f\n", p.perplexity);
///   qwen::BenchResult b = qwen::benchmark(m);          // 128 prompt tokens, 64 generated
///   std::printf("decode %.1f tok/s\n", b.decode_tok_s);
/// @endcode
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "qwen/model.h"

namespace qwen::api {

/// Settings of evaluate_perplexity().
struct PerplexityConfig {
  /// Window length in tokens; 0 = max_position_embeddings. Capped at the sequence length.
  int64_t context = 0;
  /// Step between windows when the sequence is longer than one window; 0 = context / 2.
  /// Each window scores only the tokens no earlier window scored, with up to
  /// context - stride tokens of left context.
  int64_t stride = 0;
  /// Called after every window but the last with the tokens scored so far and the total
  /// (N - 1): for a progress display.
  std::function<void(int64_t scored, int64_t total)> on_progress;
};

/// What evaluate_perplexity() measured.
struct PerplexityResult {
  double loss = 0;        ///< mean next-token cross-entropy, nats per token
  double perplexity = 0;  ///< exp(loss)
  int64_t tokens = 0;     ///< predicted tokens, N - 1
  int64_t context = 0;    ///< the window length used
  int64_t stride = 0;     ///< the window step used
  double seconds = 0;     ///< wall time of the scoring
};

/// Mean next-token cross-entropy of ids (N) under the model (with its attached adapter, if any):
/// every token but the first is predicted from the ones before it in its window. Throws
/// qwen::Error for fewer than 2 ids or an id outside the vocabulary.
PerplexityResult evaluate_perplexity(const Model& model, const std::vector<int32_t>& ids,
                                     const PerplexityConfig& config = {});

/// Settings of benchmark().
struct BenchConfig {
  int64_t prompt_len = 128;  ///< prompt tokens (random ids), prefilled in one chunk
  int64_t gen_len = 64;      ///< generated tokens (greedy, no stop ids)
  int reps = 3;              ///< timed repetitions after one warm-up run; 0 = the one run only
  uint64_t seed = 1234;      ///< of the random prompt
};

/// What benchmark() measured (medians over the timed repetitions).
struct BenchResult {
  double prefill_tok_s = 0;    ///< prompt tokens per second
  double decode_tok_s = 0;     ///< generated tokens per second after the first
  size_t kv_cache_bytes = 0;   ///< memory of the KV cache (prompt_len + gen_len tokens)
  size_t workspace_bytes = 0;  ///< activations and logits of the generator
};

/// Times prefill and decode of one sequence. Throws qwen::Error when prompt_len or gen_len is
/// below 1, reps is negative or prompt_len + gen_len exceeds max_position_embeddings.
BenchResult benchmark(const Model& model, const BenchConfig& config = {});

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
