// tests/test_sft_task.cpp — the fine-tuning task generator scripts/make_sft_task.py
// (docs/finetune-task.md): every answer is recomputed here, independently, from its prompt for
// every kind; validation prompts never occur in the training file; the output is deterministic
// per seed and changes with it; the default mix has the documented kinds; `--task
// add,max,reverse` still reproduces the committed tests/data/finetune files byte for byte; bad
// --task / --n-train values are refused. Needs only python3 (standard library), which `make deps` installs.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

using namespace qwen_test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kScript = std::string(QWEN_TEST_DATA) + "/../../scripts/make_sft_task.py";

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs the generator into a fresh folder under the temp dir; returns the exit status.
int generate(const fs::path& out, const std::string& args) {
  fs::remove_all(out);
  const std::string cmd = "python3 '" + kScript + "' --out '" + out.string() + "' " + args + " >/dev/null 2>&1";
  return std::system(cmd.c_str());
}

std::vector<json> rows(const fs::path& p) {
  std::vector<json> out;
  std::ifstream f(p);
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> w;
  std::istringstream is(s);
  for (std::string t; is >> t;) w.push_back(t);
  return w;
}

std::string join(const std::vector<std::string>& w) {
  std::string s;
  for (size_t i = 0; i < w.size(); ++i) s += (i ? " " : "") + w[i];
  return s;
}

// The text after the first ": " of a prompt (the word list of the word kinds).
std::string after_colon(const std::string& p) {
  const size_t i = p.find(": ");
  return i == std::string::npos ? std::string() : p.substr(i + 2);
}

std::vector<long> numbers(const std::string& s) {
  std::vector<long> n;
  for (size_t i = 0; i < s.size();) {
    if (std::isdigit(static_cast<unsigned char>(s[i]))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      n.push_back(std::stol(s.substr(i, j - i)));
      i = j;
    } else {
      ++i;
    }
  }
  return n;
}

// The correct answer text (after "ANSWER: ") of one example, computed from its prompt.
std::string expected(const std::string& kind, const std::string& prompt) {
  const std::vector<std::string> w = words(after_colon(prompt));
  if (kind == "mask") return join(std::vector<std::string>(w.size(), "X"));
  if (kind == "copy") return join(w);
  if (kind == "first") return w.empty() ? "" : w.front();
  if (kind == "last") return w.empty() ? "" : w.back();
  if (kind == "count") return std::to_string(w.size());
  if (kind == "reverse") return join(std::vector<std::string>(w.rbegin(), w.rend()));
  const std::vector<long> n = numbers(prompt);
  if (kind == "parity" && n.size() == 1) return n[0] % 2 ? "odd" : "even";
  if (kind == "next" && n.size() == 1) return std::to_string(n[0] + 1);
  if (kind == "add" && n.size() == 2) return std::to_string(n[0] + n[1]);
  if (kind == "max" && n.size() == 2) return std::to_string(std::max(n[0], n[1]));
  return "<unknown kind " + kind + ">";
}

fs::path tmp(const std::string& name) { return fs::temp_directory_path() / ("qwen_test_sft_task_" + name); }

}  // namespace

TEST(SftTask, EveryAnswerIsRightAndValNeverInTrain) {
  const fs::path out = tmp("all");
  ASSERT_EQ(generate(out, "--task all --n-train 1500 --n-val 250 --seed 11"), 0) << kScript;
  const auto train = rows(out / "train.jsonl"), val = rows(out / "val.jsonl");
  ASSERT_EQ(train.size(), 1500u);
  ASSERT_EQ(val.size(), 250u);
  std::map<std::string, int> per_kind;
  std::set<std::string> train_prompts;
  for (const auto& r : train) train_prompts.insert(r.at("prompt").get<std::string>());
  EXPECT_EQ(train_prompts.size(), train.size()) << "duplicate training prompts";
  for (const auto* set : {&train, &val})
    for (const auto& r : *set) {
      const std::string kind = r.at("kind"), prompt = r.at("prompt"), response = r.at("response");
      ++per_kind[kind];
      ASSERT_EQ(response.rfind("ANSWER: ", 0), 0u) << response;
      EXPECT_EQ(response.substr(8), expected(kind, prompt)) << kind << ": " << prompt;
    }
  for (const auto& r : val) EXPECT_EQ(train_prompts.count(r.at("prompt").get<std::string>()), 0u) << r.dump();
  const std::set<std::string> all = {"mask", "copy", "last", "first", "count", "parity", "next", "add", "max", "reverse"};
  EXPECT_EQ(per_kind.size(), all.size());
  for (const auto& k : all) EXPECT_GT(per_kind[k], 50) << k;
  fs::remove_all(out);
}

TEST(SftTask, DefaultMixDeterministicPerSeed) {
  const fs::path a = tmp("a"), b = tmp("b"), c = tmp("c");
  ASSERT_EQ(generate(a, "--n-train 400 --n-val 60 --seed 3"), 0);
  ASSERT_EQ(generate(b, "--n-train 400 --n-val 60 --seed 3"), 0);
  ASSERT_EQ(generate(c, "--n-train 400 --n-val 60 --seed 4"), 0);
  EXPECT_EQ(slurp(a / "train.jsonl"), slurp(b / "train.jsonl"));
  EXPECT_EQ(slurp(a / "val.jsonl"), slurp(b / "val.jsonl"));
  EXPECT_NE(slurp(a / "train.jsonl"), slurp(c / "train.jsonl"));
  std::set<std::string> kinds;
  for (const auto& r : rows(a / "train.jsonl")) kinds.insert(r.at("kind").get<std::string>());
  EXPECT_EQ(kinds, (std::set<std::string>{"mask", "copy", "last", "count", "parity"}));
  for (const auto& p : {a, b, c}) fs::remove_all(p);
}

TEST(SftTask, OldMixReproducesCommittedTestData) {
  const fs::path out = tmp("old");
  ASSERT_EQ(generate(out, "--task add,max,reverse --n-train 48 --n-val 12 --seed 7"), 0);
  EXPECT_EQ(slurp(out / "train.jsonl"), slurp(data_path("finetune/train.jsonl")));
  EXPECT_EQ(slurp(out / "val.jsonl"), slurp(data_path("finetune/val.jsonl")));
  fs::remove_all(out);
}

TEST(SftTask, BadTaskRefused) {
  EXPECT_NE(generate(tmp("bad1"), "--task nosuchkind"), 0);
  EXPECT_NE(generate(tmp("bad2"), "--task copy,copy"), 0);
  EXPECT_NE(generate(tmp("bad3"), "--n-train 0"), 0);
  for (const char* n : {"bad1", "bad2", "bad3"}) fs::remove_all(tmp(n));
}
