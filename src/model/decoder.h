// model/decoder.h — the inference forward pass of the decoder with a KV cache: one call runs
// any number of sequences' new tokens (prefill chunks and single decode tokens alike) through
// shared matrix multiplies, attends each sequence to its own cached keys, and returns logits.
// All buffers are sized at construction from the config; forward() does not allocate.
// With use_mhc (docs/mhc.md) the residual is n streams (T, n, C) per token: the embedding is
// copied into every stream, each sub-layer reads u = Σ h_pre·X and writes X = H_res·X + h_post·F(u)
// (ops/mhc.h), and the streams are summed before the final norm.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"
#include "ops/attention.h"

namespace qwen {

// Where the decoder keeps keys and values. The contiguous KvCache below serves generation and
// evaluation; the server's paged cache (block tables) implements the same interface.
// One sequence's append_and_attend of a layer, for KvStore::append_and_attend_batch.
struct KvAttendCall {
  int64_t seq = 0;
  const float* k = nullptr;  // (s.T, KV·D)
  const float* v = nullptr;
  const float* q = nullptr;  // (s.T, H, D)
  float* out = nullptr;      // (s.T, H, D)
  ops::AttnShape s;
};

class KvStore {
 public:
  virtual ~KvStore() = default;
  virtual int64_t n_seq() const = 0;
  virtual int64_t len(int64_t seq) const = 0;       // tokens cached for seq
  virtual int64_t capacity(int64_t seq) const = 0;  // most tokens seq may hold now
  virtual void set_len(int64_t seq, int64_t n) = 0;
  // Store the new rows k, v (s.T, KV·D) of layer at positions s.pos0 .. s.pos0+s.T-1 of seq,
  // then causal attention of q (s.T, H, D) over positions 0 .. s.pos0+s.T-1 into out (s.T, H, D).
  virtual void append_and_attend(int64_t layer, int64_t seq, const float* k, const float* v,
                                 const float* q, float* out, const ops::AttnShape& s) = 0;
  // append_and_attend for every call of one layer (distinct sequences). The default runs them
  // one by one; a store may run them together (PagedKvCache: one parallel region for all).
  // Results are identical either way.
  virtual void append_and_attend_batch(int64_t layer, const KvAttendCall* calls, size_t n) {
    for (size_t i = 0; i < n; ++i)
      append_and_attend(layer, calls[i].seq, calls[i].k, calls[i].v, calls[i].q, calls[i].out,
                        calls[i].s);
  }
};

// Contiguous per-sequence KV cache: (L, n_seq, max_len, KV·D) for K and for V, f32.
class KvCache : public KvStore {
 public:
  KvCache(const ModelConfig& c, int64_t n_seq, int64_t max_len);
  int64_t n_seq() const override { return n_seq_; }
  int64_t max_len() const { return max_len_; }
  int64_t kv_dim() const { return kv_dim_; }
  int64_t len(int64_t seq) const override { return len_[size_t(seq)]; }
  int64_t capacity(int64_t) const override { return max_len_; }
  void set_len(int64_t seq, int64_t n) override { len_[size_t(seq)] = n; }
  void reset(int64_t seq) { len_[size_t(seq)] = 0; }
  void append_and_attend(int64_t layer, int64_t seq, const float* k, const float* v,
                         const float* q, float* out, const ops::AttnShape& s) override;
  float* k(int64_t layer, int64_t seq) { return k_.data() + offset(layer, seq); }
  float* v(int64_t layer, int64_t seq) { return v_.data() + offset(layer, seq); }
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(float); }

 private:
  size_t offset(int64_t layer, int64_t seq) const {
    return size_t((layer * n_seq_ + seq) * max_len_ * kv_dim_);
  }
  int64_t n_seq_, max_len_, kv_dim_;
  std::vector<int64_t> len_;
  std::vector<float> k_, v_;
};

// New tokens of one sequence; they go at positions cache.len(seq) ... + n_tokens - 1.
struct SeqChunk {
  int64_t seq = 0;
  int64_t n_tokens = 0;
  const int32_t* tokens = nullptr;
};

enum class LogitsMode { kLast, kAll, kNone };

class Decoder {
 public:
  // max_tokens: most tokens (all chunks together) in one forward call.
  Decoder(const Model& m, int64_t max_tokens);
  const Model& model() const { return m_; }
  int64_t max_tokens() const { return max_tokens_; }

  // Runs the chunks, appends their K/V to the cache and advances its lengths.
  // logits: kLast -> (n_chunks, V), the last token of each chunk; kAll -> (total tokens, V) in
  // chunk order; kNone -> not computed (may be null). Throws qwen::Error on a token id out of
  // range or a sequence that would outgrow the cache.
  void forward(KvStore& cache, const SeqChunk* chunks, size_t n_chunks, LogitsMode mode,
               float* logits);

  // Bytes of scratch this decoder holds.
  size_t workspace_bytes() const;

 private:
  void ensure_rope(int64_t max_pos);
  void linear(const Linear& l, const float* x, float* y, int64_t rows);

  const Model& m_;
  int64_t max_tokens_;
  std::vector<float> x_, h_, q_, k_, v_, att_, g_, u_;
  std::vector<int32_t> pos_;
  std::vector<KvAttendCall> attend_;  // one per chunk, grown on demand (kept between calls)
  std::vector<float> cos_, sin_;
  std::vector<float> lora_t_;  // (max_tokens, max LoRA rank) x·Aᵀ of an adapter
  std::vector<float> streams_;  // mHC: (max_tokens, n, C) residual streams
  std::vector<float> coefs_;    // mHC: ops::mhc_coefs_size(max_tokens, n)
  // mHC: the F16 inference copy of every site's phi (ops::mhc_pack_phi_half), taken when the
  // decoder is built (a decoder must be rebuilt if phi changes): (2·layers, phi_rows, phi_cols)
  // F16 bits and (2·layers, phi_rows) power-of-two row scales; empty in HC mode.
  std::vector<uint16_t> mhc_phi_half_;
  std::vector<float> mhc_phi_half_scale_;
  int64_t rope_len_ = 0;       // positions covered by the tables
  int64_t rope_seq_len_ = -1;  // seq_len the tables were computed for (dynamic rope)
};

}  // namespace qwen
