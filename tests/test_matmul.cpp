// tests/test_matmul.cpp — every matmul / matvec / gemm_f32 path (scalar, AVX2, AVX-512, each run
// by name through the *_isa entry points) against the double-accumulating scalar references, on
// random odd shapes that exercise every tail and every blocking boundary, for F32, BF16 and F16
// weights, with and without accumulate.
//
// Tolerance, from f32 rounding analysis: a dot product of n terms summed in f32 in any order
// (FMA or not, any blocking) differs from the exact value by at most gamma_n · Σ|x_k||w_k| with
// gamma_n = n·u / (1 − n·u), u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms,
// §3.1). Adding the old output (accumulate / beta) and scaling by alpha adds at most two more
// roundings, so we allow gamma_{K+3} · (|alpha|·Σ|x||w| + |beta·c|); the reference itself is
// rounded once from double (at most u·|exact| more). BF16/F16 weights widen to f32 exactly, so
// they get the same bound. A missing, doubled or misplaced term is off by ~|x||w| ≈ Σ/K, orders
// of magnitude above the bound for every K used here.
//
// The AVX-512 kernel file is also compiled into this test a second time against plain-C++
// stand-ins for its intrinsics (src/ops/matmul_avx512_emu.h), as the path "avx512-emulated", so
// its blocking, packing, transposes and tails are checked on machines without AVX-512 too.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "ops/matmul.h"
#include "qwen/error.h"

#define QWEN_AVX512_EMULATION 1
#include "ops/matmul_avx512.cpp"  // defines qwen::ops::detail::avx512_emulated::{gemm, matvec}
#undef QWEN_AVX512_EMULATION

namespace {

using qwen::DType;
using qwen::ops::KernelIsa;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kU = 1.0 / 16777216.0;  // 2^-24

double gamma_n(int64_t n) { return double(n) * kU / (1.0 - double(n) * kU); }

std::vector<KernelIsa> isas() {
  std::vector<KernelIsa> v;
  for (KernelIsa i : {KernelIsa::Scalar, KernelIsa::Avx2, KernelIsa::Avx512})
    if (qwen::ops::kernel_isa_available(i)) v.push_back(i);
  return v;
}

// One implementation of the three products: a real ISA path through the *_isa entry points, or
// the emulated AVX-512 kernel file called the way matmul.cpp calls the real one.
struct Path {
  std::string name;
  bool emulated = false;
  KernelIsa isa = KernelIsa::Scalar;

  void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
              bool acc) const {
    if (!emulated) return qwen::ops::matvec_isa(isa, W, wt, x, y, N, K, acc);
    qwen::ops::detail::avx512_emulated::matvec(W, wt, x, y, N, K, acc);
  }
  void matmul(const float* X, const void* W, DType wt, float* Y, int64_t M, int64_t N, int64_t K,
              bool acc) const {
    if (!emulated) return qwen::ops::matmul_isa(isa, X, W, wt, Y, M, N, K, acc);
    if (M == 1) return matvec(W, wt, X, Y, N, K, acc);
    qwen::ops::detail::GemmProblem p;
    p.M = M, p.N = N, p.K = K, p.A = X, p.lda = K, p.B = W, p.bt = wt, p.ldb = K, p.b_nk = true;
    p.C = Y, p.ldc = N, p.alpha = 1.0f, p.beta = acc ? 1.0f : 0.0f;
    qwen::ops::detail::avx512_emulated::gemm(p);
  }
  // The same product on the weight pre-packed for this path (pack_weight + matmul_packed; for
  // the emulated path, the AVX-512 panel layout fed to the emulated kernels).
  void matmul_packed(const float* X, const void* W, DType wt, float* Y, int64_t M, int64_t N,
                     int64_t K, bool acc) const {
    if (!emulated) {
      const auto P = qwen::ops::pack_weight(W, wt, N, K, isa);
      return qwen::ops::matmul_packed(X, *P, Y, M, acc);
    }
    const auto P = qwen::ops::detail::pack_weight_layout(W, wt, N, K, 32, KernelIsa::Avx512);
    if (M == 1) return qwen::ops::detail::avx512_emulated::matvec_packed(*P, X, Y, acc);
    qwen::ops::detail::GemmProblem p;
    p.M = M, p.N = N, p.K = K, p.A = X, p.lda = K, p.packed = P.get();
    p.C = Y, p.ldc = N, p.alpha = 1.0f, p.beta = acc ? 1.0f : 0.0f;
    qwen::ops::detail::avx512_emulated::gemm(p);
  }
  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
            int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) const {
    if (!emulated)
      return qwen::ops::gemm_f32_isa(isa, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    qwen::ops::detail::GemmProblem p;
    p.M = M, p.N = N, p.K = K, p.A = A, p.lda = lda, p.trans_a = ta, p.B = B, p.bt = DType::F32;
    p.ldb = ldb, p.b_nk = tb, p.C = C, p.ldc = ldc, p.alpha = alpha, p.beta = beta;
    qwen::ops::detail::avx512_emulated::gemm(p);
  }
};

