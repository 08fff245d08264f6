/// @file qwen/gguf.h
/// @brief Export to GGUF, the single-file format of llama.cpp and Ollama: the weights (converted
/// or quantised), the hyper-parameters under the architecture's keys, and the tokenizer
/// (tokenizer.ggml.*, with the chat template) when the source has one. Model::load reads GGUF
/// files back (qwen/model.h).
///
/// @code
///   qwen::GgufExportConfig c;
///   c.type = "q8_0";
///   qwen::export_gguf("my-model", "my-model-q8_0.gguf", c);
/// @endcode
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace qwen::api {

/// Settings of export_gguf().
struct GgufExportConfig {
  /// Type of the 2-D weights: "f32", "f16", "bf16", "q8_0", "q4_0" or "q4_1" (norms and biases
  /// are f32, as llama.cpp's converter writes them; a matrix whose rows are not whole blocks
  /// falls back to f16).
  std::string type = "f16";
  std::string name;  ///< general.name; "" = the folder's (or file's) name
};

/// What export_gguf() wrote.
struct GgufExportResult {
  size_t n_tensors = 0;      ///< tensors in the file
  size_t bytes = 0;          ///< bytes of tensor data
  std::string architecture;  ///< general.architecture ("qwen2", "qwen3", "llama")
  bool tokenizer = false;    ///< the tokenizer was written too
};

/// The types export_gguf() accepts, in the order of GgufExportConfig::type's list.
std::vector<std::string> gguf_export_types();

/// Writes the model at model_path (a Hugging Face folder or a .gguf file) to out_path as GGUF.
/// Throws qwen::Error on an unknown type or a model GGUF cannot describe (e.g. a rope scaling
/// other than linear and yarn).
GgufExportResult export_gguf(const std::string& model_path, const std::string& out_path,
                             const GgufExportConfig& config = {});

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
