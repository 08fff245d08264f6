// tokenizer/tokenizer.cpp — the encode pipeline (added tokens, normalizer, pre-tokenizer, BPE,
// post-processor), decode, the streaming decoder and the ChatML template behind qwen::Tokenizer.
#include <omp.h>

#include <algorithm>
#include <exception>
#include <fstream>
#include <mutex>
#include <sstream>

#include "core/cpu.h"
#include "qwen/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace qwen {

using namespace tok;

// ----------------------------------------------------------------------------- AddedMatcher

void tok::AddedMatcher::add(std::string pattern, int32_t token_index) {
  if (pattern.empty()) return;
  patterns_.push_back(std::move(pattern));
  token_index_.push_back(token_index);
}

void tok::AddedMatcher::finish() {
  for (auto& v : by_first_) v.clear();
  is_first_.fill(false);
  for (uint32_t i = 0; i < patterns_.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(patterns_[i][0]);
    by_first_[c].push_back(i);
    is_first_[c] = true;
  }
  n_first_ = 0;
  for (int c = 0; c < 256; ++c) {
    auto& v = by_first_[size_t(c)];
    // longest first; equal lengths keep insertion order (the earlier pattern wins)
    std::stable_sort(v.begin(), v.end(), [&](uint32_t a, uint32_t b) {
      return patterns_[a].size() > patterns_[b].size();
    });
    if (!v.empty()) {
      ++n_first_;
      only_first_ = static_cast<unsigned char>(c);
    }
  }
}

bool tok::AddedMatcher::find(std::string_view text, size_t from, size_t& start, size_t& end,
                             int32_t& which) const {
  const size_t n = text.size();
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = from; i < n; ++i) {
    if (n_first_ == 1) {
      const void* hit = std::memchr(p + i, only_first_, n - i);
      if (!hit) return false;
      i = size_t(static_cast<const unsigned char*>(hit) - p);
    } else if (!is_first_[p[i]]) {
      continue;
    }
    for (uint32_t k : by_first_[p[i]]) {
      const std::string& pat = patterns_[k];
      if (pat.size() <= n - i && std::memcmp(p + i, pat.data(), pat.size()) == 0) {
        start = i;
        end = i + pat.size();
        which = token_index_[k];
        return true;
      }
    }
  }
  return false;
}

