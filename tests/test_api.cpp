// tests/test_api.cpp — the public API (include/qwen) as a user sees it: the facades agree with
// each other (forward vs greedy generation, in-memory vs folder quantisation, a trained adapter
// saved and loaded back), stop strings and streaming, and the one-line errors. Uses only the
// public headers (plus the test helpers), like a downstream program.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "qwen/qwen.h"
#include "test_util.h"

using qwen_test::data_path;
using qwen_test::TempDir;

namespace {

qwen::ModelConfig tiny_config(int64_t vocab) {
  qwen::ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.qkv_bias = true;
  c.max_position_embeddings = 96;
  c.validate();
  return c;
}

int argmax(const float* row, int64_t n) { return int(std::max_element(row, row + n) - row); }

template <class F>
void expect_error(F f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no qwen::Error (expected one mentioning '" << part << "')";
  } catch (const qwen::Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "not one line: " << e.what();
  }
}

}  // namespace

TEST(Api, GreedyGenerationFollowsForwardArgmax) {
  const qwen::ModelConfig c = tiny_config(97);
  const qwen::Model m = qwen::Model::create(c, 5);
  std::vector<int32_t> ids = {4, 8, 15, 16, 23, 42};
  qwen::Generator gen(m);
  qwen::GenerationConfig g;
  g.temperature = 0;
  g.max_new_tokens = 5;
  g.stop_at_eos = false;
  const qwen::GenerationResult r = gen.generate(ids, g);
  ASSERT_EQ(r.tokens.size(), 5u);
  EXPECT_EQ(r.finish_reason, "length");
  // Each generated token is the argmax of the full forward over everything before it.
  for (int32_t t : r.tokens) {
    const std::vector<float> logits = m.forward(ids);
    EXPECT_EQ(t, argmax(logits.data() + (ids.size() - 1) * size_t(c.vocab_size), c.vocab_size));
    ids.push_back(t);
  }
}

TEST(Api, StreamingWithStopStrings) {
  const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(data_path("tokenizer/trained"));
  const qwen::Model m = qwen::Model::create(tiny_config(tok.vocab_size()), 9);
  qwen::Generator gen(m, tok);
  qwen::GenerationConfig g;
  g.temperature = 0;
  g.max_new_tokens = 40;
  g.stop_at_eos = false;
  const std::string full = gen.generate("And the earth was", g).text;
  ASSERT_GT(full.size(), 20u);
  // Every 3-byte piece of the output as a stop string: the text ends right before its first
  // occurrence, and the streamed pieces add up to exactly that text.
  for (size_t at = 1; at + 3 <= full.size(); at += 5) {
    g.stop = {full.substr(at, 3)};
    std::string streamed;
    const qwen::GenerationResult r = gen.generate("And the earth was", g,
                                                  [&](int32_t, std::string_view s) {
                                                    streamed += s;
                                                    return true;
                                                  });
    EXPECT_EQ(r.text, full.substr(0, full.find(g.stop[0]))) << "stop '" << g.stop[0] << "'";
    EXPECT_EQ(streamed, r.text);
    EXPECT_EQ(r.finish_reason, "stop");
  }
  // The callback's false cancels.
  g.stop.clear();
  int n = 0;
  const qwen::GenerationResult r =
      gen.generate("And the earth was", g, [&](int32_t, std::string_view) { return ++n < 3; });
  EXPECT_EQ(r.tokens.size(), 3u);
  EXPECT_EQ(r.finish_reason, "cancelled");
}

