// api/runtime.cpp — qwen/runtime.h: thread count and peak memory of the process.
#include <sys/resource.h>

#include "api/bridge.h"

namespace qwen::api {

void set_num_threads(int n) { ::qwen::set_num_threads(n); }
int num_threads() { return ::qwen::num_threads(); }

size_t peak_memory_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return size_t(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

std::string cpu_isa() {
  const CpuFeatures& f = cpu_features();
  return f.avx512 ? "avx512" : f.avx2 ? "avx2" : "scalar";
}

}  // namespace qwen::api
