// serve/http_server.cpp — see http_server.h.
#include "serve/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <omp.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdlib>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "serve/openai_api.h"

namespace qwen::serve {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct HttpServer::Impl {
  Engine& engine;
  ServerOptions opt;
  httplib::Server svr;
  api::ApiContext ctx;
  int64_t started = 0;
  std::atomic<bool> draining{false};
  std::atomic<bool> stopped{false};
  std::atomic<int> inflight{0};  // generation requests being answered
  std::atomic<uint64_t> next_id{1};
  uint64_t id_salt = 0;
  std::mutex shutdown_mu;

  Impl(Engine& e, const ServerOptions& o) : engine(e), opt(o) {}

  std::string new_id(const char* prefix) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s-%016llx%08llx", prefix, (unsigned long long)id_salt,
                  (unsigned long long)next_id.fetch_add(1));
    return buf;
  }

  void send_error(httplib::Response& res, const api::ApiError& e) {
    res.status = e.status;
    res.set_content(api::error_json(e), "application/json");
  }

  void setup();
  void handle_generate(const httplib::Request& req, httplib::Response& res, bool chat);
};

namespace {

// Keeps the in-flight count up while a response is being produced.
struct Inflight {
  std::atomic<int>& n;
  explicit Inflight(std::atomic<int>& c) : n(c) { ++n; }
  ~Inflight() { --n; }
};

}  // namespace

void HttpServer::Impl::setup() {
  const ModelConfig& mc = engine.model().config();
  ctx.model_name = opt.model_name;
  ctx.tok = engine.tokenizer();
  ctx.vocab_size = mc.vocab_size;
  ctx.max_model_len = engine.max_model_len();
  for (int64_t id : mc.eos_token_ids) ctx.stop_ids.push_back(int32_t(id));
  if (ctx.tok)
    for (int32_t id : ctx.tok->stop_ids())
      if (std::find(ctx.stop_ids.begin(), ctx.stop_ids.end(), id) == ctx.stop_ids.end())
        ctx.stop_ids.push_back(id);
  started = int64_t(std::time(nullptr));
  id_salt = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32);

  const EngineConfig& ec = engine.config();
  const size_t n_threads = opt.n_threads > 0 ? size_t(opt.n_threads)
                                             : size_t(ec.max_running + ec.max_queue + 16);
  svr.new_task_queue = [n_threads] { return new httplib::ThreadPool(n_threads); };
  svr.set_payload_max_length(opt.max_body_bytes);
  // Small writes (an SSE event per token, a response right after its headers) must leave at
  // once: with Nagle's algorithm a write behind an unacknowledged one waits for the peer's
  // delayed ACK (40 ms on Linux), which shows as time to first token.
  svr.set_tcp_nodelay(true);
  svr.set_keep_alive_max_count(1000);
  svr.set_keep_alive_timeout(5);
  svr.set_read_timeout(30, 0);
  svr.set_write_timeout(30, 0);

  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // Every OpenMP region of the process runs on the engine thread. One on an HTTP thread (the
    // tokenizer cuts a text of 1 MiB or more for threads) would give that thread a libgomp
    // pool of its own that lives as long as the thread; with more pooled threads than CPUs
    // libgomp stops spinning and puts the engine's idle workers to sleep after every region,
    // which makes every step slower from then on (a lone stream 2-3x). So these threads run
    // their OpenMP code on one thread (the setting is per thread; set once per thread).
    thread_local const bool one_omp_thread = (omp_set_num_threads(1), true);
    (void)one_omp_thread;
    if (opt.api_key.empty() || req.path.rfind("/v1/", 0) != 0)
      return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    if (auth == "Bearer " + opt.api_key) return httplib::Server::HandlerResponse::Unhandled;
    api::ApiError e;
    e.status = 401;
    e.type = "invalid_request_error";
    e.code = "invalid_api_key";
    e.message = auth.empty() ? "missing API key: send the header 'Authorization: Bearer KEY'"
                             : "incorrect API key provided";
    send_error(res, e);
    return httplib::Server::HandlerResponse::Handled;
  });

  svr.set_logger([this](const httplib::Request&, const httplib::Response& res) {
    engine.metrics().http_response(res.status);
  });

  svr.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    api::ApiError e;
    e.status = res.status;
    if (res.status == 404) {
      e.message = "no route for " + req.method + " " + req.path;
      e.code = "not_found";
    } else if (res.status == 413) {
      e.message = "the request body exceeds " + std::to_string(opt.max_body_bytes) + " bytes";
    } else {
      e.message = "HTTP error " + std::to_string(res.status);
    }
    send_error(res, e);
  });

  svr.set_exception_handler([this](const httplib::Request&, httplib::Response& res,
                                   std::exception_ptr ep) {
    api::ApiError e;
    e.status = 500;
    e.type = "server_error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& ex) {
      e.message = std::string("internal error: ") + ex.what();
    } catch (...) {
      e.message = "internal error";
    }
    send_error(res, e);
  });

  svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining) {
      res.status = 503;
      res.set_content("{\"status\":\"shutting down\"}", "application/json");
      return;
    }
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });

  svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(engine.metrics().render(), "text/plain; version=0.0.4; charset=utf-8");
  });

  auto model_obj = [this] {
    return json{{"id", opt.model_name},     {"object", "model"},
                {"created", started},       {"owned_by", "qwen"},
                {"max_model_len", engine.max_model_len()}};
  };
  svr.Get("/v1/models", [model_obj](const httplib::Request&, httplib::Response& res) {
    json j = {{"object", "list"}, {"data", json::array({model_obj()})}};
    res.set_content(j.dump(), "application/json");
  });
  svr.Get(R"(/v1/models/(.+))", [this, model_obj](const httplib::Request& req,
                                                  httplib::Response& res) {
    if (req.matches[1] != opt.model_name) {
      api::ApiError e;
      e.status = 404;
      e.param = "model";
      e.code = "model_not_found";
      e.message = "the model '" + std::string(req.matches[1]) + "' does not exist";
      send_error(res, e);
      return;
    }
    res.set_content(model_obj().dump(), "application/json");
  });

  svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(req, res, false);
  });
  svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(req, res, true);
  });
}

