// tests/test_tokenizer.cpp — golden tests of qwen::Tokenizer against Hugging Face `tokenizers`:
// ids (with and without special tokens) and decodes for the real Qwen3 tokenizer and for small
// tokenizers built with the reference library (Llama-3 style, GPT-2 style, every Split
// behaviour, char-level BPE with [UNK] / byte fallback), on hard cases and real paragraphs.
// Golden files: tests/data/tokenizer/golden/, made by tests/data/tokenizer/make_golden.py.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/cpu.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"

using nlohmann::json;

namespace {

const std::string kData = std::string(QWEN_TEST_DATA) + "/tokenizer";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json load_json(const std::string& rel) { return json::parse(read_file(kData + "/" + rel)); }

const std::map<std::string, std::string>& texts() {
  static const std::map<std::string, std::string> t = [] {
    std::map<std::string, std::string> m;
    json j = load_json("golden/cases.json");
    for (auto it = j.begin(); it != j.end(); ++it) m[it.key()] = it.value().get<std::string>();
    return m;
  }();
  return t;
}

const qwen::Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, qwen::Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, qwen::Tokenizer::from_dir(kData + "/" + name)).first;
  return it->second;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string stream_decode(const qwen::Tokenizer& tok, const std::vector<int32_t>& ids, bool skip,
                          bool* all_valid) {
  qwen::StreamDecoder sd(tok, skip);
  std::string out;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    // every piece is complete UTF-8 on its own
    for (size_t i = 0; i < piece.size();) {
      unsigned char c = static_cast<unsigned char>(piece[i]);
      size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      if (i + len > piece.size()) *all_valid = false;
      for (size_t k = 1; k < len && i + k < piece.size(); ++k)
        if ((static_cast<unsigned char>(piece[i + k]) & 0xC0) != 0x80) *all_valid = false;
      i += len;
    }
    out += piece;
  }
  out += sd.flush();
  return out;
}

void check_golden(const std::string& golden_name, bool lossless) {
  json g = load_json("golden/" + golden_name + ".json");
  const qwen::Tokenizer& tok = tokenizer(g["tokenizer"].get<std::string>());
  std::vector<std::string> batch;
  std::vector<std::vector<int32_t>> want_batch;
  for (const json& c : g["cases"]) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE(golden_name + " / " + name);
    ASSERT_TRUE(texts().count(name)) << "case text missing";
    const std::string& text = texts().at(name);
    // absent fields take their defaults (see make_golden.py)
    const std::vector<int32_t> ids = ids_of(c["ids"]);
    std::vector<int32_t> ids_sp = c.contains("ids_special") ? ids_of(c["ids_special"]) : ids;
    if (c.contains("special_prefix")) {
      ids_sp = ids_of(c["special_prefix"]);
      ids_sp.insert(ids_sp.end(), ids.begin(), ids.end());
      for (int32_t id : ids_of(c["special_suffix"])) ids_sp.push_back(id);
    }
    const std::string norm = c.contains("normalized") ? c["normalized"].get<std::string>() : text;
    std::string decoded = c.contains("decoded") ? c["decoded"].get<std::string>() : norm;
    if (c.contains("decoded_prefix"))
      decoded = c["decoded_prefix"].get<std::string>() + norm + c["decoded_suffix"].get<std::string>();
    const std::string decoded_skip =
        c.contains("decoded_skip") ? c["decoded_skip"].get<std::string>() : decoded;
    EXPECT_EQ(tok.encode(text, false), ids);
    EXPECT_EQ(tok.encode(text, true), ids_sp);
    EXPECT_EQ(tok.decode(ids_sp, false), decoded);
    EXPECT_EQ(tok.decode(ids_sp, true), decoded_skip);
    bool valid = true;
    EXPECT_EQ(stream_decode(tok, ids_sp, false, &valid), decoded);
    EXPECT_EQ(stream_decode(tok, ids_sp, true, &valid), decoded_skip);
    EXPECT_TRUE(valid) << "a streamed piece was not complete UTF-8";
    if (lossless) {
      EXPECT_EQ(tok.decode(tok.encode(text, false)), norm) << "decode(encode(x)) != normalized x";
    }
    batch.push_back(text);
    want_batch.push_back(ids_sp);
  }
  // the same through encode_batch, on 1 and 2 threads
  for (int nt : {1, 2}) {
    int old = qwen::num_threads();
    qwen::set_num_threads(nt);
    auto got = tok.encode_batch(batch, true);
    qwen::set_num_threads(old);
    ASSERT_EQ(got.size(), want_batch.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want_batch[i]) << "batch item " << i;
  }
}

}  // namespace

