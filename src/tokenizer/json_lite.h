// tokenizer/json_lite.h — a small, fast read-only JSON DOM for tokenizer.json (11 MB, ~600k values
// for Qwen): strings are views into the source text unless they hold escapes, containers keep
// their members in file order in flat arrays. About 7x faster than building an nlohmann::json for
// the same file. Malformed input (bad syntax, invalid UTF-8, nesting deeper than 256) throws
// qwen::Error naming the byte offset.
#pragma once
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace qwen::tok::jl {

enum class Type : uint8_t { Null, Bool, Int, Float, String, Array, Object };

class Document;

struct Value {
  Type type = Type::Null;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string_view s;     // String
  uint32_t first = 0;     // Array / Object: index of the first member in Document::members_
  uint32_t count = 0;     // number of members
};

class Document {
 public:
  // what: prefix of error messages ("tokenizer.json")
  Document(std::string_view text, const std::string& what);

  const Value& root() const { return nodes_[0]; }
  // Members of an array or object (object members come with their keys).
  const Value& at(const Value& v, uint32_t k) const { return nodes_[members_[v.first + k]]; }
  std::string_view key(const Value& v, uint32_t k) const { return keys_[v.first + k]; }
  // Object member by key (first match), or nullptr.
  const Value* find(const Value& obj, std::string_view key) const;

 private:
  uint32_t parse_value(int depth);
  std::string_view parse_string();
  [[noreturn]] void fail(const std::string& msg) const;
  void skip_ws() {
    while (pos_ < text_.size()) {
      char c = text_[pos_];
      if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
      ++pos_;
    }
  }

  std::string_view text_;
  std::string what_;
  size_t pos_ = 0;
  std::vector<Value> nodes_;
  std::vector<uint32_t> members_;        // node index of each member, containers contiguous
  std::vector<std::string_view> keys_;   // parallel to members_ ("" for array members)
  std::vector<uint32_t> stack_;          // members of the containers being parsed
  std::vector<std::string_view> key_stack_;
  std::deque<std::string> arena_;        // unescaped strings
};

// A (document, value) handle with the accessors the loaders use.
class Node {
 public:
  Node() = default;
  Node(const Document* d, const Value* v) : d_(d), v_(v) {}
  bool exists() const { return v_ != nullptr; }
  Type type() const { return v_ ? v_->type : Type::Null; }
  bool is_null() const { return !v_ || v_->type == Type::Null; }
  bool is_bool() const { return v_ && v_->type == Type::Bool; }
  bool is_int() const { return v_ && v_->type == Type::Int; }
  bool is_number() const { return v_ && (v_->type == Type::Int || v_->type == Type::Float); }
  bool is_string() const { return v_ && v_->type == Type::String; }
  bool is_array() const { return v_ && v_->type == Type::Array; }
  bool is_object() const { return v_ && v_->type == Type::Object; }
  bool boolean() const { return v_->b; }
  int64_t integer() const { return v_->i; }
  double number() const { return v_->d; }
  std::string_view str() const { return v_->s; }
  uint32_t size() const { return (is_array() || is_object()) ? v_->count : 0; }
  Node operator[](uint32_t k) const { return Node(d_, &d_->at(*v_, k)); }
  std::string_view key(uint32_t k) const { return d_->key(*v_, k); }
  // member of an object (absent: a Node that does not exist)
  Node get(std::string_view key) const { return Node(d_, v_ ? d_->find(*v_, key) : nullptr); }

 private:
  const Document* d_ = nullptr;
  const Value* v_ = nullptr;
};

inline Node root(const Document& d) { return Node(&d, &d.root()); }

}  // namespace qwen::tok::jl
