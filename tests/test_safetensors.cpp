// tests/test_safetensors.cpp — the safetensors reader/writer and checkpoint folders: files written
// by the Python safetensors library (tests/data/safetensors, made by gen.py) are read with every
// value checked and re-written byte for byte; random round trips; every malformed header we could
// think of is rejected with a message naming the file and the problem; sharding follows
// huggingface_hub's rule. SafetensorsExport writes files for gen.py --check-export (Python loads them).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "io/safetensors.h"
#include "qwen/error.h"

namespace fs = std::filesystem;
using nlohmann::json;
using qwen::DType;
using qwen::Error;
using namespace qwen::io;

namespace {

const std::string kData = std::string(QWEN_TEST_DATA) + "/safetensors";

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  // Unlink first: ext4 flushes a truncated-and-rewritten file on close (auto_da_alloc), slow.
  std::error_code ec;
  fs::remove(path, ec);
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "qwen_st_XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& rel) const { return path + "/" + rel; }
};

// The value formula shared with gen.py: element k of tensor `id`.
double golden_value(int id, int64_t k, const std::string& dtype) {
  if (dtype == "U8") return double((k * 31 + id * 17) % 251);
  if (dtype == "U16") return double((k * 31 + id * 17) % 65521);
  if (dtype == "BOOL") return (k + id) % 3 == 0 ? 1.0 : 0.0;
  double v = double((k * 31 + id * 17) % 61 - 30);
  if (dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64") return v / 8.0;
  return v;
}

double element(const TensorInfo& t, int64_t k) {
  const auto* p = static_cast<const unsigned char*>(t.data);
  const std::string& d = t.dtype_name;
  auto load = [&](auto tag) {
    decltype(tag) v;
    std::memcpy(&v, p + k * int64_t(sizeof(v)), sizeof(v));
    return v;
  };
  if (d == "F32") return load(float());
  if (d == "F16") return qwen::f16_to_f32(load(uint16_t()));
  if (d == "BF16") return qwen::bf16_to_f32(load(uint16_t()));
  if (d == "I32") return load(int32_t());
  if (d == "I64") return double(load(int64_t()));
  if (d == "U8" || d == "BOOL") return load(uint8_t());
  if (d == "I8") return load(int8_t());
  if (d == "U16") return load(uint16_t());
  if (d == "F64") return load(double());
  ADD_FAILURE() << "no reader for " << d;
  return 0;
}

// Fill a buffer with the golden formula in a supported dtype.
std::vector<unsigned char> golden_bytes(int id, DType t, int64_t n) {
  std::vector<unsigned char> b(size_t(n) * qwen::dtype_size(t));
  for (int64_t k = 0; k < n; ++k) {
    double v = golden_value(id, k, qwen::dtype_name(t));
    unsigned char* p = b.data() + size_t(k) * qwen::dtype_size(t);
    switch (t) {
      case DType::F32: { float f = float(v); std::memcpy(p, &f, 4); break; }
      case DType::F16: { uint16_t h = qwen::f32_to_f16(float(v)); std::memcpy(p, &h, 2); break; }
      case DType::BF16: { uint16_t h = qwen::f32_to_bf16(float(v)); std::memcpy(p, &h, 2); break; }
      case DType::I32: { int32_t i = int32_t(v); std::memcpy(p, &i, 4); break; }
      case DType::I64: { int64_t i = int64_t(v); std::memcpy(p, &i, 8); break; }
      case DType::U8: { *p = uint8_t(v); break; }
      default: ADD_FAILURE() << "no golden formula for " << qwen::dtype_name(t); break;
    }
  }
  return b;
}

json manifest() { return json::parse(read_bytes(kData + "/manifest.json")); }

void check_against_manifest(const TensorInfo& t, const json& e) {
  SCOPED_TRACE(t.name);
  EXPECT_EQ(t.dtype_name, e["dtype"].get<std::string>());
  EXPECT_EQ(t.shape, e["shape"].get<std::vector<int64_t>>());
  const int id = e["id"].get<int>();
  const int64_t n = t.numel();
  for (int64_t k = 0; k < n; ++k) {
    ASSERT_EQ(element(t, k), golden_value(id, k, t.dtype_name)) << "element " << k;
  }
}

// A header + data file from raw JSON text.
std::string st_bytes(const std::string& header, const std::string& data) {
  std::string s(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s + header + data;
}

// Expects SafetensorsFile::open to throw a qwen::Error whose one-line message names the file and
// contains `needle`.
void expect_rejected(const TempDir& dir, const std::string& bytes, const std::string& needle,
                     const std::string& name = "bad.safetensors") {
  const std::string path = dir / name;
  write_bytes(path, bytes);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "accepted a bad file; expected an error containing: " << needle;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\nexpected: " << needle;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message must be one line: " << msg;
  }
}

const std::string kT = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";

}  // namespace

