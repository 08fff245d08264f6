// train/data.cpp — token shards (write, memory-mapped read with validation), `data prepare`,
// and the batch loader (shuffled windows per epoch, or sequential rows). See data.h.
#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/safetensors.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"

namespace qwen::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string errno_text() { return std::strerror(errno); }

void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put_u64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint32_t get_u32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
uint64_t get_u64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read " + what + " '" + path + "': " + errno_text());
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error("cannot read " + what + " '" + path + "': read error");
  return ss.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Shards

void write_shard(const std::string& path, const std::vector<int32_t>& ids) {
  int32_t mx = 0;
  for (int32_t id : ids) {
    assert(id >= 0);
    mx = std::max(mx, id);
  }
  const int width = mx <= 0xffff ? 2 : 4;
  uint8_t header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  put_u32(header + 8, kShardVersion);
  put_u32(header + 12, uint32_t(width));
  put_u64(header + 16, uint64_t(ids.size()));
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error("cannot write shard '" + tmp + "': " + errno_text());
  bool ok = std::fwrite(header, 1, sizeof header, f) == sizeof header;
  if (width == 4) {
    ok = ok && std::fwrite(ids.data(), 4, ids.size(), f) == ids.size();
  } else {
    std::vector<uint16_t> buf;
    const size_t chunk = size_t(1) << 20;
    for (size_t i = 0; ok && i < ids.size(); i += chunk) {
      const size_t n = std::min(chunk, ids.size() - i);
      buf.resize(n);
      for (size_t k = 0; k < n; ++k) buf[k] = uint16_t(ids[i + k]);
      ok = std::fwrite(buf.data(), 2, n, f) == n;
    }
  }
  int err = ok ? 0 : errno;
  if (ok && std::fflush(f) != 0) { ok = false; err = errno; }
  if (ok && ::fsync(fileno(f)) != 0) { ok = false; err = errno; }
  if (std::fclose(f) != 0 && ok) { ok = false; err = errno; }
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error("cannot write shard '" + path + "': " + std::strerror(err ? err : EIO) +
                " (disk full or not writable?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    std::remove(tmp.c_str());
    throw Error("cannot rename '" + tmp + "' to '" + path + "': " + why);
  }
}

std::unique_ptr<Shard> Shard::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error("cannot open shard '" + path + "': " + errno_text());
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    throw Error("cannot stat shard '" + path + "': " + why);
  }
  const size_t file_bytes = size_t(st.st_size);
  auto fail = [&](const std::string& what) {
    ::close(fd);
    throw Error("shard '" + path + "' " + what + "; re-create it with `qwen data prepare`");
  };
  if (file_bytes < kShardHeaderBytes)
    fail("is truncated: " + std::to_string(file_bytes) + " bytes, shorter than the " +
         std::to_string(kShardHeaderBytes) + "-byte header");
  uint8_t header[kShardHeaderBytes];
  if (::pread(fd, header, sizeof header, 0) != ssize_t(sizeof header)) fail("cannot be read");
  if (std::memcmp(header, kShardMagic, 8) != 0) fail("has a wrong magic (not a token shard)");
  const uint32_t version = get_u32(header + 8);
  if (version != kShardVersion)
    fail("has format version " + std::to_string(version) + ", this build reads version " +
         std::to_string(kShardVersion));
  const uint32_t width = get_u32(header + 12);
  if (width != 2 && width != 4)
    fail("has an unknown id width of " + std::to_string(width) + " bytes (expected 2 or 4)");
  const uint64_t count = get_u64(header + 16);
  if (count > (uint64_t(1) << 50)) fail("claims an impossible count of " + std::to_string(count) + " ids");
  const size_t want = kShardHeaderBytes + size_t(count) * width;
  if (file_bytes < want)
    fail("is truncated: its header says " + std::to_string(count) + " ids (" +
         std::to_string(want) + " bytes) but the file holds " + std::to_string(file_bytes) + " bytes");
  if (file_bytes > want)
    fail("has " + std::to_string(file_bytes - want) + " bytes after its " + std::to_string(count) +
         " ids");
  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string why = errno_text();
  ::close(fd);
  if (map == MAP_FAILED) throw Error("cannot memory-map shard '" + path + "': " + why);
  std::unique_ptr<Shard> s(new Shard());
  s->path_ = path;
  s->map_ = map;
  s->map_bytes_ = file_bytes;
  s->ids_ = static_cast<const uint8_t*>(map) + kShardHeaderBytes;
  s->count_ = int64_t(count);
  s->width_ = int(width);
  return s;
}

Shard::~Shard() {
  if (map_) ::munmap(map_, map_bytes_);
}

