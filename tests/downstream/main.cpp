// Uses only the installed public headers: parses a config, loads a tokenizer, round-trips text.
// Usage: downstream TOKENIZER_DIR  (prints the version and OK, exits non-zero on a mismatch)
#include <cstdio>
#include <string>

#include "qwen/config.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  try {
    qwen::ModelConfig c = qwen::ModelConfig::from_json(
        R"({"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":64,
            "hidden_size":32,"intermediate_size":48,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":2})");
    qwen::Tokenizer tok = qwen::Tokenizer::from_dir(argv[1]);
    const std::string text = "Hello from a downstream project!";
    if (tok.decode(tok.encode(text, false)) != text) return 1;
    std::printf("qwen %s: hidden %lld, %zu tokens, OK\n", QWEN_VERSION, (long long)c.hidden_size,
                tok.encode(text, false).size());
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
