// io/gguf_tokenizer.cpp — a qwen::Tokenizer from a GGUF file's tokenizer.ggml.* metadata (see
// gguf_tokenizer.h). The pre-tokenizer regexes per tokenizer.ggml.pre are the ones llama.cpp
// applies (llama-vocab.cpp, facts only), written as a Sequence of "Isolated" Split steps — what
// llama.cpp does with its list: each regex splits the pieces of the previous one and keeps the
// unmatched gaps. Where llama.cpp rewrote a tokenizer.json regex without inline flags we use the
// original (same matches), so our hand-written fast matchers recognise it.
#include "io/gguf_tokenizer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qwen/error.h"

namespace qwen::io {

namespace {

using json = nlohmann::json;

// Token types of tokenizer.ggml.token_type.
enum : int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

constexpr const char* kGpt2Re =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Re =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Re =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct PreTok {
  std::vector<const char*> names;
  std::vector<std::string> regexes;
  bool ignore_merges = false;
  bool add_bos = false;  // llama.cpp's default when tokenizer.ggml.add_bos_token is absent
};

// llama.cpp's GPT-2 regex has no final "|\s+"; with Isolated splitting the unmatched gap is a
// piece of its own, which is exactly what "\s+" would match, so the HF form is equivalent.
const std::vector<PreTok>& pre_table() {
  static const std::vector<PreTok> t = {
      {{"gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4"}, {kGpt2Re}, false, false},
      {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"},
       {R"(\p{N})", kGpt2Re}, false, false},
      {{"qwen2", "deepseek-r1-qwen", "stablelm2"}, {kQwen2Re}, false, false},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3"}, {kLlama3Re}, true, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3Re}, false, false},
      {{"default"},
       {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Re, R"(\p{N}+)", R"([0-9][0-9][0-9])"}, false, false},
  };
  return t;
}

const PreTok* find_pre(const std::string& name) {
  for (const auto& p : pre_table())
    for (const char* n : p.names)
      if (name == n) return &p;
  return nullptr;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

}  // namespace

std::vector<std::string> gguf_supported_pre() {
  std::vector<std::string> v;
  for (const auto& p : pre_table())
    for (const char* n : p.names) v.push_back(n);
  return v;
}

GgufTokenizerFiles gguf_tokenizer_files(const GgufFile& f) {
  const std::string& w = f.where();
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2") {
    std::string kind = model == "llama"  ? " (SentencePiece)"
                       : model == "bert" ? " (WordPiece)"
                       : model == "t5"   ? " (Unigram)"
                                         : "";
    throw Error(w + ": tokenizer type '" + model + "'" + kind +
                " (tokenizer.ggml.model) is not supported; only 'gpt2' (byte-level BPE) is");
  }
  std::string pre_name = f.get_string("tokenizer.ggml.pre", "default");
  const PreTok* pre = find_pre(pre_name);
  if (!pre)
    throw Error(w + ": pre-tokenizer '" + pre_name + "' (tokenizer.ggml.pre) is not supported; supported: " +
                join(gguf_supported_pre()));

  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufType::ARRAY || tokens->elem_type != GgufType::STRING)
    throw Error(w + ": tokenizer.ggml.tokens must be an array of strings");
  const size_t V = tokens->strs.size();
  if (V == 0) throw Error(w + ": tokenizer.ggml.tokens is empty");
  std::vector<int64_t> types(V, kNormal);
  if (const GgufValue* tt = f.find("tokenizer.ggml.token_type")) {
    if (tt->type != GgufType::ARRAY || tt->ints.size() != V)
      throw Error(w + ": tokenizer.ggml.token_type must be an integer array as long as tokenizer.ggml.tokens (" +
                  std::to_string(V) + ")");
    types = tt->ints;
  }
  const GgufValue* merges = f.find("tokenizer.ggml.merges");
  if (merges && (merges->type != GgufType::ARRAY || merges->elem_type != GgufType::STRING))
    throw Error(w + ": tokenizer.ggml.merges must be an array of strings");

  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < V; ++i) {
    const std::string& s = tokens->strs[i];
    const int64_t t = types[i];
    if (t == kUnused) continue;  // padding ids: no token
    if (!vocab.contains(s)) vocab[s] = i;
    if (t == kControl || t == kUserDefined) {
      added.push_back({{"id", i}, {"content", s}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", t == kControl}});
    }
  }
  json mj = json::array();
  if (merges) {
    for (size_t r = 0; r < merges->strs.size(); ++r) {
      const std::string& m = merges->strs[r];
      // llama.cpp splits at the first space after position 0
      const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
      if (sp == std::string::npos)
        throw Error(w + ": tokenizer.ggml.merges[" + std::to_string(r) + "] \"" + m +
                    "\" is not two tokens separated by a space");
      mj.push_back(json::array({m.substr(0, sp), m.substr(sp + 1)}));
    }
  }
  json steps = json::array();
  for (const auto& re : pre->regexes)
    steps.push_back({{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"}, {"invert", false}});
  steps.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}});
  json tj = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", steps}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false},
        {"ignore_merges", pre->ignore_merges}, {"vocab", vocab}, {"merges", mj}}},
  };

  auto token_of = [&](const char* key) -> json {
    const GgufValue* v = f.find(key);
    if (!v) return nullptr;
    const int64_t id = f.get_int(key);
    if (id < 0 || size_t(id) >= V)
      throw Error(w + ": " + key + " = " + std::to_string(id) + " is not a token id (vocabulary of " +
                  std::to_string(V) + ")");
    return tokens->strs[size_t(id)];
  };
  GgufTokenizerFiles out;
  out.chat_template = f.get_string("tokenizer.chat_template", "");
  json cj = {{"bos_token", token_of("tokenizer.ggml.bos_token_id")},
             {"eos_token", token_of("tokenizer.ggml.eos_token_id")},
             {"pad_token", token_of("tokenizer.ggml.padding_token_id")},
             {"add_bos_token", f.get_bool("tokenizer.ggml.add_bos_token", pre->add_bos)},
             {"add_eos_token", f.get_bool("tokenizer.ggml.add_eos_token", false)}};
  if (!out.chat_template.empty()) {
    // The tokenizer finds a template's default system message by the text
    // <|im_start|>system\n... with a Jinja escape "\n"; GGUF templates often hold a real line
    // break inside the string literal instead (SmolLM2's does). Inside a Jinja string the two
    // mean the same, so hand the tokenizer the escaped spelling (only its detection reads it).
    std::string tpl;
    for (char ch : out.chat_template) tpl += ch == '\n' ? std::string("\\n") : std::string(1, ch);
    cj["chat_template"] = tpl;
  }
  // Invalid UTF-8 in a hostile file becomes U+FFFD rather than an exception of the JSON library.
  out.tokenizer_json = tj.dump(-1, ' ', false, json::error_handler_t::replace);
  out.tokenizer_config_json = cj.dump(-1, ' ', false, json::error_handler_t::replace);
  return out;
}

