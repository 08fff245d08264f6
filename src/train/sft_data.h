// train/sft_data.h — instruction-tuning data for `qwen finetune`: JSONL conversations rendered
// with the tokenizer's ChatML template and tokenised with a loss mask that covers only what the
// assistant says, packed greedily into fixed (seq + 1)-token rows with a seeded per-epoch shuffle
// and an exactly restorable position, plus an unpacked one-example-per-row view for evaluation
// and the exact-match scorer of the fine-tuning task (docs/finetune-task.md).
//
// Input, one JSON object per line (blank lines are ignored, other keys are ignored):
//   {"prompt": "...", "response": "..."}            (optional "system": "...")
//     -> messages [system,] user = prompt, assistant = response
//   {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}
//     -> at least one assistant message; no assistant message may be empty
//
// Rendering and the loss mask. The conversation is rendered with Tokenizer::apply_chat_template
// (add_generation_prompt = false), which is a sequence of turns
//   <|im_start|> ROLE "\n" BODY <|im_end|> "\n"
// (BODY is the content as the template writes it: Qwen3 templates put "<think>\n\n</think>\n\n"
// before the final assistant answer; Qwen2.5 ones add a default system turn). Every piece is
// tokenised on its own and the ids are concatenated: <|im_start|>, encode(ROLE + "\n"),
// encode(BODY), <|im_end|>, encode("\n"). The loss mask is 1 on the BODY tokens of assistant
// turns and on their closing <|im_end|>; 0 on headers, on the "\n" after <|im_end|>, and on
// system and user turns. So the model learns to say the answer and to stop, from the same
// context it sees at inference (the generation prompt "<|im_start|>assistant\n" is tokenised
// alone there too).
//
// Why piece-wise tokenisation equals tokenising the whole rendered string: the tokenizer first
// splits its input at added tokens (<|im_start|>, <|im_end|>, ...), then pre-tokenizes and runs
// BPE on each stretch between them independently, so cutting at the markers changes nothing.
// The one extra cut is between "ROLE\n" and BODY. The Qwen / GPT-2 pre-tokenizer regex never
// joins a newline with a following letter, digit, punctuation or " word", so that cut is also a
// pre-token boundary, EXCEPT when BODY starts with optional blanks followed by a line break
// (e.g. "\nfoo" or " \n foo"): the whole string would tokenise "\n\n" (or "\n \n") as one
// pre-token spanning header and body. We keep the separate tokens on purpose: the header then
// tokenises exactly as the generation prompt does at inference, and the mask boundary stays
// exact. (Qwen3's template strips leading newlines of the final answer, so it only concerns
// unusual content.) tests/data/sft/make_golden.py checks both claims against Hugging Face.
//
// Errors: a malformed line (bad JSON, not an object, missing or non-string fields, unknown
// role, empty response, no assistant message, a ChatML marker inside content) is reported as
// "FILE:LINE: what; what to do". OnBadLine::stop throws qwen::Error at the first one;
// OnBadLine::skip drops it, counts it and lists it in the SftReport.
//
// Truncation: an example longer than seq + 1 tokens keeps its LAST seq + 1 tokens by default
// (Truncate::keep_end): the loss is on the answer at the end, and the kept window still holds
// the closing <|im_end|> the model must learn to emit, and the most recent question; a window
// that keeps the start would often cut the answer off entirely. The first kept token is never
// a loss token (nothing before it in the row predicts it). Truncate::keep_start is available.
// An example left without any loss token (only possible when non-assistant turns follow the
// last answer) is dropped. Both are counted in the report.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qwen {
class Tokenizer;
}

