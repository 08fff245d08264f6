/// @file qwen/trainer.h
/// @brief Training in your own code: pretraining (or continued training) of every weight, and
/// LoRA / QLoRA fine-tuning where only the adapters are trainable. Next-token cross-entropy,
/// AdamW with decoupled weight decay, gradient clipping, warm-up + cosine or constant schedule,
/// gradient accumulation and optional activation recomputation.
///
/// @code
///   qwen::Tokenizer tok = qwen::Tokenizer::from_dir("tokenizer");
///   qwen::TrainConfig tc;  tc.steps = 200; tc.batch = 8; tc.seq = 128; tc.lr = 1e-3;
///   qwen::Trainer trainer(config, /*seed=*/1, tc);
///   trainer.fit_text_file("corpus.txt", tok, [](const qwen::StepResult& s) {
///     std::printf("step %lld loss %.3f\n", (long long)s.step, s.loss);
///     return true;
///   });
///   trainer.save("out");   // a Hugging Face folder
/// @endcode
/// For runs on prepared token shards with checkpoints and resumption (what `qwen train` does),
/// see qwen/train_job.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qwen/config.h"
#include "qwen/lora.h"
#include "qwen/model.h"
#include "qwen/tokenizer.h"

namespace qwen::api {

/// Optimiser, schedule and batch settings (defaults as `qwen train`).
struct TrainConfig {
  int64_t steps = 1000;           ///< optimiser steps (the schedule's length; fit() runs them)
  int64_t batch = 8;              ///< sequences per micro-batch (B)
  int64_t seq = 256;              ///< tokens per sequence (T)
  int64_t grad_accum = 1;         ///< micro-batches per optimiser step
  double lr = 3e-4;               ///< peak learning rate
  int64_t warmup = 0;             ///< linear warm-up steps (the first update has lr 0 if > 0)
  std::string lr_schedule = "cosine";  ///< "cosine" or "constant"
  double min_lr_ratio = 0.0;      ///< cosine floor as a fraction of lr
  double weight_decay = 0.01;     ///< AdamW decoupled weight decay (matrices only)
  double beta1 = 0.9;             ///< AdamW beta1
  double beta2 = 0.999;           ///< AdamW beta2
  double adam_eps = 1e-8;         ///< AdamW epsilon
  double clip_grad_norm = 1.0;    ///< global gradient-norm clip; 0 = off
  uint64_t seed = 0;              ///< the order of the training windows in fit()
  bool recompute = false;         ///< activation recomputation: less memory, about 1.3x the time
};

/// One optimiser step's figures.
struct StepResult {
  int64_t step = 0;       ///< 1-based step number
  double loss = 0;        ///< mean cross-entropy over the step's counted targets
  double lr = 0;          ///< learning rate used
  double grad_norm = 0;   ///< global gradient norm before clipping
  int64_t tokens = 0;     ///< counted targets
  double seconds = 0;     ///< wall time of the step
};

/// Where the memory of training goes (bytes).
struct TrainMemory {
  size_t frozen_weights = 0;  ///< the frozen base (LoRA / QLoRA), in its dtype
  size_t trainable = 0;       ///< trainable weights, gradients and AdamW moments (16 B / param)
  size_t activations = 0;     ///< activations kept for the backward at the largest batch so far
};

/// Called after every step of fit(); return false to stop early.
using StepCallback = std::function<bool(const StepResult&)>;

/// Trains a model: full training (every weight an f32 master copy) or LoRA (only the adapters).
/// Not thread-safe; the kernels use qwen::num_threads() threads.
class Trainer {
 public:
  /// A fresh model with seeded random weights (as Model::create).
  Trainer(const ModelConfig& config, uint64_t seed, const TrainConfig& train = {});
  /// Continued training of every weight of `init` (float weights, copied to f32).
  explicit Trainer(const Model& init, const TrainConfig& train = {});
  /// LoRA / QLoRA: `base` stays frozen (quantised to NF4 first with lora.nf4_base), only the
  /// adapters' A and B are trained. save() then writes a PEFT adapter folder.
  Trainer(const Model& base, const LoraConfig& lora, const TrainConfig& train = {});
  ~Trainer();                              ///< Frees weights, gradients and optimiser state.
  Trainer(Trainer&&) noexcept;             ///< Moves the trainer.
  Trainer& operator=(Trainer&&) noexcept;  ///< Moves the trainer.

  /// One optimiser step on one batch: tokens and targets are (B, T) row-major, a target < 0 is
  /// not counted (e.g. prompt tokens in instruction tuning). Throws qwen::Error on mismatched
  /// sizes, ids outside the vocabulary, or a non-finite loss (the weights are then unchanged).
  StepResult step(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                  int64_t batch, int64_t seq);

  /// Runs TrainConfig::steps steps (counting from the steps already done) on windows of seq + 1
  /// consecutive ids drawn at seeded random positions from `ids` (tokens = the first seq,
  /// targets = the last seq). Throws qwen::Error if ids holds fewer than seq + 1 tokens.
  /// Returns the last step's figures.
  StepResult fit(const std::vector<int32_t>& ids, const StepCallback& on_step = nullptr);
  /// Reads a UTF-8 text file, encodes it with `tokenizer` and calls fit(). Errors name the file.
  StepResult fit_text_file(const std::string& path, const Tokenizer& tokenizer,
                           const StepCallback& on_step = nullptr);

  /// Mean loss (nats per token) over consecutive windows of seq + 1 ids of `ids` (at most
  /// max_batches batches of B windows); gradients and weights are untouched.
  double evaluate(const std::vector<int32_t>& ids, int64_t max_batches = 8);

  /// The model as trained so far, sharing the trainer's weights (later steps change it too): for
  /// generating during training. In LoRA mode it is the base with the adapter attached.
  Model model() const;
  /// LoRA mode: a plain model with the adapter merged (W' = W + s·B·A). Throws otherwise.
  Model merged_model() const;
  /// Full training: a Hugging Face folder (config.json, generation_config.json,
  /// model.safetensors in F32). LoRA mode: a PEFT adapter folder (adapter_config.json,
  /// adapter_model.safetensors) that PEFT and Model::load_adapter read.
  void save(const std::string& dir) const;

  int64_t trainable_parameters() const;  ///< parameters that get gradients
  int64_t total_parameters() const;      ///< base + trainable
  int64_t steps_done() const;            ///< optimiser steps so far
  bool is_lora() const;                  ///< true in LoRA / QLoRA mode
  TrainMemory memory() const;            ///< where training memory goes
  const TrainConfig& config() const;     ///< the settings in use

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
