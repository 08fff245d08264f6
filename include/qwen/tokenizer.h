/// @file qwen/tokenizer.h
/// @brief Text <-> token ids, exactly as Hugging Face's `tokenizers` library computes
/// them from a tokenizer.json (byte-level BPE: Qwen2/Qwen2.5/Qwen3, Llama 3, GPT-2 style files),
/// plus the ChatML chat template, a streaming detokenizer and a byte-level BPE trainer.
///
/// Pipeline of encode (the same order as `tokenizers`): split out added tokens that are matched on
/// the raw text (normalized=false), normalize the rest (NFC, ...), split out added tokens matched on
/// normalized text, pre-tokenize (regex Split + ByteLevel), BPE each piece, then the post-processor
/// (e.g. Llama 3's <|begin_of_text|>) when add_special_tokens is true.
/// A Tokenizer is immutable after loading, cheap to copy/move (shared state) and safe to use from
/// several threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qwen {

/// A Hugging Face tokenizer.json (byte-level BPE) with its tokenizer_config.json: encode, decode,
/// special ids, the ChatML template. Immutable, cheap to copy, thread-safe.
class Tokenizer {
 public:
  /// Loads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json.
  static Tokenizer from_dir(const std::string& dir);
  /// From the file contents (config_json may be empty: no tokenizer_config.json).
  static Tokenizer from_json(const std::string& tokenizer_json, const std::string& config_json = "");

  /// Text (UTF-8; invalid UTF-8 throws qwen::Error) -> ids. add_special_tokens applies the
  /// post-processor template (or add_bos_token/add_eos_token of tokenizer_config.json).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  /// Same for many texts, on qwen::num_threads() threads; result i belongs to texts[i].
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts,
                                                 bool add_special_tokens = true) const;
  /// Ids -> text. Bytes that are not valid UTF-8 become U+FFFD (as Rust's from_utf8_lossy).
  /// Ids that are not in the vocabulary are skipped, as `tokenizers` does.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int64_t vocab_size() const;  ///< highest id + 1 (incl. added tokens)
  int32_t bos_id() const;      ///< -1 if none
  int32_t eos_id() const;      ///< -1 if none
  int32_t pad_id() const;      ///< -1 if none
  /// Ids that end generation: eos, <|im_end|> and <|endoftext|> when present (no duplicates).
  std::vector<int32_t> stop_ids() const;
  /// Token string as written in tokenizer.json (byte-level form, e.g. "Ġworld"), or an added
  /// token's content -> id; -1 if absent.
  int32_t token_to_id(const std::string& token) const;
  /// The token string of an id ("" if unknown).
  std::string id_to_token(int32_t id) const;
  /// The raw bytes an id decodes to (may be part of a UTF-8 sequence; "" if unknown).
  const std::string& token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;  ///< an added token marked "special"

  /// ChatML as Qwen uses it: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then
  /// "<|im_start|>assistant\n" when add_generation_prompt. If tokenizer_config.json's template
  /// injects a default system message (Qwen2 / Qwen2.5) and none is given, it is added too.
  /// Throws qwen::Error if the vocabulary lacks <|im_start|> / <|im_end|>.
  std::string apply_chat_template(const std::vector<std::pair<std::string, std::string>>& role_content,
                                  bool add_generation_prompt = true) const;

  Tokenizer();  ///< empty; usable only after assignment from from_dir/from_json
  ~Tokenizer();                                 ///< Releases this handle's share.
  Tokenizer(const Tokenizer&);                  ///< Shares the same tokenizer.
  Tokenizer(Tokenizer&&) noexcept;              ///< Moves the handle.
  Tokenizer& operator=(const Tokenizer&);       ///< Shares the same tokenizer.
  Tokenizer& operator=(Tokenizer&&) noexcept;   ///< Moves the handle.

  /// Library-internal state; not part of the stable API.
  struct Impl;
  /// Library-internal access to the state; not part of the stable API.
  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<const Impl> impl_;
};

/// Token-by-token detokenizer for generation output: push() returns only text that is final
/// (complete UTF-8; bytes that can never become valid are already U+FFFD), holding back an
/// unfinished multi-byte sequence until later tokens complete it. The concatenation of every
/// push() and the final flush() equals Tokenizer::decode of all ids.
class StreamDecoder {
 public:
  /// Decodes with tok; special tokens are left out when skip_special_tokens.
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special_tokens = true);
  /// The text that became final with this id (possibly empty).
  std::string push(int32_t id);
  std::string flush();  ///< whatever is held back (an unfinished sequence becomes U+FFFD)

 private:
  Tokenizer tok_;
  bool skip_special_;
  bool first_ = true;
  std::string pending_;  ///< at most 3 bytes of an unfinished UTF-8 sequence
};

/// Byte-level BPE training on text files (Qwen's pre-tokenizer regex and NFC). Deterministic:
/// the most frequent pair wins, ties go to the pair whose bytes sort first.
struct BpeTrainOptions {
  int64_t vocab_size = 8192;  ///< total, including the 256 byte tokens and the special tokens
  int64_t min_frequency = 2;  ///< pairs seen fewer times than this are never merged
  /// Added tokens, marked special, after the learned vocabulary.
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  int n_threads = 0;          ///< 0: qwen::num_threads()
  /// Texts are counted in chunks of about this many bytes (in parallel), cut only where the
  /// pre-tokenizer always ends a piece: the result does not depend on it or on n_threads.
  int64_t chunk_bytes = int64_t(1) << 18;
  bool verbose = false;       ///< progress on stderr
};

/// What train_bpe() produced.
struct BpeTrainResult {
  std::string tokenizer_json;         ///< tokenizer.json contents
  std::string tokenizer_config_json;  ///< tokenizer_config.json contents
  int64_t n_merges = 0;    ///< merges learned
  int64_t vocab_size = 0;  ///< incl. special tokens
  double seconds = 0;      ///< wall time of the training
};

/// Trains on the concatenation of texts (each is a separate document).
BpeTrainResult train_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& opts);
/// Reads the files, trains, writes out_dir/tokenizer.json and out_dir/tokenizer_config.json.
BpeTrainResult train_bpe_files(const std::vector<std::string>& files, const std::string& out_dir,
                               const BpeTrainOptions& opts);

/// The tokenizer that belongs to a model path: for a "*.gguf" file the one its metadata
/// describes (tokenizer.ggml.*, rebuilt to give llama.cpp's ids; none when tokenizer.ggml.model
/// is absent, "none" or "no_vocab"), for a folder DIR/tokenizer.json (+ tokenizer_config.json)
/// when present.
/// std::nullopt when there is none; throws qwen::Error on a tokenizer that is there but invalid.
std::optional<Tokenizer> model_tokenizer(const std::string& model_path);

/// The chat template of a model path: tokenizer.chat_template of a GGUF file, or
/// DIR/chat_template.jinja, or chat_template of DIR/tokenizer_config.json; "" when there is none.
std::string model_chat_template(const std::string& model_path);

}  // namespace qwen