namespace qwen::train {

// One chat message: (role, content), the form Tokenizer::apply_chat_template takes.
using ChatMessages = std::vector<std::pair<std::string, std::string>>;

// One tokenised conversation. ids and loss_mask have the same length (<= seq + 1 after
// truncation); loss_mask[i] = 1 when ids[i] is an assistant token the loss is on.
struct SftExample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;
  int64_t line = 0;       // 1-based line in the source file (0 when built in memory)
  int64_t n_prompt = 0;   // ids[0, n_prompt) is the prompt of the last assistant turn, ending
                          // with its "<|im_start|>assistant\n" header (the evaluation prompt)
  std::string reference;  // content of the last assistant message, as given (for scoring)
  bool truncated = false;
  int64_t n_loss() const;  // number of mask-on tokens
};

enum class OnBadLine { stop, skip };
enum class Truncate { keep_end, keep_start };

struct SftOptions {
  int64_t seq = 0;  // rows hold seq + 1 tokens; longer examples are truncated. Must be >= 1.
  OnBadLine on_bad_line = OnBadLine::stop;
  Truncate truncate = Truncate::keep_end;
  size_t max_listed = 20;  // skipped-line messages kept in the report (all are counted)
};

// What loading found; summary() is one line for the log.
struct SftReport {
  std::string source;               // file name (or the name given to from_text)
  int64_t n_lines = 0;              // non-blank lines read
  int64_t n_examples = 0;           // examples kept
  int64_t n_skipped = 0;            // malformed lines skipped (OnBadLine::skip)
  std::vector<int64_t> skipped_lines;      // their line numbers (all of them)
  std::vector<std::string> skipped_errors; // "FILE:LINE: what" of the first max_listed
  int64_t n_truncated = 0;          // examples longer than seq + 1 tokens, cut to seq + 1
  int64_t n_dropped = 0;            // examples with no loss token left after truncation
  int64_t n_tokens = 0;             // tokens of the kept examples (after truncation)
  int64_t n_loss_tokens = 0;        // mask-on tokens among them
  std::string summary() const;
};

// Parse one JSONL line into chat messages, checking roles, types and the response. where is
// "FILE:LINE" and starts every error message. Throws qwen::Error.
ChatMessages parse_sft_line(const std::string& line, const std::string& where);

// Render with the template and tokenise with the loss mask (no truncation). Throws qwen::Error
// if the vocabulary lacks <|im_start|> / <|im_end|>, or a message has no assistant turn.
SftExample tokenize_chat(const Tokenizer& tok, const ChatMessages& messages);

// The token of padding and of the end of a row: the tokenizer's eos, else <|endoftext|>, else 0.
int32_t sft_pad_id(const Tokenizer& tok);

// A set of tokenised examples, every one at most seq + 1 tokens long.
class SftDataset {
 public:
  // Read, parse, render and tokenise a JSONL file (tokenisation runs on qwen::num_threads()).
  // Throws qwen::Error: unreadable file, a bad line under OnBadLine::stop, no usable example.
  static SftDataset load(const std::string& path, const Tokenizer& tok, const SftOptions& opt);
  // The same from the text of a file; source names it in messages.
  static SftDataset from_text(const std::string& text, const std::string& source,
                              const Tokenizer& tok, const SftOptions& opt);
  // Ready examples (they are truncated as opt says); pad_id pads rows.
  static SftDataset from_examples(std::vector<SftExample> examples, int32_t pad_id,
                                  const SftOptions& opt, const std::string& source = "memory");

  const std::vector<SftExample>& examples() const { return examples_; }
  int64_t size() const { return int64_t(examples_.size()); }
  int64_t seq() const { return seq_; }
  int32_t pad_id() const { return pad_id_; }
  const SftReport& report() const { return report_; }
  // 64-bit hash of seq and every example's ids and mask: a saved loader position is only
  // valid for the data set it came from.
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  SftDataset() = default;
  void finish(const SftOptions& opt);  // truncate, drop, count, fingerprint
  std::vector<SftExample> examples_;
  int64_t seq_ = 0;
  int32_t pad_id_ = 0;
  SftReport report_;
  uint64_t fingerprint_ = 0;
};

