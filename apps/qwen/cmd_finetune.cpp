// apps/qwen/cmd_finetune.cpp — fine-tuning commands: `qwen finetune` (LoRA / QLoRA on JSONL
// instruction data, checkpoints, resume), `qwen merge` (base + adapter -> a plain Hugging Face
// folder) and `qwen sft-eval` (eval loss and exact-match accuracy of a model, with or without an
// adapter, on a JSONL task file: docs/finetune-task.md). The work is behind the public API
// (qwen/finetune.h, Model::load_adapter / merged); this file maps flags to its options.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>

#include "commands.h"
#include "qwen/error.h"
#include "qwen/finetune.h"
#include "qwen/lora.h"
#include "qwen/model.h"
#include "qwen/runtime.h"

namespace qwen::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Files of a model folder other than its weights and configs (tokenizer, chat template, ...).
void copy_side_files(const std::string& from, const std::string& to) {
  for (const auto& e : fs::directory_iterator(from)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name == "generation_config.json" ||
        name == "model.safetensors.index.json" || e.path().extension() == ".safetensors")
      continue;
    fs::copy_file(e.path(), fs::path(to) / name, fs::copy_options::overwrite_existing);
  }
}

void run_merge(const std::string& base_dir, const std::string& adapter_dir, const std::string& out,
               int threads) {
  if (fs::exists(out) && (fs::equivalent(out, base_dir) || fs::equivalent(out, adapter_dir)))
    throw Error("--out must differ from --base and --adapter (they would be overwritten)");
  set_num_threads(threads);
  const auto t0 = std::chrono::steady_clock::now();
  Model base = Model::load(base_dir);
  base.load_adapter(adapter_dir);
  const AdapterInfo adapter = base.adapter_info();
  const Model merged = base.merged();
  merged.save(out);
  copy_side_files(base_dir, out);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %s weights, %lld adapted matrices (r %lld, scale %g) merged into %.2fM "
              "parameters, %.1f s\n",
              out.c_str(), merged.matrix_dtype_name().c_str(), (long long)adapter.n_matrices,
              (long long)adapter.config.rank, adapter.scale,
              double(merged.num_parameters()) / 1e6, s);
}

struct SftEvalArgs {
  TaskEvalJob job;
  bool json_out = false, show = false;
};

void run_sft_eval(const SftEvalArgs& a) {
  const TaskEvalResult r = run_task_eval(a.job);
  if (a.json_out) {
    json per = json::object();
    for (const auto& [k, v] : r.per_kind)
      per[k] = {{"correct", v.correct}, {"n", v.n}, {"accuracy", double(v.correct) / double(v.n)}};
    std::cout << json{{"n", r.n}, {"correct", r.n_correct}, {"accuracy", r.accuracy()},
                      {"loss", r.loss}, {"loss_tokens", r.loss_tokens}, {"per_kind", per},
                      {"seconds", r.seconds}}
                     .dump()
              << "\n";
  } else {
    if (a.show)
      for (int64_t i = 0; i < r.n; ++i) {
        std::string g = r.generated[size_t(i)];
        for (auto& ch : g)
          if (ch == '\n') ch = ' ';
        std::printf("%s %4lld: %s\n", r.correct[size_t(i)] ? "ok " : "BAD", (long long)i, g.c_str());
      }
    std::printf("exact match %lld / %lld = %.1f%%, eval loss %.4f over %lld answer tokens (%.1f s)\n",
                (long long)r.n_correct, (long long)r.n, 100.0 * r.accuracy(), r.loss,
                (long long)r.loss_tokens, r.seconds);
    for (const auto& [k, v] : r.per_kind)
      std::printf("  %-10s %lld / %lld = %.1f%%\n", k.c_str(), (long long)v.correct, (long long)v.n,
                  100.0 * double(v.correct) / double(v.n));
  }
}

}  // namespace

