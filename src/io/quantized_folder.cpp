// io/quantized_folder.cpp — reading and writing quantised model folders (see quantized_folder.h).
#include "io/quantized_folder.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "io/nf4_format.h"
#include "io/safetensors.h"
#include "ops/nf4.h"
#include "ops/q8_0.h"
#include "qwen/error.h"

namespace qwen::io {

namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  if (!f) throw Error("cannot read '" + p.string() + "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// What the model's pointers point into: the file mapping and the buffers made at load time.
struct Owner {
  std::unique_ptr<Checkpoint> ckpt;
  std::vector<std::vector<uint8_t>> bufs;
  void* alloc(size_t n) {
    bufs.emplace_back(n);
    return bufs.back().data();
  }
};

enum class Method { Nf4, Q8_0 };

class Loader {
 public:
  Loader(const std::string& dir, Method method, Owner* own, bool nf4_compact)
      : dir_(dir), method_(method), own_(own), nf4_compact_(nf4_compact) {}

  const TensorInfo& need(const std::string& name, const char* what) const {
    const TensorInfo* t = own_->ckpt->find(name);
    if (!t)
      throw Error("quantised folder '" + dir_ + "' is missing tensor '" + name + "' (" + what +
                  "); was it written completely?");
    return *t;
  }

  static bool is_float(const TensorInfo& t) {
    return t.supported && (t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16);
  }

  // A float tensor of the given shape converted to f32 (or used in place when already f32).
  const float* vec(const std::string& name, int64_t len) {
    const TensorInfo& t = need(name, "vector");
    if (t.shape != std::vector<int64_t>{len})
      throw Error("tensor '" + name + "' has shape " + shape_str(t.shape) + ", config.json implies [" +
                  std::to_string(len) + "]");
    if (!is_float(t)) throw Error("tensor '" + name + "' has dtype " + t.dtype_name + "; expected a float dtype");
    if (t.dtype == DType::F32) return static_cast<const float*>(t.data);
    auto* p = static_cast<float*>(own_->alloc(size_t(len) * 4));
    convert_to_f32(t.data, t.dtype, p, size_t(len));
    return p;
  }

  // A plain float matrix, in place in its file dtype.
  const void* float_matrix(const TensorInfo& t, const std::string& name, int64_t rows, int64_t cols,
                           DType* dt) {
    if (t.shape != std::vector<int64_t>{rows, cols})
      throw Error("tensor '" + name + "' has shape " + shape_str(t.shape) + ", config.json implies " +
                  shape_str({rows, cols}));
    if (!is_float(t))
      throw Error("tensor '" + name + "' has dtype " + t.dtype_name +
                  "; expected F32, BF16 or F16 (or a quantised weight with its quant_state)");
    *dt = t.dtype;
    return t.data;
  }

  // model weight `name` (rows, cols): quantised per the folder's method, or plain float.
  const void* matrix(const std::string& name, int64_t rows, int64_t cols, DType* dt) {
    const TensorInfo& t = need(name, "weight");
    if (method_ == Method::Q8_0) {
      if (t.supported && t.dtype == DType::U8) {
        const int64_t rb = int64_t(dtype_row_bytes(DType::Q8_0, cols));
        if (cols % ops::kQ8_0Block != 0 || t.shape != std::vector<int64_t>{rows, rb})
          throw Error("Q8_0 tensor '" + name + "' has shape " + shape_str(t.shape) +
                      ", config.json implies " + shape_str({rows, rb}) + " (rows, blocks·34 bytes)");
        *dt = DType::Q8_0;
        return t.data;
      }
      return float_matrix(t, name, rows, cols, dt);
    }
    const std::string qs_name = name + ".quant_state.bitsandbytes__nf4";
    const TensorInfo* qs = own_->ckpt->find(qs_name);
    if (!qs) {
      if (t.supported && t.dtype == DType::U8)
        throw Error("quantised weight '" + name + "' has no '" + qs_name +
                    "' (the bitsandbytes quant_state); only nf4 4-bit folders are supported");
      return float_matrix(t, name, rows, cols, dt);
    }
    Nf4Tensor q;
    bnb_parse_quant_state_json(
        std::string(static_cast<const char*>(qs->data), qs->nbytes), &q, "tensor '" + qs_name + "'");
    if (q.shape != std::vector<int64_t>{rows, cols})
      throw Error("quant_state of '" + name + "' gives shape " + shape_str(q.shape) +
                  ", config.json implies " + shape_str({rows, cols}));
    const int64_t nbytes = (q.numel + 1) / 2, nb = q.n_blocks();
    if (!(t.supported && t.dtype == DType::U8) || t.numel() != nbytes)
      throw Error("tensor '" + name + "' should hold " + std::to_string(nbytes) +
                  " packed NF4 bytes (U8), it has dtype " + t.dtype_name + " and shape " +
                  shape_str(t.shape));
    q.packed.assign(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + nbytes);
    q.quant_map = f32_vector(name + ".quant_map", 16);
    const TensorInfo& am = need(name + ".absmax", "per-block absmax of an NF4 weight");
    if (q.double_quant) {
      if (!(am.supported && am.dtype == DType::U8) || am.numel() != nb)
        throw Error("tensor '" + name + ".absmax' should be " + std::to_string(nb) +
                    " U8 codes (double quantisation), it has dtype " + am.dtype_name + " and shape " +
                    shape_str(am.shape));
      q.absmax_codes.assign(static_cast<const uint8_t*>(am.data), static_cast<const uint8_t*>(am.data) + nb);
      q.nested_absmax = f32_vector(name + ".nested_absmax", (nb + q.nested_blocksize - 1) / q.nested_blocksize);
      q.nested_quant_map = f32_vector(name + ".nested_quant_map", 256);
    } else {
      if (!(am.supported && am.dtype == DType::F32) || am.numel() != nb)
        throw Error("tensor '" + name + ".absmax' should be " + std::to_string(nb) +
                    " F32 values, it has dtype " + am.dtype_name + " and shape " + shape_str(am.shape));
      q.absmax.assign(static_cast<const float*>(am.data), static_cast<const float*>(am.data) + nb);
    }
    if (q.blocksize == ops::kNf4Block && cols % ops::kNf4Block == 0) {
      // Kept double-quantised as the file holds it (~4.13 bits/weight; f32 absmax without) when
      // nf4_compact (a QLoRA base); otherwise the absmax is decoded once to f32 for the decode
      // matvec (ops::nf4_matrix_expand_absmax: bit-identical results, ~4.5 bits/weight).
      own_->bufs.push_back(bnb_to_nf4_matrix(q));
      if (q.double_quant && !nf4_compact_)
        own_->bufs.back() = ops::nf4_matrix_expand_absmax(own_->bufs.back().data());
      *dt = DType::NF4;
      return own_->bufs.back().data();
    }
    // Blocks that straddle rows: keep the dequantised values.
    auto* p = static_cast<float*>(own_->alloc(size_t(q.numel) * 4));
    bnb_dequantize_nf4(q, p);
    *dt = DType::F32;
    return p;
  }

 private:
  std::vector<float> f32_vector(const std::string& name, int64_t len) const {
    const TensorInfo& t = need(name, "NF4 quantisation state");
    if (!(t.supported && t.dtype == DType::F32) || t.numel() != len)
      throw Error("tensor '" + name + "' should be " + std::to_string(len) + " F32 values, it has dtype " +
                  t.dtype_name + " and shape " + shape_str(t.shape));
    const auto* p = static_cast<const float*>(t.data);
    return std::vector<float>(p, p + len);
  }

  std::string dir_;
  Method method_;
  Owner* own_;
  bool nf4_compact_;
};

nlohmann::json read_quant_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(p));
  } catch (const nlohmann::json::exception& e) {
    throw Error("'" + p.string() + "' is not valid JSON (" + e.what() + ")");
  }
  if (!j.contains("quantization_config") || !j["quantization_config"].is_object())
    throw Error("'" + p.string() + "' has no quantization_config object");
  return j["quantization_config"];
}

