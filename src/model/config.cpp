// model/config.cpp — ModelConfig from / to a Hugging Face config.json. Reading follows what
// transformers' Qwen2Config / Qwen3Config / LlamaConfig and modeling_rope_utils accept (legacy
// `rope_scaling` and v5 `rope_parameters`, `type` or `rope_type`, `torch_dtype` or `dtype`);
// writing emits the legacy keys every transformers version understands (formats.md §1.1, §3).
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qwen/config.h"
#include "qwen/error.h"

namespace qwen {

namespace {

using json = nlohmann::json;

struct ArchInfo {
  const char* architecture;
  const char* model_type;
};
constexpr ArchInfo kArchs[] = {
    {"Qwen2ForCausalLM", "qwen2"},
    {"Qwen3ForCausalLM", "qwen3"},
    {"LlamaForCausalLM", "llama"},
};

std::string supported_archs() {
  std::string s;
  for (const ArchInfo& a : kArchs) {
    if (!s.empty()) s += ", ";
    s += std::string(a.architecture) + " (" + a.model_type + ")";
  }
  return s;
}

const char* type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a non-integer number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    default: return "an unsupported value";
  }
}

// Typed access to one JSON object; errors name the file and the (dotted) key.
class Obj {
 public:
  Obj(const json& j, std::string where, std::string prefix = "")
      : j_(j), where_(std::move(where)), prefix_(std::move(prefix)) {}

  // The value, or nullptr when the key is absent or null (transformers treats both as unset).
  const json* get(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool has(const char* key) const { return get(key) != nullptr; }

  [[noreturn]] void fail(const char* key, const std::string& what) const {
    throw Error(where_ + ": key '" + prefix_ + key + "' " + what);
  }
  [[noreturn]] void wrong_type(const char* key, const char* want, const json& v) const {
    fail(key, std::string("must be ") + want + ", got " + type_name(v));
  }

  int64_t to_int(const char* key, const json& v) const {
    if (v.is_number_integer()) {
      if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
        fail(key, "is out of range (" + v.dump() + ")");
      return v.get<int64_t>();
    }
    if (v.is_number_float()) {  // 4096.0 is accepted as 4096, 4096.5 is not
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18) return int64_t(d);
    }
    wrong_type(key, "an integer", v);
  }
  int64_t int_or(const char* key, int64_t def) const {
    const json* v = get(key);
    return v ? to_int(key, *v) : def;
  }
  int64_t int_req(const char* key) const {
    const json* v = get(key);
    if (!v) fail(key, "is missing; config.json must set it");
    return to_int(key, *v);
  }
  double to_num(const char* key, const json& v) const {
    if (!v.is_number()) wrong_type(key, "a number", v);
    return v.get<double>();
  }
  double num_or(const char* key, double def) const {
    const json* v = get(key);
    return v ? to_num(key, *v) : def;
  }
  double num_req(const char* key, const std::string& why) const {
    const json* v = get(key);
    if (!v) fail(key, "is missing; " + why);
    return to_num(key, *v);
  }
  bool bool_or(const char* key, bool def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_boolean()) wrong_type(key, "true or false", *v);
    return v->get<bool>();
  }
  std::string str_or(const char* key, const std::string& def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_string()) wrong_type(key, "a string", *v);
    return v->get<std::string>();
  }

 private:
  const json& j_;
  std::string where_;
  std::string prefix_;
};

