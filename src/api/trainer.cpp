// api/trainer.cpp — qwen::Trainer (include/qwen/trainer.h): the library's "train in your own code"
// path over train::TrainModel (full or LoRA), train::AdamW, the schedule and train::train_step.
// Windows for fit() are drawn here from an in-memory id sequence; `qwen train` uses token shards
// and checkpoints instead (qwen/train_job.h).
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include "api/bridge.h"

namespace qwen::api {

namespace {

// What a Model view of the trainer keeps alive.
struct TrainState {
  std::shared_ptr<Model::Impl> base;            // LoRA: the frozen base (maybe an NF4 copy)
  std::unique_ptr<train::LoraAdapter> adapter;  // LoRA: the adapter being trained
  std::unique_ptr<train::TrainModel> tm;
};

train::TrainModelOptions model_options(const TrainConfig& c) {
  train::TrainModelOptions o;
  o.recompute = c.recompute;
  return o;
}

}  // namespace

struct Trainer::Impl {
  TrainConfig tc;
  std::shared_ptr<TrainState> st;
  std::unique_ptr<train::AdamW> opt;
  train::LrScheduleOptions sched;
  int64_t steps_done = 0;
  Rng rng;

  explicit Impl(const TrainConfig& c) : tc(c), st(std::make_shared<TrainState>()), rng(c.seed) {
    if (c.steps < 1 || c.batch < 1 || c.seq < 1 || c.grad_accum < 1)
      throw Error("TrainConfig: steps, batch, seq and grad_accum must each be at least 1");
    if (!(c.lr > 0)) throw Error("TrainConfig: lr must be > 0");
    if (c.warmup < 0) throw Error("TrainConfig: warmup must be >= 0");
    sched.kind = train::parse_lr_schedule(c.lr_schedule);
    sched.lr = c.lr;
    sched.warmup = c.warmup;
    sched.total_steps = c.steps;
    sched.min_lr_ratio = c.min_lr_ratio;
  }
  void make_optimizer() {
    train::AdamWOptions o;
    o.beta1 = tc.beta1;
    o.beta2 = tc.beta2;
    o.eps = tc.adam_eps;
    o.weight_decay = tc.weight_decay;
    opt = std::make_unique<train::AdamW>(st->tm->params(), st->tm->n_params(), o);
  }
  void check_ids(const std::vector<int32_t>& v, const char* what) const {
    const int64_t V = st->tm->config().vocab_size;
    for (int32_t id : v)
      if (id < 0 || id >= V)
        throw Error(std::string("Trainer: ") + what + " holds id " + std::to_string(id) +
                    ", outside the vocabulary of " + std::to_string(V));
  }
  StepResult run_step(const std::vector<const int32_t*>& tk, const std::vector<const int32_t*>& tg,
                      int64_t B, int64_t T) {
    const auto t0 = std::chrono::steady_clock::now();
    StepResult r;
    r.step = steps_done + 1;
    r.lr = train::lr_at(sched, steps_done);
    const train::StepStats s =
        train::train_step(*st->tm, *opt, tk, tg, B, T, r.lr, tc.clip_grad_norm);
    if (!s.finite)
      throw Error("Trainer: the loss or gradient is not finite at step " + std::to_string(r.step) +
                  " (weights unchanged); lower lr or raise warmup");
    if (st->tm->is_lora()) st->tm->sync_adapter();  // model() views see the new adapter
    ++steps_done;
    r.loss = s.loss;
    r.grad_norm = s.grad_norm;
    r.tokens = s.n_counted;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }
};

Trainer::Trainer(const ModelConfig& config, uint64_t seed, const TrainConfig& train)
    : impl_(std::make_unique<Impl>(train)) {
  impl_->st->tm = std::make_unique<train::TrainModel>(config, seed, model_options(train));
  impl_->make_optimizer();
}

Trainer::Trainer(const Model& init, const TrainConfig& train) : impl_(std::make_unique<Impl>(train)) {
  if (init.has_adapter())
    throw Error("Trainer: the model has an attached adapter; train merged() or use the LoRA "
                "constructor on the base");
  impl_->st->tm = std::make_unique<train::TrainModel>(core(init), model_options(train));
  impl_->make_optimizer();
}

Trainer::Trainer(const Model& base, const LoraConfig& lora, const TrainConfig& train)
    : impl_(std::make_unique<Impl>(train)) {
  if (base.has_adapter())
    throw Error("Trainer: the base model has an adapter attached already; load the base alone");
  train::LoraConfig lc;
  lc.r = lora.rank;
  lc.alpha = lora.alpha;
  lc.dropout = lora.dropout;
  lc.rslora = lora.rslora;
  lc.targets = lora.targets;
  lc.validate();
  TrainState& st = *impl_->st;
  if (lora.nf4_base && base.weight_type() != WeightType::NF4)
    st.base = quantize(base, WeightType::NF4).impl();
  else
    st.base = base.impl();
  core(base);
  st.adapter = train::LoraAdapter::create(st.base->m->config(), lc, lora.seed);
  st.tm = std::make_unique<train::TrainModel>(*st.base->m, *st.adapter, model_options(train));
  impl_->make_optimizer();
}

Trainer::~Trainer() = default;
Trainer::Trainer(Trainer&&) noexcept = default;
Trainer& Trainer::operator=(Trainer&&) noexcept = default;

StepResult Trainer::step(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                         int64_t batch, int64_t seq) {
  if (batch < 1 || seq < 1 || int64_t(tokens.size()) != batch * seq ||
      int64_t(targets.size()) != batch * seq)
    throw Error("Trainer::step: tokens and targets must each hold batch x seq = " +
                std::to_string(batch) + " x " + std::to_string(seq) + " ids (got " +
                std::to_string(tokens.size()) + " and " + std::to_string(targets.size()) + ")");
  impl_->check_ids(tokens, "tokens");
  return impl_->run_step({tokens.data()}, {targets.data()}, batch, seq);
}

StepResult Trainer::fit(const std::vector<int32_t>& ids, const StepCallback& on_step) {
  Impl& s = *impl_;
  const int64_t B = s.tc.batch, T = s.tc.seq, n = int64_t(ids.size());
  if (n < T + 1)
    throw Error("Trainer::fit: " + std::to_string(n) + " ids are fewer than seq + 1 = " +
                std::to_string(T + 1) + "; use more data or a shorter seq");
  s.check_ids(ids, "the training ids");
  const size_t per = size_t(B * T);
  std::vector<std::vector<int32_t>> tk(size_t(s.tc.grad_accum), std::vector<int32_t>(per)),
      tg(size_t(s.tc.grad_accum), std::vector<int32_t>(per));
  std::vector<const int32_t*> tkp, tgp;
  for (size_t k = 0; k < tk.size(); ++k) {
    tkp.push_back(tk[k].data());
    tgp.push_back(tg[k].data());
  }
  StepResult last;
  while (s.steps_done < s.tc.steps) {
    for (size_t k = 0; k < tk.size(); ++k)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t start = int64_t(s.rng.uniform() * double(n - T));  // window [start, start+T]
        for (int64_t t = 0; t < T; ++t) {
          tk[k][size_t(b * T + t)] = ids[size_t(start + t)];
          tg[k][size_t(b * T + t)] = ids[size_t(start + t + 1)];
        }
      }
    last = s.run_step(tkp, tgp, B, T);
    if (on_step && !on_step(last)) break;
  }
  return last;
}

