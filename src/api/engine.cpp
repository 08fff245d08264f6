// api/engine.cpp — qwen::Engine, qwen::Request and qwen::Server (include/qwen/engine.h) over the
// serving engine (src/serve/engine.h) and its OpenAI HTTP front (src/serve/http_server.h).
#include <algorithm>

#include "api/bridge.h"

namespace qwen::api {

struct Request::Impl {
  std::shared_ptr<serve::RequestHandle> h;
};

struct Engine::Impl {
  std::shared_ptr<Model::Impl> model;  // keeps the weights alive (declared first: freed last)
  bool has_tok = false;
  Tokenizer tok;
  std::unique_ptr<serve::Engine> engine;
};

struct Server::Impl {
  std::unique_ptr<serve::HttpServer> server;
};

namespace {

Completion to_completion(serve::RequestOutput&& o) {
  Completion c;
  c.tokens = std::move(o.tokens);
  c.text = std::move(o.text);
  c.finished = o.finished;
  c.finish_reason = serve::finish_reason_name(o.reason);
  c.prompt_tokens = o.prompt_tokens;
  c.completion_tokens = o.completion_tokens;
  c.cached_tokens = o.cached_tokens;
  return c;
}

serve::EngineConfig engine_config(const EngineConfig& c) {
  serve::EngineConfig e;
  e.max_running = c.max_running;
  e.max_queue = c.max_queue;
  e.max_step_tokens = c.max_step_tokens;
  e.prefill_per_step = c.prefill_per_step;
  e.kv_cache_bytes = c.kv_cache_bytes;
  e.block_size = c.block_size;
  if (c.kv_cache_tokens > 0 && c.block_size > 0)  // (a bad block_size is refused by the engine)
    e.n_blocks = int32_t((c.kv_cache_tokens + c.block_size - 1) / c.block_size);
  e.max_model_len = c.max_model_len;
  e.prefix_caching = c.prefix_caching;
  e.batch_invariant = c.batch_invariant;
  e.prepack_weights = c.prepack_weights;
  return e;
}

}  // namespace

Request::Request(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
int64_t Request::id() const { return impl_->h->id(); }
bool Request::finished() const { return impl_->h->finished(); }
void Request::cancel() { impl_->h->cancel(); }
Completion Request::wait() { return to_completion(impl_->h->wait()); }

bool Request::next(Completion* out, std::chrono::milliseconds timeout) {
  serve::RequestOutput delta;
  if (!impl_->h->next(&delta, timeout)) return false;
  Completion d = to_completion(std::move(delta));
  out->tokens.insert(out->tokens.end(), d.tokens.begin(), d.tokens.end());
  out->text += d.text;
  out->finished = d.finished;
  out->finish_reason = d.finish_reason;
  out->prompt_tokens = d.prompt_tokens;
  out->completion_tokens = d.completion_tokens;
  out->cached_tokens = d.cached_tokens;
  return true;
}

Engine::Engine(const Model& model, const EngineConfig& config) : impl_(std::make_unique<Impl>()) {
  impl_->model = model.impl();
  impl_->engine = std::make_unique<serve::Engine>(core(model), nullptr, engine_config(config));
}

Engine::Engine(const Model& model, const Tokenizer& tokenizer, const EngineConfig& config)
    : impl_(std::make_unique<Impl>()) {
  impl_->model = model.impl();
  impl_->has_tok = true;
  impl_->tok = tokenizer;
  impl_->engine = std::make_unique<serve::Engine>(core(model), &impl_->tok, engine_config(config));
}

Engine::~Engine() {
  if (impl_ && impl_->engine) impl_->engine->stop(false);
}

void Engine::start() { impl_->engine->start(); }
void Engine::stop(bool drain, std::chrono::milliseconds timeout) { impl_->engine->stop(drain, timeout); }
int64_t Engine::active_requests() const { return impl_->engine->n_active(); }
int64_t Engine::max_model_len() const { return impl_->engine->max_model_len(); }

EngineConfig Engine::config() const {
  const serve::EngineConfig& e = impl_->engine->config();
  EngineConfig c;
  c.max_running = e.max_running;
  c.max_queue = e.max_queue;
  c.max_step_tokens = e.max_step_tokens;
  c.prefill_per_step = e.prefill_per_step;
  c.kv_cache_tokens = int64_t(e.n_blocks) * e.block_size;
  c.kv_cache_bytes = serve::PagedKvCache::block_bytes(impl_->model->m->config(), e.block_size) *
                     size_t(e.n_blocks);
  c.block_size = e.block_size;
  c.max_model_len = impl_->engine->max_model_len();
  c.prefix_caching = e.prefix_caching;
  c.batch_invariant = e.batch_invariant;
  c.prepack_weights = e.prepack_weights;
  return c;
}

Request Engine::submit(const std::vector<int32_t>& prompt, const GenerationConfig& config) {
  Impl& s = *impl_;
  if (!config.stop.empty() && !s.has_tok)
    throw Error("Engine::submit: stop strings need a tokenizer; use stop_ids without one");
  serve::GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = config.max_new_tokens;
  r.sampling = sampling_params(config);
  r.stop_ids = config.stop_ids;
  if (config.stop_at_eos) {
    auto add = [&](int32_t id) {
      if (std::find(r.stop_ids.begin(), r.stop_ids.end(), id) == r.stop_ids.end())
        r.stop_ids.push_back(id);
    };
    for (int64_t id : s.model->m->config().eos_token_ids) add(int32_t(id));
    if (s.has_tok)
      for (int32_t id : s.tok.stop_ids()) add(id);
  }
  r.stop = config.stop;
  r.want_text = s.has_tok;
  return Request(std::make_shared<Request::Impl>(Request::Impl{s.engine->submit(std::move(r))}));
}

Request Engine::submit(const std::string& prompt, const GenerationConfig& config) {
  if (!impl_->has_tok)
    throw Error("Engine::submit: a text prompt needs a tokenizer; construct the Engine with one "
                "or pass token ids");
  return submit(impl_->tok.encode(prompt, true), config);
}

Server::Server(Engine& engine, const ServerConfig& config) : impl_(std::make_unique<Impl>()) {
  serve::ServerOptions o;
  o.host = config.host;
  o.port = config.port;
  o.api_key = config.api_key;
  o.model_name = config.model_name;
  o.n_threads = config.http_threads;
  impl_->server = std::make_unique<serve::HttpServer>(*engine.impl().engine, o);
}

Server::~Server() = default;
int Server::bind() { return impl_->server->bind(); }
void Server::serve() { impl_->server->serve(); }
void Server::shutdown(std::chrono::milliseconds grace) { impl_->server->shutdown(grace); }

}  // namespace qwen::api
