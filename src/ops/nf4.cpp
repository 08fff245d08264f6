// ops/nf4.cpp — NF4 matrices (see nf4.h): code table, the matrix header and its views, absmax
// dequantisation, scalar references, runtime dispatch to the AVX2 kernels (nf4_avx2.cpp), and
// DType::NF4's kernel table.
#include "ops/nf4.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "io/nf4_format.h"
#include "ops/matmul.h"
#include "ops/q8_0.h"
#include "ops/quant.h"
#include "qwen/error.h"

namespace qwen::ops {

// The Python doubles of bitsandbytes' table, rounded to f32 as torch.tensor does.
const float kNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

const std::array<int16_t, 16> kNf4CodeI16 = [] {
  std::array<int16_t, 16> t{};
  for (int c = 0; c < 16; ++c) t[size_t(c)] = int16_t(std::lround(double(kNf4Code[c]) * kNf4CodeI16Scale));
  return t;
}();

const std::array<uint8_t, 16> kNf4CodeU8 = [] {
  std::array<uint8_t, 16> t{};
  for (int c = 0; c < 16; ++c)
    t[size_t(c)] = uint8_t(std::lround(double(kNf4Code[c]) * kNf4CodeU8Scale) + kNf4CodeU8Offset);
  return t;
}();

namespace {

constexpr int64_t kParMin = 1 << 16;

struct Bounds {
  float b[15];
  Bounds() {
    for (int i = 0; i < 15; ++i) b[i] = (kNf4Code[i] + kNf4Code[i + 1]) / 2.0f;
  }
};
const Bounds kBounds;

constexpr size_t align64(size_t n) { return (n + 63) / 64 * 64; }

}  // namespace

uint8_t nf4_nearest_code(float v) {
  // torch.bucketize(v, bounds, right=False): the number of bounds strictly below v.
  uint8_t c = 0;
  for (int i = 0; i < 15; ++i) c += kBounds.b[i] < v ? 1 : 0;
  return c;
}

// ---- the matrix ----

namespace {

struct Layout {
  size_t absmax_off, nested_off, map_off, total;
};

Layout layout(int64_t N, int64_t K, bool dq, bool own_map, int64_t nested_bs) {
  const int64_t nb = N * K / kNf4Block;
  Layout l{};
  l.absmax_off = sizeof(Nf4Header) + align64(size_t(N * K / 2));
  const size_t absmax_bytes = dq ? size_t(nb) : size_t(nb) * 4;
  l.nested_off = l.absmax_off + align64(absmax_bytes);
  const size_t nested_bytes = dq ? size_t((nb + nested_bs - 1) / nested_bs) * 4 : 0;
  l.map_off = l.nested_off + align64(nested_bytes);
  l.total = l.map_off + (dq && own_map ? 256 * 4 : 0);
  return l;
}

}  // namespace

size_t nf4_matrix_bytes(int64_t N, int64_t K, bool double_quant, bool own_map) {
  return layout(N, K, double_quant, own_map, kNf4NestedBlock).total;
}

Nf4View nf4_matrix_init(void* dst, int64_t N, int64_t K, bool double_quant, float offset,
                        int32_t nested_blocksize, const float* own_map) {
  const Layout l = layout(N, K, double_quant, own_map != nullptr, nested_blocksize);
  auto* base = static_cast<uint8_t*>(dst);
  std::memset(base, 0, l.total);
  Nf4Header h{};
  std::memcpy(h.magic, "NF4M", 4);
  h.flags = (double_quant ? kNf4DoubleQuant : 0) | (double_quant && own_map ? kNf4OwnMap : 0);
  h.rows = N;
  h.cols = K;
  h.offset = offset;
  h.nested_blocksize = nested_blocksize;
  h.absmax_off = l.absmax_off;
  h.nested_off = l.nested_off;
  h.map_off = l.map_off;
  h.total_bytes = l.total;
  std::memcpy(base, &h, sizeof(h));
  if (double_quant && own_map) std::memcpy(base + l.map_off, own_map, 256 * 4);
  return nf4_view(dst);
}

Nf4View nf4_view(const void* W) {
  const auto* base = static_cast<const uint8_t*>(W);
  if (!W || std::memcmp(base, "NF4M", 4) != 0)
    throw Error("NF4 weights must be addressed as a whole matrix (no NF4 header at this address); "
                "use ops::dequantize_rows / matvec on the matrix pointer");
  Nf4View v;
  v.h = reinterpret_cast<const Nf4Header*>(base);
  v.codes = base + sizeof(Nf4Header);
  if (v.h->flags & kNf4DoubleQuant) {
    v.absmax_codes = base + v.h->absmax_off;
    v.nested = reinterpret_cast<const float*>(base + v.h->nested_off);
    v.map = (v.h->flags & kNf4OwnMap) ? reinterpret_cast<const float*>(base + v.h->map_off)
                                      : io::bnb_dynamic_map().data();
  } else {
    v.absmax_f32 = reinterpret_cast<const float*>(base + v.h->absmax_off);
  }
  return v;
}

size_t nf4_total_bytes(const void* W) { return nf4_view(W).h->total_bytes; }

void nf4_block_absmax(const Nf4View& v, int64_t b0, int64_t n, float* out) {
  if (v.absmax_f32) {
    std::memcpy(out, v.absmax_f32 + b0, size_t(n) * 4);
    return;
  }
  // Baseline x86-64 (this file is built without FMA): f32 multiply, then add, as bitsandbytes.
  // One run per nested block (no division per block: this feeds the decode matvec).
  const int64_t nbs = v.h->nested_blocksize;
  const float off = v.h->offset;
  for (int64_t i = 0; i < n;) {
    const int64_t b = b0 + i, g = b / nbs, e = std::min(n, (g + 1) * nbs - b0);
    const float nest = v.nested[g];
    for (; i < e; ++i) out[i] = v.map[v.absmax_codes[b0 + i]] * nest + off;
  }
}

std::vector<uint8_t> nf4_matrix_expand_absmax(const void* W) {
  const Nf4View v = nf4_view(W);
  const int64_t N = v.rows(), K = v.cols(), nb = N * K / kNf4Block;
  if (!v.absmax_codes) {
    const auto* p = static_cast<const uint8_t*>(W);
    return std::vector<uint8_t>(p, p + v.h->total_bytes);
  }
  std::vector<uint8_t> m(nf4_matrix_bytes(N, K, false));
  const Nf4View e = nf4_matrix_init(m.data(), N, K, false, v.h->offset, v.h->nested_blocksize, nullptr);
  std::memcpy(const_cast<uint8_t*>(e.codes), v.codes, size_t(N * K / 2));
  nf4_block_absmax(v, 0, nb, const_cast<float*>(e.absmax_f32));
  return m;
}

std::vector<uint8_t> nf4_quantize_matrix(const float* src, int64_t N, int64_t K, bool double_quant) {
  if (K % kNf4Block != 0)
    throw Error("NF4 quantisation: row length " + std::to_string(K) +
                " is not a multiple of 64 (keep such a matrix unquantised)");
  return io::bnb_to_nf4_matrix(io::bnb_quantize_nf4(src, {N, K}, double_quant));
}

// ---- dequantise ----

namespace {

// Blocks [b0, b0 + nb) of the matrix -> dst (nb·64), through the absmax in chunks.
void dequant_blocks(const Nf4View& v, int64_t b0, int64_t nb, float* dst, bool fast) {
  constexpr int64_t kChunk = 256;
  float am[kChunk];
  for (int64_t c = 0; c < nb; c += kChunk) {
    const int64_t n = std::min(kChunk, nb - c);
    nf4_block_absmax(v, b0 + c, n, am);
    const uint8_t* codes = v.codes + (b0 + c) * (kNf4Block / 2);
    float* o = dst + c * kNf4Block;
    if (fast) {
      detail::nf4_dequantize_blocks_avx2(codes, am, o, n);
      continue;
    }
    for (int64_t b = 0; b < n; ++b)
      for (int j = 0; j < kNf4Block / 2; ++j) {
        const uint8_t byte = codes[b * 32 + j];
        o[b * kNf4Block + 2 * j] = kNf4Code[byte >> 4] * am[b];
        o[b * kNf4Block + 2 * j + 1] = kNf4Code[byte & 15] * am[b];
      }
  }
}

}  // namespace

void nf4_dequantize_ref(const void* W, float* dst, int64_t n) {
  dequant_blocks(nf4_view(W), 0, n / kNf4Block, dst, false);
}

void nf4_dequantize(const void* W, float* dst, int64_t n) {
  dequant_blocks(nf4_view(W), 0, n / kNf4Block, dst, cpu_features().avx2);
}

void nf4_dequantize_rows(const void* W, int64_t row0, int64_t n_rows, int64_t K, float* dst) {
  const int64_t nb = K / kNf4Block;
  dequant_blocks(nf4_view(W), row0 * nb, n_rows * nb, dst, cpu_features().avx2);
}

// ---- matvec / matmul ----

void nf4_matvec_ref(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  const Nf4View v = nf4_view(W);
  const int64_t nb = K / kNf4Block;
  std::vector<float> am(static_cast<size_t>(nb));
  for (int64_t n = 0; n < N; ++n) {
    nf4_block_absmax(v, n * nb, nb, am.data());
    float s = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* c = v.codes + (n * nb + b) * 32;
      const float* xb = x + b * kNf4Block;
      float t = 0.0f;
      for (int j = 0; j < kNf4Block / 2; ++j)
        t += kNf4Code[c[j] >> 4] * xb[2 * j] + kNf4Code[c[j] & 15] * xb[2 * j + 1];
      s += am[size_t(b)] * t;
    }
    y[n] = acc ? y[n] + s : s;
  }
}

