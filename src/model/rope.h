// model/rope.h — rotary-embedding frequencies for every rope_scaling type, computed as
// transformers' modeling_rope_utils does, and the cos/sin tables the rope_apply op reads.
#pragma once
#include <cstdint>
#include <vector>

#include "qwen/config.h"

namespace qwen {

struct RopeFreqs {
  std::vector<float> inv_freq;   // (D/2), fp32 like transformers
  float attention_factor = 1.0f; // multiplies cos and sin (YaRN)
};

// seq_len matters only for "dynamic" (the longest position + 1 seen in this forward call);
// pass 0 otherwise.
RopeFreqs rope_frequencies(const ModelConfig& c, int64_t seq_len = 0);

// cos/sin tables (n_pos, D/2) for positions 0..n_pos-1, multiplied by attention_factor,
// computed in fp32 exactly as transformers (freq = float(p) * inv_freq[i] in fp32).
void rope_tables(const RopeFreqs& f, int64_t n_pos, std::vector<float>* cos_tab,
                 std::vector<float>* sin_tab);

}  // namespace qwen
