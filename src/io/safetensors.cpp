// io/safetensors.cpp — reading (mmap, no copy) and writing safetensors files and Hugging Face
// checkpoint folders. The reader validates a header the way the reference Rust reader
// (safetensors/src/tensor.rs) does, plus it rejects duplicate keys; the writer reproduces the
// reference serializer byte for byte (dtype order, compact JSON, space padding to 8 bytes) so a
// file we write is identical to the one `safetensors.torch.save_file` writes for the same tensors.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "qwen/error.h"

namespace qwen::io {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr uint64_t kMaxHeaderSize = 100000000;  // the reference reader's limit

// Every dtype the format defines, in the reference Dtype enum order (the writer sorts by this
// order, descending), with its width in bits.
struct DtypeDesc {
  const char* name;
  int bits;
};
constexpr DtypeDesc kDtypes[] = {
    {"BOOL", 8},        {"F4", 4},          {"F6_E2M3", 6},  {"F6_E3M2", 6}, {"U8", 8},
    {"I8", 8},          {"F8_E5M2", 8},     {"F8_E4M3", 8},  {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8},
    {"F8_E5M2FNUZ", 8}, {"I16", 16},        {"U16", 16},     {"F16", 16},    {"BF16", 16},
    {"I32", 32},        {"U32", 32},        {"F32", 32},     {"C64", 64},    {"F64", 64},
    {"I64", 64},        {"U64", 64},
};
constexpr int kNumDtypes = int(sizeof(kDtypes) / sizeof(kDtypes[0]));

int dtype_index(const std::string& name) {
  for (int i = 0; i < kNumDtypes; ++i)
    if (name == kDtypes[i].name) return i;
  return -1;
}

std::string known_dtypes() {
  std::string s;
  for (int i = 0; i < kNumDtypes; ++i) {
    if (i) s += ' ';
    s += kDtypes[i].name;
  }
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

const char* json_type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a non-integer number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    default: return "an unsupported value";
  }
}

// A JSON integer >= 0 (usize in the reference reader; floats such as 4.0 are rejected there too).
bool as_unsigned(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = uint64_t(j.get<int64_t>());
    return true;
  }
  return false;
}

// Parse JSON text, rejecting duplicate keys in any object (nlohmann silently keeps the last one).
json parse_json_no_duplicates(const char* text, size_t len, const std::string& where) {
  // nlohmann stops at a NUL byte as if the input ended there; JSON never contains a raw NUL.
  if (const void* nul = std::memchr(text, 0, len))
    throw Error(where + ": header is not valid JSON (NUL byte at header offset " +
                std::to_string(static_cast<const char*>(nul) - text) + ")");
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == json::parse_event_t::key && !keys.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, text + len, cb);
  } catch (const json::exception& e) {
    throw Error(where + ": header is not valid JSON (" + e.what() + ")");
  }
  if (!duplicate.empty())
    throw Error(where + ": header has the key '" + duplicate + "' twice; the file is corrupt");
  return j;
}