TEST(Api, QuantizeInMemoryEqualsFolder) {
  TempDir td;
  const qwen::Model m = qwen::Model::create(tiny_config(128), 3);
  m.save(td.str("f32"));
  for (qwen::WeightType t : {qwen::WeightType::NF4, qwen::WeightType::Q8_0}) {
    const std::string out = td.str(std::string("q_") + qwen::weight_type_name(t));
    const qwen::QuantizeReport rep = qwen::quantize(td.str("f32"), t, out);
    EXPECT_EQ(rep.parameters, m.num_parameters());
    const qwen::Model from_folder = qwen::Model::load(out);
    const qwen::Model in_memory = qwen::quantize(m, t);
    EXPECT_EQ(from_folder.weight_type(), t);
    EXPECT_EQ(in_memory.weight_type(), t);
    const std::vector<int32_t> ids = {1, 2, 3, 5, 8, 13};
    EXPECT_EQ(from_folder.forward(ids), in_memory.forward(ids));
  }
  expect_error([&] { qwen::quantize(qwen::quantize(m, qwen::WeightType::NF4), qwen::WeightType::Q8_0); },
               "already");
  expect_error([&] { qwen::quantize(m, qwen::WeightType::BF16); }, "bf16");
}

TEST(Api, LoraAdapterSavedAndLoadedGivesTheTrainedModel) {
  TempDir td;
  const qwen::ModelConfig c = tiny_config(64);
  qwen::Model base = qwen::Model::create(c, 11);
  base.save(td.str("base"));
  qwen::LoraConfig lc;
  lc.rank = 4;
  lc.dropout = 0;
  lc.targets = {"q", "v", "down"};
  qwen::TrainConfig tc;
  tc.steps = 6;
  tc.batch = 2;
  tc.seq = 16;
  tc.lr = 1e-2;
  qwen::Trainer tr(base, lc, tc);
  EXPECT_TRUE(tr.is_lora());
  const int64_t C = c.hidden_size, F = c.intermediate_size;
  EXPECT_EQ(tr.trainable_parameters(),
            c.num_hidden_layers * lc.rank * ((C + c.q_dim()) + (C + c.kv_dim()) + (F + C)));
  EXPECT_EQ(tr.total_parameters(), base.num_parameters() + tr.trainable_parameters());
  std::vector<int32_t> ids;
  for (int i = 0; i < 200; ++i) ids.push_back(int32_t((i * 7) % 64));
  const double before = tr.evaluate(ids, 2);
  tr.fit(ids);
  EXPECT_EQ(tr.steps_done(), 6);
  EXPECT_LT(tr.evaluate(ids, 2), before);
  tr.save(td.str("adapter"));

  qwen::Model loaded = qwen::Model::load(td.str("base"));
  loaded.load_adapter(td.str("adapter"));
  EXPECT_EQ(loaded.adapter_parameters(), tr.trainable_parameters());
  const std::vector<int32_t> probe(ids.begin(), ids.begin() + 12);
  const std::vector<float> a = tr.model().forward(probe), b = loaded.forward(probe),
                           merged = loaded.merged().forward(probe);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i], b[i]) << i;  // the same weights, the same kernels
    ASSERT_NEAR(merged[i], a[i], 1e-4f * (1 + std::fabs(a[i]))) << i;
  }
  // An adapter goes on before anything uses the model.
  qwen::Model again = qwen::Model::load(td.str("base"));
  qwen::Generator gen(again);
  expect_error([&] { again.load_adapter(td.str("adapter")); }, "before");
}

TEST(Api, OneLineErrors) {
  const qwen::Model m = qwen::Model::create(tiny_config(64), 1);
  expect_error([&] { m.forward({}); }, "empty");
  expect_error([&] { m.forward({1, 64}); }, "64");
  expect_error([&] { m.forward(std::vector<int32_t>(97, 1)); }, "max_position_embeddings");
  qwen::Generator gen(m);
  qwen::GenerationConfig g;
  g.stop = {"x"};
  expect_error([&] { gen.generate(std::vector<int32_t>{1}, g); }, "tokenizer");
  expect_error([&] { gen.generate(std::string("hi"), qwen::GenerationConfig{}); }, "tokenizer");
  g = {};
  g.top_p = 0;
  expect_error([&] { gen.generate(std::vector<int32_t>{1}, g); }, "top_p");
  g = {};
  g.max_new_tokens = 100;
  expect_error([&] { gen.generate(std::vector<int32_t>{1}, g); }, "max_position_embeddings");
  qwen::TrainConfig tc;
  tc.batch = 2;
  tc.seq = 8;
  qwen::Trainer tr(tiny_config(64), 1, tc);
  expect_error([&] { tr.step(std::vector<int32_t>(16, 1), std::vector<int32_t>(15, 1), 2, 8); }, "2 x 8");
  expect_error([&] { tr.fit({1, 2, 3}); }, "seq + 1");
  expect_error([] { qwen::Model::load("/nonexistent/model"); }, "/nonexistent/model");
  expect_error([] { qwen::parse_weight_type("int3"); }, "int3");
  expect_error([&] { m.merged(); }, "adapter");
}

