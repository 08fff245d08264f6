// io/gguf_model.cpp — GGUF <-> Model: the llama / qwen2 / qwen3 metadata and tensor names
// (docs/formats.md, "GGUF") mapped onto ModelConfig and LayerWeights, and the writer side of
// `qwen export --format gguf` (see gguf_model.h).
#include "io/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/gguf_tokenizer.h"
#include "ops/quant.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"

namespace qwen::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string ne_str(const std::vector<int64_t>& ne) {
  std::string r = "[";
  for (size_t i = 0; i < ne.size(); ++i) r += (i ? ", " : "") + std::to_string(ne[i]);
  return r + "]";
}

constexpr const char* kSupportedTypes = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K";

// Owns the parsed file and the few tensors we had to copy (permuted or converted).
struct Owner {
  std::shared_ptr<const GgufFile> file;
  std::vector<std::unique_ptr<uint8_t[]>> bufs;
  uint8_t* alloc(size_t n) {
    bufs.emplace_back(new uint8_t[n]);
    return bufs.back().get();
  }
};

// llama.cpp's converter permutes the rows of the llama architecture's q / k weights (per head
// of D rows: HF row j·D/2 + i goes to 2i + j) for its interleaved RoPE. Undo it: HF row
// h·D + j·D/2 + i = GGUF row h·D + 2i + j. Rows are whole blocks, so this is a byte copy.
void unpermute_rows(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t D, size_t row_bytes) {
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < D / 2; ++i)
        std::memcpy(dst + size_t(h * D + j * (D / 2) + i) * row_bytes,
                    src + size_t(h * D + 2 * i + j) * row_bytes, row_bytes);
}
// The converter's direction (for export).
void permute_rows(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t D, size_t row_bytes) {
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < D / 2; ++i)
        std::memcpy(dst + size_t(h * D + 2 * i + j) * row_bytes,
                    src + size_t(h * D + j * (D / 2) + i) * row_bytes, row_bytes);
}

class Assembler {
 public:
  Assembler(std::shared_ptr<const GgufFile> f) : f_(*f), owner_(std::make_shared<Owner>()) {
    owner_->file = std::move(f);
  }

  const GgufTensor& need(const std::string& name, std::vector<int64_t> ne) {
    const GgufTensor* t = f_.find_tensor(name);
    if (!t)
      throw Error(f_.where() + ": tensor '" + name + "' is missing (expected shape " + ne_str(ne) +
                  "); the file does not match its metadata");
    if (t->ne != ne)
      throw Error(f_.where() + ": tensor '" + name + "' has shape " + ne_str(t->ne) +
                  ", the metadata implies " + ne_str(ne));
    return *t;
  }
  DType dtype_of(const GgufTensor& t) {
    DType d;
    if (!ggml_to_dtype(t.type, &d))
      throw Error(f_.where() + ": tensor '" + t.name + "' has type " + ggml_type_name(t.type) +
                  ", which this build does not support (supported: " + kSupportedTypes + ")");
    return d;
  }
  // A vector (norm weight or bias) as f32, converted if stored otherwise.
  const float* vec(const std::string& name, int64_t n) {
    const GgufTensor& t = need(name, {n});
    const DType d = dtype_of(t);
    if (d == DType::F32) return reinterpret_cast<const float*>(t.data);
    if (dtype_is_quantized(d))
      throw Error(f_.where() + ": tensor '" + name + "' is quantised (" + ggml_type_name(t.type) +
                  "); norms and biases must be F32, F16 or BF16");
    float* dst = reinterpret_cast<float*>(owner_->alloc(size_t(n) * 4));
    convert_to_f32(t.data, d, dst, size_t(n));
    return dst;
  }
  const float* opt_vec(const std::string& name, int64_t n) {
    return f_.find_tensor(name) ? vec(name, n) : nullptr;
  }
  // nn.Linear (n_out, n_in) = GGUF ne [n_in, n_out]; permute_heads > 0 undoes llama's q/k permutation.
  Linear lin(const std::string& name, int64_t n_out, int64_t n_in, bool bias, int64_t permute_heads = 0,
             int64_t head_dim = 0) {
    const GgufTensor& t = need(name + ".weight", {n_in, n_out});
    Linear l;
    l.dtype = dtype_of(t);
    l.n_out = n_out;
    l.n_in = n_in;
    l.w = t.data;
    if (permute_heads > 0) {
      if (n_out != permute_heads * head_dim)
        throw Error(f_.where() + ": tensor '" + t.name + "' has " + std::to_string(n_out) + " rows, not heads x head_dim = " +
                    std::to_string(permute_heads * head_dim));
      const size_t rb = dtype_row_bytes(l.dtype, n_in);
      uint8_t* dst = owner_->alloc(t.nbytes);
      unpermute_rows(t.data, dst, permute_heads, head_dim, rb);
      l.w = dst;
    }
    if (bias) {
      l.bias = vec(name + ".bias", n_out);
      if (permute_heads > 0) {
        float* b = reinterpret_cast<float*>(owner_->alloc(size_t(n_out) * 4));
        unpermute_rows(reinterpret_cast<const uint8_t*>(l.bias), reinterpret_cast<uint8_t*>(b), permute_heads,
                       head_dim, 4);
        l.bias = b;
      }
    }
    return l;
  }
  std::shared_ptr<void> keep() { return owner_; }

