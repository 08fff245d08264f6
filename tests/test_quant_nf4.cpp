// tests/test_quant_nf4.cpp — NF4 as bitsandbytes defines it, and the NF4 kernels:
//  - quantize_4bit codes, absmax, double-quant fields (8-bit absmax codes, nested absmax, offset,
//    dynamic map) and dequantize_4bit identical to pip bitsandbytes (CPU) on odd sizes, partial
//    blocks, exact ties, zero blocks (golden: tests/data/quant/make_golden.py);
//  - the packed quant_state JSON as bitsandbytes writes it;
//  - the AVX2 dequantise / matvec / matmul / input-backward kernels against their scalar
//    references on random odd shapes; the multi-row matmul's rows bit-identical to the matvec.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/cpu.h"
#include "io/nf4_format.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/model.h"
#include "ops/matmul.h"
#include "ops/nf4.h"
#include "ops/quant.h"
#include "qwen/error.h"
#include "test_util.h"

using namespace qwen;
using namespace qwen_test;

namespace {

std::unique_ptr<io::SafetensorsFile>& golden() {
  static auto f = io::SafetensorsFile::open(data_path("quant/nf4_golden.safetensors"));
  return f;
}

template <class T>
std::vector<T> tensor(const std::string& name) {
  const io::TensorInfo* t = golden()->find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<T> v(t->nbytes / sizeof(T));
  std::memcpy(v.data(), t->data, t->nbytes);
  return v;
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  for (const auto& [k, v] : golden()->metadata()) {
    const std::string suffix = ".shape";
    if (k.size() > suffix.size() && k.compare(k.size() - suffix.size(), suffix.size(), suffix) == 0)
      names.push_back(k.substr(0, k.size() - suffix.size()));
  }
  return names;
}

std::vector<int64_t> case_shape(const std::string& name) {
  return nlohmann::json::parse(golden()->metadata().at(name + ".shape")).get<std::vector<int64_t>>();
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

}  // namespace

TEST(Nf4Bnb, CodeTableAndDynamicMapMatchBitsandbytes) {
  const auto qm = tensor<float>("odd_7x13.plain.quant_map");
  ASSERT_EQ(qm.size(), 16u);
  EXPECT_TRUE(same_bits(qm, std::vector<float>(ops::kNf4Code, ops::kNf4Code + 16)));
  const auto dm = tensor<float>("odd_7x13.dq.nested_quant_map");
  const auto& ours = io::bnb_dynamic_map();
  EXPECT_TRUE(same_bits(dm, std::vector<float>(ours.begin(), ours.end())));
}

TEST(Nf4Bnb, QuantizeIdenticalToBitsandbytes) {
  const auto names = case_names();
  ASSERT_GE(names.size(), 9u);
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const auto x = tensor<float>(name + ".input");
    const auto shape = case_shape(name);
    for (bool dq : {false, true}) {
      const std::string tag = name + (dq ? ".dq" : ".plain");
      io::Nf4Tensor q = io::bnb_quantize_nf4(x.data(), shape, dq);
      EXPECT_EQ(q.packed, tensor<uint8_t>(tag + ".packed")) << tag;
      if (dq) {
        EXPECT_EQ(q.absmax_codes, tensor<uint8_t>(tag + ".absmax")) << tag;
        EXPECT_TRUE(same_bits(q.nested_absmax, tensor<float>(tag + ".nested_absmax"))) << tag;
        const auto off = tensor<float>(tag + ".nested_offset");
        ASSERT_EQ(off.size(), 1u);
        EXPECT_EQ(std::memcmp(&q.nested_offset, &off[0], 4), 0)
            << tag << ": offset " << q.nested_offset << " vs " << off[0];
      } else {
        EXPECT_TRUE(same_bits(q.absmax, tensor<float>(tag + ".absmax"))) << tag;
      }
      std::vector<float> deq(size_t(q.numel));
      io::bnb_dequantize_nf4(q, deq.data());
      EXPECT_TRUE(same_bits(deq, tensor<float>(tag + ".dequant"))) << tag;
      // The JSON bitsandbytes stores next to the weight.
      EXPECT_EQ(io::bnb_quant_state_json(q), golden()->metadata().at(tag + ".quant_state")) << tag;
    }
  }
}

TEST(Nf4Bnb, QuantStateJsonParses) {
  io::Nf4Tensor t;
  io::bnb_parse_quant_state_json(golden()->metadata().at("dq_19301.dq.quant_state"), &t, "golden");
  EXPECT_TRUE(t.double_quant);
  EXPECT_EQ(t.shape, std::vector<int64_t>{19301});
  EXPECT_EQ(t.blocksize, 64);
  EXPECT_EQ(t.nested_blocksize, 256);
  EXPECT_EQ(t.nested_offset, tensor<float>("dq_19301.dq.nested_offset")[0]);
  io::bnb_parse_quant_state_json(golden()->metadata().at("odd_7x13.plain.quant_state"), &t, "golden");
  EXPECT_FALSE(t.double_quant);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{7, 13}));
  EXPECT_THROW(io::bnb_parse_quant_state_json("{\"quant_type\": \"fp4\", \"blocksize\": 64}", &t, "x"), Error);
  EXPECT_THROW(io::bnb_parse_quant_state_json("not json", &t, "x"), Error);
}