StepResult Trainer::fit_text_file(const std::string& path, const Tokenizer& tokenizer,
                                  const StepCallback& on_step) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("Trainer::fit_text_file: cannot open '" + path + "'; check the path");
  std::stringstream ss;
  ss << f.rdbuf();
  return fit(tokenizer.encode(ss.str(), false), on_step);
}

double Trainer::evaluate(const std::vector<int32_t>& ids, int64_t max_batches) {
  Impl& s = *impl_;
  const int64_t B = s.tc.batch, T = s.tc.seq, n = int64_t(ids.size());
  if (n < T + 1)
    throw Error("Trainer::evaluate: " + std::to_string(n) + " ids are fewer than seq + 1 = " +
                std::to_string(T + 1));
  s.check_ids(ids, "the evaluation ids");
  const int64_t n_windows = std::min((n - 1) / T, B * std::max<int64_t>(1, max_batches));
  std::vector<int32_t> tk(size_t(B * T)), tg(size_t(B * T));
  double sum = 0;
  int64_t counted = 0;
  for (int64_t w0 = 0; w0 < n_windows; w0 += B) {
    const int64_t rows = std::min(B, n_windows - w0);
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t t = 0; t < T; ++t) {
        tk[size_t(b * T + t)] = ids[size_t((w0 + b) * T + t)];
        tg[size_t(b * T + t)] = ids[size_t((w0 + b) * T + t + 1)];
      }
    int64_t c = 0;
    sum += s.st->tm->forward_loss(tk.data(), tg.data(), rows, T, &c);
    counted += c;
  }
  return sum / double(std::max<int64_t>(1, counted));
}

Model Trainer::model() const {
  TrainState& st = *impl_->st;
  return wrap(st.tm->as_model(), impl_->st);
}

Model Trainer::merged_model() const {
  TrainState& st = *impl_->st;
  if (!st.tm->is_lora()) throw Error("Trainer::merged_model: only a LoRA trainer has an adapter to merge");
  st.tm->sync_adapter();
  return wrap(st.adapter->merge(*st.base->m), st.base);
}

void Trainer::save(const std::string& dir) const { impl_->st->tm->save(dir); }

int64_t Trainer::trainable_parameters() const { return impl_->st->tm->n_params(); }

int64_t Trainer::total_parameters() const {
  const TrainState& st = *impl_->st;
  return st.tm->n_params() + (st.base ? st.base->m->num_parameters() : 0);
}

int64_t Trainer::steps_done() const { return impl_->steps_done; }
bool Trainer::is_lora() const { return impl_->st->tm->is_lora(); }
const TrainConfig& Trainer::config() const { return impl_->tc; }

TrainMemory Trainer::memory() const {
  const TrainState& st = *impl_->st;
  TrainMemory m;
  m.frozen_weights = st.base ? st.base->m->weight_bytes() : 0;
  m.trainable = size_t(st.tm->n_params()) * 4 * sizeof(float);  // weight, gradient, m, v
  m.activations = st.tm->activation_bytes();
  return m;
}

}  // namespace qwen::api