TEST(Safetensors, ReadsPythonGoldenFile) {
  json m = manifest();
  auto f = SafetensorsFile::open(kData + "/mixed.safetensors");
  const json& entries = m["files"]["mixed.safetensors"];
  ASSERT_EQ(f->tensors().size(), entries.size());
  for (const json& e : entries) {
    const TensorInfo* t = f->find(e["name"].get<std::string>());
    ASSERT_NE(t, nullptr) << e["name"];
    EXPECT_TRUE(t->supported);
    EXPECT_EQ(qwen::dtype_name(t->dtype), t->dtype_name);
    EXPECT_EQ(t->file, kData + "/mixed.safetensors");
    EXPECT_EQ(t->nbytes, size_t(t->numel()) * qwen::dtype_size(t->dtype));
    check_against_manifest(*t, e);
  }
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->find("no.such.tensor"), nullptr);
  // Zero-copy: data pointers lie inside the file mapping, in offset order.
  const char* prev = nullptr;
  for (const TensorInfo& t : f->tensors()) {
    const char* p = static_cast<const char*>(t.data);
    if (prev) {
      EXPECT_GE(p, prev);
    }
    prev = p;
  }
}

TEST(Safetensors, ReadsUnsupportedDtypesWithWidth) {
  json m = manifest();
  auto f = SafetensorsFile::open(kData + "/unsupported.safetensors");
  for (const json& e : m["files"]["unsupported.safetensors"]) {
    const TensorInfo* t = f->find(e["name"].get<std::string>());
    ASSERT_NE(t, nullptr);
    EXPECT_FALSE(t->supported) << t->dtype_name;
    const std::string d = t->dtype_name;
    const size_t width = d == "F64" ? 8 : d == "U16" ? 2 : 1;
    EXPECT_EQ(t->nbytes, size_t(t->numel()) * width) << d;
    check_against_manifest(*t, e);
  }
}

TEST(Safetensors, RewritesPythonFileByteForByte) {
  TempDir dir;
  auto f = SafetensorsFile::open(kData + "/mixed.safetensors");
  std::vector<TensorToWrite> ts;
  for (const TensorInfo& t : f->tensors()) ts.push_back({t.name, t.dtype, t.shape, t.data});
  std::mt19937 rng(7);
  std::shuffle(ts.begin(), ts.end(), rng);  // our writer must sort like the reference one
  write_safetensors(dir / "out.safetensors", ts);
  EXPECT_EQ(read_bytes(dir / "out.safetensors"), read_bytes(kData + "/mixed.safetensors"));
}

