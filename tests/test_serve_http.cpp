// tests/test_serve_http.cpp — `qwen serve` as a real process on 127.0.0.1 (a free port chosen by
// the server, read from its stdout), with a small random-weight model that carries the Qwen3
// tokenizer: health, models, completions and chat, raw server-sent events through curl, seeds,
// batch invariance over HTTP, error statuses and bodies, the API key, a full queue (429 at once),
// a client that disconnects mid-stream (blocks freed), metrics, and SIGTERM (graceful, exit 0).
// Every server is started with a time limit and always killed at the end.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The model folder shared by all tests: created once per test binary.
std::string model_dir() {
  static std::unique_ptr<qwen_test::TempDir> dir;  // removed at exit
  if (!dir) {
    dir = std::make_unique<qwen_test::TempDir>();
    const std::string cfg = dir->str("config.json");
    std::ofstream(cfg) << R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "vocab_size": 151669, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
      "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true,
      "initializer_range": 0.3, "torch_dtype": "float32"})";
    const auto r = qwen_test::run_qwen("init --config " + cfg + " --seed 3 --out " + dir->str("tiny") +
                                       " --tokenizer " + qwen_test::data_path("tokenizer/qwen3"));
    EXPECT_EQ(r.status, 0) << r.err;
  }
  return dir->str("tiny");
}

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

// A `qwen serve` child process.
class Server {
 public:
  // model: the folder to serve (default: the shared tiny model).
  explicit Server(const std::string& extra_args, const std::string& model = "") {
    err_path_ = td_.str("stderr");
    int fds[2];
    if (pipe(fds) != 0) return;
    std::vector<std::string> args = {QWEN_BIN, "serve", "--model", model.empty() ? model_dir() : model, "--port", "0",
                                     "--served-model-name", "tiny", "--threads", "2"};
    std::string tok;
    std::istringstream ss(extra_args);
    while (ss >> tok) args.push_back(tok);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      const int e = open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(e, 2);
      close(fds[0]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(QWEN_BIN, argv.data());
      _exit(127);
    }
    close(fds[1]);
    // Read stdout until the "listening on" line (30 s at most).
    std::string out;
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    while (Clock::now() < deadline) {
      pollfd p{fds[0], POLLIN, 0};
      if (poll(&p, 1, 200) <= 0) continue;
      char buf[512];
      const ssize_t n = read(fds[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, size_t(n));
      if ((port_ = listening_port(out)) > 0) break;
    }
    close(fds[0]);
    startup_ = out;
  }
  ~Server() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string stderr_text() const { return qwen_test::read_text(err_path_); }
  const std::string& startup() const { return startup_; }  // stdout up to "listening on"
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(30, 0);
    return c;
  }
  // Sends sig and waits up to timeout for the exit; returns the exit status (-1: still running,
  // then killed).
  int signal_and_wait(int sig, std::chrono::seconds timeout) {
    kill(pid_, sig);
    const auto deadline = Clock::now() + timeout;
    int st = 0;
    while (Clock::now() < deadline) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        reaped_ = true;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  qwen_test::TempDir td_;
  std::string err_path_, startup_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool reaped_ = false;
};

// One value of a Prometheus metric line "name value" ("name{labels} value").
double metric(const std::string& text, const std::string& name) {
  std::istringstream ss(text);
  std::string line;
  while (std::getline(ss, line))
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  return -1;
}

// Runs curl (bounded by max_time seconds) and returns its stdout.
std::string curl(const std::string& args, double max_time = 30) {
  qwen_test::TempDir td;
  const std::string out = td.str("out");
  const std::string cmd = "curl -sS -N --max-time " + std::to_string(max_time) + " " + args +
                          " > " + out + " 2>/dev/null";
  (void)std::system(cmd.c_str());
  return qwen_test::read_text(out);
}

std::string sq(const std::string& s) {  // single-quote for the shell
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

// Parses an SSE body: the JSON of each "data:" event and whether it ended with [DONE].
std::vector<json> sse_events(const std::string& body, bool* done) {
  std::vector<json> ev;
  *done = false;
  std::istringstream ss(body);
  std::string line;
  while (std::getline(ss, line)) {
    if (line.rfind("data: ", 0) != 0) continue;
    const std::string data = line.substr(6);
    if (data == "[DONE]") {
      *done = true;
      continue;
    }
    EXPECT_FALSE(*done) << "event after [DONE]";
    ev.push_back(json::parse(data));
  }
  return ev;
}

json post(const Server& s, const std::string& path, const json& body, int* status) {
  auto c = s.client();
  auto r = c.Post(path.c_str(), body.dump(), "application/json");
  if (!r) {
    *status = -1;
    return json();
  }
  *status = r->status;
  return json::parse(r->body);
}

class ServeHttp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new Server("--max-running 8 --kv-cache-tokens 8192"); }
  static void TearDownTestSuite() { delete server_; }
  void SetUp() override { ASSERT_GT(server_->port(), 0) << "server did not start: " << server_->stderr_text(); }
  static Server* server_;
};
Server* ServeHttp::server_ = nullptr;

