// tests/test_tokenizer_train.cpp — the byte-level BPE trainer: deterministic output (the same
// bytes on 1 or 2 threads, for any chunking, as the committed tests/data/tokenizer/trained/), a
// file Hugging Face `tokenizers` loads and encodes exactly as we do (golden/trained.json, made by
// make_golden.py running the reference library on our trained file), and its errors.
#include <gtest/gtest.h>

#include <filesystem>
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

qwen::BpeTrainOptions opts_700(int threads) {
  qwen::BpeTrainOptions o;
  o.vocab_size = 700;
  o.n_threads = threads;
  return o;
}

}  // namespace

TEST(TokenizerTrain, DeterministicAndLoadsLikeTheReference) {
  const std::string corpus = read_file(kData + "/train_corpus.txt");
  const std::string want_json = read_file(kData + "/trained/tokenizer.json");
  const std::string want_cfg = read_file(kData + "/trained/tokenizer_config.json");
  for (int nt : {1, 2}) {
    qwen::BpeTrainResult r = qwen::train_bpe({corpus}, opts_700(nt));
    EXPECT_EQ(r.tokenizer_json, want_json) << "threads " << nt;
    EXPECT_EQ(r.tokenizer_config_json, want_cfg) << "threads " << nt;
    EXPECT_EQ(r.vocab_size, 700);
    EXPECT_EQ(r.n_merges, 700 - 256 - 3);
  }
  // the reference library's ids with our trained file, on held-out text
  nlohmann::json g = nlohmann::json::parse(read_file(kData + "/golden/trained.json"));
  nlohmann::json texts = nlohmann::json::parse(read_file(kData + "/golden/cases.json"));
  qwen::Tokenizer tok = qwen::Tokenizer::from_json(want_json, want_cfg);
  EXPECT_EQ(tok.vocab_size(), g["vocab_size_loaded"].get<int64_t>());
  ASSERT_FALSE(g["cases"].empty());
  for (const auto& c : g["cases"]) {
    std::string text = texts[c["name"].get<std::string>()].get<std::string>();
    EXPECT_EQ(tok.encode(text, false), c["ids"].get<std::vector<int32_t>>()) << c["name"];
    EXPECT_EQ(tok.encode(text, true), c["ids_special"].get<std::vector<int32_t>>()) << c["name"];
  }
  // specials come last; eos/pad = <|endoftext|>; ChatML works
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 697);
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), 698);
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), 699);
  EXPECT_EQ(tok.eos_id(), 697);
  EXPECT_EQ(tok.pad_id(), 697);
  EXPECT_EQ(tok.apply_chat_template({{"user", "hi"}}), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(TokenizerTrain, ChunkedParallelCountingIsExact) {
  // ~1.4 MB: counted in 2 KB chunks on 2 threads or as one piece on 1 thread, same result
  const std::string corpus = read_file(kData + "/train_corpus.txt");
  std::string big;
  for (int i = 0; big.size() < (size_t(1) << 20); ++i) big += corpus + " variant " + std::to_string(i) + "\n";
  qwen::BpeTrainOptions a = opts_700(2), b = opts_700(1);
  a.chunk_bytes = 2048;
  b.chunk_bytes = int64_t(1) << 40;
  qwen::BpeTrainResult ra = qwen::train_bpe({big}, a), rb = qwen::train_bpe({big}, b);
  EXPECT_EQ(ra.tokenizer_json, rb.tokenizer_json);
  EXPECT_EQ(ra.n_merges, 700 - 256 - 3);
}

TEST(TokenizerTrain, SpecialTokensAreNotLearnedAndRoundTrip) {
  std::string corpus;
  for (int i = 0; i < 300; ++i) corpus += "hello world<|endoftext|>again and again<|im_end|>\n";
  qwen::BpeTrainOptions o;
  o.vocab_size = 300;
  qwen::BpeTrainResult r = qwen::train_bpe({corpus}, o);
  qwen::Tokenizer tok = qwen::Tokenizer::from_json(r.tokenizer_json, r.tokenizer_config_json);
  EXPECT_EQ(tok.vocab_size(), r.vocab_size);
  EXPECT_LT(r.vocab_size, 300);  // every word is one token before 300: training stops early
  EXPECT_EQ(tok.encode("hello", false).size(), 1u);
  EXPECT_EQ(tok.token_to_id("<|"), -1);       // nothing of the special tokens was merged
  EXPECT_EQ(tok.token_to_id("endoftext"), -1);
  auto ids = tok.encode("hello world<|endoftext|>", false);
  EXPECT_EQ(ids.back(), tok.token_to_id("<|endoftext|>"));
  EXPECT_EQ(tok.decode(ids), "hello world<|endoftext|>");
  EXPECT_EQ(tok.decode(tok.encode("caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80", false)),
            "caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80");  // unseen bytes still encode
}

TEST(TokenizerTrain, Errors) {
  qwen::BpeTrainOptions o;
  o.vocab_size = 100;
  EXPECT_THROW(qwen::train_bpe({"abc"}, o), qwen::Error);  // below 256 + specials
  o.vocab_size = 400;
  EXPECT_THROW(qwen::train_bpe({std::string("ab\xFF" "cd")}, o), qwen::Error);  // not UTF-8
  EXPECT_THROW(qwen::train_bpe_files({"/nonexistent/corpus.txt"}, "/tmp/x", o), qwen::Error);
  EXPECT_THROW(qwen::train_bpe_files({}, "/tmp/x", o), qwen::Error);
  // an empty corpus gives just the alphabet and the specials
  qwen::BpeTrainResult r = qwen::train_bpe({""}, o);
  EXPECT_EQ(r.vocab_size, 259);
  EXPECT_EQ(r.n_merges, 0);
}

TEST(TokenizerTrain, WritesFiles) {
  std::string dir = (std::filesystem::temp_directory_path() / ("qwen_tok_train_" + std::to_string(::getpid()))).string();
  std::string corpus_path = dir + "_corpus.txt";
  std::ofstream(corpus_path) << read_file(kData + "/train_corpus.txt");
  qwen::BpeTrainResult r = qwen::train_bpe_files({corpus_path}, dir, opts_700(0));
  EXPECT_EQ(read_file(dir + "/tokenizer.json"), read_file(kData + "/trained/tokenizer.json"));
  qwen::Tokenizer tok = qwen::Tokenizer::from_dir(dir);
  EXPECT_EQ(tok.vocab_size(), 700);
  std::filesystem::remove_all(dir);
  std::filesystem::remove(corpus_path);
}
