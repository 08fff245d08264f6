// model/model.h — the Qwen-style decoder's weights: loaded from a Hugging Face folder
// (safetensors, memory-mapped; F32 tensors are used in place, BF16/F16 stay in their dtype),
// created with seeded random init, and saved back as a folder transformers loads unchanged.
// Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm per head, explicit head_dim) and Llama share one layout.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ops/mhc.h"
#include "qwen/config.h"

namespace qwen {

namespace io { class Checkpoint; }

// A LoRA adapter on one linear layer: y += scale · (x·Aᵀ)·Bᵀ, A (r, n_in), B (n_out, r), f32.
struct LoraDelta {
  const float* A = nullptr;
  const float* B = nullptr;
  int64_t r = 0;
  float scale = 0;
};

// One nn.Linear: W (n_out, n_in) row-major in dtype (a float type or a block-quantised format,
// core/dtype.h), optional f32 bias (n_out), optional unmerged LoRA adapter.
struct Linear {
  const void* w = nullptr;
  DType dtype = DType::F32;
  const float* bias = nullptr;
  int64_t n_out = 0, n_in = 0;
  const LoraDelta* lora = nullptr;
  size_t bytes() const { return size_t(n_out) * dtype_row_bytes(dtype, n_in); }
};

// One mHC / HC site (config use_mhc): f32 phi (phi_rows, phi_cols), bias (K), alpha (3) under
// model.layers.N.{attn_hc,mlp_hc}.{phi,bias,alpha}; layout in ops/mhc.h. Null when not mHC.
struct MhcSiteWeights {
  const float* phi = nullptr;
  const float* bias = nullptr;
  const float* alpha = nullptr;
};

// The site sizes a config implies (n, C, iters, rms_norm_eps, mode).
ops::MhcDims mhc_dims(const ModelConfig& c);

struct LayerWeights {
  const float* attn_norm = nullptr;  // (C)   input_layernorm
  Linear q, k, v, o;                 // q (H·D, C), k/v (KV·D, C), o (C, H·D)
  const float* q_norm = nullptr;     // (D)   Qwen3 only
  const float* k_norm = nullptr;     // (D)   Qwen3 only
  const float* mlp_norm = nullptr;   // (C)   post_attention_layernorm
  Linear gate, up, down;             // gate/up (F, C), down (C, F)
  MhcSiteWeights attn_hc, mlp_hc;    // use_mhc only: the sites around attention and the MLP
};

class Model {
 public:
  // Load config.json + safetensors (single or sharded) from dir. Every expected tensor is checked
  // by name, dtype and shape; errors name the tensor, the expected and the actual shape. mHC site
  // tensors in a checkpoint whose config lacks use_mhc (or the reverse) are an error naming one.
  // If weight_dtype is given (F32/BF16/F16), matrices are converted to it at load time.
  // A path ending in .gguf is read as a GGUF file (io/gguf_model.h); a folder whose config.json
  // has a quantization_config is read as a quantised folder (io/quantized_folder.h); its NF4
  // matrices get their absmax decoded to f32 for a fast decode unless nf4_compact (a QLoRA base:
  // keep bitsandbytes' double-quantised ~4.13 bits/weight).
  static std::unique_ptr<Model> load(const std::string& dir, const DType* weight_dtype = nullptr,
                                     bool nf4_compact = false);
  // Assemble a model from weights already in memory (GGUF reader, quantised folders, training).
  // `keep` owns whatever the pointers point into (a file mapping, buffers) and lives as long as
  // the model. Shapes must agree with cfg; lm_head may alias embed (tied).
  static std::unique_ptr<Model> from_weights(const ModelConfig& cfg, std::shared_ptr<void> keep,
                                             const void* embed, DType embed_dtype,
                                             const float* final_norm, const Linear& lm_head,
                                             std::vector<LayerWeights> layers);
  // Random weights: normal(0, initializer_range) for matrices and embeddings, zero biases, unit
  // norms (as transformers' _init_weights), from a seeded generator. Matrices in weight_dtype.
  // With use_mhc the sites get ops::mhc_init_site (spec §8: equal to the plain model at step 0)
  // from a separate stream, so the other weights are the plain model's for the same seed.
  static std::unique_ptr<Model> random(const ModelConfig& cfg, uint64_t seed,
                                       DType weight_dtype = DType::F32);
  ~Model();

  // Write config.json, generation_config.json and model.safetensors (sharded when larger than
  // max_shard_bytes) into dir, atomically per file. Matrices keep their dtype (float dtypes
  // only: a quantised model is written by io/quantized_folder.h; this throws qwen::Error).
  void save(const std::string& dir, size_t max_shard_bytes = 5000000000ull) const;

  const ModelConfig& config() const { return cfg_; }
  int64_t num_parameters() const;
  size_t weight_bytes() const;  // bytes of all tensors as held in memory
  DType matrix_dtype() const { return layers_.empty() ? embed_dtype_ : layers_[0].q.dtype; }

  // Weights (read-only views).
  const void* embed() const { return embed_; }  // (V, C)
  DType embed_dtype() const { return embed_dtype_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // For attaching adapters (Linear::lora); the weights themselves stay read-only.
  std::vector<LayerWeights>& mutable_layers() { return layers_; }
  const float* final_norm() const { return final_norm_; }  // (C)
  const Linear& lm_head() const { return lm_head_; }       // (V, C); the embedding when tied

  // Every tensor under its Hugging Face name with HF shape (for save and for tests).
  struct NamedTensor { std::string name; DType dtype; std::vector<int64_t> shape; const void* data; };
  std::vector<NamedTensor> named_tensors() const;

 private:
  Model() = default;
  const void* take(const std::string& name, std::vector<int64_t> shape, bool matrix,
                   DType* dtype_out);
  void* alloc(size_t bytes);

  ModelConfig cfg_;
  std::unique_ptr<io::Checkpoint> ckpt_;               // keeps the mapping alive
  std::shared_ptr<void> keep_;                         // from_weights: the owner of the data
  struct FreeDeleter { void operator()(void* p) const; };
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> owned_;  // converted / random tensors
  const DType* convert_to_ = nullptr;
  const void* embed_ = nullptr;
  DType embed_dtype_ = DType::F32;
  const float* final_norm_ = nullptr;
  Linear lm_head_;
  std::vector<LayerWeights> layers_;
};

}  // namespace qwen
