// apps/qwen/cmd_train.cpp — training commands: `qwen data prepare` (text or ids -> token shards
// with a validation split) and `qwen train` (pretraining / continued training with AdamW,
// checkpoints, resume). The work is behind the public API (qwen/train_job.h); this file maps
// flags to its options.
#include <cstdio>
#include <cstdlib>
#include <set>

#include "commands.h"
#include "qwen/error.h"
#include "qwen/train_job.h"

namespace qwen::cli {

void add_train_commands(CLI::App& app) {
  {
    auto* data = app.add_subcommand("data", "training data: prepare token shards");
    data->require_subcommand(1);
    auto* c = data->add_subcommand(
        "prepare", "tokenise text files (or read ready ids) into binary token shards + a validation split");
    static DataPrepareConfig p;
    c->add_option("--tokenizer", p.tokenizer_dir,
                  "folder with tokenizer.json (required for --input; copied into the data folder)");
    c->add_option("--input", p.inputs, "UTF-8 text files, each one document")->expected(1, -1);
    c->add_option("--ids-file", p.ids_files,
                  "files of ready token ids (whitespace/comma separated), each one document")
        ->expected(1, -1);
    c->add_option("--out", p.out_dir, "output folder (meta.json, train_*.bin, val_*.bin)")->required();
    c->add_option("--val-fraction", p.val_fraction,
                  "the last fraction of every document goes to the validation split (default 0.05)");
    c->add_option("--shard-tokens", p.shard_tokens, "token ids per shard file at most (default 2^27)");
    c->callback([&]() { prepare_data(p); });
  }
  {
    auto* c = app.add_subcommand("train", "train a model on prepared token shards (AdamW, checkpoints, resume)");
    static TrainJob o;
    static TrainConfig& t = o.train;
    c->add_option("--config", o.config, "model config.json for a new, randomly initialised model");
    c->add_option("--init-from", o.init_from, "Hugging Face folder to start from (its weights and config)");
    c->add_option("--data", o.data, "data folder written by `qwen data prepare`");
    c->add_option("--out", o.out, "output folder: checkpoint/, metrics.jsonl, loss.svg")->required();
    c->add_option("--tokenizer", o.tokenizer,
                  "tokenizer folder copied into checkpoints (default: the data folder's)");
    c->add_option("--steps", t.steps, "optimiser steps in total (default 1000)");
    c->add_option("--batch", t.batch, "sequences per micro-batch (default 8)");
    c->add_option("--seq", t.seq, "tokens per sequence (default 256)");
    c->add_option("--grad-accum", t.grad_accum, "micro-batches per optimiser step (default 1)");
    c->add_option("--lr", t.lr, "peak learning rate (default 3e-4)");
    c->add_option("--warmup", t.warmup, "linear warm-up steps (default 0)");
    c->add_option("--lr-schedule", t.lr_schedule, "constant or cosine (default cosine)");
    c->add_option("--min-lr-ratio", t.min_lr_ratio, "cosine floor as a fraction of --lr (default 0)");
    c->add_option("--weight-decay", t.weight_decay,
                  "AdamW decoupled weight decay, matrices only (default 0.01)");
    c->add_option("--beta1", t.beta1, "AdamW beta1 (default 0.9)");
    c->add_option("--beta2", t.beta2, "AdamW beta2 (default 0.999)");
    c->add_option("--adam-eps", t.adam_eps, "AdamW epsilon (default 1e-8)");
    c->add_option("--clip-grad-norm", t.clip_grad_norm, "global gradient-norm clip, 0 = off (default 1)");
    c->add_option("--eval-every", o.eval_every, "validation loss every N steps, 0 = off (default 100)");
    c->add_option("--eval-batches", o.eval_batches, "validation batches per evaluation (default 8)");
    c->add_option("--save-every", o.save_every,
                  "checkpoint every N steps, 0 = only the final one (default 500)");
    c->add_option("--log-every", o.log_every, "progress line every N steps, 0 = none (default 1)");
    c->add_option("--stop-after", o.stop_after,
                  "stop after this step with a checkpoint (the schedule still spans --steps)");
    c->add_option("--time-budget", o.time_budget,
                  "seconds of training: after step 6, --steps shrinks to fit them (0 = off)");
    c->add_option("--seed", t.seed, "seed for the initial weights and the data order (default 0)");
    c->add_option("--threads", o.threads, "threads (default: all cores)");
    c->add_flag("--resume", o.resume, "continue from OUT/checkpoint (options default to the saved ones)");
    c->add_flag("--sequential", o.sequential,
                "consecutive rows of seq+1 tokens, no shuffling (step k uses rows k*B..k*B+B-1)");
    c->add_flag("--recompute", t.recompute, "activation recomputation (less memory, more time)");
    c->add_flag("--quiet", o.quiet, "no progress lines");
    c->callback([c]() {
      std::set<std::string> given;
      for (const CLI::Option* opt : c->get_options())
        if (opt->count() > 0)
          for (const std::string& n : opt->get_lnames()) given.insert(n);
      const TrainJobResult r = run_train_job(o, given);
      if (r.interrupted) {
        std::fflush(stdout);
        std::fprintf(stderr, "interrupted after step %lld; resume with --resume\n", (long long)r.last_step);
        std::exit(130);
      }
    });
  }
}

}  // namespace qwen::cli
