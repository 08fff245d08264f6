// io/gguf.cpp — GGUF reader (mmap, bounds-checked) and writer (gguf-py's layout). See gguf.h.
#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "qwen/error.h"

namespace qwen::io {

namespace {

constexpr uint32_t kMagic = 0x46554747u;  // "GGUF" little-endian
constexpr uint32_t kMaxDims = 4;

struct TypeSize { uint32_t type; const char* name; int64_t block; size_t bytes; };
// Block geometry of every ggml type a GGUF file may hold (gguf-py's GGML_QUANT_SIZES).
constexpr TypeSize kTypes[] = {
    {0, "F32", 1, 4},          {1, "F16", 1, 2},          {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},       {6, "Q5_0", 32, 22},       {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},       {9, "Q8_1", 32, 36},       {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},    {12, "Q4_K", 256, 144},    {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},    {15, "Q8_K", 256, 292},    {16, "IQ2_XXS", 256, 66},
    {17, "IQ2_XS", 256, 74},   {18, "IQ3_XXS", 256, 98},  {19, "IQ1_S", 256, 50},
    {20, "IQ4_NL", 32, 18},    {21, "IQ3_S", 256, 110},   {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136},  {24, "I8", 1, 1},          {25, "I16", 1, 2},
    {26, "I32", 1, 4},         {27, "I64", 1, 8},         {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},    {30, "BF16", 1, 2},        {34, "TQ1_0", 256, 54},
    {35, "TQ2_0", 256, 66},    {39, "MXFP4", 32, 17},
};

const TypeSize* type_info(uint32_t t) {
  for (const auto& e : kTypes)
    if (e.type == t) return &e;
  return nullptr;
}

// Minimum bytes one metadata value of type t occupies (for count sanity checks).
size_t min_value_bytes(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}

bool valid_type(uint32_t t) { return t <= 12; }

// Little-endian cursor over [p, p + size) that throws on every overrun.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t size, const std::string& where) : p_(p), size_(size), where_(where) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(where_ + ": " + what + " (at byte " + std::to_string(pos_) +
                "); the file is not a valid GGUF file or is truncated");
  }
  template <class T>
  T get(const char* what) {
    if (left() < sizeof(T)) fail(std::string("truncated while reading ") + what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    if (n > left()) fail(std::string(what) + " of " + std::to_string(n) + " bytes runs past the end");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(n));
    pos_ += size_t(n);
    return s;
  }
  void skip_str(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    if (n > left()) fail(std::string(what) + " of " + std::to_string(n) + " bytes runs past the end");
    pos_ += size_t(n);
  }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& where_;
};

int64_t read_int(Cursor& c, GgufType t) {
  switch (t) {
    case GgufType::U8: return c.get<uint8_t>("a u8 value");
    case GgufType::I8: return c.get<int8_t>("an i8 value");
    case GgufType::U16: return c.get<uint16_t>("a u16 value");
    case GgufType::I16: return c.get<int16_t>("an i16 value");
    case GgufType::U32: return c.get<uint32_t>("a u32 value");
    case GgufType::I32: return c.get<int32_t>("an i32 value");
    case GgufType::U64: return int64_t(c.get<uint64_t>("a u64 value"));
    case GgufType::I64: return c.get<int64_t>("an i64 value");
    case GgufType::BOOL: {
      const uint8_t b = c.get<uint8_t>("a bool value");
      if (b > 1) c.fail("bool value " + std::to_string(b) + " is not 0 or 1");
      return b;
    }
    default: return 0;
  }
}

double read_float(Cursor& c, GgufType t) {
  if (t == GgufType::F32) return double(c.get<float>("an f32 value"));
  return c.get<double>("an f64 value");
}

bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
    case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64:
    case GgufType::BOOL:
      return true;
    default:
      return false;
  }
}

