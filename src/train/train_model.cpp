// train/train_model.cpp — forward with saved activations and the hand-written backward pass of
// the decoder (see train_model.h). Reads like the model: per layer, attention block then MLP
// block; backward walks the same steps in reverse. N = B·T rows throughout. With use_mhc the
// residual is n streams (N, n, C): each sub-layer F (attention, MLP, with its own RMSNorm) reads
// u = Σ h_pre·X and the site writes X = H_res·X + h_post·F(u) (ops/mhc.h, docs/mhc.md).
#include "train/train_model.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <map>

#include "model/rope.h"
#include "ops/attention.h"
#include "ops/attention_backward.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/mhc.h"
#include "ops/quant.h"
#include "qwen/error.h"

namespace qwen::train {

namespace {

// A linear layer: W (out, in) in dtype dt (f32 and trainable in full training; any dtype and
// frozen under LoRA), optional bias, optional LoRA adapter A (r, in), B (out, r).
struct Lin {
  const float* w = nullptr;   // f32 weights (full training), else null
  const void* wq = nullptr;   // the weights in their dtype (== w when f32)
  DType dt = DType::F32;
  float* gw = nullptr;        // null: frozen
  const float* b = nullptr;
  float* gb = nullptr;
  int64_t out = 0, in = 0;
  const float* A = nullptr;   // LoRA
  float* gA = nullptr;
  const float* Bm = nullptr;
  float* gB = nullptr;
  int64_t r = 0;
  float scale = 0, dropout = 0;
  uint64_t id = 0;            // dropout stream of this module
};

// One mHC / HC site: weights and gradients (null gradients: frozen).
struct SiteP {
  const float *phi = nullptr, *bias = nullptr, *alpha = nullptr;
  float *g_phi = nullptr, *g_bias = nullptr, *g_alpha = nullptr;
  ops::MhcParams<float> params() const { return {phi, bias, alpha}; }
  ops::MhcGrads<float> grads() const { return {g_phi, g_bias, g_alpha}; }
};

struct LayerParams {
  SiteP attn_hc, mlp_hc;  // use_mhc only
  const float *attn_norm = nullptr;
  float* g_attn_norm = nullptr;
  Lin q, k, v, o;
  const float *q_norm = nullptr, *k_norm = nullptr;
  float *g_q_norm = nullptr, *g_k_norm = nullptr;
  const float* mlp_norm = nullptr;
  float* g_mlp_norm = nullptr;
  Lin gate, up, down;
};

// Saved activations of one layer. With recomputation only x_in is kept per layer and the rest
// live in one shared slot that backward refills.
// mHC: x_in and x1 hold the sub-layer inputs u1, u2 instead, and the streams, coefficients and
// sub-layer outputs are kept as well (recompute: only X_a per layer).
struct Acts {
  float* X_a = nullptr;    // (N, n, C) mHC: layer input streams (attention site)
  float* X_m = nullptr;    // (N, n, C) mHC: MLP site input streams
  float* coef_a = nullptr; // mhc_coefs_size(N, n) attention site coefficients
  float* coef_m = nullptr; // mhc_coefs_size(N, n) MLP site coefficients
  float* F_a = nullptr;    // (N, C)    mHC: o_proj output (attention F)
  float* F_m = nullptr;    // (N, C)    mHC: down_proj output (MLP F)
  float* x_in = nullptr;  // (N, C)    layer input (residual stream)
  float* h1 = nullptr;    // (N, C)    rmsnorm(x_in)
  float* qp = nullptr;    // (N, H·D)  q before q_norm (Qwen3 only)
  float* kp = nullptr;    // (N, KV·D) k before k_norm (Qwen3 only)
  float* q = nullptr;     // (N, H·D)  q after norm and RoPE
  float* k = nullptr;     // (N, KV·D) k after norm and RoPE
  float* v = nullptr;     // (N, KV·D)
  float* att = nullptr;   // (N, H·D)  attention output
  float* lse = nullptr;   // (B, H, T) log-sum-exp of each attention row
  float* x1 = nullptr;    // (N, C)    x_in + o-projection
  float* h2 = nullptr;    // (N, C)    rmsnorm(x1)
  float* g = nullptr;     // (N, F)    gate projection
  float* u = nullptr;     // (N, F)    up projection
};

// Scratch shared by the linear layers (LoRA terms, dequantised weight tiles).
struct LinScratch {
  float* xd = nullptr;    // (N, max in)  dropout(x), then (dt·A)
  float* t = nullptr;     // (N, r)       dropout(x)·Aᵀ
  float* dt = nullptr;    // (N, r)
  float* wtile = nullptr; // (kTileRows, max in)
  uint64_t seed = 0;
  bool training = false;  // dropout only while training
};
constexpr int64_t kTileRows = 128;

inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Inverted dropout with a mask that is a pure function of (seed, module, element): dst = src·m/(1-p).
void dropout_apply(const float* src, float* dst, int64_t n, float p, uint64_t seed, uint64_t id) {
  const uint64_t key = mix64(seed ^ mix64(id));
  const uint32_t thresh = uint32_t(double(p) * 4294967296.0);
  const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = uint32_t(mix64(key + uint64_t(i)) >> 32);
    dst[i] = h >= thresh ? src[i] * keep_scale : 0.0f;
  }
}

// The LoRA input: x itself without dropout, else dropout(x) in scratch.
const float* lora_input(const Lin& l, const float* x, int64_t n, LinScratch& s) {
  if (l.dropout <= 0 || !s.training) return x;
  dropout_apply(x, s.xd, n * l.in, l.dropout, s.seed, l.id);
  return s.xd;
}

void linear_fwd(const Lin& l, const float* x, float* y, int64_t n, LinScratch& s) {
  // y (n, out) = x (n, in) · Wᵀ; a frozen NF4 (QLoRA) base takes the inference kernel too
  // (8-bit activations per 64-block, docs/quantization.md "NF4 multi-row kernel": the adapter
  // trains against the forward it is served with).
  ops::matmul(x, l.wq, l.dt, y, n, l.out, l.in);
  if (l.b)
    for (int64_t r = 0; r < n; ++r) ops::add_inplace(y + r * l.out, l.b, l.out);
  if (l.A) {  // y += s · (drop(x)·Aᵀ)·Bᵀ
    const float* xd = lora_input(l, x, n, s);
    ops::gemm_f32(false, true, n, l.r, l.in, 1.0f, xd, l.in, l.A, l.in, 0.0f, s.t, l.r);
    ops::gemm_f32(false, true, n, l.out, l.r, l.scale, s.t, l.r, l.Bm, l.r, 1.0f, y, l.out);
  }
}

// y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ  ⇒  dW += dyᵀ·x, db += Σ_rows dy, dB += s·dyᵀ·t,
// dt = s·dy·B, dA += dtᵀ·drop(x), dx (+)= dy·W + drop'(dt·A).
void linear_bwd(const Lin& l, const float* x, const float* dy, float* dx, bool dx_accumulate,
                int64_t n, LinScratch& s) {
  if (l.gw) ops::gemm_f32(true, false, l.out, l.in, n, 1.0f, dy, l.out, x, l.in, 1.0f, l.gw, l.in);
  if (l.gb) ops::bias_backward(dy, l.gb, n, l.out);
  if (!dx) return;
  if (l.w) {
    ops::gemm_f32(false, false, n, l.in, l.out, 1.0f, dy, l.out, l.w, l.in,
                  dx_accumulate ? 1.0f : 0.0f, dx, l.in);
  } else {
    // Frozen weights in another dtype: dequantise kTileRows rows at a time, dx += dy_tile·W_tile.
    if (!dx_accumulate) std::fill(dx, dx + n * l.in, 0.0f);
    const size_t rb = dtype_row_bytes(l.dt, l.in);
    for (int64_t o0 = 0; o0 < l.out; o0 += kTileRows) {
      const int64_t nr = std::min(kTileRows, l.out - o0);
      const uint8_t* src = static_cast<const uint8_t*>(l.wq) + size_t(o0) * rb;
      if (dtype_is_quantized(l.dt)) {
        ops::dequantize_rows(l.dt, l.wq, l.out, l.in, o0, nr, s.wtile);
      } else {
        convert_to_f32(src, l.dt, s.wtile, size_t(nr * l.in));
      }
      ops::gemm_f32(false, false, n, l.in, nr, 1.0f, dy + o0, l.out, s.wtile, l.in, 1.0f, dx, l.in);
    }
  }
  if (l.A) {
    const float* xd = lora_input(l, x, n, s);
    ops::gemm_f32(false, true, n, l.r, l.in, 1.0f, xd, l.in, l.A, l.in, 0.0f, s.t, l.r);
    ops::gemm_f32(true, false, l.out, l.r, n, l.scale, dy, l.out, s.t, l.r, 1.0f, l.gB, l.r);
    ops::gemm_f32(false, false, n, l.r, l.out, l.scale, dy, l.out, l.Bm, l.r, 0.0f, s.dt, l.r);
    ops::gemm_f32(true, false, l.r, l.in, n, 1.0f, s.dt, l.r, xd, l.in, 1.0f, l.gA, l.in);
    if (l.dropout <= 0 || !s.training) {
      ops::gemm_f32(false, false, n, l.in, l.r, 1.0f, s.dt, l.r, l.A, l.in, 1.0f, dx, l.in);
    } else {
      ops::gemm_f32(false, false, n, l.in, l.r, 1.0f, s.dt, l.r, l.A, l.in, 0.0f, s.xd, l.in);
      dropout_apply(s.xd, s.xd, n * l.in, l.dropout, s.seed, l.id);
      ops::add_inplace(dx, s.xd, n * l.in);
    }
  }
}

}  // namespace

