// tests/test_tokenizer_errors.cpp — bad input never crashes the tokenizer: malformed, truncated or
// unsupported tokenizer.json files and bad tokenizer_config.json give one-line qwen::Error
// messages that say what is wrong (naming unknown component types); invalid UTF-8 input is an
// error; empty, huge and pathological inputs give correct results.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qwen/error.h"
#include "qwen/tokenizer.h"

namespace {

const std::string kData = std::string(QWEN_TEST_DATA) + "/tokenizer";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The message of the qwen::Error that f throws ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const qwen::Error& e) {
    return e.what();
  }
  return "";
}

// A small valid tokenizer.json (the reference-trained Llama-3 style one), as JSON to edit.
nlohmann::json small() { return nlohmann::json::parse(read_file(kData + "/llama3_style/tokenizer.json")); }

std::string load_error(const nlohmann::json& j) {
  return error_of([&] { qwen::Tokenizer::from_json(j.dump()); });
}

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == std::string::npos; }

}  // namespace

TEST(TokenizerErrors, MalformedJson) {
  for (const char* bad : {"", "{", "[]", "null", "{\"model\": 5}", "{\"model\": {}}", "{\"a\": 1,}",
                          "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}",
                          "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}",
                          "\"\\ud800\"", "{\"version\": \"2.0\", \"model\": {\"vocab\": {}}}"}) {
    std::string msg = error_of([&] { qwen::Tokenizer::from_json(bad); });
    EXPECT_TRUE(one_line(msg)) << "input: " << bad << " message: " << msg;
    EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  }
}

TEST(TokenizerErrors, TruncatedFiles) {
  const std::string full = read_file(kData + "/llama3_style/tokenizer.json");
  for (size_t cut : {size_t(1), size_t(17), size_t(200), full.size() / 3, full.size() / 2, full.size() - 2}) {
    std::string msg = error_of([&] { qwen::Tokenizer::from_json(full.substr(0, cut)); });
    EXPECT_TRUE(one_line(msg)) << "cut at " << cut;
    EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
  }
  // invalid UTF-8 inside a string of the file
  std::string bad = full;
  bad[bad.find("\"merges\"") + 3] = '\xFF';
  EXPECT_NE(error_of([&] { qwen::Tokenizer::from_json(bad); }).find("UTF-8"), std::string::npos);
}

TEST(TokenizerErrors, UnsupportedComponentsAreNamed) {
  auto j = small();
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(load_error(j).find("\"WordPiece\""), std::string::npos) << load_error(j);
  j = small();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_NE(load_error(j).find("\"Whitespace\""), std::string::npos) << load_error(j);
  j = small();
  j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Metaspace"}, {"replacement", "_"}};
  EXPECT_NE(load_error(j).find("\"Metaspace\""), std::string::npos) << load_error(j);
  j = small();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}};
  EXPECT_NE(load_error(j).find("\"Lowercase\""), std::string::npos) << load_error(j);
  j = small();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(load_error(j).find("decoder type \"WordPiece\""), std::string::npos) << load_error(j);
  j = small();
  j["post_processor"] = {{"type", "Fancy"}};
  EXPECT_NE(load_error(j).find("\"Fancy\""), std::string::npos) << load_error(j);
  j = small();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  EXPECT_NE(load_error(j).find("(unclosed"), std::string::npos) << load_error(j);
  j = small();
  j["model"]["dropout"] = 0.1;
  EXPECT_NE(load_error(j).find("dropout"), std::string::npos);
  j = small();
  j["padding"] = {{"strategy", "BatchLongest"}};
  EXPECT_NE(load_error(j).find("padding"), std::string::npos);
}

