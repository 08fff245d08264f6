// train/optim.cpp — AdamW (torch's single-tensor update, float32 arithmetic in the same order),
// global-norm clipping and the learning-rate schedules. See optim.h.
#include "train/optim.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "core/cpu.h"
#include "io/safetensors.h"
#include "qwen/error.h"

namespace qwen::train {

AdamW::AdamW(const std::vector<Param>& params, int64_t n_total, AdamWOptions opt)
    : params_(params), opt_(opt), m_(size_t(n_total), 0.0f), v_(size_t(n_total), 0.0f) {
  for (const auto& p : params_) {
    (void)p;
    assert(p.offset >= 0 && p.offset + p.numel <= n_total);
  }
}

void AdamW::step(float* w, const float* g, double lr) {
  ++t_;
  // Scalars as torch computes them: Python doubles, cast to float where they meet a float tensor.
  const float lerp_w = float(1.0 - opt_.beta1);
  const float beta2 = float(opt_.beta2);
  const float one_minus_beta2 = float(1.0 - opt_.beta2);
  const double bc1 = 1.0 - std::pow(opt_.beta1, double(t_));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(opt_.beta2, double(t_)));
  const float neg_step = float(-(lr / bc1));
  const float bc2s = float(bc2_sqrt);
  const float eps = float(opt_.eps);
  const float decay_mul = float(1.0 - lr * opt_.weight_decay);
  float* m = m_.data();
  float* v = v_.data();
  const int64_t n_total = int64_t(m_.size());
  // One parallel region for all parameters (no barrier between them: they are disjoint).
#pragma omp parallel if (n_total > 32768) num_threads(num_threads())
  for (const Param& p : params_) {
    const bool decay = p.decay && opt_.weight_decay != 0.0;
    const int64_t b = p.offset, e = p.offset + p.numel;
#pragma omp for schedule(static) nowait
    for (int64_t i = b; i < e; ++i) {
      float wi = w[i];
      if (decay) wi = wi * decay_mul;
      const float gi = g[i];
      const float mi = m[i] + lerp_w * (gi - m[i]);
      const float vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      const float denom = std::sqrt(vi) / bc2s + eps;
      w[i] = wi + neg_step * mi / denom;
    }
  }
}

void AdamW::save(const std::string& path) const {
  std::vector<io::TensorToWrite> ts;
  ts.reserve(params_.size() * 2);
  for (const auto& p : params_) {
    ts.push_back({"exp_avg." + p.name, DType::F32, p.shape, m_.data() + p.offset});
    ts.push_back({"exp_avg_sq." + p.name, DType::F32, p.shape, v_.data() + p.offset});
  }
  char buf[64];
  auto num = [&](double x) {
    std::snprintf(buf, sizeof buf, "%.17g", x);
    return std::string(buf);
  };
  io::write_safetensors(path, ts,
                        {{"step", std::to_string(t_)},
                         {"beta1", num(opt_.beta1)},
                         {"beta2", num(opt_.beta2)},
                         {"eps", num(opt_.eps)},
                         {"weight_decay", num(opt_.weight_decay)}});
}

void AdamW::load(const std::string& path) {
  auto f = io::SafetensorsFile::open(path);
  auto it = f->metadata().find("step");
  if (it == f->metadata().end())
    throw Error("'" + path + "' has no optimiser step count in its metadata");
  int64_t t = 0;
  try {
    t = std::stoll(it->second);
  } catch (...) {
    throw Error("'" + path + "': optimiser step '" + it->second + "' is not a number");
  }
  for (const auto& p : params_) {
    for (int k = 0; k < 2; ++k) {
      const std::string name = (k == 0 ? "exp_avg." : "exp_avg_sq.") + p.name;
      const io::TensorInfo* ti = f->find(name);
      if (!ti) throw Error("'" + path + "' lacks optimiser tensor '" + name + "'");
      if (ti->dtype_name != "F32" || ti->shape != p.shape)
        throw Error("'" + path + "': optimiser tensor '" + name +
                    "' does not match the model's parameter (dtype or shape)");
      std::memcpy((k == 0 ? m_ : v_).data() + p.offset, ti->data, size_t(p.numel) * 4);
    }
  }
  t_ = t;
}

double grad_norm(const float* g, int64_t n) {
  // Fixed chunks summed in a fixed order: the same result for any thread count.
  const int64_t chunk = 1 << 16;
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  std::vector<double> part(size_t(std::max<int64_t>(n_chunks, 1)), 0.0);
#pragma omp parallel for schedule(static) if (n_chunks > 1) num_threads(num_threads())
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t b = c * chunk, e = std::min(n, b + chunk);
    double s = 0;
    for (int64_t i = b; i < e; ++i) s += double(g[i]) * double(g[i]);
    part[size_t(c)] = s;
  }
  double s = 0;
  for (double x : part) s += x;
  return std::sqrt(s);
}

double clip_grad_norm(float* g, int64_t n, double max_norm) {
  const double norm = grad_norm(g, n);
  if (max_norm > 0) {
    const double coef = std::min(1.0, max_norm / (norm + 1e-6));
    if (coef < 1.0) {
      const float c = float(coef);
#pragma omp parallel for schedule(static) if (n > 32768) num_threads(num_threads())
      for (int64_t i = 0; i < n; ++i) g[i] *= c;
    }
  }
  return norm;
}

LrSchedule parse_lr_schedule(const std::string& s) {
  if (s == "constant") return LrSchedule::kConstant;
  if (s == "cosine") return LrSchedule::kCosine;
  throw Error("--lr-schedule '" + s + "' is not one of constant, cosine");
}

const char* lr_schedule_name(LrSchedule s) {
  return s == LrSchedule::kConstant ? "constant" : "cosine";
}

double lr_at(const LrScheduleOptions& o, int64_t s) {
  if (s < o.warmup) return o.lr * double(s) / double(std::max<int64_t>(1, o.warmup));
  if (o.kind == LrSchedule::kConstant) return o.lr;
  const double p = std::min(
      1.0, double(s - o.warmup) / double(std::max<int64_t>(1, o.total_steps - o.warmup)));
  const double f = std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * p)));
  return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * f);
}

}  // namespace qwen::train