void parse_header_impl(const std::string& where, const char* text, size_t len, size_t data_len,
                       std::vector<TensorInfo>* tensors, std::map<std::string, std::string>* metadata,
                       std::vector<size_t>* begin_offsets) {
  json root = parse_json_no_duplicates(text, len, where);
  if (!root.is_object())
    throw Error(where + ": header must be a JSON object, got " + json_type_name(root));

  struct Entry {
    TensorInfo info;
    uint64_t begin = 0, end = 0;
  };
  std::vector<Entry> entries;
  std::map<std::string, std::string> meta;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object())
        throw Error(where + ": __metadata__ must be an object of strings, got " + json_type_name(v));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m->is_string())
          throw Error(where + ": __metadata__ value for '" + m.key() + "' must be a string, got " +
                      json_type_name(*m));
        meta[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string what = where + ": tensor '" + name + "'";
    if (!v.is_object())
      throw Error(what + " must be an object with dtype, shape and data_offsets, got " +
                  json_type_name(v));
    Entry e;
    e.info.name = name;
    // dtype
    auto d = v.find("dtype");
    if (d == v.end()) throw Error(what + " has no dtype");
    if (!d->is_string()) throw Error(what + ": dtype must be a string, got " + json_type_name(*d));
    e.info.dtype_name = d->get<std::string>();
    int di = dtype_index(e.info.dtype_name);
    if (di < 0)
      throw Error(what + " has unknown dtype '" + e.info.dtype_name + "' (known: " + known_dtypes() +
                  ")");
    e.info.supported = dtype_from_name(e.info.dtype_name, &e.info.dtype);
    // shape
    auto s = v.find("shape");
    if (s == v.end()) throw Error(what + " has no shape");
    if (!s->is_array()) throw Error(what + ": shape must be an array, got " + json_type_name(*s));
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& dim : *s) {
      uint64_t n;
      if (!as_unsigned(dim, &n))
        throw Error(what + ": shape entries must be integers >= 0, got " + dim.dump());
      if (n > uint64_t(INT64_MAX)) overflow = true;
      e.info.shape.push_back(int64_t(n));
      if (!overflow && __builtin_mul_overflow(numel, n, &numel)) overflow = true;
    }
    uint64_t nbits = 0;
    if (overflow || __builtin_mul_overflow(numel, uint64_t(kDtypes[di].bits), &nbits))
      throw Error(what + ": shape " + s->dump() + " of " + e.info.dtype_name +
                  " overflows 64-bit byte counts; the header is corrupt");
    if (nbits % 8 != 0)
      throw Error(what + ": shape " + shape_str(e.info.shape) + " of " + e.info.dtype_name +
                  " does not fill whole bytes (" + std::to_string(nbits) + " bits)");
    // data_offsets
    auto o = v.find("data_offsets");
    if (o == v.end()) throw Error(what + " has no data_offsets");
    if (!o->is_array() || o->size() != 2 || !as_unsigned((*o)[0], &e.begin) ||
        !as_unsigned((*o)[1], &e.end))
      throw Error(what + ": data_offsets must be [begin, end] with integers >= 0, got " + o->dump());
    if (e.end < e.begin)
      throw Error(what + ": data_offsets [" + std::to_string(e.begin) + ", " +
                  std::to_string(e.end) + "] end before they begin");
    const uint64_t nbytes = nbits / 8;
    if (e.end - e.begin != nbytes)
      throw Error(what + " data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                  "] do not match shape " + shape_str(e.info.shape) + " of " + e.info.dtype_name +
                  " (" + std::to_string(nbytes) + " bytes)");
    e.info.nbytes = size_t(nbytes);
    entries.push_back(std::move(e));
  }

  // Offsets must tile [0, data_len) exactly: sorted, contiguous from 0, no holes, no overlap.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.info.name < b.info.name;
  });
  uint64_t pos = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin > pos)
      throw Error(where + ": tensor '" + e.info.name + "' starts at data byte " +
                  std::to_string(e.begin) + " but the previous tensor ends at " + std::to_string(pos) +
                  " (a hole); the header is corrupt");
    if (e.begin < pos)
      throw Error(where + ": tensor '" + e.info.name + "' data_offsets [" + std::to_string(e.begin) +
                  ", " + std::to_string(e.end) + "] overlap tensor '" + prev->info.name +
                  "' which ends at " + std::to_string(pos) + "; the header is corrupt");
    pos = e.end;
    prev = &e;
  }
  if (pos < data_len)
    throw Error(where + ": tensors cover " + std::to_string(pos) + " bytes of data but the file has " +
                std::to_string(data_len) + " after the header (trailing bytes); the file is corrupt");
  if (pos > data_len)
    throw Error(where + ": tensors need " + std::to_string(pos) + " bytes of data but the file has " +
                "only " + std::to_string(data_len) + " after the header; the file is truncated");

  tensors->clear();
  if (begin_offsets) begin_offsets->clear();
  for (Entry& e : entries) {
    if (begin_offsets) begin_offsets->push_back(size_t(e.begin));
    tensors->push_back(std::move(e.info));
  }
  if (metadata) *metadata = std::move(meta);
}

// serde_json's string escaping: ", \ and control characters; everything else verbatim.
void append_json_string(std::string* out, const std::string& s) {
  static const char* hex = "0123456789abcdef";
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (c < 0x20) {
          *out += "\\u00";
          out->push_back(hex[c >> 4]);
          out->push_back(hex[c & 15]);
        } else {
          out->push_back(char(c));
        }
    }
  }
  out->push_back('"');
}

std::string errno_str() { return std::strerror(errno); }

