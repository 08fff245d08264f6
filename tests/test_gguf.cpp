// tests/test_gguf.cpp — the GGUF reader/writer, the GGUF block formats (Q4_0, Q4_1, Q4_K, Q6_K)
// and the GGUF model/tokenizer mapping, without the real model (test_gguf_smollm2.cpp has it).
//
// Block formats are checked against pip `gguf` (gguf-py, tests/data/gguf/quant_golden.json, made
// by gen_quant_golden.py): our quantiser must produce its bytes, our dequantiser its floats.
// Fast kernels are checked against the scalar references on random, odd shapes: the integer
// kernel's arithmetic exactly (up to f32 summation order), and its distance to the exact product
// against the proven bound of 16-bit activation rounding (quant_gguf.h).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <cstring>
#include <random>

#include "core/cpu.h"
#include "io/gguf.h"
#include "io/gguf_model.h"
#include "io/gguf_tokenizer.h"
#include "model/decoder.h"
#include "model/model.h"
#include "ops/matmul.h"
#include "ops/quant.h"
#include "ops/quant_gguf.h"
#include "qwen/error.h"
#include "test_util.h"

using namespace qwen;
using qwen_test::TempDir;

namespace {

std::vector<uint8_t> from_hex(const std::string& h) {
  std::vector<uint8_t> v(h.size() / 2);
  for (size_t i = 0; i < v.size(); ++i) v[i] = uint8_t(std::stoi(h.substr(2 * i, 2), nullptr, 16));
  return v;
}

const nlohmann::json& golden() {
  static nlohmann::json j = qwen_test::read_json(qwen_test::data_path("gguf/quant_golden.json"));
  return j;
}

// Random valid blocks of a format: random nibbles/bytes, scales drawn so values are O(0.1).
std::vector<uint8_t> random_blocks(DType t, int64_t N, int64_t K, std::mt19937& g) {
  const size_t rb = dtype_row_bytes(t, K);
  std::vector<uint8_t> w(size_t(N) * rb);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> sc(0.002f, 0.02f), mn(-0.15f, 0.0f);
  for (auto& b : w) b = uint8_t(byte(g));
  const size_t bb = dtype_block_bytes(t);
  for (size_t o = 0; o < w.size(); o += bb) {
    auto put = [&](size_t at, float v) {
      uint16_t h = f32_to_f16(v);
      std::memcpy(&w[o + at], &h, 2);
    };
    if (t == DType::Q4_0 || t == DType::Q8_0) put(0, sc(g));
    if (t == DType::Q4_1) put(0, sc(g)), put(2, mn(g));
    if (t == DType::Q4_K) put(0, sc(g) * 0.1f), put(2, sc(g) * 0.1f);
    if (t == DType::Q6_K) put(208, sc(g) * 0.01f);
  }
  return w;
}

std::vector<float> random_vec(int64_t n, std::mt19937& g, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

std::vector<float> dequant_all(DType t, const std::vector<uint8_t>& w, int64_t N, int64_t K) {
  std::vector<float> out(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n)
    ops::dequantize_row(t, w.data() + size_t(n) * dtype_row_bytes(t, K), out.data() + n * K, K);
  return out;
}

}  // namespace

// ---------------------------------------------------------------- block formats vs gguf-py

TEST(GgufQuant, QuantizeMatchesGgufPyBytes) {
  for (const char* name : {"Q4_0", "Q4_1"}) {
    SCOPED_TRACE(name);
    const auto& g = golden()[name];
    DType t = std::string(name) == "Q4_0" ? DType::Q4_0 : DType::Q4_1;
    const int64_t rows = g["rows"], n = g["n"];
    std::vector<float> x = g["x"].get<std::vector<float>>();
    std::vector<uint8_t> want = from_hex(g["bytes"]);
    std::vector<uint8_t> got(want.size());
    for (int64_t r = 0; r < rows; ++r)
      ops::quantize_row(t, x.data() + r * n, got.data() + r * dtype_row_bytes(t, n), n);
    EXPECT_EQ(got, want);
  }
}

TEST(GgufQuant, DequantizeMatchesGgufPy) {
  for (const char* name : {"Q4_0", "Q4_1", "Q4_K", "Q6_K"}) {
    SCOPED_TRACE(name);
    const auto& g = golden()[name];
    const std::string s = name;
    DType t = s == "Q4_0" ? DType::Q4_0 : s == "Q4_1" ? DType::Q4_1 : s == "Q4_K" ? DType::Q4_K : DType::Q6_K;
    std::vector<uint8_t> bytes = from_hex(g["bytes"]);
    std::vector<float> want = g["dequant"].get<std::vector<float>>();
    std::vector<float> got(want.size());
    ops::dequantize_row(t, bytes.data(), got.data(), int64_t(want.size()));
    for (size_t i = 0; i < want.size(); ++i) {
      // gguf-py computes in f32 (and f16 scale products for some formats): allow 1 ulp-ish
      ASSERT_NEAR(got[i], want[i], 1e-6f * std::max(1.0f, std::fabs(want[i]))) << "value " << i;
    }
  }
}

TEST(GgufQuant, NibbleOrderOfQ4_0) {
  // Byte j holds element j (low nibble) and element j + 16 (high nibble).
  uint8_t b[18] = {};
  const uint16_t one = f32_to_f16(1.0f);
  std::memcpy(b, &one, 2);
  b[2] = 0x9A;  // element 0 = 0xA - 8 = 2, element 16 = 0x9 - 8 = 1
  for (int j = 1; j < 16; ++j) b[2 + j] = 0x88;
  float y[32];
  ops::dequantize_row(DType::Q4_0, b, y, 32);
  EXPECT_EQ(y[0], 2.0f);
  EXPECT_EQ(y[16], 1.0f);
  EXPECT_EQ(y[1], 0.0f);
}

// ---------------------------------------------------------------- kernels vs references

// The registered decode matvecs of Q4_0, Q4_1 and Q8_0 all use 16-bit activations.
static void matvec_act16(DType t, const void* w, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  ops::quant_kernels(t).matvec(w, x, y, N, K, acc);
}

TEST(GgufQuant, MatvecWithinActivationRoundingBound) {
  std::mt19937 g(7);
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q8_0}) {
    for (auto [N, K] : {std::pair<int64_t, int64_t>{1, 32}, {3, 96}, {5, 608}, {67, 160}, {129, 1536}}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
      auto w = random_blocks(t, N, K, g);
      auto x = random_vec(K, g);
      std::vector<float> y(static_cast<size_t>(N));
      matvec_act16(t, w.data(), x.data(), y.data(), N, K, false);
      // the exact product (dequantised weights are exact in f32), in double
      auto wf = dequant_all(t, w, N, K);
      std::vector<double> ref(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) ref[size_t(n)] += double(wf[size_t(n * K + k)]) * double(x[size_t(k)]);
      for (int64_t n = 0; n < N; ++n) {
        double bound = 0, mag = 0;
        for (int64_t b = 0; b < K / 32; ++b) {
          float amax = 0, wsum = 0;
          for (int j = 0; j < 32; ++j) {
            amax = std::max(amax, std::fabs(x[size_t(32 * b + j)]));
            wsum += std::fabs(wf[size_t(n * K + 32 * b + j)]);
            mag += std::fabs(wf[size_t(n * K + 32 * b + j)] * x[size_t(32 * b + j)]);
          }
          bound += double(amax) / 32767.0 / 2.0 * wsum;
        }
        bound += double(K / 32 + 8) * 6e-8 * mag;  // f32 rounding: one product and sum per block
        ASSERT_LE(std::fabs(double(y[size_t(n)]) - ref[size_t(n)]), bound) << "row " << n;
      }
      // accumulate mode adds onto y
      std::vector<float> y2(size_t(N), 1.5f);
      matvec_act16(t, w.data(), x.data(), y2.data(), N, K, true);
      for (int64_t n = 0; n < N; ++n) ASSERT_NEAR(y2[size_t(n)], y[size_t(n)] + 1.5f, 1e-5f);
    }
  }
}

