// generate/generator.h — text generation for a batch of prompts of different lengths: chunked
// prefill, then a decode loop that runs every live sequence's next token through one forward
// call, sampling each with its own seeded generator (so a sequence's tokens do not depend on
// the rest of the batch). Cache, workspace and logits are sized at construction; the decode loop
// does not allocate.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "generate/sampler.h"
#include "model/decoder.h"

namespace qwen {

struct GenerationConfig {
  int64_t max_new_tokens = 64;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation of a sequence ends after emitting one of these
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double prefill_tok_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  // Tokens produced by decode calls (each sequence's first token comes from the prefill).
  int64_t decode_tokens = 0;
  double decode_tok_s() const { return decode_seconds > 0 ? decode_tokens / decode_seconds : 0; }
};

// Called for every generated token; return false to stop that sequence.
using TokenCallback = std::function<bool(int64_t seq, int32_t token)>;

class Generator {
 public:
  // context: the longest prompt + generation of one sequence (capped by the caller to the
  // model's max_position_embeddings). prefill_chunk: most prompt tokens per forward call.
  Generator(const Model& m, int64_t max_batch, int64_t context, int64_t prefill_chunk = 512);

  // Generated ids for each prompt (stop id included when hit). Throws qwen::Error when a prompt
  // is empty or prompt + max_new_tokens does not fit the context.
  std::vector<std::vector<int32_t>> generate(const std::vector<std::vector<int32_t>>& prompts,
                                             const GenerationConfig& cfg,
                                             const TokenCallback& on_token = nullptr,
                                             GenerationStats* stats = nullptr);

  size_t kv_cache_bytes() const { return cache_.bytes(); }
  size_t workspace_bytes() const { return decoder_.workspace_bytes() + logits_.size() * 4; }

 private:
  const Model& m_;
  int64_t max_batch_, context_, prefill_chunk_;
  KvCache cache_;
  Decoder decoder_;
  Sampler sampler_;
  std::vector<float> logits_;  // (max(max_batch, prefill chunks), V)
};

}  // namespace qwen
