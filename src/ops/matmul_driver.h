// ops/matmul_driver.h — the cache-blocked GEMM loop nest shared by the AVX-512 and AVX2 kernel
// files. Each of them includes this header and instantiates gemm_run<Traits> with its own
// register micro-kernel and packers; everything here has internal linkage, so each translation
// unit keeps its own copy compiled for its own instruction set (no ODR mixing of AVX-512 code
// into baseline code).
//
// Blocking (BLIS style, see docs/kernels.md), per thread:
//   [B up front: when this thread's rows need more than one row block and its columns of B fit
//    in kFullBBytes, all of op(B)[:, my columns] is packed once into k-major panels; a pre-packed
//    weight (PackedWeight) is used in place as those panels]
//   for m0 in this thread's rows, balanced row blocks of at most MC (4/3·MC if one block)
//     pack op(A)[m0:m0+mc, :] once (all k blocks):
//       not transposed: row-major blocks of KC columns, compile-time row stride KC, so the
//         micro-kernel addresses row r at a fixed displacement r*KC*4 (no transposition);
//       transposed (A is (K, M)): per row tile, k-major slivers with the compile-time stride
//         MR_MAX, a plain copy of MR_MAX consecutive values per k (no transposition either)
//     for n0 in this thread's columns, step NC
//       for k0 in 0..K, step KC
//         for j0 in n0..n0+nc, step NR
//           the B panel op(B)[k0:k0+kc, j0:j0+NR], k-major (NR floats per k): packed now
//             (transposing / converting BF16, F16 to f32, zero-padding missing columns), or
//             taken from the up-front panels (F32: in place; BF16/F16: widened to f32)
//           for each row tile of the block (balanced tiles of at most MR_MAX rows)
//             micro-kernel: C tile (mr, NR) (+)= A tile (mr, kc) · B panel (kc, NR)
// The first k block applies beta (C = alpha·acc + beta·C), later ones add (C += alpha·acc).
// Every output is therefore summed in the same order — k blocks of KC in order, each summed
// k by k by FMA from zero — whatever M, the tiling, the thread split or the B source: a row's
// result does not depend on the other rows of the batch.
// Threads split the columns (whole NR panels) or the rows (whole MR_MAX tiles), whichever a
// small cost model (compute + packing per thread) prefers; every thread packs what it needs
// itself, so they never wait for each other.
//
// Traits must provide:
//   static constexpr int NR, MR_MAX; static constexpr int64_t KC, MC, NC;
//   static void pack_b(const GemmProblem&, int64_t k0, int64_t kc, int64_t n0, int nv, float* dst);
//   static void copy_a_t(const float* src, int mr, float* dst);
//       dst[r] = src[r] for r < mr (reads nothing else; may write up to kATileSlack floats past
//       dst + MR_MAX — lanes the next k overwrites or nobody reads)
//   static void prefetch(const void* p);  // into L1
//   static void copy_b_row(const float* src, int nv, float* dst);
//       dst[c] = c < nv ? src[c] : 0 for c < NR (dst aligned; reads only src[0..nv))
//   static void widen_panel(const void* src, DType dt, int64_t n, float* dst);  // n % NR == 0
//   template <int MR, bool AK, bool PF> static void kernel(int64_t kc, const float* pa,
//       const float* pb, float* C, int64_t ldc, int nv, float alpha, float beta, bool first,
//       const Prefetch& pf);
//       A element (r, k) at pa[AK ? k*MR_MAX + r : r*KC + k]; if PF, at steps k < pf.n it
//       prefetches the line at pf.p + k·pf.step into L2
#pragma once
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "ops/matmul_internal.h"

