/// @file qwen/train_job.h
/// @brief Training runs on disk, as `qwen data prepare` and `qwen train` do them: text (or ready
/// ids) into binary token shards with a validation split, then a run over those shards with
/// validation, metrics.jsonl, loss.svg, atomic checkpoints (a Hugging Face folder plus optimiser
/// state) and exact resumption. For a training loop in your own code see qwen/trainer.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "qwen/trainer.h"

namespace qwen::api {

/// Inputs of prepare_data().
struct DataPrepareConfig {
  std::string tokenizer_dir;               ///< tokenizer folder (required for text inputs)
  std::vector<std::string> inputs;         ///< UTF-8 text files, each one document
  std::vector<std::string> ids_files;      ///< ready ids (whitespace/comma separated), each a document
  std::string out_dir;                     ///< output folder (meta.json, train_*.bin, val_*.bin)
  double val_fraction = 0.05;              ///< the last fraction of every document goes to validation
  int64_t shard_tokens = int64_t(1) << 27; ///< ids per shard file at most
  bool verbose = true;                     ///< a summary line per split on stdout
};

/// What prepare_data() wrote.
struct DataSummary {
  int64_t vocab_size = 0;      ///< the tokenizer's vocabulary (or max id + 1)
  int64_t n_documents = 0;     ///< documents read
  int64_t n_train_tokens = 0;  ///< ids in the training split
  int64_t n_val_tokens = 0;    ///< ids in the validation split
};

/// Tokenises / reads the inputs, splits them, writes the shards and meta.json and copies the
/// tokenizer. Throws qwen::Error naming the file on bad input.
DataSummary prepare_data(const DataPrepareConfig& config);

/// One training run over a data folder.
struct TrainJob {
  std::string config;       ///< config.json of a new, randomly initialised model, or
  std::string init_from;    ///< a Hugging Face folder to start from
  std::string data;         ///< data folder from prepare_data()
  std::string out;          ///< output folder: checkpoint/, metrics.jsonl, loss.svg
  std::string tokenizer;    ///< tokenizer copied into checkpoints ("" = the data folder's)
  TrainConfig train;        ///< optimiser, schedule, batch (TrainConfig::seed also seeds the init)
  int64_t eval_every = 100; ///< validation loss every N steps; 0 = off
  int64_t eval_batches = 8; ///< validation batches per evaluation
  int64_t save_every = 500; ///< checkpoint every N steps; 0 = only the final one
  int64_t log_every = 1;    ///< progress line every N steps; 0 = none
  int64_t stop_after = 0;   ///< stop (with a checkpoint) after this step; 0 = at steps
  double time_budget = 0;   ///< seconds: after step 6, steps shrink to fit; 0 = off
  int threads = 0;          ///< kernel threads; 0 = all cores
  bool resume = false;      ///< continue from out/checkpoint
  bool sequential = false;  ///< consecutive rows, no shuffling
  bool quiet = false;       ///< no progress lines
};

/// The outcome of run_train_job().
struct TrainJobResult {
  int64_t first_step = 0;       ///< first step run by this call (1-based)
  int64_t last_step = 0;        ///< last step completed
  double last_loss = 0;         ///< training loss of the last step
  double last_val_loss = -1;    ///< last validation loss; -1 without evaluation
  double tokens_per_s = 0;      ///< median over the steps run
  bool interrupted = false;     ///< stopped by SIGINT/SIGTERM (a checkpoint was written)
  size_t peak_memory_bytes = 0; ///< peak RSS of the process
};

/// Runs (or resumes) a training job. With resume, options not named in `given` (TrainJob and
/// TrainConfig field names with '-' for '_', e.g. "lr", "grad-accum") take the values saved in
/// the checkpoint. Throws qwen::Error on bad input and on a non-finite loss (naming the step; the
/// last good checkpoint is kept).
TrainJobResult run_train_job(const TrainJob& job, const std::set<std::string>& given = {});

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