namespace {
std::atomic<int> g_decode{int(detail::Nf4Decode::kInt8)};

// Rows [n0, n1) of one thread of `nt` in a contiguous range of whole groups of 4 rows.
inline void thread_rows(int64_t N, int64_t t, int64_t nt, int64_t& n0, int64_t& n1) {
  const int64_t units = (N + 3) / 4;
  n0 = std::min(N, units * t / nt * 4);
  n1 = std::min(N, units * (t + 1) / nt * 4);
}
}  // namespace

void detail::nf4_set_decode(Nf4Decode k) { g_decode.store(int(k)); }
void detail::nf4_set_decode_f32(bool on) { nf4_set_decode(on ? Nf4Decode::kF32 : Nf4Decode::kInt8); }

void nf4_matvec(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  if (!cpu_features().avx2) return nf4_matvec_ref(W, x, y, N, K, acc);
  const int mode = g_decode.load(std::memory_order_relaxed);
  if (mode == int(detail::Nf4Decode::kF32)) return nf4_matvec_f32(W, x, y, N, K, acc);
  if (mode == int(detail::Nf4Decode::kInt16)) return nf4_matvec_i16(W, x, y, N, K, acc);
  const int64_t nb = K / kNf4Block;
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<int32_t> xc;
  thread_local std::vector<float> xs;
  if (xq.size() < size_t(K)) xq.resize(size_t(K));
  if (xc.size() < size_t(nb * 8)) xc.resize(size_t(nb * 8));
  if (xs.size() < size_t(nb + 8)) xs.resize(size_t(nb + 8), 0.0f);  // 8: vector tails
  if (!detail::nf4_quantize_act8(x, K, xq.data(), xc.data(), xs.data()))
    return nf4_matvec_f32(W, x, y, N, K, acc);
  const Nf4View v = nf4_view(W);
  const int8_t* xqp = xq.data();
  const int32_t* xcp = xc.data();
  const float* xsp = xs.data();
  // One parallel region; each thread takes one contiguous range of rows (rows of 4 when possible).
  if (N * K < kParMin || num_threads() <= 1) {
    detail::nf4_matvec_rows_act8_avx2(v, xqp, xcp, xsp, y, 0, N, K, acc);
    return;
  }
#pragma omp parallel
  {
    int64_t n0, n1;
    thread_rows(N, omp_get_thread_num(), omp_get_num_threads(), n0, n1);
    if (n1 > n0) detail::nf4_matvec_rows_act8_avx2(v, xqp, xcp, xsp, y, n0, n1, K, acc);
  }
}

