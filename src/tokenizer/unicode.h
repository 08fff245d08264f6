// tokenizer/unicode.h — the Unicode pieces the tokenizer needs: UTF-8 validation and decoding,
// lossy UTF-8 repair with U+FFFD exactly as Rust's String::from_utf8_lossy (maximal subparts),
// the GPT-2 byte <-> unicode table of byte-level BPE, and normalization (NFC/NFD/NFKC/NFKD through
// utf8proc) with a fast path that skips text NFC cannot change.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qwen::tok {

// GPT-2 byte-level table: byte b is written as code point byte_to_cp()[b].
const std::array<uint32_t, 256>& byte_to_cp();
// Inverse: the byte a code point stands for, or -1 when it is not one of the 256.
int cp_to_byte(uint32_t cp);

// Length of the longest valid UTF-8 prefix of s (s.size() when all of it is valid).
size_t utf8_valid_prefix(std::string_view s);
inline bool utf8_valid(std::string_view s) { return utf8_valid_prefix(s) == s.size(); }

// Decodes the code point at s[i] of VALID UTF-8 and advances i.
inline uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  uint32_t c = p[i];
  if (c < 0x80) { i += 1; return c; }
  if (c < 0xE0) { uint32_t r = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F); i += 2; return r; }
  if (c < 0xF0) {
    uint32_t r = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
    i += 3;
    return r;
  }
  uint32_t r = ((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) |
               (p[i + 3] & 0x3F);
  i += 4;
  return r;
}
// Byte length of the UTF-8 sequence that starts with lead byte c (1 for invalid leads).
inline size_t utf8_len(unsigned char c) {
  return c < 0x80 ? 1 : c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF8 ? 4 : 1;
}
void append_utf8(std::string& out, uint32_t cp);

// Appends in to out with every ill-formed part replaced by U+FFFD (one per maximal subpart, as
// Rust's from_utf8_lossy). When final is false an unfinished but so-far valid sequence at the
// very end is not consumed; returns the number of input bytes consumed.
size_t utf8_lossy_append(std::string& out, std::string_view in, bool final = true);
inline std::string utf8_lossy(std::string_view in) {
  std::string out;
  utf8_lossy_append(out, in, true);
  return out;
}

// Unicode White_Space (what Rust's char::is_whitespace and regex \s accept).
bool is_white_space(uint32_t cp);
// Rust regex \w: alphabetic, marks, decimal digits, connector punctuation, joiners.
bool is_word_char(uint32_t cp);

enum class NormForm { NFC, NFD, NFKC, NFKD };
// Appends the normalization of valid UTF-8 `in` to out. NFC skips every stretch of text that
// NFC leaves unchanged (checked per code point with a table built once from utf8proc's data).
void normalize_append(std::string& out, std::string_view in, NormForm form);

}  // namespace qwen::tok
