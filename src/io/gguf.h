// io/gguf.h — GGUF files (the llama.cpp / ggml container, versions 2 and 3): a bounds-checked
// reader that memory-maps the file and hands out pointers into the mapping, and a writer that
// lays tensors out as gguf-py does (metadata in insertion order, tensor data aligned to
// general.alignment, every tensor padded to the alignment). Layout and key names:
// docs/formats.md, "GGUF".
//
// The reader trusts nothing: every count, length, offset and shape is checked against the bytes
// that are actually there before anything is allocated or read, so a truncated, lying or hostile
// file ends in a qwen::Error ("<file>: <what is wrong>"), never in a crash or a huge allocation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace qwen::io {

// Metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);

// ggml tensor types (the ones a file may hold; numbering of ggml.h).
namespace ggml {
inline constexpr uint32_t F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
                          Q8_1 = 9, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14,
                          Q8_K = 15, BF16 = 30;
}
// Name of a ggml type ("Q4_1", "IQ2_XS", ...; "type 99" when unknown).
std::string ggml_type_name(uint32_t t);
// Values per block and bytes per block; false for a type this reader does not know.
bool ggml_type_size(uint32_t t, int64_t* block_elems, size_t* block_bytes);
// The DType we compute with for a ggml type; false when unsupported.
bool ggml_to_dtype(uint32_t t, DType* out);
// The ggml type of a DType; throws qwen::Error for one GGUF cannot hold (NF4, I64, U8).
uint32_t dtype_to_ggml(DType t);

// One metadata value. Scalars: integers (and BOOL) in `i` (U64 as its bit pattern), floats in
// `f`, strings in `str`. Arrays: elem_type and count, with the elements in strs / ints / floats
// by element type (an array of arrays keeps only its count).
struct GgufValue {
  GgufType type = GgufType::U8;
  GgufType elem_type = GgufType::U8;  // ARRAY only
  uint64_t count = 0;                 // ARRAY only
  int64_t i = 0;
  double f = 0;
  std::string str;
  std::vector<std::string> strs;
  std::vector<int64_t> ints;
  std::vector<double> floats;

  bool is_integer() const;  // an integer scalar type (not BOOL)
  bool is_float() const { return type == GgufType::F32 || type == GgufType::F64; }
};

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;  // ne[0] fastest-varying (the reverse of the numpy / HF shape)
  uint32_t type = 0;        // ggml type
  uint64_t offset = 0;      // relative to the data section
  size_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the mapping (nullptr for a parse without data)
  int64_t numel() const;
};

class GgufFile {
 public:
  // Memory-maps and parses path. Throws qwen::Error naming the file and what is wrong.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  // Parses a buffer the caller keeps alive (tests, the fuzzer). `where` names it in errors.
  static std::unique_ptr<GgufFile> parse(const void* data, size_t size, const std::string& where);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the tensor data in the file
  const std::string& where() const { return where_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  // Typed getters: throw qwen::Error "<file>: metadata key 'k' ..." when missing or of the wrong
  // type. Integers accept any integer type whose value fits; floats accept F32/F64.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  // With a default when the key is absent (a present key of the wrong type still throws).
  std::string get_string(const std::string& key, const std::string& dflt) const;
  int64_t get_int(const std::string& key, int64_t dflt) const;
  double get_float(const std::string& key, double dflt) const;
  bool get_bool(const std::string& key, bool dflt) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(const std::string& name) const;

 private:
  GgufFile() = default;
  void parse_buffer(const uint8_t* p, size_t size);
  std::string where_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensor> tensors_;
};

// Builds a GGUF file in memory order: metadata (in the order added), then tensor infos, then
// the data. Tensor data is referenced, not copied: it must stay alive until write().
class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = 32);
  void add_string(const std::string& key, const std::string& v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  // ne in ggml order (ne[0] contiguous); nbytes must equal what type and ne imply.
  void add_tensor(const std::string& name, std::vector<int64_t> ne, uint32_t ggml_type,
                  const void* data, size_t nbytes);
  // Atomic: writes path + ".tmp", fsyncs, renames. Throws qwen::Error on I/O failure.
  void write(const std::string& path) const;
  size_t n_tensors() const { return tensors_.size(); }

 private:
  struct Kv { std::string key; GgufType type; GgufType elem; std::string payload; uint64_t count; };
  struct Tensor { std::string name; std::vector<int64_t> ne; uint32_t type; const void* data; size_t nbytes; };
  void check_key(const std::string& key) const;
  uint32_t alignment_;
  std::vector<Kv> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace qwen::io