// The in-memory matrix of a (rows, 64·k) tensor holds bitsandbytes' own arrays (codes, 8-bit
// absmax codes, nested absmax, offset: the double-quantised form, ~4.13 bits per weight) and
// dequantises to exactly what bitsandbytes gives.
TEST(Nf4Bnb, InMemoryMatrixKeepsDoubleQuantAndDequantisesLikeBitsandbytes) {
  const auto x = tensor<float>("full_64x64.input");
  for (bool dq : {false, true}) {
    SCOPED_TRACE(dq ? "dq" : "plain");
    const std::string tag = std::string("full_64x64.") + (dq ? "dq" : "plain");
    io::Nf4Tensor q = io::bnb_quantize_nf4(x.data(), {64, 64}, dq);
    const std::vector<uint8_t> m = io::bnb_to_nf4_matrix(q);
    EXPECT_EQ(m.size(), ops::nf4_matrix_bytes(64, 64, dq));
    const ops::Nf4View v = ops::nf4_view(m.data());
    EXPECT_EQ(std::vector<uint8_t>(v.codes, v.codes + 64 * 32), tensor<uint8_t>(tag + ".packed"));
    if (dq) {
      EXPECT_EQ(std::vector<uint8_t>(v.absmax_codes, v.absmax_codes + 64), tensor<uint8_t>(tag + ".absmax"));
      EXPECT_TRUE(same_bits(std::vector<float>(v.nested, v.nested + 1), tensor<float>(tag + ".nested_absmax")));
      EXPECT_EQ(v.absmax_f32, nullptr);
    } else {
      EXPECT_TRUE(same_bits(std::vector<float>(v.absmax_f32, v.absmax_f32 + 64), tensor<float>(tag + ".absmax")));
    }
    std::vector<float> a(64 * 64), b(64 * 64);
    ops::nf4_dequantize_ref(m.data(), a.data(), 64 * 64);
    EXPECT_TRUE(same_bits(a, tensor<float>(tag + ".dequant")));
    ops::nf4_dequantize(m.data(), b.data(), 64 * 64);
    EXPECT_TRUE(same_bits(a, b));
    // Quantising the f32 matrix directly gives the same bytes.
    EXPECT_EQ(ops::nf4_quantize_matrix(x.data(), 64, 64, dq), m);
  }
  // Rows that are not whole blocks cannot become an in-memory matrix.
  const auto y = tensor<float>("odd_7x13.input");
  io::Nf4Tensor q = io::bnb_quantize_nf4(y.data(), {7, 13}, false);
  EXPECT_THROW(io::bnb_to_nf4_matrix(q), Error);
}

// Several nested blocks of 256 absmax, with rows straddling their boundaries: every value equals
// io::bnb_dequantize_nf4 (the path the golden files check against bitsandbytes), the memory is
// 33 bytes per 64 weights + the header and nested absmax, and a row pointer is refused.
TEST(Nf4Bnb, InMemoryMatrixAcrossNestedBlocks) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 0.03f);
  const int64_t N = 37, K = 64 * 19;  // 703 blocks: 3 nested blocks, rows straddle 256 and 512
  std::vector<float> w(size_t(N * K));
  for (auto& v : w) v = nd(rng);
  w[5] = 0.9f;  // one heavy block
  for (bool dq : {true, false}) {
    SCOPED_TRACE(dq ? "dq" : "plain");
    io::Nf4Tensor q = io::bnb_quantize_nf4(w.data(), {N, K}, dq);
    std::vector<float> want(size_t(N * K)), got(size_t(N * K)), rows(size_t(5 * K));
    io::bnb_dequantize_nf4(q, want.data());
    const std::vector<uint8_t> m = ops::nf4_quantize_matrix(w.data(), N, K, dq);
    ops::nf4_dequantize_ref(m.data(), got.data(), N * K);
    EXPECT_TRUE(same_bits(got, want));
    ops::nf4_dequantize(m.data(), got.data(), N * K);
    EXPECT_TRUE(same_bits(got, want));
    ops::dequantize_rows(DType::NF4, m.data(), N, K, 6, 5, rows.data());
    EXPECT_TRUE(same_bits(rows, std::vector<float>(want.begin() + 6 * K, want.begin() + 11 * K)));
    const size_t blocks = size_t(N * K / 64);
    const size_t expect = 64 + (dq ? blocks * 33 + 3 * 4 : blocks * 36);
    EXPECT_GE(m.size(), expect);
    EXPECT_LE(m.size(), expect + 3 * 64);  // each array padded to 64 bytes
    EXPECT_EQ(ops::quant_matrix_bytes(DType::NF4, N, K), ops::nf4_matrix_bytes(N, K, true));
    EXPECT_THROW(ops::nf4_view(m.data() + 64 + K / 2), Error);
    EXPECT_THROW(ops::quantize_row(DType::NF4, w.data(), got.data(), K), Error);
  }
}

// ---- kernels ----

namespace {

// A random NF4 matrix, double-quantised or not (alternating per call).
std::vector<uint8_t> random_nf4(int64_t N, int64_t K, std::mt19937& rng) {
  static int calls = 0;
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> w(size_t(N * K));
  for (auto& v : w) v = nd(rng);
  return ops::nf4_quantize_matrix(w.data(), N, K, calls++ % 2 == 0);
}

std::vector<float> random_vec(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// |a - b| within the worst-case f32 summation bound of a length-K dot product, from the
// exact (double) products of dequantised weights.
void expect_close_dot(const std::vector<float>& got, const std::vector<float>& ref,
                      const std::vector<double>& abs_sum, int64_t K, const char* what) {
  ASSERT_EQ(got.size(), ref.size());
  const double eps = double(K + 4) * 6e-8;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], ref[i], eps * abs_sum[i] + 1e-30) << what << " at " << i;
}

// The two integer matvecs: nf4_matvec (8-bit, registered) and nf4_matvec_i16 (16-bit).
enum class IntKernel { k8, k16 };

// The documented error bound of an integer matvec (ops/nf4.h, nf4_matvec) for each row of W
// against the exact value, computed from the matrix's codes and absmax: table rounding e_w of
// absmax per weight (8-bit: kNf4CodeU8MaxErr; 16-bit: 0.5/8191), activation rounding
// 0.5·s_b·(1 + 2^-6) per element (s_b = max|x_b|/127, resp. /32767), and f32 rounding
// (nb + 16)·2^-24 of the sum of |products|.
std::vector<double> int_bound(const std::vector<uint8_t>& W, const float* x, int64_t N, int64_t K,
                              IntKernel kind) {
  const ops::Nf4View v = ops::nf4_view(W.data());
  const int64_t nb = K / 64;
  std::vector<float> am(size_t(N * nb));
  ops::nf4_block_absmax(v, 0, N * nb, am.data());
  const double ew = kind == IntKernel::k8 ? ops::kNf4CodeU8MaxErr : 0.5 / 8191.0;
  const double levels = kind == IntKernel::k8 ? 127.0 : 32767.0;
  std::vector<double> bound(size_t(N), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double q = 0, mag = 0;
    for (int64_t b = 0; b < nb; ++b) {
      double xmax = 0;
      for (int j = 0; j < 64; ++j) xmax = std::max(xmax, std::fabs(double(x[b * 64 + j])));
      const double ex = 0.5 * xmax / levels * (1.0 + 1.0 / 64.0);
      const double a = am[size_t(n * nb + b)];
      for (int j = 0; j < 64; ++j) {
        const uint8_t byte = v.codes[(n * nb + b) * 32 + j / 2];
        const double c = ops::kNf4Code[j % 2 == 0 ? byte >> 4 : byte & 15];
        const double xj = std::fabs(double(x[b * 64 + j]));
        q += std::fabs(a) * (ew * xj + ex * std::fabs(c) + ew * ex);
        mag += std::fabs(a * c * xj);
      }
    }
    bound[size_t(n)] = q + double(nb + 16) * std::ldexp(1.0, -24) * mag;
  }
  return bound;
}

