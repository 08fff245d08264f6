// apps/qwen/cmd_serve.cpp — `qwen serve`: loads a model folder (and its tokenizer when present,
// and a LoRA adapter with --adapter, attached unmerged),
// starts the continuous-batching engine and the OpenAI-compatible HTTP server, and runs until
// SIGINT/SIGTERM, then shuts down gracefully (503 for new requests, in-flight ones finish within
// --shutdown-grace seconds, the rest are cancelled) and exits 0. Uses only the public API
// (qwen::Engine and qwen::Server of qwen/engine.h).
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include "commands.h"
#include "qwen/engine.h"
#include "qwen/error.h"
#include "qwen/model.h"
#include "qwen/runtime.h"
#include "qwen/tokenizer.h"

namespace qwen::cli {

namespace fs = std::filesystem;

namespace {

int g_sig_pipe[2] = {-1, -1};

void on_signal(int sig) {  // async-signal-safe: one write()
  const int saved = errno;
  (void)!write(g_sig_pipe[1], &sig, sizeof sig);
  errno = saved;
}

struct ServeArgs {
  std::string model, adapter, dtype, host = "127.0.0.1", api_key, name, kv_mem;
  int port = 8080, threads = 0, http_threads = 0;
  int64_t max_running = 64, max_queue = 256, kv_tokens = 0, max_step_tokens = 512,
          max_model_len = 0, prefill_per_step = 32;
  int32_t block_size = 16;
  double grace_s = 10.0;
  bool no_prefix_cache = false, no_batch_invariance = false, no_prepack = false;
};

// "512M", "2GiB", "1.5G", "65536" -> bytes (K, M, G, T are binary multiples).
size_t parse_size(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  double v = 0;
  try {
    v = i ? std::stod(s.substr(0, i)) : -1;
  } catch (...) {
    v = -1;
  }
  std::string unit = s.substr(i);
  for (auto& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  double mul = 0;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") mul = 1024.0;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mul = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TB" || unit == "TIB") mul = 1024.0 * 1024 * 1024 * 1024;
  if (v <= 0 || mul == 0)
    throw Error("--kv-cache-mem '" + s + "' is not a size; write e.g. 512M, 2G or a byte count");
  return size_t(v * mul);
}

void cmd_serve(const ServeArgs& a) {
  // SIGINT/SIGTERM: a handler (any thread may receive the signal: OpenBLAS starts its threads
  // before main) writes the signal number into a pipe; the watcher thread below reads it and
  // shuts the server down gracefully.
  if (pipe(g_sig_pipe) != 0) throw Error("serve: cannot create the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  if (a.port < 0 || a.port > 65535) throw Error("--port must be in 0 .. 65535");
  set_num_threads(a.threads);
  // Loading runs on a short-lived thread: an OpenMP region there (a dtype conversion, a
  // quantised format's unpacking, a future parallel loader) leaves a libgomp thread pool on that
  // thread only, and libgomp frees it when the thread exits. On the main thread it would stay,
  // and with more pooled threads than CPUs libgomp puts the engine thread's idle workers to
  // sleep after every region (every step slower; docs/serving.md). OpenMP's thread count is per
  // thread, so --threads is applied there too.
  std::optional<Model> loaded;
  std::optional<Tokenizer> tok;
  std::exception_ptr load_error;
  std::thread([&] {
    try {
      set_num_threads(a.threads);
      loaded.emplace(a.dtype.empty() ? Model::load(a.model)
                                     : Model::load(a.model, parse_float_dtype(a.dtype)));
      // A LoRA adapter runs unmerged; attached before the engine builds its decoder.
      if (!a.adapter.empty()) loaded->load_adapter(a.adapter);
      tok = model_tokenizer(a.model);  // tokenizer.json, or the GGUF file's own
    } catch (...) {
      load_error = std::current_exception();
    }
  }).join();
  if (load_error) std::rethrow_exception(load_error);
  Model& model = *loaded;
  if (tok) {
    if (tok->vocab_size() > model.config().vocab_size)
      throw Error("the tokenizer in '" + a.model + "' has " + std::to_string(tok->vocab_size()) +
                  " tokens but the model's vocab_size is " +
                  std::to_string(model.config().vocab_size) + "; they do not belong together");
  }

  EngineConfig ec;
  ec.max_running = a.max_running;
  ec.max_queue = a.max_queue;
  ec.max_step_tokens = a.max_step_tokens;
  ec.prefill_per_step = a.prefill_per_step;
  ec.block_size = a.block_size;
  ec.max_model_len = a.max_model_len;
  ec.prefix_caching = !a.no_prefix_cache;
  ec.batch_invariant = !a.no_batch_invariance;
  ec.prepack_weights = !a.no_prepack;
  if (a.kv_tokens > 0) ec.kv_cache_tokens = a.kv_tokens;
  else if (!a.kv_mem.empty()) ec.kv_cache_bytes = parse_size(a.kv_mem);

  std::unique_ptr<Engine> engine =
      tok ? std::make_unique<Engine>(model, *tok, ec) : std::make_unique<Engine>(model, ec);
  ServerConfig so;
  so.host = a.host;
  so.port = a.port;
  so.api_key = a.api_key;
  so.http_threads = a.http_threads;
  so.model_name = a.name;
  if (so.model_name.empty()) {
    fs::path p = fs::path(a.model);
    if (!p.has_filename()) p = p.parent_path();
    so.model_name = p.filename().string();
  }
  Server server(*engine, so);
  const int port = server.bind();
  engine->start();

  const ModelConfig& c = model.config();
  const EngineConfig rc = engine->config();
  std::printf("qwen serve: model '%s' (%s, %.1fM parameters, %s%s), tokenizer: %s\n",
              so.model_name.c_str(), c.architecture.c_str(), model.num_parameters() / 1e6,
              model.matrix_dtype_name().c_str(),
              model.has_adapter() ? (", LoRA adapter " + a.adapter + " r " + std::to_string(model.adapter_info().config.rank)).c_str() : "",
              tok ? "yes" : "no (token-id prompts only)");
  std::printf("qwen serve: KV cache %d blocks of %d tokens (%.1f MiB), context %lld, "
              "max running %lld, queue %lld, step budget %lld tokens (prefill %lld while "
              "decoding)\n",
              int(rc.kv_cache_tokens / rc.block_size), rc.block_size,
              double(rc.kv_cache_bytes) / (1 << 20),
              (long long)engine->max_model_len(), (long long)rc.max_running,
              (long long)rc.max_queue, (long long)rc.max_step_tokens,
              (long long)rc.prefill_per_step);
  std::printf("qwen serve: listening on http://%s:%d%s\n", a.host.c_str(), port,
              a.api_key.empty() ? "" : " (API key required)");
  std::fflush(stdout);

  std::thread sig_thread([&] {
    int sig = 0;
    while (read(g_sig_pipe[0], &sig, sizeof sig) < 0 && errno == EINTR) {
    }
    if (sig == SIGINT || sig == SIGTERM) {
      std::fprintf(stderr, "qwen serve: %s received, shutting down\n",
                   sig == SIGINT ? "SIGINT" : "SIGTERM");
      server.shutdown(std::chrono::milliseconds(int64_t(a.grace_s * 1000)));
    }
  });
  server.serve();
  // serve() returned: after a signal the watcher is done; otherwise wake it up.
  const int wake = 0;
  (void)!write(g_sig_pipe[1], &wake, sizeof wake);
  sig_thread.join();
  engine->stop(false);
  std::fprintf(stderr, "qwen serve: stopped\n");
}

}  // namespace

void add_serve_commands(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  c->add_option("--model", a->model, "Hugging Face model folder (config.json + safetensors [+ tokenizer.json])")->required();
  c->add_option("--adapter", a->adapter, "LoRA adapter folder (PEFT format), applied unmerged");
  c->add_option("--host", a->host, "address to bind (default 127.0.0.1: this machine only)");
  c->add_option("--port", a->port, "port (default 8080; 0 = any free port, printed at start)");
  c->add_option("--api-key", a->api_key, "require 'Authorization: Bearer KEY' on /v1/*")->envname("QWEN_API_KEY");
  c->add_option("--served-model-name", a->name, "model id clients send (default: the folder name)");
  c->add_option("--max-running", a->max_running, "sequences computed together (default 64)");
  c->add_option("--max-queue", a->max_queue, "requests waiting beyond that before 429 (default 256)");
  c->add_option("--kv-cache-mem", a->kv_mem, "memory for the paged KV cache, e.g. 512M, 2G (default 512M)");
  c->add_option("--kv-cache-tokens", a->kv_tokens, "size the KV cache by tokens instead of memory");
  c->add_option("--block-size", a->block_size, "tokens per KV block (default 16)");
  c->add_option("--max-step-tokens", a->max_step_tokens, "token budget of one engine step (default 512)");
  c->add_option("--prefill-per-step", a->prefill_per_step,
                "while others decode, prompt tokens per step are at most max(this, decoding "
                "requests): steadier inter-token latency, slower first tokens (default 32; 0 = off)");
  c->add_option("--max-model-len", a->max_model_len, "longest sequence, prompt + output (default: the model's)");
  c->add_option("--dtype", a->dtype, "convert weight matrices on load: f32, bf16 or f16");
  c->add_option("--threads", a->threads, "threads for the kernels (default: all cores)");
  c->add_option("--http-threads", a->http_threads, "HTTP worker threads (default: max-running + max-queue + 16)");
  c->add_option("--shutdown-grace", a->grace_s, "seconds in-flight requests may take to finish on SIGTERM (default 10)");
  c->add_flag("--no-prefix-caching", a->no_prefix_cache, "do not share the KV blocks of common prompt prefixes");
  c->add_flag("--no-batch-invariance", a->no_batch_invariance,
              "let a lone sequence use the 1-row kernels (faster alone, but its output may differ "
              "in the last bits from the same request in a batch)");
  c->add_flag("--no-prepack", a->no_prepack,
              "do not keep a packed copy of the weights (saves about the weights' size in memory; "
              "decode steps get slower)");
  c->callback([a] { cmd_serve(*a); });
}

}  // namespace qwen::cli
