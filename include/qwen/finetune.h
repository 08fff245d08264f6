/// @file qwen/finetune.h
/// @brief Instruction tuning on disk, as `qwen finetune` and `qwen sft-eval` run it: LoRA / QLoRA
/// on JSONL conversations (`{"prompt", "response"}` or `{"messages": [...]}` a line, rendered
/// with ChatML, loss on the assistant's tokens only, packed into rows of seq tokens) with the
/// checkpoints, metrics.jsonl, loss.svg and exact resumption of qwen/train_job.h; and the task
/// evaluation of such a file: eval loss and greedy exact-match accuracy. For LoRA in your own
/// training loop see qwen::Trainer (qwen/trainer.h).
///
/// @code
///   qwen::FinetuneJob job;
///   job.base = "Qwen2.5-0.5B-Instruct";  job.data = "train.jsonl";  job.run.out = "run";
///   job.lora.nf4_base = true;            // QLoRA
///   job.run.train.steps = 200;  job.run.train.lr = 2e-4;
///   qwen::run_finetune(job);             // run/checkpoint is a PEFT adapter folder
/// @endcode
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "qwen/lora.h"
#include "qwen/train_job.h"

namespace qwen::api {

/// One fine-tuning run.
struct FinetuneJob {
  std::string base;      ///< base model folder (float weights, or an NF4 folder) with tokenizer.json
  std::string data;      ///< training JSONL
  std::string val_data;  ///< validation JSONL; "" = no validation
  /// rank, alpha, dropout, rslora, targets; nf4_base is the same as qlora = "nf4". The adapter's
  /// init, the data order and dropout draw from run.train.seed (lora.seed is not used).
  LoraConfig lora;
  std::string qlora;     ///< "nf4": quantise the base's layer matrices to NF4 in memory; "" = as is
  /// What a malformed JSONL line does: "stop" (a qwen::Error naming file and line) or "skip"
  /// (counted and listed in the log).
  std::string on_bad_line = "stop";
  /// The loop's settings: out, train (steps, batch, seq, lr, schedule, AdamW, ...), eval_every,
  /// eval_batches (of train.batch examples), save_every, log_every, stop_after, time_budget,
  /// threads, resume, quiet. config, init_from, data, tokenizer and sequential are not used.
  TrainJob run;
};

/// The outcome of run_finetune().
struct FinetuneResult {
  TrainJobResult train;            ///< steps, losses, speed, interruption, peak memory
  int64_t base_parameters = 0;     ///< parameters of the frozen base
  int64_t trainable_parameters = 0;///< adapter A and B
  int64_t quantized_matrices = 0;  ///< NF4 matrices of the base
  size_t base_weight_bytes = 0;    ///< the base's weights as held in memory
};

/// Runs (or resumes) a fine-tuning job; the checkpoint (run.out/checkpoint) is a PEFT adapter
/// folder plus the optimiser state. `given`: as for run_train_job (flag names such as "lora-r",
/// "target", "qlora" besides the TrainJob ones); with run.resume the rest, and the LoRA settings,
/// come from the checkpoint. Throws qwen::Error on bad input (naming the file and line for
/// data) and on a non-finite loss.
FinetuneResult run_finetune(const FinetuneJob& job, const std::set<std::string>& given = {});

/// One task evaluation (docs/finetune-task.md).
struct TaskEvalJob {
  std::string model;    ///< model folder with tokenizer.json (float or quantised weights)
  std::string adapter;  ///< PEFT adapter folder attached unmerged; "" = none
  std::string qlora;    ///< "nf4": the layer matrices quantised to NF4 first, as FinetuneJob::qlora
  std::string data;     ///< JSONL task file (prompt/response or messages; optional "kind")
  int64_t limit = 0;    ///< score the first N examples; 0 = all
  int64_t max_new_tokens = 32;  ///< longest answer generated
  int64_t batch = 16;   ///< prompts generated together
  int64_t seq = 2048;   ///< longest example in tokens (longer ones are truncated)
  int threads = 0;      ///< kernel threads; 0 = all cores
};

/// Exact matches of one kind of example.
struct TaskScore {
  int64_t correct = 0;  ///< exact matches
  int64_t n = 0;        ///< examples
};

/// What run_task_eval() measured.
struct TaskEvalResult {
  int64_t n = 0;               ///< examples scored
  int64_t n_correct = 0;       ///< exact matches
  double loss = 0;             ///< mean cross-entropy over the answer tokens, each example alone
  int64_t loss_tokens = 0;     ///< answer tokens counted in loss
  std::vector<std::string> generated;  ///< per example: the greedy answer (special tokens kept)
  std::vector<bool> correct;   ///< per example: exact match
  std::vector<std::string> kind;       ///< per example: its "kind" field, "all" without one
  std::map<std::string, TaskScore> per_kind;  ///< the scores by kind
  double seconds = 0;          ///< wall time of the scoring (loading excluded)
  /// n_correct / n (0 without examples).
  double accuracy() const { return n > 0 ? double(n_correct) / double(n) : 0.0; }
};

/// Loss and greedy exact-match accuracy of a model (with the adapter attached, or on the
/// NF4-quantised base) on a task file. Throws qwen::Error naming the file on bad input.
TaskEvalResult run_task_eval(const TaskEvalJob& job);

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