 private:
  const GgufFile& f_;
  std::shared_ptr<Owner> owner_;
};

}  // namespace

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string& w = f.where();
  const std::string arch = f.get_string("general.architecture");
  ModelConfig c;
  if (arch == "llama") c.architecture = "LlamaForCausalLM";
  else if (arch == "qwen2") c.architecture = "Qwen2ForCausalLM";
  else if (arch == "qwen3") c.architecture = "Qwen3ForCausalLM";
  else
    throw Error(w + ": architecture '" + arch + "' (general.architecture) is not supported; supported: llama, qwen2, qwen3");
  c.model_type = arch;
  const std::string p = arch + ".";
  auto pos_int = [&](const std::string& key) {
    const int64_t v = f.get_int(key);
    if (v <= 0) throw Error(w + ": metadata key '" + key + "' must be positive (got " + std::to_string(v) + ")");
    return v;
  };
  c.num_hidden_layers = pos_int(p + "block_count");
  c.hidden_size = pos_int(p + "embedding_length");
  c.intermediate_size = pos_int(p + "feed_forward_length");
  c.num_attention_heads = pos_int(p + "attention.head_count");
  c.num_key_value_heads = f.find(p + "attention.head_count_kv") ? pos_int(p + "attention.head_count_kv")
                                                                 : c.num_attention_heads;
  c.max_position_embeddings = f.find(p + "context_length") ? pos_int(p + "context_length") : 2048;
  c.rms_norm_eps = f.get_float(p + "attention.layer_norm_rms_epsilon");
  c.rope_theta = f.get_float(p + "rope.freq_base", 10000.0);
  c.explicit_head_dim = f.find(p + "attention.key_length") != nullptr;
  c.head_dim = c.explicit_head_dim ? pos_int(p + "attention.key_length")
                                   : c.hidden_size / std::max<int64_t>(1, c.num_attention_heads);
  if (f.find(p + "attention.value_length") && f.get_int(p + "attention.value_length") != c.head_dim)
    throw Error(w + ": attention.value_length differs from attention.key_length; not supported");
  if (f.find(p + "rope.dimension_count") && f.get_int(p + "rope.dimension_count") != c.head_dim)
    throw Error(w + ": rope.dimension_count " + std::to_string(f.get_int(p + "rope.dimension_count")) +
                " is not the head size " + std::to_string(c.head_dim) + " (partial RoPE is not supported)");
  if (arch == "qwen3") c.explicit_head_dim = true;
  if (arch == "qwen2" && c.head_dim != c.hidden_size / c.num_attention_heads) c.model_type = "qwen2";  // validate() names it

  // RoPE scaling.
  const std::string st = f.get_string(p + "rope.scaling.type", "none");
  if (st == "linear" || st == "yarn") {
    c.rope_scaling.type = st;
    c.rope_scaling.factor = f.get_float(p + "rope.scaling.factor");
    if (st == "yarn") {
      c.rope_scaling.has_original_max = true;
      c.rope_scaling.original_max_position_embeddings = double(pos_int(p + "rope.scaling.original_context_length"));
    }
  } else if (st != "none") {
    throw Error(w + ": rope scaling type '" + st + "' (" + p + "rope.scaling.type) is not supported; supported: none, linear, yarn");
  }
  if (f.find_tensor("rope_freqs.weight"))
    throw Error(w + ": the file has per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 style), which are not supported");

  const GgufTensor* emb = f.find_tensor("token_embd.weight");
  if (!emb) throw Error(w + ": tensor 'token_embd.weight' is missing");
  if (emb->ne.size() != 2)
    throw Error(w + ": tensor 'token_embd.weight' must be 2-D, it has shape " + ne_str(emb->ne));
  c.vocab_size = f.find(p + "vocab_size") ? pos_int(p + "vocab_size") : emb->ne[1];
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  c.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.o_bias = f.find_tensor("blk.0.attn_output.bias") != nullptr;
  c.mlp_bias = f.find_tensor("blk.0.ffn_gate.bias") != nullptr;
  c.qk_norm = f.find_tensor("blk.0.attn_q_norm.weight") != nullptr;
  if (arch == "qwen2" && (!c.qkv_bias || c.o_bias || c.mlp_bias || c.qk_norm))
    throw Error(w + ": a qwen2 file must have q/k/v biases and no other biases or q/k norms");
  if (arch != "qwen3" && c.qk_norm)
    throw Error(w + ": q/k norms (attn_q_norm) are only supported for qwen3");

  auto tok_id = [&](const char* key) -> int64_t {
    if (!f.find(key)) return -1;
    const int64_t id = f.get_int(key);
    return id >= 0 && id < c.vocab_size ? id : -1;
  };
  c.bos_token_id = tok_id("tokenizer.ggml.bos_token_id");
  c.pad_token_id = tok_id("tokenizer.ggml.padding_token_id");
  for (const char* k : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
    const int64_t id = tok_id(k);
    if (id >= 0 && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
      c.eos_token_ids.push_back(id);
  }
  c.torch_dtype = "float32";
  c.validate(w);
  return c;
}