// Reads one value of type t into v (arrays recursively, nested arrays only counted).
void read_value(Cursor& c, GgufType t, GgufValue& v, int depth) {
  v.type = t;
  if (is_int_type(t)) {
    v.i = read_int(c, t);
  } else if (t == GgufType::F32 || t == GgufType::F64) {
    v.f = read_float(c, t);
  } else if (t == GgufType::STRING) {
    v.str = c.str("a string value");
  } else {  // ARRAY
    const uint32_t et = c.get<uint32_t>("an array element type");
    if (!valid_type(et)) c.fail("array element type " + std::to_string(et) + " is not a GGUF value type");
    v.elem_type = GgufType(et);
    v.count = c.get<uint64_t>("an array length");
    if (v.count > c.left() / min_value_bytes(v.elem_type))
      c.fail("array of " + std::to_string(v.count) + " " + gguf_type_name(v.elem_type) +
             " values cannot fit in the " + std::to_string(c.left()) + " bytes left");
    const size_t n = size_t(v.count);
    if (is_int_type(v.elem_type)) {
      v.ints.resize(n);
      for (size_t k = 0; k < n; ++k) v.ints[k] = read_int(c, v.elem_type);
    } else if (v.elem_type == GgufType::F32 || v.elem_type == GgufType::F64) {
      v.floats.resize(n);
      for (size_t k = 0; k < n; ++k) v.floats[k] = read_float(c, v.elem_type);
    } else if (v.elem_type == GgufType::STRING) {
      v.strs.resize(n);
      for (size_t k = 0; k < n; ++k) v.strs[k] = c.str("an array string");
    } else {
      if (depth >= 4) c.fail("arrays nested more than 4 deep");
      for (size_t k = 0; k < n; ++k) {
        GgufValue inner;  // an inner array: element type, count, elements
        read_value(c, GgufType::ARRAY, inner, depth + 1);
      }
    }
  }
}

// The bytes of tensor data that type and shape imply; throws on overflow or a bad row length.
size_t tensor_bytes(const std::vector<int64_t>& ne, uint32_t type, const std::string& name,
                    const Cursor& c) {
  const TypeSize* ts = type_info(type);
  if (!ts) c.fail("tensor '" + name + "' has unknown ggml type " + std::to_string(type));
  if (ne[0] % ts->block != 0)
    c.fail("tensor '" + name + "' has rows of " + std::to_string(ne[0]) +
           " values, not a multiple of " + ts->name + "'s block of " + std::to_string(ts->block));
  unsigned __int128 bytes = (unsigned __int128)(uint64_t(ne[0] / ts->block)) * ts->bytes;
  for (size_t j = 1; j < ne.size(); ++j) {
    bytes *= uint64_t(ne[j]);
    if (bytes > (unsigned __int128)(std::numeric_limits<int64_t>::max()))
      c.fail("tensor '" + name + "' is too large (its shape overflows)");
  }
  if (bytes > (unsigned __int128)(std::numeric_limits<int64_t>::max()))
    c.fail("tensor '" + name + "' is too large (its shape overflows)");
  return size_t(bytes);
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                "string", "array", "u64", "i64", "f64"};
  const uint32_t i = uint32_t(t);
  return i <= 12 ? names[i] : "unknown";
}

std::string ggml_type_name(uint32_t t) {
  if (const TypeSize* ts = type_info(t)) return ts->name;
  return "type " + std::to_string(t);
}

bool ggml_type_size(uint32_t t, int64_t* block_elems, size_t* block_bytes) {
  const TypeSize* ts = type_info(t);
  if (!ts) return false;
  *block_elems = ts->block;
  *block_bytes = ts->bytes;
  return true;
}

bool ggml_to_dtype(uint32_t t, DType* out) {
  switch (t) {
    case ggml::F32: *out = DType::F32; return true;
    case ggml::F16: *out = DType::F16; return true;
    case ggml::BF16: *out = DType::BF16; return true;
    case ggml::Q8_0: *out = DType::Q8_0; return true;
    case ggml::Q4_0: *out = DType::Q4_0; return true;
    case ggml::Q4_1: *out = DType::Q4_1; return true;
    case ggml::Q4_K: *out = DType::Q4_K; return true;
    case ggml::Q6_K: *out = DType::Q6_K; return true;
    default: return false;
  }
}

uint32_t dtype_to_ggml(DType t) {
  switch (t) {
    case DType::F32: return ggml::F32;
    case DType::F16: return ggml::F16;
    case DType::BF16: return ggml::BF16;
    case DType::Q8_0: return ggml::Q8_0;
    case DType::Q4_0: return ggml::Q4_0;
    case DType::Q4_1: return ggml::Q4_1;
    case DType::Q4_K: return ggml::Q4_K;
    case DType::Q6_K: return ggml::Q6_K;
    case DType::I32: return 26;
    default: throw Error(std::string("dtype ") + dtype_name(t) + " cannot be stored in a GGUF file");
  }
}

bool GgufValue::is_integer() const { return is_int_type(type) && type != GgufType::BOOL; }

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// ---------------------------------------------------------------- reader