void nf4_matvec_i16(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  if (!cpu_features().avx2) return nf4_matvec_ref(W, x, y, N, K, acc);
  thread_local std::vector<int16_t> xq;
  thread_local std::vector<float> xs;
  if (xq.size() < size_t(K)) xq.resize(size_t(K));
  if (xs.size() < size_t(K / kNf4Block + 8)) xs.resize(size_t(K / kNf4Block + 8), 0.0f);  // 8: vector tails
  if (!detail::nf4_quantize_act16(x, K, xq.data(), xs.data())) return nf4_matvec_f32(W, x, y, N, K, acc);
  const Nf4View v = nf4_view(W);
  const int16_t* xqp = xq.data();
  const float* xsp = xs.data();
  if (N * K < kParMin || num_threads() <= 1) {
    detail::nf4_matvec_rows_act16_avx2(v, xqp, xsp, y, 0, N, K, acc);
    return;
  }
#pragma omp parallel
  {
    int64_t n0, n1;
    thread_rows(N, omp_get_thread_num(), omp_get_num_threads(), n0, n1);
    if (n1 > n0) detail::nf4_matvec_rows_act16_avx2(v, xqp, xsp, y, n0, n1, K, acc);
  }
}

void nf4_matvec_f32(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  if (!cpu_features().avx2) return nf4_matvec_ref(W, x, y, N, K, acc);
  const Nf4View v = nf4_view(W);
  thread_local std::vector<float> xp;
  if (xp.size() < size_t(K)) xp.resize(size_t(K));
  detail::nf4_permute_x(x, xp.data(), K);
  const float* xpp = xp.data();
  // One parallel region; each thread takes one contiguous range of rows (rows of 4 when possible).
  if (N * K < kParMin || num_threads() <= 1) {
    detail::nf4_matvec_rows_avx2(v, xpp, y, 0, N, K, acc);
    return;
  }
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t units = (N + 3) / 4;
    const int64_t n0 = std::min(N, units * t / nt * 4), n1 = std::min(N, units * (t + 1) / nt * 4);
    if (n1 > n0) detail::nf4_matvec_rows_avx2(v, xpp, y, n0, n1, K, acc);
  }
}

