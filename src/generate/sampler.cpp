// generate/sampler.cpp — see sampler.h. Order of the filters follows transformers' generate:
// penalties, temperature, top-k, top-p, min-p. Buffers are sized once (no allocation per token).
#include "generate/sampler.h"

#include <algorithm>
#include <cmath>

#include "qwen/error.h"

namespace qwen {

Sampler::Sampler(int64_t vocab_size)
    : V_(vocab_size),
      probs_(size_t(vocab_size), 0.0f),
      seen_(size_t(vocab_size), 0),
      counts_(size_t(vocab_size), 0) {
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
  const float inv_t = 1.0f / p.temperature;
  dense_ = false;
  cand_.clear();
  bool sorted = false;
  float pmax = 0;
  if (p.top_k > 0 && p.top_k < V_) {
    // Top-k: select the k largest logits (by_prob is a strict total order, so the set and its
    // order equal a partial sort's), then softmax at temperature T over them.
    for (int64_t i = 0; i < V_; ++i) cand_.emplace_back(logits[i], int32_t(i));
    std::nth_element(cand_.begin(), cand_.begin() + (p.top_k - 1), cand_.end(), by_prob);
    cand_.resize(size_t(p.top_k));
    std::sort(cand_.begin(), cand_.end(), by_prob);
    sorted = true;
    const float mx = cand_[0].first;
    double sum = 0;
    for (auto& c : cand_) {
      c.first = std::exp((c.first - mx) * inv_t);
      sum += c.first;
    }
    for (auto& c : cand_) {
      c.first = float(c.first / sum);
      pmax = std::max(pmax, c.first);
    }
  } else {
    // Softmax at temperature T over the whole vocabulary, in id order.
    float mx = logits[0];
    for (int64_t i = 1; i < V_; ++i) mx = std::max(mx, logits[i]);
    float* pr = probs_.data();
    double sum = 0;
    for (int64_t i = 0; i < V_; ++i) {
      pr[i] = std::exp((logits[i] - mx) * inv_t);
      sum += pr[i];
    }
    if (p.min_p <= 0.0f && p.top_p >= 1.0f) {  // no filter: draw from these directly
      dense_ = true;
      total_ = sum;
      return;
    }
    // The candidates, skipping those min-p would drop anyway (its floor is min_p * p_max and
    // the largest probability is exp(0) / sum).
    pmax = float(1.0 / sum);
    const float floor_p = p.min_p > 0.0f ? p.min_p * pmax : 0.0f;
    for (int64_t i = 0; i < V_; ++i) {
      const float q = float(pr[i] / sum);
      if (q >= floor_p) cand_.emplace_back(q, int32_t(i));
    }
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
  if (dense_) {
    const double target = u * total_;
    double cum = 0;
    int64_t last = 0;
    for (int64_t i = 0; i < V_; ++i) {
      if (probs_[size_t(i)] <= 0.0f) continue;
      cum += probs_[size_t(i)];
      last = i;
      if (target < cum) return int32_t(i);
    }
    return int32_t(last);
  }
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
  if (dense_) {
    for (int64_t i = 0; i < V_; ++i) (*probs)[size_t(i)] = float(probs_[size_t(i)] / total_);
    return;
  }
  for (const auto& c : cand_) (*probs)[size_t(c.second)] = c.first;
}

}  // namespace qwen
