// train/finetune.h — `qwen finetune`: LoRA / QLoRA instruction tuning of a frozen base model on
// JSONL conversations (train/sft_data.h: ChatML rendering, loss on the assistant's tokens only,
// greedy packing into rows of --seq tokens), run by the same loop, progress lines, metrics.jsonl,
// loss.svg, atomic checkpoints and exact --resume as `qwen train` (train/trainer.h). The
// checkpoint is a PEFT adapter folder (adapter_config.json + adapter_model.safetensors, what
// `qwen generate --adapter` and pip peft load) plus optimizer.safetensors, the tokenizer and
// trainer_state.json (step, packer position, options).
//
// QLoRA: with qlora = "nf4" a float base has its layers' projection matrices quantised to NF4 in
// memory (bitsandbytes' 4-bit format, blocks of 64 with an f32 absmax); an NF4 folder written by
// `qwen quantize --type nf4` is used as it is. Embeddings, norms and lm_head stay in their dtype.
// Also the task evaluation of docs/finetune-task.md: eval loss and greedy exact-match accuracy.
#pragma once
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/lora.h"
#include "train/sft_data.h"
#include "train/trainer.h"

namespace qwen {
class Tokenizer;
}

namespace qwen::train {

struct FinetuneOptions {
  // The loop's options: out, steps, batch, seq, grad_accum, lr, warmup, schedule, AdamW, clip,
  // eval/save/log cadence, seed, threads, resume, recompute, quiet. config / init_from / data /
  // tokenizer / sequential are not used.
  TrainOptions train;
  std::string base;      // --base: Hugging Face folder (float weights or an NF4 folder)
  std::string data;      // --data: training JSONL
  std::string val_data;  // --val-data: validation JSONL ("" = no validation)
  LoraConfig lora;
  std::string qlora;     // "" (the base's own dtype) or "nf4"
  OnBadLine on_bad_line = OnBadLine::stop;
};

struct FinetuneResult {
  TrainResult train;
  int64_t base_params = 0;       // parameters of the frozen base
  int64_t trainable_params = 0;  // adapter A and B
  int64_t quantized_matrices = 0;
  size_t base_weight_bytes = 0;  // the base's weights as held in memory
};

// Run (or resume) a fine-tuning run. `given`: option names set on the command line (as for
// run_training); with resume the others, and the LoRA settings, come from the checkpoint.
FinetuneResult run_finetune(FinetuneOptions o, const std::set<std::string>& given = {});

// "q,k,v" -> {"q", "k", "v"} (blanks ignored; names are checked by LoraConfig::validate).
std::vector<std::string> parse_lora_targets(const std::string& s);

// A view of base whose layer projections (q, k, v, o, gate, up, down) are quantised to NF4 in
// memory; a matrix whose row length is not a multiple of 64 keeps its dtype (counted in
// *n_kept). Everything else points into base, which must outlive the result.
std::unique_ptr<Model> quantize_layers_nf4(const Model& base, int64_t* n_quantized = nullptr,
                                           int64_t* n_kept = nullptr);

// docs/finetune-task.md on the first `limit` examples of data (all if limit <= 0), with the
// inference decoder (so an attached adapter or a quantised base is what is measured):
//  - loss: mean cross-entropy over the loss tokens of each example alone;
//  - accuracy: the example's prompt (up to its last "<|im_start|>assistant\n"), greedy
//    generation of at most max_new_tokens stopping at the tokenizer's stop ids, scored with
//    exact_match against the reference; `batch` prompts are generated together.
struct TaskEval {
  int64_t n = 0, n_correct = 0;
  int64_t n_loss_tokens = 0;
  double loss = 0;
  std::vector<std::string> generated;  // decoded, special tokens kept
  std::vector<uint8_t> correct;
  double accuracy() const { return n > 0 ? double(n_correct) / double(n) : 0.0; }
};
TaskEval evaluate_task(const Model& m, const Tokenizer& tok, const SftDataset& data, int64_t limit,
                       int64_t max_new_tokens = 32, int64_t batch = 16);

}  // namespace qwen::train