TEST(Safetensors, WritesFromScratchLikePython) {
  // Build the tensors from the formula alone (no bytes taken from the golden file).
  TempDir dir;
  json m = manifest();
  std::vector<std::vector<unsigned char>> bufs;
  std::vector<TensorToWrite> ts;
  for (const json& e : m["files"]["mixed.safetensors"]) {
    DType t;
    ASSERT_TRUE(qwen::dtype_from_name(e["dtype"].get<std::string>(), &t));
    std::vector<int64_t> shape = e["shape"].get<std::vector<int64_t>>();
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    bufs.push_back(golden_bytes(e["id"].get<int>(), t, n));
  }
  size_t i = 0;
  for (const json& e : m["files"]["mixed.safetensors"]) {
    DType t;
    qwen::dtype_from_name(e["dtype"].get<std::string>(), &t);
    ts.push_back({e["name"].get<std::string>(), t, e["shape"].get<std::vector<int64_t>>(), bufs[i++].data()});
  }
  write_safetensors(dir / "scratch.safetensors", ts);
  EXPECT_EQ(read_bytes(dir / "scratch.safetensors"), read_bytes(kData + "/mixed.safetensors"));
}

TEST(Safetensors, RandomRoundTrip) {
  TempDir dir;
  std::mt19937 rng(1234);
  const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::U8};
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::vector<unsigned char>> bufs;
    std::vector<TensorToWrite> ts;
    const int n_tensors = int(rng() % 7);
    for (int i = 0; i < n_tensors; ++i) {
      TensorToWrite t;
      t.name = "t";
      t.name += std::to_string(rng() % 1000);
      t.name += "_";
      t.name += std::to_string(i);
      t.dtype = types[rng() % 6];
      const int rank = int(rng() % 4);
      int64_t n = 1;
      for (int r = 0; r < rank; ++r) {
        t.shape.push_back(int64_t(rng() % 6));  // zero-size dims included
        n *= t.shape.back();
      }
      std::vector<unsigned char> b(size_t(n) * qwen::dtype_size(t.dtype));
      for (auto& c : b) c = static_cast<unsigned char>(rng());
      bufs.push_back(std::move(b));
      t.data = bufs.back().data();
      ts.push_back(t);
    }
    std::map<std::string, std::string> meta = {{"trial", std::to_string(trial)}, {"note", "a \"quoted\"\n\\ value"}};
    const std::string path = dir / "rt.safetensors";
    write_safetensors(path, ts, meta);
    const std::string bytes = read_bytes(path);
    uint64_t hlen = 0;
    std::memcpy(&hlen, bytes.data(), 8);
    EXPECT_EQ(hlen % 8, 0u);
    EXPECT_EQ(bytes[8], '{');
    auto f = SafetensorsFile::open(path);
    ASSERT_EQ(f->tensors().size(), ts.size());
    for (const TensorToWrite& t : ts) {
      const TensorInfo* r = f->find(t.name);
      ASSERT_NE(r, nullptr);
      EXPECT_EQ(r->dtype, t.dtype);
      EXPECT_EQ(r->shape, t.shape);
      EXPECT_EQ(std::memcmp(r->data, t.data, r->nbytes), 0);
      // Each tensor starts naturally aligned for its dtype (alignment-descending layout).
      EXPECT_EQ(reinterpret_cast<uintptr_t>(r->data) % qwen::dtype_size(r->dtype), 0u) << r->name;
    }
    EXPECT_EQ(f->metadata().at("format"), "pt");
    EXPECT_EQ(f->metadata().at("trial"), std::to_string(trial));
    EXPECT_EQ(f->metadata().at("note"), "a \"quoted\"\n\\ value");
  }
}