TEST(Api, EngineAnswersLikeItself) {
  const qwen::Model m = qwen::Model::create(tiny_config(80), 2);
  qwen::EngineConfig ec;
  ec.max_running = 4;
  ec.kv_cache_bytes = size_t(2) << 20;
  qwen::Engine engine(m, ec);
  engine.start();
  qwen::GenerationConfig g;
  g.max_new_tokens = 6;
  g.temperature = 0.9f;
  g.top_k = 20;
  g.seed = 4;
  g.stop_at_eos = false;
  qwen::Request a = engine.submit(std::vector<int32_t>{3, 1, 4, 1, 5}, g);
  qwen::Request b = engine.submit(std::vector<int32_t>{3, 1, 4, 1, 5}, g);
  qwen::Completion streamed;
  while (!streamed.finished) b.next(&streamed, std::chrono::milliseconds(2000));
  const qwen::Completion ra = a.wait();
  engine.stop();
  EXPECT_EQ(ra.tokens.size(), 6u);
  EXPECT_EQ(ra.finish_reason, "length");
  EXPECT_EQ(ra.tokens, streamed.tokens);
  EXPECT_EQ(ra.prompt_tokens, 5);
  EXPECT_THROW(engine.submit(std::vector<int32_t>{1}, g), qwen::Error);
}

// Perplexity: every target scored once, by the first window that reaches it, from the left
// context of that window; recomputed here from Model::forward on each window.
TEST(Api, PerplexityMatchesForwardOverWindows) {
  const qwen::Model m = qwen::Model::create(tiny_config(71), 12);
  std::vector<int32_t> ids;
  for (int i = 0; i < 29; ++i) ids.push_back(int32_t((i * 13 + 5) % 71));
  const int64_t N = int64_t(ids.size()), V = 71;
  for (const auto& [ctx, stride] : std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {8, 3}, {11, 0}}) {
    qwen::PerplexityConfig pc;
    pc.context = ctx;
    pc.stride = stride;
    int64_t n_progress = 0, last_scored = 0;
    pc.on_progress = [&](int64_t scored, int64_t total) {
      EXPECT_EQ(total, N - 1);
      EXPECT_GT(scored, last_scored);
      last_scored = scored;
      ++n_progress;
    };
    const qwen::PerplexityResult r = qwen::evaluate_perplexity(m, ids, pc);
    const int64_t w = ctx > 0 ? ctx : N, step = stride > 0 ? stride : std::max<int64_t>(1, w / 2);
    EXPECT_EQ(r.context, w);
    EXPECT_EQ(r.stride, step);
    EXPECT_EQ(r.tokens, N - 1);
    double nll = 0;
    int64_t windows = 0;
    for (int64_t t = 1; t < N; ++t) {
      int64_t begin = 0;
      while (std::min(N, begin + w) - 1 < t) begin += step;  // the first window that reaches t
      const std::vector<int32_t> win(ids.begin() + begin, ids.begin() + std::min(N, begin + w));
      const std::vector<float> lg = m.forward(win);
      const float* row = lg.data() + (t - 1 - begin) * V;
      double mx = row[0], s = 0;
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(row[v]));
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - mx);
      nll += std::log(s) + mx - row[ids[size_t(t)]];
      windows = std::max(windows, begin / step + 1);
    }
    EXPECT_NEAR(r.loss, nll / double(N - 1), 1e-4) << "context " << ctx << " stride " << stride;
    EXPECT_NEAR(r.perplexity, std::exp(r.loss), 1e-9 * r.perplexity);
    EXPECT_EQ(n_progress, windows - 1);
  }
  expect_error([&] { qwen::evaluate_perplexity(m, {3}); }, "2 tokens");
  expect_error([&] { qwen::evaluate_perplexity(m, {3, 71}); }, "71");
}