// got = run(y, acc) against ref (nf4_matvec_ref, which adds y0 when y0 != 0) within the integer
// kernel's bound plus the reference's own f32 summation bound, (K + 4)·6e-8 of Σ|products| (+ |y0|).
template <class Run>
void expect_int_close(IntKernel kind, const std::vector<uint8_t>& W, const float* x, std::vector<float>& got,
                      const std::vector<float>& ref, int64_t N, int64_t K, double y0, Run run,
                      const char* what) {
  got.assign(size_t(N), -7.0f);
  run(got.data(), y0 != 0.0);
  const std::vector<double> b = int_bound(W, x, N, K, kind);
  std::vector<float> wf(size_t(N * K));
  ops::nf4_dequantize_ref(W.data(), wf.data(), N * K);
  for (int64_t n = 0; n < N; ++n) {
    double mag = std::fabs(y0);
    for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(x[k]) * wf[size_t(n * K + k)]);
    const double tol = b[size_t(n)] + double(K + 4) * 6e-8 * mag + 2e-7 * std::fabs(y0);
    ASSERT_NEAR(got[size_t(n)], ref[size_t(n)], tol) << what << " row " << n;
  }
}

}  // namespace

TEST(Nf4Kernels, Int8CodeTableIsTheRoundedNf4Table) {
  double worst = 0;
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(int(ops::kNf4CodeU8[size_t(c)]), int(std::lround(double(ops::kNf4Code[c]) * 64.0)) + 64) << c;
    const double err = std::fabs((ops::kNf4CodeU8[size_t(c)] - 64.0) / 64.0 - ops::kNf4Code[c]);
    EXPECT_LE(err, ops::kNf4CodeU8MaxErr) << c;
    worst = std::max(worst, err);
  }
  // The documented e_w is the table's actual worst case, not a loose constant.
  EXPECT_GE(worst, ops::kNf4CodeU8MaxErr - 1e-6);
  EXPECT_EQ(ops::kNf4CodeU8[0], 0);
  EXPECT_EQ(ops::kNf4CodeU8[7], 64);
  EXPECT_EQ(ops::kNf4CodeU8[15], 128);
}

TEST(Nf4Kernels, Int16CodeTableIsTheRoundedNf4Table) {
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(ops::kNf4CodeI16[size_t(c)], int16_t(std::lround(double(ops::kNf4Code[c]) * 8191.0))) << c;
    EXPECT_LE(std::fabs(ops::kNf4CodeI16[size_t(c)] / 8191.0 - ops::kNf4Code[c]), 0.5 / 8191.0) << c;
  }
  EXPECT_EQ(ops::kNf4CodeI16[0], -8191);
  EXPECT_EQ(ops::kNf4CodeI16[15], 8191);
}

TEST(Nf4Kernels, DequantiseMatchesReferenceExactly) {
  std::mt19937 rng(5);
  for (int64_t n : {64, 128, 64 * 37, 64 * 301, 64 * 301}) {
    auto q = random_nf4(1, n, rng);
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    ops::nf4_dequantize_ref(q.data(), a.data(), n);
    ops::nf4_dequantize(q.data(), b.data(), n);
    EXPECT_TRUE(same_bits(a, b)) << n;
    ops::dequantize_row(DType::NF4, q.data(), b.data(), n);
    EXPECT_TRUE(same_bits(a, b)) << n;
  }
}

