// tokenizer/regex.cpp — PCRE2 behind the pre-tokenizer's Regex (see regex.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include "qwen/error.h"

namespace qwen::tok {

namespace {

// Unicode White_Space, the meaning of \s in Oniguruma (PCRE2's \s also takes U+180E).
constexpr const char* kSpaceItems = "\\x{9}-\\x{d}\\x{85}\\p{Z}";
// Oniguruma's \w: Alphabetic, marks, decimal digits, connector punctuation, and (from its
// Latin-1 table) the superscripts and vulgar fractions of U+00B2..U+00BE.
constexpr const char* kWordItems =
    "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{b2}\\x{b3}\\x{b9}\\x{bc}-\\x{be}";

// Match data, JIT stack and match context, one set per thread (a Regex is shared by threads).
struct ThreadMatch {
  pcre2_match_data* md = nullptr;
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* ctx = nullptr;
  pcre2_match_context* big = nullptr;  // the interpreter's fallback for huge inputs
  ThreadMatch() {
    md = pcre2_match_data_create(16, nullptr);
    ctx = pcre2_match_context_create(nullptr);
    // address space only; pages are committed as the JIT code uses them
    stack = pcre2_jit_stack_create(64 * 1024, 512 * 1024 * 1024, nullptr);
    if (ctx && stack) pcre2_jit_stack_assign(ctx, nullptr, stack);
    if (ctx) pcre2_set_match_limit(ctx, 0xFFFFFFFFu);  // long whitespace runs backtrack a lot
    big = pcre2_match_context_create(nullptr);
    if (big) {
      pcre2_set_match_limit(big, 0xFFFFFFFFu);
      pcre2_set_depth_limit(big, 0xFFFFFFFFu);
      pcre2_set_heap_limit(big, 8u * 1024 * 1024);  // KiB: 8 GiB
    }
  }
  ~ThreadMatch() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(ctx);
    pcre2_match_context_free(big);
    pcre2_jit_stack_free(stack);
  }
};
ThreadMatch& thread_match() {
  thread_local ThreadMatch tm;
  return tm;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof buf);
  return n < 0 ? "error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buf));
}

}  // namespace

std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char d = p[i + 1];
      ++i;
      const std::string sp = kSpaceItems, w = kWordItems;
      if (d == 's') {
        out += in_class ? sp : "[" + sp + "]";
      } else if (d == 'S' && !in_class) {
        out += "[^" + sp + "]";
      } else if (d == 'w') {
        out += in_class ? w : "[" + w + "]";
      } else if (d == 'W' && !in_class) {
        out += "[^" + w + "]";
      } else if (d == 'b' && !in_class) {
        out += "(?:(?<=[" + w + "])(?![" + w + "])|(?<![" + w + "])(?=[" + w + "]))";
      } else if (d == 'B' && !in_class) {
        out += "(?:(?<=[" + w + "])(?=[" + w + "])|(?<![" + w + "])(?![" + w + "]))";
      } else {
        out += c;
        out += d;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // a ']' right after '[' or '[^' is a literal
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      size_t e = p.find(":]", i + 2);
      if (e != std::string::npos) {
        out.append(p, i, e + 2 - i);
        i = e + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  std::string pc = onig_to_pcre2(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pc.data()), pc.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!code) {
    throw Error("tokenizer: cannot compile the pre-tokenizer regex \"" + pattern + "\": " +
                pcre2_message(err) + " (near offset " + std::to_string(off) +
                " of the rewritten pattern); fix the pattern in tokenizer.json");
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

bool Regex::find(std::string_view text, size_t from, size_t& start, size_t& end) const {
  ThreadMatch& tm = thread_match();
  auto* code = static_cast<pcre2_code*>(code_);
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc;
  if (jit_) {
    rc = pcre2_jit_match(code, subject, text.size(), from, 0, tm.md, tm.ctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // very long runs: the interpreter uses the heap
      rc = pcre2_match(code, subject, text.size(), from, PCRE2_NO_JIT | PCRE2_NO_UTF_CHECK, tm.md,
                       tm.big);
  } else {
    rc = pcre2_match(code, subject, text.size(), from, PCRE2_NO_UTF_CHECK, tm.md, nullptr);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    throw Error("tokenizer: the pre-tokenizer regex failed at byte " + std::to_string(from) +
                " of a " + std::to_string(text.size()) + "-byte text: " + pcre2_message(rc) +
                "; split the input into smaller pieces");
  }
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(tm.md);
  start = ov[0];
  end = ov[1];
  return true;
}

}  // namespace qwen::tok
