// tokenizer/regex.h — the pre-tokenizer's regular expressions: Oniguruma-syntax patterns from
// tokenizer.json run with PCRE2 (UTF + Unicode properties, JIT compiled), with the few semantic
// differences to Oniguruma removed (\s is exactly Unicode White_Space) and Oniguruma's rule for
// iterating over matches (an empty match right after the previous match is skipped).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace qwen::tok {

class Regex {
 public:
  // Throws qwen::Error (naming the pattern and the error position) for a pattern PCRE2 rejects.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  const std::string& pattern() const { return pattern_; }

  // Finds the first match at or after `from` in text (valid UTF-8). Returns false if none.
  bool find(std::string_view text, size_t from, size_t& start, size_t& end) const;

  // Calls f(start, end) for every match, iterating as Oniguruma's find_iter does.
  template <class F>
  void for_each_match(std::string_view text, F&& f) const {
    size_t pos = 0, last_match_end = size_t(-1);
    while (pos <= text.size()) {
      size_t s, e;
      if (!find(text, pos, s, e)) break;
      if (s == e && last_match_end == e) {
        // skip one character
        if (pos >= text.size()) break;
        unsigned char c = static_cast<unsigned char>(text[pos]);
        pos += c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        continue;
      }
      pos = e;
      last_match_end = e;
      f(s, e);
    }
  }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code*
  bool jit_ = false;
};

// The Oniguruma -> PCRE2 pattern rewrite (exposed for tests).
std::string onig_to_pcre2(const std::string& pattern);

}  // namespace qwen::tok
