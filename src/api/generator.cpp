// api/generator.cpp — qwen::Generator (include/qwen/generator.h) over the internal batched
// generator (src/generate): one sequence per call, the KV cache grown on demand, stop strings
// matched on the streamed text (the part that may still become a stop string is held back).
#include <algorithm>
#include <cmath>

#include "api/bridge.h"

namespace qwen::api {

SamplingParams sampling_params(const GenerationConfig& g) {
  if (g.max_new_tokens < 1)
    throw Error("GenerationConfig: max_new_tokens is " + std::to_string(g.max_new_tokens) +
                "; it must be at least 1");
  if (!(g.temperature >= 0) || !std::isfinite(g.temperature))
    throw Error("GenerationConfig: temperature must be >= 0 (0 = greedy)");
  if (g.top_k < 0) throw Error("GenerationConfig: top_k must be >= 0 (0 = off)");
  if (!(g.top_p > 0 && g.top_p <= 1)) throw Error("GenerationConfig: top_p must be in (0, 1]");
  if (!(g.min_p >= 0 && g.min_p <= 1)) throw Error("GenerationConfig: min_p must be in [0, 1]");
  if (!(g.repetition_penalty > 0))
    throw Error("GenerationConfig: repetition_penalty must be > 0 (1 = off)");
  SamplingParams p;
  p.temperature = g.temperature;
  p.top_k = g.top_k;
  p.top_p = g.top_p;
  p.min_p = g.min_p;
  p.repetition_penalty = g.repetition_penalty;
  p.seed = g.seed;
  return p;
}

struct Generator::Impl {
  std::shared_ptr<Model::Impl> model;  // keeps the weights alive
  bool has_tok = false;
  Tokenizer tok;
  std::unique_ptr<qwen::Generator> gen;
  int64_t context = 0;
};

Generator::Generator(const Model& model) : impl_(std::make_unique<Impl>()) {
  core(model);
  impl_->model = model.impl();
}

Generator::Generator(const Model& model, const Tokenizer& tokenizer) : Generator(model) {
  impl_->has_tok = true;
  impl_->tok = tokenizer;
}

Generator::~Generator() = default;
Generator::Generator(Generator&&) noexcept = default;
Generator& Generator::operator=(Generator&&) noexcept = default;

size_t Generator::kv_cache_bytes() const { return impl_->gen ? impl_->gen->kv_cache_bytes() : 0; }

GenerationResult Generator::generate(const std::string& prompt, const GenerationConfig& config,
                                     const StreamCallback& on_token) {
  if (!impl_->has_tok)
    throw Error("Generator::generate: a text prompt needs a tokenizer; construct the Generator "
                "with one or pass token ids");
  return generate(impl_->tok.encode(prompt, true), config, on_token);
}

GenerationResult Generator::generate(const std::vector<int32_t>& prompt,
                                     const GenerationConfig& config,
                                     const StreamCallback& on_token) {
  Impl& s = *impl_;
  const qwen::Model& m = *s.model->m;
  const ModelConfig& mc = m.config();
  qwen::GenerationConfig g;
  g.sampling = sampling_params(config);
  g.max_new_tokens = config.max_new_tokens;
  g.stop_ids = config.stop_ids;
  if (config.stop_at_eos) {
    for (int64_t id : mc.eos_token_ids) g.stop_ids.push_back(int32_t(id));
    if (s.has_tok)
      for (int32_t id : s.tok.stop_ids()) g.stop_ids.push_back(id);
  }
  if (!config.stop.empty() && !s.has_tok)
    throw Error("GenerationConfig: stop strings need a tokenizer; use stop_ids without one");
  for (const std::string& st : config.stop)
    if (st.empty()) throw Error("GenerationConfig: a stop string is empty");

  const int64_t need = int64_t(prompt.size()) + config.max_new_tokens;
  const bool dynamic_rope = mc.rope_scaling.type == "dynamic";  // extends beyond the context
  if (need > mc.max_position_embeddings && !dynamic_rope)
    throw Error("prompt of " + std::to_string(prompt.size()) + " tokens plus max_new_tokens " +
                std::to_string(config.max_new_tokens) + " exceeds max_position_embeddings " +
                std::to_string(mc.max_position_embeddings) + "; shorten one of them");
  if (!s.gen || need > s.context) {
    s.gen.reset();
    s.context = std::max<int64_t>(need, std::min<int64_t>(2 * s.context, mc.max_position_embeddings));
    s.gen = std::make_unique<qwen::Generator>(m, 1, s.context, 512);
  }

  GenerationResult r;
  r.prompt_tokens = int64_t(prompt.size());
  r.finish_reason = "length";
  std::unique_ptr<StreamDecoder> dec;
  if (s.has_tok) dec = std::make_unique<StreamDecoder>(s.tok, true);
  size_t max_stop = 0;
  for (const auto& st : config.stop) max_stop = std::max(max_stop, st.size());
  size_t emitted = 0;  // bytes of r.text handed to the callback
  bool user_go = true;
  // Hands r.text[emitted, end) to the callback; returns false if the user asked to stop.
  auto hand_over = [&](int32_t tok, size_t end) {
    end = std::max(end, emitted);  // (a stop string never starts in text already handed over)
    std::string_view piece(r.text.data() + emitted, end - emitted);
    emitted = end;
    if (on_token && !on_token(tok, piece)) user_go = false;
    return user_go;
  };
  // Checks the text for a stop string: cuts it there and returns true.
  auto find_stop = [&]() {
    const size_t from = emitted > max_stop ? emitted - max_stop : 0;
    size_t cut = std::string::npos;
    for (const auto& st : config.stop) cut = std::min(cut, r.text.find(st, from));
    if (cut == std::string::npos) return false;
    r.text.resize(cut);
    return true;
  };
  // Bytes at the end of the text that could still begin a stop string.
  auto held_back = [&]() {
    size_t hold = 0;
    for (const auto& st : config.stop)
      for (size_t k = std::min(st.size() - 1, r.text.size() - emitted); k > hold; --k)
        if (r.text.compare(r.text.size() - k, k, st, 0, k) == 0) {
          hold = k;
          break;
        }
    return hold;
  };
  auto cb = [&](int64_t, int32_t tok) -> bool {
    r.tokens.push_back(tok);
    if (std::find(g.stop_ids.begin(), g.stop_ids.end(), tok) != g.stop_ids.end()) {
      // The stop id's own text is not part of the output; the rest held back is.
      if (dec) r.text += dec->flush();
      r.finish_reason = "stop";
      find_stop();
      hand_over(tok, r.text.size());
      return false;
    }
    if (dec) r.text += dec->push(tok);
    if (find_stop()) {
      r.finish_reason = "stop";
      hand_over(tok, r.text.size());
      return false;
    }
    if (!hand_over(tok, r.text.size() - held_back())) {
      r.finish_reason = "cancelled";
      return false;
    }
    return true;
  };
  GenerationStats st;
  s.gen->generate({prompt}, g, cb, &st);
  if (r.finish_reason == "length" && dec) {
    r.text += dec->flush();
    if (find_stop()) r.finish_reason = "stop";
    if (emitted < r.text.size() && on_token) on_token(r.tokens.back(), std::string_view(r.text).substr(emitted));
  }
  r.prefill_tok_s = st.prefill_tok_s();
  r.decode_tok_s = st.decode_tok_s();
  return r;
}

}  // namespace qwen::api
