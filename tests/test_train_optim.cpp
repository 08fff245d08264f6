// tests/test_train_optim.cpp — AdamW against the update written out by hand (two steps, decay and
// no-decay parameters, in double), the optimiser state round trip, global-norm clipping, the
// learning-rate schedules at hand-computed points, and the loss-curve SVG.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "qwen/error.h"
#include "test_util.h"
#include "train/optim.h"
#include "train/plot.h"

using namespace qwen_test;
using namespace qwen::train;

namespace {

std::vector<Param> two_params() {
  Param a;
  a.name = "model.layers.0.mlp.up_proj.weight";
  a.shape = {3, 5};
  a.offset = 0;
  a.numel = 15;
  a.decay = true;
  Param b;
  b.name = "model.norm.weight";
  b.shape = {7};
  b.offset = 15;
  b.numel = 7;
  b.decay = false;
  return {a, b};
}

}  // namespace

TEST(TrainAdamW, MatchesTheUpdateComputedByHand) {
  auto params = two_params();
  const int64_t n = 22;
  qwen::Rng rng(5);
  std::vector<float> w(n), g1(n), g2(n);
  for (auto& x : w) x = rng.normal();
  for (auto& x : g1) x = 0.3f * rng.normal();
  for (auto& x : g2) x = 0.3f * rng.normal();
  AdamWOptions o;
  o.beta1 = 0.8;
  o.beta2 = 0.99;
  o.eps = 1e-6;
  o.weight_decay = 0.5;
  AdamW opt(params, n, o);
  std::vector<float> got = w;
  const double lr1 = 0.05, lr2 = 0.02;
  opt.step(got.data(), g1.data(), lr1);
  opt.step(got.data(), g2.data(), lr2);
  EXPECT_EQ(opt.step_count(), 2);
  // By hand, in double: the AdamW paper's update with torch's bias corrections.
  for (int64_t i = 0; i < n; ++i) {
    const bool decay = i < 15;
    double wi = w[size_t(i)], m = 0, v = 0;
    const double gs[2] = {g1[size_t(i)], g2[size_t(i)]}, lrs[2] = {lr1, lr2};
    for (int t = 1; t <= 2; ++t) {
      const double g = gs[t - 1], lr = lrs[t - 1];
      if (decay) wi -= lr * 0.5 * wi;
      m = 0.8 * m + 0.2 * g;
      v = 0.99 * v + 0.01 * g * g;
      const double mhat = m / (1 - std::pow(0.8, t)), vhat = v / (1 - std::pow(0.99, t));
      wi -= lr * mhat / (std::sqrt(vhat) + 1e-6);
    }
    EXPECT_NEAR(got[size_t(i)], wi, 2e-6 * (1 + std::fabs(wi))) << "element " << i;
  }
  // A zero gradient moves nothing but decay parameters (which shrink by lr·wd).
  std::vector<float> w0 = {1.0f, 2.0f};
  Param p;
  p.name = "x";
  p.shape = {2};
  p.numel = 2;
  AdamW z({p}, 2, o);
  std::vector<float> zero = {0.0f, 0.0f};
  z.step(w0.data(), zero.data(), 0.1);
  EXPECT_FLOAT_EQ(w0[0], 1.0f * (1 - 0.1 * 0.5));
  EXPECT_FLOAT_EQ(w0[1], 2.0f * (1 - 0.1 * 0.5));
}

TEST(TrainAdamW, StateRoundTrip) {
  TempDir td;
  auto params = two_params();
  qwen::Rng rng(9);
  std::vector<float> w(22), g(22);
  for (auto& x : w) x = rng.normal();
  for (auto& x : g) x = rng.normal();
  AdamW a(params, 22);
  a.step(w.data(), g.data(), 0.01);
  a.step(w.data(), g.data(), 0.01);
  a.save(td.str("opt.safetensors"));
  AdamW b(params, 22);
  b.load(td.str("opt.safetensors"));
  EXPECT_EQ(b.step_count(), 2);
  EXPECT_EQ(a.exp_avg(), b.exp_avg());
  EXPECT_EQ(a.exp_avg_sq(), b.exp_avg_sq());
  // Continuing from the loaded state equals continuing the original.
  std::vector<float> wa = w, wb = w;
  a.step(wa.data(), g.data(), 0.01);
  b.step(wb.data(), g.data(), 0.01);
  EXPECT_EQ(wa, wb);
  // A state for other parameters is refused.
  auto other = params;
  other[1].shape = {6, 1};
  AdamW c(other, 22);
  EXPECT_THROW(c.load(td.str("opt.safetensors")), qwen::Error);
}