std::vector<Path> paths() {
  std::vector<Path> v;
  for (KernelIsa i : isas()) v.push_back({qwen::ops::kernel_isa_name(i), false, i});
  v.push_back({"avx512-emulated", true, KernelIsa::Avx512});
  return v;
}

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Weights of dtype wt holding the rounded values of w, plus `pad` trailing NaN elements: a kernel
// that reads past the end of the weight matrix and uses what it reads produces NaN.
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<float> exact;  // the f32 value of every element (what the reference sees)
};

Weights make_weights(const std::vector<float>& w, DType wt, size_t pad = 64) {
  Weights r;
  const size_t n = w.size(), es = qwen::dtype_size(wt);
  r.bytes.resize((n + pad) * es);
  std::vector<float> padded(w);
  padded.resize(n + pad, kNaN);
  qwen::convert_from_f32(padded.data(), wt, r.bytes.data(), n + pad);
  r.exact.resize(n);
  qwen::convert_to_f32(r.bytes.data(), wt, r.exact.data(), n);
  return r;
}

std::string where(const Path& path, DType wt, int64_t M, int64_t N, int64_t K, bool acc) {
  return path.name + " " + qwen::dtype_name(wt) + " M=" + std::to_string(M) +
         " N=" + std::to_string(N) + " K=" + std::to_string(K) + (acc ? " accumulate" : "");
}

// Checks Y (M, N) against the reference with the bound above. sum_abs(m, n) = Σ|a||b|,
// y0(m, n) = the old output that was added (0 when none).
template <class SumAbs, class Old>
void expect_close(const float* got, const float* ref, int64_t M, int64_t N, int64_t ld, int64_t K,
                  SumAbs sum_abs, Old old_term, const std::string& ctx) {
  int64_t bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double g = got[m * ld + n], r = ref[m * ld + n];
      const double tol =
          gamma_n(K + 3) * (sum_abs(m, n) + std::fabs(old_term(m, n))) + kU * std::fabs(r) + 1e-30;
      if (!(std::fabs(g - r) <= tol)) {
        if (++bad <= 3)
          ADD_FAILURE() << ctx << ": Y[" << m << "," << n << "] = " << g << ", reference " << r
                        << ", |diff| " << std::fabs(g - r) << " > tol " << tol;
      }
    }
  EXPECT_EQ(bad, 0) << ctx;
}

