// core/cpu.cpp — CPU feature detection and the op thread count.
#include "core/cpu.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>

namespace qwen {

static CpuFeatures detect() {
  CpuFeatures f;
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  f.avx512bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
  if (const char* cap = std::getenv("QWEN_ISA")) {
    if (std::strcmp(cap, "scalar") == 0) f = CpuFeatures{};
    else if (std::strcmp(cap, "avx2") == 0) f.avx512 = f.avx512bf16 = false;
  }
  return f;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

void set_num_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace qwen