struct TrainModel::Impl {
  std::vector<LayerParams> layers;
  const void* embed = nullptr;   // (V, C) in embed_dt
  DType embed_dt = DType::F32;
  float* g_embed = nullptr;      // null: frozen
  const float* final_norm = nullptr;
  float* g_final_norm = nullptr;
  const float* head = nullptr;   // (V, C) f32: the embedding when tied
  float* g_head = nullptr;
  std::vector<float> head_f32;   // frozen head converted to f32 (LoRA on a non-f32 base)
  LinScratch ls;
  std::vector<float> lin_scratch;

  // Activation arena, sized for n_rows = B·T.
  int64_t cap_rows = 0, cap_T = 0;
  bool cap_recompute = false;
  std::vector<float> arena;
  std::vector<Acts> acts;  // per layer (recompute: x_in only; full slot is recomp)
  Acts recomp;             // shared full slot for recomputation / loss-only forward
  float* x_last = nullptr;  // (N, C) output of the last layer
  float* xf = nullptr;      // (N, C) after the final norm
  // Backward scratch.
  std::vector<float> bwd;
  float *dx = nullptr, *dh = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr,
        *datt = nullptr, *dqp = nullptr, *dkp = nullptr, *dg = nullptr, *du = nullptr,
        *a = nullptr;
  std::vector<int32_t> pos;
  std::vector<float> cos_tab, sin_tab;
  int64_t rope_T = -1;
  // mHC.
  ops::MhcDims md;
  float* X_last = nullptr;     // (N, n, C) streams after the last layer
  float* X_scratch = nullptr;  // (N, n, C) recompute: the discarded layer output
  float *dX0 = nullptr, *dX1 = nullptr;          // (N, n, C) stream gradients (ping-pong)
  float *g_hpre = nullptr, *g_hpost = nullptr;  // (N, n)
  float* g_hres = nullptr;                      // (N, n, n)
};

TrainModel::~TrainModel() = default;

