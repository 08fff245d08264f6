// generate/generator.cpp — see generator.h.
#include "generate/generator.h"

#include <algorithm>
#include <chrono>

#include "qwen/error.h"

namespace qwen {

using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

Generator::Generator(const Model& m, int64_t max_batch, int64_t context, int64_t prefill_chunk)
    : m_(m),
      max_batch_(max_batch),
      context_(context),
      prefill_chunk_(std::max(prefill_chunk, max_batch)),
      cache_(m.config(), max_batch, context),
      decoder_(m, std::max(prefill_chunk, max_batch)),
      sampler_(m.config().vocab_size),
      logits_(size_t(max_batch * m.config().vocab_size)) {}

std::vector<std::vector<int32_t>> Generator::generate(
    const std::vector<std::vector<int32_t>>& prompts, const GenerationConfig& cfg,
    const TokenCallback& on_token, GenerationStats* stats) {
  const int64_t B = int64_t(prompts.size());
  const int64_t V = m_.config().vocab_size;
  if (B == 0) return {};
  if (B > max_batch_)
    throw Error("batch of " + std::to_string(B) + " prompts exceeds the generator's " +
                std::to_string(max_batch_));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = int64_t(prompts[size_t(b)].size());
    if (n == 0) throw Error("prompt " + std::to_string(b) + " is empty");
    if (n + cfg.max_new_tokens > context_)
      throw Error("prompt of " + std::to_string(n) + " tokens plus max_new_tokens " +
                  std::to_string(cfg.max_new_tokens) + " exceeds the context of " +
                  std::to_string(context_) + " tokens");
    for (int32_t id : prompts[size_t(b)])
      if (id < 0 || id >= V)
        throw Error("prompt token id " + std::to_string(id) + " is out of range for vocab_size " +
                    std::to_string(V));
    cache_.reset(b);
  }
  GenerationStats st;
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  // history[b]: prompt + generated ids (for the repetition penalty); reserved up front.
  std::vector<std::vector<int32_t>> history(static_cast<size_t>(B));
  std::vector<Rng> rngs;
  for (int64_t b = 0; b < B; ++b) {
    history[size_t(b)].reserve(size_t(context_));
    history[size_t(b)] = prompts[size_t(b)];
    out[size_t(b)].reserve(size_t(cfg.max_new_tokens));
    rngs.emplace_back(cfg.sampling.seed);
    st.prompt_tokens += int64_t(prompts[size_t(b)].size());
  }
  std::vector<char> live(static_cast<size_t>(B), cfg.max_new_tokens > 0);

  auto emit = [&](int64_t b, float* row) {
    const auto& h = history[size_t(b)];
    auto& o = out[size_t(b)];
    int32_t tok = sampler_.sample(row, cfg.sampling, rngs[size_t(b)], h.data(), int64_t(h.size()),
                                  o.data(), int64_t(o.size()));
    o.push_back(tok);
    history[size_t(b)].push_back(tok);
    ++st.generated_tokens;
    bool go = !on_token || on_token(b, tok);
    if (!go || int64_t(o.size()) >= cfg.max_new_tokens ||
        std::find(cfg.stop_ids.begin(), cfg.stop_ids.end(), tok) != cfg.stop_ids.end())
      live[size_t(b)] = 0;
  };

  // Prefill: pack prompt pieces into calls of at most prefill_chunk_ tokens; a sequence's last
  // piece yields the logits of its first generated token.
  auto t0 = Clock::now();
  std::vector<SeqChunk> chunks;
  chunks.reserve(size_t(B));
  std::vector<int64_t> done(static_cast<size_t>(B), 0), chunk_seq;
  int64_t b_next = 0;
  while (b_next < B) {
    chunks.clear();
    chunk_seq.clear();
    int64_t budget = prefill_chunk_;
    for (int64_t b = b_next; b < B && budget > 0 && int64_t(chunks.size()) < max_batch_; ++b) {
      const auto& p = prompts[size_t(b)];
      const int64_t n = std::min<int64_t>(budget, int64_t(p.size()) - done[size_t(b)]);
      chunks.push_back(SeqChunk{b, n, p.data() + done[size_t(b)]});
      chunk_seq.push_back(b);
      budget -= n;
    }
    decoder_.forward(cache_, chunks.data(), chunks.size(), LogitsMode::kLast, logits_.data());
    for (size_t i = 0; i < chunks.size(); ++i) {
      const int64_t b = chunk_seq[i];
      done[size_t(b)] += chunks[i].n_tokens;
      if (done[size_t(b)] == int64_t(prompts[size_t(b)].size())) {
        if (live[size_t(b)]) emit(b, logits_.data() + int64_t(i) * V);
        b_next = b + 1;
      }
    }
  }
  st.prefill_seconds = seconds_since(t0);

  // Decode: every live sequence advances by one token per forward call.
  t0 = Clock::now();
  std::vector<int32_t> last(static_cast<size_t>(B));
  for (;;) {
    chunks.clear();
    chunk_seq.clear();
    for (int64_t b = 0; b < B; ++b) {
      if (!live[size_t(b)]) continue;
      last[size_t(b)] = out[size_t(b)].back();
      chunks.push_back(SeqChunk{b, 1, &last[size_t(b)]});
      chunk_seq.push_back(b);
    }
    if (chunks.empty()) break;
    decoder_.forward(cache_, chunks.data(), chunks.size(), LogitsMode::kLast, logits_.data());
    st.decode_tokens += int64_t(chunks.size());
    for (size_t i = 0; i < chunks.size(); ++i) emit(chunk_seq[i], logits_.data() + int64_t(i) * V);
  }
  st.decode_seconds = seconds_since(t0);
  if (stats) *stats = st;
  return out;
}

}  // namespace qwen
