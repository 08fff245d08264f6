// tests/test_cli.cpp — the `qwen` CLI end to end on the golden models: generate/eval/info/bench
// output contracts, and bad input: each mistake gives one clear "error:" line and a non-zero exit.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

using namespace qwen_test;
namespace fs = std::filesystem;

namespace {

std::string model(const char* name) { return data_path(std::string("models/") + name); }

std::string join_ids(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// One line on stderr starting with "error:", containing every fragment; non-zero exit.
void expect_error(const RunResult& r, std::initializer_list<const char*> fragments) {
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  for (const char* f : fragments) EXPECT_NE(r.err.find(f), std::string::npos) << "want '" << f << "' in: " << r.err;
}

// A writable copy of a golden model folder.
struct ModelCopy {
  TempDir td;
  std::string dir;
  explicit ModelCopy(const char* name) {
    dir = td.str("m");
    fs::copy(model(name), dir);
  }
  void edit_config(const std::string& from, const std::string& to) {
    std::string s = read_text(dir + "/config.json");
    size_t at = s.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    s.replace(at, from.size(), to);
    std::ofstream(dir + "/config.json") << s;
  }
};

TEST(Cli, GenerateJsonGreedyMatchesTransformers) {
  auto g = read_json(model("qwen2_gqa") + "/golden.json");
  auto prompt = g["greedy_prompt"].get<std::vector<int32_t>>();
  auto want = g["greedy_ids"].get<std::vector<int32_t>>();
  auto r = run_qwen("generate --model " + model("qwen2_gqa") + " --prompt-ids " + join_ids(prompt) +
                    " --max-new-tokens " + std::to_string(want.size()) +
                    " --temperature 0 --ignore-eos --json");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["ids"].get<std::vector<int32_t>>(), want);
  EXPECT_GT(j["prefill_tok_s"].get<double>(), 0);
  EXPECT_GT(j["decode_tok_s"].get<double>(), 0);
  EXPECT_TRUE(j.contains("text"));
}

TEST(Cli, EvalMatchesTransformersLoss) {
  auto g = read_json(model("llama_gqa8") + "/golden.json");
  TempDir td;
  std::ofstream(td.str("ids.txt")) << join_ids(g["input_ids"].get<std::vector<int32_t>>()) << "\n";
  auto r = run_qwen("eval --model " + model("llama_gqa8") + " --ids-file " + td.str("ids.txt") + " --json");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["loss"].get<double>(), g["loss"].get<double>(), 1e-4);
  EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(g["loss"].get<double>()), 1e-2);
  EXPECT_EQ(j["tokens"].get<int>(), int(g["input_ids"].size()) - 1);
  // Sliding window shorter than the text: every token still scored once, finite loss.
  auto w = run_qwen("eval --model " + model("llama_gqa8") + " --ids-file " + td.str("ids.txt") +
                    " --context 10 --stride 4 --json");
  ASSERT_EQ(w.status, 0) << w.err;
  auto jw = nlohmann::json::parse(w.out);
  EXPECT_EQ(jw["tokens"].get<int>(), int(g["input_ids"].size()) - 1);
  EXPECT_TRUE(std::isfinite(jw["loss"].get<double>()));
  EXPECT_NE(jw["loss"].get<double>(), j["loss"].get<double>());
}

TEST(Cli, InfoAndBench) {
  auto r = run_qwen("info --model " + model("qwen3_headdim") + " --json");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["architecture"], "Qwen3ForCausalLM");
  EXPECT_EQ(j["head_dim"], 24);
  // embed 160x64, lm_head 160x64, norm 64, per layer: q 96x64, k,v 24x64, o 64x96, q/k norm 24,
  // 2 norms 64, gate/up 96x64, down 64x96.
  const int per_layer = 96 * 64 + 2 * 24 * 64 + 64 * 96 + 2 * 24 + 2 * 64 + 3 * 96 * 64;
  EXPECT_EQ(j["parameters"].get<int64_t>(), 2 * 160 * 64 + 64 + 2 * per_layer);
  auto b = run_qwen("bench --model " + model("qwen3_headdim") + " --prompt-len 16 --gen-len 8 --reps 1 --json");
  ASSERT_EQ(b.status, 0) << b.err;
  auto jb = nlohmann::json::parse(b.out);
  EXPECT_GT(jb["prefill_tok_s"].get<double>(), 0);
  EXPECT_GT(jb["decode_tok_s"].get<double>(), 0);
  EXPECT_GT(jb["peak_rss_bytes"].get<double>(), 0);
}