std::unique_ptr<Model> gguf_to_model(std::shared_ptr<const GgufFile> file) {
  const GgufFile& f = *file;
  const ModelConfig c = gguf_model_config(f);
  Assembler a(file);
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, D = c.head_dim;
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads;
  const bool llama = c.model_type == "llama";

  const GgufTensor& emb = a.need("token_embd.weight", {C, V});
  const DType et = a.dtype_of(emb);
  const float* final_norm = a.vec("output_norm.weight", C);
  Linear head = c.tie_word_embeddings ? Linear{emb.data, et, nullptr, V, C} : a.lin("output", V, C, false);
  std::vector<LayerWeights> layers(size_t(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LayerWeights& L = layers[size_t(i)];
    L.attn_norm = a.vec(p + "attn_norm.weight", C);
    L.q = a.lin(p + "attn_q", H * D, C, c.qkv_bias, llama ? H : 0, D);
    L.k = a.lin(p + "attn_k", KV * D, C, c.qkv_bias, llama ? KV : 0, D);
    L.v = a.lin(p + "attn_v", KV * D, C, c.qkv_bias);
    L.o = a.lin(p + "attn_output", C, H * D, c.o_bias);
    if (c.qk_norm) {
      L.q_norm = a.vec(p + "attn_q_norm.weight", D);
      L.k_norm = a.vec(p + "attn_k_norm.weight", D);
    }
    L.mlp_norm = a.vec(p + "ffn_norm.weight", C);
    L.gate = a.lin(p + "ffn_gate", F, C, c.mlp_bias);
    L.up = a.lin(p + "ffn_up", F, C, c.mlp_bias);
    L.down = a.lin(p + "ffn_down", C, F, c.mlp_bias);
  }
  // Every matrix format must have kernels in this build (Q8_0's live in another file).
  auto check = [&](DType d, const std::string& what) {
    if (dtype_is_quantized(d)) {
      try {
        ops::quant_kernels(d);
      } catch (const Error& e) {
        throw Error(f.where() + ": " + what + ": " + e.what());
      }
    }
  };
  check(et, "token_embd.weight");
  check(head.dtype, "output.weight");
  for (const auto& L : layers)
    for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) check(l->dtype, "a layer matrix");
  return Model::from_weights(c, a.keep(), emb.data, et, final_norm, head, std::move(layers));
}

