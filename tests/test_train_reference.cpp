// tests/test_train_reference.cpp — a training step against Hugging Face transformers + PyTorch
// (tests/data/train/gen_reference.py, float64): on the same initial weights and batch, the loss
// and every parameter's gradient norm agree to 1e-4 (relative), with activation recomputation
// off and on and with the batch split into micro-batches of unequal target counts (gradient
// accumulation); and ten steps of our trainer (train_step: clipping, AdamW, the cosine warm-up
// schedule) give the same loss before every step and after the last.
#include <gtest/gtest.h>

#include <cmath>

#include "core/cpu.h"
#include "model/model.h"
#include "test_util.h"
#include "train/optim.h"
#include "train/train_model.h"
#include "train/trainer.h"

using namespace qwen_test;
using namespace qwen::train;

namespace {

struct Case {
  nlohmann::json ref;
  std::unique_ptr<qwen::Model> init;
  std::vector<int32_t> tokens, targets;  // (B, T)
  int64_t B = 0, T = 0;

  explicit Case(const std::string& name) {
    const std::string dir = data_path("train/" + name);
    ref = read_json(dir + "/reference.json");
    init = qwen::Model::load(dir);
    for (const auto& row : ref["tokens"]) {
      for (const auto& t : row) tokens.push_back(t.get<int32_t>());
      ++B;
    }
    for (const auto& row : ref["targets"])
      for (const auto& t : row) targets.push_back(t.get<int32_t>());
    T = int64_t(tokens.size()) / B;
  }
};

double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

// Gradient norm of one parameter in the flat buffer.
double param_grad_norm(const TrainModel& m, const Param& p) {
  double s = 0;
  for (int64_t i = 0; i < p.numel; ++i) {
    const double g = m.grad_data()[p.offset + i];
    s += g * g;
  }
  return std::sqrt(s);
}

void check_gradients(const Case& c, TrainModel& m, const std::vector<int64_t>& split) {
  // Micro-batches of split[k] rows; grad_scale = 1 / the total count over all of them.
  std::vector<const int32_t*> tk, tg;
  m.zero_grad();
  int64_t total = 0;
  for (int32_t t : c.targets) total += t >= 0;
  ASSERT_EQ(total, c.ref["n_counted"].get<int64_t>());
  double sum = 0;
  int64_t counted = 0, row = 0;
  for (int64_t rows : split) {
    int64_t n = 0;
    sum += m.forward_backward(c.tokens.data() + row * c.T, c.targets.data() + row * c.T, rows, c.T,
                              float(1.0 / double(total)), &n);
    counted += n;
    row += rows;
  }
  ASSERT_EQ(row, c.B);
  EXPECT_EQ(counted, total);
  EXPECT_LE(rel(sum / double(total), c.ref["loss"].get<double>()), 1e-4)
      << sum / double(total) << " vs " << c.ref["loss"].get<double>();
  const auto& want = c.ref["grad_norms"];
  EXPECT_EQ(m.params().size(), want.size());
  for (const Param& p : m.params()) {
    ASSERT_TRUE(want.contains(p.name)) << p.name << " is not a parameter of the reference";
    const double w = want[p.name].get<double>();
    EXPECT_LE(rel(param_grad_norm(m, p), w), 1e-4) << p.name << ": " << param_grad_norm(m, p) << " vs " << w;
    EXPECT_EQ(p.decay, c.ref["decay"][p.name].get<bool>()) << p.name;
  }
  EXPECT_LE(rel(grad_norm(m.grad_data(), m.n_params()), c.ref["grad_norm_total"].get<double>()), 1e-4);
}

void run_case(const std::string& name) {
  Case c(name);
  ASSERT_EQ(c.B, 2);
  // The second row has ignored targets, so the micro-batches count different numbers of
  // targets: averaging per micro-batch would not give the reference.
  for (bool recompute : {false, true}) {
    SCOPED_TRACE(recompute ? "recompute" : "no recompute");
    TrainModelOptions mo;
    mo.recompute = recompute;
    TrainModel m(*c.init, mo);
    check_gradients(c, m, {2});
    check_gradients(c, m, {1, 1});
  }

  // Ten steps of the trainer's own step function on the fixed batch (one thread: quick even on
  // a busy machine; the gradients above ran on the default thread count).
  const int threads = qwen::num_threads();
  qwen::set_num_threads(1);
  const auto& o = c.ref["optimizer"];
  TrainModel m(*c.init);
  AdamWOptions ao;
  ao.beta1 = o["beta1"].get<double>();
  ao.beta2 = o["beta2"].get<double>();
  ao.eps = o["eps"].get<double>();
  ao.weight_decay = o["weight_decay"].get<double>();
  AdamW opt(m.params(), m.n_params(), ao);
  LrScheduleOptions so;
  so.kind = parse_lr_schedule(o["schedule"].get<std::string>());
  so.lr = o["lr"].get<double>();
  so.warmup = o["warmup"].get<int64_t>();
  so.total_steps = o["steps"].get<int64_t>();
  const auto want_losses = c.ref["step_losses"].get<std::vector<double>>();
  const auto want_norms = c.ref["step_grad_norms"].get<std::vector<double>>();
  const auto want_lrs = c.ref["step_lrs"].get<std::vector<double>>();
  const int64_t steps = so.total_steps;
  ASSERT_EQ(int64_t(want_losses.size()), steps + 1);
  for (int64_t s = 0; s < steps; ++s) {
    const double lr = lr_at(so, s);
    EXPECT_NEAR(lr, want_lrs[size_t(s)], 1e-12 * so.lr) << "lr of step " << s;
    // Accumulate over two micro-batches of one row each.
    StepStats st = train_step(m, opt, {c.tokens.data(), c.tokens.data() + c.T},
                              {c.targets.data(), c.targets.data() + c.T}, 1, c.T, lr,
                              o["clip_grad_norm"].get<double>());
    ASSERT_TRUE(st.finite);
    EXPECT_LE(rel(st.loss, want_losses[size_t(s)]), 1e-4)
        << "step " << s << ": " << st.loss << " vs " << want_losses[size_t(s)];
    EXPECT_LE(rel(st.grad_norm, want_norms[size_t(s)]), 1e-4) << "grad norm of step " << s;
  }
  int64_t n = 0;
  const double final_loss = m.forward_loss(c.tokens.data(), c.targets.data(), c.B, c.T, &n) / double(n);
  EXPECT_LE(rel(final_loss, want_losses.back()), 1e-4) << final_loss << " vs " << want_losses.back();
  qwen::set_num_threads(threads);
  // The run moved: the check is not satisfied by a model that does not learn.
  EXPECT_LT(want_losses.back(), 0.5 * want_losses.front());
}

}  // namespace

TEST(TrainReference, Qwen2GqaBias) { run_case("qwen2_gqa_bias"); }
TEST(TrainReference, Qwen2Tied) { run_case("qwen2_tied"); }
TEST(TrainReference, Qwen3QkNorm) { run_case("qwen3_qknorm"); }
