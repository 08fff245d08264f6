/// @file qwen/model.h
/// @brief A decoder-only language model (Qwen2, Qwen3, Llama layouts; optional mHC residual
/// streams): made from a ModelConfig with seeded random weights, or loaded from a Hugging Face
/// folder (safetensors), a quantised folder (NF4 as bitsandbytes saves it, Q8_0) or a GGUF file;
/// run on token ids to get logits; saved back as a folder that transformers loads unchanged.
///
/// @code
///   qwen::ModelConfig c = qwen::ModelConfig::from_file("config.json");
///   qwen::Model m = qwen::Model::create(c, /*seed=*/1);
///   std::vector<float> logits = m.forward({1, 2, 3});   // (3, vocab_size)
///   m.save("my-model");
/// @endcode
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qwen/config.h"
#include "qwen/error.h"
#include "qwen/lora.h"

namespace qwen::api {

/// How the weight matrices are held in memory. Embeddings, norms and biases stay in a float type.
enum class WeightType {
  F32,   ///< 32-bit float (training master weights; exact reference)
  BF16,  ///< bfloat16, widened exactly to f32 in the kernels
  F16,   ///< IEEE half, widened exactly to f32 in the kernels
  NF4,   ///< 4-bit NormalFloat in blocks of 64 (QLoRA / bitsandbytes): 4.5 bits per weight as a
         ///< loaded NF4 folder holds it (f32 absmax), 4.13 with the double-quantised absmax of
         ///< a QLoRA base or an in-memory quantize()
  Q8_0,  ///< 8-bit blocks of 32 with an f16 scale (GGUF Q8_0), 8.5 bits per weight
  Other  ///< another block format, read from a GGUF file (Q4_0, Q4_1, Q4_K, Q6_K)
};

/// "f32", "bf16", "f16", "nf4", "q8_0" or "other".
const char* weight_type_name(WeightType t);

/// Parses "f32", "bf16", "f16", "nf4" or "q8_0" (case-insensitive); throws qwen::Error naming
/// `what` (e.g. "--dtype") for anything else.
WeightType parse_weight_type(const std::string& s, const std::string& what = "weight type");

/// An attached LoRA adapter, as its adapter_config.json describes it.
struct AdapterInfo {
  /// rank, alpha, dropout, rslora and targets as adapter_config.json gives them; nf4_base and
  /// seed are not stored in an adapter and keep their defaults.
  LoraConfig config;
  double scale = 0;         ///< s = alpha / rank (alpha / sqrt(rank) with rsLoRA), as applied
  int64_t n_matrices = 0;   ///< adapted weight matrices (layers x targets)
  int64_t n_parameters = 0; ///< elements of all A and B
};

/// A model's weights. Move-only; generators, trainers and engines built on a Model keep its
/// weights alive on their own, so the Model object itself may go out of scope first.
class Model {
 public:
  /// Random weights as transformers' _init_weights: normal(0, initializer_range) for matrices and
  /// the embedding, zero biases, unit norms; the same seed and config give the same weights.
  /// Matrices are held in `type` (F32, BF16 or F16). Throws qwen::Error on an invalid config.
  static Model create(const ModelConfig& config, uint64_t seed, WeightType type = WeightType::F32);

  /// Loads a Hugging Face folder (config.json + model.safetensors, single or sharded), a quantised
  /// folder (config.json with quantization_config) or a .gguf file, keeping the file's dtypes.
  /// Every tensor is checked by name, dtype and shape; errors name the file and the tensor.
  static Model load(const std::string& path);
  /// Same, converting float matrices to `convert_to` (F32, BF16 or F16) at load time.
  static Model load(const std::string& path, WeightType convert_to);

  /// Writes config.json, generation_config.json and model.safetensors (sharded above
  /// max_shard_bytes) into dir. Matrices keep their float dtype. A quantised model is written with
  /// qwen::quantize instead; with an unmerged LoRA adapter, call merged() first. Throws
  /// qwen::Error in both cases.
  void save(const std::string& dir, size_t max_shard_bytes = 5000000000ull) const;

  /// The model's configuration (as in config.json).
  const ModelConfig& config() const;
  /// Number of parameters (every tensor's elements, quantised ones counted as their values;
  /// an attached adapter's parameters are not included).
  int64_t num_parameters() const;
  /// Bytes of all weight tensors as held in memory.
  size_t weight_bytes() const;
  /// The dtype of the layers' matrices.
  WeightType weight_type() const;
  /// The storage type of the layers' matrices as the weight files name it: "F32", "BF16",
  /// "F16", "NF4", "Q8_0", or a GGUF block format that WeightType::Other stands for ("Q4_0",
  /// "Q4_1", "Q4_K", "Q6_K").
  std::string matrix_dtype_name() const;

  /// Runs the whole sequence ids (T) from position 0 without a cache and returns the logits
  /// (T, vocab_size), row-major: row t scores the token after ids[0..t]. Throws qwen::Error on an
  /// empty input, an id outside the vocabulary or T > max_position_embeddings.
  std::vector<float> forward(const std::vector<int32_t>& ids) const;

  /// Attaches a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)
  /// unmerged: forward, Generator and Engine then run base + adapter. Errors name the tensor
  /// whose shape does not fit. Call it before building a Generator or Engine on this model
  /// (throws qwen::Error otherwise) and at most once.
  void load_adapter(const std::string& adapter_dir);
  /// True if an adapter is attached.
  bool has_adapter() const;
  /// Parameters of the attached adapter (0 without one).
  int64_t adapter_parameters() const;
  /// Rank, scale and size of the attached adapter. Throws qwen::Error when none is attached.
  AdapterInfo adapter_info() const;
  /// A new model with the adapter merged into the weights (W' = W + s·B·A), in the base's float
  /// dtype (F32 for a quantised base); a plain Hugging Face model that save() writes.
  /// Throws qwen::Error when no adapter is attached.
  Model merged() const;

  Model(Model&&) noexcept;             ///< Moves the handle.
  Model& operator=(Model&&) noexcept;  ///< Moves the handle.
  ~Model();                            ///< Releases this handle's share of the weights.

  /// Library-internal state (defined in src/api); not part of the stable API.
  struct Impl;
  /// Library-internal access to the state; not part of the stable API.
  const std::shared_ptr<Impl>& impl() const { return impl_; }
  /// Library-internal: wraps state built by the library.
  explicit Model(std::shared_ptr<Impl> impl);

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
