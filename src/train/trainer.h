// train/trainer.h — the training loop behind `qwen train`: batches from the loader, gradient
// accumulation, clipping, AdamW and the schedule; progress lines, validation loss, metrics.jsonl
// and loss.svg; atomic checkpoints (a Hugging Face folder plus optimiser, data and RNG state)
// and exact resumption; stops cleanly on a NaN/inf loss or a signal.
//
// The output folder:
//   OUT/checkpoint/   config.json, generation_config.json, model.safetensors, tokenizer files,
//                     optimizer.safetensors (AdamW m, v, step), trainer_state.json (step, data
//                     position, RNG seed/epoch, options) — always a complete checkpoint
//   OUT/metrics.jsonl one JSON object per line: {"type":"train","step","loss","lr","grad_norm",
//                     "tokens_per_s",...} per step and {"type":"eval","step","val_loss",
//                     "val_perplexity",...} per evaluation
//   OUT/loss.svg      training and validation loss curves
//   OUT/train_summary.json  figures of the finished run (tokens/s, memory)
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "train/optim.h"
#include "train/train_model.h"

namespace qwen::train {

struct TrainOptions {
  std::string config;         // --config model.json (a fresh model), or
  std::string init_from;      // --init-from HF folder (its weights and config)
  std::string data;           // --data folder from `qwen data prepare`
  std::string out;            // --out folder
  std::string tokenizer;      // --tokenizer folder copied into checkpoints ("" = the data's)
  int64_t steps = 1000;
  int64_t batch = 8;
  int64_t seq = 256;
  int64_t grad_accum = 1;
  double lr = 3e-4;
  int64_t warmup = 0;
  LrSchedule lr_schedule = LrSchedule::kCosine;
  double min_lr_ratio = 0.0;
  double weight_decay = 0.01;  // torch.optim.AdamW's defaults
  double beta1 = 0.9;
  double beta2 = 0.999;
  double adam_eps = 1e-8;
  double clip_grad_norm = 1.0;  // 0 = off
  int64_t eval_every = 100;     // 0 = off
  int64_t eval_batches = 8;     // validation batches (of --batch rows) per evaluation
  int64_t save_every = 500;     // 0 = only the final checkpoint
  int64_t log_every = 1;        // progress line every N steps
  int64_t stop_after = 0;       // stop (with a checkpoint) after this step; 0 = at --steps
  double time_budget = 0;       // seconds: after step 6, shorten --steps to fit (0 = off)
  uint64_t seed = 0;
  int threads = 0;              // 0 = all cores
  bool resume = false;
  bool sequential = false;
  bool recompute = false;
  bool quiet = false;           // no progress lines (errors still thrown)
};

struct TrainResult {
  int64_t first_step = 0;     // first step run by this call (1-based)
  int64_t last_step = 0;      // last step completed
  double last_loss = 0;
  double last_val_loss = -1;  // -1: no evaluation
  double tokens_per_s = 0;    // median over the steps run
  bool interrupted = false;   // stopped by SIGINT/SIGTERM (checkpoint written)
  size_t activation_bytes = 0;
  size_t peak_rss_bytes = 0;
};

// Run (or resume) training. `given` names the options set explicitly on the command line (flag
// names without "--"); with resume, every other option takes the value saved in the checkpoint.
// Throws qwen::Error on bad input and on a non-finite loss (naming the step; the last good
// checkpoint is kept).
TrainResult run_training(TrainOptions opt, const std::set<std::string>& given = {});

struct StepStats {
  double loss = 0;        // mean loss over the counted targets of all micro-batches
  int64_t n_counted = 0;
  double grad_norm = 0;   // global norm before clipping
  bool finite = true;     // false: loss or gradient not finite, parameters NOT updated
};

// One optimiser step: zero the gradients, count the targets (>= 0) of every micro-batch first,
// run forward_backward on each with grad_scale = 1 / total count (so the gradient is the mean
// loss's), clip to max_norm (0 = off) and apply AdamW with lr. tokens[k], targets[k]: (B, T).
StepStats train_step(TrainModel& model, AdamW& opt, const std::vector<const int32_t*>& tokens,
                     const std::vector<const int32_t*>& targets, int64_t B, int64_t T, double lr,
                     double max_norm);

// Write a checkpoint into out_dir/checkpoint atomically: everything goes into a temporary folder
// first (files fsynced), which then replaces the previous checkpoint in one rename; the previous
// one stays intact until then. trainer_state_json is written as trainer_state.json.
void save_checkpoint(const std::string& out_dir, const TrainModel& model, const AdamW& opt,
                     const std::string& trainer_state_json, const std::string& tokenizer_dir);
// Finish or undo an interrupted save (leftover temporary folders); returns the checkpoint folder
// path, or "" when there is none.
std::string recover_checkpoint(const std::string& out_dir);

}  // namespace qwen::train