// Write all bytes, retrying on short writes and EINTR.
bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= size_t(w);
  }
  return true;
}

// Creates a uniquely named temp file next to `path`, lets `fill` write it, fsyncs, renames it
// over `path` and fsyncs the directory. On any failure the temp file is removed.
template <class Fill>
void atomic_write(const std::string& path, Fill fill) {
  static std::atomic<unsigned> counter{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST)
      throw Error("cannot create " + tmp + ": " + errno_str() + "; check the folder exists and is writable");
  }
  if (fd < 0) throw Error("cannot create a temp file next to " + path);
  bool ok = fill(fd);
  int err = errno;
  if (ok && ::fsync(fd) != 0) { ok = false; err = errno; }
  if (::close(fd) != 0 && ok) { ok = false; err = errno; }
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) { ok = false; err = errno; }
  if (!ok) {
    ::unlink(tmp.c_str());
    throw Error("cannot write " + path + ": " + std::strerror(err) + "; check free disk space and permissions");
  }
  std::string dir = fs::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void parse_safetensors_header(const char* json_text, size_t json_len, size_t data_len,
                              std::vector<TensorInfo>* tensors,
                              std::map<std::string, std::string>* metadata,
                              std::vector<size_t>* begin_offsets) {
  parse_header_impl("safetensors header", json_text, json_len, data_len, tensors, metadata,
                    begin_offsets);
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open (" + errno_str() + "); check the path");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    std::string e = errno_str();
    ::close(fd);
    throw Error(path + ": cannot stat (" + e + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  const uint64_t size = uint64_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(path + ": file is " + std::to_string(size) +
                " bytes, too small for a safetensors header (8-byte length + JSON); it is truncated");
  }
  void* map = ::mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw Error(path + ": cannot mmap (" + std::strerror(map_errno) + ")");

  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = map;  // from here on the destructor unmaps, also when validation throws
  f->map_size_ = size_t(size);
  const unsigned char* bytes = static_cast<const unsigned char*>(map);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian u64
  if (n > kMaxHeaderSize)
    throw Error(path + ": header length " + std::to_string(n) + " exceeds the " +
                std::to_string(kMaxHeaderSize) + "-byte limit; not a safetensors file or corrupt");
  if (n > size - 8)
    throw Error(path + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                std::to_string(size) + " bytes); the file is truncated or not safetensors");
  std::vector<size_t> begins;
  parse_header_impl(path, reinterpret_cast<const char*>(bytes + 8), size_t(n), size_t(size - 8 - n),
                    &f->tensors_, &f->metadata_, &begins);
  const unsigned char* data = bytes + 8 + n;
  for (size_t i = 0; i < f->tensors_.size(); ++i) {
    TensorInfo& t = f->tensors_[i];
    t.data = data + begins[i];
    t.file = path;
    f->index_[t.name] = i;
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       std::map<std::string, std::string> metadata) {
  if (!metadata.count("format")) metadata["format"] = "pt";
  // Reference order: dtype enum order descending, then name (byte order).
  std::vector<const TensorToWrite*> order;
  std::set<std::string> seen;
  for (const TensorToWrite& t : tensors) {
    if (t.name == "__metadata__")
      throw Error(path + ": '__metadata__' is reserved and cannot be a tensor name");
    if (!seen.insert(t.name).second)
      throw Error(path + ": tensor '" + t.name + "' is given twice; tensor names must be unique");
    for (int64_t d : t.shape)
      if (d < 0) throw Error(path + ": tensor '" + t.name + "' has negative shape " + shape_str(t.shape));
    order.push_back(&t);
  }
  auto rank = [](const TensorToWrite* t) { return dtype_index(dtype_name(t->dtype)); };
  std::sort(order.begin(), order.end(), [&](const TensorToWrite* a, const TensorToWrite* b) {
    int ra = rank(a), rb = rank(b);
    if (ra != rb) return ra > rb;
    return a->name < b->name;
  });

  std::string header = "{\"__metadata__\":{";
  bool first = true;
  for (const auto& [k, v] : metadata) {
    if (!first) header += ',';
    first = false;
    append_json_string(&header, k);
    header += ':';
    append_json_string(&header, v);
  }
  header += '}';
  std::vector<size_t> sizes;
  uint64_t offset = 0;
  for (const TensorToWrite* t : order) {
    uint64_t numel = 1;
    for (int64_t d : t->shape)
      if (__builtin_mul_overflow(numel, uint64_t(d), &numel))
        throw Error(path + ": tensor '" + t->name + "' shape " + shape_str(t->shape) + " is too large");
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(t->dtype)), &nbytes))
      throw Error(path + ": tensor '" + t->name + "' shape " + shape_str(t->shape) + " is too large");
    if (nbytes > 0 && t->data == nullptr)
      throw Error(path + ": tensor '" + t->name + "' has no data");
    header += ',';
    append_json_string(&header, t->name);
    header += ":{\"dtype\":\"";
    header += dtype_name(t->dtype);
    header += "\",\"shape\":[";
    for (size_t i = 0; i < t->shape.size(); ++i) {
      if (i) header += ',';
      header += std::to_string(t->shape[i]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + nbytes) + "]}";
    offset += nbytes;
    sizes.push_back(size_t(nbytes));
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');

  unsigned char len_bytes[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  atomic_write(path, [&](int fd) {
    if (!write_all(fd, len_bytes, 8) || !write_all(fd, header.data(), header.size())) return false;
    for (size_t i = 0; i < order.size(); ++i)
      if (sizes[i] && !write_all(fd, order[i]->data, sizes[i])) return false;
    return true;
  });
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  atomic_write(path, [&](int fd) { return write_all(fd, contents.data(), contents.size()); });
}

// ---- checkpoint folders ----

namespace {
constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";

std::string read_text_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open (" + errno_str() + ")");
  std::string s;
  char buf[65536];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      std::string e = errno_str();
      ::close(fd);
      throw Error(path + ": cannot read (" + e + ")");
    }
    if (r == 0) break;
    s.append(buf, size_t(r));
  }
  ::close(fd);
  return s;
}