Tokenizer gguf_tokenizer(const GgufFile& f) {
  GgufTokenizerFiles t = gguf_tokenizer_files(f);
  try {
    return Tokenizer::from_json(t.tokenizer_json, t.tokenizer_config_json);
  } catch (const Error& e) {
    throw Error(f.where() + ": the embedded tokenizer is inconsistent: " + e.what());
  }
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& model_path) {
  namespace fs = std::filesystem;
  if (ends_with(model_path, ".gguf")) {
    auto f = GgufFile::open(model_path);
    const std::string kind = f->get_string("tokenizer.ggml.model", "none");
    if (kind == "none" || kind == "no_vocab") return nullptr;
    return std::make_unique<Tokenizer>(gguf_tokenizer(*f));
  }
  if (fs::exists(fs::path(model_path) / "tokenizer.json"))
    return std::make_unique<Tokenizer>(Tokenizer::from_dir(model_path));
  return nullptr;
}

std::string load_chat_template(const std::string& model_path) {
  namespace fs = std::filesystem;
  if (ends_with(model_path, ".gguf")) {
    auto f = GgufFile::open(model_path);
    return f->get_string("tokenizer.chat_template", "");
  }
  const std::string jinja = read_file((fs::path(model_path) / "chat_template.jinja").string());
  if (!jinja.empty()) return jinja;
  const std::string cfg = read_file((fs::path(model_path) / "tokenizer_config.json").string());
  if (cfg.empty()) return "";
  json c = json::parse(cfg, nullptr, false);
  if (c.is_object() && c.contains("chat_template") && c["chat_template"].is_string())
    return c["chat_template"].get<std::string>();
  return "";
}

}  // namespace qwen::io
