// bench/bench_nf4_rows.cpp — the NF4 matmul at small and prefill row counts: the multi-row 8-bit
// integer kernel (ops::nf4_matmul_act8, what ops::nf4_matmul runs for M >= 2) against the
// dequantise + f32 GEMM path it replaced (ops::nf4_matmul_dequant) and M separate 8-bit matvecs,
// on the 124.7M model's NF4 shapes (q/o 768x768, k/v 256x768, gate/up 2048x768, down 768x2048;
// lm_head stays in float in bitsandbytes folders). The matrices have f32 absmax, as inference
// loads them (--dq: double-quantised, as a QLoRA base). The paths alternate rep by rep and the
// median is printed (µs per call and GFLOP/s, 2·M·N·K flops).
// Usage: bench_nf4_rows [--reps N] [--threads N] [--ms 1,2,4,...] [--dq]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/nf4.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 7, threads = 0;
  bool dq = false;
  std::vector<int64_t> ms = {1, 2, 4, 8, 16, 48, 128, 512};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--dq") dq = true;
    else if (a == "--ms" && i + 1 < argc) {
      ms.clear();
      std::stringstream ss(argv[++i]);
      std::string t;
      while (std::getline(ss, t, ',')) ms.push_back(std::atoll(t.c_str()));
    } else {
      std::fprintf(stderr, "usage: bench_nf4_rows [--reps N] [--threads N] [--ms 1,2,4,...] [--dq]\n");
      return 2;
    }
  }
  if (threads > 0) qwen::set_num_threads(threads);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{768, 768}, {256, 768}, {2048, 768}, {768, 2048}};
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::printf("threads %d, reps %d (median), absmax %s\n", qwen::num_threads(), reps,
              dq ? "double-quantised" : "f32");
  std::printf("%-12s %5s | %12s %8s | %12s %8s | %12s %8s | %7s\n", "N x K", "M", "int us",
              "GFLOP/s", "deq+gemm us", "GFLOP/s", "M matvec us", "GFLOP/s", "deq/int");
  for (auto [N, K] : shapes) {
    std::vector<float> w(size_t(N * K));
    for (auto& v : w) v = nd(rng) * 0.05f;
    std::vector<uint8_t> W = qwen::ops::nf4_quantize_matrix(w.data(), N, K, true);
    if (!dq) W = qwen::ops::nf4_matrix_expand_absmax(W.data());
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
        const double a = time([&] { qwen::ops::nf4_matmul_act8(X.data(), W.data(), Y.data(), M, N, K, false); });
        const double b = time([&] { qwen::ops::nf4_matmul_dequant(X.data(), W.data(), Y.data(), M, N, K, false); });
        const double c = M > 16 ? 0.0 : time([&] {
          for (int64_t m = 0; m < M; ++m)
            qwen::ops::nf4_matvec(W.data(), X.data() + m * K, Y.data() + m * N, N, K, false);
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