TEST(TrainClip, GlobalNorm) {
  std::vector<float> g = {3.0f, 4.0f, 0.0f, 12.0f};  // norm 13
  std::vector<float> keep = g;
  EXPECT_DOUBLE_EQ(grad_norm(g.data(), 4), 13.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(g.data(), 4, 0.0), 13.0);  // off
  EXPECT_EQ(g, keep);
  EXPECT_DOUBLE_EQ(clip_grad_norm(g.data(), 4, 20.0), 13.0);  // below the limit
  EXPECT_EQ(g, keep);
  EXPECT_DOUBLE_EQ(clip_grad_norm(g.data(), 4, 6.5), 13.0);
  const double c = 6.5 / (13.0 + 1e-6);
  for (size_t i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(g[i], float(keep[i] * c));
  EXPECT_NEAR(grad_norm(g.data(), 4), 6.5, 1e-5);
  // Many elements: the chunked double accumulation equals a plain sum.
  qwen::Rng rng(3);
  std::vector<float> big(300001);
  double s = 0;
  for (auto& x : big) {
    x = rng.normal();
    s += double(x) * x;
  }
  EXPECT_NEAR(grad_norm(big.data(), int64_t(big.size())), std::sqrt(s), 1e-9 * std::sqrt(s));
}

TEST(TrainSchedule, WarmupCosineAndConstant) {
  LrScheduleOptions o;
  o.kind = LrSchedule::kCosine;
  o.lr = 1e-3;
  o.warmup = 10;
  o.total_steps = 110;
  // Warm-up from 0: step s has lr·s/warmup (transformers' convention).
  EXPECT_DOUBLE_EQ(lr_at(o, 0), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(o, 5), 0.5e-3);
  EXPECT_DOUBLE_EQ(lr_at(o, 10), 1e-3);  // peak, cos(0)
  EXPECT_NEAR(lr_at(o, 60), 0.5e-3, 1e-15);  // half way: (1 + cos(pi/2))/2
  EXPECT_NEAR(lr_at(o, 35), 1e-3 * (1 + std::cos(M_PI / 4)) / 2, 1e-15);
  EXPECT_NEAR(lr_at(o, 110), 0.0, 1e-15);
  EXPECT_NEAR(lr_at(o, 200), 0.0, 1e-15);  // clamped past the end
  for (int64_t s = 11; s < 110; ++s) EXPECT_LT(lr_at(o, s), lr_at(o, s - 1));
  o.min_lr_ratio = 0.1;
  EXPECT_NEAR(lr_at(o, 60), 1e-4 + 0.9e-3 * 0.5, 1e-15);
  EXPECT_NEAR(lr_at(o, 110), 1e-4, 1e-15);
  o.kind = LrSchedule::kConstant;
  EXPECT_DOUBLE_EQ(lr_at(o, 5), 0.5e-3);
  EXPECT_DOUBLE_EQ(lr_at(o, 10), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(o, 1000), 1e-3);
  o.warmup = 0;
  EXPECT_DOUBLE_EQ(lr_at(o, 0), 1e-3);
  EXPECT_EQ(parse_lr_schedule("cosine"), LrSchedule::kCosine);
  EXPECT_EQ(parse_lr_schedule("constant"), LrSchedule::kConstant);
  EXPECT_THROW(parse_lr_schedule("linear"), qwen::Error);
}

TEST(TrainPlot, SvgHasAxesTicksAndSeries) {
  PlotSeries a{"train loss", "#1f77b4", {}, false}, b{"val <loss>", "#d62728", {}, true};
  for (int s = 1; s <= 50; ++s) a.xy.push_back({double(s), 8.0 / std::sqrt(double(s))});
  a.xy.push_back({51, NAN});  // skipped
  b.xy = {{10, 3.0}, {20, 2.5}, {30, 2.2}};
  const std::string svg = line_chart_svg({a, b}, "loss", "step", "loss (nats/token)");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  size_t n_poly = 0;
  for (size_t at = 0; (at = svg.find("<polyline", at)) != std::string::npos; ++at) ++n_poly;
  EXPECT_EQ(n_poly, 3u);  // axes + two series
  size_t n_circles = 0;
  for (size_t at = 0; (at = svg.find("<circle", at)) != std::string::npos; ++at) ++n_circles;
  EXPECT_EQ(n_circles, 3u);
  EXPECT_NE(svg.find("val &lt;loss&gt;"), std::string::npos);  // escaped
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  auto t = nice_ticks(0.93, 8.2, 6);
  ASSERT_GE(t.size(), 4u);
  EXPECT_GE(t.front(), 0.93);
  EXPECT_LE(t.back(), 8.2);
  const double step = t[1] - t[0];
  for (size_t i = 1; i < t.size(); ++i) EXPECT_NEAR(t[i] - t[i - 1], step, 1e-9);
  const double mant = step / std::pow(10.0, std::floor(std::log10(step)));
  EXPECT_TRUE(std::fabs(mant - 1) < 1e-9 || std::fabs(mant - 2) < 1e-9 || std::fabs(mant - 5) < 1e-9);
  // An empty chart still draws.
  EXPECT_NE(line_chart_svg({}, "t", "x", "y").find("</svg>"), std::string::npos);
}