TEST(GgufQuant, IntegerKernelMatchesItsScalarReference) {
  if (!cpu_features().avx2) GTEST_SKIP() << "no AVX2 on this CPU: the AVX2 integer kernel under test would fault (SIGILL); "
                    "the dispatcher uses the f32 path here (checked by MatvecWithinActivationRoundingBound)";
  std::mt19937 g(11);
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q8_0}) {
    const int64_t N = 13, K = 352;
    auto w = random_blocks(t, N, K, g);
    auto x = random_vec(K, g, 3.0f);
    std::vector<int16_t> q(static_cast<size_t>(K)), q2(static_cast<size_t>(K));
    std::vector<float> d(static_cast<size_t>(K / 32)), s(static_cast<size_t>(K / 32)), d2(d.size()), s2(s.size());
    ops::gguf::QAct a{q.data(), d.data(), s.data()}, r{q2.data(), d2.data(), s2.data()};
    ops::gguf::avx2::quantize_act(x.data(), K, a);
    ops::gguf::quantize_act_ref(x.data(), K, r);
    ASSERT_EQ(q, q2);
    ASSERT_EQ(d, d2);
    for (size_t b = 0; b < s.size(); ++b) ASSERT_NEAR(s[b], s2[b], 1e-6f * std::fabs(s2[b]) + 1e-12f);
    std::vector<float> y(static_cast<size_t>(N));
    if (t == DType::Q4_0) ops::gguf::avx2::matvec_rows_q4_0(w.data(), a, y.data(), 0, N, K, false);
    else if (t == DType::Q4_1) ops::gguf::avx2::matvec_rows_q4_1(w.data(), a, y.data(), 0, N, K, false);
    else ops::gguf::avx2::matvec_rows_q8_0(w.data(), a, y.data(), 0, N, K, false);
    const size_t rb = dtype_row_bytes(t, K);
    auto wf = dequant_all(t, w, N, K);
    for (int64_t n = 0; n < N; ++n) {
      const void* row = w.data() + size_t(n) * rb;
      const float want = t == DType::Q4_0   ? ops::gguf::dot_q4_0_act_ref(row, r, K)
                         : t == DType::Q4_1 ? ops::gguf::dot_q4_1_act_ref(row, r, K)
                                            : ops::gguf::dot_q8_0_act_ref(row, r, K);
      double mag = 0;
      for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(wf[size_t(n * K + k)]) * x[size_t(k)]);
      // same integers; only f32 rounding of the per-block products and their sum differs
      ASSERT_NEAR(y[size_t(n)], want, double(K / 32 + 8) * 6e-8 * mag) << dtype_name(t) << " row " << n;
    }
  }
}

