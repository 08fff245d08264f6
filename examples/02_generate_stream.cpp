// examples/02_generate_stream.cpp — generate with top-p sampling and stream the text.
// A small random model over a real tokenizer (its text is gibberish: see 05 for a trained one)
// generates with temperature 0.8 and top-p 0.9; the callback prints each piece of text as it
// becomes final. Checks: the streamed pieces add up to the result's text, the same seed repeats
// the same tokens, and a stop string taken from a greedy output ends generation right before it.
// Usage: 02_generate_stream TOKENIZER_DIR
#include <cstdio>
#include <string>
#include <vector>

#include "qwen/qwen.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s TOKENIZER_DIR\n", argv[0]);
    return 2;
  }
  try {
    const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(argv[1]);
    const qwen::ModelConfig cfg = qwen::ModelConfig::from_json(
        R"({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": )" +
        std::to_string(tok.vocab_size()) + R"(, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 32, "max_position_embeddings": 256})");
    const qwen::Model model = qwen::Model::create(cfg, /*seed=*/3);
    qwen::Generator gen(model, tok);

    qwen::GenerationConfig g;
    g.max_new_tokens = 24;
    g.temperature = 0.8f;
    g.top_p = 0.9f;
    g.seed = 7;
    std::string streamed;
    std::printf("stream: ");
    const qwen::GenerationResult r =
        gen.generate("In the beginning", g, [&](int32_t, std::string_view piece) {
          std::printf("%.*s", int(piece.size()), piece.data());
          std::fflush(stdout);
          streamed += piece;
          return true;
        });
    std::printf("\n%zu tokens, finish reason %s, prefill %.0f tok/s, decode %.0f tok/s\n",
                r.tokens.size(), r.finish_reason.c_str(), r.prefill_tok_s, r.decode_tok_s);
    if (streamed != r.text || r.tokens.empty()) {
      std::printf("FAIL: streamed text differs from the result\n");
      return 1;
    }
    std::printf("streamed text equals the result text\n");
    if (gen.generate("In the beginning", g).tokens != r.tokens) {
      std::printf("FAIL: the same seed gave other tokens\n");
      return 1;
    }
    std::printf("same seed -> same tokens\n");

    // Stop strings: take a piece of a greedy output and stop on it.
    qwen::GenerationConfig greedy = g;
    greedy.temperature = 0;
    greedy.stop_at_eos = false;
    const std::string full = gen.generate("And God said", greedy).text;
    if (full.size() < 12) {
      std::printf("FAIL: greedy output too short to pick a stop string\n");
      return 1;
    }
    greedy.stop = {full.substr(full.size() / 2, 4)};
    const qwen::GenerationResult s = gen.generate("And God said", greedy);
    const size_t cut = full.find(greedy.stop[0]);
    std::printf("stop string \"%s\": \"%s\" (finish %s)\n", greedy.stop[0].c_str(), s.text.c_str(),
                s.finish_reason.c_str());
    if (s.text != full.substr(0, cut) || s.finish_reason != "stop") {
      std::printf("FAIL: generation did not end right before the stop string\n");
      return 1;
    }
    std::printf("OK\n");
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
