// Whole-model gradient checks of the trainable decoder: for every parameter tensor, the
// analytic directional derivative g·d equals the central finite difference of the loss along a
// random direction d, on tiny Qwen2 (biases, GQA), tied-embedding, Qwen3 (q/k norms, head_dim ≠
// C/H) and Llama (MLP bias) models, with activation recomputation off and on. Recomputation must
// not change the gradients; forward_loss equals the loss forward_backward reports; the loss
// equals the inference decoder's cross-entropy on the same tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tiny_config.h"
#include "core/rng.h"
#include "model/decoder.h"
#include "qwen/error.h"
#include "train/lora.h"
#include "train/train_model.h"

using qwen::ModelConfig;
using qwen::train::TrainModel;
using qwen::train::TrainModelOptions;

namespace {

ModelConfig tiny(const std::string& kind) {
  ModelConfig c = qwen_test::tiny_config();
  if (kind == "qwen2") {
    c.qkv_bias = true;
  } else if (kind == "tied") {
    c.qkv_bias = true;
    c.tie_word_embeddings = true;
    c.num_key_value_heads = 1;
  } else if (kind == "qwen3") {
    c.architecture = "Qwen3ForCausalLM";
    c.model_type = "qwen3";
    c.qk_norm = true;
    c.head_dim = 6;
    c.explicit_head_dim = true;
  } else if (kind == "llama") {
    c.architecture = "LlamaForCausalLM";
    c.model_type = "llama";
    c.mlp_bias = true;
    c.o_bias = true;
    c.qkv_bias = true;
    c.num_key_value_heads = 4;
  }
  return c;
}

struct Batch {
  int64_t B = 2, T = 7;
  std::vector<int32_t> tokens, targets;
};

Batch make_batch(const ModelConfig& c, uint64_t seed) {
  Batch b;
  qwen::Rng rng(seed);
  for (int64_t i = 0; i < b.B * b.T; ++i) {
    b.tokens.push_back(int32_t(rng.next() % uint64_t(c.vocab_size)));
    const bool ignore = (i % 5) == 3;
    b.targets.push_back(ignore ? -1 : int32_t(rng.next() % uint64_t(c.vocab_size)));
  }
  return b;
}

// Perturb the biases and norms away from their 0/1 init so their gradients are generic.
void jitter(TrainModel& m, uint64_t seed) {
  qwen::Rng rng(seed);
  for (const auto& p : m.params())
    if (p.shape.size() == 1)
      for (int64_t i = 0; i < p.numel; ++i) m.param_data()[p.offset + i] += 0.2f * rng.normal();
}

void check_gradients(const std::string& kind, bool recompute) {
  SCOPED_TRACE(kind + (recompute ? " recompute" : ""));
  ModelConfig c = tiny(kind);
  TrainModelOptions opt;
  opt.recompute = recompute;
  TrainModel m(c, 11, opt);
  jitter(m, 5);
  Batch b = make_batch(c, 3);
  m.zero_grad();
  int64_t counted = 0;
  const double loss = m.forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 1.0f, &counted);
  ASSERT_TRUE(std::isfinite(loss));
  int64_t expect = 0;
  for (int32_t t : b.targets) expect += t >= 0;
  EXPECT_EQ(counted, expect);
  int64_t c2 = 0;
  EXPECT_NEAR(m.forward_loss(b.tokens.data(), b.targets.data(), b.B, b.T, &c2), loss, 1e-5 * loss);
  std::vector<float> grad(m.grad_data(), m.grad_data() + m.n_params());

  qwen::Rng rng(99);
  for (const auto& p : m.params()) {
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
      return m.forward_loss(b.tokens.data(), b.targets.data(), b.B, b.T);
    };
    // Central-difference truncation error grows as eps² (seen: 0.2 at 4e-3, 0.05 at 2e-3).
    const double eps = 1e-3;
    const double fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps);
    for (int64_t i = 0; i < p.numel; ++i) w[i] = w0[size_t(i)];
    // f32 forward noise is ~1e-7..1e-6 of the loss (~40 here): ≤ 4e-5 / 2e-3 = 2e-2 absolute.
    EXPECT_NEAR(gd, fd, 2e-3 * std::abs(fd) + 2e-2) << p.name;
  }
}

}  // namespace

