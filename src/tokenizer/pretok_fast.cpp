// tokenizer/pretok_fast.cpp — the hand-written pre-tokenizer matchers of pretok_fast.h. Each
// alternative of the regex is tried in order at the current position, with the outcome its
// greedy quantifiers and backtracking would have (worked out per alternative in comments).
#include "tokenizer/pretok_fast.h"

#include <utf8proc.h>

namespace qwen::tok {

namespace {

constexpr const char* kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

constexpr size_t npos = size_t(-1);

inline bool is_nl(char c) { return c == '\r' || c == '\n'; }

// End of the run of code points of class cls that starts at j (j itself not yet checked).
inline size_t run_end(std::string_view s, size_t j, uint8_t cls) {
  const size_t n = s.size();
  while (j < n) {
    const unsigned char c = static_cast<unsigned char>(s[j]);
    if (c < 0x80) {
      if (kAsciiClass[c] != cls) break;
      ++j;
      continue;
    }
    size_t len;
    if (class_at(s, j, len) != cls) break;
    j += len;
  }
  return j;
}

// 's 't 're 've 'm 'll 'd at s[i] == '\''; case-insensitive as Oniguruma folds (s also matches
// U+017F LATIN SMALL LETTER LONG S, the only non-ASCII character folding to one of these
// letters). Returns the end, or 0.
inline size_t contraction(std::string_view s, size_t i, bool ci) {
  const size_t n = s.size();
  if (i + 1 >= n) return 0;
  auto lower = [&](char c) { return ci && c >= 'A' && c <= 'Z' ? char(c + 32) : c; };
  const char c1 = lower(s[i + 1]);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
  if (ci && c1 == '\xC5' && i + 2 < n && s[i + 2] == '\xBF') return i + 3;  // U+017F
  if (i + 2 >= n) return 0;
  const char c2 = lower(s[i + 2]);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return i + 3;
  return 0;
}

// \s*[\r\n]+ , \s+(?!\S) , \s+ at a white-space code point s[i] of byte length l0, for the
// Qwen2/Llama3 patterns (with_newline_alt) or GPT-2's (without \s*[\r\n]+).
inline size_t whitespace_piece(std::string_view s, size_t i, size_t l0, bool with_newline_alt) {
  const size_t n = s.size();
  size_t e = i + l0, last_start = i, last_nl = is_nl(s[i]) ? i : npos;
  while (e < n) {
    size_t l;
    if (class_at(s, e, l) != kSpace) break;
    if (is_nl(s[e])) last_nl = e;
    last_start = e;
    e += l;
  }
  // \s*[\r\n]+: \s* backtracks to the last CR/LF of the run, [\r\n]+ takes it
  if (with_newline_alt && last_nl != npos) return last_nl + 1;
  // \s+(?!\S): the whole run at the end of the text, else all but its last code point
  if (e == n) return e;
  if (last_start > i) return last_start;
  return e;  // \s+ of a single code point before a non-space
}

}  // namespace

const uint8_t kAsciiClass[128] = {
    // 0x00-0x1F: controls; \t \n \v \f \r are white space
    0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    // 0x20-0x3F: space, punctuation, digits
    3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0,
    // 0x40-0x5F: @ A-Z [ \ ] ^ _
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
    // 0x60-0x7F: ` a-z { | } ~ DEL
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};

uint8_t unicode_class(uint32_t cp) {
  if (is_white_space(cp)) return kSpace;
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
      return kLetter;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
      return kNumber;
    default:
      return kOther;
  }
}

KnownPattern known_pattern(const std::string& p) {
  if (p == kQwen2) return KnownPattern::Qwen2;
  if (p == kLlama3) return KnownPattern::Llama3;
  if (p == kGpt2) return KnownPattern::Gpt2;
  return KnownPattern::None;
}

size_t next_piece(KnownPattern k, std::string_view s, size_t i) {
  const size_t n = s.size();
  size_t l0;
  const uint8_t c0 = class_at(s, i, l0);
  const char b0 = s[i];
  if (k == KnownPattern::Gpt2) {
    // 's|'t|'re|'ve|'m|'ll|'d
    if (b0 == '\'') {
      if (size_t e = contraction(s, i, false)) return e;
    }
    // ' ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+': an optional U+0020, then a run of one class
    if (b0 == ' ' && i + 1 < n) {
      size_t l1;
      uint8_t c1 = class_at(s, i + 1, l1);
      if (c1 != kSpace) return run_end(s, i + 1 + l1, c1);
    }
    if (c0 != kSpace) return run_end(s, i + l0, c0);
    return whitespace_piece(s, i, l0, false);
  }
  // Qwen2 / Llama3
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (b0 == '\'') {
    if (size_t e = contraction(s, i, true)) return e;
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c0 == kLetter) return run_end(s, i + l0, kLetter);
  if (!is_nl(b0) && c0 != kNumber && i + l0 < n) {
    size_t l1;
    if (class_at(s, i + l0, l1) == kLetter) return run_end(s, i + l0 + l1, kLetter);
  }
  // \p{N} | \p{N}{1,3}
  if (c0 == kNumber) {
    size_t e = i + l0;
    if (k == KnownPattern::Llama3) {
      for (int m = 1; m < 3 && e < n; ++m) {
        size_t l;
        if (class_at(s, e, l) != kNumber) break;
        e += l;
      }
    }
    return e;
  }
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const size_t j = b0 == ' ' ? i + 1 : i;
  if (j < n) {
    size_t l;
    if (class_at(s, j, l) == kOther) {
      size_t e = run_end(s, j + l, kOther);
      while (e < n && is_nl(s[e])) ++e;
      return e;
    }
  }
  // here s[i] is white space
  return whitespace_piece(s, i, l0, true);
}

}  // namespace qwen::tok
