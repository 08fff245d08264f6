// tokenizer/pretok_fast.h — hand-written matchers for the three pre-tokenizer regexes that real
// byte-level tokenizers use (Qwen2/2.5/3, Llama 3, GPT-2's ByteLevel), giving exactly the pieces
// that the regex gives with Oniguruma's leftmost-first alternation and backtracking, about 10x
// faster than running the regex through PCRE2. Character classes: \s is Unicode White_Space,
// \p{L} / \p{N} come from utf8proc's general categories. Any other pattern goes through
// tok::Regex. Tests compare both on all of Unicode and on random text.
//
// Qwen2:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Llama3: the same with \p{N}{1,3}
// GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tokenizer/unicode.h"

namespace qwen::tok {

enum class KnownPattern : uint8_t { None, Qwen2, Llama3, Gpt2 };

// Which known regex a tokenizer.json pattern is (exact string comparison).
KnownPattern known_pattern(const std::string& pattern);

enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };
extern const uint8_t kAsciiClass[128];
uint8_t unicode_class(uint32_t cp);  // for cp >= 0x80

// Class of the code point at s[i] (valid UTF-8); len receives its byte length.
inline uint8_t class_at(std::string_view s, size_t i, size_t& len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    len = 1;
    return kAsciiClass[c];
  }
  size_t j = i;
  uint32_t cp = utf8_next(s, j);
  len = j - i;
  return unicode_class(cp);
}

// End of the piece that starts at i (< s.size()).
size_t next_piece(KnownPattern k, std::string_view s, size_t i);

template <class F>
void split_known(KnownPattern k, std::string_view s, F&& f) {
  size_t i = 0;
  while (i < s.size()) {
    size_t e = next_piece(k, s, i);
    f(i, e);
    i = e;
  }
}

}  // namespace qwen::tok
