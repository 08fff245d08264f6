// io/safetensors.h — safetensors files and Hugging Face checkpoint folders (single file or
// sharded with model.safetensors.index.json). Reading memory-maps the file and hands out
// pointers into the mapping (no copy); every header is validated as the reference reader does
// (offsets contiguous from 0, no holes or overlap, sizes match shapes, file ends at the last
// tensor). Writing follows the reference serializer (dtype-alignment order, 8-byte-aligned
// header, __metadata__ {"format": "pt"}) and is atomic: temp file + fsync + rename.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace qwen::io {

struct TensorInfo {
  std::string name;
  std::string dtype_name;     // as in the file: "F32", "BF16", "F64", ...
  bool supported = false;     // dtype is one of DType
  DType dtype = DType::F32;   // valid when supported
  std::vector<int64_t> shape;
  const void* data = nullptr; // into the mapping
  size_t nbytes = 0;
  std::string file;           // path of the file holding it

  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Throws qwen::Error ("<path>: <what is wrong>") for a missing, truncated or lying file.
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Parse and validate a header alone (exposed for the fuzzer): header JSON bytes plus the size of
// the data buffer that follows it. Fills tensors with data == nullptr and offsets in nbytes order.
// Throws qwen::Error on any inconsistency.
void parse_safetensors_header(const char* json, size_t json_len, size_t data_len,
                              std::vector<TensorInfo>* tensors,
                              std::map<std::string, std::string>* metadata,
                              std::vector<size_t>* begin_offsets);

struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel * dtype_size bytes
};

// Atomic write of one safetensors file. metadata always gets "format": "pt" added if missing.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       std::map<std::string, std::string> metadata = {});

// A Hugging Face checkpoint folder: model.safetensors, or model.safetensors.index.json plus the
// shards it names. Tensor lookup across shards.
class Checkpoint {
 public:
  static std::unique_ptr<Checkpoint> open(const std::string& dir);
  const TensorInfo* find(const std::string& name) const;
  std::vector<std::string> names() const;
  size_t total_bytes() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> by_name_;
};

// Write tensors into dir as model.safetensors, or as model-0000i-of-0000K.safetensors shards plus
// model.safetensors.index.json when the total exceeds max_shard_bytes (huggingface_hub's
// splitting rule: tensors in the given order, new shard when the next would overflow).
void write_checkpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                      size_t max_shard_bytes = 5000000000ull);

// Atomically write a text file (temp + fsync + rename).
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace qwen::io
