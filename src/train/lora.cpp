// train/lora.cpp — LoRA adapter storage, PEFT file format, attach and merge (see lora.h).
#include "train/lora.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/rng.h"
#include "io/safetensors.h"
#include "ops/matmul.h"
#include "ops/quant.h"
#include "qwen/error.h"

namespace qwen::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
const char* const kModules[] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                "gate_proj", "up_proj", "down_proj"};

std::string module_path(int64_t layer, const std::string& module) {
  const bool attn = module == "q_proj" || module == "k_proj" || module == "v_proj" ||
                    module == "o_proj";
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") + module;
}

void module_shape(const ModelConfig& c, const std::string& m, int64_t* out, int64_t* in) {
  const int64_t C = c.hidden_size, F = c.intermediate_size;
  if (m == "q_proj") *out = c.q_dim(), *in = C;
  else if (m == "k_proj" || m == "v_proj") *out = c.kv_dim(), *in = C;
  else if (m == "o_proj") *out = C, *in = c.q_dim();
  else if (m == "gate_proj" || m == "up_proj") *out = F, *in = C;
  else *out = C, *in = F;  // down_proj
}
}  // namespace

float LoraConfig::scale() const {
  return float(rslora ? alpha / std::sqrt(double(r)) : alpha / double(r));
}

std::string LoraConfig::module_name(const std::string& t) {
  for (const char* m : kModules) {
    const std::string s(m);
    if (t == s || t + "_proj" == s) return s;
  }
  throw Error("unknown LoRA target '" + t + "'; use q,k,v,o,gate,up,down");
}

void LoraConfig::validate() const {
  if (r < 1) throw Error("LoRA rank must be >= 1 (got " + std::to_string(r) + ")");
  if (!(alpha > 0)) throw Error("LoRA alpha must be > 0 (got " + std::to_string(alpha) + ")");
  if (!(dropout >= 0 && dropout < 1))
    throw Error("LoRA dropout must be in [0, 1) (got " + std::to_string(dropout) + ")");
  if (targets.empty()) throw Error("LoRA needs at least one target module");
  for (const auto& t : targets) module_name(t);
}

std::string LoraModule::key_A() const {
  return "base_model.model." + module_path(layer, module) + ".lora_A.weight";
}
std::string LoraModule::key_B() const {
  return "base_model.model." + module_path(layer, module) + ".lora_B.weight";
}

Linear& layer_linear(LayerWeights& L, const std::string& m) {
  if (m == "q_proj") return L.q;
  if (m == "k_proj") return L.k;
  if (m == "v_proj") return L.v;
  if (m == "o_proj") return L.o;
  if (m == "gate_proj") return L.gate;
  if (m == "up_proj") return L.up;
  if (m == "down_proj") return L.down;
  throw Error("unknown module '" + m + "'");
}
const Linear& layer_linear(const LayerWeights& L, const std::string& m) {
  return layer_linear(const_cast<LayerWeights&>(L), m);
}

static std::vector<LoraModule> plan_modules(const ModelConfig& base, const LoraConfig& cfg) {
  std::vector<std::string> mods;
  for (const char* m : kModules)
    for (const auto& t : cfg.targets)
      if (LoraConfig::module_name(t) == m) {
        mods.push_back(m);
        break;
      }
  std::vector<LoraModule> out;
  for (int64_t l = 0; l < base.num_hidden_layers; ++l)
    for (const auto& m : mods) {
      LoraModule mod;
      mod.layer = l;
      mod.module = m;
      module_shape(base, m, &mod.n_out, &mod.n_in);
      mod.A.assign(size_t(cfg.r * mod.n_in), 0.0f);
      mod.B.assign(size_t(mod.n_out * cfg.r), 0.0f);
      out.push_back(std::move(mod));
    }
  return out;
}

std::unique_ptr<LoraAdapter> LoraAdapter::create(const ModelConfig& base, const LoraConfig& cfg,
                                                 uint64_t seed) {
  cfg.validate();
  auto a = std::make_unique<LoraAdapter>();
  a->cfg_ = cfg;
  a->modules_ = plan_modules(base, cfg);
  Rng rng(seed);
  for (auto& m : a->modules_) {
    const double bound = 1.0 / std::sqrt(double(m.n_in));  // kaiming_uniform_(a=sqrt(5))
    for (auto& x : m.A) x = float((2.0 * rng.uniform() - 1.0) * bound);
  }
  return a;
}

int64_t LoraAdapter::n_params() const {
  int64_t n = 0;
  for (const auto& m : modules_) n += int64_t(m.A.size() + m.B.size());
  return n;
}

