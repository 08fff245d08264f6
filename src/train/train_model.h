// train/train_model.h — the decoder as a trainable model: f32 master weights in one flat buffer
// (gradients in a second, same layout), a forward pass that keeps the activations the backward
// needs (or only each layer's input, with activation recomputation), and a hand-written backward
// pass through every layer into the gradient buffer. The loss is softmax cross-entropy fused with
// the lm_head and chunked over the vocabulary, so (B·T, V) logits are never stored.
// Parameters carry their Hugging Face names, so saving is Model::save on a view of the buffer.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "qwen/config.h"
#include "train/lora.h"

namespace qwen::train {

// Amax gain of the residual mixing over depth (ops::hres_gain_profile): one entry per sub-layer
// site in model order (attention 0, MLP 0, attention 1, ...).
struct MhcGainProfile {
  std::vector<ops::HresGain> single;     // of each site's H_res
  std::vector<ops::HresGain> composite;  // of H_{L-1}·…·H_l, from site l to the top
};

struct TrainModelOptions {
  bool recompute = false;  // keep only each layer's input; recompute the layer in backward
};

// One parameter tensor: Hugging Face name and shape, and where it lives in the flat buffers.
struct Param {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // floats from the start of param_data() / grad_data()
  int64_t numel = 0;
  bool decay = true;   // weight decay applies (matrices); false for norms, biases, embeddings
};

class TrainModel {
 public:
  // Seeded init as transformers' _init_weights: normal(0, initializer_range) for matrices and the
  // embedding, zero biases, unit norms. Same seed and config give the same weights.
  TrainModel(const ModelConfig& cfg, uint64_t seed, TrainModelOptions opt = {});
  // Start from an existing model's weights (float dtypes, converted to f32).
  TrainModel(const Model& m, TrainModelOptions opt = {});
  // LoRA / QLoRA: the base model's weights stay frozen in their dtype (F32, BF16, F16 or a
  // quantised format such as NF4) and only the adapter's A and B matrices are parameters
  // (named with PEFT's keys). base and adapter must outlive this object; save() writes the
  // adapter (PEFT folder), as_model() is the base with the adapter attached.
  TrainModel(const Model& base, LoraAdapter& adapter, TrainModelOptions opt = {});
  ~TrainModel();

  const ModelConfig& config() const { return cfg_; }
  const TrainModelOptions& options() const { return opt_; }
  void set_recompute(bool on) { opt_.recompute = on; }
  const std::vector<Param>& params() const { return params_; }
  const Param& param(const std::string& name) const;  // throws qwen::Error if absent
  int64_t n_params() const { return int64_t(w_.size()); }
  float* param_data() { return w_.data(); }
  const float* param_data() const { return w_.data(); }
  float* grad_data() { return g_.data(); }
  const float* grad_data() const { return g_.data(); }
  void zero_grad();
  bool is_lora() const { return adapter_ != nullptr; }
  // Copy the current adapter parameters back into the LoraAdapter (LoRA mode).
  void sync_adapter() const;
  // LoRA dropout masks are a pure function of this seed, the module and the element, so a
  // recomputed layer sees the same mask; the trainer sets it per micro-batch (default: a
  // counter advanced by every forward_backward call).
  void set_dropout_seed(uint64_t s) { dropout_seed_ = s; dropout_seed_set_ = true; }

  // tokens, targets: (B, T); a target < 0 is ignored. Runs forward and backward and ADDS
  // grad_scale · d(sum of per-token losses)/dθ into the gradient buffer. Returns the sum of the
  // losses of counted targets and writes their number to *n_counted (may be null).
  // Token ids out of range throw qwen::Error.
  double forward_backward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T,
                          float grad_scale, int64_t* n_counted = nullptr);
  // Loss only (evaluation); no activations kept, gradients untouched.
  double forward_loss(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T,
                      int64_t* n_counted = nullptr);

  // mHC / HC (config use_mhc): H_res of every site for one sequence tokens (T), (2·layers, T,
  // n, n) with sites in model order, from a forward pass (gradients untouched); and the Amax gain
  // profile of that sequence (per token, then averaged; or of the token-averaged matrices).
  // Throws qwen::Error on a plain model.
  std::vector<float> mhc_h_res(const int32_t* tokens, int64_t T);
  MhcGainProfile mhc_amax_gains(const int32_t* tokens, int64_t T, bool average_matrices = false);

  // A read-only Model over the current weights (shares memory; valid while this object lives).
  std::unique_ptr<Model> as_model() const;
  // Hugging Face folder: config.json, generation_config.json, model.safetensors (F32); in LoRA
  // mode the PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
  void save(const std::string& dir) const;

  // Bytes held for activations at the largest (B, T) seen so far.
  size_t activation_bytes() const;

  struct Impl;  // activations, views and scratch (train_model.cpp)

 private:
  void build_params();
  double forward_eval(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T,
                      int64_t* n_counted, float* h_res_out);
  void init_lora_views();
  ModelConfig cfg_;
  TrainModelOptions opt_;
  const Model* base_ = nullptr;       // LoRA mode: the frozen base
  LoraAdapter* adapter_ = nullptr;    // LoRA mode: the adapter being trained
  uint64_t dropout_seed_ = 0;
  bool dropout_seed_set_ = false;
  std::vector<Param> params_;
  std::vector<float> w_, g_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qwen::train
