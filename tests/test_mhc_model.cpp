// Model-level tests of mHC / HC residual streams (issue 6; kernels in tests/test_mhc_ops.cpp):
// config keys and their errors; whole-model directional finite-difference gradient checks of
// tiny mHC and HC models (recompute off and on); at init an mHC (and an HC) model's logits equal
// the plain model's with the same sub-layer weights; every row of every H_res sums to 1; n = 1
// is the plain residual; save -> load gives identical logits; the KV-cache decoder (prefill and
// token by token) agrees with the training forward; mismatched checkpoints and configs are
// clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "tiny_config.h"
#include "core/rng.h"
#include "model/decoder.h"
#include "model/model.h"
#include "ops/mhc.h"
#include "qwen/error.h"
#include "train/train_model.h"

using qwen::ModelConfig;
using qwen::train::TrainModel;
using qwen::train::TrainModelOptions;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny(const std::string& mode, int64_t n = 3, const std::string& kind = "qwen2") {
  ModelConfig c = qwen_test::tiny_config();
  c.qkv_bias = true;
  if (kind == "qwen3") {
    c.architecture = "Qwen3ForCausalLM";
    c.model_type = "qwen3";
    c.qkv_bias = false;
    c.qk_norm = true;
    c.head_dim = 6;
    c.explicit_head_dim = true;
    c.tie_word_embeddings = true;
  }
  if (mode != "plain") {
    c.use_mhc = true;
    c.mhc_num_streams = n;
    c.mhc_sinkhorn_iters = 20;
    c.mhc_mode = mode;
  }
  return c;
}

std::vector<int32_t> random_tokens(const ModelConfig& c, int64_t n, uint64_t seed) {
  qwen::Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(rng.next() % uint64_t(c.vocab_size));
  return t;
}

// Perturb every 1-D parameter (biases, norms, mHC bias and alpha) and the mHC phi away from
// their init so that every gradient is generic (alpha 0.01 would hide phi's effect).
void jitter(TrainModel& m, uint64_t seed) {
  qwen::Rng rng(seed);
  for (const auto& p : m.params()) {
    const bool site = p.name.find("_hc.") != std::string::npos;
    if (p.shape.size() == 1 || site) {
      const float s = p.name.find(".alpha") != std::string::npos ? 0.5f : 0.2f;
      for (int64_t i = 0; i < p.numel; ++i) m.param_data()[p.offset + i] += s * rng.normal();
    }
  }
}

// The decoder's logits (T, V) for one sequence, prefilled in one call.
std::vector<float> decoder_logits(const qwen::Model& model, const std::vector<int32_t>& tok) {
  const int64_t T = int64_t(tok.size()), V = model.config().vocab_size;
  qwen::Decoder dec(model, T);
  qwen::KvCache cache(model.config(), 1, T);
  qwen::SeqChunk ch{0, T, tok.data()};
  std::vector<float> logits(size_t(T * V));
  dec.forward(cache, &ch, 1, qwen::LogitsMode::kAll, logits.data());
  return logits;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

double max_abs(const std::vector<float>& a) {
  double d = 0;
  for (float x : a) d = std::max(d, double(std::fabs(x)));
  return d;
}

void check_gradients(const ModelConfig& c, bool recompute) {
  TrainModelOptions opt;
  opt.recompute = recompute;
  TrainModel m(c, 11, opt);
  jitter(m, 5);
  const int64_t B = 2, T = 5;
  std::vector<int32_t> tokens = random_tokens(c, B * T, 3), targets = random_tokens(c, B * T, 4);
  targets[3] = -1;
  m.zero_grad();
  const double loss = m.forward_backward(tokens.data(), targets.data(), B, T, 1.0f);
  ASSERT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(m.forward_loss(tokens.data(), targets.data(), B, T), loss, 1e-5 * loss);
  std::vector<float> grad(m.grad_data(), m.grad_data() + m.n_params());
  int n_site = 0;
  qwen::Rng rng(99);
  for (const auto& p : m.params()) {
    n_site += p.name.find("_hc.") != std::string::npos;
    std::vector<float> d(size_t(p.numel));
    double gd = 0;
    for (int64_t i = 0; i < p.numel; ++i) {
      d[size_t(i)] = rng.normal();
      gd += double(grad[size_t(p.offset + i)]) * d[size_t(i)];
    }
    float* w = m.param_data() + p.offset;
    std::vector<float> w0(w, w + p.numel);
    auto loss_at = [&](double eps) {
      for (int64_t i = 0; i < p.numel; ++i) w[i] = float(w0[size_t(i)] + eps * d[size_t(i)]);
      return m.forward_loss(tokens.data(), targets.data(), B, T);
    };
    // Central differences at h and h/2 combined (Richardson) to cancel the h² truncation term:
    // the unconstrained HC model is curved enough that a plain 1e-3 step is off by ~2%. The
    // tolerance is tests/test_train_model.cpp's (f32 forward noise ~1e-6 of the loss).
    const double h = 2e-3;
    const double fd1 = (loss_at(h) - loss_at(-h)) / (2 * h);
    const double fd2 = (loss_at(h / 2) - loss_at(-h / 2)) / h;
    const double fd = (4 * fd2 - fd1) / 3;
    for (int64_t i = 0; i < p.numel; ++i) w[i] = w0[size_t(i)];
    EXPECT_NEAR(gd, fd, 2e-3 * std::abs(fd) + 2e-2) << p.name;
  }
  EXPECT_EQ(n_site, 6 * c.num_hidden_layers);  // phi, bias, alpha × 2 sites per layer
}

}  // namespace