void HttpServer::Impl::handle_generate(const httplib::Request& req, httplib::Response& res,
                                       bool chat) {
  auto guard = std::make_shared<Inflight>(inflight);
  if (draining) {
    api::ApiError e;
    e.status = 503;
    e.type = "server_error";
    e.message = "the server is shutting down; retry on another instance";
    return send_error(res, e);
  }
  auto pr = std::make_shared<api::ParsedRequest>();
  api::ApiError err;
  if (!api::parse_request(req.body, chat, ctx, pr.get(), &err)) return send_error(res, err);

  std::shared_ptr<RequestHandle> h;
  try {
    h = engine.submit(pr->gen);
  } catch (const QueueFull& e) {
    api::ApiError q;
    q.status = 429;
    q.type = "rate_limit_error";
    q.code = "queue_full";
    q.message = e.what();
    return send_error(res, q);
  } catch (const Error& e) {
    api::ApiError b;
    b.status = draining ? 503 : 400;
    b.message = e.what();
    return send_error(res, b);
  }

  const std::string id = new_id(chat ? "chatcmpl" : "cmpl");
  const int64_t created = int64_t(std::time(nullptr));
  if (!pr->stream) {
    const RequestOutput out = h->wait();
    res.set_content(api::response_json(*pr, id, created, opt.model_name, out), "application/json");
    return;
  }

  // Per-stream state, reused on every call of the content provider: a token costs one SSE
  // chunk appended to `out` and one write.
  struct StreamState {
    std::shared_ptr<RequestHandle> h;
    std::shared_ptr<api::ParsedRequest> pr;
    std::shared_ptr<Inflight> guard;
    std::string id, model;
    int64_t created = 0;
    bool sent_role = false, done = false;
    RequestOutput piece;  // what arrived since the last call
    RequestOutput total;  // counts for the usage chunk
    std::string out;      // the bytes of this call
    Clock::time_point last_write = Clock::now();
  };
  auto st = std::make_shared<StreamState>();
  st->h = h;
  st->pr = pr;
  st->guard = guard;
  st->id = id;
  st->model = opt.model_name;
  st->created = created;
  st->out.reserve(1024);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st](size_t, httplib::DataSink& sink) {
        if (st->done) return false;
        const api::ParsedRequest& pr = *st->pr;
        std::string& out = st->out;
        out.clear();
        auto event = [&](std::string_view text, const std::vector<int32_t>* tokens,
                         const char* finish, bool role_only) {
          out.append("data: ");
          api::append_chunk_json(&out, pr, st->id, st->created, st->model, text,
                                 tokens ? tokens->data() : nullptr, tokens ? tokens->size() : 0,
                                 finish, role_only);
          out.append("\n\n");
        };
        if (pr.chat && !st->sent_role) {
          event("", nullptr, nullptr, true);
          st->sent_role = true;
        }
        RequestOutput& piece = st->piece;
        piece.tokens.clear();
        piece.logprobs.clear();
        piece.text.clear();
        const bool got = st->h->next(&piece, std::chrono::milliseconds(100));
        if (got) {
          st->total.prompt_tokens = piece.prompt_tokens;
          st->total.completion_tokens = piece.completion_tokens;
          st->total.cached_tokens = piece.cached_tokens;
          if (!piece.text.empty() || (pr.return_token_ids && !piece.tokens.empty()))
            event(piece.text, &piece.tokens, nullptr, false);
          if (piece.finished) {
            event("", nullptr, api::api_finish_reason(piece.reason), false);
            if (pr.include_usage) {
              out.append("data: ");
              out.append(api::usage_chunk_json(pr, st->id, st->created, st->model, st->total));
              out.append("\n\n");
            }
            out.append("data: [DONE]\n\n");
          }
        } else if (Clock::now() - st->last_write > std::chrono::seconds(1)) {
          out.append(": keep-alive\n\n");  // an SSE comment: finds a vanished client while queued
        }
        if (!out.empty()) {
          if (!sink.write(out.data(), out.size())) {
            st->h->cancel();
            return false;
          }
          st->last_write = Clock::now();
        }
        if (got && piece.finished) {
          st->done = true;
          sink.done();
        }
        return true;
      },
      [st](bool success) {
        if (!success) st->h->cancel();  // the client went away: free its blocks now
        st->guard.reset();
      });
}