TEST(Api, BenchmarkReportsItsSizes) {
  const qwen::ModelConfig c = tiny_config(64);
  const qwen::Model m = qwen::Model::create(c, 2);
  qwen::BenchConfig bc;
  bc.prompt_len = 9;
  bc.gen_len = 5;
  bc.reps = 1;
  const qwen::BenchResult b = qwen::benchmark(m, bc);
  EXPECT_GT(b.prefill_tok_s, 0);
  EXPECT_GT(b.decode_tok_s, 0);
  // f32 keys and values of every layer for prompt_len + gen_len positions.
  EXPECT_EQ(b.kv_cache_bytes, size_t(2 * c.num_hidden_layers * c.kv_dim() * (9 + 5)) * 4);
  EXPECT_GT(b.workspace_bytes, 0u);
  bc.gen_len = 96;
  expect_error([&] { qwen::benchmark(m, bc); }, "exceeds");
}

// A chat turn is greedy generation on the rendered conversation; the second turn (which reuses
// the cached prefix of the first) gives what a fresh prefill of the whole conversation gives.
TEST(Api, ChatSessionKeepsTheConversation) {
  const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(data_path("tokenizer/trained"));
  qwen::ModelConfig c = tiny_config(tok.vocab_size());
  c.max_position_embeddings = 160;
  const qwen::Model m = qwen::Model::create(c, 21);
  qwen::ChatConfig cc;
  cc.temperature = 0;
  cc.max_new_tokens = 12;
  cc.system = "Be brief.";
  qwen::ChatSession chat(m, tok, cc);
  EXPECT_EQ(chat.context(), 160);
  qwen::Generator gen(m, tok);
  qwen::GenerationConfig g;
  g.temperature = 0;
  g.max_new_tokens = 12;
  std::vector<std::pair<std::string, std::string>> conv = {{"system", cc.system}};
  for (const char* user : {"And the earth was", "without form"}) {
    const qwen::ChatFit fit = chat.add_user_message(user);
    EXPECT_TRUE(fit.fits);
    EXPECT_EQ(fit.dropped_turns, 0);
    std::string streamed;
    const std::string reply = chat.reply([&](std::string_view s) { streamed += s; });
    conv.emplace_back("user", user);
    const qwen::GenerationResult want = gen.generate(tok.apply_chat_template(conv, true), g);
    EXPECT_EQ(reply, want.text) << "turn " << conv.size() / 2;
    EXPECT_EQ(streamed, reply);
    conv.emplace_back("assistant", reply);
  }
  ASSERT_EQ(chat.history().size(), 4u);
  EXPECT_EQ(chat.history()[2].second, "without form");
  expect_error([&] { chat.reply(); }, "user");
  // A small context: old exchanges go, a message too long even alone is refused.
  cc.context = 70;
  cc.max_new_tokens = 8;
  qwen::ChatSession small(m, tok, cc);
  int64_t dropped = 0;
  for (int i = 0; i < 6; ++i) {
    const qwen::ChatFit fit = small.add_user_message("And the earth was without form, and void");
    ASSERT_TRUE(fit.fits);
    dropped += fit.dropped_turns;
    small.reply();
  }
  EXPECT_GT(dropped, 0);
  EXPECT_LT(small.history().size(), 12u);
  const size_t kept = small.history().size();
  std::string longer;
  for (int i = 0; i < 30; ++i) longer += "and the earth ";
  const qwen::ChatFit fit = small.add_user_message(longer);
  EXPECT_FALSE(fit.fits);
  EXPECT_LT(small.history().size(), kept);
  EXPECT_TRUE(small.history().empty() || small.history().back().first == "assistant");
  cc.max_new_tokens = 70;
  expect_error([&] { qwen::ChatSession(m, tok, cc); }, "max_new_tokens");
}

