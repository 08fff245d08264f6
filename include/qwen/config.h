/// @file qwen/config.h
/// @brief The model's hyper-parameters, read from and written to a Hugging Face
/// config.json (Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qwen {

/// rope_scaling / rope_parameters, as transformers' modeling_rope_utils defines each type.
/// Values absent from the file keep the defaults below; has_* flags record presence where the
/// formula depends on it.
struct RopeScaling {
  std::string type = "default";  ///< default | linear | dynamic | yarn | llama3
  double factor = 1.0;           ///< scaling factor (linear, dynamic, yarn, llama3)
  bool has_original_max = false; ///< original_max_position_embeddings present in the file
  double original_max_position_embeddings = 0;  ///< the trained context (yarn, llama3)
  // yarn
  bool has_attention_factor = false;  ///< attention_factor present in the file
  double attention_factor = 1.0;      ///< yarn: attention scale (default from mscale)
  double beta_fast = 32.0;            ///< yarn: ramp start (rotations)
  double beta_slow = 1.0;             ///< yarn: ramp end (rotations)
  bool has_mscale = false;            ///< mscale present in the file
  bool has_mscale_all_dim = false;    ///< mscale_all_dim present in the file
  double mscale = 0;                  ///< yarn: mscale (DeepSeek-style attention factor)
  double mscale_all_dim = 0;          ///< yarn: mscale_all_dim
  bool truncate = true;               ///< yarn: round the ramp bounds to whole dimensions
  // llama3
  double low_freq_factor = 1.0;       ///< llama3: low_freq_factor
  double high_freq_factor = 4.0;      ///< llama3: high_freq_factor
};

/// The hyper-parameters of a decoder (config.json). Letters in the comments name the sizes
/// used in shape comments throughout the code.
struct ModelConfig {
  std::string architecture = "Qwen2ForCausalLM";  ///< architectures[0]
  std::string model_type = "qwen2";               ///< qwen2 | qwen3 | llama
  int64_t vocab_size = 0;         ///< V
  int64_t hidden_size = 0;         ///< C
  int64_t intermediate_size = 0;   ///< F
  int64_t num_hidden_layers = 0;   ///< L
  int64_t num_attention_heads = 0; ///< H
  int64_t num_key_value_heads = 0; ///< KV
  int64_t head_dim = 0;            ///< D (explicit in Qwen3/Llama configs, else C/H)
  bool explicit_head_dim = false;  ///< head_dim key present in the file
  int64_t max_position_embeddings = 32768;  ///< the context length
  double rms_norm_eps = 1e-6;      ///< RMSNorm epsilon
  double rope_theta = 10000.0;     ///< RoPE base
  RopeScaling rope_scaling;        ///< type "default" when absent
  bool tie_word_embeddings = false;  ///< lm_head shares the embedding matrix
  bool qkv_bias = false;           ///< Qwen2: always true; Qwen3/Llama: attention_bias
  bool o_bias = false;             ///< Qwen3/Llama: attention_bias; Qwen2: false
  bool mlp_bias = false;           ///< Llama mlp_bias
  bool qk_norm = false;            ///< Qwen3
  int64_t bos_token_id = -1;       ///< -1: none
  std::vector<int64_t> eos_token_ids;  ///< ids that end generation (may be empty)
  int64_t pad_token_id = -1;       ///< -1: none
  std::string torch_dtype = "float32";  ///< dtype of the weights in the folder
  double initializer_range = 0.02; ///< std of the random init
  std::string hidden_act = "silu"; ///< MLP activation (silu)

  /// mHC / HC residual streams (docs/mhc.md, issue 6). Keys are written to config.json only when
  /// use_mhc is true, so a plain model stays a pure Hugging Face folder.
  bool use_mhc = false;
  int64_t mhc_num_streams = 4;     ///< n, 1..16
  int64_t mhc_sinkhorn_iters = 20; ///< Sinkhorn steps per H_res (mHC mode)
  std::string mhc_mode = "mhc";    ///< "mhc" (manifold-constrained) | "hc" (tanh HC baseline)

  /// Parse a config.json text / file. Throws qwen::Error naming the key and the file on bad
  /// input (missing required key, wrong type, unknown architecture or rope type, H % KV != 0).
  static ModelConfig from_json(const std::string& text, const std::string& where = "config.json");
  /// Reads and parses the file at path (errors name it).
  static ModelConfig from_file(const std::string& path);
  /// A config.json that transformers loads unchanged into the same architecture.
  std::string to_json() const;

  /// Throws qwen::Error if the numbers are inconsistent (zero sizes, H % KV, odd head_dim, ...).
  void validate(const std::string& where = "config") const;

  /// H·D, the width of the queries.
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  /// KV·D, the width of the keys and of the values.
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

}  // namespace qwen
