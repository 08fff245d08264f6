// bench/bench_machine.cpp — this machine's limits, the denominators of every kernel figure:
// fp32 FMA peak (AVX-512 and AVX2, 1 and 2 threads) and DRAM read bandwidth (1 and 2 threads,
// 1 GiB buffer). Prints a table; --json prints one JSON object instead:
//   {"fma_peak_gflops_1t":..,"fma_peak_gflops_2t":..,"dram_read_gbs_1t":..,"dram_read_gbs_2t":..,
//    "fma_peak_avx512_gflops_1t":..,"fma_peak_avx512_gflops_2t":..,
//    "fma_peak_avx2_gflops_1t":..,"fma_peak_avx2_gflops_2t":..,"isa":"avx512"|"avx2"}
// fma_peak_gflops_* is the peak of the widest ISA the CPU runs (the one the kernels use); the
// AVX-512 figures are null on a CPU (or VM) that does not expose AVX-512.
// Options: --buffer-mib N (default 1024), --reps N (default 7).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "machine_probe.h"

static std::string num(double v, bool ok, const char* fmt) {
  if (!ok) return "null";
  char b[64];
  std::snprintf(b, sizeof b, fmt, v);
  return b;
}

int main(int argc, char** argv) {
  bool json = false;
  size_t mib = 1024;
  int reps = 7;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json"))
      json = true;
    else if (!std::strcmp(argv[i], "--buffer-mib") && i + 1 < argc)
      mib = std::strtoul(argv[++i], nullptr, 10);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--json] [--buffer-mib N] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  using namespace qwen::bench;
  if (!has_avx2()) {
    std::fprintf(stderr,
                 "bench_machine: this CPU has neither AVX-512 nor AVX2+FMA; nothing to probe\n");
    return 1;
  }
  const bool a512 = has_avx512();
  const int nt = omp_get_max_threads() >= 2 ? 2 : 1;
  const double f512_1 = a512 ? fma_peak_gflops(true, 1, reps) : 0;
  const double f512_2 = a512 ? fma_peak_gflops(true, nt, reps) : 0;
  const double f256_1 = fma_peak_gflops(false, 1, reps), f256_2 = fma_peak_gflops(false, nt, reps);
  BigBuffer buf(mib << 20);
  const double bw1 = dram_read_gbs(buf, 1, reps), bw2 = dram_read_gbs(buf, nt, reps);
  const double p1 = a512 ? f512_1 : f256_1, p2 = a512 ? f512_2 : f256_2;
  if (json) {
    std::printf(
        "{\"fma_peak_gflops_1t\":%.1f,\"fma_peak_gflops_2t\":%.1f,\"dram_read_gbs_1t\":%.2f,"
        "\"dram_read_gbs_2t\":%.2f,\"fma_peak_avx512_gflops_1t\":%s,"
        "\"fma_peak_avx512_gflops_2t\":%s,\"fma_peak_avx2_gflops_1t\":%.1f,"
        "\"fma_peak_avx2_gflops_2t\":%.1f,\"isa\":\"%s\"}\n",
        p1, p2, bw1, bw2, num(f512_1, a512, "%.1f").c_str(), num(f512_2, a512, "%.1f").c_str(),
        f256_1, f256_2, a512 ? "avx512" : "avx2");
    return 0;
  }
  std::printf("machine limits (medians of %d reps; \"2 threads\" = %d)\n", reps, nt);
  std::printf("%-34s %12s %12s\n", "", "1 thread", "2 threads");
  if (a512)
    std::printf("%-34s %12.1f %12.1f\n", "fp32 FMA peak AVX-512 (GFLOP/s)", f512_1, f512_2);
  else
    std::printf("%-34s %12s %12s\n", "fp32 FMA peak AVX-512 (GFLOP/s)", "no AVX-512", "-");
  std::printf("%-34s %12.1f %12.1f\n", "fp32 FMA peak AVX2 (GFLOP/s)", f256_1, f256_2);
  std::printf("%-34s %12.2f %12.2f\n", "DRAM read, sum-reduce (GB/s)", bw1, bw2);
  std::printf("(DRAM buffer %zu MiB, %s loads; 1 GB = 1e9 bytes)\n", mib,
              a512 ? "AVX-512" : "AVX2");
  return 0;
}
