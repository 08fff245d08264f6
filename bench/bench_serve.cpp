// bench/bench_serve.cpp — latency/throughput benchmark and bounded load test of `qwen serve`,
// over loopback HTTP with streaming clients, as a user would see it.
//
// It starts `qwen serve` itself (a free port, read from its stdout) unless --port names a running
// server, then for each concurrency level C keeps C clients busy, each sending streaming
// completions (distinct random token-id prompts, greedy, ignore_eos, so every request generates
// exactly --max-tokens tokens) and measuring on the client side:
//   aggregate generated tokens/s (all tokens / wall time of the level),
//   time to first token (request sent -> first token event), p50 / p99,
//   inter-token latency (between consecutive token events of a request), p50 / p99.
// --load-test SECONDS: 64 clients for that long; checks zero errors, no RSS growth of the server
// between the end of a warm-up and the end of the run, and all KV blocks free afterwards; prints
// PASS or FAIL and exits 1 on FAIL.
//
//   bench_serve --qwen build/bin/qwen --model DIR [--levels 1,4,16,64] [--prompt-tokens 64]
//               [--max-tokens 64] [--requests 2] [--server-args "--max-running 64"]
//   bench_serve --qwen build/bin/qwen --model DIR --load-test 180
//
// --steps 1,2,16,48 [--reps 3] [--step-reps 200]: no server; the model is loaded in this process
// and a decoder step of R one-token decodes at position 64 on the paged cache is timed (p50 and
// p10 of all steps), with raw weights and with pre-packed ones (EngineConfig::prepack_weights),
// interleaved rep by rep; --packed-only: packed alone (e.g. under perf). (A lone stream with raw
// weights runs 2 rows: the companion row.)
#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <omp.h>

#include <numeric>

#include "model/decoder.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/paged_cache.h"

