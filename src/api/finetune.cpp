// api/finetune.cpp — qwen/finetune.h: `qwen finetune` and `qwen sft-eval` as library calls, mapped
// onto train::run_finetune and train::evaluate_task (src/train/finetune.h). The task evaluation
// also reads each example's optional "kind" field for the per-kind scores.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "api/bridge.h"

namespace qwen::api {

namespace fs = std::filesystem;

FinetuneResult run_finetune(const FinetuneJob& job, const std::set<std::string>& given) {
  train::FinetuneOptions o;
  o.train = train_options(job.run);
  o.base = job.base;
  o.data = job.data;
  o.val_data = job.val_data;
  o.lora.r = job.lora.rank;
  o.lora.alpha = job.lora.alpha;
  o.lora.dropout = job.lora.dropout;
  o.lora.rslora = job.lora.rslora;
  o.lora.targets = job.lora.targets;
  o.qlora = job.qlora.empty() && job.lora.nf4_base ? "nf4" : job.qlora;
  if (job.on_bad_line == "skip") o.on_bad_line = train::OnBadLine::skip;
  else if (job.on_bad_line == "stop") o.on_bad_line = train::OnBadLine::stop;
  else throw Error("--on-bad-line '" + job.on_bad_line + "' is not one of stop, skip");
  const train::FinetuneResult r = train::run_finetune(std::move(o), given);
  FinetuneResult out;
  out.train = train_job_result(r.train);
  out.base_parameters = r.base_params;
  out.trainable_parameters = r.trainable_params;
  out.quantized_matrices = r.quantized_matrices;
  out.base_weight_bytes = r.base_weight_bytes;
  return out;
}

TaskEvalResult run_task_eval(const TaskEvalJob& job) {
  ::qwen::set_num_threads(job.threads);
  if (!fs::exists(fs::path(job.model) / "tokenizer.json"))
    throw Error("--model '" + job.model + "' has no tokenizer.json (needed to render the chat data)");
  const Tokenizer tok = Tokenizer::from_dir(job.model);
  train::SftOptions so;
  so.seq = job.seq;
  const train::SftDataset data = train::SftDataset::load(job.data, tok, so);
  std::unique_ptr<qwen::Model> loaded = qwen::Model::load(job.model);
  std::unique_ptr<qwen::Model> quantized;
  if (!job.qlora.empty()) {
    if (job.qlora != "nf4") throw Error("--qlora '" + job.qlora + "' is not supported; use --qlora nf4");
    quantized = train::quantize_layers_nf4(*loaded);
  }
  qwen::Model& m = quantized ? *quantized : *loaded;
  std::unique_ptr<train::LoraAdapter> adapter;
  if (!job.adapter.empty()) {
    adapter = train::LoraAdapter::load(job.adapter, m.config());
    adapter->attach(m);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const train::TaskEval e =
      train::evaluate_task(m, tok, data, job.limit, job.max_new_tokens, job.batch);
  TaskEvalResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.n = e.n;
  r.n_correct = e.n_correct;
  r.loss = e.loss;
  r.loss_tokens = e.n_loss_tokens;
  r.generated = e.generated;
  r.correct.assign(e.correct.begin(), e.correct.end());
  // Per kind: the optional "kind" field of each example's line (docs/finetune-task.md).
  std::ifstream f(job.data, std::ios::binary);
  std::vector<std::string> lines;
  for (std::string line; std::getline(f, line);) lines.push_back(line);
  for (int64_t i = 0; i < e.n; ++i) {
    const int64_t ln = data.examples()[size_t(i)].line;
    std::string kind = "all";
    if (ln >= 1 && ln <= int64_t(lines.size())) {
      const nlohmann::json j = nlohmann::json::parse(lines[size_t(ln - 1)], nullptr, false);
      if (j.is_object() && j.contains("kind") && j["kind"].is_string()) kind = j["kind"].get<std::string>();
    }
    TaskScore& k = r.per_kind[kind];
    k.correct += e.correct[size_t(i)];
    k.n += 1;
    r.kind.push_back(std::move(kind));
  }
  return r;
}

}  // namespace qwen::api
