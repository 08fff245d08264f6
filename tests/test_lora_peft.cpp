// LoRA adapters against Hugging Face PEFT: adapters PEFT saved (tests/data/lora, made by
// gen_peft_golden.py) load onto the committed tiny base models and give PEFT's logits; an adapter
// we save and load back gives identical logits; merging equals the attached adapter.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "model/decoder.h"
#include "test_util.h"
#include "train/lora.h"

namespace {

using namespace qwen_test;

std::vector<float> logits_of(const qwen::Model& m, const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size());
  qwen::Decoder dec(m, T);
  qwen::KvCache cache(m.config(), 1, T);
  qwen::SeqChunk ch{0, T, ids.data()};
  std::vector<float> out(size_t(T * m.config().vocab_size));
  dec.forward(cache, &ch, 1, qwen::LogitsMode::kAll, out.data());
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, double(std::abs(a[i] - b[i])));
  return d;
}

void check_case(const std::string& name) {
  SCOPED_TRACE(name);
  const std::string dir = std::string(QWEN_TEST_DATA) + "/lora/" + name;
  auto g = read_json(dir + "/golden.json");
  const std::string base_dir = std::string(QWEN_TEST_DATA) + "/models/" + g["base"].get<std::string>();
  std::vector<int32_t> ids;
  for (auto& v : g["input_ids"]) ids.push_back(v.get<int32_t>());
  const std::vector<float> ref = read_f32(dir + "/logits.f32");

  auto base = qwen::Model::load(base_dir);
  const std::vector<float> plain = logits_of(*base, ids);
  auto adapter = qwen::train::LoraAdapter::load(dir, base->config());
  adapter->attach(*base);
  const std::vector<float> ours = logits_of(*base, ids);
  EXPECT_LT(max_abs_diff(ours, ref), 1e-4);
  EXPECT_GT(max_abs_diff(plain, ref), 1e-2);  // the adapter matters

  // Save -> load gives identical logits.
  TempDir td;
  adapter->save((td.path / "rt").string());
  auto base2 = qwen::Model::load(base_dir);
  auto again = qwen::train::LoraAdapter::load((td.path / "rt").string(), base2->config());
  again->attach(*base2);
  EXPECT_EQ(logits_of(*base2, ids), ours);

  // Merged weights give the attached adapter's logits.
  auto base3 = qwen::Model::load(base_dir);
  auto merged = adapter->merge(*base3);
  EXPECT_LT(max_abs_diff(logits_of(*merged, ids), ours), 1e-5);
}

}  // namespace

TEST(LoraPeft, Qwen2AllTargets) { check_case("qwen2_gqa_r4"); }
TEST(LoraPeft, Qwen3RsLora) { check_case("qwen3_headdim_rslora"); }