void TrainModel::build_params() {
  const ModelConfig& c = cfg_;
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, D = c.head_dim;
  params_.clear();
  int64_t off = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool decay) {
    Param p;
    p.name = name;
    p.shape = shape;
    p.numel = 1;
    for (int64_t d : shape) p.numel *= d;
    p.offset = off;
    p.decay = decay;
    off += p.numel;
    params_.push_back(std::move(p));
  };
  add("model.embed_tokens.weight", {V, C}, false);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    auto lin = [&](const std::string& n, int64_t out, int64_t in, bool bias) {
      add(p + n + ".weight", {out, in}, true);
      if (bias) add(p + n + ".bias", {out}, false);
    };
    add(p + "input_layernorm.weight", {C}, false);
    lin("self_attn.q_proj", c.q_dim(), C, c.qkv_bias);
    lin("self_attn.k_proj", c.kv_dim(), C, c.qkv_bias);
    lin("self_attn.v_proj", c.kv_dim(), C, c.qkv_bias);
    lin("self_attn.o_proj", C, c.q_dim(), c.o_bias);
    if (c.qk_norm) {
      add(p + "self_attn.q_norm.weight", {D}, false);
      add(p + "self_attn.k_norm.weight", {D}, false);
    }
    add(p + "post_attention_layernorm.weight", {C}, false);
    lin("mlp.gate_proj", F, C, c.mlp_bias);
    lin("mlp.up_proj", F, C, c.mlp_bias);
    lin("mlp.down_proj", C, F, c.mlp_bias);
    if (c.use_mhc) {  // phi decays (dynamic weights), bias and alpha do not (static, gates)
      const ops::MhcDims md = mhc_dims(c);
      for (const char* site : {"attn_hc", "mlp_hc"}) {
        add(p + site + ".phi", {md.phi_rows(), md.phi_cols()}, true);
        add(p + site + ".bias", {md.K()}, false);
        add(p + site + ".alpha", {3}, false);
      }
    }
  }
  add("model.norm.weight", {C}, false);
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, C}, true);
  w_.assign(size_t(off), 0.0f);
  g_.assign(size_t(off), 0.0f);

  // Views.
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  std::map<std::string, int64_t> at;
  for (const Param& p : params_) at[p.name] = p.offset;
  auto W = [&](const std::string& n) { return w_.data() + at.at(n); };
  auto G = [&](const std::string& n) { return g_.data() + at.at(n); };
  m.embed = W("model.embed_tokens.weight");
  m.embed_dt = DType::F32;
  m.g_embed = G("model.embed_tokens.weight");
  m.final_norm = W("model.norm.weight");
  m.g_final_norm = G("model.norm.weight");
  if (c.tie_word_embeddings) {
    m.head = W("model.embed_tokens.weight");
    m.g_head = m.g_embed;
  } else {
    m.head = W("lm_head.weight");
    m.g_head = G("lm_head.weight");
  }
  m.layers.resize(size_t(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerParams& L = m.layers[size_t(i)];
    auto lin = [&](const std::string& n, int64_t out, int64_t in, bool bias) {
      Lin l;
      l.w = W(p + n + ".weight");
      l.wq = l.w;
      l.gw = G(p + n + ".weight");
      if (bias) {
        l.b = W(p + n + ".bias");
        l.gb = G(p + n + ".bias");
      }
      l.out = out;
      l.in = in;
      return l;
    };
    L.attn_norm = W(p + "input_layernorm.weight");
    L.g_attn_norm = G(p + "input_layernorm.weight");
    L.q = lin("self_attn.q_proj", c.q_dim(), C, c.qkv_bias);
    L.k = lin("self_attn.k_proj", c.kv_dim(), C, c.qkv_bias);
    L.v = lin("self_attn.v_proj", c.kv_dim(), C, c.qkv_bias);
    L.o = lin("self_attn.o_proj", C, c.q_dim(), c.o_bias);
    if (c.qk_norm) {
      L.q_norm = W(p + "self_attn.q_norm.weight");
      L.g_q_norm = G(p + "self_attn.q_norm.weight");
      L.k_norm = W(p + "self_attn.k_norm.weight");
      L.g_k_norm = G(p + "self_attn.k_norm.weight");
    }
    L.mlp_norm = W(p + "post_attention_layernorm.weight");
    L.g_mlp_norm = G(p + "post_attention_layernorm.weight");
    L.gate = lin("mlp.gate_proj", F, C, c.mlp_bias);
    L.up = lin("mlp.up_proj", F, C, c.mlp_bias);
    L.down = lin("mlp.down_proj", C, F, c.mlp_bias);
    if (c.use_mhc) {
      for (int s = 0; s < 2; ++s) {
        const std::string n = p + (s == 0 ? "attn_hc" : "mlp_hc");
        SiteP& sp = s == 0 ? L.attn_hc : L.mlp_hc;
        sp.phi = W(n + ".phi");
        sp.g_phi = G(n + ".phi");
        sp.bias = W(n + ".bias");
        sp.g_bias = G(n + ".bias");
        sp.alpha = W(n + ".alpha");
        sp.g_alpha = G(n + ".alpha");
      }
    }
  }
  if (c.use_mhc) m.md = mhc_dims(c);
}

TrainModel::TrainModel(const ModelConfig& cfg, uint64_t seed, TrainModelOptions opt)
    : cfg_(cfg), opt_(opt) {
  cfg_.validate();
  // The same weights `qwen init` writes for this seed: draw them through Model::random.
  std::unique_ptr<Model> m = Model::random(cfg_, seed, DType::F32);
  build_params();
  for (const auto& t : m->named_tensors()) {
    const Param& p = param(t.name);
    std::memcpy(w_.data() + p.offset, t.data, size_t(p.numel) * 4);
  }
}

TrainModel::TrainModel(const Model& m, TrainModelOptions opt) : cfg_(m.config()), opt_(opt) {
  build_params();
  for (const auto& t : m.named_tensors()) {
    const Param& p = param(t.name);
    if (dtype_is_quantized(t.dtype))
      throw Error("tensor '" + t.name + "' is quantised (" + dtype_name(t.dtype) +
                  "); full training needs float weights (use LoRA/QLoRA for a quantised base)");
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    if (n != p.numel || t.shape != p.shape)
      throw Error("tensor '" + t.name + "' does not have the shape config.json implies");
    convert_to_f32(t.data, t.dtype, w_.data() + p.offset, size_t(n));
  }
}

