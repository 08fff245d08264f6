// tests/test_model_golden.cpp — whole-model checks against Hugging Face transformers: logits of
// tiny random Qwen2 / Qwen3 / Llama models (GQA ratios 1-8, biases, q/k norm, head_dim != C/H,
// tied and untied, every rope_scaling type, BF16 weights, a sharded folder) within 1e-4, the same
// loss, identical greedy continuations. Golden files: tests/data/models/gen_golden.py.
#include <gtest/gtest.h>

#include <cmath>

#include "generate/generator.h"
#include "model/decoder.h"
#include "model/model.h"
#include "test_util.h"

using namespace qwen;
using namespace qwen_test;

namespace {

const char* kCases[] = {"qwen2_gqa",   "qwen2_tied_mha", "qwen3_headdim", "qwen3_bias_tied",
                        "llama_gqa8",  "rope_linear",    "rope_dynamic",  "rope_yarn",
                        "rope_llama3", "qwen3_bf16",     "qwen2_sharded"};

class Golden : public ::testing::TestWithParam<const char*> {};

std::vector<float> run_logits(const Model& m, const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size());
  KvCache cache(m.config(), 1, T);
  Decoder dec(m, T);
  std::vector<float> logits(size_t(T * m.config().vocab_size));
  SeqChunk ch{0, T, ids.data()};
  dec.forward(cache, &ch, 1, LogitsMode::kAll, logits.data());
  return logits;
}

TEST_P(Golden, LogitsLossAndGreedyMatchTransformers) {
  const std::string dir = data_path(std::string("models/") + GetParam());
  auto g = read_json(dir + "/golden.json");
  auto ref = read_f32(dir + "/logits.f32");
  auto m = Model::load(dir);
  std::vector<int32_t> ids = g["input_ids"].get<std::vector<int32_t>>();
  const int64_t V = m->config().vocab_size;
  ASSERT_EQ(int64_t(ref.size()), int64_t(ids.size()) * V);

  auto logits = run_logits(*m, ids);
  double max_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) max_err = std::max(max_err, double(std::fabs(logits[i] - ref[i])));
  EXPECT_LT(max_err, 1e-4) << GetParam();

  // Mean next-token cross-entropy, as transformers' loss with labels = input_ids.
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data() + t * size_t(V);
    double mx = row[0], s = 0;
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(row[v]));
    for (int64_t v = 0; v < V; ++v) s += std::exp(row[v] - mx);
    nll += std::log(s) + mx - row[ids[t + 1]];
  }
  EXPECT_NEAR(nll / double(ids.size() - 1), g["loss"].get<double>(), 1e-4);

  auto prompt = g["greedy_prompt"].get<std::vector<int32_t>>();
  auto want = g["greedy_ids"].get<std::vector<int32_t>>();
  Generator gen(*m, 1, int64_t(prompt.size() + want.size()), 8);
  GenerationConfig gc;
  gc.max_new_tokens = int64_t(want.size());
  gc.sampling.temperature = 0;
  auto got = gen.generate({prompt}, gc)[0];
  EXPECT_EQ(got, want) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Models, Golden, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param); });

// Chunked prefill (pos0 > 0) and a batch of sequences in one call give the same logits as one
// sequence at a time.
TEST(Decoder, ChunkedAndBatchedEqualSingle) {
  auto m = Model::load(data_path("models/qwen3_headdim"));
  auto g = read_json(data_path("models/qwen3_headdim/golden.json"));
  std::vector<int32_t> ids = g["input_ids"].get<std::vector<int32_t>>();
  const int64_t V = m->config().vocab_size, T = int64_t(ids.size());
  auto full = run_logits(*m, ids);

  // Same sequence in chunks of 5, 1, rest.
  KvCache cache(m->config(), 3, T);
  Decoder dec(*m, 2 * T);
  std::vector<float> lg(size_t(T * V));
  int64_t sizes[] = {5, 1, T - 6}, p = 0;
  for (int64_t n : sizes) {
    SeqChunk ch{0, n, ids.data() + p};
    dec.forward(cache, &ch, 1, LogitsMode::kAll, lg.data() + p * V);
    p += n;
  }
  for (size_t i = 0; i < full.size(); ++i) ASSERT_NEAR(lg[i], full[i], 2e-5) << i;

  // Batch: sequence 1 gets the first 9 tokens, sequence 2 the first 17, in one call; kLast.
  SeqChunk chunks[] = {{1, 9, ids.data()}, {2, 17, ids.data()}};
  std::vector<float> last(size_t(2 * V));
  dec.forward(cache, chunks, 2, LogitsMode::kLast, last.data());
  for (int64_t v = 0; v < V; ++v) {
    ASSERT_NEAR(last[size_t(v)], full[size_t(8 * V + v)], 2e-5);
    ASSERT_NEAR(last[size_t(V + v)], full[size_t(16 * V + v)], 2e-5);
  }
}

