// model/decoder.cpp — the inference forward pass (see decoder.h). Pre-norm decoder layer:
//   h = x + o_proj(Attn(rope(q), rope(k), v))   with q,k,v = proj(RMSNorm(x))
//   x = h + down(silu(gate(RMSNorm(h))) * up(RMSNorm(h)))
#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/rope.h"
#include "ops/attention.h"
#include "ops/quant.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/mhc.h"
#include "qwen/error.h"

namespace qwen {

KvCache::KvCache(const ModelConfig& c, int64_t n_seq, int64_t max_len)
    : n_seq_(n_seq), max_len_(max_len), kv_dim_(c.kv_dim()), len_(size_t(n_seq), 0) {
  size_t n = size_t(c.num_hidden_layers * n_seq * max_len * kv_dim_);
  k_.assign(n, 0.f);
  v_.assign(n, 0.f);
}

void KvCache::append_and_attend(int64_t layer, int64_t seq, const float* k, const float* v,
                                const float* q, float* out, const ops::AttnShape& s) {
  float* kc = this->k(layer, seq);  // (max_len, KV·D)
  float* vc = this->v(layer, seq);
  std::memcpy(kc + s.pos0 * kv_dim_, k, size_t(s.T * kv_dim_) * 4);
  std::memcpy(vc + s.pos0 * kv_dim_, v, size_t(s.T * kv_dim_) * 4);
  ops::flash_attention(q, kc, vc, kv_dim_, out, s);
}

Decoder::Decoder(const Model& m, int64_t max_tokens) : m_(m), max_tokens_(max_tokens) {
  const ModelConfig& c = m.config();
  const size_t T = size_t(max_tokens);
  x_.resize(T * size_t(c.hidden_size));
  h_.resize(T * size_t(c.hidden_size));
  q_.resize(T * size_t(c.q_dim()));
  k_.resize(T * size_t(c.kv_dim()));
  v_.resize(T * size_t(c.kv_dim()));
  att_.resize(T * size_t(c.q_dim()));
  g_.resize(T * size_t(c.intermediate_size));
  u_.resize(T * size_t(c.intermediate_size));
  pos_.resize(T);
  attend_.resize(T);  // a call has at most one chunk per token
  int64_t max_r = 0;
  for (const LayerWeights& L : m.layers())
    for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (l->lora) max_r = std::max(max_r, l->lora->r);
  lora_t_.resize(T * size_t(max_r));
  if (c.use_mhc) {
    streams_.resize(T * size_t(c.mhc_num_streams * c.hidden_size));
    coefs_.resize(size_t(ops::mhc_coefs_size(max_tokens, c.mhc_num_streams)));
    // The decode projections read an F16 copy of phi: half the bytes (docs/mhc.md §10.1, fifth
    // pass). HC mode keeps F32 (its phi is (n+2, C), small).
    const ops::MhcDims md = mhc_dims(c);
    if (md.mode == ops::HcMode::Mhc) {
      const size_t n_sites = 2 * m.layers().size();
      mhc_phi_half_.resize(n_sites * size_t(md.phi_size()));
      mhc_phi_half_scale_.resize(n_sites * size_t(md.phi_rows()));
      for (size_t site = 0; site < n_sites; ++site) {
        const LayerWeights& L = m.layers()[site / 2];
        const MhcSiteWeights& w = site % 2 == 0 ? L.attn_hc : L.mlp_hc;
        ops::mhc_pack_phi_half(md, w.phi, mhc_phi_half_.data() + site * size_t(md.phi_size()),
                               mhc_phi_half_scale_.data() + site * size_t(md.phi_rows()));
      }
    }
  }
}

size_t Decoder::workspace_bytes() const {
  return 4 * (x_.size() + h_.size() + q_.size() + k_.size() + v_.size() + att_.size() +
              g_.size() + u_.size() + pos_.size() + cos_.size() + sin_.size() + lora_t_.size() +
              streams_.size() + coefs_.size());
}

// Tables cover positions [0, max_pos). Dynamic NTK scaling depends on the longest sequence of
// the call (transformers: seq_len = max(position_ids) + 1), so those tables are rebuilt when it
// changes past max_position_embeddings.
void Decoder::ensure_rope(int64_t max_pos) {
  const ModelConfig& c = m_.config();
  const bool dynamic = c.rope_scaling.type == "dynamic";
  int64_t seq_len = dynamic ? std::max(max_pos, c.max_position_embeddings) : 0;
  if (max_pos <= rope_len_ && seq_len == rope_seq_len_) return;
  int64_t n = std::max(max_pos, rope_len_);
  if (!dynamic) n = std::max<int64_t>(n, 256);
  RopeFreqs f = rope_frequencies(c, seq_len);
  rope_tables(f, n, &cos_, &sin_);
  rope_len_ = n;
  rope_seq_len_ = seq_len;
}

void Decoder::linear(const Linear& l, const float* x, float* y, int64_t rows) {
  ops::matmul(x, l.w, l.dtype, y, rows, l.n_out, l.n_in);
  if (l.lora) {  // y += scale · (x·Aᵀ)·Bᵀ
    const LoraDelta& d = *l.lora;
    ops::gemm_f32(false, true, rows, d.r, l.n_in, 1.0f, x, l.n_in, d.A, l.n_in, 0.0f,
                  lora_t_.data(), d.r);
    ops::gemm_f32(false, true, rows, l.n_out, d.r, d.scale, lora_t_.data(), d.r, d.B, d.r, 1.0f,
                  y, l.n_out);
  }
  if (l.bias) {
    for (int64_t r = 0; r < rows; ++r) ops::add_inplace(y + r * l.n_out, l.bias, l.n_out);
  }
}

void Decoder::forward(KvStore& cache, const SeqChunk* chunks, size_t n_chunks, LogitsMode mode,
                      float* logits) {
  const ModelConfig& c = m_.config();
  const int64_t C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads,
                D = c.head_dim, F = c.intermediate_size, V = c.vocab_size, kvd = c.kv_dim(),
                qd = c.q_dim();
  const float eps = float(c.rms_norm_eps);

  // Rows of this call: chunk i owns rows [row0[i], row0[i] + n_tokens).
  int64_t M = 0, max_pos = 0;
  for (size_t i = 0; i < n_chunks; ++i) {
    const SeqChunk& ch = chunks[i];
    if (ch.seq < 0 || ch.seq >= cache.n_seq()) throw Error("sequence index out of range");
    if (ch.n_tokens <= 0) throw Error("a sequence chunk has no tokens");
    const int64_t pos0 = cache.len(ch.seq);
    if (pos0 + ch.n_tokens > cache.capacity(ch.seq))
      throw Error("sequence of " + std::to_string(pos0 + ch.n_tokens) +
                  " tokens exceeds the context of " + std::to_string(cache.capacity(ch.seq)) +
                  " tokens; shorten the prompt or lower max_new_tokens");
    for (int64_t t = 0; t < ch.n_tokens; ++t) {
      const int32_t id = ch.tokens[t];
      if (id < 0 || id >= V)
        throw Error("token id " + std::to_string(id) + " is out of range for vocab_size " +
                    std::to_string(V));
      if (M + t >= max_tokens_) throw Error("too many tokens in one forward call");
      pos_[size_t(M + t)] = int32_t(pos0 + t);
    }
    M += ch.n_tokens;
    max_pos = std::max(max_pos, pos0 + ch.n_tokens);
  }
  if (M == 0) return;
  ensure_rope(max_pos);

  // Embedding rows -> x (M, C).
  {
    int64_t r = 0;
    const DType et = m_.embed_dtype();
    const size_t row_bytes = dtype_row_bytes(et, C);
    for (size_t i = 0; i < n_chunks; ++i)
      for (int64_t t = 0; t < chunks[i].n_tokens; ++t, ++r) {
        const uint8_t* src = static_cast<const uint8_t*>(m_.embed()) + size_t(chunks[i].tokens[t]) * row_bytes;
        if (dtype_is_quantized(et))
          ops::dequantize_row(et, src, x_.data() + r * C, C);
        else
          convert_to_f32(src, et, x_.data() + r * C, size_t(C));
      }
  }

  float* x = x_.data();
  float* h = h_.data();
  // Residual bookkeeping around each sub-layer F (input x (M, C), output h (M, C)): plain
  // x += h, or with mHC the streams X (M, n, C): x = u = Σ h_pre·X before, X = H_res·X + h_post·h
  // after.
  const bool mhc = c.use_mhc;
  const ops::MhcDims md = mhc ? mhc_dims(c) : ops::MhcDims{};
  float* X = streams_.data();
  const ops::MhcCoefs<float> co =
      mhc ? ops::mhc_coefs_view(coefs_.data(), M, md.n) : ops::MhcCoefs<float>{};
  if (mhc) ops::mhc_expand(x, M, md.n, C, X);
  auto site_in = [&](const MhcSiteWeights& w, size_t site) {
    if (!mhc) return;
    ops::MhcParams<float> p{w.phi, w.bias, w.alpha};
    if (!mhc_phi_half_.empty()) {  // the F16 copy of phi made in the constructor
      p.phi_half = mhc_phi_half_.data() + site * size_t(md.phi_size());
      p.phi_half_scale = mhc_phi_half_scale_.data() + site * size_t(md.phi_rows());
    }
    ops::mhc_site_in(md, p, X, M, co, x);
  };
  auto site_out = [&]() {
    if (mhc)
      ops::mhc_post_merge(md, X, co.h_res, co.h_post, h, M, X);
    else
      ops::add_inplace(x, h, M * C);
  };
  for (size_t l = 0; l < m_.layers().size(); ++l) {
    const LayerWeights& L = m_.layers()[l];
    // Attention block.
    site_in(L.attn_hc, 2 * l);
    ops::rmsnorm(x, L.attn_norm, h, M, C, eps);
    linear(L.q, h, q_.data(), M);   // (M, H·D)
    linear(L.k, h, k_.data(), M);   // (M, KV·D)
    linear(L.v, h, v_.data(), M);   // (M, KV·D)
    if (L.q_norm) {
      ops::rmsnorm(q_.data(), L.q_norm, q_.data(), M * H, D, eps);
      ops::rmsnorm(k_.data(), L.k_norm, k_.data(), M * KV, D, eps);
    }
    ops::rope_apply(q_.data(), M, H, D, pos_.data(), cos_.data(), sin_.data());
    ops::rope_apply(k_.data(), M, KV, D, pos_.data(), cos_.data(), sin_.data());
    // Every chunk's attention of this layer in one call: a store may run them in one parallel
    // region (one fork/join per layer rather than one per sequence).
    if (attend_.size() < n_chunks) attend_.resize(n_chunks);
    int64_t r0 = 0;
    for (size_t i = 0; i < n_chunks; ++i) {
      const SeqChunk& ch = chunks[i];
      KvAttendCall& a = attend_[i];
      a.seq = ch.seq;
      a.s.T = ch.n_tokens;
      a.s.pos0 = cache.len(ch.seq);
      a.s.H = H;
      a.s.KV = KV;
      a.s.D = D;
      a.s.scale = 1.0f / std::sqrt(float(D));
      a.k = k_.data() + r0 * kvd;
      a.v = v_.data() + r0 * kvd;
      a.q = q_.data() + r0 * qd;
      a.out = att_.data() + r0 * qd;
      r0 += ch.n_tokens;
    }
    cache.append_and_attend_batch(int64_t(l), attend_.data(), n_chunks);
    linear(L.o, att_.data(), h, M);  // (M, C)
    site_out();
    // MLP block.
    site_in(L.mlp_hc, 2 * l + 1);
    ops::rmsnorm(x, L.mlp_norm, h, M, C, eps);
    linear(L.gate, h, g_.data(), M);  // (M, F)
    linear(L.up, h, u_.data(), M);    // (M, F)
    ops::swiglu(g_.data(), u_.data(), g_.data(), M * F);
    linear(L.down, g_.data(), h, M);  // (M, C)
    site_out();
  }
  if (mhc) ops::mhc_collapse(X, M, md.n, C, x);  // streams summed before the final norm
  for (size_t i = 0; i < n_chunks; ++i) cache.set_len(chunks[i].seq, cache.len(chunks[i].seq) + chunks[i].n_tokens);

  if (mode == LogitsMode::kNone) return;
  int64_t rows = M;
  if (mode == LogitsMode::kLast) {
    // Gather the last row of each chunk to the front of x.
    int64_t r = 0;
    rows = 0;
    for (size_t i = 0; i < n_chunks; ++i) {
      r += chunks[i].n_tokens;
      if (rows != r - 1) std::memmove(x + rows * C, x + (r - 1) * C, size_t(C) * 4);
      ++rows;
    }
  }
  ops::rmsnorm(x, m_.final_norm(), h, rows, C, eps);
  const Linear& head = m_.lm_head();
  ops::matmul(h, head.w, head.dtype, logits, rows, V, C);
}

}  // namespace qwen