void LoraAdapter::save(const std::string& dir, const std::string& base_name) const {
  fs::create_directories(dir);
  std::vector<io::TensorToWrite> tw;
  for (const auto& m : modules_) {
    tw.push_back({m.key_A(), DType::F32, {cfg_.r, m.n_in}, m.A.data()});
    tw.push_back({m.key_B(), DType::F32, {m.n_out, cfg_.r}, m.B.data()});
  }
  io::write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), tw);
  json targets = json::array();
  std::vector<std::string> names;
  for (const auto& t : cfg_.targets) names.push_back(LoraConfig::module_name(t));
  std::sort(names.begin(), names.end());
  for (const auto& n : names) targets.push_back(n);
  json j = {{"alpha_pattern", json::object()},
            {"base_model_name_or_path", base_name},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"inference_mode", true},
            {"init_lora_weights", true},
            {"layers_pattern", nullptr},
            {"layers_to_transform", nullptr},
            {"lora_alpha", cfg_.alpha},
            {"lora_dropout", cfg_.dropout},
            {"modules_to_save", nullptr},
            {"peft_type", "LORA"},
            {"r", cfg_.r},
            {"rank_pattern", json::object()},
            {"revision", nullptr},
            {"target_modules", targets},
            {"task_type", "CAUSAL_LM"},
            {"use_dora", false},
            {"use_rslora", cfg_.rslora}};
  io::write_file_atomic((fs::path(dir) / "adapter_config.json").string(), j.dump(2) + "\n");
}

std::unique_ptr<LoraAdapter> LoraAdapter::load(const std::string& dir, const ModelConfig& base) {
  const fs::path cfg_path = fs::path(dir) / "adapter_config.json";
  std::ifstream f(cfg_path);
  if (!f) throw Error("adapter folder '" + dir + "' has no adapter_config.json");
  std::stringstream ss;
  ss << f.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const std::exception& e) {
    throw Error(cfg_path.string() + ": not valid JSON (" + e.what() + ")");
  }
  LoraConfig c;
  try {
    if (j.value("peft_type", "LORA") != "LORA")
      throw Error(cfg_path.string() + ": peft_type is not LORA");
    c.r = j.at("r").get<int64_t>();
    c.alpha = j.at("lora_alpha").get<double>();
    c.dropout = j.value("lora_dropout", 0.0);
    c.rslora = j.value("use_rslora", false);
    if (j.value("use_dora", false)) throw Error(cfg_path.string() + ": DoRA adapters are not supported");
    if (j.value("fan_in_fan_out", false))
      throw Error(cfg_path.string() + ": fan_in_fan_out adapters are not supported");
    if (j.contains("rank_pattern") && j["rank_pattern"].is_object() && !j["rank_pattern"].empty())
      throw Error(cfg_path.string() + ": rank_pattern is not supported");
    if (j.contains("alpha_pattern") && j["alpha_pattern"].is_object() && !j["alpha_pattern"].empty())
      throw Error(cfg_path.string() + ": alpha_pattern is not supported");
    c.targets.clear();
    const json& tm = j.at("target_modules");
    if (!tm.is_array()) throw Error(cfg_path.string() + ": target_modules must be a list of names");
    for (const auto& t : tm) c.targets.push_back(t.get<std::string>());
  } catch (const json::exception& e) {
    throw Error(cfg_path.string() + ": " + e.what());
  }
  c.validate();
  auto a = std::make_unique<LoraAdapter>();
  a->cfg_ = c;
  a->modules_ = plan_modules(base, c);
  auto st = io::SafetensorsFile::open((fs::path(dir) / "adapter_model.safetensors").string());
  size_t used = 0;
  auto fill = [&](const std::string& key, std::vector<int64_t> shape, std::vector<float>& dst) {
    const io::TensorInfo* t = st->find(key);
    if (!t) throw Error("adapter is missing tensor '" + key + "'; was it trained for this base model?");
    if (t->shape != shape)
      throw Error("adapter tensor '" + key + "' has shape [" +
                  (t->shape.size() == 2 ? std::to_string(t->shape[0]) + ", " + std::to_string(t->shape[1]) : "?") +
                  "], the base model needs [" + std::to_string(shape[0]) + ", " +
                  std::to_string(shape[1]) + "]: the adapter is for a different base model");
    if (!t->supported || !(t->dtype == DType::F32 || t->dtype == DType::BF16 || t->dtype == DType::F16))
      throw Error("adapter tensor '" + key + "' has unsupported dtype " + t->dtype_name);
    convert_to_f32(t->data, t->dtype, dst.data(), dst.size());
    ++used;
  };
  for (auto& m : a->modules_) {
    fill(m.key_A(), {c.r, m.n_in}, m.A);
    fill(m.key_B(), {m.n_out, c.r}, m.B);
  }
  if (used != st->tensors().size()) {
    for (const auto& t : st->tensors()) {
      bool known = false;
      for (const auto& m : a->modules_) known |= t.name == m.key_A() || t.name == m.key_B();
      if (!known)
        throw Error("adapter tensor '" + t.name + "' does not match a targeted module of this base "
                    "model (bias, embedding or lm_head adapters are not supported)");
    }
  }
  return a;
}

