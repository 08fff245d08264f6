// bench/bench_quant_rows.cpp — a quantised matmul at small and prefill row counts: the multi-row
// integer kernel that ops::matmul runs for the format (Q8_0: gguf::q8_0_matmul_act16 at every M;
// NF4: ops::nf4_matmul_act8 for M >= 2) against the dequantise + f32 GEMM path it replaced
// (ops::q8_0_matmul_dequant / ops::nf4_matmul_dequant) and M separate decode matvecs, on the
// 124.7M model's shapes (q/o 768x768, k/v 256x768, gate/up 2048x768, down 768x2048; Q8_0 also the
// 32000x768 lm_head, which bitsandbytes' NF4 folders keep in float). NF4 matrices have f32 absmax
// as inference loads them (--dq: double-quantised, as a QLoRA base). The paths alternate rep by
// rep and the median is printed (µs per call and GFLOP/s, 2·M·N·K flops).
// Usage: bench_quant_rows --type q8_0|nf4 [--reps N] [--threads N] [--ms 1,2,4,...] [--dq]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/nf4.h"
#include "ops/q8_0.h"
#include "ops/quant_gguf.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Y (M, N) = X (M, K) · Wᵀ for one quantised W.
using MatmulFn = std::function<void(const float* X, const uint8_t* W, float* Y, int64_t M,
                                    int64_t N, int64_t K)>;
struct Format {
  MatmulFn multi_row, dequant, matvec_row;  // matvec_row: M = 1
  std::function<std::vector<uint8_t>(const float* w, int64_t N, int64_t K)> quantize;
  std::vector<std::pair<int64_t, int64_t>> shapes;
};

Format q8_0_format() {
  namespace ops = qwen::ops;
  Format f;
  f.multi_row = [](const float* X, const uint8_t* W, float* Y, int64_t M, int64_t N, int64_t K) {
    ops::gguf::q8_0_matmul_act16(X, W, Y, M, N, K, false);
  };
  f.dequant = [](const float* X, const uint8_t* W, float* Y, int64_t M, int64_t N, int64_t K) {
    ops::q8_0_matmul_dequant(X, W, Y, M, N, K, false);
  };
  f.matvec_row = [](const float* X, const uint8_t* W, float* Y, int64_t, int64_t N, int64_t K) {
    ops::q8_0_matvec(W, X, Y, N, K, false);
  };
  f.quantize = [](const float* w, int64_t N, int64_t K) {
    std::vector<uint8_t> W(size_t(N * K / 32 * 34));
    ops::q8_0_quantize(w, W.data(), N * K);
    return W;
  };
  f.shapes = {{768, 768}, {256, 768}, {2048, 768}, {768, 2048}, {32000, 768}};
  return f;
}

Format nf4_format(bool dq) {
  namespace ops = qwen::ops;
  Format f;
  f.multi_row = [](const float* X, const uint8_t* W, float* Y, int64_t M, int64_t N, int64_t K) {
    ops::nf4_matmul_act8(X, W, Y, M, N, K, false);
  };
  f.dequant = [](const float* X, const uint8_t* W, float* Y, int64_t M, int64_t N, int64_t K) {
    ops::nf4_matmul_dequant(X, W, Y, M, N, K, false);
  };
  f.matvec_row = [](const float* X, const uint8_t* W, float* Y, int64_t, int64_t N, int64_t K) {
    ops::nf4_matvec(W, X, Y, N, K, false);
  };
  f.quantize = [dq](const float* w, int64_t N, int64_t K) {
    std::vector<uint8_t> W = ops::nf4_quantize_matrix(w, N, K, true);
    return dq ? W : ops::nf4_matrix_expand_absmax(W.data());
  };
  f.shapes = {{768, 768}, {256, 768}, {2048, 768}, {768, 2048}};
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: bench_quant_rows --type q8_0|nf4 [--reps N] [--threads N] [--ms 1,2,4,...] [--dq]\n";
  int reps = 7, threads = 0;
  bool dq = false;
  std::string type;
  std::vector<int64_t> ms = {1, 2, 4, 8, 16, 48, 128, 512};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--type" && i + 1 < argc) type = argv[++i];
    else if (a == "--dq") dq = true;
    else if (a == "--ms" && i + 1 < argc) {
      ms.clear();
      std::stringstream ss(argv[++i]);
      std::string t;
      while (std::getline(ss, t, ',')) ms.push_back(std::atoll(t.c_str()));
    } else {
      std::fputs(usage, stderr);
      return 2;
    }
  }
  if (type != "q8_0" && type != "nf4") {
    std::fprintf(stderr, "bench_quant_rows: --type must be q8_0 or nf4\n%s", usage);
    return 2;
  }
  if (dq && type != "nf4") {
    std::fprintf(stderr, "bench_quant_rows: --dq applies to --type nf4 only\n");
    return 2;
  }
  if (threads > 0) qwen::set_num_threads(threads);
  const Format fmt = type == "nf4" ? nf4_format(dq) : q8_0_format();
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::printf("%s, threads %d, reps %d (median)%s\n", type.c_str(), qwen::num_threads(), reps,
              type == "nf4" ? (dq ? ", absmax double-quantised" : ", absmax f32") : "");
  std::printf("%-12s %5s | %12s %8s | %12s %8s | %12s %8s | %7s\n", "N x K", "M", "int us",
              "GFLOP/s", "deq+gemm us", "GFLOP/s", "M matvec us", "GFLOP/s", "deq/int");
  for (auto [N, K] : fmt.shapes) {
    std::vector<float> w(size_t(N * K));
    for (auto& v : w) v = nd(rng) * 0.05f;
    const std::vector<uint8_t> W = fmt.quantize(w.data(), N, K);
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
        const double a = time([&] { fmt.multi_row(X.data(), W.data(), Y.data(), M, N, K); });
        const double b = time([&] { fmt.dequant(X.data(), W.data(), Y.data(), M, N, K); });
        const double c = M > 16 ? 0.0 : time([&] {
          for (int64_t m = 0; m < M; ++m)
            fmt.matvec_row(X.data() + m * K, W.data(), Y.data() + m * N, 1, N, K);
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
