// tests/test_quant_q8_0.cpp — Q8_0 (GGUF 8-bit blocks): quantisation byte-identical to pip
// gguf's reference quantizer (round half away from zero, f16 scale, zero blocks; golden:
// tests/data/quant/make_golden.py), dequantisation equal to gguf's, and the AVX2 matvec /
// matmul against the scalar references on random odd shapes (the decode matvec within its
// 16-bit-activation bound).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/cpu.h"
#include "io/safetensors.h"
#include "ops/matmul.h"
#include "ops/q8_0.h"
#include "ops/quant.h"
#include "qwen/error.h"
#include "test_util.h"

using namespace qwen;
using namespace qwen_test;

namespace {

template <class T>
std::vector<T> tensor(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo* t = f.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<T> v(t->nbytes / sizeof(T));
  std::memcpy(v.data(), t->data, t->nbytes);
  return v;
}

}  // namespace

TEST(Q8_0, QuantizeIdenticalToGguf) {
  auto f = io::SafetensorsFile::open(data_path("quant/q8_0_golden.safetensors"));
  int n_cases = 0;
  for (const auto& t : f->tensors()) {
    const std::string suffix = ".input";
    if (t.name.size() < suffix.size() || t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string name = t.name.substr(0, t.name.size() - suffix.size());
    SCOPED_TRACE(name);
    ++n_cases;
    const auto x = tensor<float>(*f, name + ".input");
    const auto want = tensor<uint8_t>(*f, name + ".blocks");
    ASSERT_EQ(want.size(), x.size() / 32 * 34);
    std::vector<uint8_t> got(want.size());
    ops::q8_0_quantize(x.data(), got.data(), int64_t(x.size()));
    EXPECT_EQ(got, want);
    const auto deq = tensor<float>(*f, name + ".dequant");
    std::vector<float> a(x.size()), b(x.size());
    ops::q8_0_dequantize_ref(want.data(), a.data(), int64_t(x.size()));
    ops::q8_0_dequantize(want.data(), b.data(), int64_t(x.size()));
    EXPECT_EQ(std::memcmp(a.data(), deq.data(), a.size() * 4), 0);
    EXPECT_EQ(std::memcmp(b.data(), deq.data(), b.size() * 4), 0);
    // The table of ops/quant.h reaches the same functions.
    ops::quantize_row(DType::Q8_0, x.data(), got.data(), int64_t(x.size()));
    EXPECT_EQ(got, want);
  }
  EXPECT_EQ(n_cases, 4);
}

// The registered Q8_0 matvec rounds x to 16-bit blocks of 32 (ops/quant_gguf.h):
// |error| ≤ Σ_blocks max|x_b| / 32767 / 2 · Σ_b |w|.
static double act16_bound(const float* x, const float* w, int64_t K) {
  double bound = 0;
  for (int64_t b = 0; b < K / 32; ++b) {
    double amax = 0, wsum = 0;
    for (int j = 0; j < 32; ++j) {
      amax = std::max(amax, double(std::fabs(x[32 * b + j])));
      wsum += std::fabs(w[32 * b + j]);
    }
    bound += amax / 32767.0 / 2.0 * wsum;
  }
  return bound;
}

TEST(Q8_0, KernelsMatchReferenceOnOddShapes) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t N : {1, 2, 3, 7, 33}) {
    for (int64_t K : {32, 96, 1024}) {
      std::vector<float> w(size_t(N * K));
      for (auto& v : w) v = nd(rng) * 0.1f;
      std::vector<uint8_t> W(size_t(N * K / 32 * 34));
      ops::q8_0_quantize(w.data(), W.data(), N * K);
      std::vector<float> wf(size_t(N * K));
      ops::q8_0_dequantize_ref(W.data(), wf.data(), N * K);
      for (int64_t M : {1, 2, 3, 17}) {
        SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M));
        std::vector<float> X(size_t(M * K));
        for (auto& v : X) v = nd(rng);
        for (bool acc : {false, true}) {
          std::vector<float> ref(size_t(M * N), 0.75f), got(size_t(M * N), 0.75f), via(size_t(M * N), 0.75f);
          ops::q8_0_matmul_ref(X.data(), W.data(), ref.data(), M, N, K, acc);
          ops::q8_0_matmul(X.data(), W.data(), got.data(), M, N, K, acc);
          ops::matmul(X.data(), W.data(), DType::Q8_0, via.data(), M, N, K, acc);
          std::vector<float> deq(size_t(M * N), 0.75f);
          ops::q8_0_matmul_dequant(X.data(), W.data(), deq.data(), M, N, K, acc);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double abs_sum = acc ? 0.75 : 0.0;
              for (int64_t k = 0; k < K; ++k) abs_sum += std::fabs(double(X[size_t(m * K + k)]) * wf[size_t(n * K + k)]);
              // Every M runs the 16-bit-activation integer kernels (matvec, multi-row matmul);
              // the dequantise + GEMM path keeps x exact.
              const double tol_f32 = double(K + 4) * 6e-8 * abs_sum + 1e-30;
              const double tol = tol_f32 + act16_bound(X.data() + m * K, wf.data() + n * K, K);
              const size_t i = size_t(m * N + n);
              ASSERT_NEAR(got[i], ref[i], tol);
              ASSERT_NEAR(via[i], ref[i], tol);
              ASSERT_NEAR(deq[i], ref[i], tol_f32);
            }
          if (M == 1) {
            std::vector<float> y(size_t(N), 0.75f), yr(size_t(N), 0.75f);
            ops::q8_0_matvec_f32(W.data(), X.data(), y.data(), N, K, acc);
            ops::q8_0_matvec_ref(W.data(), X.data(), yr.data(), N, K, acc);
            for (int64_t n = 0; n < N; ++n) {
              double abs_sum = acc ? 0.75 : 0.0;
              for (int64_t k = 0; k < K; ++k) abs_sum += std::fabs(double(X[size_t(k)]) * wf[size_t(n * K + k)]);
              ASSERT_NEAR(y[size_t(n)], yr[size_t(n)], double(K + 4) * 6e-8 * abs_sum + 1e-30);
            }
          }
        }
      }
    }
  }
}