TEST(TokenizerErrors, InconsistentModel) {
  auto j = small();
  j["model"]["merges"].push_back("notintheVOCAB x");
  EXPECT_NE(load_error(j).find("not in model.vocab"), std::string::npos) << load_error(j);
  j = small();
  j["model"]["merges"][0] = "a b c";
  EXPECT_NE(load_error(j).find("one space"), std::string::npos) << load_error(j);
  j = small();
  j["model"]["merges"][1] = nlohmann::json::array({"a", "b"});  // mixed formats
  EXPECT_FALSE(load_error(j).empty());
  j = small();
  j["model"]["unk_token"] = "<unk>";
  EXPECT_NE(load_error(j).find("<unk>"), std::string::npos);
  j = small();
  j["model"]["vocab"]["huge"] = 1 << 30;
  EXPECT_NE(load_error(j).find("token id"), std::string::npos) << load_error(j);
}

TEST(TokenizerErrors, ConfigAndDirectory) {
  std::string tj = read_file(kData + "/llama3_style/tokenizer.json");
  std::string msg = error_of([&] { qwen::Tokenizer::from_json(tj, "{\"eos_token\": 5}"); });
  EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;
  msg = error_of([&] { qwen::Tokenizer::from_json(tj, "{oops"); });
  EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;
  msg = error_of([] { qwen::Tokenizer::from_dir("/nonexistent/dir"); });
  EXPECT_NE(msg.find("/nonexistent/dir/tokenizer.json"), std::string::npos) << msg;
  EXPECT_THROW(qwen::Tokenizer().encode("x"), qwen::Error);  // empty Tokenizer
}

TEST(TokenizerErrors, InvalidUtf8Input) {
  qwen::Tokenizer tok = qwen::Tokenizer::from_dir(kData + "/llama3_style");
  for (std::string bad : {std::string("ab\xFF"), std::string("\xC3"), std::string("x\xED\xA0\x80y"),
                          std::string("\xF4\x90\x80\x80"), std::string("\xC0\xAF"), std::string("ok \xE2\x82")}) {
    std::string msg = error_of([&] { tok.encode(bad); });
    EXPECT_NE(msg.find("not valid UTF-8"), std::string::npos) << msg;
    EXPECT_THROW(tok.encode_batch({"fine", bad, "fine"}), qwen::Error);
  }
}

TEST(TokenizerErrors, EmptyAndPathologicalInputs) {
  qwen::Tokenizer tok = qwen::Tokenizer::from_dir(kData + "/qwen3");
  EXPECT_TRUE(tok.encode("").empty());
  EXPECT_TRUE(tok.encode_batch({}).empty());
  EXPECT_EQ(tok.decode({}), "");
  // one 300 KB word and a 300 KB whitespace run (the priority-queue BPE path; long regex
  // backtracking), NUL bytes: exact round trips
  for (std::string s : {std::string(300000, 'a'), std::string(300000, ' ') + "x",
                        std::string(1000, '\0') + "z", std::string(100000, '\n')}) {
    auto ids = tok.encode(s, false);
    EXPECT_EQ(tok.decode(ids), s);
    EXPECT_FALSE(ids.empty());
  }
}

TEST(TokenizerErrors, HundredMegabytes) {
  // 100 MB of real text (a paragraph repeated): the ids are the paragraph's ids repeated
  qwen::Tokenizer tok = qwen::Tokenizer::from_dir(kData + "/qwen3");
  nlohmann::json cases = nlohmann::json::parse(read_file(kData + "/golden/cases.json"));
  std::string para = cases["austen_1"].get<std::string>() + "\n\n";
  std::vector<int32_t> one = tok.encode(para, false);
  const size_t reps = (size_t(100) << 20) / para.size() + 1;
  std::string big;
  big.reserve(reps * para.size());
  for (size_t i = 0; i < reps; ++i) big += para;
  std::vector<int32_t> ids = tok.encode(big, false);
  ASSERT_EQ(ids.size(), one.size() * reps);
  for (size_t i = 0; i < ids.size(); i += one.size())
    ASSERT_TRUE(std::equal(one.begin(), one.end(), ids.begin() + std::ptrdiff_t(i))) << "at " << i;
}
