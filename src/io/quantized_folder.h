// io/quantized_folder.h — Hugging Face folders holding quantised weights, read and written:
//  - NF4 exactly as transformers + bitsandbytes save a 4-bit model (formats.md §5): each
//    quantised nn.Linear `P` has `P.weight` (U8 packed codes), `P.weight.absmax`,
//    `P.weight.quant_map`, with double quantisation `P.weight.nested_absmax` and
//    `P.weight.nested_quant_map`, and `P.weight.quant_state.bitsandbytes__nf4` (JSON); config.json
//    has quantization_config {"quant_method": "bitsandbytes", "load_in_4bit": true, ...}.
//    Embeddings, norms and lm_head stay unquantised. Loaded into DType::NF4 matrices
//    (ops/nf4.h) whose double-quantised absmax is decoded once to f32 for inference
//    (ops::nf4_matrix_expand_absmax, ~4.5 bits/weight, bit-identical results) or kept as the file
//    holds it with nf4_compact (~4.13 bits/weight, a QLoRA base); a weight whose row length is
//    not a multiple of 64 is dequantised to F32.
//  - Q8_0, our own layout (docs/quantization.md): every matrix `P.weight` whose row length is a
//    multiple of 32 (the layers' projections, lm_head and the embedding) is a U8 tensor of shape
//    (rows, row_len/32·34) holding GGUF Q8_0 blocks row by row; config.json has
//    quantization_config {"quant_method": "q8_0", "block_size": 32, ...}. Loaded in place from
//    the file mapping.
#pragma once
#include <memory>
#include <string>

#include "core/dtype.h"
#include "model/model.h"

namespace qwen::io {

// True if dir/config.json has a quantization_config.
bool is_quantized_folder(const std::string& dir);
// Loads such a folder (Model::from_weights). Throws qwen::Error naming a missing or bad tensor.
// nf4_compact: keep NF4 matrices double-quantised (QLoRA) instead of decoding the absmax.
std::unique_ptr<Model> load_quantized_folder(const std::string& dir, bool nf4_compact = false);

struct QuantizeOptions {
  DType type = DType::NF4;   // NF4 or Q8_0
  bool double_quant = true;  // NF4 only: bnb_4bit_use_double_quant
};

// Writes model (float weights: F32, BF16 or F16) quantised into out_dir: config.json with its
// quantization_config, generation_config.json, model.safetensors. Unquantised tensors keep the
// model's matrix dtype (as transformers saves them in torch_dtype).
void save_quantized_folder(const Model& model, const std::string& out_dir,
                           const QuantizeOptions& opt);

}  // namespace qwen::io