TEST(Nf4Kernels, MatvecAndMatmulMatchReferenceOnOddShapes) {
  std::mt19937 rng(11);
  for (int64_t N : {1, 3, 17, 33}) {
    for (int64_t K : {64, 192, 320, 64 * 19}) {  // 64·19: rows straddle nested blocks of 256
      auto W = random_nf4(N, K, rng);
      std::vector<float> wf(size_t(N * K));
      ops::nf4_dequantize_ref(W.data(), wf.data(), N * K);
      for (int64_t M : {1, 2, 5, 31}) {
        SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M));
        auto X = random_vec(size_t(M * K), rng);
        std::vector<double> abs_sum(size_t(M * N), 0.0);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k)
              abs_sum[size_t(m * N + n)] += std::fabs(double(X[size_t(m * K + k)]) * wf[size_t(n * K + k)]);
        std::vector<float> ref(size_t(M * N)), got(size_t(M * N));
        ops::nf4_matmul_ref(X.data(), W.data(), ref.data(), M, N, K, false);
        if (M == 1) {  // decode: nf4_matmul and ops::matmul run the 8-bit integer matvec
          const IntKernel k8 = IntKernel::k8;
          expect_int_close(k8, W, X.data(), got, ref, N, K, 0.0, [&](float* y, bool acc) {
            ops::nf4_matvec(W.data(), X.data(), y, N, K, acc);
          }, "matvec");
          expect_int_close(k8, W, X.data(), got, ref, N, K, 0.0, [&](float* y, bool) {
            ops::nf4_matmul(X.data(), W.data(), y, 1, N, K, false);
          }, "matmul M=1");
          expect_int_close(k8, W, X.data(), got, ref, N, K, 0.0, [&](float* y, bool) {
            ops::matmul(X.data(), W.data(), DType::NF4, y, 1, N, K);
          }, "ops::matmul M=1");
          std::vector<float> ref_acc(size_t(N), 1.5f);
          ops::nf4_matvec_ref(W.data(), X.data(), ref_acc.data(), N, K, true);
          expect_int_close(k8, W, X.data(), got, ref_acc, N, K, 1.5, [&](float* y, bool acc) {
            std::fill(y, y + N, 1.5f);
            ops::nf4_matvec(W.data(), X.data(), y, N, K, acc);
          }, "matvec acc");
          // The 16-bit integer kernel (named alternative), within its own (tighter) bound.
          expect_int_close(IntKernel::k16, W, X.data(), got, ref, N, K, 0.0, [&](float* y, bool acc) {
            ops::nf4_matvec_i16(W.data(), X.data(), y, N, K, acc);
          }, "matvec_i16");
          expect_int_close(IntKernel::k16, W, X.data(), got, ref_acc, N, K, 1.5, [&](float* y, bool acc) {
            std::fill(y, y + N, 1.5f);
            ops::nf4_matvec_i16(W.data(), X.data(), y, N, K, acc);
          }, "matvec_i16 acc");
        } else {
          // The dequantise + GEMM path: exact x, f32 summation order only.
          ops::nf4_matmul_dequant(X.data(), W.data(), got.data(), M, N, K, false);
          expect_close_dot(got, ref, abs_sum, K, "matmul_dequant");
          // nf4_matmul / ops::matmul (the multi-row 8-bit kernel with AVX2): each row within the
          // 8-bit kernel's documented bound of the reference.
          const IntKernel kind = ops::nf4_matmul_row_invariant() ? IntKernel::k8 : IntKernel::k16;
          std::vector<float> all(size_t(M * N)), all_acc(size_t(M * N), -0.5f), acc_ref(size_t(M * N), -0.5f);
          ops::nf4_matmul(X.data(), W.data(), all.data(), M, N, K, false);
          ops::matmul(X.data(), W.data(), DType::NF4, got.data(), M, N, K);
          EXPECT_TRUE(same_bits(all, got)) << "ops::matmul vs nf4_matmul";
          ops::nf4_matmul(X.data(), W.data(), all_acc.data(), M, N, K, true);
          ops::nf4_matmul_ref(X.data(), W.data(), acc_ref.data(), M, N, K, true);
          std::vector<float> row, row_ref(static_cast<size_t>(N));
          for (int64_t m = 0; m < M; ++m) {
            const float* x = X.data() + m * K;
            std::copy(ref.begin() + m * N, ref.begin() + (m + 1) * N, row_ref.begin());
            expect_int_close(kind, W, x, row, row_ref, N, K, 0.0, [&](float* y, bool) {
              std::copy(all.begin() + m * N, all.begin() + (m + 1) * N, y);
            }, "matmul row");
            std::copy(acc_ref.begin() + m * N, acc_ref.begin() + (m + 1) * N, row_ref.begin());
            expect_int_close(kind, W, x, row, row_ref, N, K, -0.5, [&](float* y, bool) {
              std::copy(all_acc.begin() + m * N, all_acc.begin() + (m + 1) * N, y);
            }, "matmul acc row");
          }
        }
        if (M == 1) {
          // The exact f32 kernel: f32 summation order only.
          ops::nf4_matvec_f32(W.data(), X.data(), got.data(), N, K, false);
          expect_close_dot(got, ref, abs_sum, K, "matvec_f32");
          std::vector<float> acc(size_t(N), 1.5f), acc_ref(size_t(N), 1.5f);
          ops::nf4_matvec_f32(W.data(), X.data(), acc.data(), N, K, true);
          ops::nf4_matvec_ref(W.data(), X.data(), acc_ref.data(), N, K, true);
          std::vector<double> abs_acc = abs_sum;
          for (auto& s : abs_acc) s += 1.5;
          expect_close_dot(acc, acc_ref, abs_acc, K, "matvec_f32 acc");
        } else {
          std::vector<float> acc(size_t(M * N), -0.5f), acc_ref(size_t(M * N), -0.5f);
          ops::nf4_matmul_dequant(X.data(), W.data(), acc.data(), M, N, K, true);
          ops::nf4_matmul_ref(X.data(), W.data(), acc_ref.data(), M, N, K, true);
          for (auto& s : abs_sum) s += 0.5;
          expect_close_dot(acc, acc_ref, abs_sum, K, "matmul_dequant acc");
        }
      }
    }
  }
}

// Runs f = nf4_matvec (8-bit) or nf4_matvec_i16 (16-bit).
void int_matvec(IntKernel kind, const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  if (kind == IntKernel::k8) ops::nf4_matvec(W, x, y, N, K, acc);
  else ops::nf4_matvec_i16(W, x, y, N, K, acc);
}

// The integer matvecs' sums at their extreme: every weight code ±1 and every activation at
// ±max|x| with the signs chosen so that all 64 products of a block have one sign. 16-bit: q_w =
// ±8191, q_x = ±32767, each i32 lane holds ±8·8191·32767 = ±2,147,155,976, just inside ±2^31 (an
// overflow would be off by 2^32 units, thousands of times the value). 8-bit: table bytes 0 and 128,
// q_x = ±127, so vpmaddubsw pairs reach ±2·128·127 = ±32512, just inside its int16 saturation
// (±32767; saturating would lose 1/3 of such pairs). The result must be the exact value within the
// documented bound.
TEST(Nf4Kernels, IntMatvecExtremeBlockSumsDoNotOverflow) {
  std::mt19937 rng(41);
  const int64_t N = 6, K = 64 * 7;
  std::vector<float> sgn(static_cast<size_t>(K)), x(static_cast<size_t>(K)), w(size_t(N * K));
  for (auto& v : sgn) v = rng() % 2 ? 1.0f : -1.0f;
  const float A = 3.75f;
  for (int64_t k = 0; k < K; ++k) x[size_t(k)] = A * sgn[size_t(k)];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)  // rows 0-2: all products positive; rows 3-5: all negative
      w[size_t(n * K + k)] = (n < 3 ? 1.0f : -1.0f) * sgn[size_t(k)] * (0.5f + 0.25f * float(n % 3));
  for (bool dq : {true, false}) {
    SCOPED_TRACE(dq ? "dq" : "plain");
    const std::vector<uint8_t> W = ops::nf4_quantize_matrix(w.data(), N, K, dq);
    const ops::Nf4View v = ops::nf4_view(W.data());
    for (int64_t i = 0; i < N * K / 2; ++i) ASSERT_TRUE(v.codes[i] == 0x00 || v.codes[i] == 0xFF ||
                                                        v.codes[i] == 0x0F || v.codes[i] == 0xF0);
    std::vector<float> am(size_t(N * K / 64));
    ops::nf4_block_absmax(v, 0, N * K / 64, am.data());
    for (IntKernel kind : {IntKernel::k8, IntKernel::k16}) {
      SCOPED_TRACE(kind == IntKernel::k8 ? "8-bit" : "16-bit");
      std::vector<float> y(static_cast<size_t>(N)), ref(static_cast<size_t>(N));
      int_matvec(kind, W.data(), x.data(), y.data(), N, K, false);
      ops::nf4_matvec_ref(W.data(), x.data(), ref.data(), N, K, false);
      const std::vector<double> b = int_bound(W, x.data(), N, K, kind);
      for (int64_t n = 0; n < N; ++n) {
        double exact = 0;
        for (int64_t blk = 0; blk < K / 64; ++blk) exact += double(am[size_t(n * K / 64 + blk)]) * 64.0 * A;
        if (n >= 3) exact = -exact;
        EXPECT_NEAR(y[size_t(n)], exact, b[size_t(n)]) << "row " << n;
        EXPECT_NEAR(ref[size_t(n)], exact, double(K + 4) * 6e-8 * std::fabs(exact)) << "row " << n;
      }
    }
  }
}

