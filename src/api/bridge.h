// api/bridge.h — private to src/api: the state behind the public handles of include/qwen
// (qwen::api::Model, ...) and the conversions between public and internal types.
//
// Naming: the public classes live in qwen::api and are visible as qwen::X through a
// using-directive; several internal classes have the same names directly in qwen (qwen::Model,
// qwen::Generator, ...). Qualified lookup of qwen::X finds the internal class first, so inside
// src/api `qwen::Model` is the internal model and `api::Model` the public one. Internal headers
// must be included BEFORE the public ones (here), or their unqualified uses become ambiguous.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "generate/generator.h"
#include "generate/sampler.h"
#include "io/gguf_model.h"
#include "io/gguf_tokenizer.h"
#include "io/quantized_folder.h"
#include "model/decoder.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/http_server.h"
#include "serve/paged_cache.h"
#include "train/data.h"
#include "train/finetune.h"
#include "train/lora.h"
#include "train/optim.h"
#include "train/sft_data.h"
#include "train/train_model.h"
#include "train/trainer.h"
// Public headers last.
#include "qwen/chat.h"
#include "qwen/engine.h"
#include "qwen/eval.h"
#include "qwen/finetune.h"
#include "qwen/generator.h"
#include "qwen/gguf.h"
#include "qwen/model.h"
#include "qwen/quantize.h"
#include "qwen/runtime.h"
#include "qwen/train_job.h"
#include "qwen/trainer.h"

namespace qwen::api {

struct Model::Impl {
  std::shared_ptr<void> keep;                  // owns what `m` points into (trainer weights, ...)
  std::unique_ptr<qwen::Model> m;
  std::unique_ptr<train::LoraAdapter> adapter; // attached to m (Linear::lora points into it)
};

// Internal model of a public handle; throws qwen::Error on a moved-from handle.
const qwen::Model& core(const Model& m);
// A public handle around an internal model (and whatever keeps its data alive).
Model wrap(std::unique_ptr<qwen::Model> m, std::shared_ptr<void> keep = nullptr);

DType to_dtype(WeightType t);
WeightType from_dtype(DType t);

// Sampling settings of a GenerationConfig (after range checks; throws qwen::Error).
SamplingParams sampling_params(const GenerationConfig& g);

// A TrainJob as the training loop's options (lr_schedule parsed: throws qwen::Error), and the
// loop's result as the public one (train_job.cpp).
train::TrainOptions train_options(const TrainJob& job);
TrainJobResult train_job_result(const train::TrainResult& r);

}  // namespace qwen::api