TEST(Safetensors, WriteIsAtomicAndOverwrites) {
  TempDir dir;
  float a[3] = {1, 2, 3}, b[2] = {4, 5};
  const std::string path = dir / "w.safetensors";
  write_safetensors(path, {{"a", DType::F32, {3}, a}});
  write_safetensors(path, {{"b", DType::F32, {2}, b}});
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->find("a"), nullptr);
  ASSERT_NE(f->find("b"), nullptr);
  int n_files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    (void)e;
    ++n_files;
  }
  EXPECT_EQ(n_files, 1) << "temp files left behind";
  EXPECT_THROW(write_safetensors(dir / "no/such/dir/x.safetensors", {{"a", DType::F32, {3}, a}}), Error);
  EXPECT_THROW(write_safetensors(dir / "dup.safetensors", {{"a", DType::F32, {3}, a}, {"a", DType::F32, {2}, b}}),
               Error);
  EXPECT_THROW(write_safetensors(dir / "neg.safetensors", {{"a", DType::F32, {-1}, a}}), Error);
  EXPECT_THROW(write_safetensors(dir / "meta.safetensors", {{"__metadata__", DType::F32, {1}, a}}), Error);
  write_file_atomic(dir / "t.txt", "hello");
  EXPECT_EQ(read_bytes(dir / "t.txt"), "hello");
}

TEST(Safetensors, AcceptsWhatTheReferenceReaderAccepts) {
  TempDir dir;
  const std::string four(4, '\0');
  const std::vector<std::pair<std::string, std::string>> ok = {
      {std::string(" {\"a\":") + kT + "}", four},                      // leading whitespace
      {std::string("{\"a\":") + kT + "}     ", four},                  // trailing space padding
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":[1,2]}})", four},  // unknown field
      {std::string("{\"__metadata__\":null,\"a\":") + kT + "}", four},
      {R"({"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"y":{"dtype":"I8","shape":[2,0],"data_offsets":[0,0]},"a":)" +
           kT + "}",
       four},                                                          // zero-size tensors share offset 0
      {"{}", ""},
      {R"({"__metadata__":{"format":"pt"}})", ""},
      {R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", four},  // scalar
      {R"({"f4":{"dtype":"F4","shape":[2,2],"data_offsets":[0,2]}})", std::string(2, '\0')},
  };
  for (const auto& [h, d] : ok) {
    write_bytes(dir / "ok.safetensors", st_bytes(h, d));
    EXPECT_NO_THROW(SafetensorsFile::open(dir / "ok.safetensors")) << h;
  }
  auto f = SafetensorsFile::open(dir / "ok.safetensors");  // the F4 one
  EXPECT_FALSE(f->tensors()[0].supported);
  EXPECT_EQ(f->tensors()[0].nbytes, 2u);
}