// A block of x so small that its integer scale would be subnormal: the call takes the exact
// kernel, so the result still matches the reference to f32 summation error.
TEST(Nf4Kernels, IntMatvecTinyActivationsStayAccurate) {
  std::mt19937 rng(45);
  const int64_t N = 7, K = 192;
  auto W = random_nf4(N, K, rng);
  auto x = random_vec(size_t(K), rng);
  for (int64_t k = 64; k < 128; ++k) x[size_t(k)] *= 1e-36f;  // 8-bit scale subnormal below ~1e-34
  for (int64_t k = 0; k < 64; ++k) x[size_t(k)] *= 1e-30f;
  for (int64_t k = 128; k < K; ++k) x[size_t(k)] = 0.0f;
  std::vector<float> y(static_cast<size_t>(N)), ref(static_cast<size_t>(N)), wf(size_t(N * K));
  ops::nf4_dequantize_ref(W.data(), wf.data(), N * K);
  ops::nf4_matvec_ref(W.data(), x.data(), ref.data(), N, K, false);
  for (IntKernel kind : {IntKernel::k8, IntKernel::k16}) {
    int_matvec(kind, W.data(), x.data(), y.data(), N, K, false);
    for (int64_t n = 0; n < N; ++n) {
      double mag = 0;
      for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(x[size_t(k)]) * wf[size_t(n * K + k)]);
      EXPECT_NEAR(y[size_t(n)], ref[size_t(n)], double(K + 4) * 6e-8 * mag + 1e-44) << n << " " << int(kind);
    }
  }
}

// A NaN or an infinity in x reaches y as in the reference (the call takes the exact f32 kernel).
TEST(Nf4Kernels, IntMatvecPropagatesNonFiniteInput) {
  std::mt19937 rng(43);
  const int64_t N = 5, K = 192;
  auto W = random_nf4(N, K, rng);
  for (float bad : {std::nanf(""), INFINITY})
  for (IntKernel kind : {IntKernel::k8, IntKernel::k16}) {
    SCOPED_TRACE(kind == IntKernel::k8 ? "8-bit" : "16-bit");
    auto x = random_vec(size_t(K), rng);
    x[100] = bad;
    std::vector<float> y(static_cast<size_t>(N)), ref(static_cast<size_t>(N));
    int_matvec(kind, W.data(), x.data(), y.data(), N, K, false);
    ops::nf4_matvec_ref(W.data(), x.data(), ref.data(), N, K, false);
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_EQ(std::isnan(y[size_t(n)]), std::isnan(ref[size_t(n)])) << n;
      EXPECT_EQ(std::isinf(y[size_t(n)]), std::isinf(ref[size_t(n)])) << n;
      if (std::isinf(ref[size_t(n)])) {
        EXPECT_EQ(y[size_t(n)], ref[size_t(n)]) << n;
      }
    }
  }
}

// Shapes large enough for the multi-threaded path (N·K ≥ 2^16), rows split across the threads,
// and x with very different magnitudes per block (the activation scale is per 64-block).
TEST(Nf4Kernels, IntMatvecLargeShapesWithinBound) {
  std::mt19937 rng(47);
  for (auto [N, K] : {std::pair<int64_t, int64_t>{131, 576}, {77, 64 * 33}, {1031, 128}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K));
    auto W = random_nf4(N, K, rng);
    auto x = random_vec(size_t(K), rng);
    for (int64_t k = 0; k < K; ++k) x[size_t(k)] *= std::ldexp(1.0f, int(k / 64 % 7) * 3 - 9);
    std::vector<float> ref(static_cast<size_t>(N)), got;
    ops::nf4_matvec_ref(W.data(), x.data(), ref.data(), N, K, false);
    for (IntKernel kind : {IntKernel::k8, IntKernel::k16})
      expect_int_close(kind, W, x.data(), got, ref, N, K, 0.0, [&](float* y, bool acc) {
        int_matvec(kind, W.data(), x.data(), y, N, K, acc);
      }, kind == IntKernel::k8 ? "matvec" : "matvec_i16");
  }
}

// Activations of one sign (as after a ReLU): the 8-bit kernel's removal of the table offset,
// 64·Σ q_x per block, is then as large as the block's products, so a wrong offset could not hide
// inside the bound (a correction off by 1·Σ q_x fails here).
TEST(Nf4Kernels, IntMatvecOneSignActivationsWithinBound) {
  std::mt19937 rng(53);
  for (auto [N, K] : {std::pair<int64_t, int64_t>{37, 320}, {260, 576}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K));
    auto W = random_nf4(N, K, rng);
    for (float sign : {1.0f, -1.0f}) {
      auto x = random_vec(size_t(K), rng);
      for (auto& v : x) v = sign * (std::fabs(v) + 0.25f);
      std::vector<float> ref(static_cast<size_t>(N)), got;
      ops::nf4_matvec_ref(W.data(), x.data(), ref.data(), N, K, false);
      for (IntKernel kind : {IntKernel::k8, IntKernel::k16})
        expect_int_close(kind, W, x.data(), got, ref, N, K, 0.0, [&](float* y, bool acc) {
          int_matvec(kind, W.data(), x.data(), y, N, K, acc);
        }, kind == IntKernel::k8 ? "matvec" : "matvec_i16");
    }
  }
}

