// io/gguf_model.h — a Model read from a GGUF file (architectures llama, qwen2, qwen3), and a
// Model written as a GGUF file in the layout llama.cpp's converter produces.
//
// Reading maps the file and uses every tensor in place (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
// Q6_K), except the llama architecture's attn_q / attn_k, whose rows llama.cpp's converter
// permuted for its interleaved RoPE: they are copied back into Hugging Face's row order for our
// rotate-half RoPE (rows hold whole blocks, so this works for every format).
#pragma once
#include <memory>
#include <string>

#include "core/dtype.h"
#include "io/gguf.h"
#include "model/model.h"

namespace qwen::io {

// Maps the file and assembles the model (Model::from_weights); quantised tensors are used in
// place. Throws qwen::Error naming what is wrong (not GGUF, unsupported type or architecture).
std::unique_ptr<Model> load_gguf_model(const std::string& path);
// The same from a parsed file (shared: the model keeps it alive). Used by the fuzzer on buffers.
std::unique_ptr<Model> gguf_to_model(std::shared_ptr<const GgufFile> f);
// The ModelConfig the metadata describes (no tensors touched beyond presence and shape).
ModelConfig gguf_model_config(const GgufFile& f);

// `qwen export --format gguf`: writes the model at model_path (a Hugging Face folder or a GGUF
// file) to out_path with 2-D weights in `type` (F32, F16, BF16, Q8_0; Q4_0 / Q4_1 too), norms and
// biases in F32, a matrix whose row length is not a multiple of the block falling back to F16.
// The tokenizer comes from the folder's tokenizer.json (+ tokenizer_config.json) or the source
// GGUF's tokenizer.* keys; without one the file says tokenizer.ggml.model = "none".
struct GgufExportResult {
  size_t n_tensors = 0;
  size_t bytes = 0;
  std::string architecture;
  bool tokenizer = false;
};
GgufExportResult export_gguf(const std::string& model_path, const std::string& out_path, DType type,
                             const std::string& name = "");

}  // namespace qwen::io