TEST(Safetensors, RejectsMalformedFiles) {
  TempDir dir;
  const std::string four(4, '\0');
  auto one = [](const std::string& tensor_json) { return "{\"a\":" + tensor_json + "}"; };

  // Length prefix problems.
  expect_rejected(dir, std::string(5, '\0'), "too small");
  expect_rejected(dir, "", "too small");
  {
    std::string s = st_bytes("{}", "");
    uint64_t huge = 100000001;
    std::memcpy(s.data(), &huge, 8);
    expect_rejected(dir, s, "exceeds the 100000000-byte limit");
    uint64_t past = 3;
    std::memcpy(s.data(), &past, 8);
    expect_rejected(dir, s, "runs past the end of the file");
    uint64_t max = ~uint64_t(0);
    std::memcpy(s.data(), &max, 8);
    expect_rejected(dir, s, "exceeds");
  }
  // Not JSON / wrong JSON shapes.
  expect_rejected(dir, st_bytes("not json", ""), "not valid JSON");
  expect_rejected(dir, st_bytes("{\"a\":", ""), "not valid JSON");
  expect_rejected(dir, st_bytes(one(kT) + "x", four), "not valid JSON");           // trailing garbage
  expect_rejected(dir, st_bytes(one(kT) + std::string(2, '\0'), four), "not valid JSON");  // NUL padding
  expect_rejected(dir, st_bytes("{\"\xff\":1}", ""), "not valid JSON");             // bad UTF-8
  expect_rejected(dir, st_bytes("[]", ""), "must be a JSON object");
  expect_rejected(dir, st_bytes("3", ""), "must be a JSON object");
  expect_rejected(dir, st_bytes(R"({"a":1})", ""), "tensor 'a' must be an object");
  expect_rejected(dir, st_bytes(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", four), "tensor 'a' has no dtype");
  expect_rejected(dir, st_bytes(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", four), "tensor 'a' has no shape");
  expect_rejected(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", four), "tensor 'a' has no data_offsets");
  expect_rejected(dir, st_bytes(one(R"({"dtype":32,"shape":[1],"data_offsets":[0,4]})"), four), "dtype must be a string");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"Q4","shape":[1],"data_offsets":[0,4]})"), four),
                  "tensor 'a' has unknown dtype 'Q4'");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"f32","shape":[1],"data_offsets":[0,4]})"), four), "unknown dtype 'f32'");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":4,"data_offsets":[0,4]})"), four), "shape must be an array");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})"), four),
                  "shape entries must be integers >= 0");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})"), four), "integers >= 0");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1.0],"data_offsets":[0,4]})"), four), "integers >= 0");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})"), four), "integers >= 0");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]})"), ""),
                  "overflows");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]})"), ""),
                  "overflows");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,0]})"), ""),
                  "overflows");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,4]})"), four), "data_offsets must be [begin, end]");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})"), four), "data_offsets must be");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4.0]})"), four), "data_offsets must be");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":"0,4"})"), four), "data_offsets must be");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,0]})"), four), "end before they begin");
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F4","shape":[3],"data_offsets":[0,2]})"), std::string(2, '\0')),
                  "does not fill whole bytes");
  // The example message from the spec.
  expect_rejected(dir,
                  st_bytes(R"({"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})",
                           std::string(12, '\0')),
                  "tensor 'model.norm.weight' data_offsets [0, 12] do not match shape [4] of F32 (16 bytes)",
                  "model.safetensors");
  // Offsets that lie: hole, overlap, not from 0, trailing bytes, truncated data.
  expect_rejected(dir, st_bytes(one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), std::string(8, '\0')),
                  "tensor 'a' starts at data byte 4 but the previous tensor ends at 0 (a hole)");
  expect_rejected(dir,
                  st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                           std::string(20, '\0')),
                  "tensor 'b' starts at data byte 12 but the previous tensor ends at 8 (a hole)");
  expect_rejected(dir,
                  st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           std::string(12, '\0')),
                  "tensor 'b' data_offsets [4, 12] overlap tensor 'a' which ends at 8");
  expect_rejected(dir,
                  st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                           std::string(8, '\0')),
                  "overlap");
  expect_rejected(dir,
                  st_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                           four),
                  "overlap");
  expect_rejected(dir, st_bytes(one(kT), std::string(5, '\0')), "(trailing bytes)");
  expect_rejected(dir, st_bytes("{}", "x"), "(trailing bytes)");
  expect_rejected(dir, st_bytes(one(kT), std::string(3, '\0')), "the file is truncated");
  // Duplicate keys (nlohmann would keep the last silently; we refuse).
  expect_rejected(dir, st_bytes("{\"a\":" + kT + ",\"a\":" + kT + "}", four), "has the key 'a' twice");
  expect_rejected(dir, st_bytes(R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four),
                  "key 'dtype' twice");
  expect_rejected(dir, st_bytes(R"({"__metadata__":{"x":"1","x":"2"}})", ""), "key 'x' twice");
  // __metadata__ must be string -> string.
  expect_rejected(dir, st_bytes(R"({"__metadata__":{"x":1}})", ""), "__metadata__ value for 'x' must be a string");
  expect_rejected(dir, st_bytes(R"({"__metadata__":{"x":null}})", ""), "__metadata__ value for 'x' must be a string");
  expect_rejected(dir, st_bytes(R"({"__metadata__":["format"]})", ""), "__metadata__ must be an object");
}