// The multi-row kernel (nf4_matmul for M >= 2 with AVX2): every row of an M-row product is
// bit-identical to the M = 1 matvec of that row alone, byte for byte, for many M (across the
// 4-row activation tiles and the ~96 KiB activation panels), odd N (groups of 4 weight rows and
// the last N % 4 single rows), double-quantised and f32-absmax matrices, y overwritten and
// accumulated, one and several threads, and rows that take the exact kernel (a NaN, an infinity,
// a block too small for a normal scale) mixed with rows that do not.
TEST(Nf4Kernels, MultiRowMatmulRowsEqualTheMatvecBitForBit) {
  if (!ops::nf4_matmul_row_invariant())
    GTEST_SKIP() << "no AVX2 on this CPU: nf4_matmul dequantises for M >= 2 and does not claim this "
                    "property (nf4_matmul_row_invariant() is false, so the server keeps its companion "
                    "row: ServeEngine.ConcurrentRequestsMatchRunningAlone); that path is checked by "
                    "MatvecAndMatmulMatchReferenceOnOddShapes";
  std::mt19937 rng(61);
  struct Shape { int64_t N, K; };
  const int saved_threads = num_threads();
  for (const Shape s : {Shape{1, 64}, Shape{3, 192}, Shape{6, 64 * 19}, Shape{17, 320}, Shape{33, 2048},
                        Shape{130, 128}, Shape{257, 768}}) {
    for (bool dq : {true, false}) {
      std::vector<float> w(size_t(s.N * s.K));
      std::normal_distribution<float> nd(0.0f, 0.05f);
      for (auto& v : w) v = nd(rng);
      const std::vector<uint8_t> W = ops::nf4_quantize_matrix(w.data(), s.N, s.K, dq);
      const int64_t N = s.N, K = s.K;
      for (int64_t M : {2, 3, 4, 5, 7, 8, 9, 13, 50, 131}) {
        if (M > 13 && N * K > 64 * 1024 && M != 50) continue;  // keep the test fast
        for (int threads : {1, 2}) {
          SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M) +
                       (dq ? " dq" : " f32 absmax") + " threads=" + std::to_string(threads));
          set_num_threads(threads);
          std::vector<float> X = random_vec(size_t(M * K), rng);
          for (int64_t m = 0; m < M; ++m)  // blocks of very different magnitudes
            for (int64_t k = 0; k < K; ++k) X[size_t(m * K + k)] *= std::ldexp(1.0f, int((k / 64 + m) % 5) * 3 - 6);
          if (M >= 5) {
            X[size_t(1 * K + K / 2)] = std::nanf("");
            X[size_t(3 * K)] = -INFINITY;
            for (int64_t k = 0; k < 64; ++k) X[size_t(4 * K + k)] *= 1e-37f;  // subnormal scale
          }
          for (bool acc : {false, true}) {
            std::vector<float> y0(size_t(M * N));
            for (auto& v : y0) v = float(int(rng() % 9) - 4) * 0.125f;
            std::vector<float> got = y0, one = y0;
            ops::nf4_matmul(X.data(), W.data(), got.data(), M, N, K, acc);
            for (int64_t m = 0; m < M; ++m) ops::nf4_matvec(W.data(), X.data() + m * K, one.data() + m * N, N, K, acc);
            for (int64_t m = 0; m < M; ++m)
              ASSERT_EQ(std::memcmp(got.data() + m * N, one.data() + m * N, size_t(N) * 4), 0)
                  << "row " << m << (acc ? " acc" : "");
            // ops::matmul (the DType::NF4 table) takes the same path; so does the kernel by name.
            std::vector<float> via_ops = y0, named = y0;
            ops::matmul(X.data(), W.data(), DType::NF4, via_ops.data(), M, N, K, acc);
            ops::nf4_matmul_act8(X.data(), W.data(), named.data(), M, N, K, acc);
            ASSERT_TRUE(same_bits(via_ops, one)) << (acc ? "ops::matmul acc" : "ops::matmul");
            ASSERT_TRUE(same_bits(named, one)) << (acc ? "act8 acc" : "act8");
          }
        }
      }
    }
  }
  set_num_threads(saved_threads);
}

// The property the server relies on (a lone row equals the same row in any batch): row 0 of
// X alone (M = 1, the decode matvec) and inside batches of every size up to 40 with other rows
// around it, on the 124.7M model's 768 x 768 shape with an f32-absmax matrix as inference loads it.
TEST(Nf4Kernels, MultiRowMatmulRowDoesNotDependOnBatch) {
  if (!ops::nf4_matmul_row_invariant())
    GTEST_SKIP() << "no AVX2 on this CPU: nf4_matmul dequantises for M >= 2 and does not claim this "
                    "property (nf4_matmul_row_invariant() is false, so the server keeps its companion "
                    "row: ServeEngine.ConcurrentRequestsMatchRunningAlone); that path is checked by "
                    "MatvecAndMatmulMatchReferenceOnOddShapes";
  std::mt19937 rng(67);
  const int64_t N = 768, K = 768;
  std::vector<float> w(size_t(N * K));
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (auto& v : w) v = nd(rng);
  const std::vector<uint8_t> W = ops::nf4_matrix_expand_absmax(ops::nf4_quantize_matrix(w.data(), N, K, true).data());
  const std::vector<float> X = random_vec(size_t(40 * K), rng);
  std::vector<float> alone(static_cast<size_t>(N));
  ops::matmul(X.data(), W.data(), DType::NF4, alone.data(), 1, N, K);
  for (int64_t M = 2; M <= 40; ++M) {
    std::vector<float> Y(size_t(M * N));
    ops::matmul(X.data(), W.data(), DType::NF4, Y.data(), M, N, K);
    ASSERT_EQ(std::memcmp(Y.data(), alone.data(), size_t(N) * 4), 0) << "M=" << M;
  }
}

