// bench/bench_attention_backward.cpp — the training attention, forward (flash_attention with
// lse) and backward (flash_attention_backward) side by side, for causal self-attention over one
// sequence with H=12, KV=4, D=64 and T = 256, 512, 2048 (the medium training model's attention).
// Prints the median and best wall time of each, GFLOP/s of the median, and the median process
// CPU time per call (all threads, OpenMP spin-waits included; on a shared, loaded machine it
// swings much less than wall time). FLOPs count only the causal
// half (T(T+1)/2 query-key pairs per head): forward 2 products (Q·Kᵀ, P·V), backward 5 (Q·Kᵀ
// recomputed, dO·Vᵀ, Pᵀ·dO, dSᵀ·Q, dS·K), each 2·D flops per pair. With --ref also the naive
// attention_backward_ref (materialises (H, T, T) twice; T <= 512 only).
//
//   bench_attention_backward [--threads 2] [--reps 7] [--ref] [--T 256,512,2048]
#include <omp.h>
#include <time.h>

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
#include "ops/attention.h"
#include "ops/attention_backward.h"

namespace {

using qwen::ops::AttnShape;
using Clock = std::chrono::steady_clock;

struct Stat {
  double median_ms = 0, best_ms = 0, cpu_ms = 0;
};

double cpu_ms_now() {  // CPU time of this process, all threads
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return 1e3 * double(ts.tv_sec) + 1e-6 * double(ts.tv_nsec);
}

// One warm-up call, then reps timed calls.
Stat time_it(int reps, const std::function<void()>& f) {
  f();
  std::vector<double> ms, cpu;
  for (int i = 0; i < reps; ++i) {
    const double c0 = cpu_ms_now();
    const auto t0 = Clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    cpu.push_back(cpu_ms_now() - c0);
  }
  std::sort(ms.begin(), ms.end());
  std::sort(cpu.begin(), cpu.end());
  return {ms[ms.size() / 2], ms.front(), cpu[cpu.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 7;
  bool with_ref = false;
  std::vector<int64_t> Ts{256, 512, 2048};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--ref") {
      with_ref = true;
    } else if (a == "--T" && i + 1 < argc) {
      Ts.clear();
      std::string list = argv[++i];
      for (size_t p = 0; p <= list.size();) {
        const size_t c = std::min(list.find(',', p), list.size());
        Ts.push_back(std::atoll(list.substr(p, c - p).c_str()));
        p = c + 1;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--reps N] [--ref] [--T 256,512,2048]\n",
                   argv[0]);
      return 2;
    }
  }
  qwen::set_num_threads(threads);
  const int64_t H = 12, KV = 4, D = 64;
  std::printf("attention training pass, H=%lld KV=%lld D=%lld, %d thread(s), %s kernels, "
              "median of %d (best)\n",
              (long long)H, (long long)KV, (long long)D, threads,
              qwen::cpu_features().avx2 ? "AVX2" : "portable", reps);
  std::printf("%6s | %18s %8s %8s | %18s %8s %8s | %8s", "T", "forward ms", "GFLOP/s", "cpu ms",
              "backward ms", "GFLOP/s", "cpu ms", "bwd/fwd");
  if (with_ref) std::printf(" | %10s", "ref bwd ms");
  std::printf("\n");

  for (const int64_t T : Ts) {
    const AttnShape s{T, 0, H, KV, D, 1.0f / std::sqrt(float(D))};
    const int64_t n_q = T * H * D, n_kv = T * KV * D;
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> q(n_q), k(n_kv), v(n_kv), dout(n_q), out(n_q), lse(H * T);
    for (auto* x : {&q, &k, &v, &dout})
      for (auto& e : *x) e = nd(rng);
    std::vector<float> dq(n_q), dk(n_kv), dv(n_kv);

    const Stat fwd = time_it(reps, [&] {
      qwen::ops::flash_attention(q.data(), k.data(), v.data(), KV * D, out.data(), s, lse.data());
    });
    const Stat bwd = time_it(reps, [&] {
      qwen::ops::flash_attention_backward(q.data(), k.data(), v.data(), KV * D, out.data(),
                                          dout.data(), lse.data(), dq.data(), dk.data(),
                                          dv.data(), s);
    });
    const double pairs = double(H) * double(T) * double(T + 1) / 2;
    const double f_fwd = 2 * 2 * double(D) * pairs, f_bwd = 5 * 2 * double(D) * pairs;
    std::printf("%6lld | %8.2f (%7.2f) %8.1f %8.2f | %8.2f (%7.2f) %8.1f %8.2f | %8.2f",
                (long long)T, fwd.median_ms, fwd.best_ms, f_fwd / fwd.median_ms * 1e-6,
                fwd.cpu_ms, bwd.median_ms, bwd.best_ms, f_bwd / bwd.median_ms * 1e-6, bwd.cpu_ms,
                bwd.median_ms / fwd.median_ms);
    if (with_ref && T <= 512) {
      const Stat ref = time_it(std::min(reps, 3), [&] {
        qwen::ops::attention_backward_ref(q.data(), k.data(), v.data(), KV * D, nullptr,
                                          dout.data(), nullptr, dq.data(), dk.data(), dv.data(), s);
      });
      std::printf(" | %10.2f", ref.median_ms);
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  return 0;
}