int32_t Shard::at(int64_t i) const {
  assert(i >= 0 && i < count_);
  if (width_ == 2) {
    uint16_t v;
    std::memcpy(&v, ids_ + size_t(i) * 2, 2);
    return int32_t(v);
  }
  uint32_t v;
  std::memcpy(&v, ids_ + size_t(i) * 4, 4);
  return int32_t(v);
}

void Shard::read(int64_t begin, int64_t n, int32_t* out) const {
  assert(begin >= 0 && n >= 0 && begin + n <= count_);
  if (width_ == 2) {
    const uint8_t* p = ids_ + size_t(begin) * 2;
    for (int64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, p + size_t(i) * 2, 2);
      out[i] = int32_t(v);
    }
  } else {
    std::memcpy(out, ids_ + size_t(begin) * 4, size_t(n) * 4);
  }
}

// ---------------------------------------------------------------------------------------------
// meta.json

std::string DataMeta::to_json() const {
  json j = {{"format", "qwen-token-shards"},
            {"version", kShardVersion},
            {"vocab_size", vocab_size},
            {"max_id", max_id},
            {"eos_id", eos_id},
            {"documents", n_documents},
            {"val_fraction", val_fraction},
            {"train", {{"tokens", n_train_tokens}, {"shards", train_shards}}},
            {"val", {{"tokens", n_val_tokens}, {"shards", val_shards}}},
            {"tokenizer", tokenizer.empty() ? json(nullptr) : json(tokenizer)},
            {"sources", sources}};
  return j.dump(1) + "\n";
}

