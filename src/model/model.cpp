// model/model.cpp — loading, random init and saving of decoder weights (see model.h).
#include "model/model.h"

#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include "core/rng.h"
#include "io/gguf_model.h"
#include "io/quantized_folder.h"
#include "io/safetensors.h"
#include "qwen/error.h"

namespace qwen {

namespace fs = std::filesystem;

Model::~Model() = default;

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

ops::MhcDims mhc_dims(const ModelConfig& c) {
  ops::MhcDims d;
  d.n = c.mhc_num_streams;
  d.C = c.hidden_size;
  d.iters = int(c.mhc_sinkhorn_iters);
  d.eps = c.rms_norm_eps;
  d.mode = c.mhc_mode == "hc" ? ops::HcMode::Hc : ops::HcMode::Mhc;
  return d;
}

static bool is_mhc_tensor(const std::string& name) {
  return name.find(".attn_hc.") != std::string::npos || name.find(".mlp_hc.") != std::string::npos;
}

void Model::FreeDeleter::operator()(void* p) const { std::free(p); }

// 64-byte aligned block (cache line, widest vector), released with free().
void* Model::alloc(size_t bytes) {
  const size_t n = ((bytes + 63) / 64) * 64;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, n ? n : 64));
  if (!p) throw std::bad_alloc();
  owned_.emplace_back(p);
  return p;
}

// Look a tensor up in the checkpoint, check its shape, and return a pointer in the dtype the
// model keeps: matrices stay in the file's float dtype (or convert_to_), vectors become f32.
const void* Model::take(const std::string& name, std::vector<int64_t> shape, bool matrix,
                        DType* dtype_out) {
  const io::TensorInfo* t = ckpt_->find(name);
  if (!t) throw Error("checkpoint is missing tensor '" + name + "' (expected shape " +
                      shape_str(shape) + "); is config.json from the same model?");
  if (t->shape != shape)
    throw Error("tensor '" + name + "' has shape " + shape_str(t->shape) + ", config.json implies " +
                shape_str(shape));
  if (!t->supported || !(t->dtype == DType::F32 || t->dtype == DType::BF16 ||
                         t->dtype == DType::F16))
    throw Error("tensor '" + name + "' has dtype " + t->dtype_name +
                "; supported weight dtypes are F32, BF16 and F16");
  size_t n = size_t(t->numel());
  DType want = matrix ? (convert_to_ ? *convert_to_ : t->dtype) : DType::F32;
  if (dtype_out) *dtype_out = want;
  if (want == t->dtype) return t->data;
  if (want == DType::F32) {
    auto* dst = static_cast<float*>(alloc(n * 4));
    convert_to_f32(t->data, t->dtype, dst, n);
    return dst;
  }
  std::vector<float> buf;
  const float* src = static_cast<const float*>(t->data);
  if (t->dtype != DType::F32) {
    buf.resize(n);
    convert_to_f32(t->data, t->dtype, buf.data(), n);
    src = buf.data();
  }
  void* dst = alloc(n * dtype_size(want));
  convert_from_f32(src, want, dst, n);
  return dst;
}

std::unique_ptr<Model> Model::from_weights(const ModelConfig& cfg, std::shared_ptr<void> keep,
                                           const void* embed, DType embed_dtype,
                                           const float* final_norm, const Linear& lm_head,
                                           std::vector<LayerWeights> layers) {
  cfg.validate();
  assert(int64_t(layers.size()) == cfg.num_hidden_layers);
  for (size_t i = 0; i < layers.size(); ++i) {
    const bool has = layers[i].attn_hc.phi && layers[i].mlp_hc.phi;
    if (cfg.use_mhc && !has)
      throw Error("config sets use_mhc but layer " + std::to_string(i) +
                  " has no mHC site weights (attn_hc / mlp_hc); this loader does not support mHC");
  }
  std::unique_ptr<Model> m(new Model());
  m->cfg_ = cfg;
  m->keep_ = std::move(keep);
  m->embed_ = embed;
  m->embed_dtype_ = embed_dtype;
  m->final_norm_ = final_norm;
  m->lm_head_ = lm_head;
  m->layers_ = std::move(layers);
  return m;
}