// A batch of prompts of different lengths generates what each prompt generates alone, greedy
// and sampled (each sequence has its own seeded generator).
TEST(Generator, BatchEqualsAlone) {
  auto m = Model::load(data_path("models/qwen2_gqa"));
  std::vector<std::vector<int32_t>> prompts = {{5, 9, 33, 2, 7, 1, 1, 40}, {3, 150, 8},
                                               {11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22}};
  for (float temp : {0.0f, 0.8f}) {
    GenerationConfig gc;
    gc.max_new_tokens = 12;
    gc.sampling.temperature = temp;
    gc.sampling.top_p = 0.9f;
    gc.sampling.seed = 7;
    Generator batch_gen(*m, 3, 32, 16);
    auto together = batch_gen.generate(prompts, gc);
    for (size_t i = 0; i < prompts.size(); ++i) {
      Generator one(*m, 1, 32, 16);
      auto alone = one.generate({prompts[i]}, gc)[0];
      EXPECT_EQ(together[i], alone) << "prompt " << i << " temperature " << temp;
    }
  }
}

TEST(Generator, StopIdsAndSeedDeterminism) {
  auto m = Model::load(data_path("models/llama_gqa8"));
  GenerationConfig gc;
  gc.max_new_tokens = 20;
  gc.sampling.temperature = 1.0f;
  gc.sampling.seed = 42;
  Generator gen(*m, 1, 40, 16);
  auto a = gen.generate({{1, 2, 3, 4}}, gc)[0];
  auto b = gen.generate({{1, 2, 3, 4}}, gc)[0];
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 20u);
  gc.sampling.seed = 43;
  auto c = gen.generate({{1, 2, 3, 4}}, gc)[0];
  EXPECT_NE(a, c);
  // Stop on the 5th token: generation ends right after emitting it.
  gc.sampling.seed = 42;
  gc.stop_ids = {a[4]};
  auto d = gen.generate({{1, 2, 3, 4}}, gc)[0];
  size_t first = size_t(std::find(a.begin(), a.end(), a[4]) - a.begin());
  EXPECT_EQ(d, std::vector<int32_t>(a.begin(), a.begin() + long(first) + 1));
}

TEST(Model, SaveThenLoadIsIdenticalAndShards) {
  for (const char* name : {"qwen3_bias_tied", "qwen3_bf16", "qwen2_sharded"}) {
    auto m = Model::load(data_path(std::string("models/") + name));
    for (size_t shard : {size_t(5000000000ull), size_t(40000)}) {
      TempDir td;
      m->save(td.str(), shard);
      EXPECT_EQ(std::filesystem::exists(td.str("model.safetensors.index.json")), shard == 40000);
      auto r = Model::load(td.str());
      EXPECT_EQ(r->config().to_json(), m->config().to_json());
      auto a = m->named_tensors(), b = r->named_tensors();
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].name, b[i].name);
        ASSERT_EQ(a[i].shape, b[i].shape);
        ASSERT_EQ(a[i].dtype, b[i].dtype) << a[i].name;
        size_t n = dtype_size(a[i].dtype);
        for (int64_t d : a[i].shape) n *= size_t(d);
        ASSERT_EQ(std::memcmp(a[i].data, b[i].data, n), 0) << name << " " << a[i].name;
      }
    }
  }
}

TEST(Model, ConvertToBf16OnLoadMatchesBf16Logits) {
  // Loading f32 weights as bf16 must equal computing with the bf16-rounded weights.
  DType bf = DType::BF16;
  auto m32 = Model::load(data_path("models/qwen2_gqa"));
  auto m16 = Model::load(data_path("models/qwen2_gqa"), &bf);
  EXPECT_EQ(m16->matrix_dtype(), DType::BF16);
  EXPECT_LT(m16->weight_bytes(), m32->weight_bytes());
  std::vector<int32_t> ids = {1, 5, 9, 100, 3};
  auto a = run_logits(*m32, ids), b = run_logits(*m16, ids);
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, double(std::fabs(a[i] - b[i])));
  EXPECT_GT(diff, 0.0);   // rounding changed something
  EXPECT_LT(diff, 0.1);   // but bf16 keeps ~3 significant digits
}

TEST(Model, RandomInitIsSeeded) {
  ModelConfig c = ModelConfig::from_file(data_path("models/qwen2_gqa/config.json"));
  auto a = Model::random(c, 5), b = Model::random(c, 5), d = Model::random(c, 6);
  auto ta = a->named_tensors(), tb = b->named_tensors(), td = d->named_tensors();
  size_t n = size_t(c.vocab_size * c.hidden_size) * 4;
  EXPECT_EQ(std::memcmp(ta[0].data, tb[0].data, n), 0);
  EXPECT_NE(std::memcmp(ta[0].data, td[0].data, n), 0);
  // std of the embedding ~ initializer_range
  const float* e = static_cast<const float*>(ta[0].data);
  double s2 = 0;
  for (size_t i = 0; i < n / 4; ++i) s2 += double(e[i]) * e[i];
  EXPECT_NEAR(std::sqrt(s2 / double(n / 4)), c.initializer_range, 0.1 * c.initializer_range);
}

}  // namespace
