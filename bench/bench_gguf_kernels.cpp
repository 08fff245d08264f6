// bench/bench_gguf_kernels.cpp — the decode matvecs of SmolLM2-135M (30 layers of q, k, v, o,
// gate, up, down and the 49152 x 576 tied lm_head) on random weights in Q4_1 or Q8_0, run as a
// decode step runs them: every layer's matrices in turn (92-143 MB, far above the L3), so the
// weights come from DRAM. Prints ms per "token" and GB/s of weights read, per matrix kind, with
// every Q8_0 matrix through ops::q8_0_matvec_f32 (f32 activations), then through the registered
// kernels of ops/quant.h (what the model uses: Q8_0 with 16-bit activations). Medians over --reps.
// Usage: bench_gguf_kernels [--reps N] [--threads N] [--type q4_1|q8_0|both]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "ops/quant.h"
#include "ops/q8_0.h"

using qwen::DType;

namespace {

struct Mat {
  int64_t N, K;
  DType t;
  std::vector<uint8_t> w;
};

void matvec(const Mat& m, const float* x, float* y, bool act16) {
  // Q8_0: the registered kernel uses 16-bit activations; "f32 x" is the exact-activation one.
  if (!act16 && m.t == DType::Q8_0) qwen::ops::q8_0_matvec_f32(m.w.data(), x, y, m.N, m.K, false);
  else qwen::ops::matvec_quant(m.w.data(), m.t, x, y, m.N, m.K, false);
}

std::vector<uint8_t> random_blocks(int64_t N, int64_t K, DType t, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> v(size_t(N * K));
  for (float& x : v) x = d(rng);
  std::vector<uint8_t> out(size_t(N) * qwen::dtype_row_bytes(t, K));
  qwen::ops::quantize_row(t, v.data(), out.data(), N * K);
  return out;
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void run(DType layer_t, int reps, bool act16) {
  const int n_layers = 30;
  const int64_t H = 576, F = 1536, KV = 192, V = 49152;
  const char* kinds[] = {"q/o 576x576", "k/v 192x576", "gate/up 1536x576", "down 576x1536", "lm_head 49152x576 (q8_0)"};
  std::vector<std::vector<Mat>> layers(n_layers);
  for (int l = 0; l < n_layers; ++l) {
    const int64_t shapes[7][2] = {{H, H}, {KV, H}, {KV, H}, {H, H}, {F, H}, {F, H}, {H, F}};
    for (int i = 0; i < 7; ++i)
      layers[size_t(l)].push_back({shapes[i][0], shapes[i][1], layer_t,
                                   random_blocks(shapes[i][0], shapes[i][1], layer_t, uint32_t(100 * l + i))});
  }
  Mat head{V, H, DType::Q8_0, random_blocks(V, H, DType::Q8_0, 7)};
  const int kind_of[7] = {0, 1, 1, 0, 2, 2, 3};
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(F)), y(static_cast<size_t>(V));
  for (float& v : x) v = nd(rng);
  std::vector<std::vector<double>> t_kind(5);
  std::vector<double> t_tok;
  double bytes_kind[5] = {0, 0, 0, 0, 0};
  for (const auto& l : layers)
    for (int i = 0; i < 7; ++i) bytes_kind[kind_of[i]] += double(l[size_t(i)].w.size());
  bytes_kind[4] = double(head.w.size());
  for (int r = 0; r < reps + 1; ++r) {
    double tk[5] = {0, 0, 0, 0, 0};
    const double t0 = now();
    for (const auto& l : layers)
      for (int i = 0; i < 7; ++i) {
        const Mat& m = l[size_t(i)];
        const double a = now();
        matvec(m, x.data(), y.data(), act16);
        tk[kind_of[i]] += now() - a;
      }
    const double a = now();
    matvec(head, x.data(), y.data(), act16);
    tk[4] += now() - a;
    const double t1 = now();
    if (r == 0) continue;  // warm-up
    t_tok.push_back(t1 - t0);
    for (int k = 0; k < 5; ++k) t_kind[size_t(k)].push_back(tk[k]);
  }
  auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  double total_bytes = 0;
  for (double b : bytes_kind) total_bytes += b;
  std::printf("%s layers, Q8_0 via %s: %.2f ms per token (%.1f MB, %.1f GB/s, %.1f tok/s of matvecs alone)\n",
              qwen::dtype_name(layer_t), act16 ? "q8_0_matvec (16-bit x)" : "q8_0_matvec_f32 (f32 x)", 1e3 * med(t_tok), total_bytes / 1e6, total_bytes / med(t_tok) / 1e9,
              1.0 / med(t_tok));
  for (int k = 0; k < 5; ++k)
    std::printf("  %-26s %6.2f ms  %5.1f GB/s\n", kinds[k], 1e3 * med(t_kind[size_t(k)]),
                bytes_kind[k] / med(t_kind[size_t(k)]) / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20, threads = 2;
  std::string type = "both";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--type") type = argv[i + 1];
  }
  qwen::set_num_threads(threads);
  std::printf("threads %d (omp max %d)\n", threads, omp_get_max_threads());
  for (bool act16 : {false, true}) {
    if (type != "q8_0") run(DType::Q4_1, reps, act16);
    if (type != "q4_1") run(DType::Q8_0, reps, act16);
  }
  return 0;
}