GgufFile::~GgufFile() {
  if (map_) munmap(map_, map_size_);
}

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("'" + path + "' is not a regular file");
  }
  const size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error("'" + path + "' is not a GGUF file (only " + std::to_string(size) + " bytes)");
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw Error("cannot map '" + path + "': " + std::strerror(errno));
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->where_ = path;
  f->map_ = m;
  f->map_size_ = size;
  f->parse_buffer(static_cast<const uint8_t*>(m), size);
  return f;
}

std::unique_ptr<GgufFile> GgufFile::parse(const void* data, size_t size, const std::string& where) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->where_ = where;
  f->parse_buffer(static_cast<const uint8_t*>(data), size);
  return f;
}

void GgufFile::parse_buffer(const uint8_t* p, size_t size) {
  Cursor c(p, size, where_);
  if (size < 4 || std::memcmp(p, "GGUF", 4) != 0) {
    std::string head;
    for (size_t i = 0; i < std::min<size_t>(4, size); ++i) {
      char b[8];
      std::snprintf(b, sizeof b, "%02x", p[i]);
      head += b;
    }
    throw Error(where_ + ": not a GGUF file (it starts with bytes " + (head.empty() ? "<none>" : head) +
                ", not \"GGUF\")");
  }
  c.get<uint32_t>("the magic");
  version_ = c.get<uint32_t>("the version");
  if (version_ == 0x03000000u || version_ == 0x02000000u)
    throw Error(where_ + ": big-endian GGUF files are not supported; convert it on a little-endian machine");
  if (version_ == 1)
    throw Error(where_ + ": GGUF version 1 is not supported (only 2 and 3); re-convert the model with a current llama.cpp");
  if (version_ != 2 && version_ != 3)
    throw Error(where_ + ": GGUF version " + std::to_string(version_) + " is not supported (only 2 and 3)");
  const uint64_t n_tensors = c.get<uint64_t>("the tensor count");
  const uint64_t n_kv = c.get<uint64_t>("the metadata count");
  // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at
  // least 8 + 4 + 8 + 4 + 8.
  if (n_kv > c.left() / 13) c.fail("metadata count " + std::to_string(n_kv) + " cannot fit in the file");
  if (n_tensors > c.left() / 32) c.fail("tensor count " + std::to_string(n_tensors) + " cannot fit in the file");

  kv_.reserve(size_t(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str("a metadata key");
    if (key.empty()) c.fail("metadata key " + std::to_string(k) + " is empty");
    const uint32_t t = c.get<uint32_t>("a metadata value type");
    if (!valid_type(t))
      c.fail("metadata key '" + key + "' has value type " + std::to_string(t) + ", not a GGUF value type");
    for (const auto& e : kv_)
      if (e.first == key) c.fail("metadata key '" + key + "' appears twice");
    GgufValue v;
    read_value(c, GgufType(t), v, 0);
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::U32) c.fail("general.alignment must be a u32");
    if (a->i == 0 || (a->i & (a->i - 1)) != 0)
      c.fail("general.alignment " + std::to_string(a->i) + " is not a power of two");
    alignment_ = uint64_t(a->i);
  }

  tensors_.reserve(size_t(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = c.str("a tensor name");
    if (t.name.empty()) c.fail("tensor " + std::to_string(k) + " has an empty name");
    const uint32_t nd = c.get<uint32_t>("a tensor's dimension count");
    if (nd == 0 || nd > kMaxDims)
      c.fail("tensor '" + t.name + "' has " + std::to_string(nd) + " dimensions (1 to 4 allowed)");
    t.ne.resize(nd);
    for (uint32_t j = 0; j < nd; ++j) {
      const uint64_t d = c.get<uint64_t>("a tensor dimension");
      if (d == 0 || d > uint64_t(std::numeric_limits<int64_t>::max()))
        c.fail("tensor '" + t.name + "' has dimension " + std::to_string(d));
      t.ne[j] = int64_t(d);
    }
    t.type = c.get<uint32_t>("a tensor type");
    t.offset = c.get<uint64_t>("a tensor offset");
    t.nbytes = tensor_bytes(t.ne, t.type, t.name, c);
    if (t.offset % alignment_ != 0)
      c.fail("tensor '" + t.name + "' offset " + std::to_string(t.offset) +
             " is not a multiple of the alignment " + std::to_string(alignment_));
    tensors_.push_back(std::move(t));
  }
  {
    std::vector<const std::string*> names;
    for (const auto& t : tensors_) names.push_back(&t.name);
    std::sort(names.begin(), names.end(), [](auto* a, auto* b) { return *a < *b; });
    for (size_t i = 1; i < names.size(); ++i)
      if (*names[i] == *names[i - 1]) c.fail("tensor '" + *names[i] + "' appears twice");
  }

  const uint64_t header_end = c.pos();
  data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
  if (tensors_.empty()) return;
  if (data_offset_ > size)
    throw Error(where_ + ": the tensor data section starts past the end of the file (truncated)");
  const uint64_t data_size = size - data_offset_;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (auto& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      throw Error(where_ + ": tensor '" + t.name + "' (" + std::to_string(t.nbytes) +
                  " bytes at data offset " + std::to_string(t.offset) + ") runs past the end of the file (" +
                  std::to_string(data_size) + " data bytes); the file is truncated or corrupt");
    t.data = p + data_offset_ + t.offset;
    spans.emplace_back(t.offset, t.offset + t.nbytes);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second)
      throw Error(where_ + ": two tensors overlap in the data section (offset " +
                  std::to_string(spans[i].first) + "); the file is corrupt");
}

const GgufValue* GgufFile::find(const std::string& key) const {
  for (const auto& e : kv_)
    if (e.first == key) return &e.second;
  return nullptr;
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

namespace {
[[noreturn]] void missing(const std::string& where, const std::string& key) {
  throw Error(where + ": metadata key '" + key + "' is missing; the file was not written for this architecture or is incomplete");
}
[[noreturn]] void wrong(const std::string& where, const std::string& key, const GgufValue& v,
                        const char* want) {
  throw Error(where + ": metadata key '" + key + "' is " + gguf_type_name(v.type) + ", expected " + want);
}
}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) missing(where_, key);
  if (v->type != GgufType::STRING) wrong(where_, key, *v, "a string");
  return v->str;
}
int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) missing(where_, key);
  if (!v->is_integer()) wrong(where_, key, *v, "an integer");
  if (v->type == GgufType::U64 && v->i < 0)
    throw Error(where_ + ": metadata key '" + key + "' is too large");
  return v->i;
}
double GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) missing(where_, key);
  if (!v->is_float()) wrong(where_, key, *v, "a float");
  return v->f;
}
bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) missing(where_, key);
  if (v->type != GgufType::BOOL) wrong(where_, key, *v, "a bool");
  return v->i != 0;
}
std::string GgufFile::get_string(const std::string& key, const std::string& dflt) const {
  return find(key) ? get_string(key) : dflt;
}
int64_t GgufFile::get_int(const std::string& key, int64_t dflt) const {
  return find(key) ? get_int(key) : dflt;
}
double GgufFile::get_float(const std::string& key, double dflt) const {
  return find(key) ? get_float(key) : dflt;
}
bool GgufFile::get_bool(const std::string& key, bool dflt) const {
  return find(key) ? get_bool(key) : dflt;
}

