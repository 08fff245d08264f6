// tokenizer/train.cpp — byte-level BPE training (qwen::train_bpe): NFC, Qwen's pre-tokenizer
// regex, word counts, then the classic incremental merge loop (pair counts, the words each pair
// occurs in, a lazy max-heap). Writes tokenizer.json / tokenizer_config.json in the layout of
// Qwen's files, which Hugging Face `tokenizers` and qwen::Tokenizer both load.
#include <omp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "core/cpu.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"
#include "tokenizer/pretok_fast.h"
#include "tokenizer/unicode.h"

namespace qwen {

namespace {

constexpr const char* kQwenRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// ChatML, the way Qwen's templates render a plain conversation.
constexpr const char* kChatTemplate =
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}";

bool ascii_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Cuts text into chunks of about `target` bytes at places where Qwen's regex always ends a
// piece (an ASCII letter, a space, an ASCII letter: no match can contain both the letter and
// the space), so counting the chunks separately gives the counts of the whole text.
std::vector<std::string_view> safe_chunks(std::string_view text, size_t target) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (text.size() - start > 2 * target) {
    size_t p = start + target, cut = 0;
    for (; p + 1 < text.size() && p < start + 4 * target; ++p) {
      if (text[p] == ' ' && ascii_letter(text[p - 1]) && ascii_letter(text[p + 1])) {
        cut = p;
        break;
      }
    }
    if (!cut) break;
    out.push_back(text.substr(start, cut - start));
    start = cut;
  }
  out.push_back(text.substr(start));
  return out;
}

// Splits out the special tokens (they are never learned from the corpus).
void split_specials(std::string_view text, const std::vector<std::string>& specials,
                    std::vector<std::string_view>& out) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos, len = 0;
    for (const std::string& s : specials) {
      if (s.empty()) continue;
      size_t f = text.find(s, pos);
      if (f < best || (f == best && s.size() > len)) best = f, len = s.size();
    }
    if (best == std::string_view::npos) break;
    if (best > pos) out.push_back(text.substr(pos, best - pos));
    pos = best + len;
  }
  if (pos < text.size()) out.push_back(text.substr(pos));
}

struct PairHash {
  size_t operator()(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> 17); }
};
inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

std::string byte_level(const std::string& bytes) {
  std::string s;
  for (unsigned char b : bytes) tok::append_utf8(s, tok::byte_to_cp()[b]);
  return s;
}

}  // namespace