TEST(TokenizerGolden, Qwen3) { check_golden("qwen3", true); }
TEST(TokenizerGolden, Llama3StyleIgnoreMergesStringMergesLstripRstrip) { check_golden("llama3_style", false); }
TEST(TokenizerGolden, Gpt2StyleByteLevelRegexPrefixSpaceNfkc) { check_golden("gpt2_style", false); }
TEST(TokenizerGolden, SplitRemoved) { check_golden("split_removed", false); }
TEST(TokenizerGolden, SplitMergedWithPrevious) { check_golden("split_merged_prev", false); }
TEST(TokenizerGolden, SplitMergedWithNext) { check_golden("split_merged_next", true); }
TEST(TokenizerGolden, SplitContiguousInverted) { check_golden("split_contiguous_invert", true); }
TEST(TokenizerGolden, SplitEmptyMatches) { check_golden("split_empty_matches", true); }
TEST(TokenizerGolden, CharLevelUnk) { check_golden("charlevel_unk", false); }
TEST(TokenizerGolden, CharLevelByteFallback) { check_golden("charlevel_bytefallback", false); }

TEST(TokenizerGolden, Qwen3DecodeRandomIdsReplacesBrokenUtf8) {
  json g = load_json("golden/qwen3_decode.json");
  const qwen::Tokenizer& tok = tokenizer("qwen3");
  for (const json& l : g["lists"]) {
    std::vector<int32_t> ids = ids_of(l["ids"]);
    EXPECT_EQ(tok.decode(ids, false), l["decoded"].get<std::string>()) << l["ids"].dump();
    EXPECT_EQ(tok.decode(ids, true), l["decoded_skip"].get<std::string>()) << l["ids"].dump();
    bool valid = true;
    EXPECT_EQ(stream_decode(tok, ids, false, &valid), l["decoded"].get<std::string>()) << l["ids"].dump();
    EXPECT_TRUE(valid);
  }
}

TEST(TokenizerGolden, Qwen3ChatTemplateMatchesTransformers) {
  json g = load_json("golden/qwen3_chat.json");
  const qwen::Tokenizer& tok = tokenizer("qwen3");
  for (const json& c : g["chats"]) {
    std::vector<std::pair<std::string, std::string>> msgs;
    for (const json& m : c["messages"]) msgs.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    EXPECT_EQ(tok.apply_chat_template(msgs, c["add_generation_prompt"].get<bool>()),
              c["text"].get<std::string>())
        << c["messages"].dump();
  }
}

TEST(TokenizerGolden, Qwen25StyleDefaultSystemMessage) {
  json g = load_json("golden/qwen25_style_chat.json");
  qwen::Tokenizer tok = qwen::Tokenizer::from_json(read_file(kData + "/qwen3/tokenizer.json"),
                                                   read_file(kData + "/" + g["config"].get<std::string>()));
  for (const json& c : g["chats"]) {
    std::vector<std::pair<std::string, std::string>> msgs;
    for (const json& m : c["messages"]) msgs.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    EXPECT_EQ(tok.apply_chat_template(msgs, c["add_generation_prompt"].get<bool>()), c["text"].get<std::string>())
        << c["messages"].dump();
  }
}

