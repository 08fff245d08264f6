// train/trainer.h — the training loop behind `qwen train` and `qwen finetune`: batches from a
// BatchSource, gradient accumulation, clipping, AdamW and the schedule; progress lines,
// validation loss, metrics.jsonl and loss.svg; atomic checkpoints (the model's folder — a Hugging
// Face folder, or a PEFT adapter folder in LoRA mode — plus optimiser, data and RNG state) and
// exact resumption; stops cleanly on a NaN/inf loss or a signal. run_training builds the
// pretraining pieces (token shards, a fresh or loaded model) and hands them to run_loop; the
// fine-tuning driver (train/finetune.h) builds its own (packed instruction rows, a frozen base
// with a LoRA adapter) and runs the same loop.
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
#include <functional>
#include <nlohmann/json.hpp>
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

// Where the loop gets its micro-batches from.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // One micro-batch: tokens and targets, each (B, T) row-major (target < 0: not counted).
  virtual void next(int32_t* tokens, int32_t* targets) = 0;
  // Position fields merged into trainer_state.json (top-level keys, e.g. "loader"), and their
  // restoration from a saved trainer_state.json (throws qwen::Error or json::exception when
  // they do not fit).
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& trainer_state) = 0;
};

// What a command hands to run_loop besides its options: the model, the data and how to report.
struct LoopSpec {
  TrainModel* model = nullptr;     // the parameters being trained (full or LoRA)
  BatchSource* data = nullptr;
  // Validation: returns the summed loss and writes the counted targets; empty = no validation.
  std::function<double(int64_t* n_counted)> evaluate;
  int64_t eval_tokens = 0;         // tokens one evaluation runs through (log and time budget)
  std::string ckpt_dir;            // resume: the checkpoint folder (its optimizer.safetensors)
  nlohmann::json saved_state;      // resume: its trainer_state.json
  std::string tokenizer_dir;       // tokenizer files copied into checkpoints ("" = none)
  std::function<nlohmann::json()> options;  // saved as trainer_state.json "options"
  // Progress header, printed once the first step is known (not called when nothing is left).
  std::function<void(int64_t first_step, int64_t stop)> header;
  std::string plot_title = "qwen train: loss";
  double flops_per_token = 0;      // for train_summary.json (train: 6 · parameters)
  std::string flops_label = "6·N·tok/s";  // how the final line names that estimate
  nlohmann::json summary_extra;    // more train_summary.json fields
  // LoRA dropout: each micro-batch's masks come from (dropout_seed, step, micro-batch), so a
  // resumed run draws the same masks. Unused for a full model.
  uint64_t dropout_seed = 0;
};

// The loop shared by `qwen train` and `qwen finetune`: restores the optimiser and data position
// on resume, keeps metrics.jsonl consistent with the checkpoint, runs the steps and writes the
// checkpoints, the plot and train_summary.json. o.out must exist (prepare_out_dir).
TrainResult run_loop(TrainOptions& o, LoopSpec& spec);

// Shared checks and setup of the commands that use run_loop.
// Create o.out and find its checkpoint (*ckpt_dir, "" if none). With o.resume: returns the
// checkpoint's trainer_state.json (throws qwen::Error when there is none or it is not valid);
// without: throws if a checkpoint exists, returns null.
nlohmann::json start_run(const TrainOptions& o, std::string* ckpt_dir);
void check_options(const TrainOptions& o);                   // throws qwen::Error, one line each
void prepare_out_dir(const std::string& out);                // create and prove writable
nlohmann::json options_json(const TrainOptions& o);          // keyed by flag names
// Every option not in `given` takes its saved value from j (trainer_state.json "options").
void apply_saved_options(TrainOptions& o, const nlohmann::json& j, const std::set<std::string>& given);
std::string absolute_path(const std::string& p);

struct StepStats {
  double loss = 0;        // mean loss over the counted targets of all micro-batches
  int64_t n_counted = 0;
  double grad_norm = 0;   // global norm before clipping
  bool finite = true;     // false: loss or gradient not finite, parameters NOT updated
};

// One optimiser step: zero the gradients, count the targets (>= 0) of every micro-batch first,
// run forward_backward on each with grad_scale = 1 / total count (so the gradient is the mean
// loss's), clip to max_norm (0 = off) and apply AdamW with lr. tokens[k], targets[k]: (B, T).
// dropout_seeds (one per micro-batch, may be null): TrainModel::set_dropout_seed before each.
StepStats train_step(TrainModel& model, AdamW& opt, const std::vector<const int32_t*>& tokens,
                     const std::vector<const int32_t*>& targets, int64_t B, int64_t T, double lr,
                     double max_norm, const uint64_t* dropout_seeds = nullptr);

// Write a checkpoint into out_dir/checkpoint atomically: everything goes into a temporary folder
// first (files fsynced), which then replaces the previous checkpoint in one rename; the previous
// one stays intact until then. trainer_state_json is written as trainer_state.json.
void save_checkpoint(const std::string& out_dir, const TrainModel& model, const AdamW& opt,
                     const std::string& trainer_state_json, const std::string& tokenizer_dir);
// Finish or undo an interrupted save (leftover temporary folders); returns the checkpoint folder
// path, or "" when there is none.
std::string recover_checkpoint(const std::string& out_dir);

}  // namespace qwen::train