void parse_rope(const Obj& top, ModelConfig* c, const std::string& where) {
  const json* rs = top.get("rope_scaling");
  const json* rp = top.get("rope_parameters");
  if (rs && !rs->is_object()) top.wrong_type("rope_scaling", "an object or null", *rs);
  if (rp && !rp->is_object()) top.wrong_type("rope_parameters", "an object or null", *rp);
  // transformers: `rope_scaling or rope_parameters`.
  const json* rope = (rs && !rs->empty()) ? rs : rp;
  const char* rope_key = (rope == rs) ? "rope_scaling" : "rope_parameters";
  static const json empty = json::object();
  if (!rope) rope = &empty;
  for (const char* layer_type : {"full_attention", "sliding_attention"})
    if (rope->contains(layer_type))
      throw Error(where + ": per-layer-type " + rope_key + " ('" + layer_type +
                  "') is not supported for this architecture; use one flat dict");
  const Obj r(*rope, where, std::string(rope_key) + ".");

  // rope_theta: inside the rope dict first, then top level, then the class default.
  if (r.has("rope_theta")) {
    c->rope_theta = r.num_or("rope_theta", 10000.0);
  } else if (rope != rp && rp && rp->contains("rope_theta") && !(*rp)["rope_theta"].is_null()) {
    c->rope_theta = Obj(*rp, where, "rope_parameters.").num_or("rope_theta", 10000.0);
  } else {
    c->rope_theta = top.num_or("rope_theta", 10000.0);
  }
  if (r.has("partial_rotary_factor") && r.num_or("partial_rotary_factor", 1.0) != 1.0)
    r.fail("partial_rotary_factor", "other than 1.0 is not supported");

  RopeScaling& s = c->rope_scaling;
  s = RopeScaling();
  s.type = r.has("rope_type") ? r.str_or("rope_type", "default") : r.str_or("type", "default");
  const std::string& t = s.type;
  if (t == "longrope")
    throw Error(where + ": rope type 'longrope' is not supported (supported: default, linear, "
                "dynamic, yarn, llama3)");
  if (t != "default" && t != "linear" && t != "dynamic" && t != "yarn" && t != "llama3")
    throw Error(where + ": unknown rope type '" + t + "' in " + rope_key +
                " (supported: default, linear, dynamic, yarn, llama3)");
  if (t == "default") return;

  // original_max_position_embeddings: a top-level key wins (transformers' Phi3 rule), then the
  // rope dict; yarn/llama3 fall back to max_position_embeddings.
  if (top.has("original_max_position_embeddings") && (t == "yarn" || t == "llama3")) {
    s.has_original_max = true;
    s.original_max_position_embeddings = double(top.int_or("original_max_position_embeddings", 0));
  } else if (r.has("original_max_position_embeddings")) {
    s.has_original_max = true;
    s.original_max_position_embeddings = double(r.int_or("original_max_position_embeddings", 0));
  } else {
    s.original_max_position_embeddings = double(c->max_position_embeddings);
  }

  const std::string why = "rope type '" + t + "' needs it";
  if (t == "yarn") {
    // A missing factor is derived as max_position_embeddings / original (transformers).
    s.factor = r.has("factor") ? r.num_or("factor", 1.0)
                               : double(c->max_position_embeddings) / s.original_max_position_embeddings;
    if (r.has("attention_factor")) {
      s.has_attention_factor = true;
      s.attention_factor = r.num_or("attention_factor", 1.0);
    }
    // `get("beta_fast") or 32`: null and 0 both mean the default.
    s.beta_fast = r.num_or("beta_fast", 32.0);
    if (s.beta_fast == 0) s.beta_fast = 32.0;
    s.beta_slow = r.num_or("beta_slow", 1.0);
    if (s.beta_slow == 0) s.beta_slow = 1.0;
    if (r.has("mscale")) {
      s.has_mscale = true;
      s.mscale = r.num_or("mscale", 0);
    }
    if (r.has("mscale_all_dim")) {
      s.has_mscale_all_dim = true;
      s.mscale_all_dim = r.num_or("mscale_all_dim", 0);
    }
    s.truncate = r.bool_or("truncate", true);
  } else {
    s.factor = r.num_req("factor", why);
  }
  if (t == "llama3") {
    s.low_freq_factor = r.num_req("low_freq_factor", why);
    s.high_freq_factor = r.num_req("high_freq_factor", why);
  }
}

}  // namespace

