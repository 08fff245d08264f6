// bench/machine_probe.h — measures this machine's limits, for benchmarks that report their
// figures as a share of them: the fp32 FMA peak (AVX-512 and AVX2, 1 or more threads) and the
// DRAM read bandwidth (AVX-512 or AVX2 sum-reduce over a buffer much larger than the L3).
// Used by bench_machine (which prints them) and bench_matmul (which measures them in the same
// run as the kernels, since the machine drifts between processes). Header-only; the SIMD bodies
// use target attributes, so this compiles with the baseline flags of the bench programs.
#pragma once
#pragma GCC diagnostic push  // GCC 12 bug 105593: its AVX-512 headers trip -Wuninitialized
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace qwen::bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// 12 independent FMA chains per thread: with a 4-cycle latency and two FMA pipes, 8 chains
// saturate them; 12 leaves margin. Returns flops done (2 per lane per FMA).
__attribute__((target("avx512f,fma"), noinline)) inline double fma_chains_avx512(int64_t iters,
                                                                                 float seed) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(seed + float(i));
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return double(iters) * 12 * 16 * 2;
}

__attribute__((target("avx2,fma"), noinline)) inline double fma_chains_avx2(int64_t iters,
                                                                            float seed) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(seed + float(i));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  volatile float sink = t[0] + t[7];
  (void)sink;
  return double(iters) * 12 * 8 * 2;
}

// FMA peak in GFLOP/s with `threads` threads (each runs its own chains), median of `reps`.
inline double fma_peak_gflops(bool avx512, int threads, int reps = 7) {
  const int64_t iters = 4'000'000;  // ~50-100 ms per rep
  std::vector<double> r;
  for (int rep = 0; rep < reps; ++rep) {
    double flops = 0;
    const double t0 = now_s();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
    flops += avx512 ? fma_chains_avx512(iters, 1.0f + omp_get_thread_num())
                    : fma_chains_avx2(iters, 1.0f + omp_get_thread_num());
    r.push_back(flops / (now_s() - t0) * 1e-9);
  }
  return median(r);
}

__attribute__((target("avx512f"), noinline)) inline float sum_avx512(const float* p, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i + 64 <= n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_load_ps(p + i));
    s1 = _mm512_add_ps(s1, _mm512_load_ps(p + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_load_ps(p + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_load_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target("avx2"), noinline)) inline float sum_avx2(const float* p, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i + 32 <= n; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_load_ps(p + i));
    s1 = _mm256_add_ps(s1, _mm256_load_ps(p + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_load_ps(p + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_load_ps(p + i + 24));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

inline bool has_avx512() { return __builtin_cpu_supports("avx512f"); }
inline bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// A buffer far larger than the L3 (default 1 GiB), touched once so its pages exist.
struct BigBuffer {
  float* p = nullptr;
  size_t n = 0;
  explicit BigBuffer(size_t bytes) : n(bytes / sizeof(float) / 1024 * 1024) {
    p = static_cast<float*>(std::aligned_alloc(4096, n * sizeof(float)));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) p[i] = 1.0f;
  }
  ~BigBuffer() { std::free(p); }
  BigBuffer(const BigBuffer&) = delete;
  BigBuffer& operator=(const BigBuffer&) = delete;
};

// DRAM read bandwidth in GB/s (1e9 bytes/s): `threads` threads each sum-reduce their half of
// the buffer (AVX-512 loads where the CPU has them, else AVX2); median of `reps`.
inline double dram_read_gbs(const BigBuffer& b, int threads, int reps = 7) {
  std::vector<double> r;
  volatile float sink = 0;
  for (int rep = 0; rep < reps; ++rep) {
    const double t0 = now_s();
    float s = 0;
#pragma omp parallel num_threads(threads) reduction(+ : s)
    {
      const int nt = omp_get_num_threads(), id = omp_get_thread_num();
      const size_t chunk = b.n / size_t(nt) / 64 * 64;
      s += has_avx512() ? sum_avx512(b.p + chunk * size_t(id), chunk)
                        : sum_avx2(b.p + chunk * size_t(id), chunk);
    }
    const double dt = now_s() - t0;
    sink = sink + s;
    r.push_back(double(b.n / size_t(threads) / 64 * 64 * size_t(threads)) * sizeof(float) / dt *
                1e-9);
  }
  return median(r);
}

}  // namespace qwen::bench
