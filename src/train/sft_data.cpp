// train/sft_data.cpp — instruction JSONL: parsing with file:line errors, ChatML rendering and
// piece-wise tokenisation with the assistant loss mask, truncation, greedy packing with a seeded
// per-epoch shuffle and a JSON position, the unpacked evaluation view and the exact-match
// scorer. See sft_data.h for the rules.
#include "train/sft_data.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/rng.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"

namespace qwen::train {

using json = nlohmann::json;

namespace {

const std::string kImStart = "<|im_start|>";
const std::string kImEnd = "<|im_end|>";

// JSON library messages quote the input; keep them on one printable line.
std::string one_line(std::string s, size_t max_len = 160) {
  const size_t tag = s.find("] ");
  if (s.rfind("[json.exception.", 0) == 0 && tag != std::string::npos) s = s.substr(tag + 2);
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  if (s.size() > max_len) s = s.substr(0, max_len) + "...";
  return s;
}

const char* json_type(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "a string";
}

// Content of a string field, with a clear error for anything else.
std::string get_string(const json& obj, const char* key, const std::string& where, const std::string& what) {
  const json& v = obj.at(key);
  if (!v.is_string())
    throw Error(where + ": " + what + " must be a string, not " + json_type(v));
  return v.get<std::string>();
}

uint64_t fnv1a(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) {
    h ^= b[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_ascii_space(s[b])) ++b;
  while (e > b && is_ascii_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// A rendered conversation cut into pieces: a piece is either one marker id or a text to
// encode; mask says whether its tokens are in the loss.
struct Piece {
  int32_t id = -1;   // >= 0: this single token
  std::string text;  // else: encode(text)
  bool mask = false;
  bool prompt_end = false;  // the header of an assistant turn: the eval prompt ends after it
};

// Render and cut. Every turn is <|im_start|> ROLE \n BODY <|im_end|> \n.
std::vector<Piece> render_pieces(const Tokenizer& tok, const ChatMessages& messages) {
  const int32_t start_id = tok.token_to_id(kImStart), end_id = tok.token_to_id(kImEnd);
  if (start_id < 0 || end_id < 0)
    throw Error("fine-tuning data needs a ChatML tokenizer with <|im_start|> and <|im_end|>; this "
                "vocabulary lacks them (use a Qwen tokenizer or train one with those special tokens)");
  const std::string text = tok.apply_chat_template(messages, false);
  std::vector<Piece> out;
  size_t pos = 0;
  auto broken = [&]() {
    return Error("the chat template rendered an unexpected layout at byte " + std::to_string(pos) +
                 " (expected <|im_start|>ROLE\\n...<|im_end|>\\n turns); this tokenizer's template is not ChatML");
  };
  while (pos < text.size()) {
    if (text.compare(pos, kImStart.size(), kImStart) != 0) throw broken();
    pos += kImStart.size();
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) throw broken();
    const std::string role = text.substr(pos, nl - pos);
    const bool assistant = role == "assistant";
    const size_t body = nl + 1;
    const size_t end = text.find(kImEnd, body);
    if (end == std::string::npos) throw broken();
    out.push_back({start_id, "", false, false});
    out.push_back({-1, text.substr(pos, body - pos), false, assistant});
    out.push_back({-1, text.substr(body, end - body), assistant, false});
    out.push_back({end_id, "", assistant, false});
    pos = end + kImEnd.size();
    if (pos >= text.size() || text[pos] != '\n') throw broken();
    out.push_back({-1, "\n", false, false});
    ++pos;
  }
  return out;
}

// Concatenate pieces whose texts are already encoded (enc[k] for the k-th text piece).
SftExample assemble(const std::vector<Piece>& pieces, const std::vector<std::vector<int32_t>>& enc,
                    size_t first_text) {
  SftExample ex;
  size_t k = first_text;
  for (const Piece& p : pieces) {
    if (p.id >= 0) {
      ex.ids.push_back(p.id);
      ex.loss_mask.push_back(p.mask ? 1 : 0);
      continue;
    }
    const auto& ids = enc[k++];
    ex.ids.insert(ex.ids.end(), ids.begin(), ids.end());
    ex.loss_mask.insert(ex.loss_mask.end(), ids.size(), p.mask ? 1 : 0);
    if (p.prompt_end) ex.n_prompt = int64_t(ex.ids.size());
  }
  return ex;
}

std::string last_assistant(const ChatMessages& m) {
  for (size_t i = m.size(); i-- > 0;)
    if (m[i].first == "assistant") return m[i].second;
  return "";
}

}  // namespace

int64_t SftExample::n_loss() const {
  int64_t n = 0;
  for (uint8_t m : loss_mask) n += m;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Parsing

ChatMessages parse_sft_line(const std::string& line, const std::string& where) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    throw Error(where + ": not valid JSON (" + one_line(e.what()) +
                "); each line must be one JSON object");
  }
  if (!j.is_object())
    throw Error(where + ": a line must be a JSON object, not " + json_type(j) +
                "; write {\"prompt\": ..., \"response\": ...} or {\"messages\": [...]}");
  const bool has_messages = j.contains("messages");
  const bool has_pair = j.contains("prompt") || j.contains("response");
  if (has_messages && has_pair)
    throw Error(where + ": has both \"messages\" and \"prompt\"/\"response\"; use one form per line");
  ChatMessages msgs;
  if (has_pair) {
    if (!j.contains("prompt")) throw Error(where + ": has \"response\" but no \"prompt\"; add the prompt");
    if (!j.contains("response")) throw Error(where + ": has \"prompt\" but no \"response\"; add the response");
    if (j.contains("system")) msgs.emplace_back("system", get_string(j, "system", where, "\"system\""));
    msgs.emplace_back("user", get_string(j, "prompt", where, "\"prompt\""));
    msgs.emplace_back("assistant", get_string(j, "response", where, "\"response\""));
    if (msgs.back().second.empty())
      throw Error(where + ": \"response\" is empty; every example needs an answer to learn");
  } else if (has_messages) {
    const json& arr = j["messages"];
    if (!arr.is_array())
      throw Error(where + ": \"messages\" must be an array of {\"role\", \"content\"} objects, not " +
                  json_type(arr));
    if (arr.empty()) throw Error(where + ": \"messages\" is empty; give at least a user and an assistant message");
    for (size_t i = 0; i < arr.size(); ++i) {
      const json& m = arr[i];
      const std::string at = where + ": message " + std::to_string(i + 1);
      if (!m.is_object())
        throw Error(at + " must be an object {\"role\", \"content\"}, not " + json_type(m));
      if (!m.contains("role")) throw Error(at + " has no \"role\"; add system, user or assistant");
      if (!m.contains("content")) throw Error(at + " has no \"content\"; add the text");
      const std::string role = get_string(m, "role", at, "\"role\"");
      if (role != "system" && role != "user" && role != "assistant")
        throw Error(at + " has unknown role '" + one_line(role, 40) +
                    "'; use system, user or assistant");
      std::string content = get_string(m, "content", at, "\"content\"");
      if (role == "assistant" && content.empty())
        throw Error(at + " is an empty assistant response; every assistant message needs text");
      msgs.emplace_back(role, std::move(content));
    }
    bool any_assistant = false;
    for (const auto& m : msgs) any_assistant |= m.first == "assistant";
    if (!any_assistant)
      throw Error(where + ": \"messages\" has no assistant message; nothing to learn from this line");
  } else {
    throw Error(where + ": needs \"prompt\" and \"response\", or \"messages\"; neither is present");
  }
  for (size_t i = 0; i < msgs.size(); ++i)
    for (const std::string* mk : {&kImStart, &kImEnd})
      if (msgs[i].second.find(*mk) != std::string::npos)
        throw Error(where + ": the " + msgs[i].first + " text contains the ChatML marker " + *mk +
                    ", which would break the conversation's structure; remove it");
  return msgs;
}

// ---------------------------------------------------------------------------------------------
// Tokenisation

SftExample tokenize_chat(const Tokenizer& tok, const ChatMessages& messages) {
  if (last_assistant(messages).empty())
    throw Error("fine-tuning example has no (non-empty) assistant message; nothing to learn");
  const auto pieces = render_pieces(tok, messages);
  std::vector<std::vector<int32_t>> enc;
  for (const Piece& p : pieces)
    if (p.id < 0) enc.push_back(tok.encode(p.text, false));
  SftExample ex = assemble(pieces, enc, 0);
  ex.reference = last_assistant(messages);
  return ex;
}

int32_t sft_pad_id(const Tokenizer& tok) {
  if (tok.eos_id() >= 0) return tok.eos_id();
  const int32_t e = tok.token_to_id("<|endoftext|>");
  return e >= 0 ? e : 0;
}

// ---------------------------------------------------------------------------------------------
// Data set

SftDataset SftDataset::load(const std::string& path, const Tokenizer& tok, const SftOptions& opt) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read fine-tuning data '" + path + "': " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error("cannot read fine-tuning data '" + path + "': read error");
  return from_text(ss.str(), path, tok, opt);
}