TEST(Nf4Kernels, InputBackwardMatchesReference) {
  std::mt19937 rng(23);
  for (int64_t N : {1, 7, 70, 130}) {
    for (int64_t K : {64, 192}) {
      for (int64_t M : {1, 3, 9}) {
        SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" + std::to_string(M));
        auto W = random_nf4(N, K, rng);
        std::vector<float> wf(size_t(N * K));
        ops::nf4_dequantize_ref(W.data(), wf.data(), N * K);
        auto dY = random_vec(size_t(M * N), rng);
        for (bool acc : {false, true}) {
          std::vector<float> got(size_t(M * K), 0.25f), ref(size_t(M * K), 0.25f);
          ops::nf4_matmul_input_backward(dY.data(), W.data(), got.data(), M, N, K, acc);
          ops::nf4_matmul_input_backward_ref(dY.data(), W.data(), ref.data(), M, N, K, acc);
          std::vector<double> abs_sum(size_t(M * K), acc ? 0.25 : 0.0);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t k = 0; k < K; ++k)
              for (int64_t n = 0; n < N; ++n)
                abs_sum[size_t(m * K + k)] += std::fabs(double(dY[size_t(m * N + n)]) * wf[size_t(n * K + k)]);
          expect_close_dot(got, ref, abs_sum, N, acc ? "dX acc" : "dX");
          // The reference itself against the exact double product.
          for (int64_t m = 0; m < M; ++m)
            for (int64_t k = 0; k < K; ++k) {
              double s = acc ? 0.25 : 0.0;
              for (int64_t n = 0; n < N; ++n) s += double(dY[size_t(m * N + n)]) * wf[size_t(n * K + k)];
              ASSERT_NEAR(ref[size_t(m * K + k)], s, double(N + 4) * 6e-8 * abs_sum[size_t(m * K + k)] + 1e-30);
            }
        }
      }
    }
  }
}

// ---- the f32-absmax form inference loads (ops::nf4_matrix_expand_absmax) ----

namespace {

// A double-quantised matrix with its own nested map (kNf4OwnMap: a folder whose
// nested_quant_map is not bitsandbytes' dynamic map), made from m's arrays with a different map.
std::vector<uint8_t> with_own_map(const std::vector<uint8_t>& m) {
  const ops::Nf4View v = ops::nf4_view(m.data());
  const int64_t N = v.rows(), K = v.cols(), nb = N * K / 64;
  std::vector<float> map(256);
  for (int i = 0; i < 256; ++i) map[size_t(i)] = v.map[i] * 0.75f + 0.001f * float(i % 7);
  std::vector<uint8_t> o(ops::nf4_matrix_bytes(N, K, true, true));
  const ops::Nf4View w = ops::nf4_matrix_init(o.data(), N, K, true, v.h->offset, v.h->nested_blocksize, map.data());
  std::memcpy(const_cast<uint8_t*>(w.codes), v.codes, size_t(N * K / 2));
  std::memcpy(const_cast<uint8_t*>(w.absmax_codes), v.absmax_codes, size_t(nb));
  std::memcpy(const_cast<float*>(w.nested), v.nested, size_t((nb + 255) / 256) * 4);
  return o;
}

void expect_same(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << what << " differs";
}

}  // namespace

// Expanding the double-quantised absmax to f32 keeps the codes, stores exactly nf4_block_absmax's
// values (36 B per 64 weights), and every kernel (dequantise, the three matvecs, their reference,
// matmul, the input backward) gives bit-identical results on the two forms: odd shapes, rows
// straddling nested blocks, a matrix large enough for the threaded paths, the built-in and an own
// nested map. A plain matrix is returned unchanged.
TEST(Nf4Kernels, ExpandedAbsmaxIsBitIdentical) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 0.04f);
  struct Shape { int64_t N, K; };
  for (const Shape s : {Shape{37, 64 * 19}, Shape{5, 64}, Shape{301, 320}, Shape{3, 128 * 9}}) {
    std::vector<float> wsrc(size_t(s.N * s.K));
    for (auto& v : wsrc) v = nd(rng);
    wsrc[3] = 0.7f;
    const std::vector<uint8_t> base = ops::nf4_quantize_matrix(wsrc.data(), s.N, s.K, true);
    for (bool own : {false, true}) {
      SCOPED_TRACE(std::to_string(s.N) + "x" + std::to_string(s.K) + (own ? " own map" : " bnb map"));
      const std::vector<uint8_t> m = own ? with_own_map(base) : base;
      const std::vector<uint8_t> e = ops::nf4_matrix_expand_absmax(m.data());
      const ops::Nf4View vm = ops::nf4_view(m.data()), ve = ops::nf4_view(e.data());
      ASSERT_NE(vm.absmax_codes, nullptr);
      ASSERT_NE(ve.absmax_f32, nullptr);
      EXPECT_EQ(ve.absmax_codes, nullptr);
      EXPECT_EQ(ve.h->flags & ops::kNf4DoubleQuant, 0u);
      EXPECT_EQ(ve.rows(), s.N);
      EXPECT_EQ(ve.cols(), s.K);
      EXPECT_EQ(e.size(), ops::nf4_matrix_bytes(s.N, s.K, false));
      EXPECT_EQ(std::memcmp(ve.codes, vm.codes, size_t(s.N * s.K / 2)), 0);
      const int64_t nb = s.N * s.K / 64;
      std::vector<float> am(static_cast<size_t>(nb));
      ops::nf4_block_absmax(vm, 0, nb, am.data());
      EXPECT_EQ(std::memcmp(ve.absmax_f32, am.data(), size_t(nb) * 4), 0);
      if (own) {  // the own map matters: the expanded values differ from the bnb map's
        std::vector<float> am0(static_cast<size_t>(nb));
        ops::nf4_block_absmax(ops::nf4_view(base.data()), 0, nb, am0.data());
        EXPECT_NE(std::memcmp(am0.data(), am.data(), size_t(nb) * 4), 0);
      }
      const int64_t N = s.N, K = s.K;
      std::vector<float> a(size_t(N * K)), b(size_t(N * K));
      ops::nf4_dequantize(m.data(), a.data(), N * K);
      ops::nf4_dequantize(e.data(), b.data(), N * K);
      expect_same(a, b, "dequantize");
      ops::nf4_dequantize_ref(m.data(), a.data(), N * K);
      ops::nf4_dequantize_ref(e.data(), b.data(), N * K);
      expect_same(a, b, "dequantize_ref");
      const std::vector<float> x = random_vec(size_t(K), rng);
      using Mv = void (*)(const void*, const float*, float*, int64_t, int64_t, bool);
      const std::pair<const char*, Mv> mvs[] = {{"matvec (8-bit)", ops::nf4_matvec},
                                                {"matvec_i16", ops::nf4_matvec_i16},
                                                {"matvec_f32", ops::nf4_matvec_f32},
                                                {"matvec_ref", ops::nf4_matvec_ref}};
      for (const auto& [name, f] : mvs)
        for (bool acc : {false, true}) {
          std::vector<float> ya(size_t(N), 0.5f), yb(size_t(N), 0.5f);
          f(m.data(), x.data(), ya.data(), N, K, acc);
          f(e.data(), x.data(), yb.data(), N, K, acc);
          expect_same(ya, yb, name);
        }
      for (int64_t M : {1, 3}) {
        const std::vector<float> X = random_vec(size_t(M * K), rng);
        std::vector<float> ya(size_t(M * N)), yb(size_t(M * N));
        ops::nf4_matmul(X.data(), m.data(), ya.data(), M, N, K, false);
        ops::nf4_matmul(X.data(), e.data(), yb.data(), M, N, K, false);
        expect_same(ya, yb, "matmul");
        ops::matmul(X.data(), e.data(), DType::NF4, yb.data(), M, N, K);
        expect_same(ya, yb, "ops::matmul");
        ops::nf4_matmul_dequant(X.data(), m.data(), ya.data(), M, N, K, false);
        ops::nf4_matmul_dequant(X.data(), e.data(), yb.data(), M, N, K, false);
        expect_same(ya, yb, "matmul_dequant");
        const std::vector<float> dY = random_vec(size_t(M * N), rng);
        std::vector<float> da(size_t(M * K)), db(size_t(M * K));
        ops::nf4_matmul_input_backward(dY.data(), m.data(), da.data(), M, N, K, false);
        ops::nf4_matmul_input_backward(dY.data(), e.data(), db.data(), M, N, K, false);
        expect_same(da, db, "input backward");
      }
    }
    const std::vector<uint8_t> plain = ops::nf4_quantize_matrix(wsrc.data(), s.N, s.K, false);
    EXPECT_EQ(ops::nf4_matrix_expand_absmax(plain.data()), plain);
  }
  EXPECT_THROW(ops::nf4_matrix_expand_absmax(std::vector<uint8_t>(256, 0).data()), Error);
}

