/// @file qwen/quantize.h
/// @brief Quantised copies of a model: NF4 (4-bit NormalFloat in blocks of 64, written exactly as
/// transformers + bitsandbytes save a 4-bit model) or Q8_0 (8-bit blocks of 32, GGUF's layout).
/// Every loader (Model::load, `qwen generate`, `qwen serve`) reads the result unchanged.
///
/// @code
///   qwen::quantize("my-model", qwen::WeightType::NF4, "my-model-nf4");   // folder to folder
///   qwen::Model q = qwen::quantize(model, qwen::WeightType::Q8_0);        // in memory
/// @endcode
#pragma once
#include <cstdint>
#include <string>

#include "qwen/model.h"

namespace qwen::api {

/// Options of quantize().
struct QuantizeOptions {
  /// NF4 only: store each block's absmax as an 8-bit code (bitsandbytes' double quantisation,
  /// bnb_4bit_use_double_quant); false stores plain f32 absmax values.
  bool double_quant = true;
  /// Folder to folder only: convert the source's float weights to this dtype first (F32, BF16 or
  /// F16), which is then the dtype of what stays unquantised (embeddings, norms, lm_head).
  /// Other (the default) keeps the source's dtype.
  WeightType unquantized_type = WeightType::Other;
};

/// What a folder-to-folder quantize() wrote.
struct QuantizeReport {
  size_t weight_file_bytes = 0;  ///< bytes of the written .safetensors files
  int64_t parameters = 0;        ///< parameters of the model
  double bits_per_parameter = 0; ///< 8 x weight_file_bytes / parameters
  double seconds = 0;            ///< wall time
};

/// Reads the float model in folder_in and writes it quantised to `type` (NF4 or Q8_0) into
/// folder_out: config.json with quantization_config, generation_config.json, model.safetensors;
/// the tokenizer and other side files are copied along. Throws qwen::Error on another type, on
/// folder_out equal to folder_in, or on a source that is quantised already.
QuantizeReport quantize(const std::string& folder_in, WeightType type,
                        const std::string& folder_out, const QuantizeOptions& options = {});

/// The same quantisation in memory: a new model whose layer matrices are NF4 or Q8_0 (a matrix
/// whose row length is not a multiple of the block size stays in float, as the folder loader
/// does). The source must hold float weights and no adapter. NF4 matrices keep bitsandbytes'
/// double-quantised absmax (~4.13 bits/weight; loading an NF4 folder for inference decodes it to
/// f32, ~4.5 bits/weight, for a faster decode).
Model quantize(const Model& model, WeightType type, const QuantizeOptions& options = {});

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