// ---- Config ----------------------------------------------------------------------------------

TEST(MhcConfig, KeysRoundTripAndPlainConfigsStayPure) {
  ModelConfig c = tiny("hc", 5);
  c.mhc_sinkhorn_iters = 7;
  const std::string js = c.to_json();
  ModelConfig r = ModelConfig::from_json(js);
  EXPECT_TRUE(r.use_mhc);
  EXPECT_EQ(r.mhc_num_streams, 5);
  EXPECT_EQ(r.mhc_sinkhorn_iters, 7);
  EXPECT_EQ(r.mhc_mode, "hc");
  const std::string plain = tiny("plain").to_json();
  EXPECT_EQ(plain.find("mhc"), std::string::npos) << plain;
  EXPECT_FALSE(ModelConfig::from_json(plain).use_mhc);
  // Defaults when only use_mhc is given.
  std::string only = plain;
  only.insert(only.find('{') + 1, "\"use_mhc\": true,");
  ModelConfig d = ModelConfig::from_json(only);
  EXPECT_TRUE(d.use_mhc);
  EXPECT_EQ(d.mhc_num_streams, 4);
  EXPECT_EQ(d.mhc_sinkhorn_iters, 20);
  EXPECT_EQ(d.mhc_mode, "mhc");
}

TEST(MhcConfig, BadValuesAreClearErrors) {
  auto expect_error = [](const std::string& key, const std::string& value, const std::string& what) {
    std::string js = tiny("mhc").to_json();
    const size_t at = js.find("\"" + key + "\"");
    ASSERT_NE(at, std::string::npos);
    const size_t colon = js.find(':', at), end = js.find_first_of(",\n", colon);
    js.replace(colon + 1, end - colon - 1, " " + value);
    try {
      ModelConfig::from_json(js, "cfg.json");
      ADD_FAILURE() << key << " = " << value << " was accepted";
    } catch (const qwen::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error("mhc_num_streams", "0", "mhc_num_streams = 0");
  expect_error("mhc_num_streams", "17", "mhc_num_streams = 17");
  expect_error("mhc_sinkhorn_iters", "0", "mhc_sinkhorn_iters = 0");
  expect_error("mhc_mode", "\"dhc\"", "mhc_mode 'dhc'");
  expect_error("use_mhc", "1", "use_mhc");
}

// ---- Gradients -------------------------------------------------------------------------------

TEST(MhcModel, GradientsMhc) { check_gradients(tiny("mhc", 3), false); }
TEST(MhcModel, GradientsMhcRecomputeQwen3Tied) { check_gradients(tiny("mhc", 2, "qwen3"), true); }
TEST(MhcModel, GradientsHc) { check_gradients(tiny("hc", 3), false); }
TEST(MhcModel, GradientsHcRecompute) { check_gradients(tiny("hc", 4), true); }

TEST(MhcModel, RecomputeGivesIdenticalGradients) {
  ModelConfig c = tiny("mhc", 4);
  TrainModel a(c, 1), r(c, 1, TrainModelOptions{true});
  jitter(a, 2);
  jitter(r, 2);
  std::vector<int32_t> tok = random_tokens(c, 12, 5), tgt = random_tokens(c, 12, 6);
  a.zero_grad();
  r.zero_grad();
  const double la = a.forward_backward(tok.data(), tgt.data(), 2, 6, 1.0f);
  const double lr = r.forward_backward(tok.data(), tgt.data(), 2, 6, 1.0f);
  EXPECT_EQ(la, lr);
  for (int64_t i = 0; i < a.n_params(); ++i) ASSERT_EQ(a.grad_data()[i], r.grad_data()[i]) << i;
}

// ---- Init equivalence, constraints, n = 1 ----------------------------------------------------

// Spec §8: with the init of ops::mhc_init_site (identical streams, h_post = 1, rows of H_res
// summing to 1, h_pre only scaling an RMSNorm'd input) the mHC model's logits are the plain
// model's with the same sub-layer weights; HC's init (one-hot A_m, B = 1, A_r = I) likewise.
TEST(MhcModel, InitEqualsPlainModel) {
  for (const char* mode : {"mhc", "hc"}) {
    for (const char* kind : {"qwen2", "qwen3"}) {
      SCOPED_TRACE(std::string(mode) + " " + kind);
      ModelConfig cm = tiny(mode, 4, kind), cp = tiny("plain", 4, kind);
      auto mm = qwen::Model::random(cm, 7);
      auto mp = qwen::Model::random(cp, 7);
      // The sub-layer weights are the same draws.
      for (const auto& t : mp->named_tensors()) {
        bool found = false;
        for (const auto& u : mm->named_tensors())
          if (u.name == t.name) {
            found = true;
            int64_t n = 1;
            for (int64_t d : t.shape) n *= d;
            ASSERT_EQ(0, std::memcmp(t.data, u.data, size_t(n) * 4)) << t.name;
          }
        ASSERT_TRUE(found) << t.name;
      }
      const std::vector<int32_t> tok = random_tokens(cm, 9, 1);
      const std::vector<float> lm = decoder_logits(*mm, tok), lp = decoder_logits(*mp, tok);
      // Differences come only from rms_norm_eps acting on scaled inputs and f32 rounding.
      EXPECT_LT(max_abs_diff(lm, lp), 2e-5 * max_abs(lp) + 1e-6);
      // And the mHC model is not trivially the plain one: its sites do mix (H_res != I).
      if (std::string(mode) == "mhc") {
        TrainModel tm(*mm);
        const std::vector<float> h = tm.mhc_h_res(tok.data(), int64_t(tok.size()));
        double off = 0;
        for (size_t i = 0; i < h.size(); ++i)
          if ((i % 16) % 5 != 0) off = std::max(off, double(h[i]));
        EXPECT_GT(off, 0.1);
      }
    }
  }
}

TEST(MhcModel, RowsOfHresSumToOne) {
  ModelConfig c = tiny("mhc", 4);
  TrainModel m(c, 3);
  jitter(m, 9);
  // Large logits: scale the res bias so that Sinkhorn has work to do.
  for (const auto& p : m.params())
    if (p.name.find("_hc.bias") != std::string::npos)
      for (int64_t i = 2 * 4; i < p.numel; ++i) m.param_data()[p.offset + i] *= 15.0f;
  const std::vector<int32_t> tok = random_tokens(c, 11, 2);
  const std::vector<float> h = m.mhc_h_res(tok.data(), 11);
  ASSERT_EQ(h.size(), size_t(2 * 2 * 11 * 16));
  double worst_row = 0, worst_col = 0, min_entry = 1;
  for (size_t k = 0; k < h.size() / 16; ++k) {
    const float* H = h.data() + 16 * k;
    for (int i = 0; i < 4; ++i) {
      double rs = 0, cs = 0;
      for (int j = 0; j < 4; ++j) {
        rs += H[4 * i + j];
        cs += H[4 * j + i];
        min_entry = std::min(min_entry, double(H[4 * i + j]));
      }
      worst_row = std::max(worst_row, std::fabs(rs - 1));
      worst_col = std::max(worst_col, std::fabs(cs - 1));
    }
  }
  EXPECT_LE(worst_row, 1e-6);
  EXPECT_GE(min_entry, 0.0);
  // Columns carry the truncation error of 20 iterations: bounded, reported, not exact.
  EXPECT_LT(worst_col, 0.5);
  std::printf("H_res: max |row sum - 1| = %.2e, max |column sum - 1| = %.2e\n", worst_row, worst_col);
  // The gain profile of the same sequence: forward gain is the row sum (1), composites too.
  auto g = m.mhc_amax_gains(tok.data(), 11);
  ASSERT_EQ(g.single.size(), 4u);
  for (size_t l = 0; l < 4; ++l) {
    EXPECT_NEAR(g.single[l].forward, 1.0, 1e-5);
    EXPECT_NEAR(g.composite[l].forward, 1.0, 1e-5);
    EXPECT_GE(g.composite[l].backward, 1.0 - 1e-6);
  }
}

// n = 1: H_res = [1] and X_out = X + h_post·F(h_pre·X). With h_post pinned to 1 (alpha_post = 0,
// bias_post = 0) and rms_norm_eps negligible, the model is the plain model whatever the other
// site parameters are.
TEST(MhcModel, OneStreamIsThePlainResidual) {
  ModelConfig c1 = tiny("mhc", 1), cp = tiny("plain");
  c1.rms_norm_eps = cp.rms_norm_eps = 1e-12;
  TrainModel m1(c1, 4);
  jitter(m1, 8);
  TrainModel mp(cp, 4);
  for (const auto& p : mp.params()) {  // same sub-layer weights as the jittered mHC model
    const auto& q = m1.param(p.name);
    std::copy(m1.param_data() + q.offset, m1.param_data() + q.offset + q.numel,
              mp.param_data() + p.offset);
  }
  for (const auto& p : m1.params()) {
    if (p.name.find(".alpha") != std::string::npos) m1.param_data()[p.offset + 1] = 0.0f;
    if (p.name.find("_hc.bias") != std::string::npos) m1.param_data()[p.offset + 1] = 0.0f;
  }
  const std::vector<int32_t> tok = random_tokens(c1, 8, 3);
  const std::vector<float> h = m1.mhc_h_res(tok.data(), 8);
  for (float x : h) ASSERT_EQ(x, 1.0f);
  const std::vector<float> l1 = decoder_logits(*m1.as_model(), tok);
  const std::vector<float> lp = decoder_logits(*mp.as_model(), tok);
  EXPECT_LT(max_abs_diff(l1, lp), 1e-5 * max_abs(lp));
  // And h_post does matter: with bias_post = 1 the model differs.
  for (const auto& p : m1.params())
    if (p.name.find("_hc.bias") != std::string::npos) m1.param_data()[p.offset + 1] = 1.0f;
  EXPECT_GT(max_abs_diff(decoder_logits(*m1.as_model(), tok), lp), 1e-3);
}

// ---- Decoder and checkpoints -----------------------------------------------------------------

// The KV-cache decoder, prefilled or token by token, gives the training forward's loss.
TEST(MhcModel, DecoderMatchesTrainingForward) {
  for (const char* mode : {"mhc", "hc"}) {
    SCOPED_TRACE(mode);
    ModelConfig c = tiny(mode, 4, "qwen3");
    TrainModel m(c, 21);
    jitter(m, 6);
    const int64_t T = 9;
    std::vector<int32_t> tok = random_tokens(c, T, 4), tgt(size_t(T), -1);
    for (int64_t t = 0; t + 1 < T; ++t) tgt[size_t(t)] = tok[size_t(t + 1)];
    const double loss = m.forward_loss(tok.data(), tgt.data(), 1, T);
    auto model = m.as_model();
    const std::vector<float> all = decoder_logits(*model, tok);
    // Token by token through the cache.
    const int64_t V = c.vocab_size;
    qwen::Decoder dec(*model, 1);
    qwen::KvCache cache(c, 1, T);
    std::vector<float> step(size_t(T * V));
    for (int64_t t = 0; t < T; ++t) {
      qwen::SeqChunk ch{0, 1, tok.data() + t};
      dec.forward(cache, &ch, 1, qwen::LogitsMode::kLast, step.data() + t * V);
    }
    EXPECT_LT(max_abs_diff(all, step), 1e-5 * max_abs(all));
    double ref = 0;
    for (int64_t t = 0; t + 1 < T; ++t) {
      const float* l = all.data() + t * V;
      double mx = l[0], s = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(l[v]));
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(l[v]) - mx);
      ref += mx + std::log(s) - l[tgt[size_t(t)]];
    }
    EXPECT_NEAR(loss, ref, 1e-5 * ref);
  }
}

