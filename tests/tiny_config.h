// tests/tiny_config.h — the tiny Qwen2-shaped config the whole-model gradient tests start from
// (vocab 37, hidden 16, ffn 24, 2 layers, 4 heads / 2 KV heads of dim 4, init std 0.3 so that
// finite differences see non-trivial gradients). Tests adjust it per variant.
#pragma once
#include "qwen/config.h"

namespace qwen_test {

inline qwen::ModelConfig tiny_config() {
  qwen::ModelConfig c;
  c.vocab_size = 37;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-6;
  c.initializer_range = 0.3;
  return c;
}

}  // namespace qwen_test