std::unique_ptr<Model> load_gguf_model(const std::string& path) {
  std::shared_ptr<const GgufFile> f = GgufFile::open(path);
  return gguf_to_model(std::move(f));
}

// ---------------------------------------------------------------- export

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return "";
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

uint32_t file_type_of(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_1: return 3;
    case DType::Q8_0: return 7;
    case DType::BF16: return 32;
    default: return 0;
  }
}

// Adds one metadata value read from another GGUF file.
void copy_value(GgufWriter& wr, const std::string& key, const GgufValue& v) {
  switch (v.type) {
    case GgufType::STRING: wr.add_string(key, v.str); return;
    case GgufType::BOOL: wr.add_bool(key, v.i != 0); return;
    case GgufType::F32: case GgufType::F64: wr.add_f32(key, float(v.f)); return;
    case GgufType::I8: case GgufType::I16: case GgufType::I32: wr.add_i32(key, int32_t(v.i)); return;
    case GgufType::U64: case GgufType::I64: wr.add_u64(key, uint64_t(v.i)); return;
    case GgufType::ARRAY:
      if (v.elem_type == GgufType::STRING) return wr.add_string_array(key, v.strs);
      if (!v.floats.empty() || v.elem_type == GgufType::F32) {
        std::vector<float> x(v.floats.begin(), v.floats.end());
        return wr.add_f32_array(key, x);
      }
      {
        std::vector<int32_t> x(v.ints.begin(), v.ints.end());
        return wr.add_i32_array(key, x);
      }
    default: wr.add_u32(key, uint32_t(v.i)); return;
  }
}

// tokenizer.ggml.pre for a tokenizer.json pre-tokenizer (what llama.cpp's converter would pick
// for the same regex), or "" if we cannot name it.
std::string pre_name_of(const json& tj) {
  static const std::string qwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const std::string llama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const json& p = tj.contains("pre_tokenizer") ? tj["pre_tokenizer"] : json();
  if (!p.is_object()) return "";
  std::vector<json> steps;
  if (p.value("type", "") == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array())
    for (const auto& s : p["pretokenizers"]) steps.push_back(s);
  else
    steps.push_back(p);
  auto is_bl = [](const json& s, bool regex) {
    return s.value("type", "") == "ByteLevel" && s.value("use_regex", true) == regex &&
           !s.value("add_prefix_space", true);
  };
  auto split_re = [](const json& s) -> std::string {
    if (s.value("type", "") != "Split" || !s.contains("pattern") || !s["pattern"].is_object()) return "";
    const json& pat = s["pattern"];
    return pat.contains("Regex") && pat["Regex"].is_string() ? pat["Regex"].get<std::string>() : "";
  };
  if (steps.size() == 1 && is_bl(steps[0], true)) return "gpt-2";
  if (steps.size() == 2 && is_bl(steps[1], false)) {
    const std::string re = split_re(steps[0]);
    if (re == qwen2) return "qwen2";
    if (re == llama3) return "llama-bpe";
  }
  if (steps.size() == 2 && is_bl(steps[1], true) && steps[0].value("type", "") == "Digits" &&
      steps[0].value("individual_digits", false))
    return "smollm";
  return "";
}

