// core/cpu.h — which instruction sets this CPU has (runtime dispatch for kernels), and the
// thread count the ops use.
#pragma once

namespace qwen {

struct CpuFeatures {
  bool avx2 = false;      // with FMA and F16C
  bool avx512 = false;    // F, BW, VL, DQ
  bool avx512bf16 = false;
};

// Detected once. QWEN_ISA=scalar|avx2|avx512 in the environment caps what is used (for tests
// and benchmarks that compare paths).
const CpuFeatures& cpu_features();

// Threads used by parallel ops (OpenMP). Defaults to OpenMP's default.
void set_num_threads(int n);
int num_threads();

}  // namespace qwen