bool is_plain_shard_name(const std::string& s) {
  if (s.empty() || s == "." || s == "..") return false;
  return s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}
}  // namespace

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& dir) {
  auto ck = std::make_unique<Checkpoint>();
  const fs::path d(dir);
  std::error_code ec;
  if (!fs::is_directory(d, ec))
    throw Error(dir + ": not a folder; pass the checkpoint folder holding model.safetensors");
  // transformers prefers the single file when both exist; so do we.
  if (fs::exists(d / kSingleName, ec)) {
    ck->files_.push_back(SafetensorsFile::open((d / kSingleName).string()));
    for (const TensorInfo& t : ck->files_.back()->tensors()) ck->by_name_[t.name] = &t;
    return ck;
  }
  const std::string index_path = (d / kIndexName).string();
  if (!fs::exists(index_path, ec))
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json in this folder; "
                "is it a Hugging Face checkpoint with safetensors weights?");
  const std::string text = read_text_file(index_path);
  json index;
  try {
    if (text.find('\0') != std::string::npos) throw Error(index_path + ": not valid JSON (NUL byte)");
    index = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(index_path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!index.is_object()) throw Error(index_path + ": must be a JSON object");
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object())
    throw Error(index_path + ": has no \"weight_map\" object mapping tensor names to shard files");
  std::map<std::string, size_t> shard_of_file;  // shard file name -> index in files_
  std::map<std::string, std::string> listed;    // tensor -> shard file name
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it->is_string())
      throw Error(index_path + ": weight_map entry for '" + it.key() + "' must be a file name string");
    const std::string shard = it->get<std::string>();
    if (!is_plain_shard_name(shard))
      throw Error(index_path + ": weight_map entry for '" + it.key() + "' names '" + shard +
                  "', which is not a file name inside the checkpoint folder");
    listed[it.key()] = shard;
    if (!shard_of_file.count(shard)) {
      const fs::path sp = d / shard;
      if (!fs::exists(sp, ec))
        throw Error(index_path + ": shard '" + shard + "' (holding tensor '" + it.key() +
                    "') is missing from " + dir + "; download or copy the whole checkpoint");
      ck->files_.push_back(SafetensorsFile::open(sp.string()));
      shard_of_file[shard] = ck->files_.size() - 1;
    }
  }
  for (const auto& [name, shard] : listed) {
    const SafetensorsFile& f = *ck->files_[shard_of_file[shard]];
    const TensorInfo* t = f.find(name);
    if (!t)
      throw Error(f.path() + ": tensor '" + name + "' is listed for this shard in " +
                  std::string(kIndexName) + " but the shard does not contain it; the checkpoint is corrupt");
    ck->by_name_[name] = t;
  }
  // Tensors present in a shard but missing from weight_map are still loaded (transformers reads
  // whole shards), unless the name is already mapped to another shard.
  for (const auto& f : ck->files_)
    for (const TensorInfo& t : f->tensors())
      if (!ck->by_name_.count(t.name)) ck->by_name_[t.name] = &t;
  return ck;
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> v;
  v.reserve(by_name_.size());
  for (const auto& kv : by_name_) v.push_back(kv.first);
  return v;
}