// A 4-bit folder (transformers + bitsandbytes wrote it, double-quantised) loads for inference with
// f32 absmax (~4.5 bits per weight) and, with nf4_compact (a QLoRA base), double-quantised as the
// file holds it (~4.13); the logits of the two are bit-identical.
TEST(Nf4Kernels, FolderLoadsExpandedForInferenceAndCompactForQlora) {
  const std::string dir = data_path("quant/hf_nf4_qwen2");
  const auto fast = Model::load(dir);
  const auto compact = Model::load(dir, nullptr, /*nf4_compact=*/true);
  int64_t n_nf4 = 0;
  size_t bytes_fast = 0, bytes_compact = 0;
  int64_t weights = 0;
  for (size_t i = 0; i < fast->layers().size(); ++i)
    for (auto pick : {&LayerWeights::q, &LayerWeights::k, &LayerWeights::v, &LayerWeights::o,
                      &LayerWeights::gate, &LayerWeights::up, &LayerWeights::down}) {
      const Linear& lf = fast->layers()[i].*pick;
      const Linear& lc = compact->layers()[i].*pick;
      ASSERT_EQ(lf.dtype, lc.dtype);
      if (lf.dtype != DType::NF4) continue;
      ++n_nf4;
      EXPECT_NE(ops::nf4_view(lf.w).absmax_f32, nullptr);
      EXPECT_NE(ops::nf4_view(lc.w).absmax_codes, nullptr);
      bytes_fast += ops::nf4_total_bytes(lf.w);
      bytes_compact += ops::nf4_total_bytes(lc.w);
      EXPECT_EQ(ops::nf4_total_bytes(lf.w), ops::nf4_matrix_bytes(lf.n_out, lf.n_in, false));
      EXPECT_EQ(ops::nf4_total_bytes(lc.w), ops::nf4_matrix_bytes(lc.n_out, lc.n_in, true));
      weights += lf.n_out * lf.n_in;
    }
  ASSERT_GT(n_nf4, 0);
  const double bits_fast = 8.0 * double(bytes_fast) / double(weights);
  const double bits_compact = 8.0 * double(bytes_compact) / double(weights);
  std::printf("NF4 matrices: %lld, %.3f bits/weight compact (QLoRA), %.3f expanded (inference)\n",
              (long long)n_nf4, bits_compact, bits_fast);
  // On a real shape (2048x768) the expansion costs 3 B per 64 weights: +0.375 bit (4.13 -> 4.5).
  const double extra = 8.0 * double(ops::nf4_matrix_bytes(2048, 768, false) - ops::nf4_matrix_bytes(2048, 768, true)) /
                       (2048.0 * 768.0);
  EXPECT_NEAR(extra, 0.375, 0.002);
  EXPECT_GT(bits_fast, bits_compact);
  const std::vector<int32_t> ids = {1, 17, 5, 42, 9, 3, 28};
  const int64_t T = int64_t(ids.size());
  std::vector<float> lf, lc;
  for (const Model* m : {fast.get(), compact.get()}) {
    KvCache cache(m->config(), 1, T);
    Decoder dec(*m, T);
    std::vector<float> logits(size_t(T * m->config().vocab_size));
    SeqChunk ch{0, T, ids.data()};
    dec.forward(cache, &ch, 1, LogitsMode::kAll, logits.data());
    (m == fast.get() ? lf : lc) = logits;
    // Decode path (one token per forward: the matvec) too.
    KvCache c2(m->config(), 1, T);
    Decoder d2(*m, 1);
    std::vector<float> step(size_t(m->config().vocab_size));
    for (int64_t t = 0; t < T; ++t) {
      SeqChunk one{0, 1, ids.data() + t};
      d2.forward(c2, &one, 1, LogitsMode::kLast, step.data());
    }
    (m == fast.get() ? lf : lc).insert((m == fast.get() ? lf : lc).end(), step.begin(), step.end());
  }
  expect_same(lf, lc, "logits");
}

// The scalar paths (QWEN_ISA=scalar or a CPU without AVX2) equal the references; the AVX2
// paths are what ran above when this CPU has AVX2.
TEST(Nf4Kernels, ReportsIsa) {
  std::printf("NF4 kernels ran with %s\n", cpu_features().avx2 ? "AVX2" : "scalar references");
  SUCCEED();
}