Method method_of(const nlohmann::json& qc, const std::string& dir) {
  const std::string m = qc.value("quant_method", "");
  if (m == "q8_0") return Method::Q8_0;
  if (m == "bitsandbytes") {
    if (!qc.value("load_in_4bit", false))
      throw Error("'" + dir + "': bitsandbytes 8-bit (load_in_8bit) folders are not supported; use a 4-bit nf4 folder");
    const std::string t = qc.value("bnb_4bit_quant_type", "fp4");
    if (t != "nf4")
      throw Error("'" + dir + "': bitsandbytes 4-bit type '" + t + "' is not supported; only nf4");
    return Method::Nf4;
  }
  throw Error("'" + dir + "': quantization_config quant_method '" + m +
              "' is not supported (bitsandbytes nf4 or q8_0)");
}

}  // namespace

bool is_quantized_folder(const std::string& dir) {
  std::ifstream f(fs::path(dir) / "config.json");
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    const nlohmann::json j = nlohmann::json::parse(ss.str());
    return j.is_object() && j.contains("quantization_config") && !j["quantization_config"].is_null();
  } catch (const nlohmann::json::exception&) {
    return false;  // Model::load reports the bad config.json itself
  }
}

std::unique_ptr<Model> load_quantized_folder(const std::string& dir, bool nf4_compact) {
  const Method method = method_of(read_quant_config(dir), dir);
  const ModelConfig c = ModelConfig::from_file((fs::path(dir) / "config.json").string());
  auto own = std::make_shared<Owner>();
  own->ckpt = Checkpoint::open(dir);
  Loader ld(dir, method, own.get(), nf4_compact);
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, D = c.head_dim;
  auto lin = [&](const std::string& p, int64_t out, int64_t in, bool bias) {
    Linear l;
    l.n_out = out;
    l.n_in = in;
    l.w = ld.matrix(p + ".weight", out, in, &l.dtype);
    if (bias) l.bias = ld.vec(p + ".bias", out);
    return l;
  };
  DType embed_dt = DType::F32;
  const void* embed = ld.matrix("model.embed_tokens.weight", V, C, &embed_dt);
  if (embed_dt == DType::NF4) throw Error("'" + dir + "': a 4-bit embedding is not supported");
  const float* final_norm = ld.vec("model.norm.weight", C);
  Linear head = c.tie_word_embeddings ? Linear{embed, embed_dt, nullptr, V, C}
                                      : lin("lm_head", V, C, false);
  std::vector<LayerWeights> layers(size_t(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = layers[size_t(i)];
    L.attn_norm = ld.vec(p + "input_layernorm.weight", C);
    L.q = lin(p + "self_attn.q_proj", c.q_dim(), C, c.qkv_bias);
    L.k = lin(p + "self_attn.k_proj", c.kv_dim(), C, c.qkv_bias);
    L.v = lin(p + "self_attn.v_proj", c.kv_dim(), C, c.qkv_bias);
    L.o = lin(p + "self_attn.o_proj", C, c.q_dim(), c.o_bias);
    if (c.qk_norm) {
      L.q_norm = ld.vec(p + "self_attn.q_norm.weight", D);
      L.k_norm = ld.vec(p + "self_attn.k_norm.weight", D);
    }
    L.mlp_norm = ld.vec(p + "post_attention_layernorm.weight", C);
    L.gate = lin(p + "mlp.gate_proj", F, C, c.mlp_bias);
    L.up = lin(p + "mlp.up_proj", F, C, c.mlp_bias);
    L.down = lin(p + "mlp.down_proj", C, F, c.mlp_bias);
  }
  return Model::from_weights(c, own, embed, embed_dt, final_norm, head, std::move(layers));
}

// ---- writing ----

namespace {

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: return "float32";
  }
}