TEST(Cli, InitWritesAFolderThatLoads) {
  TempDir td;
  auto r = run_qwen("init --preset tiny --dtype bf16 --seed 3 --out " + td.str("m"));
  ASSERT_EQ(r.status, 0) << r.err;
  auto g = run_qwen("generate --model " + td.str("m") + " --prompt-ids 1,2,3 --max-new-tokens 5 --json --seed 1");
  ASSERT_EQ(g.status, 0) << g.err;
  EXPECT_LE(nlohmann::json::parse(g.out)["ids"].size(), 5u);
}

TEST(CliErrors, MissingFolderAndFiles) {
  expect_error(run_qwen("info --model /nonexistent/model"), {"/nonexistent/model"});
  TempDir td;
  fs::create_directories(td.str("empty"));
  expect_error(run_qwen("info --model " + td.str("empty")), {"config.json"});
  ModelCopy c("qwen2_gqa");
  fs::remove(c.dir + "/model.safetensors");
  expect_error(run_qwen("info --model " + c.dir), {"safetensors"});
}

TEST(CliErrors, TruncatedAndLyingSafetensors) {
  ModelCopy c("qwen2_gqa");
  const std::string f = c.dir + "/model.safetensors";
  std::string bytes = read_text(f);
  std::ofstream(f, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 100);
  expect_error(run_qwen("info --model " + c.dir), {"model.safetensors"});
  // Header claims one more byte of data for the first tensor.
  std::string lie = bytes;
  size_t at = lie.find("\"data_offsets\":[0,");
  ASSERT_NE(at, std::string::npos);
  size_t num = at + std::strlen("\"data_offsets\":[0,");
  size_t end = lie.find(']', num);
  long long v = std::stoll(lie.substr(num, end - num));
  std::string repl = std::to_string(v + 4);
  if (repl.size() == end - num) {
    lie.replace(num, end - num, repl);
    std::ofstream(f, std::ios::binary | std::ios::trunc) << lie;
    expect_error(run_qwen("info --model " + c.dir), {"model.safetensors"});
  }
  // Half a shard set: a shard named in the index is missing.
  ModelCopy s("qwen2_sharded");
  fs::remove(s.dir + "/model-00003-of-00007.safetensors");
  expect_error(run_qwen("info --model " + s.dir), {"model-00003-of-00007.safetensors"});
}

TEST(CliErrors, ConfigMistakes) {
  {
    ModelCopy c("qwen2_gqa");
    c.edit_config("\"intermediate_size\": 96", "\"intermediate_size\": 97");
    expect_error(run_qwen("info --model " + c.dir), {"mlp.gate_proj.weight", "[97, 64]", "[96, 64]"});
  }
  {
    ModelCopy c("qwen2_gqa");
    c.edit_config("\"Qwen2ForCausalLM\"", "\"GPT2LMHeadModel\"");
    c.edit_config("\"model_type\": \"qwen2\"", "\"model_type\": \"gpt2\"");
    expect_error(run_qwen("info --model " + c.dir), {"GPT2LMHeadModel", "supported"});
  }
  {
    ModelCopy c("rope_yarn");
    c.edit_config("\"rope_type\": \"yarn\"", "\"rope_type\": \"wobbly\"");
    expect_error(run_qwen("info --model " + c.dir), {"wobbly"});
  }
  {
    ModelCopy c("qwen2_gqa");
    c.edit_config("\"hidden_size\": 64,", "\"hidden_size\": 64,,");
    expect_error(run_qwen("info --model " + c.dir), {"config.json"});
  }
}

TEST(CliErrors, BadPrompts) {
  const std::string m = model("qwen2_gqa");  // vocab 160, context 64
  expect_error(run_qwen("generate --model " + m + " --prompt-ids 5,160"), {"160", "vocab"});
  expect_error(run_qwen("generate --model " + m + " --prompt-ids 5,x7"), {"x7"});
  std::vector<int32_t> long_prompt(70, 3);
  expect_error(run_qwen("generate --model " + m + " --prompt-ids " + join_ids(long_prompt) + " --max-new-tokens 4"),
               {"context"});
  expect_error(run_qwen("generate --model " + m + " --prompt hello"), {"tokenizer.json"});
  TempDir td;
  std::ofstream(td.str("ids.txt")) << "1 2 999\n";
  expect_error(run_qwen("eval --model " + m + " --ids-file " + td.str("ids.txt")), {"999"});
}

}  // namespace