TEST(GgufQuant, MatmulMatchesReference) {
  std::mt19937 g(3);
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K}) {
    const int64_t be = dtype_block_elems(t);
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{5, 19, 2 * be}, {33, 67, 3 * be}, {7, 1, be}}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + " M=" + std::to_string(M) + " N=" + std::to_string(N));
      auto w = random_blocks(t, N, K, g);
      auto X = random_vec(M * K, g);
      std::vector<float> Y(size_t(M * N), 2.0f), R(size_t(M * N), 2.0f);
      ops::matmul(X.data(), w.data(), t, Y.data(), M, N, K, true);
      ops::matmul_ref(X.data(), w.data(), t, R.data(), M, N, K, true);
      auto wf = dequant_all(t, w, N, K);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double mag = 2.0;
          for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(wf[size_t(n * K + k)]) * X[size_t(m * K + k)]);
          // f32 GEMM: summation-order rounding, at most K ulps of the magnitude
          ASSERT_NEAR(Y[size_t(m * N + n)], R[size_t(m * N + n)], double(K) * 6e-8 * mag) << m << "," << n;
        }
    }
  }
}

TEST(GgufQuant, KQuantMatvecMatchesReference) {
  std::mt19937 g(5);
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    const int64_t N = 37, K = 768;
    auto w = random_blocks(t, N, K, g);
    auto x = random_vec(K, g);
    std::vector<float> y(static_cast<size_t>(N)), ref(static_cast<size_t>(N));
    ops::matvec(w.data(), t, x.data(), y.data(), N, K);
    ops::matvec_ref(w.data(), t, x.data(), ref.data(), N, K);
    auto wf = dequant_all(t, w, N, K);
    for (int64_t n = 0; n < N; ++n) {
      double mag = 0;
      for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(wf[size_t(n * K + k)]) * x[size_t(k)]);
      ASSERT_NEAR(y[size_t(n)], ref[size_t(n)], double(K) * 6e-8 * mag + 1e-12) << dtype_name(t) << " row " << n;
    }
  }
}

