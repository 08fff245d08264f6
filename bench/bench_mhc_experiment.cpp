// bench/bench_mhc_experiment.cpp — summarises the baseline / HC / mHC training runs of the
// experiment in docs/mhc.md: reads each run's metrics.jsonl (from `qwen train`), loads its final
// checkpoint and measures the Amax gain of the residual mixing over depth (single sites and the
// composite from each site to the top, per token then averaged) on the first --tokens ids of the
// data's validation split, then writes SVG charts and prints one summary line per run.
//
//   bench_mhc_experiment --data DATA_DIR --svg OUT_DIR [--tokens 64] [--prefix NAME]
//                        LABEL=RUN_DIR [LABEL=RUN_DIR ...]
// Charts: PREFIX_val_loss.svg, PREFIX_train_loss.svg, PREFIX_grad_norm.svg, PREFIX_amax.svg.
// A loss spike is a step whose loss exceeds the mean of the 10 steps before it by > 0.25 nats.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"
#include "qwen/error.h"
#include "train/data.h"
#include "train/plot.h"
#include "train/train_model.h"

namespace fs = std::filesystem;
using qwen::train::PlotSeries;

int main(int argc, char** argv) try {
  std::string data, svg_dir, prefix = "mhc";
  int64_t T = 64;
  std::vector<std::pair<std::string, std::string>> runs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw qwen::Error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--data") data = next();
    else if (a == "--svg") svg_dir = next();
    else if (a == "--tokens") T = std::atoll(next().c_str());
    else if (a == "--prefix") prefix = next();
    else if (a.find('=') != std::string::npos)
      runs.push_back({a.substr(0, a.find('=')), a.substr(a.find('=') + 1)});
    else
      throw qwen::Error("unknown argument '" + a + "'; see the header of bench_mhc_experiment.cpp");
  }
  if (data.empty() || svg_dir.empty() || runs.empty())
    throw qwen::Error("usage: bench_mhc_experiment --data DATA_DIR --svg OUT_DIR LABEL=RUN_DIR ...");
  const auto meta = qwen::train::DataMeta::load(data);
  auto shard = qwen::train::Shard::open((fs::path(data) / meta.val_shards.at(0)).string());
  if (shard->size() < T) throw qwen::Error("validation split has fewer than --tokens ids");
  std::vector<int32_t> tok(static_cast<size_t>(T));
  shard->read(0, T, tok.data());
  fs::create_directories(svg_dir);

  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
                                 "#e377c2", "#7f7f7f", "#17becf"};
  std::vector<PlotSeries> val, train, gnorm, amax;
  std::printf("%-16s %9s %9s %9s %10s %7s %11s %11s %11s\n", "run", "val_last", "val_min",
              "loss_last", "max_gnorm", "spikes", "fwd_comp", "bwd_comp", "bwd_single");
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto& [label, dir] = runs[r];
    const std::string color = colors[r % 9];
    PlotSeries v{label, color, {}, true}, tr{label, color, {}, false}, g{label, color, {}, false};
    std::ifstream f(fs::path(dir) / "metrics.jsonl");
    if (!f) throw qwen::Error(dir + "/metrics.jsonl cannot be read");
    std::string line;
    std::vector<double> losses;
    double max_g = 0;
    int spikes = 0;
    while (std::getline(f, line)) {
      if (line.empty()) continue;
      const auto j = nlohmann::json::parse(line);
      const std::string type = j.value("type", "");
      if (type == "train") {
        const double step = j["step"].get<double>(), loss = j["loss"].get<double>(),
                     gn = j["grad_norm"].get<double>();
        if (losses.size() >= 10) {
          double m = 0;
          for (size_t k = losses.size() - 10; k < losses.size(); ++k) m += losses[k];
          if (loss > m / 10 + 0.25) ++spikes;
        }
        losses.push_back(loss);
        tr.xy.push_back({step, loss});
        g.xy.push_back({step, gn});
        max_g = std::max(max_g, gn);
      } else if (type == "eval") {
        v.xy.push_back({j["step"].get<double>(), j["val_loss"].get<double>()});
      }
    }
    double vmin = 1e300;
    for (auto& p : v.xy) vmin = std::min(vmin, p.second);
    auto model = qwen::Model::load((fs::path(dir) / "checkpoint").string());
    double fwd = 1, bwd = 1, bwd1 = 1;
    if (model->config().use_mhc) {
      qwen::train::TrainModel tm(*model);
      const auto gp = tm.mhc_amax_gains(tok.data(), T);
      PlotSeries cf{label + " composite fwd", color, {}, false};
      PlotSeries cb{label + " composite bwd", color, {}, true};
      fwd = bwd = bwd1 = 0;
      for (size_t l = 0; l < gp.composite.size(); ++l) {
        cf.xy.push_back({double(l), gp.composite[l].forward});
        cb.xy.push_back({double(l), gp.composite[l].backward});
        fwd = std::max(fwd, gp.composite[l].forward);
        bwd = std::max(bwd, gp.composite[l].backward);
        bwd1 = std::max(bwd1, gp.single[l].backward);
      }
      amax.push_back(cf);
      amax.push_back(cb);
      // How far the learned mixing is from uniform J/n (mHC's init) and from I (HC's init).
      const std::vector<float> h = tm.mhc_h_res(tok.data(), T);
      const int64_t n = model->config().mhc_num_streams;
      double diag = 0, dev = 0;
      for (size_t k = 0; k < h.size() / size_t(n * n); ++k)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < n; ++j) {
            const double x = h[k * size_t(n * n) + size_t(i * n + j)];
            if (i == j) diag += x;
            dev = std::max(dev, std::fabs(x - 1.0 / double(n)));
          }
      std::printf("  %s: mean H_res diagonal %.4f (uniform %.4f), max |H_res - 1/n| %.4f\n",
                  label.c_str(), diag / double(h.size() / size_t(n)), 1.0 / double(n), dev);
      std::printf("  %s per site (single fwd/bwd | composite fwd/bwd | min col sum):\n", label.c_str());
      for (size_t l = 0; l < gp.composite.size(); ++l)
        std::printf("    site %2zu  %.6f %.6f | %.6f %.6f | %.6f\n", l, gp.single[l].forward,
                    gp.single[l].backward, gp.composite[l].forward, gp.composite[l].backward,
                    gp.composite[l].min_col_sum);
    }
    std::printf("%-16s %9.4f %9.4f %9.4f %10.3f %7d %11.4f %11.4f %11.4f\n", label.c_str(),
                v.xy.empty() ? NAN : v.xy.back().second, vmin,
                losses.empty() ? NAN : losses.back(), max_g, spikes, fwd, bwd, bwd1);
    val.push_back(v);
    train.push_back(tr);
    gnorm.push_back(g);
  }
  auto write = [&](const std::string& name, const std::string& svg) {
    std::ofstream((fs::path(svg_dir) / (prefix + "_" + name + ".svg")).string()) << svg;
  };
  write("val_loss", qwen::train::line_chart_svg(val, "validation loss", "step", "loss (nats)"));
  write("train_loss", qwen::train::line_chart_svg(train, "training loss", "step", "loss (nats)"));
  write("grad_norm",
        qwen::train::line_chart_svg(gnorm, "gradient norm (before clipping)", "step", "global norm"));
  if (!amax.empty())
    write("amax", qwen::train::line_chart_svg(
                      amax, "Amax gain of H_res composite from site l to the top (dots: backward)",
                      "sub-layer site l", "gain"));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
