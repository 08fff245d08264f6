// api/chat.cpp — qwen::ChatSession (include/qwen/chat.h): the decoder with a contiguous one-sequence
// cache kept across turns, the sampler with one generator for the session, and the ChatML template.
// Each turn re-renders the whole conversation; the cached prefix it shares with the previous turn
// is kept and the rest is prefilled in chunks.
#include <algorithm>

#include "api/bridge.h"

namespace qwen::api {

struct ChatSession::Impl {
  std::shared_ptr<Model::Impl> model;  // keeps the weights alive (declared first: freed last)
  Tokenizer tok;
  ChatConfig cfg;
  int64_t ctx = 0, chunk = 0;
  std::vector<int32_t> stops;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Decoder> dec;
  std::unique_ptr<Sampler> sampler;
  Rng rng;
  SamplingParams sp;
  std::vector<float> logits;    // (V): the next token's
  std::vector<int32_t> cached;  // the tokens whose K/V are in the cache, in order
  std::vector<std::pair<std::string, std::string>> history;  // user / assistant turns

  std::vector<int32_t> render() const {
    std::vector<std::pair<std::string, std::string>> all;
    if (!cfg.system.empty()) all.emplace_back("system", cfg.system);
    all.insert(all.end(), history.begin(), history.end());
    return tok.encode(tok.apply_chat_template(all, true), true);
  }
};

ChatSession::ChatSession(const Model& model, const Tokenizer& tokenizer, const ChatConfig& config)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  const qwen::Model& m = core(model);
  const ModelConfig& c = m.config();
  s.model = model.impl();
  s.tok = tokenizer;
  s.cfg = config;
  if (tokenizer.token_to_id("<|im_start|>") < 0 || tokenizer.token_to_id("<|im_end|>") < 0)
    throw Error("ChatSession: the vocabulary has no <|im_start|> / <|im_end|> tokens; chat needs a "
                "ChatML model");
  s.ctx = config.context > 0 ? std::min(config.context, c.max_position_embeddings)
                             : std::min<int64_t>(c.max_position_embeddings, 4096);
  if (config.max_new_tokens < 1 || config.max_new_tokens >= s.ctx)
    throw Error("ChatSession: max_new_tokens must be between 1 and the context (" +
                std::to_string(s.ctx) + ") - 1");
  GenerationConfig g;
  g.max_new_tokens = config.max_new_tokens;
  g.temperature = config.temperature;
  g.top_k = config.top_k;
  g.top_p = config.top_p;
  g.min_p = config.min_p;
  g.repetition_penalty = config.repetition_penalty;
  s.sp = sampling_params(g);
  s.rng = Rng(config.seed);
  s.stops = tokenizer.stop_ids();
  for (int64_t id : c.eos_token_ids)
    if (std::find(s.stops.begin(), s.stops.end(), int32_t(id)) == s.stops.end())
      s.stops.push_back(int32_t(id));
  s.chunk = std::min<int64_t>(s.ctx, 256);
  s.cache = std::make_unique<KvCache>(c, 1, s.ctx);
  s.dec = std::make_unique<Decoder>(m, s.chunk);
  s.sampler = std::make_unique<Sampler>(c.vocab_size);
  s.logits.resize(size_t(c.vocab_size));
}

ChatSession::~ChatSession() = default;
ChatSession::ChatSession(ChatSession&&) noexcept = default;
ChatSession& ChatSession::operator=(ChatSession&&) noexcept = default;

ChatFit ChatSession::add_user_message(const std::string& text) {
  Impl& s = *impl_;
  ChatFit fit;
  s.history.emplace_back("user", text);
  std::vector<int32_t> prompt = s.render();
  while (int64_t(prompt.size()) + s.cfg.max_new_tokens > s.ctx && s.history.size() > 1) {
    s.history.erase(s.history.begin(),
                    s.history.begin() + std::ptrdiff_t(std::min<size_t>(2, s.history.size() - 1)));
    ++fit.dropped_turns;
    prompt = s.render();
  }
  if (int64_t(prompt.size()) + s.cfg.max_new_tokens > s.ctx) {
    s.history.pop_back();
    fit.fits = false;
  }
  return fit;
}

std::string ChatSession::reply(const ChatTextCallback& on_text) {
  Impl& s = *impl_;
  if (s.history.empty() || s.history.back().first != "user")
    throw Error("ChatSession::reply: the last message is not the user's; add_user_message first");
  const std::vector<int32_t> prompt = s.render();
  // Reuse the cached prefix; prefill the rest in chunks.
  size_t keep = 0;
  while (keep < s.cached.size() && keep < prompt.size() && s.cached[keep] == prompt[keep]) ++keep;
  if (keep == prompt.size()) --keep;  // at least one token to get logits from
  s.cache->set_len(0, int64_t(keep));
  s.cached.assign(prompt.begin(), prompt.begin() + std::ptrdiff_t(keep));
  for (size_t p = keep; p < prompt.size(); p += size_t(s.chunk)) {
    const int64_t n = std::min<int64_t>(s.chunk, int64_t(prompt.size() - p));
    SeqChunk ch{0, n, prompt.data() + p};
    s.dec->forward(*s.cache, &ch, 1, LogitsMode::kLast, s.logits.data());
    s.cached.insert(s.cached.end(), prompt.begin() + std::ptrdiff_t(p),
                    prompt.begin() + std::ptrdiff_t(p + size_t(n)));
  }
  StreamDecoder stream(s.tok, true);
  std::vector<int32_t> reply;
  for (int64_t i = 0; i < s.cfg.max_new_tokens; ++i) {
    const int32_t t = s.sampler->sample(s.logits.data(), s.sp, s.rng, s.cached.data(),
                                        int64_t(s.cached.size()), reply.data(), int64_t(reply.size()));
    if (std::find(s.stops.begin(), s.stops.end(), t) != s.stops.end()) break;
    reply.push_back(t);
    const std::string piece = stream.push(t);
    if (on_text) on_text(piece);
    if (int64_t(s.cached.size()) + 1 >= s.ctx) break;
    SeqChunk ch{0, 1, &t};
    s.dec->forward(*s.cache, &ch, 1, LogitsMode::kLast, s.logits.data());
    s.cached.push_back(t);
  }
  const std::string rest = stream.flush();
  if (on_text) on_text(rest);
  std::string text = s.tok.decode(reply, true);
  s.history.emplace_back("assistant", text);
  return text;
}

void ChatSession::reset() { impl_->history.clear(); }

const std::vector<std::pair<std::string, std::string>>& ChatSession::history() const {
  return impl_->history;
}

int64_t ChatSession::context() const { return impl_->ctx; }

}  // namespace qwen::api