ModelConfig ModelConfig::from_json(const std::string& text, const std::string& where) {
  // nlohmann stops at a NUL byte as if the input ended there; JSON never contains a raw NUL.
  if (text.find('\0') != std::string::npos)
    throw Error(where + ": not valid JSON (NUL byte at offset " + std::to_string(text.find('\0')) + ")");
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(where + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!root.is_object()) throw Error(where + ": must be a JSON object, got " + type_name(root));
  const Obj top(root, where);
  ModelConfig c;

  // Architecture: architectures[0] and model_type must agree with one we implement.
  std::string arch, mtype = top.str_or("model_type", "");
  if (const json* a = top.get("architectures")) {
    if (!a->is_array()) top.wrong_type("architectures", "a list of strings", *a);
    if (!a->empty()) {
      if (!(*a)[0].is_string()) top.wrong_type("architectures", "a list of strings", (*a)[0]);
      arch = (*a)[0].get<std::string>();
    }
  }
  const ArchInfo* info = nullptr;
  for (const ArchInfo& ai : kArchs) {
    if (!arch.empty() ? arch == ai.architecture : mtype == ai.model_type) info = &ai;
  }
  if (!info) {
    if (!arch.empty())
      throw Error(where + ": unknown architecture '" + arch + "'; supported: " + supported_archs());
    if (!mtype.empty())
      throw Error(where + ": unknown model_type '" + mtype + "'; supported: " + supported_archs());
    throw Error(where + ": no 'architectures' or 'model_type' key; supported: " + supported_archs());
  }
  if (!mtype.empty() && mtype != info->model_type)
    throw Error(where + ": architecture '" + arch + "' does not match model_type '" + mtype +
                "' (expected '" + info->model_type + "')");
  c.architecture = info->architecture;
  c.model_type = info->model_type;
  const bool qwen2 = c.model_type == "qwen2", qwen3 = c.model_type == "qwen3",
             llama = c.model_type == "llama";

  c.vocab_size = top.int_req("vocab_size");
  c.hidden_size = top.int_req("hidden_size");
  c.intermediate_size = top.int_req("intermediate_size");
  c.num_hidden_layers = top.int_req("num_hidden_layers");
  c.num_attention_heads = top.int_req("num_attention_heads");
  c.num_key_value_heads = top.int_or("num_key_value_heads", c.num_attention_heads);
  c.max_position_embeddings = top.int_or("max_position_embeddings", llama ? 2048 : 32768);
  c.rms_norm_eps = top.num_or("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = top.bool_or("tie_word_embeddings", false);
  c.initializer_range = top.num_or("initializer_range", 0.02);
  c.hidden_act = top.str_or("hidden_act", "silu");
  c.torch_dtype = top.has("torch_dtype") ? top.str_or("torch_dtype", "float32")
                                         : top.str_or("dtype", "float32");

  const int64_t derived_head_dim = c.num_attention_heads > 0 && c.hidden_size > 0
                                       ? c.hidden_size / c.num_attention_heads
                                       : 0;
  if (qwen2) {
    // Qwen2's modeling code has no head_dim; a matching key is harmless, another is ignored.
    c.head_dim = derived_head_dim;
    c.explicit_head_dim = top.has("head_dim") && top.int_or("head_dim", 0) == derived_head_dim;
    c.qkv_bias = true;
    c.o_bias = false;
  } else {
    c.explicit_head_dim = top.has("head_dim");
    c.head_dim = top.int_or("head_dim", qwen3 ? 128 : derived_head_dim);
    const bool bias = top.bool_or("attention_bias", false);
    c.qkv_bias = bias;
    c.o_bias = bias;
    c.qk_norm = qwen3;
    if (llama) c.mlp_bias = top.bool_or("mlp_bias", false);
  }
  if (top.bool_or("use_sliding_window", false))
    throw Error(where + ": use_sliding_window=true (sliding-window attention) is not supported");

  // LlamaConfig defaults bos 1 / eos 2 when the keys are absent (an explicit null means none).
  c.bos_token_id = top.int_or("bos_token_id", llama && !root.contains("bos_token_id") ? 1 : -1);
  c.pad_token_id = top.int_or("pad_token_id", -1);
  if (llama && !root.contains("eos_token_id")) c.eos_token_ids = {2};
  if (const json* e = top.get("eos_token_id")) {
    if (e->is_array()) {
      for (const json& id : *e) {
        if (!id.is_number_integer()) top.wrong_type("eos_token_id", "an integer or a list of integers", id);
        c.eos_token_ids.push_back(top.to_int("eos_token_id", id));
      }
    } else if (e->is_number_integer()) {
      c.eos_token_ids.push_back(top.to_int("eos_token_id", *e));
    } else {
      top.wrong_type("eos_token_id", "an integer or a list of integers", *e);
    }
  }

  // mHC keys: honoured only with use_mhc (a stray key in a plain config changes nothing).
  c.use_mhc = top.bool_or("use_mhc", false);
  if (c.use_mhc) {
    c.mhc_num_streams = top.int_or("mhc_num_streams", 4);
    c.mhc_sinkhorn_iters = top.int_or("mhc_sinkhorn_iters", 20);
    c.mhc_mode = top.str_or("mhc_mode", "mhc");
  }

  parse_rope(top, &c, where);
  c.validate(where);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open; pass the checkpoint folder's config.json");
  std::ostringstream ss;
  ss << f.rdbuf();
  return from_json(ss.str(), path);
}

void ModelConfig::validate(const std::string& where) const {
  auto bad = [&](const std::string& what) { throw Error(where + ": " + what); };
  auto range = [&](const char* name, int64_t v, int64_t hi) {
    if (v <= 0 || v > hi)
      bad(std::string(name) + " = " + std::to_string(v) + " must be in [1, " + std::to_string(hi) + "]");
  };
  range("vocab_size", vocab_size, int64_t(1) << 31);
  range("hidden_size", hidden_size, int64_t(1) << 24);
  range("intermediate_size", intermediate_size, int64_t(1) << 26);
  range("num_hidden_layers", num_hidden_layers, int64_t(1) << 16);
  range("num_attention_heads", num_attention_heads, int64_t(1) << 16);
  range("num_key_value_heads", num_key_value_heads, int64_t(1) << 16);
  range("head_dim", head_dim, int64_t(1) << 16);
  range("max_position_embeddings", max_position_embeddings, int64_t(1) << 40);
  if (num_attention_heads % num_key_value_heads != 0)
    bad("num_attention_heads = " + std::to_string(num_attention_heads) +
        " is not a multiple of num_key_value_heads = " + std::to_string(num_key_value_heads));
  if (head_dim % 2 != 0) bad("head_dim = " + std::to_string(head_dim) + " must be even for RoPE");
  if (model_type == "qwen2" && hidden_size % num_attention_heads != 0)
    bad("hidden_size = " + std::to_string(hidden_size) + " is not a multiple of num_attention_heads = " +
        std::to_string(num_attention_heads) + " (qwen2 derives head_dim from them)");
  if (model_type == "qwen2" && head_dim != hidden_size / num_attention_heads)
    bad("qwen2 has no head_dim key: head_dim must be hidden_size / num_attention_heads = " +
        std::to_string(hidden_size / num_attention_heads));
  if (model_type != "qwen2" && model_type != "qwen3" && model_type != "llama")
    bad("unknown model_type '" + model_type + "'; supported: qwen2, qwen3, llama");
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps))
    bad("rms_norm_eps must be a positive number");
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) bad("rope_theta must be a positive number");
  if (use_mhc) {
    if (mhc_num_streams < 1 || mhc_num_streams > 16)
      bad("mhc_num_streams = " + std::to_string(mhc_num_streams) +
          " must be in [1, 16] (4 is the paper's choice)");
    if (mhc_sinkhorn_iters < 1 || mhc_sinkhorn_iters > 10000)
      bad("mhc_sinkhorn_iters = " + std::to_string(mhc_sinkhorn_iters) +
          " must be in [1, 10000] (20 is the paper's choice)");
    if (mhc_mode != "mhc" && mhc_mode != "hc")
      bad("mhc_mode '" + mhc_mode + "' is unknown; use \"mhc\" or \"hc\"");
  }

  const RopeScaling& s = rope_scaling;
  const std::string& t = s.type;
  if (t != "default" && t != "linear" && t != "dynamic" && t != "yarn" && t != "llama3")
    bad("unknown rope type '" + t + "' (supported: default, linear, dynamic, yarn, llama3)");
  if (t == "default") return;
  if (!(s.factor > 0) || !std::isfinite(s.factor))
    bad("rope scaling factor must be a positive number (got " + std::to_string(s.factor) + ")");
  if (t == "dynamic" && head_dim <= 2) bad("dynamic rope needs head_dim > 2");
  if (t == "yarn" || t == "llama3") {
    const double o = s.original_max_position_embeddings;
    if (!(o >= 1) || !std::isfinite(o) || o > double(int64_t(1) << 40))
      bad("rope scaling original_max_position_embeddings must be a positive integer");
  }
  if (t == "yarn") {
    if (!(rope_theta > 1)) bad("yarn rope needs rope_theta > 1");
    const double m = s.factor * s.original_max_position_embeddings;
    if (!(m >= 1) || m > double(int64_t(1) << 40))
      bad("yarn factor * original_max_position_embeddings = " + std::to_string(m) +
          " is out of range for max_position_embeddings");
    if (!std::isfinite(s.beta_fast) || !std::isfinite(s.beta_slow) || !(s.beta_fast > 0) ||
        !(s.beta_slow > 0))
      bad("yarn beta_fast and beta_slow must be positive numbers");
    if (s.has_attention_factor && (!std::isfinite(s.attention_factor) || s.attention_factor < 0))
      bad("yarn attention_factor must be a number >= 0");
    if ((s.has_mscale && !std::isfinite(s.mscale)) ||
        (s.has_mscale_all_dim && !std::isfinite(s.mscale_all_dim)))
      bad("yarn mscale and mscale_all_dim must be finite numbers");
  }
  if (t == "llama3") {
    if (!(s.low_freq_factor > 0) || !(s.high_freq_factor > 0) || !std::isfinite(s.low_freq_factor) ||
        !std::isfinite(s.high_freq_factor) || s.low_freq_factor == s.high_freq_factor)
      bad("llama3 rope needs positive low_freq_factor != high_freq_factor");
  }
}