// tokenizer.ggml.* from a Hugging Face tokenizer folder (llama.cpp converter's gpt2 vocab rules).
void add_hf_tokenizer(GgufWriter& wr, const std::string& dir, int64_t vocab_size) {
  const std::string tj_text = read_text(fs::path(dir) / "tokenizer.json");
  const std::string cfg_text = read_text(fs::path(dir) / "tokenizer_config.json");
  json tj = json::parse(tj_text, nullptr, false);
  if (!tj.is_object() || !tj.contains("model") || !tj["model"].is_object())
    throw Error(dir + "/tokenizer.json: not a tokenizer.json with a \"model\" object");
  const json& m = tj["model"];
  if (m.value("type", "BPE") != "BPE")
    throw Error(dir + "/tokenizer.json: only BPE tokenizers can be exported to GGUF");
  const std::string pre = pre_name_of(tj);
  if (pre.empty())
    throw Error(dir + "/tokenizer.json: its pre-tokenizer has no llama.cpp name (supported: Qwen2, Llama 3, GPT-2, SmolLM regexes)");
  Tokenizer tok = Tokenizer::from_dir(dir);
  if (tok.vocab_size() > vocab_size)
    throw Error(dir + ": the tokenizer has " + std::to_string(tok.vocab_size()) + " tokens, more than the model's vocab_size " +
                std::to_string(vocab_size));
  std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
  std::vector<int32_t> types(size_t(vocab_size), 5);  // UNUSED unless named below
  for (const auto& [s, id] : m["vocab"].items()) {
    const int64_t i = id.get<int64_t>();
    if (i >= 0 && i < vocab_size) tokens[size_t(i)] = s, types[size_t(i)] = 1;
  }
  if (tj.contains("added_tokens") && tj["added_tokens"].is_array())
    for (const auto& a : tj["added_tokens"]) {
      const int64_t i = a.value("id", int64_t(-1));
      if (i < 0 || i >= vocab_size) continue;
      const std::string content = a.value("content", "");
      const bool special = a.value("special", false);
      const bool looks_control = content.size() > 4 && content.rfind("<|", 0) == 0 &&
                                 content.compare(content.size() - 2, 2, "|>") == 0;
      tokens[size_t(i)] = content;
      types[size_t(i)] = (special || looks_control) ? 3 : 4;
    }
  for (int64_t i = 0; i < vocab_size; ++i)
    if (types[size_t(i)] == 5) tokens[size_t(i)] = "[PAD" + std::to_string(i) + "]";
  std::vector<std::string> merges;
  if (m.contains("merges") && m["merges"].is_array())
    for (const auto& e : m["merges"]) {
      if (e.is_string()) merges.push_back(e.get<std::string>());
      else if (e.is_array() && e.size() == 2) merges.push_back(e[0].get<std::string>() + " " + e[1].get<std::string>());
    }
  wr.add_string("tokenizer.ggml.model", "gpt2");
  wr.add_string("tokenizer.ggml.pre", pre);
  wr.add_string_array("tokenizer.ggml.tokens", tokens);
  wr.add_i32_array("tokenizer.ggml.token_type", types);
  wr.add_string_array("tokenizer.ggml.merges", merges);
  const int32_t endoftext = tok.token_to_id("<|endoftext|>");
  const int32_t bos = tok.bos_id() >= 0 ? tok.bos_id() : endoftext;
  const int32_t pad = tok.pad_id() >= 0 ? tok.pad_id() : endoftext;
  if (bos >= 0) wr.add_u32("tokenizer.ggml.bos_token_id", uint32_t(bos));
  if (tok.eos_id() >= 0) wr.add_u32("tokenizer.ggml.eos_token_id", uint32_t(tok.eos_id()));
  if (pad >= 0) wr.add_u32("tokenizer.ggml.padding_token_id", uint32_t(pad));
  bool add_bos = false;
  json cfg = json::parse(cfg_text.empty() ? "{}" : cfg_text, nullptr, false);
  if (cfg.is_object() && cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean())
    add_bos = cfg["add_bos_token"].get<bool>();
  wr.add_bool("tokenizer.ggml.add_bos_token", add_bos);
  const std::string tpl = load_chat_template(dir);
  if (!tpl.empty()) wr.add_string("tokenizer.chat_template", tpl);
}

}  // namespace

