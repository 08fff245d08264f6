// api/train_job.cpp — qwen/train_job.h: `qwen data prepare` and `qwen train` as library calls,
// mapped onto train::prepare_data and train::run_training.
#include "api/bridge.h"

namespace qwen::api {

DataSummary prepare_data(const DataPrepareConfig& c) {
  train::PrepareOptions p;
  p.tokenizer_dir = c.tokenizer_dir;
  p.inputs = c.inputs;
  p.ids_files = c.ids_files;
  p.out_dir = c.out_dir;
  p.val_fraction = c.val_fraction;
  p.shard_tokens = c.shard_tokens;
  p.verbose = c.verbose;
  const train::DataMeta m = train::prepare_data(p);
  DataSummary s;
  s.vocab_size = m.vocab_size;
  s.n_documents = m.n_documents;
  s.n_train_tokens = m.n_train_tokens;
  s.n_val_tokens = m.n_val_tokens;
  return s;
}

train::TrainOptions train_options(const TrainJob& job) {
  train::TrainOptions o;
  o.config = job.config;
  o.init_from = job.init_from;
  o.data = job.data;
  o.out = job.out;
  o.tokenizer = job.tokenizer;
  const TrainConfig& t = job.train;
  o.steps = t.steps;
  o.batch = t.batch;
  o.seq = t.seq;
  o.grad_accum = t.grad_accum;
  o.lr = t.lr;
  o.warmup = t.warmup;
  o.lr_schedule = train::parse_lr_schedule(t.lr_schedule);
  o.min_lr_ratio = t.min_lr_ratio;
  o.weight_decay = t.weight_decay;
  o.beta1 = t.beta1;
  o.beta2 = t.beta2;
  o.adam_eps = t.adam_eps;
  o.clip_grad_norm = t.clip_grad_norm;
  o.seed = t.seed;
  o.recompute = t.recompute;
  o.eval_every = job.eval_every;
  o.eval_batches = job.eval_batches;
  o.save_every = job.save_every;
  o.log_every = job.log_every;
  o.stop_after = job.stop_after;
  o.time_budget = job.time_budget;
  o.threads = job.threads;
  o.resume = job.resume;
  o.sequential = job.sequential;
  o.quiet = job.quiet;
  return o;
}

TrainJobResult train_job_result(const train::TrainResult& r) {
  TrainJobResult out;
  out.first_step = r.first_step;
  out.last_step = r.last_step;
  out.last_loss = r.last_loss;
  out.last_val_loss = r.last_val_loss;
  out.tokens_per_s = r.tokens_per_s;
  out.interrupted = r.interrupted;
  out.peak_memory_bytes = r.peak_rss_bytes;
  return out;
}

TrainJobResult run_train_job(const TrainJob& job, const std::set<std::string>& given) {
  return train_job_result(train::run_training(train_options(job), given));
}

}  // namespace qwen::api