// Export to GGUF and read it back: the same logits (f32) and the same tokenizer.
TEST(Api, GgufExportRoundTrip) {
  TempDir td;
  const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(data_path("tokenizer/trained"));
  const qwen::Model m = qwen::Model::create(tiny_config(tok.vocab_size()), 8);
  m.save(td.str("hf"));
  EXPECT_FALSE(qwen::model_tokenizer(td.str("hf")).has_value());
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    std::filesystem::copy_file(data_path(std::string("tokenizer/trained/") + f), td.str(std::string("hf/") + f));
  ASSERT_TRUE(qwen::model_tokenizer(td.str("hf")).has_value());
  qwen::GgufExportConfig gc;
  gc.type = "f32";
  const qwen::GgufExportResult r = qwen::export_gguf(td.str("hf"), td.str("m.gguf"), gc);
  EXPECT_EQ(r.architecture, "qwen2");
  EXPECT_TRUE(r.tokenizer);
  EXPECT_GT(r.n_tensors, 0u);
  const qwen::Model back = qwen::Model::load(td.str("m.gguf"));
  EXPECT_EQ(back.matrix_dtype_name(), "F32");
  const std::vector<int32_t> ids = {5, 300, 7, 650, 1};
  const std::vector<float> a = m.forward(ids), b = back.forward(ids);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5f * (1 + std::fabs(a[i]))) << i;
  const std::optional<qwen::Tokenizer> gt = qwen::model_tokenizer(td.str("m.gguf"));
  ASSERT_TRUE(gt.has_value());
  const std::string text = "And the earth was without form, and void.";
  EXPECT_EQ(gt->encode(text), tok.encode(text));
  EXPECT_EQ(qwen::gguf_export_types().size(), 6u);
  gc.type = "q5_k";
  expect_error([&] { qwen::export_gguf(td.str("hf"), td.str("x.gguf"), gc); }, "q5_k");
}

TEST(Api, EngineConfigInEffect) {
  const qwen::ModelConfig c = tiny_config(80);
  const qwen::Model m = qwen::Model::create(c, 2);
  qwen::EngineConfig ec;
  ec.max_running = 3;
  ec.max_step_tokens = 2;
  ec.block_size = 16;
  ec.kv_cache_tokens = 100;  // 7 blocks
  const qwen::EngineConfig seven = qwen::Engine(m, ec).config();
  EXPECT_EQ(seven.kv_cache_tokens, 7 * 16);
  EXPECT_EQ(seven.max_step_tokens, 3);  // raised to max_running
  EXPECT_EQ(seven.max_model_len, c.max_position_embeddings);
  ec.kv_cache_tokens = 32;  // 2 blocks: the context shrinks to what they hold
  const qwen::EngineConfig two = qwen::Engine(m, ec).config();
  EXPECT_EQ(two.kv_cache_tokens, 32);
  EXPECT_EQ(two.max_model_len, 32);
  EXPECT_EQ(seven.kv_cache_bytes * 2, two.kv_cache_bytes * 7);
  EXPECT_GT(two.kv_cache_bytes, 0u);
}