GgufExportResult export_gguf(const std::string& model_path, const std::string& out_path, DType type,
                             const std::string& name) {
  if (!(type == DType::F32 || type == DType::F16 || type == DType::BF16 || type == DType::Q8_0 ||
        type == DType::Q4_0 || type == DType::Q4_1))
    throw Error(std::string("cannot export GGUF weights as ") + dtype_name(type) +
                "; choose f32, f16, bf16, q8_0, q4_0 or q4_1");
  auto model = Model::load(model_path);
  const ModelConfig& c = model->config();
  const std::string arch = c.model_type;
  if (c.rope_scaling.type != "default" && c.rope_scaling.type != "linear" && c.rope_scaling.type != "yarn")
    throw Error(model_path + ": rope scaling '" + c.rope_scaling.type + "' cannot be written to GGUF (only linear and yarn)");
  if (arch == "qwen2" && (c.o_bias || c.mlp_bias))
    throw Error(model_path + ": qwen2 GGUF files have no o_proj / MLP biases");

  GgufWriter wr;
  wr.add_string("general.architecture", arch);
  wr.add_string("general.type", "model");
  std::string nm = name;
  if (nm.empty()) nm = fs::path(model_path).filename().replace_extension("").string();
  if (nm.empty()) nm = fs::path(model_path).parent_path().filename().string();
  wr.add_string("general.name", nm);
  const std::string p = arch + ".";
  wr.add_u32(p + "block_count", uint32_t(c.num_hidden_layers));
  wr.add_u32(p + "context_length", uint32_t(c.max_position_embeddings));
  wr.add_u32(p + "embedding_length", uint32_t(c.hidden_size));
  wr.add_u32(p + "feed_forward_length", uint32_t(c.intermediate_size));
  wr.add_u32(p + "attention.head_count", uint32_t(c.num_attention_heads));
  wr.add_u32(p + "attention.head_count_kv", uint32_t(c.num_key_value_heads));
  wr.add_f32(p + "rope.freq_base", float(c.rope_theta));
  wr.add_f32(p + "attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
  if (c.explicit_head_dim || arch == "qwen3") {
    wr.add_u32(p + "attention.key_length", uint32_t(c.head_dim));
    wr.add_u32(p + "attention.value_length", uint32_t(c.head_dim));
  }
  if (arch == "llama") {
    wr.add_u32(p + "vocab_size", uint32_t(c.vocab_size));
    wr.add_u32(p + "rope.dimension_count", uint32_t(c.head_dim));
  }
  if (c.rope_scaling.type == "linear" || c.rope_scaling.type == "yarn") {
    wr.add_string(p + "rope.scaling.type", c.rope_scaling.type);
    wr.add_f32(p + "rope.scaling.factor", float(c.rope_scaling.factor));
    if (c.rope_scaling.type == "yarn")
      wr.add_u32(p + "rope.scaling.original_context_length", uint32_t(c.rope_scaling.original_max_position_embeddings));
  }
  wr.add_u32("general.file_type", file_type_of(type));
  wr.add_u32("general.quantization_version", 2);

  // Tokenizer.
  GgufExportResult res;
  res.architecture = arch;
  if (ends_with(model_path, ".gguf")) {
    auto src = GgufFile::open(model_path);
    const GgufValue* tm = src->find("tokenizer.ggml.model");
    for (const auto& [k, v] : src->metadata())
      if (k.rfind("tokenizer.", 0) == 0) copy_value(wr, k, v);
    if (!tm) wr.add_string("tokenizer.ggml.model", "none");
    res.tokenizer = tm && tm->str != "none" && tm->str != "no_vocab";
  } else if (fs::exists(fs::path(model_path) / "tokenizer.json")) {
    add_hf_tokenizer(wr, model_path, c.vocab_size);
    res.tokenizer = true;
  } else {
    wr.add_string("tokenizer.ggml.model", "none");
    if (arch != "llama") wr.add_u32(p + "vocab_size", uint32_t(c.vocab_size));
  }

  // Tensors: HF names -> GGUF names, converted (and for llama q/k, permuted) into owned buffers.
  std::vector<std::unique_ptr<uint8_t[]>> bufs;
  const int64_t D = c.head_dim;
  auto add = [&](const std::string& gname, const Model::NamedTensor& t, bool matrix, int64_t permute_heads) {
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    const int64_t cols = t.shape.back();
    DType out = matrix ? type : DType::F32;
    if (dtype_is_quantized(out) && cols % dtype_block_elems(out) != 0) out = DType::F16;
    const size_t src_rb = dtype_row_bytes(t.dtype, cols), dst_rb = dtype_row_bytes(out, cols);
    const size_t nbytes = size_t(rows) * dst_rb;
    bufs.emplace_back(new uint8_t[nbytes]);
    uint8_t* dst = bufs.back().get();
    std::vector<float> row(static_cast<size_t>(cols));
    const uint8_t* src = static_cast<const uint8_t*>(t.data);
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* s = src + size_t(r) * src_rb;
      if (dtype_is_quantized(t.dtype)) ops::dequantize_row(t.dtype, s, row.data(), cols);
      else convert_to_f32(s, t.dtype, row.data(), size_t(cols));
      uint8_t* d = dst + size_t(r) * dst_rb;
      if (dtype_is_quantized(out)) ops::quantize_row(out, row.data(), d, cols);
      else convert_from_f32(row.data(), out, d, size_t(cols));
    }
    if (permute_heads > 0) {
      std::unique_ptr<uint8_t[]> perm(new uint8_t[nbytes]);
      permute_rows(dst, perm.get(), permute_heads, D, t.shape.size() == 2 ? dst_rb : 4);
      bufs.back() = std::move(perm);
      dst = bufs.back().get();
    }
    std::vector<int64_t> ne(t.shape.rbegin(), t.shape.rend());
    wr.add_tensor(gname, ne, dtype_to_ggml(out), dst, nbytes);
    res.bytes += nbytes;
  };
  static const std::pair<const char*, const char*> kNames[] = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},        {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.weight", "attn_k.weight"},        {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.weight", "attn_v.weight"},        {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.weight", "attn_output.weight"},   {"self_attn.o_proj.bias", "attn_output.bias"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},   {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},         {"mlp.gate_proj.bias", "ffn_gate.bias"},
      {"mlp.up_proj.weight", "ffn_up.weight"},             {"mlp.up_proj.bias", "ffn_up.bias"},
      {"mlp.down_proj.weight", "ffn_down.weight"},         {"mlp.down_proj.bias", "ffn_down.bias"},
  };
  for (const auto& t : model->named_tensors()) {
    const bool matrix = t.shape.size() == 2;
    if (t.name == "model.embed_tokens.weight") { add("token_embd.weight", t, true, 0); continue; }
    if (t.name == "model.norm.weight") { add("output_norm.weight", t, false, 0); continue; }
    if (t.name == "lm_head.weight") { add("output.weight", t, true, 0); continue; }
    const std::string pre = "model.layers.";
    if (t.name.rfind(pre, 0) != 0) throw Error("internal: unexpected tensor " + t.name);
    const size_t dot = t.name.find('.', pre.size());
    const std::string layer = t.name.substr(pre.size(), dot - pre.size());
    const std::string rest = t.name.substr(dot + 1);
    const char* g = nullptr;
    for (const auto& [hf, gg] : kNames)
      if (rest == hf) g = gg;
    if (!g) throw Error("internal: no GGUF name for " + t.name);
    int64_t perm = 0;
    if (arch == "llama" && (rest.rfind("self_attn.q_proj", 0) == 0)) perm = c.num_attention_heads;
    if (arch == "llama" && (rest.rfind("self_attn.k_proj", 0) == 0)) perm = c.num_key_value_heads;
    add("blk." + layer + "." + g, t, matrix, perm);
  }
  res.n_tensors = wr.n_tensors();
  wr.write(out_path);
  return res;
}

}  // namespace qwen::io