// One random problem, its reference and bound computed once, run through every path in `ps`.
void check_matmul(const std::vector<Path>& ps, DType wt, int64_t M, int64_t N, int64_t K, bool acc,
                  std::mt19937& rng) {
  const std::vector<float> X = randn(size_t(M * K) + 64, rng);  // tail is read by nobody
  std::vector<float> Xp(X);
  for (size_t i = size_t(M * K); i < Xp.size(); ++i) Xp[i] = kNaN;
  const Weights W = make_weights(randn(size_t(N * K), rng, 0.5f), wt);
  const std::vector<float> Y0 = randn(size_t(M * N), rng, 4.0f);
  std::vector<float> R(Y0);
  qwen::ops::matmul_ref(Xp.data(), W.bytes.data(), wt, R.data(), M, N, K, acc);
  std::vector<double> S(size_t(M * N));  // Σ|x||w| per output
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += std::fabs(double(X[m * K + k]) * W.exact[n * K + k]);
      S[m * N + n] = s;
    }
  auto sum_abs = [&](int64_t m, int64_t n) { return S[m * N + n]; };
  auto old_term = [&](int64_t m, int64_t n) { return acc ? double(Y0[m * N + n]) : 0.0; };
  for (const Path& path : ps)
    for (bool packed : {false, true}) {
      std::vector<float> Y(Y0);
      Y.resize(Y0.size() + 64, 123.0f);  // guard after Y must stay untouched
      if (packed)
        path.matmul_packed(Xp.data(), W.bytes.data(), wt, Y.data(), M, N, K, acc);
      else
        path.matmul(Xp.data(), W.bytes.data(), wt, Y.data(), M, N, K, acc);
      const std::string ctx =
          std::string(packed ? "matmul_packed " : "matmul ") + where(path, wt, M, N, K, acc);
      expect_close(Y.data(), R.data(), M, N, N, K, sum_abs, old_term, ctx);
      for (size_t i = Y0.size(); i < Y.size(); ++i)
        ASSERT_EQ(Y[i], 123.0f) << ctx << ": wrote past the end of Y";
    }
}

TEST(Matmul, ReportsPaths) {
  std::string s;
  for (const Path& p : paths()) s += p.name + " ";
  std::cout << "paths tested: " << s
            << "(best: " << qwen::ops::kernel_isa_name(qwen::ops::best_kernel_isa()) << ")\n";
  EXPECT_TRUE(qwen::ops::kernel_isa_available(KernelIsa::Scalar));
}

TEST(Matmul, RandomOddShapesEveryPathAndDtype) {
  std::mt19937 rng(1234);
  const int64_t Ms[] = {1, 2, 3, 7, 17, 64, 129};
  const std::pair<int64_t, int64_t> NKs[] = {{1, 1},   {3, 5},    {17, 33}, {33, 17},
                                             {31, 47}, {65, 129}, {97, 15}};
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (int64_t M : Ms)
      for (auto [N, K] : NKs)
        for (bool acc : {false, true}) check_matmul(paths(), wt, M, N, K, acc, rng);
}

// Shapes that cross every cache block of both SIMD drivers (AVX-512: KC = 256, MC = 256,
// NC = 512; AVX2: KC = 768, MC = 192, NC = 1024), leave partial k blocks, row tiles of every size
// and partial column panels.
TEST(Matmul, CrossesBlockBoundaries) {
  std::mt19937 rng(99);
  for (DType wt : {DType::F32, DType::BF16, DType::F16}) {
    check_matmul(paths(), wt, 263, 555, 531, wt == DType::BF16, rng);
    check_matmul(paths(), wt, 30, 1041, 257, false, rng);
    check_matmul(paths(), wt, 37, 45, 1601, wt == DType::F16, rng);
  }
}

TEST(Matmul, SingleThreadAndSmallN) {
  std::mt19937 rng(7);
  const int saved = qwen::num_threads();
  qwen::set_num_threads(1);
  check_matmul(paths(), DType::BF16, 45, 77, 301, true, rng);
  qwen::set_num_threads(saved);
  // Few columns, many rows: the threads split the rows instead of the columns.
  check_matmul(paths(), DType::F32, 200, 9, 300, false, rng);
}