TEST(Tokenizer, Qwen3Api) {
  const qwen::Tokenizer& tok = tokenizer("qwen3");
  EXPECT_EQ(tok.vocab_size(), 151669);
  EXPECT_EQ(tok.bos_id(), -1);                // bos_token: null
  EXPECT_EQ(tok.eos_id(), 151645);            // <|im_end|>
  EXPECT_EQ(tok.pad_id(), 151643);            // <|endoftext|>
  EXPECT_EQ(tok.stop_ids(), (std::vector<int32_t>{151645, 151643}));
  EXPECT_EQ(tok.token_to_id("\xC4\xA0world"), 1879);  // "Ġworld"
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), 151644);
  EXPECT_EQ(tok.token_to_id("no such token"), -1);
  EXPECT_EQ(tok.id_to_token(1879), "\xC4\xA0world");
  EXPECT_EQ(tok.token_bytes(1879), " world");
  EXPECT_TRUE(tok.is_special(151645));
  EXPECT_FALSE(tok.is_special(151667));  // <think> is an added token, not special
  EXPECT_FALSE(tok.is_special(1879));
  // The docstring example of Qwen's tokenizer.
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{9707, 1879}));
  EXPECT_EQ(tok.encode(" Hello world"), (std::vector<int32_t>{21927, 1879}));
  // Copies share state and behave the same; moved-from is empty.
  qwen::Tokenizer copy = tok;
  EXPECT_EQ(copy.encode("abc def"), tok.encode("abc def"));
  qwen::Tokenizer moved = std::move(copy);
  EXPECT_EQ(moved.encode("abc def"), tok.encode("abc def"));
  EXPECT_THROW(copy.encode("x"), qwen::Error);
}

TEST(Tokenizer, Llama3StyleAddsBosThroughTemplate) {
  const qwen::Tokenizer& tok = tokenizer("llama3_style");
  int32_t bos = tok.token_to_id("<|begin_of_text|>");
  ASSERT_GE(bos, 0);
  EXPECT_EQ(tok.bos_id(), bos);
  auto a = tok.encode("hi there", true), b = tok.encode("hi there", false);
  ASSERT_EQ(a.size(), b.size() + 1);
  EXPECT_EQ(a[0], bos);
  EXPECT_EQ(std::vector<int32_t>(a.begin() + 1, a.end()), b);
  // the chat template needs ChatML tokens this vocabulary lacks
  EXPECT_THROW(tok.apply_chat_template({{"user", "x"}}), qwen::Error);
}

TEST(Tokenizer, StreamDecoderHoldsBackPartialUtf8) {
  const qwen::Tokenizer& tok = tokenizer("qwen3");
  // "€" is E2 82 AC: the single-byte token of each byte
  auto byte_id = [&](unsigned char b) {
    for (int32_t id = 0; id < 256 * 4; ++id)
      if (tok.token_bytes(id) == std::string(1, char(b))) return id;
    return -1;
  };
  int32_t e2 = byte_id(0xE2), x82 = byte_id(0x82), xac = byte_id(0xAC);
  ASSERT_GE(e2, 0);
  ASSERT_GE(x82, 0);
  ASSERT_GE(xac, 0);
  qwen::StreamDecoder sd(tok);
  EXPECT_EQ(sd.push(e2), "");
  EXPECT_EQ(sd.push(x82), "");
  EXPECT_EQ(sd.push(xac), "\xE2\x82\xAC");
  EXPECT_EQ(sd.push(e2), "");
  EXPECT_EQ(sd.push(tok.token_to_id("a")), "\xEF\xBF\xBD" "a");  // E2 then 'a': broken -> U+FFFD
  EXPECT_EQ(sd.push(e2), "");
  EXPECT_EQ(sd.flush(), "\xEF\xBF\xBD");  // unfinished at the end
  qwen::StreamDecoder sd2(tok, /*skip_special_tokens=*/true);
  EXPECT_EQ(sd2.push(151645), "");
  EXPECT_EQ(sd2.push(tok.token_to_id("a")), "a");
  qwen::StreamDecoder sd3(tok, /*skip_special_tokens=*/false);
  EXPECT_EQ(sd3.push(151645), "<|im_end|>");
  EXPECT_EQ(sd3.push(-5), "");           // unknown ids are skipped, like decode
  EXPECT_EQ(sd3.push(99999999), "");
}

TEST(Tokenizer, DecodeSkipsUnknownIds) {
  const qwen::Tokenizer& tok = tokenizer("qwen3");
  EXPECT_EQ(tok.decode({9707, -1, 151700, 1879}), "Hello world");  // 151700: beyond the vocabulary
}
