/// @file qwen/lora.h
/// @brief LoRA and QLoRA settings (Hu et al. 2021; Dettmers et al. 2023). Per adapted linear
/// layer W (out, in), trainable A (rank, in) and B (out, rank) with
/// y = W·x + s·B·A·dropout(x), s = alpha / rank (alpha / sqrt(rank) with rsLoRA); the base stays
/// frozen, in 4-bit NF4 for QLoRA. Adapters are saved as PEFT folders. Train one with
/// qwen::Trainer's LoRA constructor (qwen/trainer.h); use one with Model::load_adapter or merge
/// it with Model::merged (qwen/model.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qwen::api {

/// LoRA / QLoRA settings.
struct LoraConfig {
  int64_t rank = 8;       ///< r, the inner dimension of A and B (>= 1)
  double alpha = 16;      ///< scale numerator: s = alpha / rank (or alpha / sqrt(rank))
  double dropout = 0.05;  ///< dropout on the adapter's input, in [0, 1)
  bool rslora = false;    ///< rank-stabilised scale alpha / sqrt(rank)
  /// Adapted projections: short names q, k, v, o, gate, up, down, or PEFT's q_proj ... down_proj.
  std::vector<std::string> targets = {"q", "k", "v", "o", "gate", "up", "down"};
  /// QLoRA: quantise the frozen base to NF4 (blocks of 64, as bitsandbytes) before training.
  /// A base that is NF4 already stays as it is.
  bool nf4_base = false;
  uint64_t seed = 0;      ///< initial A (Kaiming-uniform) and dropout masks; B starts at zero
};

/// Splits a comma-separated target list ("q,k,v" or "q_proj, v_proj") into LoraConfig::targets;
/// blanks are ignored. The names are checked where the config is used (qwen::Error there).
std::vector<std::string> parse_lora_targets(const std::string& s);

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
