// tests/test_sampler.cpp — the sampler's distributions on hand-computed cases, and its draws.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "generate/sampler.h"

using namespace qwen;

namespace {

std::vector<float> logits_of(std::vector<double> p) {
  std::vector<float> l;
  for (double x : p) l.push_back(float(std::log(x)));
  return l;
}

std::vector<float> dist(std::vector<float> logits, const SamplingParams& p,
                        std::vector<int32_t> history = {}) {
  Sampler s(int64_t(logits.size()));
  std::vector<float> probs;
  s.probabilities(logits.data(), p, history.data(), int64_t(history.size()), &probs);
  return probs;
}

void expect_probs(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "id " << i;
}

TEST(Sampler, TopPKeepsSmallestNucleus) {
  SamplingParams p;
  p.top_p = 0.7f;
  // {0.1, 0.2, 0.3, 0.4}: 0.4 + 0.3 reaches 0.7 -> {0.3, 0.4} renormalised.
  expect_probs(dist(logits_of({0.1, 0.2, 0.3, 0.4}), p), {0, 0, 3.0 / 7, 4.0 / 7});
  p.top_p = 0.75f;  // needs the 0.2 too
  expect_probs(dist(logits_of({0.1, 0.2, 0.3, 0.4}), p), {0, 2.0 / 9, 3.0 / 9, 4.0 / 9});
  p.top_p = 0.1f;  // at least one token
  expect_probs(dist(logits_of({0.1, 0.2, 0.3, 0.4}), p), {0, 0, 0, 1});
}

TEST(Sampler, TopKMinPTemperature) {
  SamplingParams p;
  p.top_k = 2;
  expect_probs(dist(logits_of({0.1, 0.2, 0.3, 0.4}), p), {0, 0, 3.0 / 7, 4.0 / 7});
  p = SamplingParams{};
  p.min_p = 0.6f;  // floor 0.24: keeps 0.3 and 0.4
  expect_probs(dist(logits_of({0.1, 0.2, 0.3, 0.4}), p), {0, 0, 3.0 / 7, 4.0 / 7});
  p = SamplingParams{};
  p.temperature = 0.5f;  // p^(1/T) = p^2: {1, 4, 9, 16} / 30
  expect_probs(dist(logits_of({0.1, 0.2, 0.3, 0.4}), p), {1.0 / 30, 4.0 / 30, 9.0 / 30, 16.0 / 30});
  p.temperature = 0.0f;  // greedy
  expect_probs(dist(logits_of({0.1, 0.2, 0.4, 0.3}), p), {0, 0, 1, 0});
  // Combined: T = 0.5 then top-k 3 -> {4, 9, 16}/29, then top-p 0.8 -> 16/29 + 9/29 = 0.862 >= 0.8.
  p.temperature = 0.5f;
  p.top_k = 3;
  p.top_p = 0.8f;
  expect_probs(dist(logits_of({0.1, 0.2, 0.3, 0.4}), p), {0, 0, 9.0 / 25, 16.0 / 25});
}

TEST(Sampler, RepetitionAndFrequencyPenalties) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  // Logits {2.0, 1.5, -1, -0.5}; id 0 was seen: 2.0 / 2 = 1.0 < 1.5, so greedy picks id 1.
  std::vector<float> l = {2.0f, 1.5f, -1.0f, -0.5f};
  Sampler s(4);
  Rng rng(1);
  std::vector<int32_t> hist = {0, 0, 2};
  std::vector<float> work = l;
  EXPECT_EQ(s.sample(work.data(), p, rng, hist.data(), 3), 1);
  EXPECT_FLOAT_EQ(work[0], 1.0f);   // divided once although seen twice
  EXPECT_FLOAT_EQ(work[2], -2.0f);  // negative logits are multiplied
  EXPECT_FLOAT_EQ(work[3], -0.5f);
  // frequency penalty: id 1 generated 3 times -> 1.5 - 3*0.5 = 0 ; presence 0.25 on top.
  p = SamplingParams{};
  p.temperature = 0;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  work = l;
  std::vector<int32_t> gen = {1, 1, 1};
  s.sample(work.data(), p, rng, nullptr, 0, gen.data(), 3);
  EXPECT_FLOAT_EQ(work[1], 1.5f - 1.5f - 0.25f);
  EXPECT_FLOAT_EQ(work[0], 2.0f);
}

TEST(Sampler, DrawsFollowTheDistributionAndSeed) {
  SamplingParams p;
  p.top_p = 0.75f;  // {0, 2/9, 3/9, 4/9}
  const std::vector<float> l = logits_of({0.1, 0.2, 0.3, 0.4});
  Sampler s(4);
  Rng rng(123);
  std::map<int32_t, int> count;
  const int n = 90000;
  std::vector<int32_t> first;
  for (int i = 0; i < n; ++i) {
    std::vector<float> w = l;
    int32_t t = s.sample(w.data(), p, rng, nullptr, 0);
    ++count[t];
    if (i < 50) first.push_back(t);
  }
  EXPECT_EQ(count[0], 0);
  // Binomial std for p=1/3, n=90000 is ~141; allow 5 sigma.
  EXPECT_NEAR(count[1], n * 2.0 / 9, 710);
  EXPECT_NEAR(count[2], n * 3.0 / 9, 710);
  EXPECT_NEAR(count[3], n * 4.0 / 9, 710);
  Rng again(123);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> w = l;
    ASSERT_EQ(s.sample(w.data(), p, again, nullptr, 0), first[size_t(i)]);
  }
}

TEST(Sampler, LargeVocabTopPMatchesFullSort) {
  // The lazy partial sort must give the same nucleus as a full sort on a big vocabulary.
  const int64_t V = 50000;
  Rng r(9);
  std::vector<float> l(V);
  for (auto& x : l) x = 3.0f * r.normal();
  SamplingParams p;
  p.top_p = 0.95f;
  p.temperature = 0.7f;
  auto probs = dist(l, p);
  // Reference: sort all, softmax, cut.
  std::vector<std::pair<double, int>> all;
  double mx = *std::max_element(l.begin(), l.end()), s = 0;
  for (int64_t i = 0; i < V; ++i) all.push_back({std::exp((l[i] - mx) / 0.7), int(i)});
  for (auto& a : all) s += a.first;
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.first > b.first; });
  double cum = 0;
  size_t n = 0;
  while (n < all.size()) {
    cum += all[n].first / s;
    ++n;
    if (cum >= 0.95) break;
  }
  size_t kept = 0;
  for (float x : probs) kept += x > 0;
  EXPECT_EQ(kept, n);
  EXPECT_GT(n, 64u);  // exercises the growing partial sort
  for (size_t i = 0; i < n; ++i) EXPECT_GT(probs[size_t(all[i].second)], 0.0f);
}

}  // namespace