TrainModel::TrainModel(const Model& base, LoraAdapter& adapter, TrainModelOptions opt)
    : cfg_(base.config()), opt_(opt), base_(&base), adapter_(&adapter) {
  const ModelConfig& c = cfg_;
  const LoraConfig& lc = adapter.config();
  // Parameters: the adapter's A and B, in module order, under PEFT's names.
  int64_t off = 0;
  for (const auto& mod : adapter.modules()) {
    Param a, b;
    a.name = mod.key_A();
    a.shape = {lc.r, mod.n_in};
    a.numel = lc.r * mod.n_in;
    a.offset = off;
    off += a.numel;
    b.name = mod.key_B();
    b.shape = {mod.n_out, lc.r};
    b.numel = mod.n_out * lc.r;
    b.offset = off;
    off += b.numel;
    params_.push_back(a);
    params_.push_back(b);
  }
  w_.assign(size_t(off), 0.0f);
  g_.assign(size_t(off), 0.0f);
  for (size_t i = 0; i < adapter.modules().size(); ++i) {
    const auto& mod = adapter.modules()[i];
    std::copy(mod.A.begin(), mod.A.end(), w_.begin() + params_[2 * i].offset);
    std::copy(mod.B.begin(), mod.B.end(), w_.begin() + params_[2 * i + 1].offset);
  }
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  m.embed = base.embed();
  m.embed_dt = base.embed_dtype();
  m.final_norm = base.final_norm();
  const Linear& head = base.lm_head();
  if (head.dtype == DType::F32) {
    m.head = static_cast<const float*>(head.w);
  } else {
    m.head_f32.resize(size_t(c.vocab_size * c.hidden_size));
    if (dtype_is_quantized(head.dtype)) {
      const size_t rb = dtype_row_bytes(head.dtype, c.hidden_size);
      for (int64_t v = 0; v < c.vocab_size; ++v)
        ops::dequantize_row(head.dtype, static_cast<const uint8_t*>(head.w) + size_t(v) * rb,
                            m.head_f32.data() + v * c.hidden_size, c.hidden_size);
    } else {
      convert_to_f32(head.w, head.dtype, m.head_f32.data(), m.head_f32.size());
    }
    m.head = m.head_f32.data();
  }
  auto frozen = [](const Linear& l) {
    Lin r;
    r.wq = l.w;
    r.dt = l.dtype;
    r.w = l.dtype == DType::F32 ? static_cast<const float*>(l.w) : nullptr;
    r.b = l.bias;
    r.out = l.n_out;
    r.in = l.n_in;
    return r;
  };
  m.layers.resize(size_t(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const LayerWeights& B = base.layers()[size_t(i)];
    LayerParams& L = m.layers[size_t(i)];
    L.attn_norm = B.attn_norm;
    L.q = frozen(B.q);
    L.k = frozen(B.k);
    L.v = frozen(B.v);
    L.o = frozen(B.o);
    L.q_norm = B.q_norm;
    L.k_norm = B.k_norm;
    L.mlp_norm = B.mlp_norm;
    L.gate = frozen(B.gate);
    L.up = frozen(B.up);
    L.down = frozen(B.down);
    L.attn_hc.phi = B.attn_hc.phi;  // mHC sites of the base stay frozen (null gradients)
    L.attn_hc.bias = B.attn_hc.bias;
    L.attn_hc.alpha = B.attn_hc.alpha;
    L.mlp_hc.phi = B.mlp_hc.phi;
    L.mlp_hc.bias = B.mlp_hc.bias;
    L.mlp_hc.alpha = B.mlp_hc.alpha;
  }
  if (c.use_mhc) m.md = mhc_dims(c);
  init_lora_views();
}

void TrainModel::init_lora_views() {
  Impl& m = *impl_;
  const LoraConfig& lc = adapter_->config();
  uint64_t id = 1;
  for (size_t i = 0; i < adapter_->modules().size(); ++i) {
    const auto& mod = adapter_->modules()[i];
    const std::string name = mod.module;
    LayerParams& L = m.layers[size_t(mod.layer)];
    Lin* l = name == "q_proj" ? &L.q : name == "k_proj" ? &L.k : name == "v_proj" ? &L.v
           : name == "o_proj" ? &L.o : name == "gate_proj" ? &L.gate : name == "up_proj" ? &L.up
           : &L.down;
    const Param& pa = params_[2 * i];
    const Param& pb = params_[2 * i + 1];
    l->A = w_.data() + pa.offset;
    l->gA = g_.data() + pa.offset;
    l->Bm = w_.data() + pb.offset;
    l->gB = g_.data() + pb.offset;
    l->r = lc.r;
    l->scale = lc.scale();
    l->dropout = float(lc.dropout);
    l->id = id++;
  }
}

void TrainModel::sync_adapter() const {
  if (!adapter_) return;
  for (size_t i = 0; i < adapter_->modules().size(); ++i) {
    auto& mod = adapter_->modules()[i];
    const Param& pa = params_[2 * i];
    const Param& pb = params_[2 * i + 1];
    std::copy(w_.begin() + pa.offset, w_.begin() + pa.offset + pa.numel, mod.A.begin());
    std::copy(w_.begin() + pb.offset, w_.begin() + pb.offset + pb.numel, mod.B.begin());
  }
}

const Param& TrainModel::param(const std::string& name) const {
  for (const Param& p : params_)
    if (p.name == name) return p;
  throw Error("model has no parameter '" + name + "'");
}

void TrainModel::zero_grad() { std::fill(g_.begin(), g_.end(), 0.0f); }

size_t TrainModel::activation_bytes() const {
  return (impl_->arena.size() + impl_->bwd.size() + impl_->lin_scratch.size()) * sizeof(float);
}

std::unique_ptr<Model> TrainModel::as_model() const {
  const ModelConfig& c = cfg_;
  const Impl& m = *impl_;
  if (adapter_) {
    sync_adapter();
    auto view = Model::from_weights(c, nullptr, base_->embed(), base_->embed_dtype(),
                                    base_->final_norm(), base_->lm_head(), base_->layers());
    adapter_->attach(*view);
    return view;
  }
  auto lin = [](const Lin& l) {
    Linear r;
    r.w = l.wq;
    r.dtype = DType::F32;
    r.bias = l.b;
    r.n_out = l.out;
    r.n_in = l.in;
    return r;
  };
  std::vector<LayerWeights> layers(m.layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerParams& L = m.layers[i];
    LayerWeights& o = layers[i];
    o.attn_norm = L.attn_norm;
    o.q = lin(L.q);
    o.k = lin(L.k);
    o.v = lin(L.v);
    o.o = lin(L.o);
    o.q_norm = L.q_norm;
    o.k_norm = L.k_norm;
    o.mlp_norm = L.mlp_norm;
    o.gate = lin(L.gate);
    o.up = lin(L.up);
    o.down = lin(L.down);
    o.attn_hc = MhcSiteWeights{L.attn_hc.phi, L.attn_hc.bias, L.attn_hc.alpha};
    o.mlp_hc = MhcSiteWeights{L.mlp_hc.phi, L.mlp_hc.bias, L.mlp_hc.alpha};
  }
  Linear head{m.head, DType::F32, nullptr, c.vocab_size, c.hidden_size, nullptr};
  return Model::from_weights(c, nullptr, m.embed, m.embed_dt, m.final_norm, head,
                             std::move(layers));
}

void TrainModel::save(const std::string& dir) const {
  if (adapter_) {
    sync_adapter();
    adapter_->save(dir);
    return;
  }
  as_model()->save(dir);
}

// ---------------------------------------------------------------------------------------------
// Memory plan: sized from the config and (B, T); grows only when a larger batch arrives.

static void carve_full(Acts& a, float*& p, const ModelConfig& c, int64_t N, bool with_x_in) {
  const int64_t C = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim(),
                H = c.num_attention_heads;
  auto take = [&](int64_t n) { float* r = p; p += n; return r; };
  if (c.use_mhc) {
    const int64_t n = c.mhc_num_streams, cs = ops::mhc_coefs_size(N, n);
    if (with_x_in) a.X_a = take(N * n * C);
    a.X_m = take(N * n * C);
    a.coef_a = take(cs);
    a.coef_m = take(cs);
    a.F_a = take(N * C);
    a.F_m = take(N * C);
  }
  a.x_in = take(N * C);
  a.h1 = take(N * C);
  if (c.qk_norm) {
    a.qp = take(N * qd);
    a.kp = take(N * kvd);
  }
  a.q = take(N * qd);
  a.k = take(N * kvd);
  a.v = take(N * kvd);
  a.att = take(N * qd);
  a.lse = take(N * H);
  a.x1 = take(N * C);
  a.h2 = take(N * C);
  a.g = take(N * F);
  a.u = take(N * F);
}

static int64_t full_floats(const ModelConfig& c, int64_t N) {
  const int64_t C = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim(),
                H = c.num_attention_heads;
  const int64_t plain = N * (4 * C + (c.qk_norm ? qd + kvd : 0) + 2 * qd + 2 * kvd + H + 2 * F);
  if (!c.use_mhc) return plain;
  const int64_t n = c.mhc_num_streams;
  return plain + 2 * N * n * C + 2 * ops::mhc_coefs_size(N, n) + 2 * N * C;
}

static void plan(TrainModel::Impl& m, const ModelConfig& c, int64_t B, int64_t T, bool recompute) {
  const int64_t N = B * T;
  if (N <= m.cap_rows && T <= m.cap_T && recompute == m.cap_recompute) return;
  const int64_t L = c.num_hidden_layers, C = c.hidden_size, F = c.intermediate_size,
                qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t per_full = full_floats(c, N);
  const int64_t nC = c.use_mhc ? c.mhc_num_streams * C : C;  // residual floats per token
  int64_t total = 2 * N * C;                          // x_last, xf
  if (c.use_mhc) total += 2 * N * nC;                 // X_last, X_scratch
  total += per_full;                                  // recomp slot (also the loss-only forward)
  total += recompute ? L * N * nC : L * per_full;     // per-layer saves
  m.arena.assign(size_t(total), 0.0f);
  float* p = m.arena.data();
  m.x_last = p; p += N * C;
  m.xf = p; p += N * C;
  if (c.use_mhc) {
    m.X_last = p; p += N * nC;
    m.X_scratch = p; p += N * nC;
  }
  m.recomp = Acts{};
  carve_full(m.recomp, p, c, N, true);
  m.acts.assign(size_t(L), Acts{});
  for (int64_t l = 0; l < L; ++l) {
    if (recompute) {
      (c.use_mhc ? m.acts[size_t(l)].X_a : m.acts[size_t(l)].x_in) = p;
      p += N * nC;
    } else {
      carve_full(m.acts[size_t(l)], p, c, N, true);
    }
  }
  assert(p == m.arena.data() + total);
  const int64_t n_s = c.use_mhc ? c.mhc_num_streams : 0;
  const int64_t nb = N * (2 * C + 2 * qd + 2 * kvd + 3 * F + (c.qk_norm ? qd + kvd : 0)) +
                     N * (2 * n_s * C + 2 * n_s + n_s * n_s);
  m.bwd.assign(size_t(nb), 0.0f);
  float* b = m.bwd.data();
  auto take = [&](int64_t n) { float* r = b; b += n; return r; };
  if (c.use_mhc) {
    m.dX0 = take(N * n_s * C);
    m.dX1 = take(N * n_s * C);
    m.g_hpre = take(N * n_s);
    m.g_hpost = take(N * n_s);
    m.g_hres = take(N * n_s * n_s);
  }
  m.dx = take(N * C);
  m.dh = take(N * C);
  m.dq = take(N * qd);
  m.datt = take(N * qd);
  m.dk = take(N * kvd);
  m.dv = take(N * kvd);
  m.dg = take(N * F);
  m.du = take(N * F);
  m.a = take(N * F);
  if (c.qk_norm) {
    m.dqp = take(N * qd);
    m.dkp = take(N * kvd);
  }
  // Linear-layer scratch: LoRA terms and dequantised weight tiles.
  int64_t max_r = 0;
  for (const LayerParams& L : m.layers)
    for (const Lin* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) max_r = std::max(max_r, l->r);
  bool tiles = false;
  for (const LayerParams& L : m.layers) tiles |= L.q.w == nullptr;
  const int64_t max_in = std::max(C, std::max(F, qd));
  m.lin_scratch.assign(size_t((max_r > 0 ? N * max_in + 2 * N * max_r : 0) +
                              (tiles ? kTileRows * max_in : 0)), 0.0f);
  float* ls = m.lin_scratch.data();
  if (max_r > 0) {
    m.ls.xd = ls; ls += N * max_in;
    m.ls.t = ls; ls += N * max_r;
    m.ls.dt = ls; ls += N * max_r;
  }
  if (tiles) m.ls.wtile = ls;
  m.pos.resize(size_t(N));
  m.cap_rows = N;
  m.cap_T = T;
  m.cap_recompute = recompute;
}

// ---------------------------------------------------------------------------------------------
// Attention sub-layer F: reads a.x_in (N, C), writes out (N, C) = o_proj(attention(...)) and
// saves h1, q, k, v (and qp, kp), att, lse.
static void attn_forward(const ModelConfig& c, TrainModel::Impl& m, const LayerParams& L,
                         Acts& a, float* out, int64_t B, int64_t T) {
  const int64_t N = B * T, C = c.hidden_size, H = c.num_attention_heads,
                KV = c.num_key_value_heads, D = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
  const float eps = float(c.rms_norm_eps);
  ops::rmsnorm(a.x_in, L.attn_norm, a.h1, N, C, eps);
  if (c.qk_norm) {
    linear_fwd(L.q, a.h1, a.qp, N, m.ls);  // (N, H·D)
    linear_fwd(L.k, a.h1, a.kp, N, m.ls);  // (N, KV·D)
    ops::rmsnorm(a.qp, L.q_norm, a.q, N * H, D, eps);
    ops::rmsnorm(a.kp, L.k_norm, a.k, N * KV, D, eps);
  } else {
    linear_fwd(L.q, a.h1, a.q, N, m.ls);
    linear_fwd(L.k, a.h1, a.k, N, m.ls);
  }
  linear_fwd(L.v, a.h1, a.v, N, m.ls);
  ops::rope_apply(a.q, N, H, D, m.pos.data(), m.cos_tab.data(), m.sin_tab.data());
  ops::rope_apply(a.k, N, KV, D, m.pos.data(), m.cos_tab.data(), m.sin_tab.data());
  ops::AttnShape s;
  s.T = T;
  s.pos0 = 0;
  s.H = H;
  s.KV = KV;
  s.D = D;
  s.scale = 1.0f / std::sqrt(float(D));
  for (int64_t b = 0; b < B; ++b)
    ops::flash_attention(a.q + b * T * qd, a.k + b * T * kvd, a.v + b * T * kvd, kvd,
                         a.att + b * T * qd, s, a.lse + b * H * T);
  linear_fwd(L.o, a.att, out, N, m.ls);
}

// MLP sub-layer F: reads a.x1 (N, C), writes out (N, C) = down(swiglu(gate(h2), up(h2))) and
// saves h2, g, u.
static void mlp_forward(const ModelConfig& c, TrainModel::Impl& m, const LayerParams& L,
                        Acts& a, float* out, int64_t N) {
  const int64_t C = c.hidden_size, F = c.intermediate_size;
  ops::rmsnorm(a.x1, L.mlp_norm, a.h2, N, C, float(c.rms_norm_eps));
  linear_fwd(L.gate, a.h2, a.g, N, m.ls);
  linear_fwd(L.up, a.h2, a.u, N, m.ls);
  ops::swiglu(a.g, a.u, m.a, N * F);      // a (N, F), scratch
  linear_fwd(L.down, m.a, out, N, m.ls);
}

// Forward of one layer. Plain: x_in (N, C) already in a.x_in, out (N, C). mHC: the streams
// (N, n, C) already in a.X_a, out (N, n, C). Writes every saved activation; out may not alias
// the input. mHC only: in_done — the attention site's coefficients and u1 are already in a (the
// layer above wrote them); nextL / next — the next layer, whose attention site's input side
// (coefficients, u1 into next->coef_a, next->x_in) is computed with this layer's last merge in
// one pass (out must then be next->X_a).
static void layer_forward(const ModelConfig& c, TrainModel::Impl& m, const LayerParams& L,
                          Acts& a, float* out, int64_t B, int64_t T, bool in_done = false,
                          const LayerParams* nextL = nullptr, Acts* next = nullptr) {
  const int64_t N = B * T, C = c.hidden_size;
  if (!c.use_mhc) {
    attn_forward(c, m, L, a, a.x1, B, T);
    ops::add_inplace(a.x1, a.x_in, N * C);  // x1 = x_in + o
    mlp_forward(c, m, L, a, out, N);
    ops::add_inplace(out, a.x1, N * C);     // out = x1 + down
    return;
  }
  const ops::MhcDims& md = m.md;
  const ops::MhcCoefs<float> ca = ops::mhc_coefs_view(a.coef_a, N, md.n);
  const ops::MhcCoefs<float> cm = ops::mhc_coefs_view(a.coef_m, N, md.n);
  if (!in_done) ops::mhc_site_in(md, L.attn_hc.params(), a.X_a, N, ca, a.x_in);  // coefs, u1
  attn_forward(c, m, L, a, a.F_a, B, T);
  // X_m = the attention site's merge, then the MLP site's coefficients and u2 in the same pass.
  ops::mhc_site_merge_in(md, a.X_a, ca, a.F_a, N, a.X_m, L.mlp_hc.params(), cm, a.x1);
  mlp_forward(c, m, L, a, a.F_m, N);
  if (next) {  // the MLP site's merge and the next layer's attention site input in one pass
    assert(out == next->X_a);
    ops::mhc_site_merge_in(md, a.X_m, cm, a.F_m, N, out, nextL->attn_hc.params(),
                           ops::mhc_coefs_view(next->coef_a, N, md.n), next->x_in);
  } else {
    ops::mhc_post_merge(md, a.X_m, cm.h_res, cm.h_post, a.F_m, N, out);
  }
}

// MLP sub-layer backward: m.dx holds dL/d(F output) on entry; dL/d(a.x1) is added to it
// (residual: the plain model's x1 + down) or written over it (mHC: the site adds the rest).
static void mlp_backward(const ModelConfig& c, TrainModel::Impl& m, const LayerParams& L,
                         const Acts& a, int64_t N, bool residual) {
  const int64_t C = c.hidden_size, F = c.intermediate_size;
  const float eps = float(c.rms_norm_eps);
  ops::swiglu(a.g, a.u, m.a, N * F);  // recompute a (N, F)
  float* da = m.du;                    // (N, F) dL/da
  linear_bwd(L.down, m.a, m.dx, da, false, N, m.ls);
  // swiglu_backward accumulates into dg and du; du must not alias da, so it goes to m.a (a is
  // no longer needed once dW_down has been taken).
  std::fill(m.dg, m.dg + N * F, 0.0f);
  std::fill(m.a, m.a + N * F, 0.0f);
  ops::swiglu_backward(a.g, a.u, da, m.dg, m.a, N * F);
  float* dup = m.a;
  linear_bwd(L.gate, a.h2, m.dg, m.dh, false, N, m.ls);
  linear_bwd(L.up, a.h2, dup, m.dh, true, N, m.ls);
  if (!residual) std::fill(m.dx, m.dx + N * C, 0.0f);
  ops::rmsnorm_backward(a.x1, L.mlp_norm, m.dh, m.dx, L.g_mlp_norm, N, C, eps);  // dx: dL/dx1
}

// Attention sub-layer backward: m.dx holds dL/d(o output) on entry; dL/d(a.x_in) is added to it
// (residual) or written over it (mHC).
static void attn_backward(const ModelConfig& c, TrainModel::Impl& m, const LayerParams& L,
                          const Acts& a, int64_t B, int64_t T, bool residual) {
  const int64_t N = B * T, C = c.hidden_size, H = c.num_attention_heads,
                KV = c.num_key_value_heads, D = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
  const float eps = float(c.rms_norm_eps);
  linear_bwd(L.o, a.att, m.dx, m.datt, false, N, m.ls);
  std::fill(m.dq, m.dq + N * qd, 0.0f);
  std::fill(m.dk, m.dk + N * kvd, 0.0f);
  std::fill(m.dv, m.dv + N * kvd, 0.0f);
  ops::AttnShape s;
  s.T = T;
  s.pos0 = 0;
  s.H = H;
  s.KV = KV;
  s.D = D;
  s.scale = 1.0f / std::sqrt(float(D));
  for (int64_t b = 0; b < B; ++b)
    ops::flash_attention_backward(a.q + b * T * qd, a.k + b * T * kvd, a.v + b * T * kvd, kvd,
                                  a.att + b * T * qd, m.datt + b * T * qd, a.lse + b * H * T,
                                  m.dq + b * T * qd, m.dk + b * T * kvd, m.dv + b * T * kvd, s);
  ops::rope_apply_backward(m.dq, N, H, D, m.pos.data(), m.cos_tab.data(), m.sin_tab.data());
  ops::rope_apply_backward(m.dk, N, KV, D, m.pos.data(), m.cos_tab.data(), m.sin_tab.data());
  const float* dq = m.dq;
  const float* dk = m.dk;
  if (c.qk_norm) {
    std::fill(m.dqp, m.dqp + N * qd, 0.0f);
    std::fill(m.dkp, m.dkp + N * kvd, 0.0f);
    ops::rmsnorm_backward(a.qp, L.q_norm, m.dq, m.dqp, L.g_q_norm, N * H, D, eps);
    ops::rmsnorm_backward(a.kp, L.k_norm, m.dk, m.dkp, L.g_k_norm, N * KV, D, eps);
    dq = m.dqp;
    dk = m.dkp;
  }
  linear_bwd(L.q, a.h1, dq, m.dh, false, N, m.ls);
  linear_bwd(L.k, a.h1, dk, m.dh, true, N, m.ls);
  linear_bwd(L.v, a.h1, m.dv, m.dh, true, N, m.ls);
  if (!residual) std::fill(m.dx, m.dx + N * C, 0.0f);
  ops::rmsnorm_backward(a.x_in, L.attn_norm, m.dh, m.dx, L.g_attn_norm, N, C, eps);  // dL/dx_in
}

// The site below another in backward order (its sub-layer output and coefficients), whose
// merge-backward head the site above computes from its finished dL/dX_in (mHC).
struct SiteBelow {
  const float* F = nullptr;
  const float* coef = nullptr;
};

// Backward of one mHC site around a sub-layer: G = dL/dX_out (N, n, C); writes dL/dX_in into
// gX (N, n, C, overwritten) and accumulates the site's and the sub-layer's parameter gradients.
// X_in, coefs, Fout: the forward's site input, coefficients and sub-layer output.
// *head_ready (mHC): on entry, whether m.dx (dL/dF) and m.g_hpost already hold this site's
// merge-backward head (the site above computed it); on return, whether they hold below's.
template <class SubBackward>
static void site_backward(TrainModel::Impl& m, const SiteP& sp, const float* X_in,
                          const float* coef, const float* Fout, const float* G, float* gX,
                          int64_t N, int64_t C, const SiteBelow* below, bool* head_ready,
                          SubBackward&& sub_backward) {
  const ops::MhcDims& md = m.md;
  const int64_t n = md.n;
  const ops::MhcCoefs<float> co = ops::mhc_coefs_view(const_cast<float*>(coef), N, n);
  if (md.mode == ops::HcMode::Hc) {  // HC: the three backward functions, g_X accumulated
    std::fill(m.g_hpost, m.g_hpost + N * n, 0.0f);
    std::fill(m.g_hres, m.g_hres + N * n * n, 0.0f);
    std::fill(m.dx, m.dx + N * C, 0.0f);
    std::fill(gX, gX + N * n * C, 0.0f);
    std::fill(m.g_hpre, m.g_hpre + N * n, 0.0f);
    ops::mhc_post_merge_backward(md, X_in, co.h_res, co.h_post, Fout, G, N, gX, m.g_hres,
                                 m.g_hpost, m.dx);                        // m.dx: dL/dF
    sub_backward();                                                       // m.dx: dL/du
    ops::mhc_pre_aggregate_backward(md, X_in, co.h_pre, m.dx, N, gX, m.g_hpre);
    ops::mhc_coefficients_backward(md, sp.params(), X_in, co, m.g_hpre, m.g_hpost, m.g_hres, N,
                                   gX, sp.grads());
    *head_ready = false;
    return;
  }
  // mHC: the merge backward's head (dL/dF, g_h_post; unless the site above already wrote it),
  // F's backward, then one pass over X_in and G: g_h_res, g_X = H_resᵀ·G + the pre-aggregate and
  // coefficient backwards, and the head of the site below from the finished g_X
  // (ops::mhc_site_backward_fused).
  if (!*head_ready) {
    std::fill(m.g_hpost, m.g_hpost + N * n, 0.0f);
    std::fill(m.dx, m.dx + N * C, 0.0f);
    ops::mhc_post_merge_backward(md, X_in, co.h_res, co.h_post, Fout, G, N,
                                 static_cast<float*>(nullptr), static_cast<float*>(nullptr),
                                 m.g_hpost, m.dx);
  }
  sub_backward();
  ops::MhcMergeHead<float> head;
  if (below) {  // written over m.dx (g_u) and m.g_hpost, token group by token group
    head.F = below->F;
    head.h_post = ops::mhc_coefs_view(const_cast<float*>(below->coef), N, n).h_post;
    head.g_F = m.dx;
    head.g_h_post = m.g_hpost;
  }
  ops::mhc_site_backward_fused(md, sp.params(), X_in, co, G, m.dx, m.g_hpost, N, m.g_hpre, gX,
                               sp.grads(), below ? &head : nullptr);
  *head_ready = below != nullptr;
}

// Backward of one layer. Plain: m.dx holds dL/d(out) on entry and dL/d(x_in) on return. mHC:
// m.dX0 holds dL/d(out streams) on entry and dL/d(X_a) on return (m.dX1 is scratch); below: the
// layer below's saved activations when they are at hand (not recomputed), whose MLP site's
// merge-backward head the attention site then computes (*head_ready, see site_backward).
static void layer_backward(const ModelConfig& c, TrainModel::Impl& m, const LayerParams& L,
                           const Acts& a, int64_t B, int64_t T, const Acts* below,
                           bool* head_ready) {
  const int64_t N = B * T, C = c.hidden_size;
  if (!c.use_mhc) {
    mlp_backward(c, m, L, a, N, true);
    attn_backward(c, m, L, a, B, T, true);
    return;
  }
  const SiteBelow attn_site{a.F_a, a.coef_a};
  const SiteBelow mlp_below = below ? SiteBelow{below->F_m, below->coef_m} : SiteBelow{};
  site_backward(m, L.mlp_hc, a.X_m, a.coef_m, a.F_m, m.dX0, m.dX1, N, C, &attn_site, head_ready,
                [&] { mlp_backward(c, m, L, a, N, false); });
  site_backward(m, L.attn_hc, a.X_a, a.coef_a, a.F_a, m.dX1, m.dX0, N, C,
                below ? &mlp_below : nullptr, head_ready,
                [&] { attn_backward(c, m, L, a, B, T, false); });
}

// x (n, C) = embedding rows of tokens, whatever the table's dtype.
static void embed_rows(const TrainModel::Impl& m, const int32_t* tokens, int64_t n, int64_t V,
                       int64_t C, float* x) {
  if (m.embed_dt == DType::F32) {
    ops::embedding_forward(static_cast<const float*>(m.embed), V, C, tokens, n, x);
    return;
  }
  const size_t rb = dtype_row_bytes(m.embed_dt, C);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* src = static_cast<const uint8_t*>(m.embed) + size_t(tokens[i]) * rb;
    if (dtype_is_quantized(m.embed_dt))
      ops::dequantize_row(m.embed_dt, src, x + i * C, C);
    else
      convert_to_f32(src, m.embed_dt, x + i * C, size_t(C));
  }
}

