// examples/05_load_adapter_generate.cpp — load a Hugging Face model folder and a PEFT LoRA
// adapter, and generate. With the adapter of 04_qlora, the model completes the sentence it was
// taught; the base model alone does not. Checks both.
// Usage: 05_load_adapter_generate BASE_MODEL_DIR ADAPTER_DIR TOKENIZER_DIR
#include <cstdio>
#include <string>

#include "qwen/qwen.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s BASE_MODEL_DIR ADAPTER_DIR TOKENIZER_DIR\n", argv[0]);
    return 2;
  }
  try {
    const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(argv[3]);
    qwen::GenerationConfig g;
    g.max_new_tokens = 12;
    g.temperature = 0;  // greedy
    const std::string prompt = "Hello world, the answer is";

    const qwen::Model base = qwen::Model::load(argv[1]);
    const std::string plain = qwen::Generator(base, tok).generate(prompt, g).text;
    std::printf("base:         %s|%s\n", prompt.c_str(), plain.c_str());

    qwen::Model tuned = qwen::Model::load(argv[1]);
    tuned.load_adapter(argv[2]);
    std::printf("adapter: %lld parameters on a %lld-parameter base\n",
                (long long)tuned.adapter_parameters(), (long long)tuned.num_parameters());
    const std::string out = qwen::Generator(tuned, tok).generate(prompt, g).text;
    std::printf("base+adapter: %s|%s\n", prompt.c_str(), out.c_str());
    const bool taught = out.rfind(" forty two.", 0) == 0;
    std::printf("completes the taught sentence: %s\n", taught ? "yes" : "no");
    if (!taught || plain.rfind(" forty two.", 0) == 0) return 1;
    std::printf("OK\n");
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