// ---------------------------------------------------------------- writer

namespace {
template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
void put_str(std::string& s, const std::string& v) {
  put<uint64_t>(s, v.size());
  s += v;
}
}  // namespace

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    throw Error("GGUF alignment " + std::to_string(alignment) + " is not a power of two");
  if (alignment != 32) add_u32("general.alignment", alignment);
}

void GgufWriter::check_key(const std::string& key) const {
  if (key.empty()) throw Error("GGUF metadata key is empty");
  for (const auto& k : kv_)
    if (k.key == key) throw Error("GGUF metadata key '" + key + "' added twice");
}

void GgufWriter::add_string(const std::string& key, const std::string& v) {
  check_key(key);
  std::string p;
  put_str(p, v);
  kv_.push_back({key, GgufType::STRING, GgufType::U8, std::move(p), 0});
}
void GgufWriter::add_u32(const std::string& key, uint32_t v) {
  check_key(key);
  std::string p;
  put(p, v);
  kv_.push_back({key, GgufType::U32, GgufType::U8, std::move(p), 0});
}
void GgufWriter::add_i32(const std::string& key, int32_t v) {
  check_key(key);
  std::string p;
  put(p, v);
  kv_.push_back({key, GgufType::I32, GgufType::U8, std::move(p), 0});
}
void GgufWriter::add_u64(const std::string& key, uint64_t v) {
  check_key(key);
  std::string p;
  put(p, v);
  kv_.push_back({key, GgufType::U64, GgufType::U8, std::move(p), 0});
}
void GgufWriter::add_f32(const std::string& key, float v) {
  check_key(key);
  std::string p;
  put(p, v);
  kv_.push_back({key, GgufType::F32, GgufType::U8, std::move(p), 0});
}
void GgufWriter::add_bool(const std::string& key, bool v) {
  check_key(key);
  std::string p;
  put<uint8_t>(p, v ? 1 : 0);
  kv_.push_back({key, GgufType::BOOL, GgufType::U8, std::move(p), 0});
}
void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& v) {
  check_key(key);
  std::string p;
  for (const auto& s : v) put_str(p, s);
  kv_.push_back({key, GgufType::ARRAY, GgufType::STRING, std::move(p), v.size()});
}
void GgufWriter::add_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  check_key(key);
  std::string p;
  for (int32_t x : v) put(p, x);
  kv_.push_back({key, GgufType::ARRAY, GgufType::I32, std::move(p), v.size()});
}
void GgufWriter::add_f32_array(const std::string& key, const std::vector<float>& v) {
  check_key(key);
  std::string p;
  for (float x : v) put(p, x);
  kv_.push_back({key, GgufType::ARRAY, GgufType::F32, std::move(p), v.size()});
}