HttpServer::HttpServer(Engine& engine, const ServerOptions& opt)
    : impl_(std::make_unique<Impl>(engine, opt)) {
  impl_->setup();
}

HttpServer::~HttpServer() {
  if (!impl_->stopped) impl_->svr.stop();
}

namespace {

// cpp-httplib 0.11 listens with a backlog of 5 (compiled into Debian's library), so a burst of
// clients connecting at once overflows the accept queue and some connections stall or reset.
// Find our listening socket among the open descriptors and raise its backlog (listen() on a
// listening socket only updates the backlog).
void raise_backlog(int port) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return;
  while (dirent* e = readdir(d)) {
    const int fd = std::atoi(e->d_name);
    if (fd <= 2) continue;
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage addr{};
    socklen_t alen = sizeof addr;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) continue;
    int p = -1;
    if (addr.ss_family == AF_INET) p = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    else if (addr.ss_family == AF_INET6) p = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    if (p == port) ::listen(fd, 1024);
  }
  closedir(d);
}

}  // namespace

int HttpServer::bind() {
  int port = impl_->opt.port;
  if (port == 0) {
    port = impl_->svr.bind_to_any_port(impl_->opt.host);
    if (port < 0) port = 0;
  } else if (!impl_->svr.bind_to_port(impl_->opt.host, port)) {
    port = 0;
  }
  if (port <= 0)
    throw Error("cannot listen on " + impl_->opt.host + ":" + std::to_string(impl_->opt.port) +
                "; is the port in use or the address wrong? pick another with --port/--host");
  raise_backlog(port);
  return port;
}

void HttpServer::serve() { impl_->svr.listen_after_bind(); }

void HttpServer::shutdown(std::chrono::milliseconds grace) {
  std::lock_guard<std::mutex> lk(impl_->shutdown_mu);
  if (impl_->stopped) return;
  impl_->draining = true;
  const auto deadline = Clock::now() + grace;
  while (impl_->engine.n_active() > 0 && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  impl_->engine.stop(false);  // cancels what is left; their responses end now
  const auto t_end = Clock::now() + std::chrono::seconds(5);
  while (impl_->inflight > 0 && Clock::now() < t_end)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  impl_->svr.stop();
  impl_->stopped = true;
}

}  // namespace qwen::serve
