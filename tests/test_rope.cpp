// tests/test_rope.cpp — rope_frequencies / rope_tables against golden values from transformers'
// own rotary-embedding modules (tests/data/rope/rope_golden.json, made by gen_rope_golden.py),
// plus independent checks: the YaRN worked example of formats.md §3 (low 23, high 40,
// attention_factor 1.1386294) and each type's formula recomputed here in double precision.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/rope.h"
#include "qwen/config.h"
#include "qwen/error.h"

using nlohmann::json;
using qwen::ModelConfig;
using qwen::RopeFreqs;

namespace {

json golden() {
  std::ifstream f(std::string(QWEN_TEST_DATA) + "/rope/rope_golden.json");
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

ModelConfig config(int64_t head_dim, double theta, const json& rope_scaling = nullptr,
                   int64_t max_pos = 32768) {
  json j = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", 10},
            {"hidden_size", head_dim * 2}, {"intermediate_size", 8}, {"num_hidden_layers", 1},
            {"num_attention_heads", 2}, {"num_key_value_heads", 1}, {"rope_theta", theta},
            {"max_position_embeddings", max_pos}, {"rope_scaling", rope_scaling}};
  return ModelConfig::from_json(j.dump(), "test");
}

// inv_freq of default RoPE in double: base^(-2i/d).
std::vector<double> default_inv(double base, int64_t d) {
  std::vector<double> v;
  for (int64_t i = 0; i < d / 2; ++i) v.push_back(std::pow(base, -2.0 * double(i) / double(d)));
  return v;
}

void expect_rel(double got, double want, double rel, const std::string& what) {
  EXPECT_LE(std::fabs(got - want), rel * std::fabs(want) + 1e-30) << what << ": got " << got << " want " << want;
}

}  // namespace

