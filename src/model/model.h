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
#include "qwen/config.h"

namespace qwen {

namespace io { class Checkpoint; }

// One nn.Linear: W (n_out, n_in) row-major in dtype, optional f32 bias (n_out).
struct Linear {
  const void* w = nullptr;
  DType dtype = DType::F32;
  const float* bias = nullptr;
  int64_t n_out = 0, n_in = 0;
  size_t bytes() const { return size_t(n_out) * size_t(n_in) * dtype_size(dtype); }
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // (C)   input_layernorm
  Linear q, k, v, o;                 // q (H·D, C), k/v (KV·D, C), o (C, H·D)
  const float* q_norm = nullptr;     // (D)   Qwen3 only
  const float* k_norm = nullptr;     // (D)   Qwen3 only
  const float* mlp_norm = nullptr;   // (C)   post_attention_layernorm
  Linear gate, up, down;             // gate/up (F, C), down (C, F)
};

class Model {
 public:
  // Load config.json + safetensors (single or sharded) from dir. Every expected tensor is checked
  // by name, dtype and shape; errors name the tensor, the expected and the actual shape.
  // If weight_dtype is given (F32/BF16/F16), matrices are converted to it at load time.
  static std::unique_ptr<Model> load(const std::string& dir, const DType* weight_dtype = nullptr);
  // Random weights: normal(0, initializer_range) for matrices and embeddings, zero biases, unit
  // norms (as transformers' _init_weights), from a seeded generator. Matrices in weight_dtype.
  static std::unique_ptr<Model> random(const ModelConfig& cfg, uint64_t seed,
                                       DType weight_dtype = DType::F32);
  ~Model();

  // Write config.json, generation_config.json and model.safetensors (sharded when larger than
  // max_shard_bytes) into dir, atomically per file. Matrices keep their dtype.
  void save(const std::string& dir, size_t max_shard_bytes = 5000000000ull) const;

  const ModelConfig& config() const { return cfg_; }
  int64_t num_parameters() const;
  size_t weight_bytes() const;  // bytes of all tensors as held in memory
  DType matrix_dtype() const { return layers_.empty() ? embed_dtype_ : layers_[0].q.dtype; }

  // Weights (read-only views).
  const void* embed() const { return embed_; }  // (V, C)
  DType embed_dtype() const { return embed_dtype_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
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