void nf4_matmul_ref(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                    bool acc) {
  const Nf4View v = nf4_view(W);
  std::vector<float> w(size_t(K), 0.0f);
  const int64_t nb = K / kNf4Block;
  for (int64_t n = 0; n < N; ++n) {
    dequant_blocks(v, n * nb, nb, w.data(), false);
    for (int64_t m = 0; m < M; ++m) {
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s += X[m * K + k] * w[size_t(k)];
      Y[m * N + n] = acc ? Y[m * N + n] + s : s;
    }
  }
}

void nf4_matmul_dequant(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                        bool acc) {
  matmul_dequant_panels(X, W, DType::NF4, nf4_dequantize_rows, Y, M, N, K, acc);
}

void nf4_matmul_act8(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc) {
  if (M <= 0 || N <= 0) return;
  if (!cpu_features().avx2) return nf4_matmul_dequant(X, W, Y, M, N, K, acc);
  if (M < 4) {  // the matvec per row: faster at 2-3 rows (bench_quant_rows --type nf4), the same results
    for (int64_t m = 0; m < M; ++m) nf4_matvec(W, X + m * K, Y + m * N, N, K, acc);
    return;
  }
  const Nf4View v = nf4_view(W);
  const int64_t nb = K / kNf4Block;
  // Per row: int8 activations, the matvec's xc (8 per block) and scales (M, nb; + 8 floats of
  // vector tail as nf4_matvec keeps) and whether it quantised; then the rows that did, in tiles.
  thread_local std::vector<int8_t> xq, xt;
  thread_local std::vector<int32_t> xc8, ct;
  thread_local std::vector<float> xs, xst;
  thread_local std::vector<float*> yrow;
  thread_local std::vector<uint8_t> ok;
  const int64_t n_tiles = (M + 3) / 4;
  if (xq.size() < size_t(M * K)) xq.resize(size_t(M * K));
  if (xt.size() < size_t(n_tiles * 4 * K)) xt.resize(size_t(n_tiles * 4 * K));
  if (xc8.size() < size_t(M * nb * 8)) xc8.resize(size_t(M * nb * 8));
  if (ct.size() < size_t(n_tiles * 4 * nb)) ct.resize(size_t(n_tiles * 4 * nb));
  if (xs.size() < size_t(M * nb + 8)) xs.resize(size_t(M * nb + 8), 0.0f);
  if (xst.size() < size_t(n_tiles * 4 * nb)) xst.resize(size_t(n_tiles * 4 * nb), 0.0f);
  ok.assign(size_t(M), 0);
  int8_t *xqp = xq.data(), *xtp = xt.data();
  int32_t *xc8p = xc8.data(), *ctp = ct.data();
  float *xsp = xs.data(), *xstp = xst.data();
  uint8_t* okp = ok.data();
  const bool par = M * N * K >= 2 * kParMin && num_threads() > 1;
#pragma omp parallel for schedule(static) if (par && M * K >= kParMin)
  for (int64_t m = 0; m < M; ++m)
    okp[m] = detail::nf4_quantize_act8(X + m * K, K, xqp + m * K, xc8p + m * nb * 8, xsp + m * nb) ? 1 : 0;
  yrow.clear();
  int64_t G = 0;  // rows that quantised, in order; the others take the exact kernel as in nf4_matvec
  for (int64_t m = 0; m < M; ++m) {
    if (!okp[m]) {
      nf4_matvec_f32(W, X + m * K, Y + m * N, N, K, acc);
      continue;
    }
    const int64_t t = G / 4, i = G % 4;
    for (int64_t b = 0; b < nb; ++b) {
      std::memcpy(xtp + ((t * nb + b) * 4 + i) * 64, xqp + m * K + b * 64, 64);
      ctp[(t * nb + b) * 4 + i] = xc8p[(m * nb + b) * 8];
      xstp[(t * nb + b) * 4 + i] = xsp[m * nb + b];
    }
    yrow.push_back(Y + m * N);
    ++G;
  }
  if (G == 0) return;
  const detail::Nf4ActTiles tiles{xtp, ctp, xstp, yrow.data(), G};
  const int64_t n_single = N / 4 * 4;
  if (!par) {
    detail::nf4_matmul_rows_act8_avx2(v, tiles, 0, N, n_single, K, acc);
    return;
  }
#pragma omp parallel
  {
    int64_t n0, n1;
    thread_rows(N, omp_get_thread_num(), omp_get_num_threads(), n0, n1);
    if (n1 > n0) detail::nf4_matmul_rows_act8_avx2(v, tiles, n0, n1, n_single, K, acc);
  }
}