TEST(Api, AdapterInfoAndTargets) {
  EXPECT_EQ(qwen::parse_lora_targets("q, v,,down"), (std::vector<std::string>{"q", "v", "down"}));
  TempDir td;
  const qwen::ModelConfig c = tiny_config(64);
  const qwen::Model base = qwen::Model::create(c, 4);
  qwen::LoraConfig lc;
  lc.rank = 2;
  lc.alpha = 5;
  lc.targets = {"k", "up"};
  qwen::Trainer(base, lc, qwen::TrainConfig{}).save(td.str("adapter"));
  qwen::Model m = qwen::Model::create(c, 4);
  expect_error([&] { m.adapter_info(); }, "adapter");
  m.load_adapter(td.str("adapter"));
  const qwen::AdapterInfo info = m.adapter_info();
  EXPECT_EQ(info.config.rank, 2);
  EXPECT_DOUBLE_EQ(info.scale, 2.5);
  EXPECT_EQ(info.n_matrices, 2 * c.num_hidden_layers);
  EXPECT_EQ(info.n_parameters, m.adapter_parameters());
  EXPECT_EQ(m.matrix_dtype_name(), "F32");
  EXPECT_EQ(qwen::quantize(base, qwen::WeightType::Q8_0).matrix_dtype_name(), "Q8_0");
}

// issue 8's criterion "`qwen` subcommands use only the public API", kept true: every #include of
// apps/qwen/* names commands.h, a public header qwen/X.h (include/qwen), or a system / third-party
// header (anything that is not a file of this project's src/, apps/ or tests/).
namespace {

// The include lines of `text` that break the rule; `root` is the project's source tree.
std::vector<std::string> private_includes(const std::string& text, const std::filesystem::path& root) {
  namespace fs = std::filesystem;
  static const std::regex inc(R"(^\s*#\s*include\s*([<"])([^>"]+)[>"])");
  std::vector<std::string> bad;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::smatch mt;
    if (!std::regex_search(line, mt, inc)) continue;
    const bool quoted = mt[1] == "\"";
    const std::string h = mt[2];
    bool ok;
    if (h.find("..") != std::string::npos) ok = false;
    else if (h == "commands.h") ok = quoted;
    else if (h.rfind("qwen/", 0) == 0)
      ok = fs::exists(root / "include" / h) || fs::exists(root / "include" / (h + ".in"));
    else  // a system header: not quoted, not a file of the project
      ok = !quoted && !fs::exists(root / "src" / h) && !fs::exists(root / "apps" / h) &&
           !fs::exists(root / "apps/qwen" / h) && !fs::exists(root / "tests" / h);
    if (!ok) bad.push_back(line);
  }
  return bad;
}

}  // namespace

TEST(Api, CliUsesOnlyThePublicApi) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(QWEN_TEST_DATA).parent_path().parent_path();
  // The check itself: it flags what it must and passes what it may.
  const std::string sample =
      "#include <cstdio>\n#include <CLI/CLI.hpp>\n#include <nlohmann/json.hpp>\n"
      "#include \"commands.h\"\n#include \"qwen/model.h\"\n#include <qwen/engine.h>\n"
      "#include \"qwen/version.h\"\n"
      "#include \"core/cpu.h\"\n#  include <model/model.h>\n#include \"qwen/../../src/core/rng.h\"\n"
      "#include \"qwen/nonexistent.h\"\n#include \"helper.h\"\n#include <commands.h>\n";
  EXPECT_EQ(private_includes(sample, root),
            (std::vector<std::string>{"#include \"core/cpu.h\"", "#  include <model/model.h>",
                                      "#include \"qwen/../../src/core/rng.h\"",
                                      "#include \"qwen/nonexistent.h\"", "#include \"helper.h\"",
                                      "#include <commands.h>"}));
  int n_files = 0;
  for (const auto& e : fs::directory_iterator(root / "apps/qwen")) {
    const std::string ext = e.path().extension().string();
    if (ext != ".cpp" && ext != ".h" && ext != ".hpp") continue;
    ++n_files;
    std::ifstream f(e.path(), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    for (const std::string& line : private_includes(ss.str(), root))
      ADD_FAILURE() << e.path().filename().string() << ": '" << line
                    << "' is not the public API; include qwen/*.h (extend include/qwen and "
                       "src/api if something is missing)";
  }
  EXPECT_GE(n_files, 9);  // main.cpp, commands.h and the seven cmd_*.cpp
}