namespace qwen::ops::detail {
namespace {

// Up to this many bytes of packed B per thread are packed once up front (L3-resident).
inline constexpr int64_t kFullBBytes = int64_t(8) << 20;

// Lines a micro-kernel prefetches while it runs: at step k < n, the line at p + k·step. Passed
// by reference: a struct passed by value is rebuilt on the stack before every call, and reading
// it back in the kernel then waits for the previous kernel's C stores (cache misses) to commit —
// measured as 15% of a K = 256 product.
struct Prefetch {
  const char* p = nullptr;
  int64_t n = 0, step = 64;
};
inline constexpr Prefetch kNoPrefetch{};

template <class Tr, int MR, bool AK, bool PF>
inline void call_kernel(int64_t kc, const float* pa, const float* pb, float* C, int64_t ldc, int nv,
                        float alpha, float beta, bool first, const Prefetch& pf) {
  Tr::template kernel<MR, AK, PF>(kc, pa, pb, C, ldc, nv, alpha, beta, first, pf);
}

template <class Tr>
using KernelFn = void (*)(int64_t, const float*, const float*, float*, int64_t, int, float, float,
                          bool, const Prefetch&);

template <class Tr, bool AK, bool PF, int... I>
constexpr auto make_kernel_table(std::integer_sequence<int, I...>) {
  return std::array<KernelFn<Tr>, sizeof...(I)>{&call_kernel<Tr, I + 1, AK, PF>...};
}

// Optional split micro-kernel (Traits::kernel_part / store_part, see matmul_avx2.cpp): the row
// tiles of a small row block (3..kPartMaxTiles tiles: M = 13..48 with 6-row tiles, batched
// decode steps) walk one B panel together in chunks of kPartK k steps, each tile's accumulators
// parked in a small buffer between chunks. The panel (48 KiB at KC = 768, more than L1) is then
// read from L2 / memory once per panel instead of once per tile, and each chunk (8 KiB of B) is
// reused from L1 by all tiles. The sums are the same FMA chains (bit-identical). Measured on
// the 124.7M model's decode steps, 2 threads (docs/serving.md, 2026-11-28 fourth): 16 rows
// 7-9% and 48 rows 5-10% faster with kPartK = 128 than the tile-by-tile loop; 32 and 64 were
// within noise of 128, 192 and more no better than none. One- and two-tile blocks keep the
// prefetching kernels (the streamed small-M path), larger blocks (prefill) the plain loop.
inline constexpr int64_t kPartK = 128;
inline constexpr int64_t kPartMaxTiles = 8;
template <class Tr>
concept HasKernelParts = requires { &Tr::template kernel_part<1>; &Tr::template store_part<1>; };

template <class Tr>
using PartFn = void (*)(int64_t, int64_t, const float*, const float*, float*, bool);
template <class Tr>
using StoreFn = void (*)(const float*, float*, int64_t, int, float, float, bool);

template <class Tr, int... I>
constexpr auto make_part_table(std::integer_sequence<int, I...>) {
  return std::array<PartFn<Tr>, sizeof...(I)>{&Tr::template kernel_part<I + 1>...};
}
template <class Tr, int... I>
constexpr auto make_store_table(std::integer_sequence<int, I...>) {
  return std::array<StoreFn<Tr>, sizeof...(I)>{&Tr::template store_part<I + 1>...};
}

// Balanced split of n items into `parts` contiguous parts: part i is [lo(i), lo(i+1)).
inline int64_t split_lo(int64_t n, int64_t parts, int64_t i) { return n * i / parts; }

// Row tiles of a row block of mc rows: ceil(mc / MR_MAX) tiles whose sizes differ by at most
// one, so no tile is a thin, latency-bound leftover.
template <class Tr>
struct Tiles {
  int64_t n, base, extra;
  explicit Tiles(int64_t mc)
      : n((mc + Tr::MR_MAX - 1) / Tr::MR_MAX), base(mc / n), extra(mc % n) {}
  int64_t size(int64_t t) const { return base + (t < extra ? 1 : 0); }
  int64_t start(int64_t t) const { return t * base + std::min(t, extra); }
};

// Transposed-A tiles are MR_MAX x KC k-major slivers, kATileSlack floats apart (room for the
// few lanes an 8-wide store may write past a tile's last k).
inline constexpr int64_t kATileSlack = 16;
template <class Tr>
constexpr int64_t a_tile_stride() {
  return Tr::MR_MAX * Tr::KC + kATileSlack;
}

// Row blocks: a thread's rows are cut into balanced blocks of at most MC rows, except that up
// to kMaxRows() = 4/3·MC rows stay one block (a second block would pack all of B a second time;
// measured: 256 rows x K = 32000 ran 12% faster as one block, larger blocks were not faster).
template <class Tr>
constexpr int64_t max_block_rows() {
  return Tr::MC * 4 / 3;
}
inline int64_t n_row_blocks_for(int64_t rows, int64_t mc, int64_t mc_max) {
  return rows <= mc_max ? 1 : (rows + mc - 1) / mc;
}

// Floats per packed k block of A: room for max_block_rows() rows with row stride KC, or for as
// many transposed-A tiles.
template <class Tr>
constexpr int64_t a_block_floats() {
  constexpr int64_t rows = max_block_rows<Tr>();
  return std::max(rows * Tr::KC, (rows + Tr::MR_MAX - 1) / Tr::MR_MAX * a_tile_stride<Tr>());
}

// Packs op(A)[m0:m0+mc, k0:k0+kc] for the tiles of the block into dst (one k block).
template <class Tr>
inline void pack_a_block(const GemmProblem& p, int64_t m0, int64_t mc, int64_t k0, int64_t kc,
                         float* dst) {
  if (!p.trans_a) {
    for (int64_t i = 0; i < mc; ++i)
      std::memcpy(dst + i * Tr::KC, p.A + (m0 + i) * p.lda + k0, size_t(kc) * sizeof(float));
    return;
  }
  // A is (K, M): 16 k rows at a time (their mc values each are contiguous: a few lines and one
  // page per row, which stay in L1), dealt out tile by tile, so A is read row by row and every
  // tile is written sequentially.
  const Tiles<Tr> tiles(mc);
  constexpr int64_t KB = 16;
  const int64_t lda = p.lda;
  for (int64_t kk = 0; kk < kc; kk += KB) {
    const int64_t ke = std::min(kc, kk + KB);
    // The next 16 rows' segments into L1 while these are dealt out (A is read with a stride of
    // lda, which the hardware prefetcher does not cover; without this the copy waits on memory).
    for (int64_t k = ke + 4 * KB; k < std::min(kc, ke + 5 * KB); ++k)
      for (int64_t i = 0; i < mc; i += 16) Tr::prefetch(p.A + (k0 + k) * lda + m0 + i);
    for (int64_t t = 0; t < tiles.n; ++t) {
      const int mr = int(tiles.size(t));
      const float* src = p.A + (k0 + kk) * p.lda + m0 + tiles.start(t);
      float* d = dst + t * a_tile_stride<Tr>() + kk * Tr::MR_MAX;
      for (int64_t k = kk; k < ke; ++k, src += lda, d += Tr::MR_MAX) Tr::copy_a_t(src, mr, d);
    }
  }
}

// Packs op(B)[:, n_lo:n_hi] (all of K) into k-major panels: panel q (columns n_lo + q·NR ..) at
// dst + q·K·NR, its k block k0 at + k0·NR — the PackedWeight layout, in f32. B (K, N) is read
// row by row (each row's columns are contiguous) and dealt out to the panels; B (N, K) panel by
// panel with the transposing packer.
template <class Tr>
inline void pack_b_full(const GemmProblem& p, int64_t n_lo, int64_t n_hi, float* dst) {
  if (!p.b_nk) {
    // 16 rows at a time (in L1), dealt out panel by panel: every panel is written sequentially
    // (the panels are K·NR floats apart, often a multiple of 4 KiB: one row to all panels at
    // once would thrash an L1 set).
    const float* B = static_cast<const float*>(p.B);
    constexpr int64_t KB = 16;
    for (int64_t kk = 0; kk < p.K; kk += KB) {
      const int64_t ke = std::min(p.K, kk + KB);
      for (int64_t j0 = n_lo, q = 0; j0 < n_hi; j0 += Tr::NR, ++q) {
        const int nv = int(std::min<int64_t>(Tr::NR, n_hi - j0));
        for (int64_t k = kk; k < ke; ++k)
          Tr::copy_b_row(B + k * p.ldb + j0, nv, dst + (q * p.K + k) * Tr::NR);
      }
    }
    return;
  }
  for (int64_t j0 = n_lo, q = 0; j0 < n_hi; j0 += Tr::NR, ++q)
    for (int64_t k0 = 0; k0 < p.K; k0 += Tr::KC)
      Tr::pack_b(p, k0, std::min(Tr::KC, p.K - k0), j0,
                 int(std::min<int64_t>(Tr::NR, n_hi - j0)), dst + (q * p.K + k0) * Tr::NR);
}

// One thread's share: rows [m_lo, m_hi), columns [n_lo, n_hi) (n_lo a multiple of NR).
template <class Tr>
void gemm_range(const GemmProblem& p, int64_t m_lo, int64_t m_hi, int64_t n_lo, int64_t n_hi) {
  static constexpr auto table_rk =
      make_kernel_table<Tr, false, false>(std::make_integer_sequence<int, Tr::MR_MAX>{});
  static constexpr auto table_km =
      make_kernel_table<Tr, true, false>(std::make_integer_sequence<int, Tr::MR_MAX>{});
  static constexpr auto table_pf =
      make_kernel_table<Tr, false, true>(std::make_integer_sequence<int, Tr::MR_MAX>{});
  constexpr int64_t ablk_floats = a_block_floats<Tr>();
  const int64_t n_kb = (p.K + Tr::KC - 1) / Tr::KC;
  const int64_t n_rows = m_hi - m_lo, n_cols = n_hi - n_lo;
  const int64_t n_blocks = n_row_blocks_for(n_rows, Tr::MC, max_block_rows<Tr>());
  const int64_t my_panels = (n_cols + Tr::NR - 1) / Tr::NR;
  // With one column block, each k block of A is packed right before its use (it then sits in
  // L2 while the panels stream past); with several, all k blocks are packed once per row block.
  const bool a_all_k = n_cols > Tr::NC;
  float* abuf = scratch(0, size_t((a_all_k ? n_kb : 1) * ablk_floats));

  // Where the B panels come from.
  enum class BSrc { kPackNow, kFull, kPacked } src = BSrc::kPackNow;
  const PackedWeight* pw = p.packed;
  float* bfull = nullptr;
  float* bbuf = nullptr;
  if (pw) {
    src = BSrc::kPacked;
    if (pw->dt != DType::F32) bbuf = scratch(1, size_t(Tr::KC * Tr::NR));
  } else if (n_blocks > 1 && my_panels * p.K * Tr::NR * 4 <= kFullBBytes) {
    src = BSrc::kFull;
    bfull = scratch(1, size_t(my_panels * p.K * Tr::NR));
    pack_b_full<Tr>(p, n_lo, n_hi, bfull);
  } else {
    bbuf = scratch(1, size_t(Tr::KC * Tr::NR));
  }

  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t m0 = m_lo + split_lo(n_rows, n_blocks, b);
    const int64_t mc = m_lo + split_lo(n_rows, n_blocks, b + 1) - m0;
    const Tiles<Tr> tiles(mc);
    if (a_all_k)  // all k blocks of this row block, packed once for every column block
      for (int64_t kb = 0; kb < n_kb; ++kb) {
        const int64_t k0 = kb * Tr::KC;
        pack_a_block<Tr>(p, m0, mc, k0, std::min(Tr::KC, p.K - k0), abuf + kb * ablk_floats);
      }
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += Tr::NC) {
      const int64_t nc = std::min(Tr::NC, n_hi - n0);
      for (int64_t kb = 0; kb < n_kb; ++kb) {
        const int64_t k0 = kb * Tr::KC, kc = std::min(Tr::KC, p.K - k0);
        if (!a_all_k) pack_a_block<Tr>(p, m0, mc, k0, kc, abuf);
        const float* ablk = a_all_k ? abuf + kb * ablk_floats : abuf;
        const bool first = k0 == 0;
        // On a packed weight a small-M product streams the weight from memory. Two things keep
        // the stream near DRAM speed: for M <= 2·MR_MAX the panels are visited as 4 interleaved
        // streams (panel q·S + i at step 4i + q; one linear stream alone keeps too few reads in
        // flight), and for M <= 2·MR_MAX the micro-kernels prefetch the next panel into L2 while
        // they compute on this one (spread over the row tiles), so memory and FMA work overlap.
        // (For larger M the prefetches only cost: prefill at M = 128-512 measured 10-15% slower
        // with them, and at M = 13..18 (three row tiles) on cache-resident weights, the 4M demo
        // model's, 256x256 / 704x256 / 4096x256 products took 20 / 47 / 288 µs with them and
        // 14 / 41 / 204 µs without, 2 threads.) The order of the panels does not change any result.
        const int64_t n_pan = (nc + Tr::NR - 1) / Tr::NR;
        const bool streams = src == BSrc::kPacked && tiles.n <= 2 && n_pan >= 8;
        const int64_t S = streams ? (n_pan + 3) / 4 : n_pan, n_steps = streams ? 4 * S : n_pan;
        for (int64_t step = 0; step < n_steps; ++step) {
          const int64_t jj = streams ? step % 4 * S + step / 4 : step;
          if (jj >= n_pan) continue;
          const int64_t j0 = n0 + jj * Tr::NR;
          const int nv = int(std::min<int64_t>(Tr::NR, n0 + nc - j0));
          const float* pb;
          Prefetch pf;
          switch (src) {
            case BSrc::kPacked: {
              const int64_t j = j0 / Tr::NR;
              const bool has_next = streams ? jj + 1 < n_pan && (jj + 1) % S != 0
                                            : tiles.n <= 2 && j + 1 < pw->n_panels();
              if (has_next) {
                const int64_t lines = (kc * Tr::NR * int64_t(pw->elem_size()) + 63) / 64;
                const int64_t per_tile = (lines + tiles.n - 1) / tiles.n;
                pf.p = reinterpret_cast<const char*>(pw->panel(j + 1, k0));
                pf.step = 64 * ((per_tile + kc - 1) / kc);
                pf.n = (per_tile * 64 + pf.step - 1) / pf.step;
              }
              if (pw->dt == DType::F32) {
                pb = reinterpret_cast<const float*>(pw->panel(j, k0));
              } else {
                Tr::widen_panel(pw->panel(j, k0), pw->dt, kc * Tr::NR, bbuf);
                pb = bbuf;
              }
              break;
            }
            case BSrc::kFull: pb = bfull + ((j0 - n_lo) / Tr::NR * p.K + k0) * Tr::NR; break;
            default:
              Tr::pack_b(p, k0, kc, j0, nv, bbuf);
              pb = bbuf;
              break;
          }
          if (pf.p) {
            for (int64_t t = 0; t < tiles.n; ++t) {
              const int64_t r0 = tiles.start(t), mr = tiles.size(t);
              table_pf[mr - 1](kc, ablk + r0 * Tr::KC, pb, p.C + (m0 + r0) * p.ldc + j0, p.ldc,
                               nv, p.alpha, p.beta, first, pf);
              pf.p += pf.n * pf.step;  // the next tile prefetches the next part
            }
            continue;
          }
          if constexpr (HasKernelParts<Tr>) {
            if (!p.trans_a && tiles.n >= 3 && tiles.n <= kPartMaxTiles) {
              static constexpr auto table_part =
                  make_part_table<Tr>(std::make_integer_sequence<int, Tr::MR_MAX>{});
              static constexpr auto table_store =
                  make_store_table<Tr>(std::make_integer_sequence<int, Tr::MR_MAX>{});
              alignas(64) float acc[kPartMaxTiles][Tr::MR_MAX * Tr::NR];
              for (int64_t k = 0; k < kc; k += kPartK) {
                const int64_t ke = std::min(kc, k + kPartK);
                for (int64_t t = 0; t < tiles.n; ++t)
                  table_part[tiles.size(t) - 1](k, ke, ablk + tiles.start(t) * Tr::KC, pb, acc[t],
                                                k == 0);
              }
              for (int64_t t = 0; t < tiles.n; ++t) {
                const int64_t r0 = tiles.start(t);
                table_store[tiles.size(t) - 1](acc[t], p.C + (m0 + r0) * p.ldc + j0, p.ldc, nv,
                                               p.alpha, p.beta, first);
              }
              continue;
            }
          }
          const auto& table = p.trans_a ? table_km : table_rk;
          for (int64_t t = 0; t < tiles.n; ++t) {
            const int64_t r0 = tiles.start(t), mr = tiles.size(t);
            const float* pa = p.trans_a ? ablk + t * a_tile_stride<Tr>() : ablk + r0 * Tr::KC;
            table[mr - 1](kc, pa, pb, p.C + (m0 + r0) * p.ldc + j0, p.ldc, nv, p.alpha, p.beta,
                          first, kNoPrefetch);
          }
        }
      }
    }
  }
}

