// generate/sampler.h — turns a row of logits into the next token: repetition / presence /
// frequency penalties, temperature, top-k, top-p (nucleus), min-p, then a draw from the
// per-sequence seeded generator. Temperature 0 is greedy. probabilities() exposes the exact
// distribution the draw uses, for tests. No filter sorts the vocabulary: top-k selects
// (nth_element) and sorts only its k, top-p sorts a growing most-likely prefix, and with no
// filter the draw walks the probabilities in id order; buffers are sized once, so a call does
// not allocate.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace qwen {

struct SamplingParams {
  float temperature = 1.0f;        // 0 = greedy
  int top_k = 0;                   // 0 = off
  float top_p = 1.0f;              // 1 = off
  float min_p = 0.0f;              // 0 = off
  float repetition_penalty = 1.0f; // 1 = off (CTRL-style: divide positive, multiply negative)
  float presence_penalty = 0.0f;   // OpenAI-style, on generated tokens
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(int64_t vocab_size);
  // logits (V) are modified in place. history: the ids whose repetition is penalised (prompt and
  // generated, as transformers does); generated: the ids counted by presence/frequency penalty.
  int32_t sample(float* logits, const SamplingParams& p, Rng& rng, const int32_t* history,
                 int64_t n_history, const int32_t* generated = nullptr, int64_t n_generated = 0);
  // The distribution sample() draws from (after all filters), over the full vocabulary.
  void probabilities(float* logits, const SamplingParams& p, const int32_t* history,
                     int64_t n_history, std::vector<float>* probs,
                     const int32_t* generated = nullptr, int64_t n_generated = 0);

 private:
  void apply_penalties(float* logits, const SamplingParams& p, const int32_t* history,
                       int64_t n_history, const int32_t* generated, int64_t n_generated);
  // Without top-k, top-p and min-p (dense_): leaves the unnormalised probabilities of every id
  // in probs_ (id order) and their sum in total_. Otherwise leaves the kept candidates (prob, id)
  // in cand_, probabilities renormalised.
  void filter(const float* logits, const SamplingParams& p);

  int64_t V_;
  bool dense_ = false;
  std::vector<float> probs_;
  double total_ = 0;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<uint32_t> seen_;  // per-id counter stamp for penalties
  std::vector<int32_t> counts_;
  uint32_t stamp_ = 0;
};

}  // namespace qwen
