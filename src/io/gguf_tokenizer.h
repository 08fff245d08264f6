// io/gguf_tokenizer.h — the tokenizer embedded in a GGUF file (tokenizer.ggml.*), rebuilt as a
// qwen::Tokenizer that gives llama.cpp's token ids: a tokenizer.json and tokenizer_config.json
// are synthesised from the metadata (byte-level BPE vocabulary and merges, control tokens as
// special added tokens, the pre-tokenizer regexes that tokenizer.ggml.pre names in llama.cpp,
// bos/eos/pad, add_bos_token, the chat template) and loaded with Tokenizer::from_json.
// Also the reverse: the tokenizer.ggml.* keys of a Hugging Face tokenizer, for the writer.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "qwen/tokenizer.h"

namespace qwen::io {

// The synthesised files (exposed for tests and `qwen export`).
struct GgufTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  std::string chat_template;  // tokenizer.chat_template ("" when absent)
};
// Throws qwen::Error naming the key when the tokenizer type (tokenizer.ggml.model) or the
// pre-tokenizer (tokenizer.ggml.pre) is not supported, or the arrays are inconsistent.
GgufTokenizerFiles gguf_tokenizer_files(const GgufFile& f);
Tokenizer gguf_tokenizer(const GgufFile& f);

// The pre-tokenizer names we support (llama.cpp's tokenizer.ggml.pre values).
std::vector<std::string> gguf_supported_pre();

// The tokenizer of a model path: from the GGUF file for "*.gguf" (nullptr when its
// tokenizer.ggml.model is absent or "none"), from DIR/tokenizer.json for a folder that has one,
// else nullptr.
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& model_path);
// The chat template of a model path (GGUF metadata or tokenizer_config.json; "" if none).
std::string load_chat_template(const std::string& model_path);

}  // namespace qwen::io
