// generate/sampler.cpp — see sampler.h. Order of the filters follows transformers' generate:
// penalties, temperature, top-k, top-p, min-p. Buffers are sized once (no allocation per token
// beyond the first call).
#include "generate/sampler.h"

#include <algorithm>
#include <cmath>

#include "qwen/error.h"

namespace qwen {

Sampler::Sampler(int64_t vocab_size)
    : V_(vocab_size), seen_(size_t(vocab_size), 0), counts_(size_t(vocab_size), 0) {
  cand_.reserve(size_t(vocab_size));
}

void Sampler::apply_penalties(float* logits, const SamplingParams& p, const int32_t* history,
                              int64_t n_history, const int32_t* generated, int64_t n_generated) {
  if (p.repetition_penalty != 1.0f && n_history > 0) {
    if (++stamp_ == 0) {  // wrapped: clear stamps
      std::fill(seen_.begin(), seen_.end(), 0);
      stamp_ = 1;
    }
    for (int64_t i = 0; i < n_history; ++i) {
      const int32_t id = history[i];
      if (id < 0 || id >= V_ || seen_[size_t(id)] == stamp_) continue;
      seen_[size_t(id)] = stamp_;
      float& l = logits[id];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if ((p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) && n_generated > 0) {
    for (int64_t i = 0; i < n_generated; ++i)
      if (generated[i] >= 0 && generated[i] < V_) ++counts_[size_t(generated[i])];
    for (int64_t i = 0; i < n_generated; ++i) {
      const int32_t id = generated[i];
      if (id < 0 || id >= V_ || counts_[size_t(id)] == 0) continue;
      logits[id] -= p.presence_penalty + p.frequency_penalty * float(counts_[size_t(id)]);
      counts_[size_t(id)] = 0;  // each id penalised once
    }
  }
}

void Sampler::filter(const float* logits, const SamplingParams& p) {
  auto by_prob = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  // Top-k keeps the k largest logits (sorted); otherwise all ids, unsorted: sorting 150k
  // entries per token would cost more than the forward pass of a small model.
  cand_.clear();
  for (int64_t i = 0; i < V_; ++i) cand_.emplace_back(logits[i], int32_t(i));
  bool sorted = false;
  if (p.top_k > 0 && size_t(p.top_k) < cand_.size()) {
    std::partial_sort(cand_.begin(), cand_.begin() + p.top_k, cand_.end(), by_prob);
    cand_.resize(size_t(p.top_k));
    sorted = true;
  }
  // Softmax at temperature T over the candidates.
  float mx = cand_[0].first;
  for (const auto& c : cand_) mx = std::max(mx, c.first);
  const float inv_t = 1.0f / p.temperature;
  double sum = 0;
  for (auto& c : cand_) {
    c.first = std::exp((c.first - mx) * inv_t);
    sum += c.first;
  }
  float pmax = 0;
  for (auto& c : cand_) {
    c.first = float(c.first / sum);
    pmax = std::max(pmax, c.first);
  }
  // Min-p keeps tokens with p >= min_p * p_max. Top-p and min-p each keep a prefix of the
  // sorted order and min-p's rule is invariant under renormalisation, so applying min-p first
  // gives the same set as transformers' top-p-then-min-p, with less to sort.
  if (p.min_p > 0.0f) {
    const float floor_p = p.min_p * pmax;
    cand_.erase(std::remove_if(cand_.begin(), cand_.end(),
                               [&](const auto& c) { return c.first < floor_p; }),
                cand_.end());
  }
  // Top-p: the smallest most-likely prefix whose mass reaches top_p (at least one token).
  // Sorted lazily: a growing partial sort until the prefix holds enough mass.
  if (p.top_p < 1.0f) {
    size_t k = std::min<size_t>(64, cand_.size());
    for (;;) {
      if (!sorted) std::partial_sort(cand_.begin(), cand_.begin() + long(k), cand_.end(), by_prob);
      double cum = 0;
      size_t n = 0;
      while (n < k) {
        cum += cand_[n].first;
        ++n;
        if (cum >= double(p.top_p)) break;
      }
      if (cum >= double(p.top_p) || k == cand_.size()) {
        cand_.resize(n);
        break;
      }
      k = std::min(cand_.size(), k * 4);
    }
  }
  double total = 0;
  for (auto& c : cand_) total += c.first;
  for (auto& c : cand_) c.first = float(c.first / total);
}

int32_t Sampler::sample(float* logits, const SamplingParams& p, Rng& rng,
                        const int32_t* history, int64_t n_history, const int32_t* generated,
                        int64_t n_generated) {
  apply_penalties(logits, p, history, n_history, generated, n_generated);
  if (p.temperature <= 0.0f) {  // greedy: first index of the maximum, as torch.argmax
    int64_t best = 0;
    for (int64_t i = 1; i < V_; ++i)
      if (logits[i] > logits[best]) best = i;
    return int32_t(best);
  }
  filter(logits, p);
  const double u = rng.uniform();
  double cum = 0;
  for (const auto& c : cand_) {
    cum += c.first;
    if (u < cum) return c.second;
  }
  return cand_.back().second;
}

void Sampler::probabilities(float* logits, const SamplingParams& p, const int32_t* history,
                            int64_t n_history, std::vector<float>* probs,
                            const int32_t* generated, int64_t n_generated) {
  apply_penalties(logits, p, history, n_history, generated, n_generated);
  probs->assign(size_t(V_), 0.0f);
  if (p.temperature <= 0.0f) {
    int64_t best = 0;
    for (int64_t i = 1; i < V_; ++i)
      if (logits[i] > logits[best]) best = i;
    (*probs)[size_t(best)] = 1.0f;
    return;
  }
  filter(logits, p);
  for (const auto& c : cand_) (*probs)[size_t(c.second)] = c.first;
}

}  // namespace qwen