SftDataset SftDataset::from_text(const std::string& text, const std::string& source,
                                 const Tokenizer& tok, const SftOptions& opt) {
  if (opt.seq < 1) throw Error("--seq must be >= 1 for fine-tuning data");
  if (tok.token_to_id(kImStart) < 0 || tok.token_to_id(kImEnd) < 0)
    throw Error("fine-tuning data '" + source + "' needs a ChatML tokenizer with <|im_start|> and "
                "<|im_end|>; this vocabulary lacks them (use a Qwen tokenizer or train one with them)");
  SftDataset d;
  d.report_.source = source;
  d.pad_id_ = sft_pad_id(tok);

  // Parse every line; keep the pieces of the good ones.
  struct Pending {
    int64_t line;
    std::vector<Piece> pieces;
    std::string reference;
  };
  std::vector<Pending> pending;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line_no == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line = line.substr(3);  // UTF-8 BOM
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (trim(line).empty()) continue;
    ++d.report_.n_lines;
    const std::string where = source + ":" + std::to_string(line_no);
    try {
      ChatMessages msgs = parse_sft_line(line, where);
      std::vector<Piece> pieces;
      try {
        pieces = render_pieces(tok, msgs);
      } catch (const Error& e) {
        throw Error(where + ": " + e.what());
      }
      pending.push_back({line_no, std::move(pieces), last_assistant(msgs)});
    } catch (const Error& e) {
      if (opt.on_bad_line == OnBadLine::stop)
        throw Error(std::string(e.what()) + " (or set --on-bad-line skip to drop bad lines)");
      ++d.report_.n_skipped;
      d.report_.skipped_lines.push_back(line_no);
      if (d.report_.skipped_errors.size() < opt.max_listed) d.report_.skipped_errors.push_back(e.what());
    }
  }

  // Encode every text piece at once (in parallel), then assemble.
  std::vector<std::string> texts;
  for (const auto& p : pending)
    for (const Piece& pc : p.pieces)
      if (pc.id < 0) texts.push_back(pc.text);
  const auto enc = tok.encode_batch(texts, false);
  size_t k = 0;
  for (auto& p : pending) {
    SftExample ex = assemble(p.pieces, enc, k);
    for (const Piece& pc : p.pieces) k += pc.id < 0 ? 1 : 0;
    ex.line = p.line;
    ex.reference = std::move(p.reference);
    d.examples_.push_back(std::move(ex));
  }
  assert(k == enc.size());

  if (d.examples_.empty()) {
    if (d.report_.n_lines == 0)
      throw Error("fine-tuning data '" + source + "' holds no examples (it is empty); write one JSON object per line");
    throw Error("fine-tuning data '" + source + "' has no usable example: all " +
                std::to_string(d.report_.n_lines) + " lines are malformed (first: " +
                (d.report_.skipped_errors.empty() ? std::string("?") : d.report_.skipped_errors[0]) + ")");
  }
  d.finish(opt);
  return d;
}