bool nf4_matmul_row_invariant() {
  return cpu_features().avx2 && g_decode.load(std::memory_order_relaxed) == int(detail::Nf4Decode::kInt8);
}

void nf4_matmul(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc) {
  if (M == 1) return nf4_matvec(W, X, Y, N, K, acc);
  if (nf4_matmul_row_invariant()) return nf4_matmul_act8(X, W, Y, M, N, K, acc);
  nf4_matmul_dequant(X, W, Y, M, N, K, acc);
}

void nf4_matmul_input_backward_ref(const float* dY, const void* W, float* dX, int64_t M, int64_t N,
                                   int64_t K, bool accumulate) {
  std::vector<float> w(size_t(N * K));
  nf4_dequantize_ref(W, w.data(), N * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      float s = 0.0f;
      for (int64_t n = 0; n < N; ++n) s += dY[m * N + n] * w[size_t(n * K + k)];
      dX[m * K + k] = accumulate ? dX[m * K + k] + s : s;
    }
}

void nf4_matmul_input_backward(const float* dY, const void* W, float* dX, int64_t M, int64_t N,
                               int64_t K, bool accumulate) {
  if (M <= 0 || K <= 0) return;
  if (N <= 0) {
    if (!accumulate) std::fill(dX, dX + M * K, 0.0f);
    return;
  }
  // Panels of W rows (n0 .. n0+nb) dequantised to f32 (nb, K); dX += dY[:, n0:n0+nb] · panel.
  int64_t nb = std::max<int64_t>(64, (int64_t(1) << 20) / K);
  nb = std::min(N, (nb + 15) / 16 * 16);
  thread_local std::vector<float> panel;
  if (panel.size() < size_t(nb * K)) panel.assign(size_t(nb * K), 0.0f);
  float* p = panel.data();
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    const int64_t rows = std::min(nb, N - n0);
    const int64_t n_chunks = (rows + 7) / 8;
#pragma omp parallel for schedule(static) if (rows * K >= kParMin)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t r0 = c * 8, r1 = std::min(rows, r0 + 8);
      nf4_dequantize_rows(W, n0 + r0, r1 - r0, K, p + r0 * K);
    }
    const float beta = (accumulate || n0 > 0) ? 1.0f : 0.0f;
    gemm_f32(false, false, M, K, rows, 1.0f, dY + n0, N, p, K, beta, dX, K);
  }
}

namespace detail {

static void nf4_quantize_whole(const float* src, void* dst, int64_t N, int64_t K) {
  const std::vector<uint8_t> m = nf4_quantize_matrix(src, N, K, true);
  std::memcpy(dst, m.data(), m.size());
}

static const QuantKernels kNf4Kernels = [] {
  QuantKernels k;
  k.dequantize = nf4_dequantize;
  k.quantize = nullptr;  // an NF4 matrix is quantised whole (quantize_matrix), not row by row
  k.matvec = nf4_matvec;
  k.matvec_ref = nf4_matvec_ref;
  k.matmul = nf4_matmul;
  k.matmul_ref = nf4_matmul_ref;
  k.dequantize_rows = nf4_dequantize_rows;
  k.quantize_matrix = nf4_quantize_whole;
  k.matrix_bytes = [](int64_t N, int64_t K) { return nf4_matrix_bytes(N, K, true); };
  return k;
}();

const QuantKernels* nf4_kernels() { return &kNf4Kernels; }

}  // namespace detail

}  // namespace qwen::ops
