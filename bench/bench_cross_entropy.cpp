// bench/bench_cross_entropy.cpp — the fused lm_head + cross-entropy (forward and backward)
// against the materialised way (full (N, V) logits, softmax per row, then the two gradient
// GEMMs), with the scratch memory each needs, and the blockings of cross_entropy_fused_plan side
// by side (kept (row_block, V) tile vs chunked vocabulary with recomputed logits), to choose the
// automatic plan. Times are medians; GFLOP/s counts the three useful products (6·N·V·C flops),
// so a plan that recomputes the logits shows its extra work as a lower rate.
//
//   bench_cross_entropy [--N 2048] [--C 768] [--V 32000] [--reps 3] [--sweep] [--only]
//                       [--plan ROWS,CHUNK]...
// Default: the materialised way, the automatic plan, and a grid of kept-tile and recomputing
// plans. --plan adds a blocking (repeatable); --only skips the grid. --sweep runs
// V ∈ {8192, 32000} × C ∈ {256, 512, 768} (several minutes).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"

namespace {

using qwen::ops::CrossEntropyPlan;

double seconds_median(const std::function<void()>& fn, int reps) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Full logits (N, V) in memory: logits GEMM, softmax and G per row, dh += G·W, dW += Gᵀ·h.
double materialised(const float* h, const float* W, const int32_t* t, int64_t N, int64_t C,
                    int64_t V, float gs, float* dh, float* dW, std::vector<float>& L) {
  L.resize(size_t(N * V));
  qwen::ops::gemm_f32(false, true, N, V, C, 1.0f, h, C, W, C, 0.0f, L.data(), V);
  std::vector<double> loss(size_t(N), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    float* row = L.data() + i * V;
    if (t[i] < 0) {
      std::fill(row, row + V, 0.0f);
      continue;
    }
    qwen::ops::softmax_inplace(row, V);
    loss[size_t(i)] = -std::log(double(row[t[i]]));  // lse − l_t = −log p_t
    for (int64_t v = 0; v < V; ++v) row[v] *= gs;
    row[t[i]] -= gs;
  }
  qwen::ops::gemm_f32(false, false, N, C, V, 1.0f, L.data(), V, W, C, 1.0f, dh, C);
  qwen::ops::gemm_f32(true, false, V, C, N, 1.0f, L.data(), V, h, C, 1.0f, dW, C);
  double total = 0;
  for (double l : loss) total += l;
  return total;
}

struct Case {
  int64_t N, C, V;
};

void run_case(const Case& cs, int reps, bool all_plans, const std::vector<CrossEntropyPlan>& extra) {
  const int64_t N = cs.N, C = cs.C, V = cs.V;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> h(static_cast<size_t>(N * C)), W(size_t(V * C));
  for (auto& x : h) x = nd(rng);
  for (auto& x : W) x = nd(rng) / std::sqrt(float(C));
  std::vector<int32_t> t(static_cast<size_t>(N));
  for (auto& x : t) x = int32_t(rng() % uint32_t(V));
  const float gs = 1.0f / float(N);
  std::vector<float> dh(static_cast<size_t>(N * C)), dW(size_t(V * C));
  const double gflop = 6.0 * double(N) * double(V) * double(C) * 1e-9;
  std::printf("\nN = %lld, C = %lld, V = %lld, %d threads, %d reps (median)\n", (long long)N,
              (long long)C, (long long)V, qwen::num_threads(), reps);
  std::printf("%-34s %9s %9s %12s %14s\n", "method", "time s", "GFLOP/s", "scratch MiB",
              "loss/N");

  std::vector<float> L;
  double loss_m = 0;
  {
    const double s = seconds_median([&] {
      loss_m = materialised(h.data(), W.data(), t.data(), N, C, V, gs, dh.data(), dW.data(), L);
    }, reps);
    std::printf("%-34s %9.3f %9.1f %12.1f %14.6f\n", "materialised (full logits)", s, gflop / s,
                double(N * V) * 4 / 1048576.0, loss_m / double(N));
    std::vector<float>().swap(L);
  }

  auto run_plan = [&](const std::string& name, const CrossEntropyPlan& p, bool grads) {
    double loss = 0;
    const double s = seconds_median([&] {
      loss = qwen::ops::cross_entropy_fused_plan(p, h.data(), W.data(), t.data(), N, C, V, gs,
                                                 grads ? dh.data() : nullptr,
                                                 grads ? dW.data() : nullptr, nullptr);
    }, reps);
    std::printf("%-34s %9.3f %9.1f %12.1f %14.6f\n", name.c_str(), s,
                (grads ? gflop : gflop / 3) / s,
                double(qwen::ops::cross_entropy_scratch_bytes(p, C, V)) / 1048576.0,
                loss / double(N));
  };
  const CrossEntropyPlan autop = qwen::ops::cross_entropy_plan(N, C, V);
  auto label = [](const char* what, const CrossEntropyPlan& p) {
    return std::string(what) + " rb " + std::to_string(p.row_block) + " vc " +
           std::to_string(p.vocab_chunk);
  };
  run_plan(label("fused auto", autop), autop, true);
  run_plan(label("loss only", autop), autop, false);
  for (const CrossEntropyPlan& p : extra)
    run_plan(label(p.vocab_chunk >= V ? "tile" : "recompute", p), p, true);
  if (!all_plans) return;
  for (int64_t rb : {64, 128, 256, 512, 1024})
    if (rb * V <= (int64_t(16) << 20)) run_plan(label("tile", {rb, V}), {rb, V}, true);
  for (int64_t rb : {256, 1024, 2048})
    for (int64_t vc : {1024, 2048, 4096})
      if (vc < V && rb * vc <= (int64_t(8) << 20)) run_plan(label("recompute", {rb, vc}), {rb, vc}, true);
}

}  // namespace

int main(int argc, char** argv) {
  Case c{2048, 768, 32000};
  int reps = 3;
  bool sweep = false, only = false;
  std::vector<CrossEntropyPlan> extra;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> long long {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_cross_entropy: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (a == "--N") c.N = next();
    else if (a == "--C") c.C = next();
    else if (a == "--V") c.V = next();
    else if (a == "--reps") reps = int(next());
    else if (a == "--sweep") sweep = true;
    else if (a == "--only") only = true;
    else if (a == "--plan" && i + 1 < argc) {
      long long rb = 0, vc = 0;
      if (std::sscanf(argv[++i], "%lld,%lld", &rb, &vc) != 2 || rb <= 0 || vc <= 0) {
        std::fprintf(stderr, "bench_cross_entropy: --plan wants ROWS,CHUNK (two positive numbers)\n");
        return 2;
      }
      extra.push_back({int64_t(rb), int64_t(vc)});
    }
    else {
      std::fprintf(stderr,
                   "usage: bench_cross_entropy [--N n] [--C c] [--V v] [--reps r] [--sweep] "
                   "[--only] [--plan ROWS,CHUNK]...\n");
      return 2;
    }
  }
  if (!sweep) {
    run_case(c, reps, !only, extra);
    return 0;
  }
  for (int64_t V : {8192, 32000})
    for (int64_t C : {256, 512, 768}) run_case({c.N, C, V}, reps, !only, extra);
  return 0;
}
