// train/lora.h — LoRA adapters (Hu et al. 2021) as PEFT defines and stores them: per targeted
// linear layer W (out, in), trainable A (r, in) and B (out, r) with y = W·x + s·B·A·dropout(x),
// s = alpha/r (or alpha/sqrt(r) with rsLoRA). Saved and loaded as PEFT's adapter_config.json +
// adapter_model.safetensors (keys base_model.model.<module>.lora_{A,B}.weight), attached to a
// Model for inference without merging, or merged into a plain Hugging Face folder.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace qwen::train {

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.05;
  bool rslora = false;
  // Short names q,k,v,o,gate,up,down (or the PEFT names q_proj, ..., down_proj).
  std::vector<std::string> targets = {"q", "k", "v", "o", "gate", "up", "down"};
  float scale() const;
  // Throws qwen::Error on rank < 1, alpha <= 0, dropout outside [0, 1), unknown target.
  void validate() const;
  // PEFT module name ("q_proj", ...) for a short or PEFT name; throws on an unknown one.
  static std::string module_name(const std::string& target);
};

// One adapted module of one layer.
struct LoraModule {
  int64_t layer = 0;
  std::string module;      // q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
  int64_t n_in = 0, n_out = 0;
  std::vector<float> A;    // (r, n_in)
  std::vector<float> B;    // (n_out, r)
  LoraDelta delta;         // views for Linear::lora (set by attach)
  // PEFT tensor names, e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
  std::string key_A() const;
  std::string key_B() const;
};

class LoraAdapter {
 public:
  // Fresh adapter for a base model: A Kaiming-uniform U(-1/sqrt(in), 1/sqrt(in)), B = 0 (a no-op),
  // drawn from seed in module order.
  static std::unique_ptr<LoraAdapter> create(const ModelConfig& base, const LoraConfig& cfg,
                                             uint64_t seed);
  // PEFT folder. Checks every tensor against the base config; errors name the tensor.
  static std::unique_ptr<LoraAdapter> load(const std::string& dir, const ModelConfig& base);
  // adapter_config.json + adapter_model.safetensors, atomically per file.
  void save(const std::string& dir, const std::string& base_model_name = "") const;

  const LoraConfig& config() const { return cfg_; }
  std::vector<LoraModule>& modules() { return modules_; }
  const std::vector<LoraModule>& modules() const { return modules_; }
  int64_t n_params() const;

  // Point the model's Linear::lora at this adapter (build the Decoder afterwards; the adapter must
  // outlive the model's use). Throws qwen::Error if a module's shape does not match the model.
  void attach(Model& m);
  // W' = W + s·B·A for every adapted module, as a new model holding float weights in the base's
  // matrix dtype (F32 for a quantised base). Other tensors are copied.
  std::unique_ptr<Model> merge(const Model& base) const;

 private:
  LoraConfig cfg_;
  std::vector<LoraModule> modules_;
};

// Linear of layer `layer` named by its PEFT module name.
Linear& layer_linear(LayerWeights& L, const std::string& module);
const Linear& layer_linear(const LayerWeights& L, const std::string& module);

}  // namespace qwen::train