DataMeta DataMeta::load(const std::string& dir) {
  if (!fs::exists(dir))
    throw Error("data folder '" + dir + "' does not exist; create it with `qwen data prepare --out " +
                dir + "`");
  if (!fs::is_directory(dir)) throw Error("--data '" + dir + "' is not a folder");
  const std::string path = (fs::path(dir) / "meta.json").string();
  if (!fs::exists(path))
    throw Error("'" + path + "' is missing: '" + dir +
                "' is not a data folder written by `qwen data prepare`");
  DataMeta m;
  try {
    json j = json::parse(read_file(path, "data meta"));
    if (j.value("format", "") != "qwen-token-shards")
      throw Error("'" + path + "' is not a qwen-token-shards meta file");
    m.vocab_size = j.at("vocab_size").get<int64_t>();
    m.max_id = j.at("max_id").get<int64_t>();
    m.eos_id = j.at("eos_id").get<int32_t>();
    m.n_documents = j.value("documents", int64_t(0));
    m.val_fraction = j.value("val_fraction", 0.0);
    m.n_train_tokens = j.at("train").at("tokens").get<int64_t>();
    m.train_shards = j.at("train").at("shards").get<std::vector<std::string>>();
    m.n_val_tokens = j.at("val").at("tokens").get<int64_t>();
    m.val_shards = j.at("val").at("shards").get<std::vector<std::string>>();
    if (j.contains("tokenizer") && j["tokenizer"].is_string()) m.tokenizer = j["tokenizer"];
    if (j.contains("sources")) m.sources = j["sources"].get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    throw Error("'" + path + "' is not valid data meta (" + e.what() + "); re-run `qwen data prepare`");
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// data prepare

std::vector<int32_t> parse_id_text(const std::string& text, const std::string& where) {
  std::vector<int32_t> ids;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const char ch = text[i];
    if (ch == ',' || ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v') {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && !(text[j] == ',' || std::isspace(static_cast<unsigned char>(text[j])))) ++j;
    const std::string tok = text.substr(i, j - i);
    int64_t v = 0;
    bool ok = !tok.empty() && tok.size() <= 10;
    for (char c : tok) {
      if (c < '0' || c > '9') { ok = false; break; }
      v = v * 10 + (c - '0');
    }
    if (!ok || v > INT32_MAX)
      throw Error(where + ": '" + tok.substr(0, 32) + "' is not a token id (non-negative integer)");
    ids.push_back(int32_t(v));
    i = j;
  }
  return ids;
}

DataMeta prepare_data(const PrepareOptions& opt) {
  if (opt.out_dir.empty()) throw Error("data prepare: --out DIR is required");
  if (opt.inputs.empty() && opt.ids_files.empty())
    throw Error("data prepare: give --input FILE... (text) or --ids-file FILE... (token ids)");
  if (!(opt.val_fraction >= 0.0 && opt.val_fraction < 1.0))
    throw Error("--val-fraction " + std::to_string(opt.val_fraction) + " must be in [0, 1)");
  if (opt.shard_tokens < 1) throw Error("--shard-tokens must be >= 1");
  if (!opt.inputs.empty() && opt.tokenizer_dir.empty())
    throw Error("data prepare: text --input needs --tokenizer DIR (or pass ready ids with --ids-file)");

  std::unique_ptr<Tokenizer> tok;
  int32_t eos = -1;
  if (!opt.tokenizer_dir.empty()) {
    tok = std::make_unique<Tokenizer>(Tokenizer::from_dir(opt.tokenizer_dir));
    eos = tok->eos_id();
    if (eos < 0) eos = tok->token_to_id("<|endoftext|>");
  }

  // Documents, in input order: text files first, then ids files.
  std::vector<std::vector<int32_t>> docs;
  std::vector<std::string> sources;
  if (!opt.inputs.empty()) {
    std::vector<std::string> texts;
    for (const auto& p : opt.inputs) {
      if (!fs::is_regular_file(p)) throw Error("--input '" + p + "' is not a readable file");
      texts.push_back(read_file(p, "--input"));
      sources.push_back(p);
    }
    auto enc = tok->encode_batch(texts, true);
    for (auto& d : enc) docs.push_back(std::move(d));
  }
  for (const auto& p : opt.ids_files) {
    if (!fs::is_regular_file(p)) throw Error("--ids-file '" + p + "' is not a readable file");
    docs.push_back(parse_id_text(read_file(p, "--ids-file"), p));
    sources.push_back(p);
  }
  if (docs.size() > 1 && tok && eos < 0)
    throw Error("tokenizer in '" + opt.tokenizer_dir +
                "' has no eos token (nor <|endoftext|>) to separate documents");

  int64_t max_id = -1;
  for (const auto& d : docs)
    for (int32_t id : d) max_id = std::max<int64_t>(max_id, id);
  const int64_t vocab = tok ? tok->vocab_size() : max_id + 1;
  if (tok && max_id >= vocab)
    throw Error("--ids-file holds id " + std::to_string(max_id) + " but the tokenizer in '" +
                opt.tokenizer_dir + "' has only " + std::to_string(vocab) + " ids");
  if (eos >= 0) max_id = std::max<int64_t>(max_id, docs.size() > 1 ? eos : -1);

  // Split every document: head -> train, tail -> val; join with eos between documents.
  std::vector<int32_t> train_ids, val_ids;
  auto append = [&](std::vector<int32_t>& dst, const int32_t* p, size_t n) {
    if (n == 0) return;
    if (!dst.empty() && eos >= 0) dst.push_back(eos);
    dst.insert(dst.end(), p, p + n);
  };
  for (const auto& d : docs) {
    const size_t n_val = size_t(double(d.size()) * opt.val_fraction);
    append(train_ids, d.data(), d.size() - n_val);
    append(val_ids, d.data() + (d.size() - n_val), n_val);
  }
  if (train_ids.empty()) throw Error("data prepare: the inputs hold no tokens");

  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  if (ec || !fs::is_directory(opt.out_dir))
    throw Error("cannot create --out folder '" + opt.out_dir + "': " +
                (ec ? ec.message() : std::string("not a folder")));

  DataMeta meta;
  meta.vocab_size = vocab;
  meta.max_id = max_id;
  meta.eos_id = eos;
  meta.n_documents = int64_t(docs.size());
  meta.val_fraction = opt.val_fraction;
  meta.sources = sources;
  auto write_split = [&](const std::vector<int32_t>& ids, const std::string& name,
                         std::vector<std::string>* files) {
    for (size_t at = 0, k = 0; at < ids.size(); at += size_t(opt.shard_tokens), ++k) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s_%03zu.bin", name.c_str(), k);
      const size_t n = std::min(size_t(opt.shard_tokens), ids.size() - at);
      write_shard((fs::path(opt.out_dir) / buf).string(),
                  std::vector<int32_t>(ids.begin() + at, ids.begin() + at + n));
      files->push_back(buf);
    }
  };
  write_split(train_ids, "train", &meta.train_shards);
  write_split(val_ids, "val", &meta.val_shards);
  meta.n_train_tokens = int64_t(train_ids.size());
  meta.n_val_tokens = int64_t(val_ids.size());

  if (tok) {
    const fs::path tdir = fs::path(opt.out_dir) / "tokenizer";
    fs::create_directories(tdir, ec);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      const fs::path src = fs::path(opt.tokenizer_dir) / f;
      if (fs::exists(src)) io::write_file_atomic((tdir / f).string(), read_file(src.string(), "tokenizer"));
    }
    meta.tokenizer = "tokenizer";
  }
  io::write_file_atomic((fs::path(opt.out_dir) / "meta.json").string(), meta.to_json());
  if (opt.verbose) {
    std::printf("%lld documents -> train %lld tokens (%zu shard%s), val %lld tokens (%zu shard%s); "
                "vocab %lld, eos %d, in %s\n",
                (long long)meta.n_documents, (long long)meta.n_train_tokens,
                meta.train_shards.size(), meta.train_shards.size() == 1 ? "" : "s",
                (long long)meta.n_val_tokens, meta.val_shards.size(),
                meta.val_shards.size() == 1 ? "" : "s", (long long)vocab, eos, opt.out_dir.c_str());
  }
  return meta;
}