// `qwen serve --adapter`: the PEFT adapter of tests/data/lora (made by Hugging Face PEFT,
// gen_peft_golden.py) on its base model, served unmerged. The base folder has no tokenizer, so
// prompts are token ids. The startup line names the adapter; the greedy next token of every
// prefix of the golden prompt (one request each, all at once) is PEFT's argmax wherever its top
// two logits are more than 1e-3 apart, and differs from the base model's somewhere (the adapter
// matters). A missing adapter folder stops the server at start: one line naming it, exit 1.
TEST(ServeHttpAdapter, PeftAdapterServedUnmergedOverHttp) {
  const std::string dir = qwen_test::data_path("lora/qwen2_gqa_r4");
  const json g = qwen_test::read_json(dir + "/golden.json");
  const std::string base = qwen_test::data_path("models/" + g["base"].get<std::string>());
  const std::vector<float> ref = qwen_test::read_f32(dir + "/logits.f32");
  std::vector<int32_t> ids = g["input_ids"].get<std::vector<int32_t>>();
  const size_t T = ids.size(), V = ref.size() / T;
  auto next_tokens = [&](const Server& s) {
    std::vector<std::thread> th;
    std::vector<int32_t> out(T, -1);
    for (size_t t = 1; t <= T; ++t)
      th.emplace_back([&, t] {
        int st = 0;
        const json j = post(s, "/v1/completions",
                            {{"model", "tiny"}, {"prompt", std::vector<int32_t>(ids.begin(), ids.begin() + long(t))},
                             {"max_tokens", 1}, {"temperature", 0}, {"ignore_eos", true},
                             {"return_token_ids", true}}, &st);
        if (st == 200) out[t - 1] = j["choices"][0]["token_ids"][0].get<int32_t>();
      });
    for (auto& x : th) x.join();
    return out;
  };
  std::vector<int32_t> with, without;
  {
    Server s("--max-running 16 --prefill-per-step 8 --adapter " + dir, base);
    ASSERT_GT(s.port(), 0) << "server did not start: " << s.stderr_text();
    EXPECT_NE(s.startup().find("LoRA adapter " + dir + " r 4"), std::string::npos) << s.startup();
    with = next_tokens(s);
  }
  {
    Server s("--max-running 16", base);
    ASSERT_GT(s.port(), 0) << "server did not start: " << s.stderr_text();
    without = next_tokens(s);
  }
  int n_clear = 0;
  for (size_t t = 0; t < T; ++t) {
    const float* row = ref.data() + t * V;
    std::vector<float> top(row, row + V);
    std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
    if (top[0] - top[1] <= 1e-3f) continue;
    ++n_clear;
    EXPECT_EQ(with[t], int32_t(std::max_element(row, row + V) - row)) << "prefix of " << t + 1;
  }
  EXPECT_GE(n_clear, int(T) - 2);
  EXPECT_NE(with, without) << "the adapter should change some next token";

  const auto r = qwen_test::run_qwen("serve --model " + base + " --adapter " + dir + "/missing --port 0");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(dir + "/missing"), std::string::npos) << r.err;
}

