// train/optim.h — the optimiser side of training: AdamW with decoupled weight decay (the update
// torch.optim.AdamW computes, bias corrections included), global-norm gradient clipping (as
// torch.nn.utils.clip_grad_norm_), and learning-rate schedules (linear warm-up, then constant or
// cosine decay).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/train_model.h"

namespace qwen::train {

struct AdamWOptions {
  // Doubles, as torch holds them (Python floats); the update itself runs in float32.
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // applied only to parameters with Param::decay
};

// One AdamW state over a flat parameter buffer laid out as `params` describe. Per step t (1-based)
// and element, exactly as torch.optim.AdamW (single-tensor path):
//   w ← w·(1 − lr·wd)            (decay parameters only)
//   m ← m + (1 − β1)·(g − m)     v ← β2·v + (1 − β2)·g²
//   w ← w − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + eps)
class AdamW {
 public:
  AdamW(const std::vector<Param>& params, int64_t n_total, AdamWOptions opt = {});
  // One update of w (n_total floats) from g with learning rate lr; increments step().
  void step(float* w, const float* g, double lr);

  const AdamWOptions& options() const { return opt_; }
  void set_options(const AdamWOptions& o) { opt_ = o; }
  int64_t step_count() const { return t_; }
  int64_t size() const { return int64_t(m_.size()); }
  // State access for checkpoints.
  std::vector<float>& exp_avg() { return m_; }
  std::vector<float>& exp_avg_sq() { return v_; }
  const std::vector<float>& exp_avg() const { return m_; }
  const std::vector<float>& exp_avg_sq() const { return v_; }
  void set_step_count(int64_t t) { t_ = t; }

  // optimizer.safetensors: "exp_avg.<name>" and "exp_avg_sq.<name>" per parameter (F32, the
  // parameter's shape) and the step count, betas, eps and weight decay in the metadata. Atomic.
  void save(const std::string& path) const;
  // Restores m, v and the step count; throws qwen::Error if the file does not match the params.
  void load(const std::string& path);

 private:
  std::vector<Param> params_;
  AdamWOptions opt_;
  std::vector<float> m_, v_;
  int64_t t_ = 0;
};

// The global L2 norm of g (n floats), accumulated in double.
double grad_norm(const float* g, int64_t n);

// torch.nn.utils.clip_grad_norm_: returns the norm before clipping; if max_norm > 0 multiplies g
// by min(1, max_norm / (norm + 1e-6)).
double clip_grad_norm(float* g, int64_t n, double max_norm);

enum class LrSchedule { kConstant, kCosine };

// "constant" | "cosine"; throws qwen::Error otherwise.
LrSchedule parse_lr_schedule(const std::string& s);
const char* lr_schedule_name(LrSchedule s);

struct LrScheduleOptions {
  LrSchedule kind = LrSchedule::kCosine;
  double lr = 3e-4;           // peak learning rate
  int64_t warmup = 0;         // warm-up steps
  int64_t total_steps = 1;    // the length of the cosine
  double min_lr_ratio = 0.0;  // cosine floor as a fraction of lr
};

// Learning rate of step s (0-based: the s-th update), as transformers'
// get_cosine_schedule_with_warmup / get_constant_schedule_with_warmup compute it (the multiplier
// is evaluated after s scheduler steps):
//   s < warmup:  lr · s / warmup                 (so the very first update has lr 0)
//   constant:    lr
//   cosine:      lr · (r + (1 − r) · max(0, (1 + cos(π · p)) / 2)),  p = (s − warmup) / max(1,
//                total_steps − warmup) (held at 1 past the end, where transformers' curve
//                would rise again), r = min_lr_ratio (0 in transformers)
double lr_at(const LrScheduleOptions& o, int64_t s);

}  // namespace qwen::train