SftDataset SftDataset::from_examples(std::vector<SftExample> examples, int32_t pad_id,
                                     const SftOptions& opt, const std::string& source) {
  if (opt.seq < 1) throw Error("--seq must be >= 1 for fine-tuning data");
  SftDataset d;
  d.report_.source = source;
  d.pad_id_ = pad_id;
  for (auto& e : examples) {
    assert(e.ids.size() == e.loss_mask.size());
    ++d.report_.n_lines;
    d.examples_.push_back(std::move(e));
  }
  d.finish(opt);
  return d;
}

void SftDataset::finish(const SftOptions& opt) {
  seq_ = opt.seq;
  const size_t cap = size_t(seq_ + 1);
  std::vector<SftExample> kept;
  kept.reserve(examples_.size());
  for (auto& ex : examples_) {
    if (ex.ids.size() > cap) {
      ex.truncated = true;
      ++report_.n_truncated;
      if (opt.truncate == Truncate::keep_end) {
        const size_t cut = ex.ids.size() - cap;
        ex.ids.erase(ex.ids.begin(), ex.ids.begin() + int64_t(cut));
        ex.loss_mask.erase(ex.loss_mask.begin(), ex.loss_mask.begin() + int64_t(cut));
        ex.n_prompt = std::max<int64_t>(0, ex.n_prompt - int64_t(cut));
      } else {
        ex.ids.resize(cap);
        ex.loss_mask.resize(cap);
        ex.n_prompt = std::min<int64_t>(ex.n_prompt, int64_t(cap));
      }
    }
    if (!ex.loss_mask.empty()) ex.loss_mask[0] = 0;  // nothing in a row predicts its first token
    if (ex.n_loss() == 0) {
      ++report_.n_dropped;
      continue;
    }
    report_.n_tokens += int64_t(ex.ids.size());
    report_.n_loss_tokens += ex.n_loss();
    kept.push_back(std::move(ex));
  }
  examples_ = std::move(kept);
  report_.n_examples = int64_t(examples_.size());
  if (examples_.empty())
    throw Error("fine-tuning data '" + report_.source + "' has no example with an answer token left after truncation to --seq " +
                std::to_string(seq_) + " + 1 tokens; use a longer --seq");
  uint64_t h = 0xcbf29ce484222325ull;
  h = fnv1a(h, &seq_, sizeof seq_);
  for (const auto& ex : examples_) {
    const uint64_t n = ex.ids.size();
    h = fnv1a(h, &n, sizeof n);
    h = fnv1a(h, ex.ids.data(), ex.ids.size() * 4);
    h = fnv1a(h, ex.loss_mask.data(), ex.loss_mask.size());
  }
  fingerprint_ = h;
}