std::string generation_config(const ModelConfig& c) {
  std::string gen = "{\n";
  if (c.bos_token_id >= 0) gen += "  \"bos_token_id\": " + std::to_string(c.bos_token_id) + ",\n";
  if (!c.eos_token_ids.empty()) {
    gen += "  \"eos_token_id\": ";
    if (c.eos_token_ids.size() == 1) {
      gen += std::to_string(c.eos_token_ids[0]);
    } else {
      gen += "[";
      for (size_t i = 0; i < c.eos_token_ids.size(); ++i)
        gen += (i ? ", " : "") + std::to_string(c.eos_token_ids[i]);
      gen += "]";
    }
    gen += ",\n";
  }
  return gen + "  \"transformers_version\": \"4.46.0\"\n}\n";
}

bool is_projection(const std::string& name) {
  static const char* kSuffixes[] = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                    "gate_proj.weight", "up_proj.weight", "down_proj.weight"};
  if (name.rfind("model.layers.", 0) != 0) return false;
  for (const char* s : kSuffixes) {
    const size_t n = std::strlen(s);
    if (name.size() > n && name.compare(name.size() - n, n, s) == 0) return true;
  }
  return false;
}

}  // namespace

void save_quantized_folder(const Model& model, const std::string& out_dir, const QuantizeOptions& opt) {
  if (opt.type != DType::NF4 && opt.type != DType::Q8_0)
    throw Error(std::string("cannot write a quantised folder of type ") + dtype_name(opt.type) +
                "; use nf4 or q8_0");
  const DType wdt = model.matrix_dtype();
  if (dtype_is_quantized(wdt) || dtype_is_quantized(model.embed_dtype()))
    throw Error(std::string("the model is already quantised (") + dtype_name(wdt) +
                "); quantise a float model folder instead");
  const ModelConfig& cfg = model.config();
  // Everything written lives here until write_checkpoint returns.
  std::vector<std::vector<uint8_t>> keep;
  auto hold = [&](std::vector<uint8_t> v) -> const void* {
    keep.push_back(std::move(v));
    return keep.back().data();
  };
  auto f32_bytes = [](const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  keep.reserve(64 + 8 * model.named_tensors().size());
  std::vector<TensorToWrite> tw;
  std::vector<float> buf;
  for (const auto& t : model.named_tensors()) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    const bool matrix = t.shape.size() == 2;
    bool quantise = false;
    if (matrix && opt.type == DType::NF4) quantise = is_projection(t.name);
    if (matrix && opt.type == DType::Q8_0) quantise = t.shape[1] % ops::kQ8_0Block == 0;
    if (!quantise) {
      // Unquantised: matrices in their dtype, vectors in the matrices' dtype (as transformers).
      if (t.dtype == DType::F32 && wdt != DType::F32) {
        std::vector<uint8_t> b(size_t(n) * dtype_size(wdt));
        convert_from_f32(static_cast<const float*>(t.data), wdt, b.data(), size_t(n));
        tw.push_back({t.name, wdt, t.shape, hold(std::move(b))});
      } else {
        tw.push_back({t.name, t.dtype, t.shape, t.data});
      }
      continue;
    }
    buf.resize(size_t(n));
    convert_to_f32(t.data, t.dtype, buf.data(), size_t(n));
    if (opt.type == DType::Q8_0) {
      const int64_t rb = int64_t(dtype_row_bytes(DType::Q8_0, t.shape[1]));
      std::vector<uint8_t> b(size_t(t.shape[0] * rb));
      ops::q8_0_quantize(buf.data(), b.data(), n);
      tw.push_back({t.name, DType::U8, {t.shape[0], rb}, hold(std::move(b))});
      continue;
    }
    Nf4Tensor q = bnb_quantize_nf4(buf.data(), t.shape, opt.double_quant, torch_dtype_name(t.dtype));
    const int64_t nb = q.n_blocks();
    tw.push_back({t.name, DType::U8, {int64_t(q.packed.size()), 1}, hold(std::move(q.packed))});
    if (q.double_quant) {
      tw.push_back({t.name + ".absmax", DType::U8, {nb}, hold(std::move(q.absmax_codes))});
    } else {
      tw.push_back({t.name + ".absmax", DType::F32, {nb}, hold(f32_bytes(q.absmax))});
    }
    tw.push_back({t.name + ".quant_map", DType::F32, {16}, hold(f32_bytes(q.quant_map))});
    if (q.double_quant) {
      tw.push_back({t.name + ".nested_absmax", DType::F32, {int64_t(q.nested_absmax.size())},
                    hold(f32_bytes(q.nested_absmax))});
      tw.push_back({t.name + ".nested_quant_map", DType::F32, {256}, hold(f32_bytes(q.nested_quant_map))});
    }
    const std::string js = bnb_quant_state_json(q);
    tw.push_back({t.name + ".quant_state.bitsandbytes__nf4", DType::U8, {int64_t(js.size())},
                  hold(std::vector<uint8_t>(js.begin(), js.end()))});
  }
  fs::create_directories(out_dir);
  write_checkpoint(out_dir, tw);
  ModelConfig c = cfg;
  c.torch_dtype = torch_dtype_name(wdt);
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(c.to_json());
  nlohmann::ordered_json qc;
  if (opt.type == DType::NF4) {
    // transformers' BitsAndBytesConfig.to_dict() for load_in_4bit nf4.
    qc["_load_in_4bit"] = true;
    qc["_load_in_8bit"] = false;
    qc["bnb_4bit_compute_dtype"] = torch_dtype_name(wdt);
    qc["bnb_4bit_quant_storage"] = "uint8";
    qc["bnb_4bit_quant_type"] = "nf4";
    qc["bnb_4bit_use_double_quant"] = opt.double_quant;
    qc["llm_int8_enable_fp32_cpu_offload"] = false;
    qc["llm_int8_has_fp16_weight"] = false;
    qc["llm_int8_skip_modules"] = nullptr;
    qc["llm_int8_threshold"] = 6.0;
    qc["load_in_4bit"] = true;
    qc["load_in_8bit"] = false;
    qc["quant_method"] = "bitsandbytes";
  } else {
    qc["quant_method"] = "q8_0";
    qc["block_size"] = 32;
    qc["format"] = "ggml_q8_0_rows";
    qc["note"] = "U8 tensor (rows, cols/32*34): GGUF Q8_0 blocks (f16 d, 32 x int8) row by row; "
                 "weights whose row length is not a multiple of 32 stay in torch_dtype";
  }
  j["quantization_config"] = qc;
  write_file_atomic((fs::path(out_dir) / "config.json").string(), j.dump(2) + "\n");
  write_file_atomic((fs::path(out_dir) / "generation_config.json").string(), generation_config(c));
}

}  // namespace qwen::io