TEST(Matvec, RandomOddShapesEveryPathAndDtype) {
  std::mt19937 rng(4321);
  const int64_t Ns[] = {1, 2, 3, 5, 7, 33, 129, 1001};
  const int64_t Ks[] = {1, 3, 15, 16, 17, 31, 33, 63, 65, 767, 1025};
  const std::vector<Path> ps = paths();
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (int64_t N : Ns)
      for (int64_t K : Ks)
        for (bool acc : {false, true}) {
          const std::vector<float> x = randn(size_t(K), rng);
          std::vector<float> xp(x);
          xp.resize(size_t(K) + 64, kNaN);
          const Weights W = make_weights(randn(size_t(N * K), rng, 0.5f), wt);
          const std::vector<float> y0 = randn(size_t(N), rng, 4.0f);
          std::vector<float> r(y0);
          qwen::ops::matvec_ref(W.bytes.data(), wt, xp.data(), r.data(), N, K, acc);
          std::vector<double> S(static_cast<size_t>(N));
          for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k) S[n] += std::fabs(double(x[k]) * W.exact[n * K + k]);
          auto sum_abs = [&](int64_t, int64_t n) { return S[n]; };
          auto old_term = [&](int64_t, int64_t n) { return acc ? double(y0[n]) : 0.0; };
          for (const Path& path : ps) {
            std::vector<float> y(y0);
            y.resize(size_t(N) + 16, 7.0f);
            path.matvec(W.bytes.data(), wt, xp.data(), y.data(), N, K, acc);
            const std::string ctx = "matvec " + where(path, wt, 1, N, K, acc);
            expect_close(y.data(), r.data(), 1, N, N, K, sum_abs, old_term, ctx);
            for (size_t i = size_t(N); i < y.size(); ++i)
              ASSERT_EQ(y[i], 7.0f) << ctx << ": wrote past the end of y";
          }
        }
}

// The public entry points agree with the reference too (they dispatch to the best path).
TEST(Matmul, PublicEntryPoints) {
  std::mt19937 rng(5);
  const int64_t M = 37, N = 71, K = 93;
  const std::vector<float> X = randn(size_t(M * K), rng);
  const Weights W = make_weights(randn(size_t(N * K), rng), DType::BF16);
  std::vector<float> Y(size_t(M * N)), R(size_t(M * N));
  qwen::ops::matmul(X.data(), W.bytes.data(), DType::BF16, Y.data(), M, N, K);
  qwen::ops::matmul_ref(X.data(), W.bytes.data(), DType::BF16, R.data(), M, N, K);
  auto sum_abs = [&](int64_t m, int64_t n) {
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += std::fabs(double(X[m * K + k]) * W.exact[n * K + k]);
    return s;
  };
  auto zero = [](int64_t, int64_t) { return 0.0; };
  expect_close(Y.data(), R.data(), M, N, N, K, sum_abs, zero, "public matmul");
  std::vector<float> y(static_cast<size_t>(N)), r(static_cast<size_t>(N));
  qwen::ops::matvec(W.bytes.data(), DType::BF16, X.data(), y.data(), N, K);
  qwen::ops::matvec_ref(W.bytes.data(), DType::BF16, X.data(), r.data(), N, K);
  expect_close(y.data(), r.data(), 1, N, N, K, sum_abs, zero, "public matvec");
}

