// bench/bench_attention.cpp — flash attention against the naive attention that materialises the
// (H, T, S) score matrix, for causal prefill (H=12, KV=4, D=64; T = 512, 2048, 8192) and decode
// (T = 1 against S = 512, 2048, 8192 cached keys): median and best time, GFLOP/s (of the median,
// counting only the causal half), median process CPU time per call, peak extra memory. On a shared
// machine the wall times swing with the load; "cpu" (all threads' CPU time, OpenMP spin-waits
// included) does much less.
//
// Variants: flash = ops::flash_attention; naive = ops::attention_ref (plain loops); naive+blas =
// the same materialised algorithm written here with OpenBLAS sgemm per head for Q·Kᵀ and P·V and
// the vectorised softmax_inplace (the fast way to do it without tiling; it computes the full,
// unmasked T×S products as eager frameworks do, then masks).
// Every (variant, shape) runs in its own forked child process, so its memory is measured from a
// clean heap: "alloc" is the peak of bytes live through operator new/malloc-free tracking above
// what the inputs and outputs hold (exact), "rss" is the rise of VmHWM (peak resident set, reset
// through /proc/self/clear_refs) over the resident set before the call.
//
//   bench_attention [--threads 2] [--reps 5] [--max-seconds 4] [--json] [--quick] [--no-ops]
//                   [--mode prefill|decode|all]
// --quick: prefill T up to 2048 only. --no-ops: skip the per-token ops table at the end.
#include <cblas.h>
#include <omp.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/attention.h"
#include "ops/elementwise.h"

// ---- allocation tracking: every operator new in the process (the library's std::vectors too) --

namespace {
std::atomic<int64_t> g_live{0}, g_peak{0};
void note_alloc(int64_t n) {
  const int64_t now = g_live.fetch_add(n) + n;
  int64_t p = g_peak.load();
  while (now > p && !g_peak.compare_exchange_weak(p, now)) {
  }
}
// Header in front of each block keeps its size (16 bytes keeps malloc's alignment).
void* tracked_alloc(size_t n) {
  void* p = std::malloc(n + 16);
  if (!p) throw std::bad_alloc();
  *static_cast<size_t*>(p) = n;
  note_alloc(int64_t(n));
  return static_cast<char*>(p) + 16;
}
void tracked_free(void* q) {
  if (!q) return;
  void* p = static_cast<char*>(q) - 16;
  g_live.fetch_sub(int64_t(*static_cast<size_t*>(p)));
  std::free(p);
}
}  // namespace

void* operator new(size_t n) { return tracked_alloc(n); }
void* operator new[](size_t n) { return tracked_alloc(n); }
void operator delete(void* p) noexcept { tracked_free(p); }
void operator delete[](void* p) noexcept { tracked_free(p); }
void operator delete(void* p, size_t) noexcept { tracked_free(p); }
void operator delete[](void* p, size_t) noexcept { tracked_free(p); }

namespace {

using qwen::ops::AttnShape;
using Clock = std::chrono::steady_clock;

double cpu_seconds() {  // CPU time of this process, all threads
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

int64_t status_kb(const char* key) {  // VmRSS / VmHWM of this process, in KiB
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::atoll(line.c_str() + n + 1);
  return -1;
}

// naive+blas: scores (H, T, S) with sgemm per head, causal mask, softmax per row, sgemm with V.
void attention_naive_blas(const float* q, const float* k, const float* v, int64_t kv_stride,
                          float* out, const AttnShape& s) {
  const int64_t T = s.T, H = s.H, D = s.D, S = s.pos0 + s.T, G = s.H / s.KV;
  std::vector<float> sc(size_t(H * T * S));
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / G;
    float* P = sc.data() + h * T * S;
    // P (T, S) = scale · Q_h (T, D; row stride H·D) · K_gᵀ (K_g: S rows, stride kv_stride)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(S), int(D), s.scale, q + h * D,
                int(H * D), k + g * D, int(kv_stride), 0.0f, P, int(S));
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      float* row = P + t * S;
      const int64_t n = s.pos0 + t + 1;
      std::fill(row + n, row + S, -std::numeric_limits<float>::infinity());
      qwen::ops::softmax_inplace(row, S);
    }
    // O_h (T, D; row stride H·D) = P (T, S) · V_g (S, D; row stride kv_stride)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(D), int(S), 1.0f, P, int(S),
                v + g * D, int(kv_stride), 0.0f, out + h * D, int(H * D));
  }
}

using AttnFn = void (*)(const float*, const float*, const float*, int64_t, float*,
                        const AttnShape&);

struct Result {
  double median_s = 0, min_s = 0;
  double cpu_s = 0;  // median process CPU time per call (all threads; spin-waits included)
  int reps = 0;
  int64_t alloc_bytes = 0, rss_bytes = 0;
  double max_abs_diff = 0;  // against flash, on this shape
};

struct Opts {
  int threads = 2, reps = 5;
  double max_seconds = 4;
  bool json = false, quick = false, ops = true;
  std::string mode = "all";  // prefill | decode | all
};