// The decoder's mHC projections read an F16 copy of phi (ops::mhc_pack_phi_half, made when the
// decoder is built; docs/mhc.md §10.1, fifth pass). With phi scaled up (×20; ×40 already drives
// Sinkhorn's column sums to underflow) the F16 rounding moves the loss by more than 1e-6
// (measured 2.1e-6); the decoder must give the training forward's loss on phi rounded to the
// copy's values within 1e-7 (measured 4e-9: the same values, f32 sums in other orders), i.e. it
// reads exactly those values and not the F32 phi.
TEST(MhcModel, DecoderReadsTheHalfPhiCopy) {
  ModelConfig c = tiny("mhc", 4, "qwen2");
  TrainModel m(c, 23);
  jitter(m, 7);
  const qwen::ops::MhcDims md = qwen::mhc_dims(c);
  for (const auto& p : m.params())
    if (p.name.find("_hc.phi") != std::string::npos)
      for (int64_t i = 0; i < p.numel; ++i) m.param_data()[p.offset + i] *= 20.0f;
  const int64_t T = 9;
  std::vector<int32_t> tok = random_tokens(c, T, 8), tgt(size_t(T), -1);
  for (int64_t t = 0; t + 1 < T; ++t) tgt[size_t(t)] = tok[size_t(t + 1)];
  auto decoder_loss = [&]() {
    auto model = m.as_model();
    const std::vector<float> all = decoder_logits(*model, tok);
    const int64_t V = c.vocab_size;
    double s = 0;
    for (int64_t t = 0; t + 1 < T; ++t) {
      const float* l = all.data() + t * V;
      double mx = l[0], z = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(l[v]));
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
      s += mx + std::log(z) - l[tgt[size_t(t)]];
    }
    return s;
  };
  const double dec = decoder_loss();
  const double f32 = m.forward_loss(tok.data(), tgt.data(), 1, T);
  // phi := the copy's values (pack, unpack) in the trainer.
  std::vector<uint16_t> h(size_t(md.phi_size()));
  std::vector<float> sc(static_cast<size_t>(md.phi_rows()));
  for (const auto& p : m.params())
    if (p.name.find("_hc.phi") != std::string::npos) {
      float* w = m.param_data() + p.offset;
      qwen::ops::mhc_pack_phi_half(md, w, h.data(), sc.data());
      qwen::ops::mhc_unpack_phi_half(md, h.data(), sc.data(), w);
    }
  const double rounded = m.forward_loss(tok.data(), tgt.data(), 1, T);
  std::printf("loss: decoder (F16 phi copy) %.8f, training forward on F32 phi %.8f (rel %.1e), on "
              "the copy's values %.8f (rel %.1e)\n",
              dec, f32, std::fabs(dec - f32) / f32, rounded, std::fabs(dec - rounded) / rounded);
  ASSERT_GT(std::fabs(f32 - rounded), 1e-6 * f32);  // the rounding is visible at this scale
  EXPECT_NEAR(dec, rounded, 1e-7 * rounded);
  // The F32 path's loss stays within the documented effect of the copy at this scale.
  EXPECT_NEAR(dec, f32, 1e-5 * f32);
}