std::string SftReport::summary() const {
  std::string s = source + ": " + std::to_string(n_examples) + " examples, " + std::to_string(n_tokens) +
                  " tokens (" + std::to_string(n_loss_tokens) + " in the loss)";
  if (n_skipped > 0) {
    s += "; skipped " + std::to_string(n_skipped) + " malformed line" + (n_skipped == 1 ? "" : "s") + " (";
    const size_t show = std::min<size_t>(skipped_lines.size(), 10);
    for (size_t i = 0; i < show; ++i) s += (i ? ", " : "") + std::to_string(skipped_lines[i]);
    if (skipped_lines.size() > show) s += ", ...";
    s += ")";
  }
  if (n_truncated > 0)
    s += "; truncated " + std::to_string(n_truncated) + " longer than seq + 1 tokens";
  if (n_dropped > 0)
    s += "; dropped " + std::to_string(n_dropped) + " with no answer token left";
  return s;
}

// ---------------------------------------------------------------------------------------------
// Packing

SftPacker::SftPacker(const SftDataset& data, uint64_t seed) : data_(data) {
  assert(data.size() > 0 && data.seq() >= 1);
  st_.seed = seed;
  buf_.resize(size_t(data.seq() + 1));
  mbuf_.resize(size_t(data.seq() + 1));
  build_epoch();
}

