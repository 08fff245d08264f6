// tokenizer/tokenizer_impl.h — the loaded state behind qwen::Tokenizer (shared, immutable) and the
// per-thread scratch of encode. load.cpp fills it from tokenizer.json / tokenizer_config.json;
// tokenizer.cpp runs the pipeline over it.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "qwen/tokenizer.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretok_fast.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace qwen {

namespace tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest literal matching of added tokens (what `tokenizers` asks of aho-corasick).
class AddedMatcher {
 public:
  void add(std::string pattern, int32_t token_index);
  void finish();  // sorts the candidates of each first byte longest first
  bool empty() const { return patterns_.empty(); }
  // First match starting at or after `from`: [start, end) and the added-token index.
  bool find(std::string_view text, size_t from, size_t& start, size_t& end, int32_t& which) const;

 private:
  std::vector<std::string> patterns_;
  std::vector<int32_t> token_index_;
  std::array<std::vector<uint32_t>, 256> by_first_;
  std::array<bool, 256> is_first_{};
  int n_first_ = 0;
  unsigned char only_first_ = 0;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreTokStep {
  enum Kind { Split, ByteLevel } kind = Split;
  // Split
  std::shared_ptr<Regex> regex;  // null: literal pattern
  KnownPattern known = KnownPattern::None;  // regex is one with a hand-written matcher
  std::string literal;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  // ByteLevel
  bool add_prefix_space = false;
  bool use_regex = false;
};

struct EncodeScratch {
  uint64_t owner = 0;
  BpeScratch bpe;
  std::string norm_a, norm_b;
  std::vector<std::string> pieces_a, pieces_b;
  std::vector<int32_t> body;
};

}  // namespace tok

struct Tokenizer::Impl {
  uint64_t uid = 0;  // distinguishes instances for the per-thread caches

  // model
  tok::BpeModel bpe;
  std::vector<std::string> id_token;  // token string as in tokenizer.json ("" where no id)
  std::vector<std::string> id_bytes;  // what each id decodes to (before UTF-8 repair)
  std::vector<uint8_t> id_known;      // id exists
  std::vector<uint8_t> id_special;    // an added token marked special
  tok::StrIdMap token_map;            // token string -> id (added tokens take precedence)

  // added tokens
  std::vector<tok::AddedToken> added;
  tok::AddedMatcher raw_matcher;   // normalized == false: matched on the input text
  tok::AddedMatcher norm_matcher;  // normalized == true: matched on normalized text

  // normalizer, pre-tokenizer
  std::vector<tok::NormForm> normalizers;
  std::vector<tok::PreTokStep> pretok;
  std::shared_ptr<tok::Regex> gpt2_regex;    // ByteLevel(use_regex)
  const tok::Regex* fast_regex = nullptr;    // pipeline = one Isolated regex split + byte mapping
  tok::KnownPattern fast_known = tok::KnownPattern::None;  // fast_regex has a hand-written matcher
  // fast_regex is one of the known patterns (Qwen2, Llama 3, GPT-2) in which a piece always ends
  // between an ASCII letter and a space followed by a letter: long texts are cut there and the
  // parts encoded in parallel.
  bool splittable = false;
  bool fast_no_pretok = false;               // no pre-tokenizer: the segment is one piece

  // post-processor
  bool has_template = false;
  std::vector<int32_t> prefix_ids, suffix_ids;

  // decoder
  bool byte_level_decoder = false;  // otherwise tokens are joined with " "

  // truncation (tokenizer.json "truncation")
  int64_t trunc_max_length = -1;
  bool trunc_left = false;

  // tokenizer_config.json
  int32_t bos = -1, eos = -1, pad = -1;
  bool add_bos = false, add_eos = false;
  std::string default_system;  // default system prompt found in the chat template
  bool qwen3_thinking = false; // the template strips <think> blocks (Qwen3)

  int64_t vocab_size = 0;

  // encode of one text into out (appends)
  void encode_into(std::string_view text, bool add_special, std::vector<int32_t>& out,
                   tok::EncodeScratch& s) const;
  void encode_segment(std::string_view seg, std::vector<int32_t>& out, tok::EncodeScratch& s) const;
  void encode_pieces(std::string_view seg, std::vector<int32_t>& out, tok::EncodeScratch& s) const;
  void pretokenize_general(std::string_view seg, std::vector<int32_t>& out,
                           tok::EncodeScratch& s) const;
};

std::shared_ptr<const Tokenizer::Impl> load_tokenizer(const std::string& tokenizer_json,
                                                      const std::string& config_json);

}  // namespace qwen