TEST_F(ServeHttp, HealthModelsMetrics) {
  auto c = server_->client();
  auto r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["status"], "ok");
  r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  json m = json::parse(r->body);
  EXPECT_EQ(m["object"], "list");
  EXPECT_EQ(m["data"][0]["id"], "tiny");
  EXPECT_EQ(m["data"][0]["max_model_len"], 512);
  r = c.Get("/v1/models/tiny");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Get("/v1/models/other");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  for (const char* name : {"qwen_requests_total", "qwen_prompt_tokens_total", "qwen_generation_tokens_total",
                           "qwen_requests_running", "qwen_requests_waiting", "qwen_kv_blocks_used",
                           "qwen_time_to_first_token_seconds_bucket", "qwen_inter_token_latency_seconds_bucket"})
    EXPECT_NE(r->body.find(name), std::string::npos) << name;
}

TEST_F(ServeHttp, CompletionAndChat) {
  int st = 0;
  json j = post(*server_, "/v1/completions",
                {{"model", "tiny"}, {"prompt", "Once upon a time"}, {"max_tokens", 12},
                 {"temperature", 0}, {"ignore_eos", true}, {"return_token_ids", true}}, &st);
  ASSERT_EQ(st, 200) << j.dump();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["token_ids"].size(), 12u);
  EXPECT_FALSE(j["choices"][0]["text"].get<std::string>().empty());
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  EXPECT_EQ(j["usage"]["total_tokens"], j["usage"]["prompt_tokens"].get<int>() + 12);

  json c = post(*server_, "/v1/chat/completions",
                {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "Hi!"}}}},
                 {"max_tokens", 6}, {"seed", 9}}, &st);
  ASSERT_EQ(st, 200) << c.dump();
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(c["choices"][0]["message"]["content"].is_string());
  EXPECT_LE(c["usage"]["completion_tokens"].get<int>(), 6);
}

TEST_F(ServeHttp, SameSeedSameText) {
  json body = {{"model", "tiny"}, {"prompt", "The weather"}, {"max_tokens", 16}, {"temperature", 1.0},
               {"top_k", 40}, {"seed", 1234}, {"ignore_eos", true}};
  int st = 0;
  json a = post(*server_, "/v1/completions", body, &st);
  ASSERT_EQ(st, 200);
  json b = post(*server_, "/v1/completions", body, &st);
  ASSERT_EQ(st, 200);
  EXPECT_EQ(a["choices"][0]["text"], b["choices"][0]["text"]);
  body["seed"] = 4321;
  json c = post(*server_, "/v1/completions", body, &st);
  EXPECT_NE(a["choices"][0]["text"], c["choices"][0]["text"]);
}