size_t Checkpoint::total_bytes() const {
  size_t s = 0;
  for (const auto& kv : by_name_) s += kv.second->nbytes;
  return s;
}

void write_checkpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                      size_t max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir, ec))
    throw Error(dir + ": cannot create the checkpoint folder; check the path and permissions");

  // huggingface_hub's split_state_dict_into_shards_factory, step for step: tensors in the given
  // order; one bigger than the limit gets a shard of its own (placed before the shard being
  // filled); otherwise start a new shard when the next tensor would overflow the current one.
  std::vector<std::vector<const TensorToWrite*>> shards;
  std::vector<const TensorToWrite*> current;
  uint64_t current_size = 0, total_size = 0;
  for (const TensorToWrite& t : tensors) {
    uint64_t numel = 1;
    for (int64_t dim : t.shape) {
      if (dim < 0) throw Error(dir + ": tensor '" + t.name + "' has negative shape " + shape_str(t.shape));
      numel *= uint64_t(dim);
    }
    const uint64_t size = numel * dtype_size(t.dtype);
    if (size > max_shard_bytes) {
      total_size += size;
      shards.push_back({&t});
      continue;
    }
    if (current_size + size > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(&t);
    current_size += size;
    total_size += size;
  }
  if (!current.empty()) shards.push_back(std::move(current));

  const fs::path d(dir);
  std::set<std::string> written;
  auto to_write = [](const std::vector<const TensorToWrite*>& s) {
    std::vector<TensorToWrite> v;
    v.reserve(s.size());
    for (const TensorToWrite* t : s) v.push_back(*t);
    return v;
  };
  if (shards.size() <= 1) {
    write_safetensors((d / kSingleName).string(),
                      shards.empty() ? std::vector<TensorToWrite>{} : to_write(shards[0]));
    written.insert(kSingleName);
  } else {
    const size_t k = shards.size();
    json weight_map = json::object();
    auto five = [](size_t i) {
      std::string s = std::to_string(i);
      return std::string(s.size() < 5 ? 5 - s.size() : 0, '0') + s;
    };
    for (size_t i = 0; i < k; ++i) {
      const std::string name = "model-" + five(i + 1) + "-of-" + five(k) + ".safetensors";
      write_safetensors((d / name).string(), to_write(shards[i]));
      written.insert(name);
      for (const TensorToWrite* t : shards[i]) weight_map[t->name] = name;
    }
    json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
    // transformers: json.dumps(index, indent=2, sort_keys=True) + "\n" (ASCII escapes).
    write_file_atomic((d / kIndexName).string(), index.dump(2, ' ', true) + "\n");
    written.insert(kIndexName);
  }
  // Remove what an earlier save left behind that would shadow or confuse the new files: a
  // single model.safetensors (readers prefer it over the index), a stale index, and shards of
  // another split.
  for (const auto& entry : fs::directory_iterator(d, ec)) {
    const std::string name = entry.path().filename().string();
    if (written.count(name)) continue;
    bool stale = name == kSingleName || name == kIndexName;
    if (!stale && name.size() == std::string("model-00001-of-00002.safetensors").size() &&
        name.rfind("model-", 0) == 0 && name.compare(11, 4, "-of-") == 0 &&
        name.compare(20, 12, ".safetensors") == 0) {
      auto digit = [](char c) { return c >= '0' && c <= '9'; };
      stale = std::all_of(name.begin() + 6, name.begin() + 11, digit) &&
              std::all_of(name.begin() + 15, name.begin() + 20, digit);
    }
    if (stale) fs::remove(entry.path(), ec);
  }
}

}  // namespace qwen::io