namespace {

using json = nlohmann::json;


using Clock = std::chrono::steady_clock;

double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// --steps: decoder steps on the paged cache, raw vs pre-packed weights (see the top).
int run_steps(const std::string& dir, const std::vector<int64_t>& rows, int reps, int step_reps,
              bool packed_only) {
  using namespace qwen;
  auto m = Model::load(dir);
  const ModelConfig& c = m->config();
  std::printf("# in-process, model %s (%lld layers, hidden %lld, vocab %lld, %s), %d threads\n",
              dir.c_str(), (long long)c.num_hidden_layers, (long long)c.hidden_size,
              (long long)c.vocab_size, dtype_name(m->matrix_dtype()), omp_get_max_threads());
  const int64_t max_rows = *std::max_element(rows.begin(), rows.end());
  const int32_t per = 8;  // blocks of 16 per sequence: 128 positions
  std::vector<int32_t> table(size_t(max_rows * per));
  std::iota(table.begin(), table.end(), 0);
  std::vector<int32_t> toks(size_t(max_rows), 7);
  std::vector<float> logits(size_t(max_rows * c.vocab_size));
  std::printf("| step rows | raw p50 ms | raw p10 ms | packed p50 ms | packed p10 ms |\n|---|---|---|---|---|\n");
  for (int64_t R : rows) {
    std::vector<double> t[2];
    for (int r = 0; r < reps; ++r)
      for (int packed = packed_only ? 1 : 0; packed < 2; ++packed) {
        serve::EngineConfig ec;  // only for its packing: the engine is not started
        ec.prepack_weights = packed == 1;
        ec.max_running = 1;
        ec.n_blocks = 1;
        serve::Engine holder(*m, nullptr, ec);
        serve::PagedKvCache cache(c, int32_t(max_rows * per), 16, max_rows);
        Decoder dec(*m, max_rows);
        std::vector<SeqChunk> ch;
        for (int64_t i = 0; i < R; ++i) ch.push_back(SeqChunk{i, 1, &toks[size_t(i)]});
        for (int s = 0; s < step_reps + 5; ++s) {
          for (int64_t i = 0; i < R; ++i) cache.bind(i, table.data() + i * per, per, 64);
          const auto t0 = Clock::now();
          dec.forward(cache, ch.data(), ch.size(), LogitsMode::kLast, logits.data());
          if (s >= 5) t[packed].push_back(secs(t0, Clock::now()));
        }
      }
    auto pct = [](std::vector<double> v, double q) {
      std::sort(v.begin(), v.end());
      return v[size_t(q * double(v.size() - 1))] * 1e3;
    };
    if (packed_only) t[0] = {0.0};
    std::printf("| %lld | %.3f | %.3f | %.3f | %.3f |\n", (long long)R, pct(t[0], 0.5),
                pct(t[0], 0.1), pct(t[1], 0.5), pct(t[1], 0.1));
  }
  return 0;
}

struct Options {
  std::string qwen = "build/bin/qwen", model, server_args, levels = "1,4,16,64";
  int port = 0;
  int64_t prompt_tokens = 64, max_tokens = 64, requests = 2, vocab = 0;
  double load_test = 0;
};

// The port in the server's "listening on http://127.0.0.1:PORT" line, or 0.
int listening_port(const std::string& out) {
  const std::string key = "listening on http://127.0.0.1:";
  const size_t p = out.find(key);
  if (p == std::string::npos) return 0;
  size_t e = p + key.size();
  while (e < out.size() && std::isdigit(static_cast<unsigned char>(out[e]))) ++e;
  if (e == out.size() || e == p + key.size()) return 0;  // the line is not complete yet
  return std::stoi(out.substr(p + key.size(), e - p - key.size()));
}

// A `qwen serve` child.
struct ServerProc {
  pid_t pid = -1;
  int port = 0;
  bool start(const Options& o) {
    int fds[2];
    if (pipe(fds) != 0) return false;
    std::vector<std::string> args = {o.qwen, "serve", "--model", o.model, "--port", "0",
                                     "--served-model-name", "bench"};
    std::istringstream ss(o.server_args);
    for (std::string t; ss >> t;) args.push_back(t);
    pid = fork();
    if (pid == 0) {
      dup2(fds[1], 1);
      close(fds[0]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(o.qwen.c_str(), argv.data());
      _exit(127);
    }
    close(fds[1]);
    std::string out;
    const auto deadline = Clock::now() + std::chrono::seconds(120);
    while (Clock::now() < deadline) {
      pollfd p{fds[0], POLLIN, 0};
      if (poll(&p, 1, 200) <= 0) continue;
      char buf[512];
      const ssize_t n = read(fds[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, size_t(n));
      if ((port = listening_port(out)) > 0) break;
    }
    close(fds[0]);
    std::fputs(out.c_str(), stdout);
    return port > 0;
  }
  int stop() {
    if (pid <= 0) return -1;
    kill(pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 3000; ++i) {
      if (waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    pid = -1;
    return -1;
  }
  ~ServerProc() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

size_t rss_bytes(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return size_t(std::stoll(line.substr(6))) * 1024;
  return 0;
}

// The 1-minute load average: the machine is shared, so every report says how busy it was.
std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a;
  f >> a;
  return a;
}

double metric(const std::string& text, const std::string& name) {
  std::istringstream ss(text);
  std::string line;
  while (std::getline(ss, line))
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  return -1;
}

struct Stats {
  std::mutex mu;
  std::vector<double> ttft, itl;
  int64_t tokens = 0, requests = 0, errors = 0;
  std::string first_error;
  void error(const std::string& e) {
    std::lock_guard<std::mutex> lk(mu);
    if (errors++ == 0) first_error = e;
  }
};

// One streaming completion; records its latencies into st.
void one_request(httplib::Client& cli, const Options& o, std::mt19937& rng, Stats& st) {
  json body = {{"model", "bench"}, {"max_tokens", o.max_tokens}, {"temperature", 0},
               {"ignore_eos", true}, {"stream", true}, {"return_token_ids", true}};
  std::vector<int64_t> prompt(size_t(o.prompt_tokens));
  for (auto& t : prompt) t = int64_t(rng() % uint64_t(o.vocab));
  body["prompt"] = prompt;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  std::string buf;
  std::vector<double> itl;
  double ttft = -1;
  int64_t n_tokens = 0;
  bool done = false, bad = false;
  const auto t0 = Clock::now();
  auto last = t0;
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    buf.append(data, len);
    size_t pos;
    while ((pos = buf.find("\n\n")) != std::string::npos) {
      const std::string ev = buf.substr(0, pos);
      buf.erase(0, pos + 2);
      if (ev.rfind("data: ", 0) != 0) continue;
      if (ev == "data: [DONE]") {
        done = true;
        continue;
      }
      const auto now = Clock::now();
      json j = json::parse(ev.substr(6), nullptr, false);
      if (j.is_discarded() || !j.contains("choices") || j["choices"].empty()) continue;
      const size_t n = j["choices"][0].value("token_ids", json::array()).size();
      if (n == 0) continue;
      if (ttft < 0) ttft = secs(t0, now);
      else itl.push_back(secs(last, now));
      last = now;
      n_tokens += int64_t(n);
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err;
  if (!cli.send(req, res, err)) {
    st.error("transport error " + httplib::to_string(err));
    return;
  }
  if (res.status != 200) bad = true;
  if (bad || !done || n_tokens != o.max_tokens) {
    st.error("status " + std::to_string(res.status) + ", done " + std::to_string(done) + ", tokens " +
             std::to_string(n_tokens) + " " + res.body.substr(0, 200));
    return;
  }
  std::lock_guard<std::mutex> lk(st.mu);
  st.ttft.push_back(ttft);
  st.itl.insert(st.itl.end(), itl.begin(), itl.end());
  st.tokens += n_tokens;
  ++st.requests;
}

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = q * double(v.size() - 1);
  const size_t lo = size_t(idx);
  const size_t hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - double(lo));
}

// C clients; each does `per_client` requests, or loops until `until` when given.
void run_level(const Options& o, int port, int C, int64_t per_client, Clock::time_point until,
               Stats& st, double* wall) {
  std::vector<std::thread> th;
  const auto t0 = Clock::now();
  for (int c = 0; c < C; ++c)
    th.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", port);
      cli.set_read_timeout(600, 0);
      cli.set_keep_alive(true);
      // As curl and most HTTP clients do: without it the request body waits behind its headers
      // for the server's delayed ACK (40 ms), which would show as time to first token.
      cli.set_tcp_nodelay(true);
      std::mt19937 rng(uint32_t(1000 + c));
      for (int64_t i = 0; until != Clock::time_point{} ? Clock::now() < until : i < per_client; ++i)
        one_request(cli, o, rng, st);
    });
  for (auto& t : th) t.join();
  *wall = secs(t0, Clock::now());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string steps;
  bool packed_only = false;
  int step_reps = 200, reps = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--qwen") o.qwen = next();
    else if (a == "--model") o.model = next();
    else if (a == "--server-args") o.server_args = next();
    else if (a == "--levels") o.levels = next();
    else if (a == "--port") o.port = std::stoi(next());
    else if (a == "--prompt-tokens") o.prompt_tokens = std::stoll(next());
    else if (a == "--max-tokens") o.max_tokens = std::stoll(next());
    else if (a == "--requests") o.requests = std::stoll(next());
    else if (a == "--load-test") o.load_test = std::stod(next());
    else if (a == "--steps") steps = next();
    else if (a == "--packed-only") packed_only = true;
    else if (a == "--step-reps") step_reps = std::stoi(next());
    else if (a == "--reps") reps = std::stoi(next());
    else {
      std::fprintf(stderr, "unknown argument %s (see the comment at the top of bench/bench_serve.cpp)\n", a.c_str());
      return 2;
    }
  }
  if (!steps.empty()) {
    if (o.model.empty()) {
      std::fprintf(stderr, "--steps needs --model DIR\n");
      return 2;
    }
    std::vector<int64_t> rows;
    std::stringstream ss(steps);
    for (std::string item; std::getline(ss, item, ',');) rows.push_back(std::stoll(item));
    if (rows.empty() || *std::min_element(rows.begin(), rows.end()) < 1 || reps < 1 ||
        step_reps < 1) {
      std::fprintf(stderr, "--steps wants row counts >= 1, --reps and --step-reps >= 1\n");
      return 2;
    }
    try {
      return run_steps(o.model, rows, reps, step_reps, packed_only);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_serve: %s\n", e.what());
      return 1;
    }
  }
  if (o.model.empty() && o.port == 0) {
    std::fprintf(stderr, "give --model DIR (a server is started) or --port P (a running server)\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  ServerProc server;
  int port = o.port;
  if (port == 0) {
    if (!server.start(o)) {
      std::fprintf(stderr, "qwen serve did not start\n");
      return 1;
    }
    port = server.port;
  }
  httplib::Client admin("127.0.0.1", port);
  admin.set_read_timeout(60, 0);
  auto models = admin.Get("/v1/models");
  if (!models || models->status != 200) {
    std::fprintf(stderr, "GET /v1/models failed\n");
    return 1;
  }
  // Token ids for prompts: below the model's vocabulary (read from its config.json).
  o.vocab = 1000;
  if (!o.model.empty()) {
    std::ifstream f(o.model + "/config.json");
    json cfg = json::parse(f, nullptr, false);
    if (!cfg.is_discarded() && cfg.contains("vocab_size")) o.vocab = std::min<int64_t>(cfg["vocab_size"].get<int64_t>(), 151643);
  }
  std::printf("# bench_serve: prompt %lld tokens, %lld generated per request, greedy, streaming, "
              "loopback, %u hardware threads, load average %s\n",
              (long long)o.prompt_tokens, (long long)o.max_tokens, std::thread::hardware_concurrency(),
              loadavg().c_str());

  if (o.load_test > 0) {
    const int C = 64;
    Stats warm;
    double wall = 0;
    run_level(o, port, C, 1, {}, warm, &wall);  // warm-up: one request per client
    const size_t rss0 = server.pid > 0 ? rss_bytes(server.pid) : 0;
    std::printf("warm-up: %lld requests, %lld errors, %.1f s; server RSS %.1f MiB\n",
                (long long)warm.requests, (long long)warm.errors, wall, rss0 / 1048576.0);
    Stats st;
    const auto until = Clock::now() + std::chrono::milliseconds(int64_t(o.load_test * 1000));
    std::atomic<bool> sampling{true};
    std::thread sampler([&] {
      while (sampling) {
        for (int i = 0; i < 100 && sampling; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (sampling && server.pid > 0)
          std::printf("  t+%.0fs: server RSS %.1f MiB\n", o.load_test - secs(Clock::now(), until),
                      rss_bytes(server.pid) / 1048576.0), std::fflush(stdout);
      }
    });
    run_level(o, port, C, 0, until, st, &wall);
    sampling = false;
    sampler.join();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const size_t rss1 = server.pid > 0 ? rss_bytes(server.pid) : 0;
    auto m = admin.Get("/metrics");
    const double used = m ? metric(m->body, "qwen_kv_blocks_used") : -1;
    const double running = m ? metric(m->body, "qwen_requests_running") : -1;
    const double waiting = m ? metric(m->body, "qwen_requests_waiting") : -1;
    const double growth = double(rss1) - double(rss0);
    std::printf("load test: 64 streaming clients for %.0f s: %lld requests, %lld tokens (%.1f tok/s), "
                "%lld errors%s%s\n", wall, (long long)st.requests, (long long)st.tokens,
                st.tokens / wall, (long long)st.errors, st.errors ? ", first: " : "",
                st.first_error.c_str());
    std::printf("server RSS after warm-up %.1f MiB, after the run %.1f MiB (growth %.1f MiB); "
                "KV blocks used %g, running %g, waiting %g\n", rss0 / 1048576.0, rss1 / 1048576.0,
                growth / 1048576.0, used, running, waiting);
    // A leak of one allocation per request would show as MiBs over thousands of requests;
    // allow 4 MiB of allocator noise.
    const bool pass = st.errors == 0 && warm.errors == 0 && st.requests > 0 && used == 0 &&
                      running == 0 && waiting == 0 && (server.pid <= 0 || growth < 4.0 * 1048576);
    std::printf("%s (load average at the end: %s)\n", pass ? "PASS" : "FAIL", loadavg().c_str());
    if (server.pid > 0) std::printf("server exit status after SIGTERM: %d\n", server.stop());
    return pass ? 0 : 1;
  }

  std::printf("| streams | requests | tokens | wall s | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  std::istringstream ls(o.levels);
  int64_t total_errors = 0;
  double tput_1 = 0, tput_16 = 0, itl99_1 = 0, itl99_16 = 0;  // for issue 7's two ratios
  for (std::string tok; std::getline(ls, tok, ',');) {
    const int C = std::stoi(tok);
    Stats st;
    double wall = 0;
    const int64_t per = std::max<int64_t>(o.requests, (8 + C - 1) / C);
    run_level(o, port, C, per, {}, st, &wall);
    total_errors += st.errors;
    std::printf("| %d | %lld | %lld | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %lld |\n", C,
                (long long)st.requests, (long long)st.tokens, wall, st.tokens / wall,
                pct(st.ttft, 0.5) * 1e3, pct(st.ttft, 0.99) * 1e3, pct(st.itl, 0.5) * 1e3,
                pct(st.itl, 0.99) * 1e3, (long long)st.errors);
    if (st.errors) std::printf("first error: %s\n", st.first_error.c_str());
    if (C == 1) tput_1 = st.tokens / wall, itl99_1 = pct(st.itl, 0.99);
    if (C == 16) tput_16 = st.tokens / wall, itl99_16 = pct(st.itl, 0.99);
    std::fflush(stdout);
  }
  // The serving targets compare 16 streams with one (aggregate tok/s >= 6x, p99 inter-token
  // latency <= 3x): printed when both levels ran.
  if (tput_1 > 0 && tput_16 > 0 && itl99_1 > 0)
    std::printf("# 16 streams / 1: aggregate tok/s %.2fx (target >= 6x), p99 inter-token latency "
                "%.2fx (target <= 3x)\n", tput_16 / tput_1, itl99_16 / itl99_1);
  std::printf("# load average at the end: %s\n", loadavg().c_str());
  if (server.pid > 0) server.stop();
  return total_errors ? 1 : 0;
}