// Batch invariance: on a packed weight, row m of X·Wᵀ is bit-identical whatever the batch it is
// computed in (M = 1, the packed matvec, included), and equal to the unpacked GEMM's row for
// M >= 2 — the serving engine relies on a request's logits not depending on its companions.
// Shapes cross the k blocks (AVX2 KC = 768, AVX-512 KC = 256), the row blocks and both thread
// splits; the weight is random, so any change of summation order shows in the low bits.
TEST(MatmulPacked, RowsAreBitIdenticalAcrossBatchSizes) {
  std::mt19937 rng(31);
  const std::vector<Path> ps = paths();
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{45, 801}, {530, 40}, {16, 33}}) {
      const int64_t Mmax = 270;
      const std::vector<float> X = randn(size_t(Mmax * K), rng);
      const Weights W = make_weights(randn(size_t(N * K), rng, 0.5f), wt);
      const std::vector<float> Y0 = randn(size_t(Mmax * N), rng);
      for (const Path& path : ps)
        for (bool acc : {false, true}) {
          const std::string ctx = where(path, wt, Mmax, N, K, acc);
          std::vector<float> big(Y0), raw(Y0);
          path.matmul_packed(X.data(), W.bytes.data(), wt, big.data(), Mmax, N, K, acc);
          path.matmul(X.data(), W.bytes.data(), wt, raw.data(), Mmax, N, K, acc);
          ASSERT_EQ(big, raw) << ctx << ": packed and unpacked GEMM rows differ";
          // Batches of 1..48 rows taken from the middle of X must reproduce the big batch's rows
          // (13..48 rows: 3..8 row tiles, the k-chunked multi-tile loop of matmul_driver.h).
          for (int64_t M : {1, 2, 3, 5, 13, 16, 17, 29, 48}) {
            const int64_t m0 = 101;
            std::vector<float> y(Y0.begin() + m0 * N, Y0.begin() + (m0 + M) * N);
            path.matmul_packed(X.data() + m0 * K, W.bytes.data(), wt, y.data(), M, N, K, acc);
            for (int64_t i = 0; i < M * N; ++i)
              ASSERT_EQ(y[size_t(i)], big[size_t(m0 * N + i)])
                  << ctx << ": row " << i / N << " of a batch of " << M << " differs";
            if (M >= 2) {  // the unpacked GEMM agrees for M >= 2 too
              std::vector<float> z(Y0.begin() + m0 * N, Y0.begin() + (m0 + M) * N);
              path.matmul(X.data() + m0 * K, W.bytes.data(), wt, z.data(), M, N, K, acc);
              ASSERT_EQ(z, y) << ctx << ": unpacked batch of " << M << " differs";
            }
          }
        }
    }
}

// prepack_weight files the packed copy under W: the public matmul and matvec then return exactly
// matmul_packed's result; a different shape or dtype under the same pointer, or a released
// weight, goes back to the unpacked path.
TEST(MatmulPacked, RegistryRoutesPublicCalls) {
  std::mt19937 rng(8);
  const int64_t M = 9, N = 45, K = 70;
  const KernelIsa best = qwen::ops::best_kernel_isa();
  const std::vector<float> X = randn(size_t(M * K), rng);
  const Weights W = make_weights(randn(size_t(N * K), rng), DType::BF16);
  const void* w = W.bytes.data();
  const auto P = qwen::ops::pack_weight(w, DType::BF16, N, K, best);
  const size_t n = static_cast<size_t>(N), mn = static_cast<size_t>(M * N);
  std::vector<float> want(mn), want1(n), raw1(n), got(mn), got1(n);
  qwen::ops::matmul_packed(X.data(), *P, want.data(), M);
  qwen::ops::matmul_packed(X.data(), *P, want1.data(), 1);
  qwen::ops::matvec_isa(best, w, DType::BF16, X.data(), raw1.data(), N, K);
  EXPECT_GE(qwen::ops::packed_weight_bytes(*P), size_t(N * K * 2));
  {
    qwen::ops::PrepackedWeightGuard guard(w, DType::BF16, N, K);
    {  // a second filing of the same weight only adds a reference
      qwen::ops::PrepackedWeightGuard second(w, DType::BF16, N, K);
    }
    EXPECT_NE(qwen::ops::find_prepacked_weight(w, DType::BF16, N, K), nullptr);
    EXPECT_EQ(qwen::ops::find_prepacked_weight(w, DType::BF16, N - 1, K), nullptr);
    EXPECT_EQ(qwen::ops::find_prepacked_weight(w, DType::F16, N, K), nullptr);
    qwen::ops::matmul(X.data(), w, DType::BF16, got.data(), M, N, K);
    EXPECT_EQ(got, want);
    qwen::ops::matvec(w, DType::BF16, X.data(), got1.data(), N, K);
    EXPECT_EQ(got1, want1);
    // The first 44 rows of W under the same pointer: not the registered shape, so unpacked.
    std::vector<float> part(size_t(M * 44)), part_ref(size_t(M * 44));
    qwen::ops::matmul(X.data(), w, DType::BF16, part.data(), M, 44, K);
    qwen::ops::matmul_isa(best, X.data(), w, DType::BF16, part_ref.data(), M, 44, K);
    EXPECT_EQ(part, part_ref);
  }
  EXPECT_EQ(qwen::ops::find_prepacked_weight(w, DType::BF16, N, K), nullptr);
  qwen::ops::matvec(w, DType::BF16, X.data(), got1.data(), N, K);
  EXPECT_EQ(got1, raw1);  // released: the unpacked matvec again
  EXPECT_THROW(qwen::ops::pack_weight(w, DType::I32, N, K), qwen::Error);
  EXPECT_THROW(qwen::ops::pack_weight(w, DType::F32, 0, K), qwen::Error);
}

