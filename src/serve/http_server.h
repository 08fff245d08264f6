// serve/http_server.h — the OpenAI-compatible HTTP front of the engine (cpp-httplib):
//   POST /v1/completions, POST /v1/chat/completions   (stream: true -> server-sent events)
//   GET  /v1/models, /v1/models/{id}, /health, /metrics (Prometheus text)
// Handler threads only parse, tokenize, submit to the engine and relay its output; a client that
// disconnects mid-stream cancels its request (its KV blocks are freed on the engine's next turn).
// With an API key, /v1/* needs "Authorization: Bearer KEY" (401 otherwise); /health and /metrics
// stay open. A full queue answers 429 at once.
//
// Shutdown (shutdown()): new requests get 503, in-flight ones may finish during the grace period,
// the rest are cancelled (their streams end with finish_reason "abort"), then the listener stops
// and serve() returns.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "serve/engine.h"

namespace qwen::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (see bind())
  std::string api_key;             // empty: no authentication
  std::string model_name;          // the id clients send as "model"
  int n_threads = 0;               // HTTP worker threads; 0: max_running + max_queue + 16
  size_t max_body_bytes = size_t(8) << 20;
};

class HttpServer {
 public:
  HttpServer(Engine& engine, const ServerOptions& opt);
  ~HttpServer();
  // Binds the listening socket; returns the port. Throws qwen::Error if it cannot.
  int bind();
  // Serves until shutdown() (or stop()); call after bind().
  void serve();
  // Graceful: 503 for new requests, wait up to grace for in-flight requests, cancel the rest,
  // wait for their responses to end, stop listening. Safe from any thread, once or more.
  void shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qwen::serve
