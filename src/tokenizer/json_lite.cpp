// tokenizer/json_lite.cpp — recursive-descent JSON parser for json_lite.h (RFC 8259 grammar).
#include "tokenizer/json_lite.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "qwen/error.h"
#include "tokenizer/unicode.h"

namespace qwen::tok::jl {

namespace {
constexpr int kMaxDepth = 256;
}

Document::Document(std::string_view text, const std::string& what) : text_(text), what_(what) {
  nodes_.reserve(text.size() / 24 + 16);
  members_.reserve(text.size() / 24 + 16);
  keys_.reserve(text.size() / 24 + 16);
  uint32_t root = parse_value(0);
  (void)root;  // always node 0
  skip_ws();
  if (pos_ != text_.size()) fail("unexpected text after the end of the JSON value");
}

void Document::fail(const std::string& msg) const {
  size_t line = 1 + size_t(std::count(text_.begin(), text_.begin() + std::ptrdiff_t(std::min(pos_, text_.size())), '\n'));
  throw Error(what_ + ": not valid JSON at byte " + std::to_string(pos_) + " (line " +
              std::to_string(line) + "): " + msg + "; the file is truncated or corrupt");
}

const Value* Document::find(const Value& obj, std::string_view key) const {
  if (obj.type != Type::Object) return nullptr;
  for (uint32_t k = 0; k < obj.count; ++k)
    if (keys_[obj.first + k] == key) return &nodes_[members_[obj.first + k]];
  return nullptr;
}

std::string_view Document::parse_string() {
  // at the opening quote
  ++pos_;
  const size_t start = pos_;
  const char* p = text_.data();
  const size_t n = text_.size();
  while (pos_ < n) {
    unsigned char c = static_cast<unsigned char>(p[pos_]);
    if (c == '"') {
      std::string_view v(p + start, pos_ - start);
      if (!utf8_valid(v)) {
        pos_ = start + utf8_valid_prefix(v);
        fail("a string is not valid UTF-8");
      }
      ++pos_;
      return v;
    }
    if (c == '\\' || c < 0x20) break;
    ++pos_;
  }
  if (pos_ >= n) fail("unterminated string");
  // slow path: escapes
  std::string out(p + start, pos_ - start);
  while (true) {
    if (pos_ >= n) fail("unterminated string");
    unsigned char c = static_cast<unsigned char>(p[pos_]);
    if (c == '"') {
      ++pos_;
      break;
    }
    if (c < 0x20) fail("control character inside a string");
    if (c != '\\') {
      out.push_back(char(c));
      ++pos_;
      continue;
    }
    if (pos_ + 1 >= n) fail("unterminated escape");
    char e = p[pos_ + 1];
    pos_ += 2;
    switch (e) {
      case '"': out.push_back('"'); break;
      case '\\': out.push_back('\\'); break;
      case '/': out.push_back('/'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        auto hex4 = [&](uint32_t& v) {
          if (pos_ + 4 > n) fail("truncated \\u escape");
          v = 0;
          for (int k = 0; k < 4; ++k) {
            char h = p[pos_ + size_t(k)];
            v <<= 4;
            if (h >= '0' && h <= '9') v |= uint32_t(h - '0');
            else if (h >= 'a' && h <= 'f') v |= uint32_t(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') v |= uint32_t(h - 'A' + 10);
            else fail("bad \\u escape");
          }
          pos_ += 4;
        };
        uint32_t cp;
        hex4(cp);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (pos_ + 2 > n || p[pos_] != '\\' || p[pos_ + 1] != 'u') fail("lone surrogate in \\u escape");
          pos_ += 2;
          uint32_t lo;
          hex4(lo);
          if (lo < 0xDC00 || lo > 0xDFFF) fail("bad surrogate pair in \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          fail("lone surrogate in \\u escape");
        }
        append_utf8(out, cp);
        break;
      }
      default:
        fail(std::string("unknown escape \\") + e);
    }
  }
  if (!utf8_valid(out)) fail("a string is not valid UTF-8");
  arena_.push_back(std::move(out));
  return arena_.back();
}

uint32_t Document::parse_value(int depth) {
  skip_ws();
  if (pos_ >= text_.size()) fail("unexpected end of the text");
  if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
  const char c = text_[pos_];
  const uint32_t idx = uint32_t(nodes_.size());
  nodes_.emplace_back();
  if (c == '{' || c == '[') {
    const bool obj = c == '{';
    const char close = obj ? '}' : ']';
    nodes_[idx].type = obj ? Type::Object : Type::Array;
    ++pos_;
    const size_t mark = stack_.size();
    skip_ws();
    if (pos_ < text_.size() && text_[pos_] == close) {
      ++pos_;
    } else {
      while (true) {
        std::string_view key;
        if (obj) {
          skip_ws();
          if (pos_ >= text_.size() || text_[pos_] != '"') fail("expected a \"key\"");
          key = parse_string();
          skip_ws();
          if (pos_ >= text_.size() || text_[pos_] != ':') fail("expected ':'");
          ++pos_;
        }
        uint32_t child = parse_value(depth + 1);
        stack_.push_back(child);
        key_stack_.push_back(key);
        skip_ws();
        if (pos_ >= text_.size()) fail("unexpected end of the text");
        if (text_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (text_[pos_] == close) {
          ++pos_;
          break;
        }
        fail(obj ? "expected ',' or '}'" : "expected ',' or ']'");
      }
    }
    nodes_[idx].first = uint32_t(members_.size());
    nodes_[idx].count = uint32_t(stack_.size() - mark);
    members_.insert(members_.end(), stack_.begin() + std::ptrdiff_t(mark), stack_.end());
    keys_.insert(keys_.end(), key_stack_.begin() + std::ptrdiff_t(mark), key_stack_.end());
    stack_.resize(mark);
    key_stack_.resize(mark);
    return idx;
  }
  if (c == '"') {
    std::string_view s = parse_string();
    nodes_[idx].type = Type::String;
    nodes_[idx].s = s;
    return idx;
  }
  auto literal = [&](const char* word, Type t, bool b) {
    size_t len = std::strlen(word);
    if (text_.compare(pos_, len, word) != 0) fail("unexpected character");
    pos_ += len;
    nodes_[idx].type = t;
    nodes_[idx].b = b;
  };
  if (c == 't') { literal("true", Type::Bool, true); return idx; }
  if (c == 'f') { literal("false", Type::Bool, false); return idx; }
  if (c == 'n') { literal("null", Type::Null, false); return idx; }
  if (c == '-' || (c >= '0' && c <= '9')) {
    const size_t start = pos_;
    const size_t n = text_.size();
    bool neg = false, is_int = true, overflow = false;
    if (text_[pos_] == '-') {
      neg = true;
      ++pos_;
    }
    if (pos_ >= n || !(text_[pos_] >= '0' && text_[pos_] <= '9')) fail("bad number");
    uint64_t v = 0;
    if (text_[pos_] == '0') {
      ++pos_;
    } else {
      while (pos_ < n && text_[pos_] >= '0' && text_[pos_] <= '9') {
        uint64_t d = uint64_t(text_[pos_] - '0');
        if (v > (uint64_t(INT64_MAX) - d) / 10) overflow = true;
        else v = v * 10 + d;
        ++pos_;
      }
    }
    if (pos_ < n && text_[pos_] == '.') {
      is_int = false;
      ++pos_;
      if (pos_ >= n || !(text_[pos_] >= '0' && text_[pos_] <= '9')) fail("bad number");
      while (pos_ < n && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    }
    if (pos_ < n && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      is_int = false;
      ++pos_;
      if (pos_ < n && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (pos_ >= n || !(text_[pos_] >= '0' && text_[pos_] <= '9')) fail("bad number");
      while (pos_ < n && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    }
    Value& val = nodes_[idx];
    if (is_int && !overflow) {
      val.type = Type::Int;
      val.i = neg ? -int64_t(v) : int64_t(v);
      val.d = double(val.i);
    } else {
      std::string num(text_.substr(start, pos_ - start));
      val.type = Type::Float;
      val.d = std::strtod(num.c_str(), nullptr);
    }
    return idx;
  }
  fail("unexpected character");
}

}  // namespace qwen::tok::jl
