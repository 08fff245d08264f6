// tests/test_api.cpp — the public API (include/qwen) as a user sees it: the facades agree with
// each other (forward vs greedy generation, in-memory vs folder quantisation, a trained adapter
// saved and loaded back), stop strings and streaming, and the one-line errors. Uses only the
// public headers (plus the test helpers), like a downstream program.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "qwen/qwen.h"
#include "test_util.h"

using qwen_test::data_path;
using qwen_test::TempDir;

namespace {

qwen::ModelConfig tiny_config(int64_t vocab) {
  qwen::ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.qkv_bias = true;
  c.max_position_embeddings = 96;
  c.validate();
  return c;
}

int argmax(const float* row, int64_t n) { return int(std::max_element(row, row + n) - row); }

template <class F>
void expect_error(F f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no qwen::Error (expected one mentioning '" << part << "')";
  } catch (const qwen::Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "not one line: " << e.what();
  }
}

}  // namespace

TEST(Api, GreedyGenerationFollowsForwardArgmax) {
  const qwen::ModelConfig c = tiny_config(97);
  const qwen::Model m = qwen::Model::create(c, 5);
  std::vector<int32_t> ids = {4, 8, 15, 16, 23, 42};
  qwen::Generator gen(m);
  qwen::GenerationConfig g;
  g.temperature = 0;
  g.max_new_tokens = 5;
  g.stop_at_eos = false;
  const qwen::GenerationResult r = gen.generate(ids, g);
  ASSERT_EQ(r.tokens.size(), 5u);
  EXPECT_EQ(r.finish_reason, "length");
  // Each generated token is the argmax of the full forward over everything before it.
  for (int32_t t : r.tokens) {
    const std::vector<float> logits = m.forward(ids);
    EXPECT_EQ(t, argmax(logits.data() + (ids.size() - 1) * size_t(c.vocab_size), c.vocab_size));
    ids.push_back(t);
  }
}

TEST(Api, StreamingWithStopStrings) {
  const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(data_path("tokenizer/trained"));
  const qwen::Model m = qwen::Model::create(tiny_config(tok.vocab_size()), 9);
  qwen::Generator gen(m, tok);
  qwen::GenerationConfig g;
  g.temperature = 0;
  g.max_new_tokens = 40;
  g.stop_at_eos = false;
  const std::string full = gen.generate("And the earth was", g).text;
  ASSERT_GT(full.size(), 20u);
  // Every 3-byte piece of the output as a stop string: the text ends right before its first
  // occurrence, and the streamed pieces add up to exactly that text.
  for (size_t at = 1; at + 3 <= full.size(); at += 5) {
    g.stop = {full.substr(at, 3)};
    std::string streamed;
    const qwen::GenerationResult r = gen.generate("And the earth was", g,
                                                  [&](int32_t, std::string_view s) {
                                                    streamed += s;
                                                    return true;
                                                  });
    EXPECT_EQ(r.text, full.substr(0, full.find(g.stop[0]))) << "stop '" << g.stop[0] << "'";
    EXPECT_EQ(streamed, r.text);
    EXPECT_EQ(r.finish_reason, "stop");
  }
  // The callback's false cancels.
  g.stop.clear();
  int n = 0;
  const qwen::GenerationResult r =
      gen.generate("And the earth was", g, [&](int32_t, std::string_view) { return ++n < 3; });
  EXPECT_EQ(r.tokens.size(), 3u);
  EXPECT_EQ(r.finish_reason, "cancelled");
}

TEST(Api, QuantizeInMemoryEqualsFolder) {
  TempDir td;
  const qwen::Model m = qwen::Model::create(tiny_config(128), 3);
  m.save(td.str("f32"));
  for (qwen::WeightType t : {qwen::WeightType::NF4, qwen::WeightType::Q8_0}) {
    const std::string out = td.str(std::string("q_") + qwen::weight_type_name(t));
    const qwen::QuantizeReport rep = qwen::quantize(td.str("f32"), t, out);
    EXPECT_EQ(rep.parameters, m.num_parameters());
    const qwen::Model from_folder = qwen::Model::load(out);
    const qwen::Model in_memory = qwen::quantize(m, t);
    EXPECT_EQ(from_folder.weight_type(), t);
    EXPECT_EQ(in_memory.weight_type(), t);
    const std::vector<int32_t> ids = {1, 2, 3, 5, 8, 13};
    EXPECT_EQ(from_folder.forward(ids), in_memory.forward(ids));
  }
  expect_error([&] { qwen::quantize(qwen::quantize(m, qwen::WeightType::NF4), qwen::WeightType::Q8_0); },
               "already");
  expect_error([&] { qwen::quantize(m, qwen::WeightType::BF16); }, "bf16");
}