TEST(MhcModel, SaveLoadGivesIdenticalLogits) {
  for (const char* mode : {"mhc", "hc"}) {
    SCOPED_TRACE(mode);
    ModelConfig c = tiny(mode, 3);
    TrainModel m(c, 5);
    jitter(m, 1);
    const std::string dir = ::testing::TempDir() + "/mhc_rt_" + mode;
    fs::remove_all(dir);
    m.save(dir);
    auto loaded = qwen::Model::load(dir);
    EXPECT_TRUE(loaded->config().use_mhc);
    EXPECT_EQ(loaded->config().mhc_mode, mode);
    const qwen::ops::MhcDims md = qwen::mhc_dims(c);
    int n_site = 0;
    for (const auto& t : loaded->named_tensors())
      if (t.name == "model.layers.1.mlp_hc.phi") {
        ++n_site;
        EXPECT_EQ(t.shape, (std::vector<int64_t>{md.phi_rows(), md.phi_cols()}));
        EXPECT_EQ(t.dtype, qwen::DType::F32);
      }
    EXPECT_EQ(n_site, 1);
    const std::vector<int32_t> tok = random_tokens(c, 7, 2);
    const std::vector<float> a = decoder_logits(*m.as_model(), tok);
    const std::vector<float> b = decoder_logits(*loaded, tok);
    EXPECT_EQ(a, b);
    // Matrices converted to bf16: the site tensors stay f32 through save and load.
    const qwen::DType bf16 = qwen::DType::BF16;
    auto bf = qwen::Model::load(dir, &bf16);
    bf->save(dir + "_bf16");
    auto bf_loaded = qwen::Model::load(dir + "_bf16");
    EXPECT_EQ(bf_loaded->matrix_dtype(), qwen::DType::BF16);
    const auto before = bf->named_tensors(), after = bf_loaded->named_tensors();
    ASSERT_EQ(before.size(), after.size());
    int n_f32 = 0;
    for (size_t i = 0; i < before.size(); ++i) {
      if (before[i].name.find("_hc.") == std::string::npos) continue;
      ASSERT_EQ(after[i].name, before[i].name);
      ASSERT_EQ(after[i].dtype, qwen::DType::F32);
      int64_t n = 1;
      for (int64_t d : before[i].shape) n *= d;
      EXPECT_EQ(0, std::memcmp(before[i].data, after[i].data, size_t(n) * 4)) << before[i].name;
      ++n_f32;
    }
    EXPECT_EQ(n_f32, 12);
    fs::remove_all(dir);
    fs::remove_all(dir + "_bf16");
  }
}

