// tests/fuzz/fuzz_safetensors.cpp — libFuzzer target for the safetensors reader. Each input is a
// whole file: its header goes through parse_safetensors_header directly, and the complete bytes
// through SafetensorsFile::open (via a memfd, so the mmap path runs too). Only qwen::Error may
// escape the reader; any accepted file must satisfy the layout invariants checked below.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "io/safetensors.h"
#include "qwen/error.h"

namespace {

#define FUZZ_CHECK(cond)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      std::fprintf(stderr, "invariant failed: %s\n", #cond);    \
      std::abort();                                             \
    }                                                           \
  } while (0)

// Accepted tensors must tile the data section exactly, in offset order.
void check_layout(const std::vector<qwen::io::TensorInfo>& ts, const std::vector<size_t>& begins,
                  size_t data_len) {
  FUZZ_CHECK(ts.size() == begins.size());
  size_t pos = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    FUZZ_CHECK(begins[i] == pos);
    pos += ts[i].nbytes;
  }
  FUZZ_CHECK(pos == data_len);
}

int memfd() {
  static int fd = memfd_create("fuzz_safetensors", 0);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 1. The header parser alone.
  if (size >= 8) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    if (n <= size - 8) {
      std::vector<qwen::io::TensorInfo> ts;
      std::map<std::string, std::string> meta;
      std::vector<size_t> begins;
      const size_t data_len = size - 8 - size_t(n);
      try {
        qwen::io::parse_safetensors_header(reinterpret_cast<const char*>(data) + 8, size_t(n), data_len,
                                           &ts, &meta, &begins);
        check_layout(ts, begins, data_len);
      } catch (const qwen::Error&) {
      }
    }
  }
  // 2. The whole file through open() (mmap, bounds, data pointers).
  const int fd = memfd();
  if (fd < 0) return 0;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != ssize_t(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    auto f = qwen::io::SafetensorsFile::open(path);
    const auto* base = static_cast<const uint8_t*>(f->tensors().empty() ? nullptr : f->tensors()[0].data);
    uint64_t sum = 0;
    for (const auto& t : f->tensors()) {
      FUZZ_CHECK(f->find(t.name) == &t);
      const auto* p = static_cast<const uint8_t*>(t.data);
      FUZZ_CHECK(p >= base && size_t(p - base) + t.nbytes <= size);
      volatile uint8_t sink = 0;
      if (t.nbytes) sink = sink + p[0] + p[t.nbytes - 1];  // touch the mapped bytes (ASan-visible)
      sum += t.nbytes;
    }
    FUZZ_CHECK(sum <= size);
  } catch (const qwen::Error&) {
  }
  return 0;
}
