// examples/01_forward.cpp — build a model from a config and run a forward pass.
// A tiny Qwen2-style config with grouped-query attention (4 query heads share 2 KV heads) is
// parsed from config.json text, the model gets seeded random weights, and forward() returns
// the logits (T, V). The program checks three things and exits non-zero if one fails: the
// parameter count matches the formula for this layout, the same seed gives the same logits,
// and the model is causal (the logits of a prefix do not depend on later tokens).
// Usage: 01_forward
#include <cmath>
#include <cstdio>
#include <vector>

#include "qwen/qwen.h"

int main() {
  try {
    const qwen::ModelConfig cfg = qwen::ModelConfig::from_json(R"({
      "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "max_position_embeddings": 128, "rope_theta": 10000.0, "tie_word_embeddings": false})");
    const qwen::Model model = qwen::Model::create(cfg, /*seed=*/1);

    // Qwen2: q/k/v projections with bias, o without; untied lm_head.
    const int64_t V = cfg.vocab_size, C = cfg.hidden_size, F = cfg.intermediate_size;
    const int64_t qd = cfg.q_dim(), kvd = cfg.kv_dim();
    const int64_t per_layer = 2 * C + (qd * C + qd) + 2 * (kvd * C + kvd) + C * qd + 3 * C * F;
    const int64_t expected = 2 * V * C + C + cfg.num_hidden_layers * per_layer;
    std::printf("model: %lld layers, %lld query heads, %lld KV heads, head_dim %lld\n",
                (long long)cfg.num_hidden_layers, (long long)cfg.num_attention_heads,
                (long long)cfg.num_key_value_heads, (long long)cfg.head_dim);
    std::printf("parameters: %lld (formula %lld)\n", (long long)model.num_parameters(),
                (long long)expected);
    if (model.num_parameters() != expected) return 1;

    const std::vector<int32_t> ids = {3, 14, 15, 92, 65, 35, 89};
    const std::vector<float> logits = model.forward(ids);  // (T, V)
    const int64_t T = int64_t(ids.size());
    std::printf("logits: (%lld, %lld)\n", (long long)T, (long long)(logits.size() / size_t(T)));
    if (int64_t(logits.size()) != T * V) return 1;
    for (float x : logits)
      if (!std::isfinite(x)) return 1;
    int best = 0;
    for (int v = 1; v < V; ++v)
      if (logits[size_t((T - 1) * V + v)] > logits[size_t((T - 1) * V + best)]) best = v;
    std::printf("most likely next token after the last position: %d\n", best);

    // Same seed, same weights, same logits.
    const std::vector<float> again = qwen::Model::create(cfg, 1).forward(ids);
    if (again != logits) {
      std::printf("FAIL: the same seed gave different logits\n");
      return 1;
    }
    std::printf("same seed -> identical logits\n");

    // Causal: the first 4 rows do not depend on tokens 5..7.
    const std::vector<int32_t> prefix(ids.begin(), ids.begin() + 4);
    const std::vector<float> lp = model.forward(prefix);
    double max_diff = 0;
    for (size_t i = 0; i < lp.size(); ++i) max_diff = std::fmax(max_diff, std::fabs(lp[i] - logits[i]));
    std::printf("causal: prefix logits differ by at most %.2g\n", max_diff);
    if (max_diff > 1e-4) return 1;
    std::printf("OK\n");
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