static void prepare_rope(TrainModel::Impl& m, const ModelConfig& c, int64_t B, int64_t T) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) m.pos[size_t(b * T + t)] = int32_t(t);
  if (m.rope_T == T) return;
  RopeFreqs f = rope_frequencies(c, c.rope_scaling.type == "dynamic" ? T : 0);
  rope_tables(f, T, &m.cos_tab, &m.sin_tab);
  m.rope_T = T;
}

static void check_tokens(const int32_t* tokens, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw Error("token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                  " is out of range for vocab_size " + std::to_string(V) +
                  "; were the data prepared with this model's tokenizer?");
}

static void check_targets(const int32_t* targets, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i)
    if (targets[i] >= V)
      throw Error("target id " + std::to_string(targets[i]) + " is out of range for vocab_size " +
                  std::to_string(V));
}

double TrainModel::forward_backward(const int32_t* tokens, const int32_t* targets, int64_t B,
                                    int64_t T, float grad_scale, int64_t* n_counted) {
  const ModelConfig& c = cfg_;
  Impl& m = *impl_;
  const int64_t N = B * T, C = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  if (B <= 0 || T <= 0) throw Error("forward_backward: batch and sequence length must be >= 1");
  check_tokens(tokens, N, V);
  check_targets(targets, N, V);
  plan(m, c, B, T, opt_.recompute);
  prepare_rope(m, c, B, T);
  const float eps = float(c.rms_norm_eps);
  const bool mhc = c.use_mhc;
  const int64_t n = m.md.n;

  // Forward. The per-layer input is x_in (plain) or the streams X_a (mHC).
  m.ls.seed = dropout_seed_set_ ? dropout_seed_ : dropout_seed_++;
  dropout_seed_set_ = false;
  m.ls.training = true;
  auto input_of = [&](Acts& a) -> float*& { return mhc ? a.X_a : a.x_in; };
  if (mhc) {
    embed_rows(m, tokens, N, V, C, m.xf);  // xf is free until the final norm
    ops::mhc_expand(m.xf, N, n, C, m.acts[0].X_a);
  } else {
    embed_rows(m, tokens, N, V, C, m.acts[0].x_in);
  }
  float* last = mhc ? m.X_last : m.x_last;
  bool in_done = false;  // mHC without recompute: layer l's last merge did l + 1's site input
  for (int64_t l = 0; l < L; ++l) {
    Acts* a = &m.acts[size_t(l)];
    Acts full;
    if (opt_.recompute) {
      full = m.recomp;
      input_of(full) = input_of(*a);
      a = &full;
    }
    float* out = l + 1 < L ? input_of(m.acts[size_t(l + 1)]) : last;
    const bool fuse = mhc && !opt_.recompute && l + 1 < L;
    layer_forward(c, m, m.layers[size_t(l)], *a, out, B, T, in_done,
                  fuse ? &m.layers[size_t(l + 1)] : nullptr, fuse ? &m.acts[size_t(l + 1)] : nullptr);
    in_done = fuse;
  }
  if (mhc) ops::mhc_collapse(m.X_last, N, n, C, m.x_last);  // streams summed
  ops::rmsnorm(m.x_last, m.final_norm, m.xf, N, C, eps);

  // Loss and its gradient with respect to xf (into dh) and the head.
  std::fill(m.dh, m.dh + N * C, 0.0f);
  int64_t counted = 0;
  const double loss = ops::cross_entropy_fused(m.xf, m.head, targets, N, C, V, grad_scale, m.dh,
                                               m.g_head, &counted);
  if (n_counted) *n_counted = counted;

  // Backward.
  std::fill(m.dx, m.dx + N * C, 0.0f);
  ops::rmsnorm_backward(m.x_last, m.final_norm, m.dh, m.dx, m.g_final_norm, N, C, eps);
  if (mhc) ops::mhc_expand(m.dx, N, n, C, m.dX0);  // the sum's backward: a copy per stream
  bool head_ready = false;  // mHC: see site_backward
  for (int64_t l = L - 1; l >= 0; --l) {
    const Acts* a = &m.acts[size_t(l)];
    Acts full;
    if (opt_.recompute) {
      full = m.recomp;
      input_of(full) = input_of(m.acts[size_t(l)]);
      // Recompute this layer's activations; its output is discarded (plain: into dh, which is
      // rewritten before it is read in layer_backward; mHC: into X_scratch).
      layer_forward(c, m, m.layers[size_t(l)], full, mhc ? m.X_scratch : m.dh, B, T);
      a = &full;
    }
    // The layer below's activations, if stored (with recompute they are not there yet).
    const Acts* below = !opt_.recompute && l > 0 ? &m.acts[size_t(l - 1)] : nullptr;
    layer_backward(c, m, m.layers[size_t(l)], *a, B, T, below, &head_ready);
  }
  if (mhc) ops::mhc_collapse(m.dX0, N, n, C, m.dx);  // the copy's backward: sum over streams
  if (m.g_embed) ops::embedding_backward(tokens, N, m.dx, m.g_embed, V, C);
  return loss;
}