TEST(Safetensors, EveryTruncationOfAGoodFileIsRejected) {
  TempDir dir;
  const std::string good = read_bytes(kData + "/mixed.safetensors");
  // Every length through the header, then a stride through the data (and the last bytes).
  uint64_t hlen = 0;
  std::memcpy(&hlen, good.data(), 8);
  for (size_t n = 0; n < good.size(); n += (n < 8 + hlen + 16 || n + 16 > good.size()) ? 1 : 13) {
    write_bytes(dir / "cut.safetensors", good.substr(0, n));
    EXPECT_THROW(SafetensorsFile::open(dir / "cut.safetensors"), Error) << "length " << n;
  }
  write_bytes(dir / "long.safetensors", good + "!");
  EXPECT_THROW(SafetensorsFile::open(dir / "long.safetensors"), Error);
  EXPECT_THROW(SafetensorsFile::open(dir / "missing.safetensors"), Error);
  EXPECT_THROW(SafetensorsFile::open(dir.path), Error);  // a folder
}

TEST(Safetensors, HeaderParserAlone) {
  std::vector<TensorInfo> ts;
  std::map<std::string, std::string> meta;
  std::vector<size_t> begins;
  const std::string h =
      R"({"b":{"dtype":"BF16","shape":[3],"data_offsets":[8,14]},"__metadata__":{"k":"v"},"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})";
  parse_safetensors_header(h.data(), h.size(), 14, &ts, &meta, &begins);
  ASSERT_EQ(ts.size(), 2u);
  EXPECT_EQ(ts[0].name, "a");  // offset order
  EXPECT_EQ(ts[1].name, "b");
  EXPECT_EQ(begins, (std::vector<size_t>{0, 8}));
  EXPECT_EQ(ts[1].nbytes, 6u);
  EXPECT_EQ(ts[1].data, nullptr);
  EXPECT_EQ(meta.at("k"), "v");
  EXPECT_THROW(parse_safetensors_header(h.data(), h.size(), 16, &ts, &meta, &begins), Error);
  EXPECT_THROW(parse_safetensors_header(h.data(), h.size() - 1, 14, &ts, &meta, &begins), Error);
}

// ---- checkpoint folders ----

TEST(Checkpoint, ReadsPythonShardedCheckpoint) {
  json m = manifest();
  auto ck = Checkpoint::open(kData + "/sharded");
  const json& entries = m["files"]["sharded"];
  ASSERT_EQ(ck->names().size(), entries.size());
  size_t total = 0;
  for (const json& e : entries) {
    const TensorInfo* t = ck->find(e["name"].get<std::string>());
    ASSERT_NE(t, nullptr) << e["name"];
    check_against_manifest(*t, e);
    total += t->nbytes;
  }
  EXPECT_EQ(ck->total_bytes(), total);
  EXPECT_EQ(total, 536u);
  // The tensor over the shard limit lives alone in the first shard (huggingface_hub's rule).
  EXPECT_EQ(fs::path(ck->find("model.big.weight")->file).filename(), "model-00001-of-00003.safetensors");
  EXPECT_EQ(fs::path(ck->find("model.c")->file).filename(), "model-00003-of-00003.safetensors");
  EXPECT_EQ(ck->find("nope"), nullptr);
}

TEST(Checkpoint, WritesShardsLikeHuggingFace) {
  // Same tensors, same order, same limit as gen.py: every file must be identical.
  TempDir dir;
  json m = manifest();
  auto src = Checkpoint::open(kData + "/sharded");
  std::vector<TensorToWrite> ts;
  for (const json& e : m["files"]["sharded"]) {
    const TensorInfo* t = src->find(e["name"].get<std::string>());
    ts.push_back({t->name, t->dtype, t->shape, t->data});
  }
  write_checkpoint(dir.path, ts, m["max_shard_bytes"].get<size_t>());
  std::vector<std::string> want, got;
  for (const auto& e : fs::directory_iterator(kData + "/sharded")) want.push_back(e.path().filename());
  for (const auto& e : fs::directory_iterator(dir.path)) got.push_back(e.path().filename());
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  ASSERT_EQ(got, want);
  for (const std::string& f : want)
    EXPECT_EQ(read_bytes(dir / f), read_bytes(kData + "/sharded/" + f)) << f;
}

