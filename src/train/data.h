// train/data.h — training data on disk and in memory: binary token shards (a small header, then
// the ids), `qwen data prepare` (tokenise text files or read ready ids into a train and a
// validation split, documents separated by eos), and the loader that memory-maps the shards and
// hands out (B, T) batches of next-token windows, shuffled per epoch or in sequential rows.
//
// Shard file (little-endian):
//   offset 0   char[8]  magic "QWENTOKS"
//   offset 8   uint32   version (1)
//   offset 12  uint32   bytes per token id: 2 (uint16) or 4 (uint32)
//   offset 16  uint64   count: number of token ids
//   offset 24  uint64   reserved (0)
//   offset 32  count ids
// A data folder holds meta.json (vocabulary, eos, the shards of each split, token counts),
// train_NNN.bin and val_NNN.bin, and tokenizer/ (a copy of the tokenizer used, if any).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"

namespace qwen::train {

inline constexpr char kShardMagic[8] = {'Q', 'W', 'E', 'N', 'T', 'O', 'K', 'S'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 32;

// Write ids as one shard, atomically (temp file + fsync + rename). Uses uint16 ids when every id
// fits, else uint32. Throws qwen::Error if the file cannot be written (names the path and why).
void write_shard(const std::string& path, const std::vector<int32_t>& ids);

// A memory-mapped shard. open() validates magic, version, id width and the file size against
// the header's count, and throws qwen::Error naming the file and what is wrong.
class Shard {
 public:
  static std::unique_ptr<Shard> open(const std::string& path);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  int64_t size() const { return count_; }
  int bytes_per_id() const { return width_; }
  int32_t at(int64_t i) const;
  // ids[begin, begin + n) into out (asserts the range is inside).
  void read(int64_t begin, int64_t n, int32_t* out) const;
  const std::string& path() const { return path_; }

 private:
  Shard() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint8_t* ids_ = nullptr;
  int64_t count_ = 0;
  int width_ = 2;
};

// meta.json of a data folder.
struct DataMeta {
  int64_t vocab_size = 0;  // the tokenizer's vocabulary (or max id + 1 for --ids-file data)
  int64_t max_id = -1;     // largest id present in any shard
  int32_t eos_id = -1;     // the document separator (-1: none)
  int64_t n_documents = 0;
  double val_fraction = 0;
  std::vector<std::string> train_shards, val_shards;  // file names inside the folder
  int64_t n_train_tokens = 0, n_val_tokens = 0;
  std::string tokenizer;   // sub-folder holding tokenizer.json, "" if none
  std::vector<std::string> sources;

  static DataMeta load(const std::string& data_dir);  // throws qwen::Error (missing dir/file)
  std::string to_json() const;
};

struct PrepareOptions {
  std::string tokenizer_dir;               // required for text inputs; optional for ids files
  std::vector<std::string> inputs;         // UTF-8 text files, each one document
  std::vector<std::string> ids_files;      // ready ids (whitespace/comma separated), each a document
  std::string out_dir;
  double val_fraction = 0.05;              // the last fraction of every document goes to val
  int64_t shard_tokens = int64_t(1) << 27; // ids per shard file at most
  bool verbose = true;                     // a summary line per split on stdout
};

// Tokenise / read the inputs, split, write the shards and meta.json, copy the tokenizer.
// Documents are joined with the tokenizer's eos id between them (ids files without a tokenizer
// are joined as they are). The validation split is the last val_fraction of each document's ids
// (rounded down), so the training split of a single document starts at its first id.
DataMeta prepare_data(const PrepareOptions& opt);

// Parse ids separated by whitespace or commas; `where` names the source in errors.
std::vector<int32_t> parse_id_text(const std::string& text, const std::string& where);

// One split of a data folder as a single stream of ids over its shards (memory-mapped).
class TokenStream {
 public:
  // split: "train" or "val". Throws qwen::Error if the folder, meta.json or a shard is missing
  // or corrupt.
  TokenStream(const std::string& data_dir, const std::string& split);
  ~TokenStream();
  int64_t size() const { return total_; }
  const DataMeta& meta() const { return meta_; }
  // ids[begin, begin + n) across shard boundaries.
  void read(int64_t begin, int64_t n, int32_t* out) const;

 private:
  DataMeta meta_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<int64_t> starts_;  // first stream index of each shard
  int64_t total_ = 0;
};

// Where a loader is; saved in checkpoints so a resumed run sees the same batches.
struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;   // random mode: current epoch; sequential: unused
  int64_t cursor = 0;  // random: windows used in this epoch; sequential: next row
};

// Batches of next-token windows from a TokenStream. A window is seq + 1 consecutive ids: tokens
// are its first seq ids, targets its last seq ids.
//  - random (default): every epoch cuts the stream into windows starting at o, o + seq,
//    o + 2·seq, ... (o in [0, seq) drawn per epoch), and visits them in a shuffled order; both
//    come from (seed, epoch) only, so any position can be restored exactly.
//  - sequential: row r is ids [r·(seq+1), (r+1)·(seq+1)); batch k holds rows k·B ... k·B+B−1
//    (modulo the number of rows: it wraps at the end). No shuffling.
class DataLoader {
 public:
  DataLoader(const TokenStream& data, int64_t batch, int64_t seq, uint64_t seed, bool sequential);
  // Fill tokens and targets, each (B, T) row-major.
  void next(int32_t* tokens, int32_t* targets);
  LoaderState state() const { return st_; }
  void set_state(const LoaderState& s);
  int64_t windows_per_epoch() const;  // rows for sequential
  int64_t batch() const { return B_; }
  int64_t seq() const { return T_; }

 private:
  void start_epoch();
  void window(int64_t start, int32_t* tokens, int32_t* targets);
  const TokenStream& data_;
  int64_t B_, T_;
  bool sequential_;
  LoaderState st_;
  int64_t offset_ = 0;            // this epoch's first window start
  std::vector<int64_t> order_;    // this epoch's window order
  std::vector<int32_t> buf_;
};

}  // namespace qwen::train