TEST(TrainModel, GradientsQwen2) { check_gradients("qwen2", false); }
TEST(TrainModel, GradientsTied) { check_gradients("tied", false); }
TEST(TrainModel, GradientsQwen3) { check_gradients("qwen3", false); }
TEST(TrainModel, GradientsLlama) { check_gradients("llama", false); }
TEST(TrainModel, GradientsQwen3Recompute) { check_gradients("qwen3", true); }
TEST(TrainModel, GradientsTiedRecompute) { check_gradients("tied", true); }

TEST(TrainModel, RecomputeGivesIdenticalGradients) {
  for (const char* kind : {"qwen2", "qwen3"}) {
    ModelConfig c = tiny(kind);
    TrainModel a(c, 1), r(c, 1, TrainModelOptions{true});
    Batch b = make_batch(c, 8);
    a.zero_grad();
    r.zero_grad();
    const double la = a.forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 0.5f);
    const double lr = r.forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 0.5f);
    EXPECT_EQ(la, lr) << kind;
    for (int64_t i = 0; i < a.n_params(); ++i)
      ASSERT_EQ(a.grad_data()[i], r.grad_data()[i]) << kind << " index " << i;
    EXPECT_LT(r.activation_bytes(), a.activation_bytes());
  }
}

TEST(TrainModel, GradientsAccumulateAndScale) {
  ModelConfig c = tiny("qwen2");
  TrainModel m(c, 2);
  Batch b = make_batch(c, 4);
  m.zero_grad();
  m.forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 1.0f);
  std::vector<float> g1(m.grad_data(), m.grad_data() + m.n_params());
  m.forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 0.5f);
  for (int64_t i = 0; i < m.n_params(); i += 7)
    EXPECT_NEAR(m.grad_data()[i], 1.5f * g1[size_t(i)], 1e-6f + 1e-5f * std::abs(g1[size_t(i)]));
}

// The training forward and the inference decoder agree on the loss of the same tokens.
TEST(TrainModel, LossMatchesInferenceDecoder) {
  ModelConfig c = tiny("qwen3");
  TrainModel m(c, 21);
  jitter(m, 6);
  Batch b = make_batch(c, 9);
  b.B = 1;
  b.tokens.resize(size_t(b.T));
  b.targets.resize(size_t(b.T));
  for (int64_t t = 0; t < b.T; ++t) b.targets[size_t(t)] = t + 1 < b.T ? b.tokens[size_t(t + 1)] : -1;
  int64_t counted = 0;
  const double loss = m.forward_loss(b.tokens.data(), b.targets.data(), 1, b.T, &counted);
  auto model = m.as_model();
  qwen::Decoder dec(*model, b.T);
  qwen::KvCache cache(c, 1, b.T);
  qwen::SeqChunk ch{0, b.T, b.tokens.data()};
  std::vector<float> logits(size_t(b.T * c.vocab_size));
  dec.forward(cache, &ch, 1, qwen::LogitsMode::kAll, logits.data());
  double ref = 0;
  for (int64_t t = 0; t + 1 < b.T; ++t) {
    const float* l = logits.data() + t * c.vocab_size;
    double mx = l[0], s = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) mx = std::max(mx, double(l[v]));
    for (int64_t v = 0; v < c.vocab_size; ++v) s += std::exp(double(l[v]) - mx);
    ref += mx + std::log(s) - l[b.targets[size_t(t)]];
  }
  EXPECT_EQ(counted, b.T - 1);
  EXPECT_NEAR(loss, ref, 1e-5 * ref);
}