void SftPacker::pack(int64_t epoch, std::vector<int64_t>* order, std::vector<int64_t>* row_begin) const {
  const int64_t n = data_.size();
  Rng rng(st_.seed * 0x9e3779b97f4a7c15ull + uint64_t(epoch) * 0xd1b54a32d192ed03ull + 0x5f7);
  order->resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) (*order)[size_t(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = int64_t(rng.next() % uint64_t(i + 1));
    std::swap((*order)[size_t(i)], (*order)[size_t(j)]);
  }
  const int64_t cap = data_.seq() + 1;
  row_begin->assign(1, 0);
  int64_t used = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = int64_t(data_.examples()[size_t((*order)[size_t(i)])].ids.size());
    if (used > 0 && used + len > cap) {
      row_begin->push_back(i);
      used = 0;
    }
    used += len;
  }
  row_begin->push_back(n);
}

void SftPacker::build_epoch() { pack(st_.epoch, &order_, &row_begin_); }

std::vector<std::vector<int64_t>> SftPacker::layout(int64_t epoch) const {
  std::vector<int64_t> order, rb;
  pack(epoch, &order, &rb);
  std::vector<std::vector<int64_t>> rows(rb.size() - 1);
  for (size_t r = 0; r + 1 < rb.size(); ++r)
    rows[r].assign(order.begin() + rb[r], order.begin() + rb[r + 1]);
  return rows;
}

double SftPacker::epoch_progress() const {
  return double(st_.epoch) + double(st_.row) / double(std::max<int64_t>(1, rows_in_epoch()));
}

void SftPacker::fill_row(int64_t row, int32_t* tokens, int32_t* targets) {
  const int64_t T = data_.seq();
  size_t at = 0;
  for (int64_t i = row_begin_[size_t(row)]; i < row_begin_[size_t(row) + 1]; ++i) {
    const SftExample& ex = data_.examples()[size_t(order_[size_t(i)])];
    assert(at + ex.ids.size() <= buf_.size());
    std::copy(ex.ids.begin(), ex.ids.end(), buf_.begin() + int64_t(at));
    std::copy(ex.loss_mask.begin(), ex.loss_mask.end(), mbuf_.begin() + int64_t(at));
    at += ex.ids.size();
  }
  std::fill(buf_.begin() + int64_t(at), buf_.end(), data_.pad_id());
  std::fill(mbuf_.begin() + int64_t(at), mbuf_.end(), uint8_t(0));
  for (int64_t t = 0; t < T; ++t) {
    tokens[t] = buf_[size_t(t)];
    targets[t] = mbuf_[size_t(t + 1)] ? buf_[size_t(t + 1)] : -1;
  }
}

void SftPacker::next_batch(int64_t B, int32_t* tokens, int32_t* targets) {
  const int64_t T = data_.seq();
  for (int64_t b = 0; b < B; ++b) {
    if (st_.row >= rows_in_epoch()) {
      ++st_.epoch;
      st_.row = 0;
      build_epoch();
    }
    fill_row(st_.row++, tokens + b * T, targets + b * T);
  }
  if (st_.row >= rows_in_epoch()) {  // so the state after an epoch's last row reads (epoch + 1, 0)
    ++st_.epoch;
    st_.row = 0;
    build_epoch();
  }
}

void SftPacker::set_state(const SftLoaderState& s) {
  if (s.epoch < 0) throw Error("saved fine-tuning data position has a negative epoch " + std::to_string(s.epoch));
  st_ = s;
  build_epoch();
  if (s.row < 0 || s.row > rows_in_epoch())
    throw Error("saved fine-tuning data position row " + std::to_string(s.row) + " is outside epoch " +
                std::to_string(s.epoch) + " of " + std::to_string(rows_in_epoch()) +
                " rows: the data changed since the checkpoint");
}

std::string SftPacker::save_state() const {
  char fp[32];
  std::snprintf(fp, sizeof fp, "%016llx", (unsigned long long)data_.fingerprint());
  json j = {{"format", "qwen-sft-loader"},
            {"version", 1},
            {"seed", std::to_string(st_.seed)},
            {"epoch", st_.epoch},
            {"row", st_.row},
            {"seq", data_.seq()},
            {"examples", data_.size()},
            {"fingerprint", fp}};
  return j.dump();
}