// Runs fn on shape s in a forked child: a first call (memory measured on it; its time counts as
// a rep only if it is the only one), then up to opts.reps timed calls while their total stays
// under max_seconds. Also compares the output with
// flash_attention's on the same inputs (computed after the measurements).
Result run_in_child(AttnFn fn, const AttnShape& s, const Opts& opts) {
  int fd[2];
  if (pipe(fd) != 0) std::abort();
  const pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    qwen::set_num_threads(opts.threads);
    openblas_set_num_threads(opts.threads);
    const int64_t S = s.pos0 + s.T, kv_stride = s.KV * s.D;
    std::mt19937 rng(1234);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> q(size_t(s.T * s.H * s.D)), k(size_t(S * kv_stride)), v(k.size());
    std::vector<float> out(q.size()), check(q.size());
    for (auto* vec : {&q, &k, &v})
      for (auto& x : *vec) x = nd(rng);
    // OpenMP and OpenBLAS threads up, check's pages resident, before the baseline: they are not
    // the variant's memory. (The variant itself is not called before: flash keeps its per-thread
    // scratch between calls, and its first call is the one that allocates it.)
    std::fill(out.begin(), out.end(), 0.0f);
    std::fill(check.begin(), check.end(), 0.0f);
    {
#pragma omp parallel
      {
        volatile int id = omp_get_thread_num();
        (void)id;
      }
      float a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 3, 4}, c[4] = {};
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
    }
    Result r;
    {
      std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM := VmRSS
      const int64_t rss0 = status_kb("VmRSS:");
      const int64_t live0 = g_live.load();
      g_peak.store(live0);
      const double c0 = cpu_seconds();
      const auto t0 = Clock::now();
      fn(q.data(), k.data(), v.data(), kv_stride, out.data(), s);
      const double first = std::chrono::duration<double>(Clock::now() - t0).count();
      const double first_cpu = cpu_seconds() - c0;
      r.alloc_bytes = g_peak.load() - live0;
      r.rss_bytes = (status_kb("VmHWM:") - rss0) * 1024;
      std::vector<double> times, cpu;
      double total = first;
      for (int i = 0; i < opts.reps && total + first <= opts.max_seconds; ++i) {
        const double c1 = cpu_seconds();
        const auto t1 = Clock::now();
        fn(q.data(), k.data(), v.data(), kv_stride, out.data(), s);
        times.push_back(std::chrono::duration<double>(Clock::now() - t1).count());
        cpu.push_back(cpu_seconds() - c1);
        total += times.back();
      }
      if (times.empty()) {  // one slow call: the first is the figure
        times.push_back(first);
        cpu.push_back(first_cpu);
      }
      std::sort(times.begin(), times.end());
      std::sort(cpu.begin(), cpu.end());
      r.cpu_s = cpu[cpu.size() / 2];
      r.median_s = times[times.size() / 2];
      r.min_s = times.front();
      r.reps = int(times.size());
    }
    qwen::ops::flash_attention(q.data(), k.data(), v.data(), kv_stride, check.data(), s);
    for (size_t i = 0; i < out.size(); ++i)
      r.max_abs_diff = std::max(r.max_abs_diff, double(std::fabs(out[i] - check[i])));
    if (write(fd[1], &r, sizeof r) != ssize_t(sizeof r)) _exit(2);
    _exit(0);
  }
  close(fd[1]);
  Result r;
  const ssize_t n = read(fd[0], &r, sizeof r);
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (n != ssize_t(sizeof r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "bench_attention: child failed (T=%lld S=%lld)\n", (long long)s.T,
                 (long long)(s.pos0 + s.T));
    r.median_s = -1;
  }
  return r;
}

std::string human_bytes(int64_t b) {
  char buf[32];
  if (b < 0) return "n/a";
  if (b < 10 * 1024)
    std::snprintf(buf, sizeof buf, "%lld B", (long long)b);
  else if (b < 10 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else if (b < 10ll * 1024 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / 1048576.0);
  else
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / 1073741824.0);
  return buf;
}