// Row r of a batch as next-token training data: tokens = row[0, seq), targets[i] = row[i + 1]
// when row[i + 1] is a loss token, else -1 (so padding, prompts, and the first token of the next
// packed example are never targets).
struct SftLoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t row = 0;  // rows of this epoch already handed out
};

// Greedy packing: each epoch visits the examples in an order shuffled from (seed, epoch) and
// appends them to the current row while they fit in seq + 1 tokens; the next one that does not
// fit closes the row (the rest is padded with pad_id, targets -1) and starts a new one. Every
// example appears exactly once per epoch, whole. Attention is not masked between packed
// examples (the loss of one never includes a target in another).
class SftPacker {
 public:
  SftPacker(const SftDataset& data, uint64_t seed);  // data must outlive the packer
  // Fill tokens and targets, each (B, seq) row-major. Continues into the next epoch (reshuffled)
  // when the rows of this one run out.
  void next_batch(int64_t B, int32_t* tokens, int32_t* targets);
  int64_t rows_in_epoch() const { return int64_t(row_begin_.size()) - 1; }  // current epoch
  double epoch_progress() const;  // epoch + fraction of its rows handed out
  // Example indices of each row of an epoch (the layout next_batch follows).
  std::vector<std::vector<int64_t>> layout(int64_t epoch) const;

  SftLoaderState state() const { return st_; }
  void set_state(const SftLoaderState& s);  // throws qwen::Error if row is outside the epoch
  // {"format":"qwen-sft-loader","version":1,"seed":"<decimal>","epoch":E,"row":R,"seq":S,
  //  "examples":N,"fingerprint":"<16 hex>"}; the last three identify the data set.
  std::string save_state() const;
  // Restore from save_state(); throws qwen::Error (one line) if the JSON is not a loader
  // state, or it was saved for another data set or seq.
  void restore_state(const std::string& json);
  const SftDataset& data() const { return data_; }

 private:
  void build_epoch();
  void pack(int64_t epoch, std::vector<int64_t>* order, std::vector<int64_t>* row_begin) const;
  void fill_row(int64_t row, int32_t* tokens, int32_t* targets);
  const SftDataset& data_;
  SftLoaderState st_;
  std::vector<int64_t> order_;      // this epoch's example order
  std::vector<int64_t> row_begin_;  // row r holds order_[row_begin_[r], row_begin_[r + 1])
  std::vector<int32_t> buf_;   // one row: seq + 1 ids
  std::vector<uint8_t> mbuf_;  // and their loss mask
};

// Evaluation: one example per row, in file order, padded with pad_id (targets -1), so the loss
// and the accuracy can be attributed to examples. Rows past the end of the set are all padding.
class SftEvalIterator {
 public:
  explicit SftEvalIterator(const SftDataset& data) : data_(data) {}  // data must outlive it
  // Fill (B, seq) tokens and targets with the next B examples; returns how many rows hold an
  // example (0 when done).
  int64_t next_batch(int64_t B, int32_t* tokens, int32_t* targets);
  bool done() const { return next_ >= data_.size(); }
  void reset() { next_ = 0; }
  int64_t position() const { return next_; }  // index of the next example

  // Row of example i alone (T = seq).
  void row(int64_t i, int32_t* tokens, int32_t* targets) const;
  // Prompt of example i for generation: ids up to and including the last assistant header.
  std::vector<int32_t> prompt_ids(int64_t i) const;
  const std::string& reference(int64_t i) const;

 private:
  const SftDataset& data_;
  int64_t next_ = 0;
};

// The task's exact-match scorer (docs/finetune-task.md): the generated text is cut at the first
// <|im_end|> or <|endoftext|>, a leading "<think>…</think>" block is removed, and ASCII
// whitespace is trimmed at both ends; the reference is normalised the same way; then the two
// must be byte-identical (case, inner spaces and punctuation all count).
std::string normalize_answer(const std::string& text);
bool exact_match(const std::string& generated, const std::string& reference);

}  // namespace qwen::train