// One random strided problem, reference and bound computed once, run through every path.
void check_gemm(const std::vector<Path>& ps, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                float alpha, float beta, std::mt19937& rng) {
  // Strided operands: leading dimensions larger than needed, the gaps filled with NaN (never
  // to be read), C's gaps with a sentinel (never to be written).
  const int64_t rows_a = ta ? K : M, cols_a = ta ? M : K;
  const int64_t rows_b = tb ? N : K, cols_b = tb ? K : N;
  const int64_t lda = cols_a + 3, ldb = cols_b + 5, ldc = N + 2;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> A(size_t(rows_a * lda), kNaN), B(size_t(rows_b * ldb), kNaN);
  for (int64_t i = 0; i < rows_a; ++i)
    for (int64_t j = 0; j < cols_a; ++j) A[i * lda + j] = nd(rng);
  for (int64_t i = 0; i < rows_b; ++i)
    for (int64_t j = 0; j < cols_b; ++j) B[i * ldb + j] = nd(rng);
  std::vector<float> C0(size_t(M * ldc), -77.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) C0[m * ldc + n] = beta == 0.0f ? kNaN : nd(rng);
  std::vector<float> R(C0);
  qwen::ops::gemm_f32_ref(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, R.data(),
                          ldc);
  auto a_at = [&](int64_t m, int64_t k) { return ta ? A[k * lda + m] : A[m * lda + k]; };
  auto b_at = [&](int64_t k, int64_t n) { return tb ? B[n * ldb + k] : B[k * ldb + n]; };
  std::vector<double> S(size_t(M * N));  // |alpha|·Σ|a||b| per output
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += std::fabs(double(a_at(m, k)) * b_at(k, n));
      S[m * N + n] = std::fabs(alpha) * s;
    }
  auto sum_abs = [&](int64_t m, int64_t n) { return S[m * N + n]; };
  auto old_term = [&](int64_t m, int64_t n) {
    return beta == 0.0f ? 0.0 : double(beta) * C0[m * ldc + n];
  };
  for (const Path& path : ps) {
    std::vector<float> C(C0);
    path.gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
    const std::string ctx = "gemm_f32 " + path.name + (ta ? " A^T" : " A") + (tb ? " B^T" : " B") +
                            " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                            " K=" + std::to_string(K) + " alpha=" + std::to_string(alpha) +
                            " beta=" + std::to_string(beta);
    expect_close(C.data(), R.data(), M, N, ldc, K, sum_abs, old_term, ctx);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = N; n < ldc; ++n)
        ASSERT_EQ(C[m * ldc + n], -77.0f) << ctx << ": wrote into the gap of C";
  }
}

TEST(GemmF32, AllTransposesStridesAlphaBeta) {
  std::mt19937 rng(777);
  const int64_t shapes[][3] = {{1, 1, 1},     {2, 3, 5},     {7, 33, 17},  {17, 31, 65},
                               {64, 65, 129}, {129, 47, 33}, {3, 100, 300}};
  const float ab[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {-0.5f, 0.75f}, {2.0f, 0.0f}};
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (auto& s : shapes)
        for (auto& c : ab) check_gemm(paths(), ta, tb, s[0], s[1], s[2], c[0], c[1], rng);
}

