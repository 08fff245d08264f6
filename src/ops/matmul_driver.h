// ops/matmul_driver.h — the cache-blocked GEMM loop nest shared by the AVX-512 and AVX2 kernel
// files. Each of them includes this header and instantiates gemm_run<Traits> with its own
// register micro-kernel and B-panel packer; everything here has internal linkage, so each
// translation unit keeps its own copy compiled for its own instruction set (no ODR mixing of
// AVX-512 code into baseline code).
//
// Blocking (BLIS style, see docs/kernels.md):
//   for m0 in this thread's rows, step MC
//     pack op(A)[m0:m0+mc, :] once, as row-major blocks of KC columns with the compile-time row
//       stride KC (so the micro-kernel addresses row r at a fixed displacement r*KC*4)
//     for n0 in this thread's columns, step NC   (the C block mc x nc stays in cache)
//       for k0 in 0..K, step KC                  (the A block mc x kc is read from L2)
//         for j0 in n0..n0+nc, step NR
//           pack op(B)[k0:k0+kc, j0:j0+NR] k-major (NR floats per k), converting BF16/F16 to
//             f32 and zero-padding missing columns                         -> L1 (or L2)
//           for each row tile of the block (balanced tiles of at most MR_MAX rows)
//             micro-kernel: C tile (mr, NR) (+)= A tile (mr, kc) · B panel (kc, NR)
// The first k block applies beta (C = alpha·acc + beta·C), later ones add (C += alpha·acc).
// Threads split the columns (whole NR panels) when there are enough of them, else the rows;
// every thread packs what it needs itself, so they never wait for each other.
//
// Traits must provide:
//   static constexpr int NR, MR_MAX; static constexpr int64_t KC, MC, NC;
//   static void pack_b(const GemmProblem&, int64_t k0, int64_t kc, int64_t n0, int nv, float* dst);
//   template <int MR> static void kernel(int64_t kc, const float* pa, const float* pb, float* C,
//                                        int64_t ldc, int nv, float alpha, float beta, bool first);
#pragma once
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "ops/matmul_internal.h"

