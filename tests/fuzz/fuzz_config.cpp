// tests/fuzz/fuzz_config.cpp — libFuzzer target for ModelConfig::from_json. Only qwen::Error may
// escape; an accepted config must survive to_json -> from_json with identical RoPE frequencies,
// and rope_frequencies must run on it.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "model/rope.h"
#include "qwen/config.h"
#include "qwen/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  qwen::ModelConfig c;
  try {
    c = qwen::ModelConfig::from_json(text, "fuzz/config.json");
  } catch (const qwen::Error&) {
    return 0;
  }
  qwen::RopeFreqs f0, f1;
  qwen::ModelConfig back;
  try {
    f0 = qwen::rope_frequencies(c, 2 * c.max_position_embeddings);
    back = qwen::ModelConfig::from_json(c.to_json(), "fuzz/round-trip");
    f1 = qwen::rope_frequencies(back, 2 * c.max_position_embeddings);
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "accepted config fails after round trip: %s\n", e.what());
    std::abort();
  }
  if (f0.inv_freq.size() != f1.inv_freq.size() ||
      std::memcmp(f0.inv_freq.data(), f1.inv_freq.data(), f0.inv_freq.size() * sizeof(float)) != 0 ||
      std::memcmp(&f0.attention_factor, &f1.attention_factor, sizeof(float)) != 0) {
    std::fprintf(stderr, "rope frequencies change across to_json/from_json\n");
    std::abort();
  }
  return 0;
}
