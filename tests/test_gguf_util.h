// tests/test_gguf_util.h — comparing our greedy continuations with llama.cpp's (GGUF tests).
//
// Greedy decoding follows the argmax, so two correct engines part where the exact model's best
// two tokens are closer than their rounding errors. The golden files carry, along llama.cpp's
// greedy path, the float64 reference's logits of its 8 best tokens (ref_top) and the reference
// margin of llama.cpp's token over the best other token (ref_margin; negative where llama.cpp
// itself left the exact argmax). We feed llama.cpp's path through our decoder (one token per
// step, as generation does) and measure our error e against the reference on those tokens.
// If we part from llama.cpp at step s (same history so far), then for llama.cpp's token a and
// ours b: z_a - z_b <= 2e (ours ranked b first), so ref_margin[s] <= z_a - z_b <= 2e must hold;
// otherwise we chose wrongly. Before that step we agree token for token.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "generate/generator.h"
#include "model/decoder.h"
#include "model/model.h"
#include "test_util.h"

namespace qwen_test {

struct GreedyCheck {
  size_t agree = 0;        // tokens equal to llama.cpp's from the start
  double e = 0;            // our max |logit - reference| on the reference's top tokens, steps <= split
  double ref_margin = 0;   // the reference margin of llama.cpp's token at the split (if any)
  std::vector<int32_t> ours;
};

// g holds ref_top and ref_margin for each of want's steps.
inline GreedyCheck check_greedy(const qwen::Model& m, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& want, const nlohmann::json& g) {
  using namespace qwen;
  const int64_t n = int64_t(want.size()), P = int64_t(prompt.size()), V = m.config().vocab_size;
  GreedyCheck r;
  {
    Generator gen(m, 1, P + n, 512);
    GenerationConfig cfg;
    cfg.max_new_tokens = n;
    cfg.sampling.temperature = 0;
    r.ours = gen.generate({prompt}, cfg)[0];
  }
  while (r.agree < r.ours.size() && r.agree < want.size() && r.ours[r.agree] == want[r.agree]) ++r.agree;
  // llama.cpp's path through our decoder: the prompt in one prefill, then one token per step.
  KvCache cache(m.config(), 1, P + n);
  Decoder dec(m, std::max<int64_t>(P, 1));
  std::vector<float> logits(static_cast<size_t>(V));
  const size_t last = std::min<size_t>(r.agree, want.size() - 1);
  for (size_t s = 0; s <= last; ++s) {
    if (s == 0) {
      SeqChunk ch{0, P, prompt.data()};
      dec.forward(cache, &ch, 1, LogitsMode::kLast, logits.data());
    } else {
      SeqChunk ch{0, 1, &want[s - 1]};
      dec.forward(cache, &ch, 1, LogitsMode::kLast, logits.data());
    }
    const auto& top = g["ref_top"][s];
    for (size_t i = 0; i < top[0].size(); ++i)
      r.e = std::max(r.e, std::fabs(double(logits[top[0][i].get<size_t>()]) - top[1][i].get<double>()));
  }
  if (r.agree < want.size()) r.ref_margin = g["ref_margin"][r.agree];
  return r;
}

}  // namespace qwen_test