TEST(Api, LoraAdapterSavedAndLoadedGivesTheTrainedModel) {
  TempDir td;
  const qwen::ModelConfig c = tiny_config(64);
  qwen::Model base = qwen::Model::create(c, 11);
  base.save(td.str("base"));
  qwen::LoraConfig lc;
  lc.rank = 4;
  lc.dropout = 0;
  lc.targets = {"q", "v", "down"};
  qwen::TrainConfig tc;
  tc.steps = 6;
  tc.batch = 2;
  tc.seq = 16;
  tc.lr = 1e-2;
  qwen::Trainer tr(base, lc, tc);
  EXPECT_TRUE(tr.is_lora());
  const int64_t C = c.hidden_size, F = c.intermediate_size;
  EXPECT_EQ(tr.trainable_parameters(),
            c.num_hidden_layers * lc.rank * ((C + c.q_dim()) + (C + c.kv_dim()) + (F + C)));
  EXPECT_EQ(tr.total_parameters(), base.num_parameters() + tr.trainable_parameters());
  std::vector<int32_t> ids;
  for (int i = 0; i < 200; ++i) ids.push_back(int32_t((i * 7) % 64));
  const double before = tr.evaluate(ids, 2);
  tr.fit(ids);
  EXPECT_EQ(tr.steps_done(), 6);
  EXPECT_LT(tr.evaluate(ids, 2), before);
  tr.save(td.str("adapter"));

  qwen::Model loaded = qwen::Model::load(td.str("base"));
  loaded.load_adapter(td.str("adapter"));
  EXPECT_EQ(loaded.adapter_parameters(), tr.trainable_parameters());
  const std::vector<int32_t> probe(ids.begin(), ids.begin() + 12);
  const std::vector<float> a = tr.model().forward(probe), b = loaded.forward(probe),
                           merged = loaded.merged().forward(probe);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i], b[i]) << i;  // the same weights, the same kernels
    ASSERT_NEAR(merged[i], a[i], 1e-4f * (1 + std::fabs(a[i]))) << i;
  }
  // An adapter goes on before anything uses the model.
  qwen::Model again = qwen::Model::load(td.str("base"));
  qwen::Generator gen(again);
  expect_error([&] { again.load_adapter(td.str("adapter")); }, "before");
}

TEST(Api, OneLineErrors) {
  const qwen::Model m = qwen::Model::create(tiny_config(64), 1);
  expect_error([&] { m.forward({}); }, "empty");
  expect_error([&] { m.forward({1, 64}); }, "64");
  expect_error([&] { m.forward(std::vector<int32_t>(97, 1)); }, "max_position_embeddings");
  qwen::Generator gen(m);
  qwen::GenerationConfig g;
  g.stop = {"x"};
  expect_error([&] { gen.generate(std::vector<int32_t>{1}, g); }, "tokenizer");
  expect_error([&] { gen.generate(std::string("hi"), qwen::GenerationConfig{}); }, "tokenizer");
  g = {};
  g.top_p = 0;
  expect_error([&] { gen.generate(std::vector<int32_t>{1}, g); }, "top_p");
  g = {};
  g.max_new_tokens = 100;
  expect_error([&] { gen.generate(std::vector<int32_t>{1}, g); }, "max_position_embeddings");
  qwen::TrainConfig tc;
  tc.batch = 2;
  tc.seq = 8;
  qwen::Trainer tr(tiny_config(64), 1, tc);
  expect_error([&] { tr.step(std::vector<int32_t>(16, 1), std::vector<int32_t>(15, 1), 2, 8); }, "2 x 8");
  expect_error([&] { tr.fit({1, 2, 3}); }, "seq + 1");
  expect_error([] { qwen::Model::load("/nonexistent/model"); }, "/nonexistent/model");
  expect_error([] { qwen::parse_weight_type("int3"); }, "int3");
  expect_error([&] { m.merged(); }, "adapter");
}

TEST(Api, EngineAnswersLikeItself) {
  const qwen::Model m = qwen::Model::create(tiny_config(80), 2);
  qwen::EngineConfig ec;
  ec.max_running = 4;
  ec.kv_cache_bytes = size_t(2) << 20;
  qwen::Engine engine(m, ec);
  engine.start();
  qwen::GenerationConfig g;
  g.max_new_tokens = 6;
  g.temperature = 0.9f;
  g.top_k = 20;
  g.seed = 4;
  g.stop_at_eos = false;
  qwen::Request a = engine.submit(std::vector<int32_t>{3, 1, 4, 1, 5}, g);
  qwen::Request b = engine.submit(std::vector<int32_t>{3, 1, 4, 1, 5}, g);
  qwen::Completion streamed;
  while (!streamed.finished) b.next(&streamed, std::chrono::milliseconds(2000));
  const qwen::Completion ra = a.wait();
  engine.stop();
  EXPECT_EQ(ra.tokens.size(), 6u);
  EXPECT_EQ(ra.finish_reason, "length");
  EXPECT_EQ(ra.tokens, streamed.tokens);
  EXPECT_EQ(ra.prompt_tokens, 5);
  EXPECT_THROW(engine.submit(std::vector<int32_t>{1}, g), qwen::Error);
}