TEST(TrainModel, RejectsOutOfRangeTokens) {
  ModelConfig c = tiny("qwen2");
  TrainModel m(c, 2);
  std::vector<int32_t> tok = {1, 2, 99}, tgt = {2, 3, 4};
  EXPECT_THROW(m.forward_backward(tok.data(), tgt.data(), 1, 3, 1.0f), qwen::Error);
}

// ---- LoRA: only the adapter trains; gradients through frozen F32 and BF16 bases ----

namespace {

void check_lora_gradients(qwen::DType base_dtype, bool recompute) {
  SCOPED_TRACE(std::string("LoRA on ") + qwen::dtype_name(base_dtype));
  ModelConfig c = tiny("qwen2");
  auto base = qwen::Model::random(c, 4, base_dtype);
  qwen::train::LoraConfig lc;
  lc.r = 3;
  lc.alpha = 6;
  lc.dropout = 0;
  auto adapter = qwen::train::LoraAdapter::create(c, lc, 7);
  // B starts at zero (a no-op); give it values so every path carries gradient.
  qwen::Rng rng(12);
  for (auto& mod : adapter->modules())
    for (auto& x : mod.B) x = 0.2f * rng.normal();
  TrainModelOptions opt;
  opt.recompute = recompute;
  TrainModel m(*base, *adapter, opt);
  EXPECT_EQ(m.n_params(), adapter->n_params());
  EXPECT_EQ(m.params().size(), 2 * adapter->modules().size());
  Batch b = make_batch(c, 13);
  m.zero_grad();
  const double loss = m.forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 1.0f);
  EXPECT_NEAR(m.forward_loss(b.tokens.data(), b.targets.data(), b.B, b.T), loss, 1e-5 * loss);
  std::vector<float> grad(m.grad_data(), m.grad_data() + m.n_params());
  for (const auto& p : m.params()) {
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
      return m.forward_loss(b.tokens.data(), b.targets.data(), b.B, b.T);
    };
    const double eps = 1e-3;
    const double fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps);
    for (int64_t i = 0; i < p.numel; ++i) w[i] = w0[size_t(i)];
    EXPECT_NEAR(gd, fd, 2e-3 * std::abs(fd) + 2e-2) << p.name;
  }
}

}  // namespace

TEST(TrainModelLora, GradientsF32Base) { check_lora_gradients(qwen::DType::F32, false); }
TEST(TrainModelLora, GradientsBF16BaseRecompute) { check_lora_gradients(qwen::DType::BF16, true); }