void LoraAdapter::attach(Model& m) {
  auto& layers = m.mutable_layers();
  for (auto& mod : modules_) {
    if (mod.layer >= int64_t(layers.size()))
      throw Error("adapter has layer " + std::to_string(mod.layer) + " but the model has " +
                  std::to_string(layers.size()));
    Linear& l = layer_linear(layers[size_t(mod.layer)], mod.module);
    if (l.n_out != mod.n_out || l.n_in != mod.n_in)
      throw Error("adapter module '" + mod.key_A() + "' does not match the model's shape");
    mod.delta = LoraDelta{mod.A.data(), mod.B.data(), cfg_.r, cfg_.scale()};
    l.lora = &mod.delta;
  }
}

namespace {
// Owner of merged weights.
struct MergedStore {
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<uint16_t>> half;
};
}  // namespace

std::unique_ptr<Model> LoraAdapter::merge(const Model& base) const {
  const ModelConfig& c = base.config();
  auto store = std::make_shared<MergedStore>();
  DType out_dt = base.matrix_dtype();
  if (dtype_is_quantized(out_dt)) out_dt = DType::F32;
  auto to_f32 = [&](const void* w, DType dt, int64_t n_out, int64_t n_in) {
    std::vector<float> r(size_t(n_out * n_in));
    if (dtype_is_quantized(dt)) {
      ops::dequantize_rows(dt, w, n_out, n_in, 0, n_out, r.data());
    } else {
      convert_to_f32(w, dt, r.data(), r.size());
    }
    return r;
  };
  auto finish = [&](std::vector<float> w, DType* dt) -> const void* {
    *dt = out_dt;
    if (out_dt == DType::F32) {
      store->f32.push_back(std::move(w));
      return store->f32.back().data();
    }
    store->half.emplace_back(w.size());
    convert_from_f32(w.data(), out_dt, store->half.back().data(), w.size());
    return store->half.back().data();
  };
  std::vector<LayerWeights> layers = base.layers();
  for (auto& L : layers)
    for (const char* name : kModules) {
      Linear& l = layer_linear(L, name);
      l.lora = nullptr;
      if (dtype_is_quantized(l.dtype) || l.dtype != out_dt) {
        l.w = finish(to_f32(l.w, l.dtype, l.n_out, l.n_in), &l.dtype);
      }
    }
  const float s = cfg_.scale();
  for (const auto& mod : modules_) {
    Linear& l = layer_linear(layers[size_t(mod.layer)], mod.module);
    std::vector<float> w = to_f32(l.w, l.dtype, l.n_out, l.n_in);
    // W' = W + s·B·A   (out, r)·(r, in)
    ops::gemm_f32_ref(false, false, mod.n_out, mod.n_in, cfg_.r, s, mod.B.data(), cfg_.r,
                      mod.A.data(), mod.n_in, 1.0f, w.data(), mod.n_in);
    l.w = finish(std::move(w), &l.dtype);
  }
  // Embedding and head: float dtypes pass through; quantised ones become f32.
  const void* embed = base.embed();
  DType edt = base.embed_dtype();
  if (dtype_is_quantized(edt)) embed = finish(to_f32(embed, edt, c.vocab_size, c.hidden_size), &edt);
  Linear head = base.lm_head();
  if (c.tie_word_embeddings) {
    head.w = embed;
    head.dtype = edt;
  } else if (dtype_is_quantized(head.dtype)) {
    head.w = finish(to_f32(head.w, head.dtype, head.n_out, head.n_in), &head.dtype);
  }
  // The base model's memory must outlive the merged view: keep the caller's model alive is the
  // caller's job for vectors/biases (they point into the base).
  return Model::from_weights(c, store, embed, edt, base.final_norm(), head, std::move(layers));
}

}  // namespace qwen::train