TEST(GemmF32, CrossesBlockBoundaries) {
  std::mt19937 rng(778);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm(paths(), ta, tb, 270, 530, 300, 1.0f, 0.5f, rng);
      check_gemm(paths(), ta, tb, 23, 70, 1700, -1.0f, 0.0f, rng);
    }
}

// Tall and wide problems: the threads split rows or columns (cost model), row blocks repeat,
// so B is packed once up front; on one thread too.
TEST(GemmF32, BothThreadSplitsAndUpFrontB) {
  std::mt19937 rng(779);
  const int saved = qwen::num_threads();
  for (int threads : {1, 2})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        qwen::set_num_threads(threads);
        check_gemm(paths(), ta, tb, 461, 37, 129, 1.0f, 1.0f, rng);
        check_gemm(paths(), ta, tb, 30, 300, 811, 0.5f, 0.0f, rng);
        // one row block of more than MC rows (AVX2: 250 <= 4/3·192; AVX-512: 330 <= 4/3·256)
        check_gemm(paths(), ta, tb, threads == 1 ? 250 : 330, 20, 40, 1.0f, 0.0f, rng);
      }
  qwen::set_num_threads(saved);
}

TEST(GemmF32, DegenerateSizes) {
  std::vector<float> A(16, 1.0f), B(16, 1.0f), C(16, 3.0f);
  for (KernelIsa isa : isas()) {
    std::fill(C.begin(), C.end(), 3.0f);
    // K == 0: C = beta·C.
    qwen::ops::gemm_f32_isa(isa, false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 0.5f,
                            C.data(), 2);
    EXPECT_EQ(C[0], 1.5f);
    EXPECT_EQ(C[3], 1.5f);
    EXPECT_EQ(C[4], 3.0f);  // outside C
    // K == 0, beta == 0: C = 0 even if it held NaN.
    C[0] = kNaN;
    qwen::ops::gemm_f32_isa(isa, false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 0.0f,
                            C.data(), 2);
    EXPECT_EQ(C[0], 0.0f);
    // M == 0 / N == 0: nothing happens.
    qwen::ops::gemm_f32_isa(isa, false, false, 0, 2, 3, 1.0f, A.data(), 3, B.data(), 2, 0.0f,
                            C.data(), 2);
    EXPECT_EQ(C[1], 0.0f);
    std::vector<float> y(3, 5.0f);
    qwen::ops::matvec_isa(isa, A.data(), DType::F32, B.data(), y.data(), 3, 0, true);
    EXPECT_EQ(y[0], 5.0f);
    qwen::ops::matvec_isa(isa, A.data(), DType::F32, B.data(), y.data(), 3, 0, false);
    EXPECT_EQ(y[0], 0.0f);
  }
}

TEST(Matmul, RejectsBadArguments) {
  std::vector<float> a(64, 1.0f), c(64);
  EXPECT_THROW(qwen::ops::matmul(a.data(), a.data(), DType::I32, c.data(), 2, 2, 2), qwen::Error);
  EXPECT_THROW(qwen::ops::matvec(a.data(), DType::U8, a.data(), c.data(), 2, 2), qwen::Error);
  EXPECT_THROW(qwen::ops::matmul(a.data(), a.data(), DType::F32, c.data(), -1, 2, 2), qwen::Error);
  EXPECT_THROW(
      qwen::ops::gemm_f32(false, false, 2, 4, 3, 1.0f, a.data(), 2, a.data(), 4, 0.0f, c.data(), 4),
      qwen::Error);  // lda < K
  EXPECT_THROW(
      qwen::ops::gemm_f32(false, true, 2, 4, 3, 1.0f, a.data(), 3, a.data(), 2, 0.0f, c.data(), 4),
      qwen::Error);  // trans_b: ldb < K
  EXPECT_THROW(
      qwen::ops::gemm_f32(true, false, 5, 4, 3, 1.0f, a.data(), 3, a.data(), 4, 0.0f, c.data(), 4),
      qwen::Error);  // trans_a: lda < M
}

}  // namespace