void GgufWriter::add_tensor(const std::string& name, std::vector<int64_t> ne, uint32_t type,
                            const void* data, size_t nbytes) {
  if (name.empty() || name.size() >= 64)
    throw Error("GGUF tensor name '" + name + "' must be 1 to 63 bytes long");
  if (ne.empty() || ne.size() > kMaxDims) throw Error("GGUF tensor '" + name + "' must have 1 to 4 dimensions");
  for (const auto& t : tensors_)
    if (t.name == name) throw Error("GGUF tensor '" + name + "' added twice");
  int64_t blk;
  size_t bb;
  if (!ggml_type_size(type, &blk, &bb)) throw Error("GGUF tensor '" + name + "': unknown ggml type");
  if (ne[0] % blk != 0)
    throw Error("GGUF tensor '" + name + "': rows of " + std::to_string(ne[0]) + " values are not a multiple of " +
                ggml_type_name(type) + "'s block of " + std::to_string(blk));
  size_t want = size_t(ne[0] / blk) * bb;
  for (size_t j = 1; j < ne.size(); ++j) want *= size_t(ne[j]);
  if (want != nbytes)
    throw Error("GGUF tensor '" + name + "': " + std::to_string(nbytes) + " bytes given, the shape needs " +
                std::to_string(want));
  tensors_.push_back({name, std::move(ne), type, data, nbytes});
}

void GgufWriter::write(const std::string& path) const {
  std::string h;
  put<uint32_t>(h, kMagic);
  put<uint32_t>(h, 3);
  put<uint64_t>(h, tensors_.size());
  put<uint64_t>(h, kv_.size());
  for (const auto& k : kv_) {
    put_str(h, k.key);
    put<uint32_t>(h, uint32_t(k.type));
    if (k.type == GgufType::ARRAY) {
      put<uint32_t>(h, uint32_t(k.elem));
      put<uint64_t>(h, k.count);
    }
    h += k.payload;
  }
  const auto pad = [&](uint64_t n) { return (n + alignment_ - 1) / alignment_ * alignment_; };
  uint64_t off = 0;
  for (const auto& t : tensors_) {
    put_str(h, t.name);
    put<uint32_t>(h, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(h, uint64_t(d));
    put<uint32_t>(h, t.type);
    put<uint64_t>(h, off);
    off += pad(t.nbytes);
  }
  h.resize(size_t(pad(h.size())), '\0');

  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error("cannot write '" + tmp + "': " + std::strerror(errno));
  bool ok = std::fwrite(h.data(), 1, h.size(), f) == h.size();
  static const char zeros[64] = {};
  for (const auto& t : tensors_) {
    if (!ok) break;
    ok = std::fwrite(t.data, 1, t.nbytes, f) == t.nbytes;
    size_t rest = size_t(pad(t.nbytes) - t.nbytes);
    while (ok && rest > 0) {
      const size_t n = std::min(rest, sizeof zeros);
      ok = std::fwrite(zeros, 1, n, f) == n;
      rest -= n;
    }
  }
  ok = ok && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  const int err = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error("writing '" + tmp + "' failed: " + std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e2 = errno;
    std::remove(tmp.c_str());
    throw Error("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(e2));
  }
}

}  // namespace qwen::io