TEST(GgufQuant, QuantizeRoundTripError) {
  std::mt19937 g(9);
  auto x = random_vec(32 * 40, g, 0.3f);
  for (DType t : {DType::Q4_0, DType::Q4_1}) {
    std::vector<uint8_t> q(dtype_row_bytes(t, int64_t(x.size())));
    std::vector<float> y(x.size());
    ops::quantize_row(t, x.data(), q.data(), int64_t(x.size()));
    ops::dequantize_row(t, q.data(), y.data(), int64_t(x.size()));
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float mn = x[32 * b], mx = x[32 * b], amax = 0;
      for (int j = 0; j < 32; ++j) {
        mn = std::min(mn, x[32 * b + j]), mx = std::max(mx, x[32 * b + j]);
        amax = std::max(amax, std::fabs(x[32 * b + j]));
      }
      // step d: half a step of rounding, plus fp16 rounding of d (and m) over up to 16 steps.
      // Q4_0 maps the largest magnitude to -8 and clamps the other side at +7: a value there
      // can be a whole step off.
      const float d = t == DType::Q4_1 ? (mx - mn) / 15 : amax / 8;
      const float steps = t == DType::Q4_1 ? 0.5f : 1.0f;
      const float tol = steps * d + 16 * d / 1024 + std::fabs(mn) / 1024 + 1e-7f;
      for (int j = 0; j < 32; ++j) ASSERT_NEAR(y[32 * b + j], x[32 * b + j], tol) << dtype_name(t);
    }
  }
}

// ---------------------------------------------------------------- reader / writer

namespace {

std::string write_sample(const std::string& path) {
  io::GgufWriter w(64);
  w.add_string("general.architecture", "test");
  w.add_u32("a.u32", 7);
  w.add_i32("a.i32", -5);
  w.add_u64("a.u64", 1ull << 40);
  w.add_f32("a.f32", 0.25f);
  w.add_bool("a.bool", true);
  w.add_string_array("a.strs", {"x", "", "Ġthe"});
  w.add_i32_array("a.ints", {1, -2, 3});
  w.add_f32_array("a.floats", {1.5f, -2.5f});
  static std::vector<float> t1 = {1, 2, 3, 4, 5, 6};
  static std::vector<uint16_t> t2(64, f32_to_f16(0.5f));
  w.add_tensor("t1", {3, 2}, io::ggml::F32, t1.data(), t1.size() * 4);
  w.add_tensor("t2", {32, 2}, io::ggml::F16, t2.data(), t2.size() * 2);
  w.write(path);
  return qwen_test::read_text(path);
}

}  // namespace