namespace {

// Start of the code point that ends at `end` (valid UTF-8).
size_t prev_cp_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

struct Split {
  size_t start, end;
  int32_t id;  // -1: text
};

// `tokenizers`' AddedVocabulary::find_matches: the added tokens in text, with single_word,
// lstrip and rstrip applied, as a list of splits covering the text.
void find_added(const Tokenizer::Impl& im, const AddedMatcher& m, std::string_view text,
                std::vector<Split>& out) {
  out.clear();
  size_t offset = 0, from = 0, s, e;
  int32_t which;
  while (from < text.size() && m.find(text, from, s, e, which)) {
    from = e;
    const AddedToken& t = im.added[size_t(which)];
    size_t start = s, stop = e;
    if (t.single_word) {
      bool start_space = start == 0;
      if (!start_space) {
        size_t j = prev_cp_start(text, start);
        start_space = !is_word_char(utf8_next(text, j));
      }
      bool stop_space = stop == text.size();
      if (!stop_space) {
        size_t j = stop;
        stop_space = !is_word_char(utf8_next(text, j));
      }
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t ns = start;
      while (ns > 0) {
        size_t j = prev_cp_start(text, ns), k = j;
        if (!is_white_space(utf8_next(text, k))) break;
        ns = j;
      }
      start = std::max(ns, offset);
    }
    if (t.rstrip) {
      while (stop < text.size()) {
        size_t k = stop;
        if (!is_white_space(utf8_next(text, k))) break;
        stop = k;
      }
    }
    if (offset < start) out.push_back(Split{offset, start, -1});
    out.push_back(Split{start, stop, t.id});
    offset = stop;
  }
  if (offset != text.size()) out.push_back(Split{offset, text.size(), -1});
}

EncodeScratch& scratch_for(const Tokenizer::Impl& im) {
  thread_local EncodeScratch s;
  if (s.owner != im.uid) {
    s.bpe.cache.clear();
    s.owner = im.uid;
  }
  return s;
}

// `tokenizers`' Split: the (offsets, is_match) list of a pattern over s, then the behavior.
void split_piece(const PreTokStep& st, const std::string& s, std::vector<std::string>& out) {
  struct M {
    size_t a, b;
    bool match;
  };
  std::vector<M> ms;
  if (s.empty()) {
    ms.push_back(M{0, 0, false});
  } else {
    size_t prev = 0;
    auto on_match = [&](size_t a, size_t b) {
      if (prev != a) ms.push_back(M{prev, a, false});
      ms.push_back(M{a, b, true});
      prev = b;
    };
    if (st.known != KnownPattern::None) {
      split_known(st.known, s, on_match);
    } else if (st.regex) {
      st.regex->for_each_match(s, on_match);
    } else if (!st.literal.empty()) {
      size_t pos = 0;
      while ((pos = s.find(st.literal, pos)) != std::string::npos) {
        on_match(pos, pos + st.literal.size());
        pos += st.literal.size();
      }
    }
    if (prev != s.size()) ms.push_back(M{prev, s.size(), false});
  }
  if (st.invert)
    for (auto& m : ms) m.match = !m.match;
  std::vector<std::pair<size_t, size_t>> parts;
  switch (st.behavior) {
    case SplitBehavior::Isolated:
      for (auto& m : ms) parts.emplace_back(m.a, m.b);
      break;
    case SplitBehavior::Removed:
      for (auto& m : ms)
        if (!m.match) parts.emplace_back(m.a, m.b);
      break;
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (auto& m : ms) {
        if (m.match == prev_match && !parts.empty()) parts.back().second = m.b;
        else parts.emplace_back(m.a, m.b);
        prev_match = m.match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto& m : ms) {
        if (m.match && !prev_match && !parts.empty()) parts.back().second = m.b;
        else parts.emplace_back(m.a, m.b);
        prev_match = m.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (size_t k = ms.size(); k-- > 0;) {
        const M& m = ms[k];
        if (m.match && !prev_match && !parts.empty()) parts.back().first = m.a;
        else parts.emplace_back(m.a, m.b);
        prev_match = m.match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (auto& [a, b] : parts)
    if (b > a) out.emplace_back(s, a, b - a);
}

}  // namespace

void Tokenizer::Impl::pretokenize_general(std::string_view seg, std::vector<int32_t>& out,
                                          EncodeScratch& s) const {
  auto& cur = s.pieces_a;
  auto& nxt = s.pieces_b;
  cur.clear();
  cur.emplace_back(seg);
  for (const PreTokStep& st : pretok) {
    nxt.clear();
    if (st.kind == PreTokStep::Split) {
      for (const std::string& p : cur) split_piece(st, p, nxt);
    } else {
      PreTokStep gpt2;
      gpt2.regex = gpt2_regex;
      gpt2.known = KnownPattern::Gpt2;
      for (std::string& p : cur) {
        if (st.add_prefix_space && (p.empty() || p[0] != ' ')) p.insert(p.begin(), ' ');
        if (st.use_regex) split_piece(gpt2, p, nxt);
        else if (!p.empty()) nxt.push_back(std::move(p));
      }
    }
    cur.swap(nxt);
  }
  for (const std::string& p : cur) bpe.encode_piece(p, out, s.bpe);
}

namespace {
bool ascii_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr size_t kParallelMin = size_t(1) << 20;  // texts from this size are cut for threads
}  // namespace

// One stretch of text after added tokens and normalization: pre-tokenize and BPE. Long
// stretches are cut where a piece always ends and encoded on several threads.
void Tokenizer::Impl::encode_segment(std::string_view seg, std::vector<int32_t>& out,
                                     EncodeScratch& s) const {
  const int nt = (splittable && seg.size() >= kParallelMin && !omp_in_parallel()) ? num_threads() : 1;
  if (nt <= 1) {
    encode_pieces(seg, out, s);
    return;
  }
  std::vector<size_t> cuts{0};
  const size_t step = std::max(kParallelMin / 4, seg.size() / size_t(8 * nt));
  for (size_t p = step; p + 1 < seg.size(); p += step) {
    while (p + 1 < seg.size() && !(seg[p] == ' ' && ascii_letter(seg[p - 1]) && ascii_letter(seg[p + 1]))) ++p;
    if (p + 1 >= seg.size()) break;
    cuts.push_back(p);
  }
  cuts.push_back(seg.size());
  const int64_t n_parts = int64_t(cuts.size()) - 1;
  std::vector<std::vector<int32_t>> parts(static_cast<size_t>(n_parts));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t i = 0; i < n_parts; ++i) {
    std::string_view part = seg.substr(cuts[size_t(i)], cuts[size_t(i) + 1] - cuts[size_t(i)]);
    parts[size_t(i)].reserve(part.size() / 3 + 8);
    encode_pieces(part, parts[size_t(i)], scratch_for(*this));
  }
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
}

void Tokenizer::Impl::encode_pieces(std::string_view seg, std::vector<int32_t>& out,
                                    EncodeScratch& s) const {
  if (seg.empty()) return;
  if (fast_known != KnownPattern::None) {
    split_known(fast_known, seg, [&](size_t a, size_t b) { bpe.encode_piece(seg.substr(a, b - a), out, s.bpe); });
  } else if (fast_regex) {
    size_t prev = 0;
    fast_regex->for_each_match(seg, [&](size_t a, size_t b) {
      if (a > prev) bpe.encode_piece(seg.substr(prev, a - prev), out, s.bpe);
      bpe.encode_piece(seg.substr(a, b - a), out, s.bpe);
      prev = b;
    });
    if (prev < seg.size()) bpe.encode_piece(seg.substr(prev), out, s.bpe);
  } else if (fast_no_pretok) {
    bpe.encode_piece(seg, out, s.bpe);
  } else {
    pretokenize_general(seg, out, s);
  }
}

void Tokenizer::Impl::encode_into(std::string_view text, bool add_special, std::vector<int32_t>& out,
                                  EncodeScratch& s) const {
  size_t bad = utf8_valid_prefix(text);
  if (bad != text.size()) {
    throw Error("tokenizer: the input text is not valid UTF-8 (at byte " + std::to_string(bad) +
                " of " + std::to_string(text.size()) + "); convert it to UTF-8 first");
  }
  std::vector<int32_t>& body = (trunc_max_length >= 0 || add_special) ? s.body : out;
  if (&body == &s.body) body.clear();
  std::vector<Split> raw_splits, norm_splits;
  auto normalized_part = [&](std::string_view part) {
    std::string_view norm = part;
    if (!normalizers.empty()) {
      s.norm_a.clear();
      normalize_append(s.norm_a, part, normalizers[0]);
      for (size_t k = 1; k < normalizers.size(); ++k) {
        s.norm_b.clear();
        normalize_append(s.norm_b, s.norm_a, normalizers[k]);
        s.norm_a.swap(s.norm_b);
      }
      norm = s.norm_a;
    }
    if (norm_matcher.empty()) {
      encode_segment(norm, body, s);
      return;
    }
    find_added(*this, norm_matcher, norm, norm_splits);
    for (const Split& sp : norm_splits) {
      if (sp.id >= 0) body.push_back(sp.id);
      else encode_segment(norm.substr(sp.start, sp.end - sp.start), body, s);
    }
  };
  if (raw_matcher.empty()) {
    normalized_part(text);
  } else {
    find_added(*this, raw_matcher, text, raw_splits);
    for (const Split& sp : raw_splits) {
      if (sp.id >= 0) body.push_back(sp.id);
      else normalized_part(text.substr(sp.start, sp.end - sp.start));
    }
  }
  if (&body == &out) return;
  // truncation (room is kept for the post-processor's tokens), then the post-processor
  if (trunc_max_length >= 0) {
    int64_t n_added = add_special ? int64_t(prefix_ids.size() + suffix_ids.size()) : 0;
    size_t keep = size_t(std::max<int64_t>(0, trunc_max_length - n_added));
    if (body.size() > keep) {
      if (trunc_left) body.erase(body.begin(), body.end() - std::ptrdiff_t(keep));
      else body.resize(keep);
    }
  }
  if (add_special) {
    if (has_template) {
      out.insert(out.end(), prefix_ids.begin(), prefix_ids.end());
    } else if (add_bos && bos >= 0) {
      out.push_back(bos);
    }
  }
  out.insert(out.end(), body.begin(), body.end());
  if (add_special) {
    if (has_template) out.insert(out.end(), suffix_ids.begin(), suffix_ids.end());
    else if (add_eos && eos >= 0) out.push_back(eos);
  }
}

// ------------------------------------------------------------------------------- Tokenizer

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(const Tokenizer&) = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(const Tokenizer&) = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

namespace {
bool read_file(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}
const Tokenizer::Impl& need(const std::shared_ptr<const Tokenizer::Impl>& p) {
  if (!p) throw Error("tokenizer: this Tokenizer is empty; load one with Tokenizer::from_dir or from_json");
  return *p;
}
}  // namespace

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  std::string tj, cj;
  std::string tpath = dir + "/tokenizer.json";
  if (!read_file(tpath, tj))
    throw Error("tokenizer: cannot read " + tpath + "; pass the directory that holds tokenizer.json");
  read_file(dir + "/tokenizer_config.json", cj);  // optional
  try {
    return from_json(tj, cj);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " [" + dir + "]");
  }
}

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& config_json) {
  Tokenizer t;
  t.impl_ = load_tokenizer(tokenizer_json, config_json);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& im = need(impl_);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 8);
  im.encode_into(text, add_special_tokens, out, scratch_for(im));
  return out;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                          bool add_special_tokens) const {
  const Impl& im = need(impl_);
  std::vector<std::vector<int32_t>> out(texts.size());
  const int64_t n = int64_t(texts.size());
  const int nt = std::max(1, std::min<int>(num_threads(), int(std::min<int64_t>(n, 1 << 20))));
  if (nt == 1) {
    EncodeScratch& s = scratch_for(im);
    for (int64_t i = 0; i < n; ++i) im.encode_into(texts[size_t(i)], add_special_tokens, out[size_t(i)], s);
    return out;
  }
  std::exception_ptr err;
  std::mutex mu;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) {
    try {
      im.encode_into(texts[size_t(i)], add_special_tokens, out[size_t(i)], scratch_for(im));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& im = need(impl_);
  std::string bytes;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= im.vocab_size || !im.id_known[size_t(id)]) continue;
    if (skip_special_tokens && im.id_special[size_t(id)]) continue;
    if (!im.byte_level_decoder && !first) bytes.push_back(' ');
    bytes += im.id_bytes[size_t(id)];
    first = false;
  }
  if (utf8_valid(bytes)) return bytes;
  return utf8_lossy(bytes);
}