// Rough cycles for one thread's share (rows x cols of the product): FMA work (two FMA pipes,
// NR columns = NR/LANES vectors per row and k) plus packing A and B, at costs per element measured
// on the AVX2 path (Zen 5). Only used to choose between splitting rows and splitting columns.
template <class Tr>
double share_cost(const GemmProblem& p, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return 0.0;
  const int64_t panels = (cols + Tr::NR - 1) / Tr::NR;
  const int64_t blocks = n_row_blocks_for(rows, Tr::MC, max_block_rows<Tr>());
  const double compute = double(rows) * double(panels) * double(p.K);  // 2 FMAs per row, k, panel
  const double a_pack = double(rows) * double(p.K) * (p.trans_a ? 0.3 : 0.15);
  double b_each, b_times;
  if (p.packed) {
    b_each = p.packed->dt == DType::F32 ? 0.05 : 0.15;
    b_times = double(blocks);
  } else {
    b_each = !p.b_nk ? 0.2 : p.bt == DType::F32 ? 0.4 : 0.5;
    const bool full = blocks > 1 && panels * p.K * Tr::NR * 4 <= kFullBBytes;
    b_times = full ? 1.1 : double(blocks);
  }
  return compute + a_pack + double(panels * Tr::NR) * double(p.K) * b_each * b_times;
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
    } else {
      // Largest share of each split (all threads compute the same choice).
      const int64_t cols_share = (n_panels + nt - 1) / nt * Tr::NR;
      const int64_t rows_share = std::min(p.M, (m_tiles + nt - 1) / nt * Tr::MR_MAX);
      const bool by_cols =
          m_tiles < nt || (n_panels >= nt && share_cost<Tr>(p, p.M, std::min(p.N, cols_share)) <=
                                                 share_cost<Tr>(p, rows_share, p.N));
      if (by_cols) {
        // Columns: whole panels, as even as possible.
        const int64_t lo = split_lo(n_panels, nt, tid), hi = split_lo(n_panels, nt, tid + 1);
        if (hi > lo) gemm_range<Tr>(p, 0, p.M, lo * Tr::NR, std::min(p.N, hi * Tr::NR));
      } else {
        // Rows: whole MR_MAX tiles.
        const int64_t lo = split_lo(m_tiles, nt, tid), hi = split_lo(m_tiles, nt, tid + 1);
        if (hi > lo)
          gemm_range<Tr>(p, lo * Tr::MR_MAX, std::min(p.M, hi * Tr::MR_MAX), 0, p.N);
      }
    }
  }
}

// y (N) (+)= W·x on a packed weight, panels split evenly over the team: each thread reads its
// panels as one linear stream. Traits::matvec_panels(P, x, y, j_lo, j_hi, accumulate) does a
// range of panels with the GEMM's summation order.
template <class Tr>
void matvec_packed_run(const PackedWeight& P, const float* x, float* y, bool accumulate) {
  const int64_t n_panels = P.n_panels();
  const bool par = P.N * P.K >= kParallelMinMacs;
#pragma omp parallel if (par)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t lo = split_lo(n_panels, nt, tid), hi = split_lo(n_panels, nt, tid + 1);
    if (hi > lo) Tr::matvec_panels(P, x, y, lo, hi, accumulate);
  }
}

}  // namespace
}  // namespace qwen::ops::detail