TEST(MhcModel, MismatchedCheckpointsAreClearErrors) {
  const std::string dir = ::testing::TempDir() + "/mhc_mismatch";
  auto rewrite_config = [&](const ModelConfig& c) {
    std::ofstream(dir + "/config.json") << c.to_json();
  };
  auto expect_error = [&](const std::string& what) {
    try {
      qwen::Model::load(dir);
      ADD_FAILURE() << "loaded";
    } catch (const qwen::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  // An mHC checkpoint read with a plain config.
  fs::remove_all(dir);
  qwen::Model::random(tiny("mhc", 2), 1)->save(dir);
  rewrite_config(tiny("plain"));
  expect_error("_hc.");
  expect_error("use_mhc");
  // A plain checkpoint read with an mHC config.
  fs::remove_all(dir);
  qwen::Model::random(tiny("plain"), 1)->save(dir);
  rewrite_config(tiny("mhc", 2));
  expect_error("model.layers.0.attn_hc.phi");
  // The wrong number of streams: the shape error names the tensor.
  fs::remove_all(dir);
  qwen::Model::random(tiny("mhc", 2), 1)->save(dir);
  rewrite_config(tiny("mhc", 3));
  expect_error("attn_hc.phi");
  fs::remove_all(dir);
  // from_weights without site weights for an mHC config.
  auto plain = qwen::Model::random(tiny("plain"), 1);
  EXPECT_THROW(qwen::Model::from_weights(tiny("mhc", 2), nullptr, plain->embed(),
                                         plain->embed_dtype(), plain->final_norm(),
                                         plain->lm_head(), plain->layers()),
               qwen::Error);
  // Out-of-range tokens still throw in mHC training.
  TrainModel m(tiny("mhc", 2), 1);
  std::vector<int32_t> tok = {1, 2, 99}, tgt = {2, 3, 4};
  EXPECT_THROW(m.forward_backward(tok.data(), tgt.data(), 1, 3, 1.0f), qwen::Error);
  TrainModel p(tiny("plain"), 1);
  EXPECT_THROW(p.mhc_h_res(tok.data(), 2), qwen::Error);
}

TEST(MhcModel, ParamsDecayOnlyOnPhi) {
  TrainModel m(tiny("mhc", 2), 1);
  int seen = 0;
  for (const auto& p : m.params()) {
    if (p.name.find("_hc.") == std::string::npos) continue;
    ++seen;
    EXPECT_EQ(p.decay, p.name.find(".phi") != std::string::npos) << p.name;
  }
  EXPECT_EQ(seen, 12);
}