std::unique_ptr<Model> Model::load(const std::string& dir, const DType* weight_dtype, bool nf4_compact) {
  if (dir.size() > 5 && dir.substr(dir.size() - 5) == ".gguf") {
    if (weight_dtype) throw Error("--dtype cannot convert a GGUF model's weights; leave it out");
    return io::load_gguf_model(dir);
  }
  if (!fs::is_directory(dir)) throw Error("model folder '" + dir + "' does not exist");
  if (io::is_quantized_folder(dir)) {
    if (weight_dtype) throw Error("--dtype cannot convert a quantised model folder; leave it out");
    return io::load_quantized_folder(dir, nf4_compact);
  }
  std::unique_ptr<Model> m(new Model());
  m->cfg_ = ModelConfig::from_file((fs::path(dir) / "config.json").string());
  m->ckpt_ = io::Checkpoint::open(dir);
  static const DType kinds[] = {DType::F32, DType::F16, DType::BF16};
  if (weight_dtype) {
    for (const DType& k : kinds)
      if (k == *weight_dtype) m->convert_to_ = &k;
    if (!m->convert_to_) throw Error("weight dtype must be f32, bf16 or f16");
  }
  const ModelConfig& c = m->cfg_;
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, D = c.head_dim;
  auto vec = [&](const std::string& n, int64_t len) {
    return static_cast<const float*>(m->take(n, {len}, false, nullptr));
  };
  auto lin = [&](const std::string& n, int64_t out, int64_t in, bool bias) {
    Linear l;
    l.n_out = out;
    l.n_in = in;
    l.w = m->take(n + ".weight", {out, in}, true, &l.dtype);
    if (bias) l.bias = vec(n + ".bias", out);
    return l;
  };
  m->embed_ = m->take("model.embed_tokens.weight", {V, C}, true, &m->embed_dtype_);
  m->final_norm_ = vec("model.norm.weight", C);
  if (c.tie_word_embeddings) {
    m->lm_head_ = Linear{m->embed_, m->embed_dtype_, nullptr, V, C};
  } else {
    m->lm_head_ = lin("lm_head", V, C, false);
  }
  if (!c.use_mhc) {
    for (const std::string& n : m->ckpt_->names())
      if (is_mhc_tensor(n))
        throw Error("checkpoint tensor '" + n + "' belongs to an mHC model but " + dir +
                    "/config.json does not set use_mhc; add \"use_mhc\": true (and its "
                    "mhc_num_streams) or use the matching config");
  }
  const ops::MhcDims md = mhc_dims(c);
  auto site = [&](const std::string& n) {
    MhcSiteWeights s;
    auto get = [&](const std::string& key, std::vector<int64_t> shape) {
      if (!m->ckpt_->find(key))
        throw Error("config.json sets use_mhc but the checkpoint is missing tensor '" + key +
                    "' (expected shape " + shape_str(shape) +
                    "); was it saved from a plain model? drop use_mhc or use the mHC checkpoint");
      return static_cast<const float*>(m->take(key, shape, false, nullptr));
    };
    s.phi = get(n + ".phi", {md.phi_rows(), md.phi_cols()});
    s.bias = get(n + ".bias", {md.K()});
    s.alpha = get(n + ".alpha", {3});
    return s;
  };
  m->layers_.resize(size_t(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = m->layers_[size_t(i)];
    if (c.use_mhc) {
      L.attn_hc = site(p + "attn_hc");
      L.mlp_hc = site(p + "mlp_hc");
    }
    L.attn_norm = vec(p + "input_layernorm.weight", C);
    L.q = lin(p + "self_attn.q_proj", c.q_dim(), C, c.qkv_bias);
    L.k = lin(p + "self_attn.k_proj", c.kv_dim(), C, c.qkv_bias);
    L.v = lin(p + "self_attn.v_proj", c.kv_dim(), C, c.qkv_bias);
    L.o = lin(p + "self_attn.o_proj", C, c.q_dim(), c.o_bias);
    if (c.qk_norm) {
      L.q_norm = vec(p + "self_attn.q_norm.weight", D);
      L.k_norm = vec(p + "self_attn.k_norm.weight", D);
    }
    L.mlp_norm = vec(p + "post_attention_layernorm.weight", C);
    L.gate = lin(p + "mlp.gate_proj", F, C, c.mlp_bias);
    L.up = lin(p + "mlp.up_proj", F, C, c.mlp_bias);
    L.down = lin(p + "mlp.down_proj", C, F, c.mlp_bias);
  }
  return m;
}

std::unique_ptr<Model> Model::random(const ModelConfig& cfg, uint64_t seed, DType wdt) {
  cfg.validate();
  if (!(wdt == DType::F32 || wdt == DType::BF16 || wdt == DType::F16))
    throw Error("weight dtype must be f32, bf16 or f16");
  std::unique_ptr<Model> m(new Model());
  m->cfg_ = cfg;
  Rng rng(seed);
  const float std_ = float(cfg.initializer_range);
  std::vector<float> buf;
  auto mat = [&](int64_t out, int64_t in, DType* dt) -> const void* {
    size_t n = size_t(out) * size_t(in);
    buf.resize(n);
    for (auto& x : buf) x = std_ * rng.normal();
    void* p = m->alloc(n * dtype_size(wdt));
    convert_from_f32(buf.data(), wdt, p, n);
    *dt = wdt;
    return p;
  };
  auto fill = [&](int64_t n, float value) {
    auto* p = static_cast<float*>(m->alloc(size_t(n) * 4));
    for (int64_t i = 0; i < n; ++i) p[i] = value;
    return p;
  };
  auto lin = [&](int64_t out, int64_t in, bool bias) {
    Linear l;
    l.n_out = out;
    l.n_in = in;
    l.w = mat(out, in, &l.dtype);
    if (bias) l.bias = fill(out, 0.f);
    return l;
  };
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size, V = cfg.vocab_size;
  m->embed_ = mat(V, C, &m->embed_dtype_);
  m->layers_.resize(size_t(cfg.num_hidden_layers));
  for (auto& L : m->layers_) {
    L.attn_norm = fill(C, 1.f);
    L.q = lin(cfg.q_dim(), C, cfg.qkv_bias);
    L.k = lin(cfg.kv_dim(), C, cfg.qkv_bias);
    L.v = lin(cfg.kv_dim(), C, cfg.qkv_bias);
    L.o = lin(C, cfg.q_dim(), cfg.o_bias);
    if (cfg.qk_norm) {
      L.q_norm = fill(cfg.head_dim, 1.f);
      L.k_norm = fill(cfg.head_dim, 1.f);
    }
    L.mlp_norm = fill(C, 1.f);
    L.gate = lin(F, C, cfg.mlp_bias);
    L.up = lin(F, C, cfg.mlp_bias);
    L.down = lin(C, F, cfg.mlp_bias);
  }
  m->final_norm_ = fill(C, 1.f);
  if (cfg.tie_word_embeddings) {
    m->lm_head_ = Linear{m->embed_, m->embed_dtype_, nullptr, V, C};
  } else {
    m->lm_head_ = lin(V, C, false);
  }
  if (cfg.use_mhc) {  // after every other draw: the plain weights do not depend on use_mhc
    const ops::MhcDims md = mhc_dims(cfg);
    ops::MhcInitOptions o;
    o.phi_std = float(cfg.initializer_range);
    o.seed = seed ^ 0x6d6863ull;  // "mhc"
    for (size_t l = 0; l < m->layers_.size(); ++l) {
      for (int s = 0; s < 2; ++s) {
        auto* phi = static_cast<float*>(m->alloc(size_t(md.phi_size()) * 4));
        auto* bias = static_cast<float*>(m->alloc(size_t(md.K()) * 4));
        auto* alpha = static_cast<float*>(m->alloc(3 * 4));
        ops::mhc_init_site(md, int64_t(2 * l + size_t(s)), o, phi, bias, alpha);
        (s == 0 ? m->layers_[l].attn_hc : m->layers_[l].mlp_hc) = MhcSiteWeights{phi, bias, alpha};
      }
    }
  }
  return m;
}

std::vector<Model::NamedTensor> Model::named_tensors() const {
  std::vector<NamedTensor> out;
  const int64_t C = cfg_.hidden_size;
  auto vec = [&](const std::string& n, const float* p, int64_t len) {
    out.push_back({n, DType::F32, {len}, p});
  };
  auto lin = [&](const std::string& n, const Linear& l) {
    out.push_back({n + ".weight", l.dtype, {l.n_out, l.n_in}, l.w});
    if (l.bias) out.push_back({n + ".bias", DType::F32, {l.n_out}, l.bias});
  };
  out.push_back({"model.embed_tokens.weight", embed_dtype_, {cfg_.vocab_size, C}, embed_});
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const LayerWeights& L = layers_[i];
    vec(p + "input_layernorm.weight", L.attn_norm, C);
    lin(p + "self_attn.q_proj", L.q);
    lin(p + "self_attn.k_proj", L.k);
    lin(p + "self_attn.v_proj", L.v);
    lin(p + "self_attn.o_proj", L.o);
    if (L.q_norm) {
      vec(p + "self_attn.q_norm.weight", L.q_norm, cfg_.head_dim);
      vec(p + "self_attn.k_norm.weight", L.k_norm, cfg_.head_dim);
    }
    vec(p + "post_attention_layernorm.weight", L.mlp_norm, C);
    lin(p + "mlp.gate_proj", L.gate);
    lin(p + "mlp.up_proj", L.up);
    lin(p + "mlp.down_proj", L.down);
    if (cfg_.use_mhc) {
      const ops::MhcDims md = mhc_dims(cfg_);
      for (int s = 0; s < 2; ++s) {
        const MhcSiteWeights& w = s == 0 ? L.attn_hc : L.mlp_hc;
        const std::string n = p + (s == 0 ? "attn_hc" : "mlp_hc");
        out.push_back({n + ".phi", DType::F32, {md.phi_rows(), md.phi_cols()}, w.phi});
        vec(n + ".bias", w.bias, md.K());
        vec(n + ".alpha", w.alpha, 3);
      }
    }
  }
  vec("model.norm.weight", final_norm_, C);
  if (!cfg_.tie_word_embeddings) lin("lm_head", lm_head_);
  return out;
}

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (const auto& t : named_tensors()) {
    int64_t e = 1;
    for (int64_t d : t.shape) e *= d;
    n += e;
  }
  return n;
}