TEST_F(ServeHttp, RawServerSentEventsWithCurl) {
  const json body = {{"model", "tiny"}, {"prompt", "Streaming test"}, {"max_tokens", 10},
                     {"temperature", 0}, {"ignore_eos", true}, {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  const std::string raw = curl("-H 'Content-Type: application/json' -d " + sq(body.dump()) + " " +
                               server_->base() + "/v1/completions");
  // Raw framing: every event is "data: ...\n\n".
  EXPECT_EQ(raw.rfind("data: [DONE]\n\n"), raw.size() - 14) << raw;
  bool done = false;
  std::vector<json> ev = sse_events(raw, &done);
  ASSERT_TRUE(done);
  ASSERT_GE(ev.size(), 3u);
  std::string text;
  for (size_t i = 0; i + 2 < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["object"], "text_completion");
    EXPECT_TRUE(ev[i]["choices"][0]["finish_reason"].is_null());
    text += ev[i]["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(ev.back()["choices"].empty());
  EXPECT_EQ(ev.back()["usage"]["completion_tokens"], 10);
  // The same request without streaming gives the same text.
  json nb = body;
  nb.erase("stream");
  nb.erase("stream_options");
  int st = 0;
  json whole = post(*server_, "/v1/completions", nb, &st);
  EXPECT_EQ(whole["choices"][0]["text"], text);

  // Chat: a role chunk first, then content deltas.
  const json cb = {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "Tell me"}}}},
                   {"max_tokens", 5}, {"temperature", 0}, {"stream", true}};
  const std::string craw = curl("-d " + sq(cb.dump()) + " " + server_->base() + "/v1/chat/completions");
  ev = sse_events(craw, &done);
  ASSERT_TRUE(done) << craw;
  ASSERT_GE(ev.size(), 2u);
  EXPECT_EQ(ev[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_FALSE(ev.back()["choices"][0]["finish_reason"].is_null());
}

// Eight concurrent greedy requests over HTTP return exactly what each returns alone.
TEST_F(ServeHttp, ConcurrentEqualsAlone) {
  std::vector<json> bodies;
  for (int i = 0; i < 8; ++i)
    bodies.push_back({{"model", "tiny"}, {"prompt", "Request number " + std::to_string(i * 7919)},
                      {"max_tokens", 10 + i}, {"temperature", 0}, {"ignore_eos", true},
                      {"return_token_ids", true}});
  std::vector<json> alone(8), together(8);
  for (int i = 0; i < 8; ++i) {
    int st = 0;
    alone[size_t(i)] = post(*server_, "/v1/completions", bodies[size_t(i)], &st);
    ASSERT_EQ(st, 200);
  }
  std::vector<std::thread> th;
  std::vector<int> sts(8, 0);
  for (int i = 0; i < 8; ++i)
    th.emplace_back([&, i] { together[size_t(i)] = post(*server_, "/v1/completions", bodies[size_t(i)], &sts[size_t(i)]); });
  for (auto& t : th) t.join();
  for (int i = 0; i < 8; ++i) {
    ASSERT_EQ(sts[size_t(i)], 200);
    EXPECT_EQ(alone[size_t(i)]["choices"][0]["token_ids"], together[size_t(i)]["choices"][0]["token_ids"]) << i;
    EXPECT_EQ(alone[size_t(i)]["choices"][0]["text"], together[size_t(i)]["choices"][0]["text"]) << i;
  }
}

TEST_F(ServeHttp, ErrorsAreOpenAiObjects) {
  auto c = server_->client();
  struct Case { std::string path, body; int status; std::string param; };
  const std::vector<Case> cases = {
      {"/v1/completions", "{oops", 400, ""},
      {"/v1/completions", "[]", 400, ""},
      {"/v1/completions", R"({"prompt": "x"})", 400, "model"},
      {"/v1/completions", R"({"model": "nope", "prompt": "x"})", 400, "model"},
      {"/v1/completions", R"({"model": "tiny", "prompt": "x", "top_p": 2})", 400, "top_p"},
      {"/v1/completions", R"({"model": "tiny", "prompt": "x", "max_tokens": 0})", 400, "max_tokens"},
      {"/v1/completions", R"({"model": "tiny", "prompt": "x", "max_tokens": 100000})", 400, "max_tokens"},
      {"/v1/completions", R"({"model": "tiny", "prompt": "x", "n": 2})", 400, "n"},
      {"/v1/chat/completions", R"({"model": "tiny", "messages": [{"role": "alien", "content": "x"}]})", 400, "messages[0].role"},
      {"/v1/chat/completions", R"({"model": "tiny", "messages": "x"})", 400, "messages"},
  };
  for (const Case& k : cases) {
    auto r = c.Post(k.path.c_str(), k.body, "application/json");
    ASSERT_TRUE(r) << k.body;
    EXPECT_EQ(r->status, k.status) << k.body;
    json j = json::parse(r->body);
    ASSERT_TRUE(j.contains("error")) << r->body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    if (k.param.empty()) EXPECT_TRUE(j["error"]["param"].is_null()) << r->body;
    else EXPECT_EQ(j["error"]["param"], k.param) << r->body;
  }
  // A prompt longer than the context.
  std::string big(6000, 'a');
  for (size_t i = 0; i < big.size(); i += 2) big[i] = ' ';
  auto r = c.Post("/v1/completions", json{{"model", "tiny"}, {"prompt", big}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "context_length_exceeded");
  r = c.Get("/v1/nothing");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_TRUE(json::parse(r->body).contains("error"));
}

// A client that goes away mid-stream: its request is cancelled and its blocks freed.
TEST_F(ServeHttp, DisconnectFreesBlocks) {
  auto c = server_->client();
  const double cancelled0 = [&] {
    auto r = c.Get("/metrics");
    return metric(r->body, "qwen_requests_total{finish_reason=\"cancelled\"}");
  }();
  const json body = {{"model", "tiny"}, {"prompt", "A long story"}, {"max_tokens", 480},
                     {"ignore_eos", true}, {"stream", true}};
  // The client hangs up as soon as the first token's event arrives, long before 480 tokens
  // (not after a fixed time: on a loaded machine the first event can take longer than any
  // fixed wait, and on a quiet one a tiny model can finish early).
  std::string part;
  {
    auto sc = server_->client();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      part.append(data, n);
      return part.find("data: ") == std::string::npos;  // false: stop reading, close
    };
    (void)sc.send(req);  // fails by design: the client cancelled the read
  }
  EXPECT_NE(part.find("data: "), std::string::npos);
  EXPECT_EQ(part.find("[DONE]"), std::string::npos) << "the stream should have been cut short";
  const auto t0 = Clock::now();
  double running = -1, used = -1, cancelled = -1;
  while (Clock::now() - t0 < std::chrono::seconds(5)) {
    auto r = c.Get("/metrics");
    ASSERT_TRUE(r);
    running = metric(r->body, "qwen_requests_running");
    used = metric(r->body, "qwen_kv_blocks_used");
    cancelled = metric(r->body, "qwen_requests_total{finish_reason=\"cancelled\"}");
    if (running == 0 && used == 0 && cancelled > cancelled0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(running, 0);
  EXPECT_EQ(used, 0);
  EXPECT_EQ(cancelled, cancelled0 + 1);
}

// Threads of process pid (its /proc/PID/task entries).
int thread_count(pid_t pid) {
  DIR* d = opendir(("/proc/" + std::to_string(pid) + "/task").c_str());
  if (!d) return -1;
  int n = 0;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n;
}

// Every OpenMP region of the server runs on the engine thread: a prompt of 1 MiB or more (which
// the tokenizer cuts for threads) on an HTTP thread used to give that thread its own libgomp pool,
// one more thread for the rest of the process's life, and then libgomp slept the engine's idle
// workers after every region (a lone stream 2-3x slower). The request fails (longer than the
// context) but must leave the thread count as it was.
TEST(ServeHttpOpenMp, LongPromptStartsNoSecondOpenMpTeam) {
  Server s("--max-running 4 --kv-cache-tokens 4096 --http-threads 4");
  ASSERT_GT(s.port(), 0) << "server did not start: " << s.stderr_text();
  int status = 0;
  post(s, "/v1/completions", {{"model", "tiny"}, {"prompt", "Hello there"}, {"max_tokens", 4}},
       &status);
  ASSERT_EQ(status, 200);  // the engine's OpenMP team exists now
  const int before = thread_count(s.pid());
  ASSERT_GT(before, 0);
  std::string text;
  text.reserve(size_t(3) << 20 >> 1);
  while (text.size() < (size_t(3) << 20 >> 1)) text += "The quick brown fox jumps over a dog. ";
  const json r = post(s, "/v1/completions", {{"model", "tiny"}, {"prompt", text}, {"max_tokens", 4}},
                      &status);
  EXPECT_EQ(status, 400) << r.dump();
  EXPECT_EQ(thread_count(s.pid()), before) << "a request started OpenMP threads off the engine thread";
}

TEST(ServeHttpAuth, ApiKeyRequired) {
  Server s("--api-key sekret");
  ASSERT_GT(s.port(), 0) << s.stderr_text();
  auto c = s.client();
  auto r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "invalid_api_key");
  r = c.Get("/v1/models", {{"Authorization", "Bearer wrong"}});
  EXPECT_EQ(r->status, 401);
  r = c.Post("/v1/completions", {{"Authorization", "Bearer wrong"}}, "{}", "application/json");
  EXPECT_EQ(r->status, 401);
  r = c.Get("/v1/models", {{"Authorization", "Bearer sekret"}});
  EXPECT_EQ(r->status, 200);
  r = c.Get("/health");
  EXPECT_EQ(r->status, 200);
}

// With one running slot and no queue, a second request while one runs gets 429 at once.
TEST(ServeHttpLoad, QueueFullIs429AtOnce) {
  Server s("--max-running 1 --max-queue 0 --shutdown-grace 0");
  ASSERT_GT(s.port(), 0) << s.stderr_text();
  std::thread longer([&] {
    int st = 0;
    post(s, "/v1/completions", {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 480}, {"ignore_eos", true}}, &st);
  });
  auto c = s.client();
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(10)) {
    auto r = c.Get("/metrics");
    if (r && metric(r->body, "qwen_requests_running") == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const auto t1 = Clock::now();
  auto r = c.Post("/v1/completions", json{{"model", "tiny"}, {"prompt", "y"}, {"max_tokens", 5}}.dump(),
                  "application/json");
  const double secs = std::chrono::duration<double>(Clock::now() - t1).count();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429) << r->body;
  EXPECT_LT(secs, 1.0);
  EXPECT_TRUE(json::parse(r->body).contains("error"));
  EXPECT_EQ(s.signal_and_wait(SIGTERM, std::chrono::seconds(20)), 0);
  longer.join();
}

// SIGTERM: a stream in flight finishes (within the grace period), the process exits 0.
TEST(ServeHttpShutdown, SigtermFinishesInFlightAndExitsZero) {
  Server s("--shutdown-grace 20");
  ASSERT_GT(s.port(), 0) << s.stderr_text();
  std::string raw;
  const json body = {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 200}, {"ignore_eos", true},
                     {"stream", true}};
  std::thread client([&] { raw = curl("-d " + sq(body.dump()) + " " + s.base() + "/v1/completions", 60); });
  auto c = s.client();
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(10)) {
    auto r = c.Get("/metrics");
    if (r && metric(r->body, "qwen_generation_tokens_total") > 5) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(s.signal_and_wait(SIGTERM, std::chrono::seconds(30)), 0) << s.stderr_text();
  client.join();
  bool done = false;
  std::vector<json> ev = sse_events(raw, &done);
  EXPECT_TRUE(done);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.back()["choices"][0]["finish_reason"], "length");
  EXPECT_NE(s.stderr_text().find("SIGTERM received"), std::string::npos);
}

// SIGINT with no grace: the stream in flight is cancelled (finish_reason "abort"), exit 0.
TEST(ServeHttpShutdown, SigintCancelsWhenGraceIsOver) {
  Server s("--shutdown-grace 0");
  ASSERT_GT(s.port(), 0) << s.stderr_text();
  std::string raw;
  const json body = {{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 480}, {"ignore_eos", true},
                     {"stream", true}};
  std::thread client([&] { raw = curl("-d " + sq(body.dump()) + " " + s.base() + "/v1/completions", 60); });
  auto c = s.client();
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(10)) {
    auto r = c.Get("/metrics");
    if (r && metric(r->body, "qwen_generation_tokens_total") > 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(s.signal_and_wait(SIGINT, std::chrono::seconds(30)), 0) << s.stderr_text();
  client.join();
  bool done = false;
  std::vector<json> ev = sse_events(raw, &done);
  EXPECT_TRUE(done) << raw.substr(raw.size() > 300 ? raw.size() - 300 : 0);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.back()["choices"][0]["finish_reason"], "abort");
}

}  // namespace