TEST(Rope, MatchesTransformersGolden) {
  json g = golden();
  ASSERT_GE(g["cases"].size(), 15u);
  int n_values = 0, n_exact = 0;
  for (const json& c : g["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    ModelConfig cfg = ModelConfig::from_json(c["config"].get<std::string>(), name);
    RopeFreqs f = qwen::rope_frequencies(cfg, c["seq_len"].get<int64_t>());
    std::vector<float> want = c["inv_freq"].get<std::vector<float>>();
    ASSERT_EQ(f.inv_freq.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      expect_rel(f.inv_freq[i], want[i], 1e-6, "inv_freq[" + std::to_string(i) + "]");
      ++n_values;
      n_exact += f.inv_freq[i] == want[i];
    }
    expect_rel(f.attention_factor, c["attention_factor"].get<double>(), 1e-6, "attention_factor");
  }
  // torch's vectorised powf is within 1 ulp of the correctly rounded value we compute: nearly
  // every value must be bit-identical (a formula slip would break far more than a few).
  EXPECT_GE(n_exact, n_values * 95 / 100) << n_exact << " of " << n_values << " bit-identical";
  std::printf("inv_freq: %d of %d values bit-identical to transformers\n", n_exact, n_values);
}

TEST(Rope, TablesMatchTransformersGolden) {
  // cos/sin of torch's forward for the golden inv_freq: only the fp32 product and cos/sin matter.
  json g = golden();
  for (const json& c : g["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    RopeFreqs f;
    f.inv_freq = c["inv_freq"].get<std::vector<float>>();
    f.attention_factor = c["attention_factor"].get<float>();
    const std::vector<int64_t> pos = c["positions"].get<std::vector<int64_t>>();
    std::vector<float> ct, st;
    qwen::rope_tables(f, pos.back() + 1, &ct, &st);
    const size_t half = f.inv_freq.size();
    ASSERT_EQ(ct.size(), size_t(pos.back() + 1) * half);
    ASSERT_EQ(st.size(), ct.size());
    for (size_t k = 0; k < pos.size(); ++k) {
      std::vector<float> wc = c["cos"][k].get<std::vector<float>>(), ws = c["sin"][k].get<std::vector<float>>();
      ASSERT_EQ(wc.size(), half);
      for (size_t i = 0; i < half; ++i) {
        EXPECT_NEAR(ct[size_t(pos[k]) * half + i], wc[i], 1e-6) << "pos " << pos[k] << " i " << i;
        EXPECT_NEAR(st[size_t(pos[k]) * half + i], ws[i], 1e-6) << "pos " << pos[k] << " i " << i;
      }
    }
  }
}

TEST(Rope, YarnWorkedExample) {
  // formats.md §3: Qwen2.5 recipe {"type":"yarn","factor":4.0,"original_max_position_embeddings":32768},
  // base 1e6, d = 128: corr_dim(32) = 23.596 -> low 23, corr_dim(1) = 39.651 -> high 40,
  // attention_factor = 0.1 ln 4 + 1 = 1.1386294.
  const double pi = 3.14159265358979323846;
  auto corr = [&](double r) { return 128 * std::log(32768 / (r * 2 * pi)) / (2 * std::log(1e6)); };
  EXPECT_NEAR(corr(32), 23.596, 1e-3);
  EXPECT_NEAR(corr(1), 39.651, 1e-3);
  ModelConfig c = config(128, 1e6, {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}},
                         131072);
  RopeFreqs f = qwen::rope_frequencies(c);
  EXPECT_NEAR(f.attention_factor, 1.1386294, 1e-7);
  const std::vector<double> base = default_inv(1e6, 128);
  ASSERT_EQ(f.inv_freq.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    // ramp 0 up to low (pure extrapolation = unscaled), 1 from high on (interpolation = /factor).
    const double ramp = std::clamp((i - 23.0) / (40.0 - 23.0), 0.0, 1.0);
    const double want = base[size_t(i)] / 4 * ramp + base[size_t(i)] * (1 - ramp);
    expect_rel(f.inv_freq[size_t(i)], want, 2e-6, "yarn inv_freq[" + std::to_string(i) + "]");
  }
  EXPECT_EQ(f.inv_freq[23], qwen::rope_frequencies(config(128, 1e6)).inv_freq[23]);  // last unscaled
  // The same recipe with max_position_embeddings = original gives the same frequencies.
  RopeFreqs g = qwen::rope_frequencies(
      config(128, 1e6, {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}}, 32768));
  EXPECT_EQ(g.inv_freq, f.inv_freq);
  // cos/sin carry the attention factor: cos^2 + sin^2 = af^2.
  std::vector<float> ct, st;
  qwen::rope_tables(f, 50, &ct, &st);
  for (size_t k = 0; k < ct.size(); ++k)
    EXPECT_NEAR(ct[k] * ct[k] + st[k] * st[k], f.attention_factor * f.attention_factor, 1e-5);
}