size_t Model::weight_bytes() const {
  size_t n = 0;
  for (const auto& t : named_tensors()) {
    int64_t e = 1;
    for (int64_t d : t.shape) e *= d;
    n += dtype_row_bytes(t.dtype, e);
  }
  return n;
}

static const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: return "float32";
  }
}

void Model::save(const std::string& dir, size_t max_shard_bytes) const {
  const DType wdt = matrix_dtype();
  if (dtype_is_quantized(wdt) || dtype_is_quantized(embed_dtype_))
    throw Error(std::string("cannot save a ") + dtype_name(wdt) +
                " model as a plain Hugging Face folder; save it as a quantised folder instead");
  fs::create_directories(dir);
  // Vectors (norms, biases) are saved in the matrices' dtype, as transformers does; the
  // converted copies live until the write is done.
  std::vector<std::vector<uint16_t>> half_copies;
  std::vector<io::TensorToWrite> tw;
  for (const auto& t : named_tensors()) {
    io::TensorToWrite w{t.name, t.dtype, t.shape, t.data};
    // mHC site tensors stay f32 whatever the matrices' dtype (spec: all coefficient math in fp32).
    if (t.dtype == DType::F32 && wdt != DType::F32 && t.shape.size() == 1 && !is_mhc_tensor(t.name)) {
      half_copies.emplace_back(size_t(t.shape[0]));
      convert_from_f32(static_cast<const float*>(t.data), wdt, half_copies.back().data(),
                       size_t(t.shape[0]));
      w.dtype = wdt;
      w.data = half_copies.back().data();
    }
    tw.push_back(std::move(w));
  }
  ModelConfig c = cfg_;
  c.torch_dtype = torch_dtype_name(wdt);
  io::write_checkpoint(dir, tw, max_shard_bytes);
  io::write_file_atomic((fs::path(dir) / "config.json").string(), c.to_json());
  // generation_config.json: the ids generation stops on, as transformers writes them.
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
  gen += "  \"transformers_version\": \"4.46.0\"\n}\n";
  io::write_file_atomic((fs::path(dir) / "generation_config.json").string(), gen);
}

}  // namespace qwen