std::string ModelConfig::to_json() const {
  json j;  // std::map keys: sorted, as transformers writes (sort_keys=True)
  j["architectures"] = json::array({architecture});
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["hidden_act"] = hidden_act;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["torch_dtype"] = torch_dtype;
  j["initializer_range"] = initializer_range;
  j["attention_dropout"] = 0.0;
  j["use_cache"] = true;
  // Explicit nulls: LlamaConfig would otherwise assume bos 1 / eos 2.
  j["bos_token_id"] = bos_token_id >= 0 ? json(bos_token_id) : json(nullptr);
  if (pad_token_id >= 0) j["pad_token_id"] = pad_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else if (eos_token_ids.size() > 1) j["eos_token_id"] = eos_token_ids;
  else j["eos_token_id"] = nullptr;

  if (model_type == "qwen2" || model_type == "qwen3") j["use_sliding_window"] = false;
  if (model_type == "qwen3" || model_type == "llama") {
    j["head_dim"] = head_dim;
    j["attention_bias"] = qkv_bias;
  }
  if (model_type == "llama") {
    j["mlp_bias"] = mlp_bias;
    j["pretraining_tp"] = 1;
  }

  if (use_mhc) {
    j["use_mhc"] = true;
    j["mhc_num_streams"] = mhc_num_streams;
    j["mhc_sinkhorn_iters"] = mhc_sinkhorn_iters;
    j["mhc_mode"] = mhc_mode;
  }

  const RopeScaling& s = rope_scaling;
  if (s.type == "default") {
    j["rope_scaling"] = nullptr;
  } else {
    json r;
    r["type"] = s.type;  // old readers look for "type", new ones for "rope_type"
    r["rope_type"] = s.type;
    r["factor"] = s.factor;
    if (s.type == "yarn") {
      // Every transformers version agrees when max_position_embeddings = factor * original.
      const double o = s.has_original_max ? s.original_max_position_embeddings
                                          : double(max_position_embeddings);
      r["original_max_position_embeddings"] = int64_t(std::llround(o));
      j["max_position_embeddings"] = int64_t(std::llround(s.factor * o));
      if (s.beta_fast != 32.0) r["beta_fast"] = s.beta_fast;
      if (s.beta_slow != 1.0) r["beta_slow"] = s.beta_slow;
      if (s.has_attention_factor) r["attention_factor"] = s.attention_factor;
      if (s.has_mscale) r["mscale"] = s.mscale;
      if (s.has_mscale_all_dim) r["mscale_all_dim"] = s.mscale_all_dim;
      if (!s.truncate) r["truncate"] = false;
    } else if (s.type == "llama3") {
      r["low_freq_factor"] = s.low_freq_factor;
      r["high_freq_factor"] = s.high_freq_factor;
      r["original_max_position_embeddings"] = int64_t(std::llround(s.original_max_position_embeddings));
    } else if (s.has_original_max) {
      r["original_max_position_embeddings"] = int64_t(std::llround(s.original_max_position_embeddings));
    }
    j["rope_scaling"] = r;
  }
  return j.dump(2) + "\n";
}

}  // namespace qwen