std::string human_time(double sec) {
  char buf[32];
  if (sec < 1e-3)
    std::snprintf(buf, sizeof buf, "%.1f us", sec * 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.2f ms", sec * 1e3);
  return buf;
}

double time_op(const std::function<void()>& f, int reps) {  // median seconds
  std::vector<double> t;
  f();
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_attention: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads")
      o.threads = std::atoi(next());
    else if (a == "--reps")
      o.reps = std::atoi(next());
    else if (a == "--max-seconds")
      o.max_seconds = std::atof(next());
    else if (a == "--json")
      o.json = true;
    else if (a == "--quick")
      o.quick = true;
    else if (a == "--no-ops")
      o.ops = false;
    else if (a == "--mode")
      o.mode = next();
    else {
      std::fprintf(stderr,
                   "usage: bench_attention [--threads N] [--reps N] [--max-seconds X] [--json] "
                   "[--quick] [--no-ops] [--mode prefill|decode|all]\n");
      return 2;
    }
  }
  const auto& cpu = qwen::cpu_features();
  const char* isa = cpu.avx512 ? "avx512" : cpu.avx2 ? "avx2" : "portable";
  const int64_t H = 12, KV = 4, D = 64;
  const float scale = 1.0f / std::sqrt(float(D));
  struct Variant {
    const char* name;
    AttnFn fn;
  };
  const Variant variants[] = {{"flash", qwen::ops::flash_attention},
                              {"naive", qwen::ops::attention_ref},
                              {"naive+blas", attention_naive_blas}};

  nlohmann::json js = {
      {"threads", o.threads},           {"isa", isa}, {"H", H}, {"KV", KV}, {"D", D},
      {"rows", nlohmann::json::array()}};
  if (!o.json)
    std::printf(
        "attention, H=%lld KV=%lld D=%lld, %d threads, kernels: %s\n"
        "%-8s %6s %6s %-11s %11s %11s %11s %9s %12s %12s %5s %9s\n",
        (long long)H, (long long)KV, (long long)D, o.threads, isa, "mode", "T", "S", "variant",
        "median", "min", "cpu", "GFLOP/s", "alloc", "rss", "reps", "diff");

  std::vector<int64_t> Ts = {512, 2048, 8192};
  if (o.quick) Ts = {512, 2048};
  auto run_mode = [&](const char* mode, int64_t T, int64_t S) {
    const AttnShape s{T, S - T, H, KV, D, scale};
    // FLOPs that causal attention needs: Q·Kᵀ and P·V over the visible (query, key) pairs.
    double pairs = 0;
    for (int64_t t = 0; t < T; ++t) pairs += double(S - T + t + 1);
    const double flops = 4.0 * double(H) * double(D) * pairs;
    for (const auto& var : variants) {
      Opts oo = o;
      if (T == 1) oo.reps = std::max(o.reps, 200);  // decode calls are short
      const Result r = run_in_child(var.fn, s, oo);
      const double gflops = r.median_s > 0 ? flops / r.median_s * 1e-9 : 0;
      js["rows"].push_back({{"mode", mode},
                            {"T", T},
                            {"S", S},
                            {"variant", var.name},
                            {"median_s", r.median_s},
                            {"min_s", r.min_s},
                            {"cpu_s", r.cpu_s},
                            {"reps", r.reps},
                            {"gflops", gflops},
                            {"alloc_bytes", r.alloc_bytes},
                            {"rss_bytes", r.rss_bytes},
                            {"max_abs_diff_vs_flash", r.max_abs_diff}});
      if (!o.json) {
        std::printf("%-8s %6lld %6lld %-11s %11s %11s %11s %9.1f %12s %12s %5d %9.1e\n", mode,
                    (long long)T, (long long)S, var.name, human_time(r.median_s).c_str(),
                    human_time(r.min_s).c_str(), human_time(r.cpu_s).c_str(), gflops,
                    human_bytes(r.alloc_bytes).c_str(), human_bytes(r.rss_bytes).c_str(), r.reps,
                    r.max_abs_diff);
        std::fflush(stdout);
      }
    }
  };
  if (o.mode != "decode")
    for (int64_t T : Ts) run_mode("prefill", T, T);
  if (o.mode != "prefill")
    for (int64_t S : {int64_t(512), int64_t(2048), int64_t(8192)}) run_mode("decode", 1, S);

  if (o.ops) {
    // The exp-bound per-token ops: SIMD path of this CPU against the std::exp loops (*_ref).
    qwen::set_num_threads(1);
    const int64_t n = 4864 * 16;  // Qwen2.5-0.5B intermediate size × 16 tokens
    std::vector<float> g(static_cast<size_t>(n)), u(g.size()), y(g.size());
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    for (auto& x : g) x = nd(rng);
    for (auto& x : u) x = nd(rng);
    struct OpRow {
      const char* name;
      std::function<void()> simd, ref;
    };
    const OpRow rows[] = {
        {"swiglu", [&] { qwen::ops::swiglu(g.data(), u.data(), y.data(), n); },
         [&] { qwen::ops::swiglu_ref(g.data(), u.data(), y.data(), n); }},
        {"softmax",
         [&] {
           y = g;
           qwen::ops::softmax_inplace(y.data(), n);
         },
         [&] {
           y = g;
           qwen::ops::softmax_inplace_ref(y.data(), n);
         }},
        {"exp", [&] { qwen::ops::exp_f32(g.data(), y.data(), n); },
         [&] { qwen::ops::exp_f32_ref(g.data(), y.data(), n); }},
    };
    if (!o.json)
      std::printf("\nper-token ops, n=%lld, 1 thread: ns per element\n%-8s %8s %8s\n", (long long)n,
                  "op", isa, "ref");
    for (const auto& r : rows) {
      const double a = time_op(r.simd, 21) / double(n) * 1e9,
                   b = time_op(r.ref, 21) / double(n) * 1e9;
      js["ops"].push_back(
          {{"op", r.name}, {"n", n}, {"simd_ns_per_elem", a}, {"ref_ns_per_elem", b}});
      if (!o.json) std::printf("%-8s %8.3f %8.3f\n", r.name, a, b);
    }
  }
  if (o.json) std::printf("%s\n", js.dump(2).c_str());
  return 0;
}
