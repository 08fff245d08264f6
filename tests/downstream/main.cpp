// Uses only the installed public headers (qwen/qwen.h): parses a config, builds a model with
// seeded weights, runs a forward pass, a short greedy generation and a perplexity evaluation,
// loads a tokenizer and round-trips text.
// Usage: downstream TOKENIZER_DIR  (prints the version and OK, exits non-zero on a mismatch)
#include <cstdio>
#include <string>
#include <vector>

#include "qwen/qwen.h"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  try {
    qwen::ModelConfig c = qwen::ModelConfig::from_json(
        R"({"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":64,
            "hidden_size":32,"intermediate_size":48,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64})");
    const qwen::Model model = qwen::Model::create(c, /*seed=*/1);
    const std::vector<float> logits = model.forward({1, 2, 3});
    if (logits.size() != size_t(3 * c.vocab_size)) return 1;
    qwen::Generator gen(model);
    qwen::GenerationConfig g;
    g.max_new_tokens = 4;
    g.temperature = 0;
    if (gen.generate(std::vector<int32_t>{1, 2, 3}, g).tokens.size() != 4) return 1;
    const qwen::PerplexityResult p = qwen::evaluate_perplexity(model, {1, 2, 3, 4});
    if (p.tokens != 3 || !(p.perplexity > 1)) return 1;

    qwen::Tokenizer tok = qwen::Tokenizer::from_dir(argv[1]);
    const std::string text = "Hello from a downstream project!";
    if (tok.decode(tok.encode(text, false)) != text) return 1;
    if (std::string(qwen::version()) != QWEN_VERSION) return 1;
    std::printf("qwen %s: %lld parameters, %zu tokens, OK\n", qwen::version(),
                (long long)model.num_parameters(), tok.encode(text, false).size());
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
