// bench/bench_q8_rows.cpp — the Q8_0 matmul at small and prefill row counts: the multi-row
// integer kernel (gguf::q8_0_matmul_act16, what ops::q8_0_matmul runs) against the dequantise +
// f32 GEMM path it replaced (ops::q8_0_matmul_dequant) and M separate act16 matvecs, on the
// 124.7M model's shapes. Weights fit the L3 at these sizes except the lm_head (32000 x 768,
// 26 MB); the paths alternate rep by rep and the median is printed (µs per call and GFLOP/s,
// 2·M·N·K flops).
// Usage: bench_q8_rows [--reps N] [--threads N] [--ms 1,2,4,...]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/q8_0.h"
#include "ops/quant_gguf.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 7, threads = 0;
  std::vector<int64_t> ms = {1, 2, 4, 8, 16, 48, 128, 512};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--ms" && i + 1 < argc) {
      ms.clear();
      std::stringstream ss(argv[++i]);
      std::string t;
      while (std::getline(ss, t, ',')) ms.push_back(std::atoll(t.c_str()));
    } else {
      std::fprintf(stderr, "usage: bench_q8_rows [--reps N] [--threads N] [--ms 1,2,4,...]\n");
      return 2;
    }
  }
  if (threads > 0) qwen::set_num_threads(threads);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {768, 768}, {256, 768}, {2048, 768}, {768, 2048}, {32000, 768}};
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::printf("threads %d, reps %d (median)\n", qwen::num_threads(), reps);
  std::printf("%-12s %5s | %12s %8s | %12s %8s | %12s %8s | %7s\n", "N x K", "M", "int us",
              "GFLOP/s", "deq+gemm us", "GFLOP/s", "M matvec us", "GFLOP/s", "deq/int");
  for (auto [N, K] : shapes) {
    std::vector<float> w(size_t(N * K));
    for (auto& v : w) v = nd(rng) * 0.05f;
    std::vector<uint8_t> W(size_t(N * K / 32 * 34));
    qwen::ops::q8_0_quantize(w.data(), W.data(), N * K);
    for (int64_t M : ms) {
      std::vector<float> X(size_t(M * K)), Y(size_t(M * N));
      for (auto& v : X) v = nd(rng);
      const double flop = 2.0 * double(M) * double(N) * double(K);
      // Calls per timed sample: about 20 ms of work at 50 GFLOP/s, at least one.
      const int inner = int(std::max(1.0, 1e9 / flop));
      std::vector<double> t_int, t_deq, t_mv;
      auto time = [&](auto&& f) {
        const auto t0 = Clock::now();
        for (int i = 0; i < inner; ++i) f();
        return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / inner;
      };
      for (int r = 0; r < reps + 1; ++r) {
        const double a = time([&] { qwen::ops::gguf::q8_0_matmul_act16(X.data(), W.data(), Y.data(), M, N, K, false); });
        const double b = time([&] { qwen::ops::q8_0_matmul_dequant(X.data(), W.data(), Y.data(), M, N, K, false); });
        const double c = M > 16 ? 0.0 : time([&] {
          for (int64_t m = 0; m < M; ++m)
            qwen::ops::q8_0_matvec(W.data(), X.data() + m * K, Y.data() + m * N, N, K, false);
        });
        if (r == 0) continue;  // warm-up
        t_int.push_back(a), t_deq.push_back(b), t_mv.push_back(c);
      }
      const double a = median(t_int), b = median(t_deq), c = median(t_mv);
      char shape[32];
      std::snprintf(shape, sizeof shape, "%lldx%lld", (long long)N, (long long)K);
      std::printf("%-12s %5lld | %12.1f %8.1f | %12.1f %8.1f | ", shape, (long long)M, a,
                  flop / a * 1e-3, b, flop / b * 1e-3);
      if (c > 0) std::printf("%12.1f %8.1f | ", c, flop / c * 1e-3);
      else std::printf("%12s %8s | ", "-", "-");
      std::printf("%7.2f\n", b / a);
      std::fflush(stdout);
    }
  }
  return 0;
}