// The property the serving engine relies on to drop its batch-invariance companion row: every
// row of the multi-row matmul is bit-identical to the M = 1 matvec of that row, whatever M, the
// thread count, N % 4 (the last rows take the matvec's one-row path) and accumulate.
TEST(Q8_0, MatmulRowsBitIdenticalToMatvec) {
  const int saved_threads = num_threads();
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t N : {1, 3, 4, 5, 13, 130}) {
    for (int64_t K : {32, 96, 800}) {
      std::vector<float> w(size_t(N * K));
      for (auto& v : w) v = nd(rng) * 0.05f;
      std::vector<uint8_t> W(size_t(N * K / 32 * 34));
      ops::q8_0_quantize(w.data(), W.data(), N * K);
      for (int64_t M : {2, 3, 4, 5, 9, 37}) {
        SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M));
        std::vector<float> X(size_t(M * K));
        for (auto& v : X) v = nd(rng) * (1.0f + float(rng() % 100));
        // a zero block and a row of one huge value: the scales' edge cases
        std::fill(X.begin(), X.begin() + 32, 0.0f);
        X[size_t(K - 1)] = 3e4f;
        for (bool acc : {false, true})
          for (int threads : {1, 2}) {
            set_num_threads(threads);
            std::vector<float> Y(size_t(M * N));
            for (auto& v : Y) v = nd(rng);
            std::vector<float> want = Y;
            ops::q8_0_matmul(X.data(), W.data(), Y.data(), M, N, K, acc);
            for (int64_t m = 0; m < M; ++m)
              ops::q8_0_matvec(W.data(), X.data() + m * K, want.data() + m * N, N, K, acc);
            ASSERT_EQ(std::memcmp(Y.data(), want.data(), Y.size() * sizeof(float)), 0)
                << "threads=" << threads << " acc=" << acc;
          }
      }
    }
  }
  set_num_threads(saved_threads);
}

TEST(Q8_0, RejectsRowLengthNotMultipleOf32) {
  std::vector<uint8_t> W(34 * 4);
  std::vector<float> x(40), y(2);
  EXPECT_THROW(ops::matvec(W.data(), DType::Q8_0, x.data(), y.data(), 2, 40), Error);
}