BpeTrainResult train_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& opts) {
  auto t0 = std::chrono::steady_clock::now();
  const int64_t n_special = int64_t(opts.special_tokens.size());
  if (opts.vocab_size < 256 + n_special)
    throw Error("tokenizer train: --vocab-size must be at least " + std::to_string(256 + n_special) +
                " (256 byte tokens + " + std::to_string(n_special) + " special tokens)");
  for (const std::string& t : texts) {
    size_t bad = tok::utf8_valid_prefix(t);
    if (bad != t.size())
      throw Error("tokenizer train: the training text is not valid UTF-8 (at byte " + std::to_string(bad) +
                  "); convert it to UTF-8 first");
  }
  // ---- 1. word counts (chunks in parallel, merged in chunk order)
  std::vector<std::string_view> parts, chunks;
  for (const std::string& t : texts) split_specials(t, opts.special_tokens, parts);
  for (std::string_view p : parts)
    for (std::string_view c : safe_chunks(p, size_t(std::max<int64_t>(1024, opts.chunk_bytes)))) chunks.push_back(c);
  if (tok::known_pattern(kQwenRegex) != tok::KnownPattern::Qwen2) throw Error("tokenizer train: internal regex mismatch");
  const int nt = std::max(1, opts.n_threads > 0 ? opts.n_threads : num_threads());
  std::vector<std::unordered_map<std::string, int64_t>> maps(static_cast<size_t>(nt));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t ci = 0; ci < int64_t(chunks.size()); ++ci) {
    auto& m = maps[size_t(omp_get_thread_num())];
    std::string norm;
    tok::normalize_append(norm, chunks[size_t(ci)], tok::NormForm::NFC);
    std::string_view nv = norm;
    tok::split_known(tok::KnownPattern::Qwen2, nv, [&](size_t a, size_t b) { ++m[std::string(nv.substr(a, b - a))]; });
  }
  std::unordered_map<std::string, int64_t> counts = std::move(maps[0]);
  for (size_t k = 1; k < maps.size(); ++k)
    for (auto& kv : maps[k]) counts[kv.first] += kv.second;
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  counts.clear();
  std::sort(sorted.begin(), sorted.end());
  if (opts.verbose)
    std::fprintf(stderr, "tokenizer train: %zu distinct words in %.2f s\n", sorted.size(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

  // ---- 2. alphabet: the 256 bytes, ordered by their byte-level character
  std::vector<int> bytes_by_cp(256);
  for (int b = 0; b < 256; ++b) bytes_by_cp[size_t(b)] = b;
  std::sort(bytes_by_cp.begin(), bytes_by_cp.end(),
            [](int x, int y) { return tok::byte_to_cp()[size_t(x)] < tok::byte_to_cp()[size_t(y)]; });
  std::vector<std::string> tok_bytes;  // id -> raw bytes
  std::array<int32_t, 256> byte_id{};
  for (int i = 0; i < 256; ++i) {
    byte_id[size_t(bytes_by_cp[size_t(i)])] = i;
    tok_bytes.push_back(std::string(1, char(bytes_by_cp[size_t(i)])));
  }
  std::unordered_map<std::string, int32_t> id_of_bytes;
  for (int32_t i = 0; i < 256; ++i) id_of_bytes[tok_bytes[size_t(i)]] = i;

  // ---- 3. words, pair counts, where each pair occurs
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> wcount(sorted.size());
  std::unordered_map<uint64_t, int64_t, PairHash> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>, PairHash> where;
  for (size_t w = 0; w < sorted.size(); ++w) {
    const std::string& s = sorted[w].first;
    wcount[w] = sorted[w].second;
    auto& syms = words[w];
    syms.reserve(s.size());
    for (unsigned char c : s) syms.push_back(byte_id[c]);
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      uint64_t k = pair_key(syms[i], syms[i + 1]);
      pair_count[k] += wcount[w];
      auto& v = where[k];
      if (v.empty() || v.back() != int32_t(w)) v.push_back(int32_t(w));
    }
  }
  sorted.clear();
  sorted.shrink_to_fit();

  // max-heap on count; ties: the pair whose bytes sort first
  struct Entry {
    int64_t count;
    int32_t a, b;
  };
  auto worse = [&](const Entry& x, const Entry& y) {  // true if x pops after y
    if (x.count != y.count) return x.count < y.count;
    int c = tok_bytes[size_t(x.a)].compare(tok_bytes[size_t(y.a)]);
    if (c != 0) return c > 0;
    return tok_bytes[size_t(x.b)].compare(tok_bytes[size_t(y.b)]) > 0;
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(worse)> heap(worse);
  for (auto& kv : pair_count)
    heap.push(Entry{kv.second, int32_t(kv.first >> 32), int32_t(uint32_t(kv.first))});

  const int64_t target = opts.vocab_size - n_special;
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int64_t> seen(words.size(), -1);
  std::unordered_set<uint64_t> touched;
  std::vector<int32_t> out;
  while (int64_t(tok_bytes.size()) < target && !heap.empty()) {
    Entry top = heap.top();
    heap.pop();
    const uint64_t key = pair_key(top.a, top.b);
    auto pc = pair_count.find(key);
    int64_t cur = pc == pair_count.end() ? 0 : pc->second;
    if (cur != top.count) {  // stale entry
      if (cur > 0) heap.push(Entry{cur, top.a, top.b});
      continue;
    }
    if (cur < std::max<int64_t>(1, opts.min_frequency)) break;
    // the merged token (an existing one when two merges build the same bytes)
    std::string nb = tok_bytes[size_t(top.a)] + tok_bytes[size_t(top.b)];
    int32_t n;
    if (auto f = id_of_bytes.find(nb); f != id_of_bytes.end()) {
      n = f->second;
    } else {
      n = int32_t(tok_bytes.size());
      tok_bytes.push_back(nb);
      id_of_bytes.emplace(nb, n);
    }
    const int64_t mi = int64_t(merges.size());
    merges.emplace_back(top.a, top.b);
    touched.clear();
    std::vector<int32_t> list = std::move(where[key]);
    where.erase(key);
    for (int32_t w : list) {
      if (seen[size_t(w)] == mi) continue;
      seen[size_t(w)] = mi;
      auto& syms = words[size_t(w)];
      const int64_t c = wcount[size_t(w)];
      out.clear();
      bool any = false;
      for (size_t i = 0; i < syms.size();) {
        if (i + 1 < syms.size() && syms[i] == top.a && syms[i + 1] == top.b) {
          any = true;
          pair_count[key] -= c;
          if (!out.empty()) {
            int32_t prev = out.back();
            pair_count[pair_key(prev, top.a)] -= c;
            uint64_t k = pair_key(prev, n);
            pair_count[k] += c;
            where[k].push_back(w);
            touched.insert(k);
          }
          if (i + 2 < syms.size()) {
            int32_t next = syms[i + 2];
            pair_count[pair_key(top.b, next)] -= c;
            uint64_t k = pair_key(n, next);
            pair_count[k] += c;
            where[k].push_back(w);
            touched.insert(k);
          }
          out.push_back(n);
          i += 2;
        } else {
          out.push_back(syms[i]);
          i += 1;
        }
      }
      if (any) syms.assign(out.begin(), out.end());
    }
    pair_count.erase(key);
    for (uint64_t k : touched) {
      int64_t v = pair_count[k];
      if (v > 0) heap.push(Entry{v, int32_t(k >> 32), int32_t(uint32_t(k))});
    }
    if (opts.verbose && merges.size() % 1000 == 0)
      std::fprintf(stderr, "tokenizer train: %zu merges, vocabulary %zu\n", merges.size(), tok_bytes.size());
  }

  // ---- 4. tokenizer.json / tokenizer_config.json
  using ojson = nlohmann::ordered_json;
  const int64_t n_base = int64_t(tok_bytes.size());
  ojson tj;
  tj["version"] = "1.0";
  tj["truncation"] = nullptr;
  tj["padding"] = nullptr;
  ojson added = ojson::array();
  ojson added_decoder = ojson::object();
  for (int64_t i = 0; i < n_special; ++i) {
    ojson t;
    t["id"] = n_base + i;
    t["content"] = opts.special_tokens[size_t(i)];
    t["single_word"] = false;
    t["lstrip"] = false;
    t["rstrip"] = false;
    t["normalized"] = false;
    t["special"] = true;
    added.push_back(t);
    ojson d = t;
    d.erase("id");
    added_decoder[std::to_string(n_base + i)] = d;
  }
  tj["added_tokens"] = added;
  tj["normalizer"] = {{"type", "NFC"}};
  ojson bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  tj["pre_tokenizer"] = {{"type", "Sequence"},
                         {"pretokenizers",
                          {{{"type", "Split"}, {"pattern", {{"Regex", kQwenRegex}}}, {"behavior", "Isolated"}, {"invert", false}},
                           bl}}};
  tj["post_processor"] = bl;
  tj["decoder"] = bl;
  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = "";
  model["end_of_word_suffix"] = "";
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = false;
  ojson vocab = ojson::object();
  for (int64_t i = 0; i < n_base; ++i) vocab[byte_level(tok_bytes[size_t(i)])] = i;
  ojson ms = ojson::array();
  for (auto [a, b] : merges) ms.push_back(byte_level(tok_bytes[size_t(a)]) + " " + byte_level(tok_bytes[size_t(b)]));
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(ms);
  tj["model"] = std::move(model);

  auto has = [&](const char* s) {
    return std::find(opts.special_tokens.begin(), opts.special_tokens.end(), s) != opts.special_tokens.end();
  };
  ojson cfg;
  cfg["add_bos_token"] = false;
  cfg["add_prefix_space"] = false;
  cfg["added_tokens_decoder"] = added_decoder;
  cfg["bos_token"] = nullptr;
  cfg["clean_up_tokenization_spaces"] = false;
  const char* eos = has("<|endoftext|>") ? "<|endoftext|>" : nullptr;
  if (eos) cfg["eos_token"] = eos; else cfg["eos_token"] = nullptr;
  cfg["errors"] = "replace";
  cfg["model_max_length"] = 32768;
  if (eos) cfg["pad_token"] = eos; else cfg["pad_token"] = nullptr;
  cfg["split_special_tokens"] = false;
  cfg["tokenizer_class"] = "Qwen2Tokenizer";
  cfg["unk_token"] = nullptr;
  if (has("<|im_start|>") && has("<|im_end|>")) cfg["chat_template"] = kChatTemplate;

  BpeTrainResult r;
  r.tokenizer_json = tj.dump(2) + "\n";
  r.tokenizer_config_json = cfg.dump(2) + "\n";
  r.n_merges = int64_t(merges.size());
  r.vocab_size = n_base + n_special;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

BpeTrainResult train_bpe_files(const std::vector<std::string>& files, const std::string& out_dir,
                               const BpeTrainOptions& opts) {
  if (files.empty()) throw Error("tokenizer train: no input files; pass --input FILE...");
  std::vector<std::string> texts;
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) throw Error("tokenizer train: cannot read " + f);
    std::ostringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
  }
  BpeTrainResult r = train_bpe(texts, opts);
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) throw Error("tokenizer train: cannot create " + out_dir + ": " + ec.message());
  for (auto [name, body] : {std::pair{"tokenizer.json", &r.tokenizer_json},
                            std::pair{"tokenizer_config.json", &r.tokenizer_config_json}}) {
    std::string path = out_dir + "/" + name, tmp = path + ".tmp";
    {
      std::ofstream o(tmp, std::ios::binary);
      o << *body;
      if (!o) throw Error("tokenizer train: cannot write " + tmp);
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) throw Error("tokenizer train: cannot write " + path + ": " + ec.message());
  }
  return r;
}

}  // namespace qwen