TEST(GgufFile, WriteThenRead) {
  TempDir td;
  write_sample(td.str("a.gguf"));
  auto f = io::GgufFile::open(td.str("a.gguf"));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->get_string("general.architecture"), "test");
  EXPECT_EQ(f->get_int("a.u32"), 7);
  EXPECT_EQ(f->get_int("a.i32"), -5);
  EXPECT_EQ(f->get_int("a.u64"), int64_t(1) << 40);
  EXPECT_EQ(f->get_float("a.f32"), 0.25);
  EXPECT_TRUE(f->get_bool("a.bool"));
  EXPECT_EQ(f->find("a.strs")->strs, (std::vector<std::string>{"x", "", "Ġthe"}));
  EXPECT_EQ(f->find("a.ints")->ints, (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f->find("a.floats")->floats, (std::vector<double>{1.5, -2.5}));
  EXPECT_EQ(f->get_int("missing", 42), 42);
  EXPECT_THROW(f->get_int("general.architecture"), Error);
  EXPECT_THROW(f->get_string("missing"), Error);
  ASSERT_EQ(f->tensors().size(), 2u);
  const auto* t1 = f->find_tensor("t1");
  ASSERT_TRUE(t1);
  EXPECT_EQ(t1->ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(reinterpret_cast<const float*>(t1->data)[5], 6.0f);
  const auto* t2 = f->find_tensor("t2");
  EXPECT_EQ(t2->offset % 64, 0u);
  EXPECT_EQ(f16_to_f32(reinterpret_cast<const uint16_t*>(t2->data)[63]), 0.5f);
}

TEST(GgufFile, EveryTruncationIsAnError) {
  TempDir td;
  const std::string full = write_sample(td.str("a.gguf"));
  for (size_t n = 0; n < full.size(); ++n) {
    // the last tensor's padding is not data: cutting only padding still leaves a valid file
    try {
      auto f = io::GgufFile::parse(full.data(), n, "cut");
      const auto* t2 = f->find_tensor("t2");
      ASSERT_TRUE(t2 != nullptr);
      ASSERT_LE(f->data_offset() + t2->offset + t2->nbytes, n) << "accepted a file cut at " << n;
    } catch (const Error& e) {
      ASSERT_NE(std::string(e.what()).find("cut"), std::string::npos);
    }
  }
}

TEST(GgufFile, BadInputsAreOneLineErrors) {
  TempDir td;
  std::string full = write_sample(td.str("a.gguf"));
  auto expect_error = [&](std::string bytes, const std::string& needle) {
    try {
      io::GgufFile::parse(bytes.data(), bytes.size(), "f.gguf");
      ADD_FAILURE() << "no error; expected '" << needle << "'";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(needle), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  };
  expect_error("PK\x03\x04 not gguf at all", "not a GGUF file");
  std::string v = full;
  v[4] = 1;
  expect_error(v, "version 1");
  v = full;
  v[4] = 9;
  expect_error(v, "version 9");
  // a huge tensor count
  v = full;
  const uint64_t huge = ~0ull >> 1;
  std::memcpy(&v[8], &huge, 8);
  expect_error(v, "tensor count");
  // a huge metadata count
  v = full;
  std::memcpy(&v[16], &huge, 8);
  expect_error(v, "metadata count");
  // a lying string length in the first key
  v = full;
  std::memcpy(&v[24], &huge, 8);
  expect_error(v, "runs past the end");
  // a tensor offset pointing past the end: find t2's info (name then dims) and bump its offset
  v = full;
  size_t at = v.find(std::string("\x02\0\0\0\0\0\0\0t2", 10));
  ASSERT_NE(at, std::string::npos);
  at += 10 + 4 + 16 + 4;  // name, n_dims, ne[2], type -> offset
  const uint64_t far = 1ull << 40;
  std::memcpy(&v[at], &far, 8);
  expect_error(v, "runs past the end of the file");
  // an offset that is not aligned
  v = full;
  const uint64_t odd = 8;
  std::memcpy(&v[at], &odd, 8);
  expect_error(v, "not a multiple of the alignment");
}

// ---------------------------------------------------------------- model mapping

namespace {

// A minimal GGUF of the given architecture with one tensor of the given type.
void write_tiny(const std::string& path, const std::string& arch, uint32_t type, const std::string& tok_model) {
  io::GgufWriter w;
  w.add_string("general.architecture", arch);
  w.add_u32(arch + ".block_count", 1);
  w.add_u32(arch + ".embedding_length", 256);
  w.add_u32(arch + ".feed_forward_length", 64);
  w.add_u32(arch + ".attention.head_count", 2);
  w.add_f32(arch + ".attention.layer_norm_rms_epsilon", 1e-6f);
  w.add_string("tokenizer.ggml.model", tok_model);
  static std::vector<uint8_t> data(1 << 16);
  int64_t be;
  size_t bb;
  io::ggml_type_size(type, &be, &bb);
  w.add_tensor("token_embd.weight", {256, 8}, type, data.data(), size_t(256 / be) * bb * 8);
  w.write(path);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(GgufModel, UnsupportedArchitectureTypeAndTokenizerAreNamed) {
  TempDir td;
  write_tiny(td.str("g.gguf"), "gemma2", io::ggml::F32, "gpt2");
  std::string m = error_of([&] { io::load_gguf_model(td.str("g.gguf")); });
  EXPECT_NE(m.find("architecture 'gemma2'"), std::string::npos) << m;

  write_tiny(td.str("q.gguf"), "llama", io::ggml::Q5_K, "gpt2");
  m = error_of([&] { io::load_gguf_model(td.str("q.gguf")); });
  EXPECT_NE(m.find("Q5_K"), std::string::npos) << m;
  EXPECT_NE(m.find("not support"), std::string::npos) << m;

  write_tiny(td.str("t.gguf"), "llama", io::ggml::F32, "llama");
  auto f = io::GgufFile::open(td.str("t.gguf"));
  m = error_of([&] { io::gguf_tokenizer(*f); });
  EXPECT_NE(m.find("tokenizer type 'llama'"), std::string::npos) << m;

  m = error_of([&] { Model::load(qwen_test::data_path("gguf/quant_golden.json") + ".gguf"); });
  EXPECT_NE(m.find("cannot open"), std::string::npos) << m;
}

TEST(GgufModel, CliReportsBadFilesInOneLine) {
  TempDir td;
  {
    std::ofstream(td.str("x.gguf")) << "this is not a gguf file at all";
  }
  auto r = qwen_test::run_qwen("generate --model " + td.str("x.gguf") + " --prompt-ids 1,2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("not a GGUF file"), std::string::npos) << r.err;
  write_tiny(td.str("g.gguf"), "phi3", io::ggml::F32, "gpt2");
  r = qwen_test::run_qwen("generate --model " + td.str("g.gguf") + " --prompt-ids 1,2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("architecture 'phi3'"), std::string::npos) << r.err;
}

// Export a test model folder to GGUF F32 and load it back: identical logits (the llama export
// permutes q/k rows for llama.cpp's RoPE and the reader undoes it).
TEST(GgufModel, ExportF32RoundTripIsExact) {
  for (const char* name : {"qwen2_gqa", "llama_gqa8", "qwen3_bias_tied"}) {
    SCOPED_TRACE(name);
    TempDir td;
    const std::string dir = qwen_test::data_path(std::string("models/") + name);
    io::export_gguf(dir, td.str("m.gguf"), DType::F32);
    auto a = Model::load(dir);
    auto b = Model::load(td.str("m.gguf"));
    const ModelConfig& c = a->config();
    EXPECT_EQ(b->config().num_hidden_layers, c.num_hidden_layers);
    EXPECT_EQ(b->config().tie_word_embeddings, c.tie_word_embeddings);
    const int64_t T = 7, V = c.vocab_size;
    std::vector<int32_t> ids = {1, 5, 9, 2, 17, 3, 11};
    std::vector<float> la(static_cast<size_t>(T * V)), lb(static_cast<size_t>(T * V));
    for (auto [m, out] : {std::pair<Model*, float*>{a.get(), la.data()}, {b.get(), lb.data()}}) {
      KvCache cache(m->config(), 1, T);
      Decoder dec(*m, T);
      SeqChunk ch{0, T, ids.data()};
      dec.forward(cache, &ch, 1, LogitsMode::kAll, out);
    }
    for (size_t i = 0; i < la.size(); ++i) ASSERT_EQ(la[i], lb[i]) << i;
  }
}