// ---------------------------------------------------------------------------------------------
// TokenStream

TokenStream::TokenStream(const std::string& dir, const std::string& split) {
  assert(split == "train" || split == "val");
  meta_ = DataMeta::load(dir);
  const auto& files = split == "train" ? meta_.train_shards : meta_.val_shards;
  const int64_t want = split == "train" ? meta_.n_train_tokens : meta_.n_val_tokens;
  for (const auto& f : files) {
    const std::string p = (fs::path(dir) / f).string();
    if (!fs::exists(p))
      throw Error("shard '" + p + "' listed in meta.json is missing; re-run `qwen data prepare`");
    shards_.push_back(Shard::open(p));
    starts_.push_back(total_);
    total_ += shards_.back()->size();
  }
  if (total_ != want)
    throw Error("the " + split + " shards in '" + dir + "' hold " + std::to_string(total_) +
                " ids but meta.json says " + std::to_string(want) + "; re-run `qwen data prepare`");
}

TokenStream::~TokenStream() = default;

void TokenStream::read(int64_t begin, int64_t n, int32_t* out) const {
  assert(begin >= 0 && n >= 0 && begin + n <= total_);
  size_t k = size_t(std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin()) - 1;
  while (n > 0) {
    const Shard& s = *shards_[k];
    const int64_t local = begin - starts_[k];
    const int64_t take = std::min(n, s.size() - local);
    s.read(local, take, out);
    out += take;
    begin += take;
    n -= take;
    ++k;
  }
}

// ---------------------------------------------------------------------------------------------
// DataLoader

DataLoader::DataLoader(const TokenStream& data, int64_t batch, int64_t seq, uint64_t seed,
                       bool sequential)
    : data_(data), B_(batch), T_(seq), sequential_(sequential) {
  if (batch < 1 || seq < 1) throw Error("--batch and --seq must be >= 1");
  if (data.size() < seq + 1)
    throw Error("the training data holds " + std::to_string(data.size()) +
                " tokens, fewer than --seq + 1 = " + std::to_string(seq + 1) +
                "; use a shorter --seq or more data");
  buf_.resize(size_t(seq + 1));
  st_.seed = seed;
  st_.epoch = 0;
  st_.cursor = 0;
  if (!sequential_) start_epoch();
}

int64_t DataLoader::windows_per_epoch() const {
  if (sequential_) return data_.size() / (T_ + 1);
  return int64_t(order_.size());
}

void DataLoader::start_epoch() {
  // Offset and order depend only on (seed, epoch).
  Rng rng(st_.seed * 0x9e3779b97f4a7c15ull + uint64_t(st_.epoch) * 0xd1b54a32d192ed03ull + 1);
  const int64_t N = data_.size();
  const int64_t max_off = std::min<int64_t>(T_, N - T_);  // >= 1 since N >= T + 1
  offset_ = int64_t(rng.next() % uint64_t(max_off));
  const int64_t n = (N - 1 - offset_) / T_;
  order_.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) order_[size_t(i)] = offset_ + i * T_;
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = int64_t(rng.next() % uint64_t(i + 1));
    std::swap(order_[size_t(i)], order_[size_t(j)]);
  }
}

void DataLoader::window(int64_t start, int32_t* tokens, int32_t* targets) {
  data_.read(start, T_ + 1, buf_.data());
  std::memcpy(tokens, buf_.data(), size_t(T_) * 4);
  std::memcpy(targets, buf_.data() + 1, size_t(T_) * 4);
}

void DataLoader::next(int32_t* tokens, int32_t* targets) {
  for (int64_t b = 0; b < B_; ++b) {
    int64_t start;
    if (sequential_) {
      const int64_t rows = data_.size() / (T_ + 1);
      start = (st_.cursor % rows) * (T_ + 1);
      st_.cursor = (st_.cursor + 1) % rows;
    } else {
      if (st_.cursor >= int64_t(order_.size())) {
        ++st_.epoch;
        st_.cursor = 0;
        start_epoch();
      }
      start = order_[size_t(st_.cursor++)];
    }
    window(start, tokens + b * T_, targets + b * T_);
  }
}

void DataLoader::set_state(const LoaderState& s) {
  st_ = s;
  if (sequential_) {
    const int64_t rows = data_.size() / (T_ + 1);
    st_.cursor = ((s.cursor % rows) + rows) % rows;
    return;
  }
  start_epoch();
  if (st_.cursor < 0 || st_.cursor > int64_t(order_.size()))
    throw Error("saved data position " + std::to_string(s.cursor) + " is outside epoch " +
                std::to_string(s.epoch) + " of " + std::to_string(order_.size()) +
                " windows: the data folder changed since the checkpoint");
}

}  // namespace qwen::train