int64_t Tokenizer::vocab_size() const { return need(impl_).vocab_size; }
int32_t Tokenizer::bos_id() const { return need(impl_).bos; }
int32_t Tokenizer::eos_id() const { return need(impl_).eos; }
int32_t Tokenizer::pad_id() const { return need(impl_).pad; }

std::vector<int32_t> Tokenizer::stop_ids() const {
  const Impl& im = need(impl_);
  std::vector<int32_t> out;
  for (int32_t id : {im.eos, im.token_map.find("<|im_end|>"), im.token_map.find("<|endoftext|>")})
    if (id >= 0 && std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  return out;
}

int32_t Tokenizer::token_to_id(const std::string& token) const { return need(impl_).token_map.find(token); }

std::string Tokenizer::id_to_token(int32_t id) const {
  const Impl& im = need(impl_);
  if (id < 0 || id >= im.vocab_size) return "";
  return im.id_token[size_t(id)];
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  static const std::string empty;
  const Impl& im = need(impl_);
  if (id < 0 || id >= im.vocab_size) return empty;
  return im.id_bytes[size_t(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  const Impl& im = need(impl_);
  return id >= 0 && id < im.vocab_size && im.id_special[size_t(id)];
}

// ---------------------------------------------------------------------------- chat template

namespace {
std::string strip_chars(std::string s, const char* chars, bool left, bool right) {
  if (left) s.erase(0, std::min(s.size(), s.find_first_not_of(chars)));
  if (right) {
    size_t e = s.find_last_not_of(chars);
    s.erase(e == std::string::npos ? 0 : e + 1);
  }
  return s;
}
bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
}  // namespace

std::string Tokenizer::apply_chat_template(
    const std::vector<std::pair<std::string, std::string>>& messages, bool add_generation_prompt) const {
  const Impl& im = need(impl_);
  const std::string kStart = "<|im_start|>", kEnd = "<|im_end|>";
  if (im.token_map.find(kStart) < 0 || im.token_map.find(kEnd) < 0)
    throw Error("tokenizer: the chat template needs <|im_start|> and <|im_end|>, which this vocabulary lacks; use a Qwen (ChatML) tokenizer");
  std::string out;
  if (!im.default_system.empty() && (messages.empty() || messages[0].first != "system"))
    out += kStart + "system\n" + im.default_system + kEnd + "\n";
  // Qwen3: the last user turn that is not a tool response; assistant turns before it lose
  // their <think> block, those after it keep it.
  int64_t last_query = int64_t(messages.size()) - 1;
  if (im.qwen3_thinking) {
    for (int64_t i = int64_t(messages.size()) - 1; i >= 0; --i) {
      const auto& [role, content] = messages[size_t(i)];
      if (role == "user" && !(starts_with(content, "<tool_response>") && ends_with(content, "</tool_response>"))) {
        last_query = i;
        break;
      }
    }
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& [role, content] = messages[i];
    if (!im.qwen3_thinking || role != "assistant") {
      out += kStart + role + "\n" + content + kEnd + "\n";
      continue;
    }
    std::string body = content, reasoning;
    size_t close = content.rfind("</think>");
    if (content.find("</think>") != std::string::npos) {
      body = strip_chars(content.substr(close + 8), "\n", true, false);
      std::string before = content.substr(0, content.find("</think>"));
      size_t open = before.rfind("<think>");
      if (open != std::string::npos) before = before.substr(open + 7);
      reasoning = strip_chars(strip_chars(before, "\n", false, true), "\n", true, false);
    }
    if (int64_t(i) > last_query && (i + 1 == messages.size() || !reasoning.empty())) {
      out += kStart + role + "\n<think>\n" + strip_chars(reasoning, "\n", true, true) +
             "\n</think>\n\n" + strip_chars(body, "\n", true, false);
    } else {
      out += kStart + role + "\n" + body;
    }
    out += kEnd + "\n";
  }
  if (add_generation_prompt) out += kStart + "assistant\n";
  return out;
}

// ---------------------------------------------------------------------------- StreamDecoder

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::push(int32_t id) {
  const Tokenizer::Impl& im = tok_.impl();
  if (id < 0 || id >= im.vocab_size || !im.id_known[size_t(id)]) return "";
  if (skip_special_ && im.id_special[size_t(id)]) return "";
  std::string bytes = std::move(pending_);
  if (!im.byte_level_decoder && !first_) bytes.push_back(' ');
  bytes += im.id_bytes[size_t(id)];
  first_ = false;
  std::string out;
  size_t used = utf8_lossy_append(out, bytes, false);
  pending_.assign(bytes, used, std::string::npos);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  utf8_lossy_append(out, pending_, true);
  pending_.clear();
  return out;
}

}  // namespace qwen