void SftPacker::restore_state(const std::string& text) {
  SftLoaderState s;
  std::string fp;
  int64_t seq = 0, n = 0;
  try {
    const json j = json::parse(text);
    if (!j.is_object() || j.value("format", "") != "qwen-sft-loader")
      throw Error("saved fine-tuning data position is not a qwen-sft-loader state; the checkpoint is damaged");
    if (j.at("version").get<int>() != 1)
      throw Error("saved fine-tuning data position has version " + j.at("version").dump() +
                  ", this build reads version 1");
    const std::string seed = j.at("seed").get<std::string>();
    size_t used = 0;
    s.seed = std::stoull(seed, &used);
    if (used != seed.size()) throw std::invalid_argument("seed");
    s.epoch = j.at("epoch").get<int64_t>();
    s.row = j.at("row").get<int64_t>();
    seq = j.at("seq").get<int64_t>();
    n = j.at("examples").get<int64_t>();
    fp = j.at("fingerprint").get<std::string>();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("saved fine-tuning data position is not valid (" + one_line(e.what()) +
                "); the checkpoint is damaged");
  }
  char mine[32];
  std::snprintf(mine, sizeof mine, "%016llx", (unsigned long long)data_.fingerprint());
  if (seq != data_.seq() || n != data_.size() || fp != mine)
    throw Error("saved fine-tuning data position is for other data (seq " + std::to_string(seq) + ", " +
                std::to_string(n) + " examples, fingerprint " + one_line(fp, 20) + ") than this run's (seq " +
                std::to_string(data_.seq()) + ", " + std::to_string(data_.size()) + " examples, fingerprint " +
                mine + "); resume with the same --data, tokenizer and --seq");
  set_state(s);
}

// ---------------------------------------------------------------------------------------------
// Evaluation

void SftEvalIterator::row(int64_t i, int32_t* tokens, int32_t* targets) const {
  assert(i >= 0 && i < data_.size());
  const int64_t T = data_.seq();
  const SftExample& ex = data_.examples()[size_t(i)];
  const int64_t n = int64_t(ex.ids.size());
  for (int64_t t = 0; t < T; ++t) {
    tokens[t] = t < n ? ex.ids[size_t(t)] : data_.pad_id();
    targets[t] = t + 1 < n && ex.loss_mask[size_t(t + 1)] ? ex.ids[size_t(t + 1)] : -1;
  }
}

int64_t SftEvalIterator::next_batch(int64_t B, int32_t* tokens, int32_t* targets) {
  const int64_t T = data_.seq();
  int64_t filled = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (next_ < data_.size()) {
      row(next_++, tokens + b * T, targets + b * T);
      ++filled;
    } else {
      std::fill(tokens + b * T, tokens + (b + 1) * T, data_.pad_id());
      std::fill(targets + b * T, targets + (b + 1) * T, -1);
    }
  }
  return filled;
}

std::vector<int32_t> SftEvalIterator::prompt_ids(int64_t i) const {
  assert(i >= 0 && i < data_.size());
  const SftExample& ex = data_.examples()[size_t(i)];
  return std::vector<int32_t>(ex.ids.begin(), ex.ids.begin() + ex.n_prompt);
}

const std::string& SftEvalIterator::reference(int64_t i) const {
  assert(i >= 0 && i < data_.size());
  return data_.examples()[size_t(i)].reference;
}

// ---------------------------------------------------------------------------------------------
// Scoring

std::string normalize_answer(const std::string& text) {
  std::string s = text;
  for (const char* stop : {"<|im_end|>", "<|endoftext|>"}) {
    const size_t at = s.find(stop);
    if (at != std::string::npos) s.resize(at);
  }
  s = trim(s);
  if (s.rfind("<think>", 0) == 0) {
    const size_t close = s.find("</think>");
    if (close != std::string::npos) s = s.substr(close + 8);
  }
  return trim(s);
}

bool exact_match(const std::string& generated, const std::string& reference) {
  return normalize_answer(generated) == normalize_answer(reference);
}

}  // namespace qwen::train