namespace qwen::ops::detail {
namespace {

// Row-major copy of op(A)[m0:m0+mc, k0:k0+kc] into dst with row stride KC.
template <int64_t KC>
inline void pack_a_block(const GemmProblem& p, int64_t m0, int64_t mc, int64_t k0, int64_t kc,
                         float* dst) {
  if (!p.trans_a) {
    for (int64_t i = 0; i < mc; ++i)
      std::memcpy(dst + i * KC, p.A + (m0 + i) * p.lda + k0, size_t(kc) * sizeof(float));
    return;
  }
  // A is (K, M): transpose in 16x16 tiles so both sides stay in a few cache lines.
  constexpr int64_t T = 16;
  for (int64_t kb = 0; kb < kc; kb += T) {
    const int64_t ke = std::min(kc, kb + T);
    for (int64_t ib = 0; ib < mc; ib += T) {
      const int64_t ie = std::min(mc, ib + T);
      for (int64_t k = kb; k < ke; ++k) {
        const float* src = p.A + (k0 + k) * p.lda + m0;
        for (int64_t i = ib; i < ie; ++i) dst[i * KC + k] = src[i];
      }
    }
  }
}

template <class Tr, int MR>
inline void call_kernel(int64_t kc, const float* pa, const float* pb, float* C, int64_t ldc, int nv,
                        float alpha, float beta, bool first) {
  Tr::template kernel<MR>(kc, pa, pb, C, ldc, nv, alpha, beta, first);
}

template <class Tr>
using KernelFn = void (*)(int64_t, const float*, const float*, float*, int64_t, int, float, float,
                          bool);

template <class Tr, int... I>
constexpr auto make_kernel_table(std::integer_sequence<int, I...>) {
  return std::array<KernelFn<Tr>, sizeof...(I)>{&call_kernel<Tr, I + 1>...};
}

// One thread's share: rows [m_lo, m_hi), columns [n_lo, n_hi).
template <class Tr>
void gemm_range(const GemmProblem& p, int64_t m_lo, int64_t m_hi, int64_t n_lo, int64_t n_hi) {
  static constexpr auto table =
      make_kernel_table<Tr>(std::make_integer_sequence<int, Tr::MR_MAX>{});
  const int64_t n_kb = (p.K + Tr::KC - 1) / Tr::KC;
  float* abuf = scratch(0, size_t(n_kb * Tr::MC * Tr::KC));
  float* bbuf = scratch(1, size_t(Tr::KC * Tr::NR));
  for (int64_t m0 = m_lo; m0 < m_hi; m0 += Tr::MC) {
    const int64_t mc = std::min(Tr::MC, m_hi - m0);
    // Balanced row tiles: ceil(mc / MR_MAX) tiles whose sizes differ by at most one, so no
    // tile is a thin, latency-bound leftover.
    const int64_t n_tiles = (mc + Tr::MR_MAX - 1) / Tr::MR_MAX;
    const int64_t base = mc / n_tiles, extra = mc % n_tiles;
    // All k blocks of this row block, packed once and reused for every column block.
    for (int64_t kb = 0; kb < n_kb; ++kb) {
      const int64_t k0 = kb * Tr::KC;
      pack_a_block<Tr::KC>(p, m0, mc, k0, std::min(Tr::KC, p.K - k0), abuf + kb * Tr::MC * Tr::KC);
    }
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += Tr::NC) {
      const int64_t nc = std::min(Tr::NC, n_hi - n0);
      for (int64_t kb = 0; kb < n_kb; ++kb) {
        const int64_t k0 = kb * Tr::KC, kc = std::min(Tr::KC, p.K - k0);
        const float* ablk = abuf + kb * Tr::MC * Tr::KC;
        const bool first = k0 == 0;
        for (int64_t j0 = n0; j0 < n0 + nc; j0 += Tr::NR) {
          const int nv = int(std::min<int64_t>(Tr::NR, n0 + nc - j0));
          Tr::pack_b(p, k0, kc, j0, nv, bbuf);
          int64_t r0 = 0;
          for (int64_t t = 0; t < n_tiles; ++t) {
            const int64_t mr = base + (t < extra ? 1 : 0);
            table[mr - 1](kc, ablk + r0 * Tr::KC, bbuf, p.C + (m0 + r0) * p.ldc + j0, p.ldc, nv,
                          p.alpha, p.beta, first);
            r0 += mr;
          }
        }
      }
    }
  }
}

// Splits the problem over the OpenMP team (or runs it on the calling thread when small).
template <class Tr>
void gemm_run(const GemmProblem& p) {
  const int64_t macs = p.M * p.N * p.K;
  const int max_threads = macs < kParallelMinMacs ? 1 : omp_get_max_threads();
#pragma omp parallel num_threads(max_threads) if (max_threads > 1)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t n_panels = (p.N + Tr::NR - 1) / Tr::NR;
    const int64_t m_tiles = (p.M + Tr::MR_MAX - 1) / Tr::MR_MAX;
    if (nt == 1) {
      gemm_range<Tr>(p, 0, p.M, 0, p.N);
    } else if (n_panels >= 2 * nt || n_panels >= m_tiles) {
      // Columns: whole panels, as even as possible.
      const int64_t lo = n_panels * tid / nt, hi = n_panels * (tid + 1) / nt;
      if (hi > lo) gemm_range<Tr>(p, 0, p.M, lo * Tr::NR, std::min(p.N, hi * Tr::NR));
    } else {
      // Rows: whole MR_MAX tiles.
      const int64_t lo = m_tiles * tid / nt, hi = m_tiles * (tid + 1) / nt;
      if (hi > lo) gemm_range<Tr>(p, lo * Tr::MR_MAX, std::min(p.M, hi * Tr::MR_MAX), 0, p.N);
    }
  }
}

}  // namespace
}  // namespace qwen::ops::detail