double TrainModel::forward_loss(const int32_t* tokens, const int32_t* targets, int64_t B,
                                int64_t T, int64_t* n_counted) {
  return forward_eval(tokens, targets, B, T, n_counted, nullptr);
}

double TrainModel::forward_eval(const int32_t* tokens, const int32_t* targets, int64_t B,
                                int64_t T, int64_t* n_counted, float* h_res_out) {
  const ModelConfig& c = cfg_;
  Impl& m = *impl_;
  const int64_t N = B * T, C = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  if (B <= 0 || T <= 0) throw Error("forward_loss: batch and sequence length must be >= 1");
  check_tokens(tokens, N, V);
  check_targets(targets, N, V);
  plan(m, c, B, T, opt_.recompute);
  prepare_rope(m, c, B, T);
  const bool mhc = c.use_mhc;
  const int64_t n = m.md.n;
  // Ping-pong between the last-layer buffer and the shared slot's input.
  float* cur = mhc ? m.recomp.X_a : m.recomp.x_in;
  float* nxt = mhc ? m.X_last : m.x_last;
  m.ls.training = false;
  if (mhc) {
    embed_rows(m, tokens, N, V, C, m.xf);
    ops::mhc_expand(m.xf, N, n, C, cur);
  } else {
    embed_rows(m, tokens, N, V, C, cur);
  }
  for (int64_t l = 0; l < L; ++l) {
    Acts a = m.recomp;
    (mhc ? a.X_a : a.x_in) = cur;
    layer_forward(c, m, m.layers[size_t(l)], a, nxt, B, T);
    if (h_res_out) {  // (2L, N, n, n): sites in model order
      const int64_t nn = N * n * n;
      for (int s = 0; s < 2; ++s) {
        const ops::MhcCoefs<float> co = ops::mhc_coefs_view(s == 0 ? a.coef_a : a.coef_m, N, n);
        std::copy(co.h_res, co.h_res + nn, h_res_out + (2 * l + s) * nn);
      }
    }
    std::swap(cur, nxt);
  }
  if (mhc) {
    ops::mhc_collapse(cur, N, n, C, m.x_last);
    cur = m.x_last;
  }
  ops::rmsnorm(cur, m.final_norm, m.xf, N, C, float(c.rms_norm_eps));
  int64_t counted = 0;
  const double loss =
      ops::cross_entropy_fused(m.xf, m.head, targets, N, C, V, 0.0f, nullptr, nullptr, &counted);
  if (n_counted) *n_counted = counted;
  return loss;
}

std::vector<float> TrainModel::mhc_h_res(const int32_t* tokens, int64_t T) {
  if (!cfg_.use_mhc) throw Error("mhc_h_res: the model has no mHC sites (config use_mhc is false)");
  const int64_t n = cfg_.mhc_num_streams;
  std::vector<float> h(size_t(2 * cfg_.num_hidden_layers * T * n * n));
  std::vector<int32_t> none(size_t(T), -1);
  forward_eval(tokens, none.data(), 1, T, nullptr, h.data());
  return h;
}

MhcGainProfile TrainModel::mhc_amax_gains(const int32_t* tokens, int64_t T,
                                          bool average_matrices) {
  const std::vector<float> h = mhc_h_res(tokens, T);
  const int64_t L = 2 * cfg_.num_hidden_layers;
  MhcGainProfile g;
  g.single.resize(size_t(L));
  g.composite.resize(size_t(L));
  ops::hres_gain_profile(h.data(), L, T, cfg_.mhc_num_streams, average_matrices, g.single.data(),
                         g.composite.data());
  return g;
}

}  // namespace qwen::train
