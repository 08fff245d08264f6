// tokenizer/load.cpp — reads tokenizer.json (+ tokenizer_config.json) into Tokenizer::Impl, with
// the same rules as Hugging Face `tokenizers` for what it accepts (merges as "a b" strings or
// ["a","b"] pairs, added-token id assignment, defaults of absent fields) and one-line errors for
// everything it does not.
#include <algorithm>
#include <cstdio>
#include <atomic>
#include <map>
#include <set>
#include <unordered_map>

#include "qwen/error.h"
#include "tokenizer/json_lite.h"
#include "tokenizer/tokenizer_impl.h"

namespace qwen {

using tok::jl::Node;
using namespace tok;

namespace {

constexpr int64_t kMaxId = int64_t(1) << 26;  // ids beyond this are rejected as malformed

// The GPT-2 regex of ByteLevel(use_regex = true).
constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

[[noreturn]] void bad(const std::string& what) { throw Error("tokenizer.json: " + what); }

std::string type_of(const Node& v, const std::string& where) {
  if (!v.is_object()) bad(where + " must be a JSON object");
  Node t = v.get("type");
  if (!t.is_string()) bad(where + " has no \"type\" string");
  return std::string(t.str());
}

bool get_bool(const Node& obj, const char* key, bool dflt, const std::string& where) {
  Node v = obj.get(key);
  if (v.is_null()) return dflt;
  if (!v.is_bool()) bad(where + "." + key + " must be true or false");
  return v.boolean();
}

std::string get_str(const Node& obj, const char* key, const std::string& dflt,
                    const std::string& where) {
  Node v = obj.get(key);
  if (v.is_null()) return dflt;
  if (!v.is_string()) bad(where + "." + key + " must be a string");
  return std::string(v.str());
}

int32_t get_id(const Node& v, const std::string& where) {
  if (!v.is_int() || v.integer() < 0 || v.integer() >= kMaxId)
    bad(where + " must be a token id (an integer from 0 to " + std::to_string(kMaxId - 1) + ")");
  return int32_t(v.integer());
}

// Byte-level token string -> raw bytes; false if some character is not one of the 256.
bool byte_level_to_bytes(std::string_view s, std::string& out) {
  out.clear();
  size_t i = 0;
  while (i < s.size()) {
    int b = cp_to_byte(utf8_next(s, i));
    if (b < 0) return false;
    out.push_back(char(b));
  }
  return true;
}

void parse_normalizer(const Node& n, std::vector<NormForm>& out, const std::string& where) {
  if (n.is_null()) return;
  std::string t = type_of(n, where);
  if (t == "NFC") out.push_back(NormForm::NFC);
  else if (t == "NFD") out.push_back(NormForm::NFD);
  else if (t == "NFKC") out.push_back(NormForm::NFKC);
  else if (t == "NFKD") out.push_back(NormForm::NFKD);
  else if (t == "Sequence") {
    Node list = n.get("normalizers");
    if (!list.is_array()) bad(where + " (Sequence) needs a \"normalizers\" array");
    for (uint32_t i = 0; i < list.size(); ++i)
      parse_normalizer(list[i], out, where + ".normalizers[" + std::to_string(i) + "]");
  } else {
    bad(where + " type \"" + t +
        "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence of these)");
  }
}

void parse_pretok(const Node& p, std::vector<PreTokStep>& out, const std::string& where) {
  if (p.is_null()) return;
  std::string t = type_of(p, where);
  if (t == "Sequence") {
    Node list = p.get("pretokenizers");
    if (!list.is_array()) bad(where + " (Sequence) needs a \"pretokenizers\" array");
    for (uint32_t i = 0; i < list.size(); ++i)
      parse_pretok(list[i], out, where + ".pretokenizers[" + std::to_string(i) + "]");
  } else if (t == "Split") {
    PreTokStep s;
    s.kind = PreTokStep::Split;
    Node pat = p.get("pattern");
    if (!pat.is_object()) bad(where + " (Split) needs a \"pattern\" object");
    if (pat.get("Regex").is_string()) {
      s.regex = std::make_shared<Regex>(std::string(pat.get("Regex").str()));
      s.known = known_pattern(s.regex->pattern());
    } else if (pat.get("String").is_string()) {
      s.literal = std::string(pat.get("String").str());
    } else {
      bad(where + ".pattern must be {\"Regex\": \"...\"} or {\"String\": \"...\"}");
    }
    std::string b = get_str(p, "behavior", "", where);
    if (b == "Removed") s.behavior = SplitBehavior::Removed;
    else if (b == "Isolated") s.behavior = SplitBehavior::Isolated;
    else if (b == "MergedWithPrevious") s.behavior = SplitBehavior::MergedWithPrevious;
    else if (b == "MergedWithNext") s.behavior = SplitBehavior::MergedWithNext;
    else if (b == "Contiguous") s.behavior = SplitBehavior::Contiguous;
    else bad(where + ".behavior \"" + b + "\" is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
    s.invert = get_bool(p, "invert", false, where);
    out.push_back(std::move(s));
  } else if (t == "ByteLevel") {
    PreTokStep s;
    s.kind = PreTokStep::ByteLevel;
    s.add_prefix_space = get_bool(p, "add_prefix_space", true, where);
    s.use_regex = get_bool(p, "use_regex", true, where);
    out.push_back(std::move(s));
  } else {
    bad(where + " type \"" + t + "\" is not supported (supported: Split, ByteLevel, Sequence)");
  }
}

void parse_post(const Node& p, Tokenizer::Impl& im, const std::string& where) {
  if (p.is_null()) return;
  std::string t = type_of(p, where);
  if (t == "ByteLevel") return;  // offsets only
  if (t == "Sequence") {
    Node list = p.get("processors");
    if (!list.is_array()) bad(where + " (Sequence) needs a \"processors\" array");
    for (uint32_t i = 0; i < list.size(); ++i)
      parse_post(list[i], im, where + ".processors[" + std::to_string(i) + "]");
    return;
  }
  std::vector<int32_t> pre, suf;
  if (t == "TemplateProcessing") {
    Node single = p.get("single");
    if (!single.is_array()) bad(where + " needs a \"single\" array");
    Node specials = p.get("special_tokens");
    bool seen_a = false;
    for (uint32_t i = 0; i < single.size(); ++i) {
      Node item = single[i];
      if (!item.is_object()) bad(where + ".single items must be objects");
      if (item.get("Sequence").exists()) {
        seen_a = true;
        continue;
      }
      if (!item.get("SpecialToken").is_object())
        bad(where + ".single items must be {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      std::string name = get_str(item.get("SpecialToken"), "id", "", where + ".single");
      Node ids = specials.get(name).get("ids");
      if (!ids.is_array())
        bad(where + ": special token \"" + name + "\" of the template has no ids in special_tokens");
      for (uint32_t k = 0; k < ids.size(); ++k)
        (seen_a ? suf : pre).push_back(get_id(ids[k], where + ".special_tokens." + name));
    }
  } else if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto pair_id = [&](const char* key) {
      Node v = p.get(key);
      if (!v.is_array() || v.size() != 2) bad(where + "." + key + " must be [token, id]");
      return get_id(v[1], where + "." + key);
    };
    pre.push_back(pair_id("cls"));
    suf.push_back(pair_id("sep"));
  } else {
    bad(where + " type \"" + t +
        "\" is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, "
        "BertProcessing, Sequence)");
  }
  im.has_template = true;
  im.prefix_ids.insert(im.prefix_ids.begin(), pre.begin(), pre.end());
  im.suffix_ids.insert(im.suffix_ids.end(), suf.begin(), suf.end());
}

void parse_decoder(const Node& d, bool& byte_level, const std::string& where) {
  if (d.is_null()) return;
  std::string t = type_of(d, where);
  if (t == "ByteLevel") {
    byte_level = true;
  } else if (t == "Sequence") {
    Node list = d.get("decoders");
    if (!list.is_array()) bad(where + " (Sequence) needs a \"decoders\" array");
    for (uint32_t i = 0; i < list.size(); ++i)
      parse_decoder(list[i], byte_level, where + ".decoders[" + std::to_string(i) + "]");
  } else {
    bad(where + " type \"" + t + "\" is not supported (supported: ByteLevel, Sequence of it)");
  }
}

// A token in tokenizer_config.json: "text", {"content": "text", ...} or null.
std::string config_token(const Node& c, const char* key) {
  Node v = c.get(key);
  if (v.is_null()) return "";
  if (v.is_string()) return std::string(v.str());
  if (v.is_object() && v.get("content").is_string()) return std::string(v.get("content").str());
  throw Error(std::string("tokenizer_config.json: ") + key +
              " must be a string, an object with \"content\", or null");
}

// Jinja string-literal unescaping of the few escapes a system prompt can hold.
std::string unescape_literal(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

// Qwen2/Qwen2.5 templates inject a default system message when the conversation has none:
// '<|im_start|>system\nYou are ...<|im_end|>\n' as one literal. Returns it ("" when absent).
std::string find_default_system(const std::string& tpl) {
  const std::string key = "<|im_start|>system\\n";
  size_t pos = 0;
  while ((pos = tpl.find(key, pos)) != std::string::npos) {
    size_t b = pos + key.size();
    size_t e = tpl.find("<|im_end|>", b);
    if (e == std::string::npos) return "";
    std::string_view body(tpl.data() + b, e - b);
    if (!body.empty() && body.find_first_of("'\"{}+") == std::string_view::npos)
      return unescape_literal(body);
    pos = b;
  }
  return "";
}

void parse_config(const std::string& cj, Tokenizer::Impl& im) {
  auto find_tok = [&](const std::string& s) { return s.empty() ? -1 : im.token_map.find(s); };
  if (cj.empty()) {
    im.eos = find_tok("<|endoftext|>");
    return;
  }
  tok::jl::Document doc(cj, "tokenizer_config.json");
  Node c = tok::jl::root(doc);
  if (!c.is_object()) throw Error("tokenizer_config.json: the top level must be a JSON object");
  im.bos = find_tok(config_token(c, "bos_token"));
  im.eos = find_tok(config_token(c, "eos_token"));
  im.pad = find_tok(config_token(c, "pad_token"));
  auto flag = [&](const char* key) {
    Node v = c.get(key);
    if (v.is_null()) return false;
    if (!v.is_bool()) throw Error(std::string("tokenizer_config.json: ") + key + " must be true or false");
    return v.boolean();
  };
  im.add_bos = flag("add_bos_token");
  im.add_eos = flag("add_eos_token");
  std::string tpl;
  Node ct = c.get("chat_template");
  if (ct.is_string()) {
    tpl = std::string(ct.str());
  } else if (ct.is_array()) {
    for (uint32_t i = 0; i < ct.size(); ++i)
      if (ct[i].get("name").is_string() && ct[i].get("name").str() == "default" &&
          ct[i].get("template").is_string())
        tpl = std::string(ct[i].get("template").str());
  }
  im.default_system = find_default_system(tpl);
  im.qwen3_thinking = tpl.find("</think>") != std::string::npos &&
                      tpl.find("reasoning_content") != std::string::npos;
}

}  // namespace

std::shared_ptr<const Tokenizer::Impl> load_tokenizer(const std::string& tokenizer_json,
                                                      const std::string& config_json) {
  static std::atomic<uint64_t> next_uid{1};
  tok::jl::Document doc(tokenizer_json, "tokenizer.json");
  Node j = tok::jl::root(doc);
  if (!j.is_object()) bad("the top level must be a JSON object");
  auto im = std::make_shared<Tokenizer::Impl>();
  im->uid = next_uid++;

  if (Node v = j.get("version"); !v.is_null()) {
    if (!v.is_string() || v.str() != "1.0") bad("unknown version (expected \"1.0\")");
  }
  if (Node t = j.get("truncation"); !t.is_null()) {
    if (!t.is_object() || !t.get("max_length").is_int() || t.get("max_length").integer() < 0)
      bad("truncation must be null or an object with max_length");
    im->trunc_max_length = t.get("max_length").integer();
    im->trunc_left = get_str(t, "direction", "Right", "truncation") == "Left";
  }
  if (!j.get("padding").is_null())
    bad("\"padding\" is not supported; set it to null (pad the ids yourself)");

  parse_normalizer(j.get("normalizer"), im->normalizers, "normalizer");
  parse_pretok(j.get("pre_tokenizer"), im->pretok, "pre_tokenizer");
  bool byte_level = false;
  for (size_t i = 0; i < im->pretok.size(); ++i) {
    if (im->pretok[i].kind != PreTokStep::ByteLevel) continue;
    if (i + 1 != im->pretok.size()) bad("a ByteLevel pre-tokenizer must be the last one of the sequence");
    byte_level = true;
    if (im->pretok[i].use_regex) im->gpt2_regex = std::make_shared<Regex>(kGpt2Regex);
  }

  // ---- model
  Node m = j.get("model");
  if (!m.is_object()) bad("no \"model\" object");
  std::string mtype = m.get("type").exists() ? type_of(m, "model") : std::string("BPE");
  if (mtype != "BPE") bad("model type \"" + mtype + "\" is not supported (only BPE)");
  if (!get_str(m, "continuing_subword_prefix", "", "model").empty() ||
      !get_str(m, "end_of_word_suffix", "", "model").empty())
    bad("model.continuing_subword_prefix / end_of_word_suffix are not supported");
  if (Node d = m.get("dropout"); !d.is_null()) {
    if (!d.is_number() || d.number() < 0 || d.number() > 1)
      bad("model.dropout must be null or a number in [0, 1]");
    if (d.number() > 0) bad("model.dropout > 0 (BPE dropout) is not supported; set it to null");
  }
  tok::BpeModel& bpe = im->bpe;
  bpe.byte_level = byte_level;
  bpe.ignore_merges = get_bool(m, "ignore_merges", false, "model");
  bpe.byte_fallback = get_bool(m, "byte_fallback", false, "model");
  bpe.fuse_unk = get_bool(m, "fuse_unk", false, "model");
  Node vocab = m.get("vocab");
  if (!vocab.is_object()) bad("model.vocab must be an object {token: id}");
  bpe.vocab.reserve(vocab.size());
  im->token_map.reserve(vocab.size() + 1024);
  int64_t max_id = -1;
  std::string raw;
  std::vector<int32_t> vocab_ids(vocab.size());
  for (uint32_t k = 0; k < vocab.size(); ++k) {
    std::string_view s = vocab.key(k);
    int32_t id = get_id(vocab[k], "model.vocab[\"" + std::string(s) + "\"]");
    vocab_ids[k] = id;
    if (id >= int64_t(im->id_token.size())) im->id_token.resize(std::max<size_t>(size_t(id) + 1, vocab.size()));
    im->id_token[size_t(id)] = std::string(s);
    im->token_map.set(s, id);
    if (!byte_level) bpe.vocab.set(s, id);
    else if (byte_level_to_bytes(s, raw)) bpe.vocab.set(raw, id);
    max_id = std::max<int64_t>(max_id, id);
  }
  bpe.n_vocab_entries = int64_t(im->token_map.size());
  for (int b = 0; b < 256; ++b) {
    bpe.byte_id[size_t(b)] = byte_level ? bpe.vocab.find(std::string(1, char(b))) : -1;
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    bpe.fallback_id[size_t(b)] = im->token_map.find(hex);
  }
  std::string unk = get_str(m, "unk_token", "", "model");
  if (!unk.empty()) {
    bpe.unk_id = im->token_map.find(unk);
    if (bpe.unk_id < 0) bad("model.unk_token \"" + unk + "\" is not in the vocabulary");
  }
  if (Node merges = m.get("merges"); !merges.is_null()) {
    if (!merges.is_array()) bad("model.merges must be an array");
    bpe.merges.reserve(merges.size());
    const bool pairs = merges.size() > 0 && merges[0].is_array();
    std::string ab;
    for (uint32_t r = 0; r < merges.size(); ++r) {
      Node e = merges[r];
      std::string_view a, b;
      if (pairs) {
        if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_string())
          bad("model.merges[" + std::to_string(r) + "] must be a pair of strings like the first one");
        a = e[0].str();
        b = e[1].str();
      } else {
        if (!e.is_string()) bad("model.merges[" + std::to_string(r) + "] must be a string \"a b\" like the first one");
        std::string_view s = e.str();
        size_t sp = s.find(' ');
        if (sp == std::string_view::npos || s.find(' ', sp + 1) != std::string_view::npos)
          bad("model.merges[" + std::to_string(r) + "] \"" + std::string(s) + "\" must be two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      }
      ab.assign(a);
      ab.append(b);
      int32_t ia = im->token_map.find(a), ib = im->token_map.find(b), iab = im->token_map.find(ab);
      if (ia < 0 || ib < 0 || iab < 0)
        bad("model.merges[" + std::to_string(r) + "] (\"" + std::string(a) + "\", \"" + std::string(b) +
            "\") uses a token that is not in model.vocab");
      bpe.merges.set(ia, ib, r, iab);
    }
  }

  // ---- added tokens (the id rule of `tokenizers`' AddedVocabulary::add_tokens)
  std::vector<AddedToken> special_list, classic_list;
  std::set<std::string> special_set;
  std::unordered_map<std::string, int32_t> added_map;
  std::map<int32_t, AddedToken> added_r;
  int64_t max_added = -1;
  if (Node at = j.get("added_tokens"); !at.is_null()) {
    if (!at.is_array()) bad("added_tokens must be an array");
    for (uint32_t i = 0; i < at.size(); ++i) {
      Node e = at[i];
      std::string w = "added_tokens[" + std::to_string(i) + "]";
      if (!e.is_object()) bad(w + " must be an object");
      AddedToken t;
      t.content = get_str(e, "content", "", w);
      t.single_word = get_bool(e, "single_word", false, w);
      t.lstrip = get_bool(e, "lstrip", false, w);
      t.rstrip = get_bool(e, "rstrip", false, w);
      t.special = get_bool(e, "special", false, w);
      t.normalized = get_bool(e, "normalized", !t.special, w);
      if (e.get("id").exists()) get_id(e.get("id"), w + ".id");  // checked; ids are assigned as HF does
      if (t.special && !t.content.empty() && !special_set.count(t.content)) {
        special_list.push_back(t);
        special_set.insert(t.content);
      }
      if (t.content.empty()) continue;
      bool dup = false;
      for (const auto& kv : added_r) {
        const AddedToken& o = kv.second;
        dup = dup || (o.content == t.content && o.single_word == t.single_word && o.lstrip == t.lstrip &&
                      o.rstrip == t.rstrip && o.normalized == t.normalized && o.special == t.special);
      }
      if (dup) continue;
      int64_t id;
      if (auto f = added_map.find(t.content); f != added_map.end()) id = f->second;
      else if (int32_t mid = im->token_map.find(t.content); mid >= 0) id = mid;
      else if (max_added < 0) id = bpe.n_vocab_entries;
      else id = (max_added >= bpe.n_vocab_entries || bpe.n_vocab_entries == 0) ? max_added + 1 : bpe.n_vocab_entries;
      if (id >= kMaxId) bad(w + ": too many tokens");
      added_map[t.content] = int32_t(id);
      t.id = int32_t(id);
      added_r[int32_t(id)] = t;
      max_added = std::max<int64_t>(max_added, id);
      if (!special_set.count(t.content)) classic_list.push_back(t);
    }
  }
  // matchers: special tokens then the others; behaviour flags come from the token owning the id
  std::unordered_map<int32_t, int32_t> index_of_id;
  for (auto& kv : added_r) {
    index_of_id[kv.first] = int32_t(im->added.size());
    im->added.push_back(kv.second);
  }
  auto add_to_matchers = [&](const AddedToken& t) {
    auto f0 = added_map.find(t.content);
    int32_t id = f0 != added_map.end() ? f0->second : im->token_map.find(t.content);
    auto f = index_of_id.find(id);
    if (f == index_of_id.end()) return;
    if (!t.normalized) {
      im->raw_matcher.add(t.content, f->second);
    } else {
      std::string a = t.content, b;
      for (NormForm nf : im->normalizers) {
        b.clear();
        normalize_append(b, a, nf);
        a.swap(b);
      }
      im->norm_matcher.add(std::move(a), f->second);
    }
  };
  for (const auto& t : special_list) add_to_matchers(t);
  for (const auto& t : classic_list) add_to_matchers(t);
  im->raw_matcher.finish();
  im->norm_matcher.finish();
  auto normalized = [&](const std::string& text) {
    std::string a = text, b;
    for (NormForm nf : im->normalizers) {
      b.clear();
      normalize_append(b, a, nf);
      a.swap(b);
    }
    return a;
  };
  for (const auto& kv : added_map) {
    max_id = std::max<int64_t>(max_id, kv.second);
    if (kv.second >= int64_t(im->id_token.size())) im->id_token.resize(size_t(kv.second) + 1);
    // a normalized added token decodes (and prints) as its normalized form, as in `tokenizers`
    auto owner = added_r.find(kv.second);
    bool norm = owner != added_r.end() && owner->second.normalized;
    im->id_token[size_t(kv.second)] = norm ? normalized(kv.first) : kv.first;
    im->token_map.set(kv.first, kv.second);
  }

  // ---- post-processor, decoder
  parse_post(j.get("post_processor"), *im, "post_processor");
  for (int32_t id : im->prefix_ids) max_id = std::max<int64_t>(max_id, id);
  for (int32_t id : im->suffix_ids) max_id = std::max<int64_t>(max_id, id);
  parse_decoder(j.get("decoder"), im->byte_level_decoder, "decoder");

  // ---- per-id tables
  im->vocab_size = max_id + 1;
  const size_t V = size_t(im->vocab_size);
  im->id_token.resize(V);
  im->id_bytes.resize(V);
  im->id_known.assign(V, 0);
  im->id_special.assign(V, 0);
  for (int32_t id : vocab_ids) im->id_known[size_t(id)] = 1;
  for (const auto& kv : added_map) im->id_known[size_t(kv.second)] = 1;
  for (size_t id = 0; id < V; ++id) {
    if (!im->id_known[id]) continue;
    const std::string& s = im->id_token[id];
    if (!special_set.empty() && special_set.count(s)) im->id_special[id] = 1;
    if (im->byte_level_decoder && byte_level_to_bytes(s, raw)) im->id_bytes[id] = raw;
    else im->id_bytes[id] = s;
  }

  // ---- fast paths of the pre-tokenizer
  const auto& P = im->pretok;
  auto plain_split = [](const PreTokStep& s) {
    return s.kind == PreTokStep::Split && s.regex && s.behavior == SplitBehavior::Isolated && !s.invert;
  };
  auto plain_bl = [](const PreTokStep& s) {
    return s.kind == PreTokStep::ByteLevel && !s.add_prefix_space && !s.use_regex;
  };
  if (P.empty()) im->fast_no_pretok = true;
  else if (P.size() == 2 && plain_split(P[0]) && plain_bl(P[1])) im->fast_regex = P[0].regex.get();
  else if (P.size() == 1 && plain_split(P[0])) im->fast_regex = P[0].regex.get();
  else if (P.size() == 1 && P[0].kind == PreTokStep::ByteLevel && !P[0].add_prefix_space && P[0].use_regex)
    im->fast_regex = im->gpt2_regex.get();

  if (im->fast_regex) {
    im->fast_known = known_pattern(im->fast_regex->pattern());
    im->splittable = im->fast_known != KnownPattern::None;
  }

  parse_config(config_json, *im);
  return im;
}

}  // namespace qwen