TEST(Rope, IndependentFormulas) {
  // default
  for (int64_t d : {2, 6, 16, 80, 128}) {
    RopeFreqs f = qwen::rope_frequencies(config(d, 10000.0));
    std::vector<double> want = default_inv(10000.0, d);
    ASSERT_EQ(f.inv_freq.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) expect_rel(f.inv_freq[i], want[i], 3e-7, "default");
    EXPECT_EQ(f.attention_factor, 1.0f);
  }
  // linear: default / factor
  {
    RopeFreqs f = qwen::rope_frequencies(config(64, 1e6, {{"type", "linear"}, {"factor", 2.5}}));
    std::vector<double> want = default_inv(1e6, 64);
    for (size_t i = 0; i < want.size(); ++i) expect_rel(f.inv_freq[i], want[i] / 2.5, 3e-7, "linear");
  }
  // dynamic: below max = default; above, base' = base * (f*s/M - (f-1))^(d/(d-2))
  {
    ModelConfig c = config(64, 10000.0, {{"type", "dynamic"}, {"factor", 2.0}}, 2048);
    EXPECT_EQ(qwen::rope_frequencies(c, 100).inv_freq, qwen::rope_frequencies(config(64, 10000.0)).inv_freq);
    EXPECT_EQ(qwen::rope_frequencies(c, 2048).inv_freq, qwen::rope_frequencies(c, 0).inv_freq);
    const double nb = 10000.0 * std::pow(2.0 * 5000 / 2048 - 1.0, 64.0 / 62.0);
    RopeFreqs f = qwen::rope_frequencies(c, 5000);
    std::vector<double> want = default_inv(nb, 64);
    for (size_t i = 0; i < want.size(); ++i) expect_rel(f.inv_freq[i], want[i], 5e-7, "dynamic");
  }
  // llama3 (Llama 3.1): short wavelengths untouched, long ones / factor, smooth in between.
  {
    ModelConfig c = config(128, 500000.0,
                           {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}},
                           131072);
    RopeFreqs f = qwen::rope_frequencies(c);
    std::vector<double> base = default_inv(500000.0, 128);
    int n_high = 0, n_low = 0, n_mid = 0;
    for (size_t i = 0; i < base.size(); ++i) {
      const double wl = 2 * 3.14159265358979323846 / base[i];
      double want;
      if (wl < 8192 / 4.0) {
        want = base[i];
        ++n_high;
      } else if (wl > 8192 / 1.0) {
        want = base[i] / 8;
        ++n_low;
      } else {
        const double s = (8192 / wl - 1.0) / (4.0 - 1.0);
        want = (1 - s) * base[i] / 8 + s * base[i];
        ++n_mid;
      }
      expect_rel(f.inv_freq[i], want, 2e-6, "llama3[" + std::to_string(i) + "]");
    }
    EXPECT_GT(n_high, 0);
    EXPECT_GT(n_low, 0);
    EXPECT_GT(n_mid, 0);
  }
  // yarn attention factor from mscale / mscale_all_dim, or explicit.
  {
    ModelConfig c = config(64, 10000.0,
                           {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096},
                            {"mscale", 1.0}, {"mscale_all_dim", 0.5}});
    const double want = (0.1 * 1.0 * std::log(4.0) + 1) / (0.1 * 0.5 * std::log(4.0) + 1);
    expect_rel(qwen::rope_frequencies(c).attention_factor, want, 1e-7, "mscale");
    c.rope_scaling.has_attention_factor = true;
    c.rope_scaling.attention_factor = 0.75;
    EXPECT_EQ(qwen::rope_frequencies(c).attention_factor, 0.75f);
  }
}

TEST(Rope, TablesLayoutAndErrors) {
  RopeFreqs f;
  f.inv_freq = {1.0f, 0.5f, 0.25f};
  f.attention_factor = 2.0f;
  std::vector<float> ct, st;
  qwen::rope_tables(f, 4, &ct, &st);
  ASSERT_EQ(ct.size(), 12u);  // (n_pos, D/2)
  for (int p = 0; p < 4; ++p)
    for (int i = 0; i < 3; ++i) {
      const float ang = float(p) * f.inv_freq[size_t(i)];
      EXPECT_NEAR(ct[size_t(p * 3 + i)], 2.0 * std::cos(double(ang)), 1e-6);
      EXPECT_NEAR(st[size_t(p * 3 + i)], 2.0 * std::sin(double(ang)), 1e-6);
    }
  qwen::rope_tables(f, 0, &ct, &st);
  EXPECT_TRUE(ct.empty());

  ModelConfig c = config(64, 10000.0);
  c.rope_scaling.type = "longrope";
  EXPECT_THROW(qwen::rope_frequencies(c), qwen::Error);
  c.rope_scaling.type = "bogus";
  EXPECT_THROW(qwen::rope_frequencies(c), qwen::Error);
  c.rope_scaling.type = "default";
  c.head_dim = 7;
  EXPECT_THROW(qwen::rope_frequencies(c), qwen::Error);
}