TEST(Checkpoint, ShardingRuleAndStaleFiles) {
  TempDir dir;
  std::vector<float> buf(64, 1.0f);
  // Sizes 6,6,2,6,2,2 (x4 bytes) with limit 10*4: [6] [6+2] [6+2+2] (huggingface_hub's docstring).
  const int sizes[] = {6, 6, 2, 6, 2, 2};
  std::vector<TensorToWrite> ts;
  for (int i = 0; i < 6; ++i) ts.push_back({"t" + std::to_string(i), DType::F32, {sizes[i]}, buf.data()});
  write_checkpoint(dir.path, ts, 40);
  auto ck = Checkpoint::open(dir.path);
  auto shard = [&](const char* n) { return fs::path(ck->find(n)->file).filename().string(); };
  EXPECT_EQ(shard("t0"), "model-00001-of-00003.safetensors");
  EXPECT_EQ(shard("t1"), "model-00002-of-00003.safetensors");
  EXPECT_EQ(shard("t2"), "model-00002-of-00003.safetensors");
  EXPECT_EQ(shard("t3"), "model-00003-of-00003.safetensors");
  EXPECT_EQ(shard("t5"), "model-00003-of-00003.safetensors");
  json index = json::parse(read_bytes(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), 24u * 4);
  EXPECT_EQ(index["weight_map"].size(), 6u);
  auto meta = SafetensorsFile::open(dir / "model-00001-of-00003.safetensors")->metadata();
  EXPECT_EQ(meta.at("format"), "pt");

  // Rewriting as one file removes the index and shards; and back again removes model.safetensors.
  write_checkpoint(dir.path, ts);
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "model-00001-of-00003.safetensors"));
  EXPECT_EQ(Checkpoint::open(dir.path)->names().size(), 6u);
  write_checkpoint(dir.path, ts, 60);  // [6 6 2] [6 2 2]
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "model-00001-of-00002.safetensors"));
  EXPECT_EQ(Checkpoint::open(dir.path)->names().size(), 6u);

  // A tensor over the limit gets its own shard, placed before the shard being filled.
  TempDir d2;
  write_checkpoint(d2.path, {{"small1", DType::F32, {3}, buf.data()}, {"huge", DType::F32, {20}, buf.data()},
                             {"small2", DType::F32, {3}, buf.data()}}, 40);
  auto ck2 = Checkpoint::open(d2.path);
  EXPECT_EQ(fs::path(ck2->find("huge")->file).filename(), "model-00001-of-00002.safetensors");
  EXPECT_EQ(fs::path(ck2->find("small1")->file).filename(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(fs::path(ck2->find("small2")->file).filename(), "model-00002-of-00002.safetensors");

  // Empty checkpoint: one empty model.safetensors.
  TempDir d3;
  write_checkpoint(d3.path, {});
  EXPECT_EQ(Checkpoint::open(d3.path)->names().size(), 0u);
}

TEST(Checkpoint, ClearErrors) {
  TempDir dir;
  auto expect_error = [&](const std::string& path, const std::string& needle) {
    try {
      Checkpoint::open(path);
      ADD_FAILURE() << "accepted " << path;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(dir / "nope", "not a folder");
  expect_error(dir.path, "no model.safetensors or model.safetensors.index.json");

  float x[4] = {1, 2, 3, 4};
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", DType::F32, {4}, x}});
  auto index = [&](const std::string& text) { write_bytes(dir / "model.safetensors.index.json", text); };
  index("{not json");
  expect_error(dir.path, "model.safetensors.index.json: not valid JSON");
  index(R"({"metadata":{}})");
  expect_error(dir.path, "has no \"weight_map\"");
  index(R"({"weight_map":{"a":1}})");
  expect_error(dir.path, "weight_map entry for 'a' must be a file name");
  index(R"({"weight_map":{"a":"../model-00001-of-00002.safetensors"}})");
  expect_error(dir.path, "not a file name inside the checkpoint folder");
  index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  expect_error(dir.path, "shard 'model-00002-of-00002.safetensors' (holding tensor 'b') is missing");
  index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors","zz":"model-00001-of-00002.safetensors"}})");
  expect_error(dir.path, "tensor 'zz' is listed for this shard");
  index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors"}})");
  auto ck = Checkpoint::open(dir.path);
  ASSERT_NE(ck->find("a"), nullptr);
  EXPECT_EQ(static_cast<const float*>(ck->find("a")->data)[3], 4.0f);
  // A corrupt shard is reported with the shard's path.
  write_bytes(dir / "model-00001-of-00002.safetensors", "garbage!garbage");
  expect_error(dir.path, "model-00001-of-00002.safetensors: header length");
}

// Writes files with our writer for `gen.py --check-export` (Python safetensors + transformers
// load them). Without QWEN_EXPORT_DIR it writes to a temp folder and checks them itself.
TEST(SafetensorsExport, WritesFilesForPython) {
  const char* env = std::getenv("QWEN_EXPORT_DIR");
  TempDir tmp;
  const std::string out = env ? std::string(env) : tmp.path;
  json expected = {{"files", json::object()}, {"checkpoints", json::object()}};
  std::vector<std::vector<unsigned char>> bufs;
  int id = 100;
  auto make = [&](const std::string& name, DType t, std::vector<int64_t> shape, json* list) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    bufs.push_back(golden_bytes(++id, t, n));
    list->push_back({{"name", name}, {"dtype", qwen::dtype_name(t)}, {"shape", shape}, {"id", id}});
    return TensorToWrite{name, t, shape, bufs.back().data()};
  };
  bufs.reserve(64);
  {
    json list = json::array();
    std::vector<TensorToWrite> ts = {
        make("model.embed_tokens.weight", DType::BF16, {7, 5}, &list),
        make("w.f16", DType::F16, {3, 1, 3}, &list),
        make("w.f32", DType::F32, {13}, &list),
        make("ids", DType::I32, {5}, &list),
        make("big_ids", DType::I64, {2, 2}, &list),
        make("bytes", DType::U8, {9}, &list),
        make("scalar", DType::F32, {}, &list),
        make("empty", DType::F16, {0, 3}, &list),
        make("naïve \"quoted\" \\ name\twith\x01" "ctl", DType::F32, {2}, &list),
    };
    std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "qwen-advanced-llm"}};
    write_safetensors(out + "/ours.safetensors", ts, meta);
    expected["files"]["ours.safetensors"] = {{"tensors", list}, {"metadata", meta}};
  }
  {
    json list = json::array();
    std::vector<TensorToWrite> ts;
    for (int i = 0; i < 7; ++i)
      ts.push_back(make("model.layers." + std::to_string(i) + ".w", i % 2 ? DType::BF16 : DType::F32, {5, 3 + i}, &list));
    write_checkpoint(out + "/ckpt", ts, 100);
    size_t total = 0;
    for (const auto& t : ts) total += size_t(t.shape[0] * t.shape[1]) * qwen::dtype_size(t.dtype);
    expected["checkpoints"]["ckpt"] = {{"tensors", list}, {"total_size", total}};
    // Self-check: read everything back.
    auto ck = Checkpoint::open(out + "/ckpt");
    ASSERT_TRUE(fs::exists(out + "/ckpt/model.safetensors.index.json"));
    for (const json& e : list) check_against_manifest(*ck->find(e["name"].get<std::string>()), e);
  }
  auto f = SafetensorsFile::open(out + "/ours.safetensors");
  for (const json& e : expected["files"]["ours.safetensors"]["tensors"])
    check_against_manifest(*f->find(e["name"].get<std::string>()), e);
  write_file_atomic(out + "/expected.json", expected.dump(1));
}