void add_finetune_commands(CLI::App& app) {
  {
    auto* c = app.add_subcommand(
        "finetune", "LoRA / QLoRA fine-tuning on JSONL instruction data (checkpoints, resume)");
    static FinetuneJob o;
    static std::string targets = "q,k,v,o,gate,up,down";
    TrainJob& r = o.run;
    TrainConfig& t = r.train;
    // Fine-tuning defaults (PEFT / transformers Trainer-like: no weight decay, lr 2e-4).
    t.steps = 200;
    t.lr = 2e-4;
    t.weight_decay = 0.0;
    r.eval_every = 50;
    r.save_every = 100;
    c->add_option("--base", o.base, "base model folder (float weights or an NF4 folder) with tokenizer.json");
    c->add_option("--data", o.data, "training data: JSONL, {\"prompt\",\"response\"} or {\"messages\":[...]} a line");
    c->add_option("--val-data", o.val_data, "validation JSONL (eval loss every --eval-every steps)");
    c->add_option("--out", r.out, "output folder: checkpoint/ (PEFT adapter + state), metrics.jsonl, loss.svg")
        ->required();
    c->add_option("--lora-r", o.lora.rank, "LoRA rank (default 8)");
    c->add_option("--lora-alpha", o.lora.alpha, "LoRA alpha: scale alpha/r (default 16)");
    c->add_option("--lora-dropout", o.lora.dropout, "dropout on the adapter's input (default 0.05)");
    c->add_option("--target", targets, "modules to adapt, from q,k,v,o,gate,up,down (default all)");
    c->add_flag("--rslora", o.lora.rslora, "rank-stabilised LoRA: scale alpha/sqrt(r)");
    c->add_option("--qlora", o.qlora, "nf4: quantise the base's layer matrices to NF4 in memory (QLoRA)");
    c->add_option("--on-bad-line", o.on_bad_line, "malformed JSONL line: stop (default) or skip");
    c->add_option("--steps", t.steps, "optimiser steps in total (default 200)");
    c->add_option("--batch", t.batch, "packed rows per micro-batch (default 8)");
    c->add_option("--seq", t.seq, "tokens per row (default 256)");
    c->add_option("--grad-accum", t.grad_accum, "micro-batches per optimiser step (default 1)");
    c->add_option("--lr", t.lr, "peak learning rate (default 2e-4)");
    c->add_option("--warmup", t.warmup, "linear warm-up steps (default 0)");
    c->add_option("--lr-schedule", t.lr_schedule, "constant or cosine (default cosine)");
    c->add_option("--min-lr-ratio", t.min_lr_ratio, "cosine floor as a fraction of --lr (default 0)");
    c->add_option("--weight-decay", t.weight_decay, "AdamW decoupled weight decay on A and B (default 0)");
    c->add_option("--beta1", t.beta1, "AdamW beta1 (default 0.9)");
    c->add_option("--beta2", t.beta2, "AdamW beta2 (default 0.999)");
    c->add_option("--adam-eps", t.adam_eps, "AdamW epsilon (default 1e-8)");
    c->add_option("--clip-grad-norm", t.clip_grad_norm, "global gradient-norm clip, 0 = off (default 1)");
    c->add_option("--eval-every", r.eval_every, "validation loss every N steps, 0 = off (default 50)");
    c->add_option("--eval-batches", r.eval_batches,
                  "validation examples per evaluation: eval-batches x batch (default 8)");
    c->add_option("--save-every", r.save_every, "checkpoint every N steps, 0 = only the final one (default 100)");
    c->add_option("--log-every", r.log_every, "progress line every N steps, 0 = none (default 1)");
    c->add_option("--stop-after", r.stop_after, "stop after this step with a checkpoint (the schedule still spans --steps)");
    c->add_option("--time-budget", r.time_budget, "seconds of training: after step 6, --steps shrinks to fit (0 = off)");
    c->add_option("--seed", t.seed, "seed for the adapter's init, the data order and dropout (default 0)");
    c->add_option("--threads", r.threads, "threads (default: all cores)");
    c->add_flag("--resume", r.resume, "continue from OUT/checkpoint (options default to the saved ones)");
    c->add_flag("--recompute", t.recompute, "activation recomputation (less memory, more time)");
    c->add_flag("--quiet", r.quiet, "no progress lines");
    c->callback([c]() {
      std::set<std::string> given;
      for (const CLI::Option* opt : c->get_options())
        if (opt->count() > 0)
          for (const std::string& n : opt->get_lnames()) given.insert(n);
      o.lora.targets = parse_lora_targets(targets);
      const FinetuneResult res = run_finetune(o, given);
      if (res.train.interrupted) {
        std::fflush(stdout);
        std::fprintf(stderr, "interrupted after step %lld; resume with --resume\n",
                     (long long)res.train.last_step);
        std::exit(130);
      }
    });
  }
  {
    auto* c = app.add_subcommand("merge", "merge a LoRA adapter into its base: a plain Hugging Face folder");
    static std::string base, adapter, out;
    static int threads = 0;
    c->add_option("--base", base, "base model folder")->required();
    c->add_option("--adapter", adapter, "PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
        ->required();
    c->add_option("--out", out, "output folder (weights W + s·B·A in the base's float dtype; F32 for a quantised base)")
        ->required();
    c->add_option("--threads", threads, "threads (default: all cores)");
    c->callback([&]() { run_merge(base, adapter, out, threads); });
  }
  {
    auto* c = app.add_subcommand(
        "sft-eval", "exact-match accuracy and eval loss on a JSONL task file (docs/finetune-task.md)");
    static SftEvalArgs a;
    c->add_option("--model", a.job.model, "model folder with tokenizer.json")->required();
    c->add_option("--adapter", a.job.adapter, "LoRA adapter folder to attach (unmerged)");
    c->add_option("--qlora", a.job.qlora, "nf4: quantise the layer matrices to NF4 first (as finetune --qlora nf4)");
    c->add_option("--data", a.job.data, "JSONL task file (prompt/response or messages; optional \"kind\")")->required();
    c->add_option("--limit", a.job.limit, "score only the first N examples (default all)");
    c->add_option("--max-new-tokens", a.job.max_new_tokens, "longest answer generated (default 32)");
    c->add_option("--batch", a.job.batch, "prompts generated together (default 16)");
    c->add_option("--threads", a.job.threads, "threads (default: all cores)");
    c->add_flag("--show", a.show, "print every generated answer");
    c->add_flag("--json", a.json_out, "print {\"accuracy\", \"loss\", \"per_kind\", ...} as JSON");
    c->callback([&]() { run_sft_eval(a); });
  }
}

}  // namespace qwen::cli