// The adapter attached to the inference decoder gives the training model's loss; a zero-B
// adapter leaves the base model's loss unchanged; merged weights equal W + s·B·A.
TEST(TrainModelLora, AttachMatchesTrainingAndMergeMatchesAttach) {
  ModelConfig c = tiny("qwen3");
  auto base = qwen::Model::random(c, 9, qwen::DType::F32);
  qwen::train::LoraConfig lc;
  lc.r = 2;
  lc.alpha = 5;
  lc.targets = {"q", "v", "down"};
  auto adapter = qwen::train::LoraAdapter::create(c, lc, 1);
  Batch b = make_batch(c, 2);
  TrainModel plain(*base);
  TrainModel lm(*base, *adapter);
  EXPECT_EQ(plain.forward_loss(b.tokens.data(), b.targets.data(), b.B, b.T),
            lm.forward_loss(b.tokens.data(), b.targets.data(), b.B, b.T));
  qwen::Rng rng(3);
  for (int64_t i = 0; i < lm.n_params(); ++i) lm.param_data()[i] += 0.1f * rng.normal();
  lm.sync_adapter();
  auto view = lm.as_model();
  auto merged = adapter->merge(*base);
  // W' = W + s·B·A on one module.
  const auto& mod = adapter->modules()[0];
  const auto& Lm = qwen::train::layer_linear(merged->layers()[size_t(mod.layer)], mod.module);
  const auto& Lb = qwen::train::layer_linear(base->layers()[size_t(mod.layer)], mod.module);
  for (int64_t o = 0; o < mod.n_out; o += 3)
    for (int64_t i = 0; i < mod.n_in; i += 2) {
      double d = 0;
      for (int64_t k = 0; k < lc.r; ++k) d += double(mod.B[size_t(o * lc.r + k)]) * mod.A[size_t(k * mod.n_in + i)];
      const float w = static_cast<const float*>(Lb.w)[o * mod.n_in + i];
      EXPECT_NEAR(static_cast<const float*>(Lm.w)[o * mod.n_in + i], w + lc.scale() * d, 1e-6);
    }
  // Logits: decoder with the adapter attached vs merged model.
  auto logits_of = [&](const qwen::Model& model) {
    qwen::Decoder dec(model, b.T);
    qwen::KvCache cache(c, 1, b.T);
    qwen::SeqChunk ch{0, b.T, b.tokens.data()};
    std::vector<float> out(size_t(b.T * c.vocab_size));
    dec.forward(cache, &ch, 1, qwen::LogitsMode::kAll, out.data());
    return out;
  };
  auto la = logits_of(*view), lmg = logits_of(*merged), lb = logits_of(*base);
  double max_diff = 0, moved = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    max_diff = std::max(max_diff, double(std::abs(la[i] - lmg[i])));
    moved = std::max(moved, double(std::abs(la[i] - lb[i])));
  }
  EXPECT_LT(max_diff, 1e-5);
  EXPECT_GT(moved, 1e-3);  // the adapter really changes the output
  // Training loss of the adapted model equals the decoder's cross-entropy with the adapter.
  int64_t n = 0;
  const double tl = lm.forward_loss(b.tokens.data(), b.targets.data(), 1, b.T, &n);
  double ref = 0;
  for (int64_t t = 0; t < b.T; ++t) {
    if (b.targets[size_t(t)] < 0) continue;
    const float* l = la.data() + t * c.vocab_size;
    double mx = l[0], s = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) mx = std::max(mx, double(l[v]));
    for (int64_t v = 0; v < c.vocab_size; ++v) s += std::exp(double(l[v]) - mx);
    ref += mx + std::log(s) - l[b.targets[size_t(t)]];
  }
  EXPECT_NEAR(tl, ref, 1e-5 * ref);
}

TEST(TrainModelLora, SaveLoadRoundTripAndBadInput) {
  ModelConfig c = tiny("qwen2");
  qwen::train::LoraConfig lc;
  lc.r = 4;
  auto a = qwen::train::LoraAdapter::create(c, lc, 5);
  for (auto& m : a->modules()) m.B.assign(m.B.size(), 0.5f);
  const std::string dir = ::testing::TempDir() + "/lora_rt";
  a->save(dir, "tiny");
  auto b = qwen::train::LoraAdapter::load(dir, c);
  ASSERT_EQ(b->modules().size(), a->modules().size());
  for (size_t i = 0; i < a->modules().size(); ++i) {
    EXPECT_EQ(a->modules()[i].A, b->modules()[i].A);
    EXPECT_EQ(a->modules()[i].B, b->modules()[i].B);
  }
  ModelConfig other = c;
  other.hidden_size = 32;
  try {
    qwen::train::LoraAdapter::load(dir, other);
    FAIL() << "loaded an adapter for another base";
  } catch (const qwen::Error& e) {
    EXPECT_NE(std::string(e.what()).find("q_proj.lora_A.weight"), std::string::npos) << e.what();
  }
  qwen::train::LoraConfig bad = lc;
  bad.r = 0;
  EXPECT_THROW(bad.validate(), qwen::Error);
  bad = lc;
  bad.alpha = -1;
  EXPECT_THROW(bad.validate(), qwen::Error);
  bad = lc;
  bad.targets = {"q", "w"};
  EXPECT_THROW(bad.validate(), qwen::Error);
}
