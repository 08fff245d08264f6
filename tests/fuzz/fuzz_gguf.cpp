// tests/fuzz/fuzz_gguf.cpp — libFuzzer target for the GGUF reader and everything built on it.
// Each input is a whole file: GgufFile::parse, then, if the file is accepted, the model mapping
// (gguf_to_model: config from metadata, every tensor checked by name, type and shape) and the
// tokenizer synthesis (gguf_tokenizer). Only qwen::Error may escape; an accepted file must keep
// every tensor inside the buffer, aligned, and its byte size consistent with type and shape.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "io/gguf.h"
#include "io/gguf_model.h"
#include "io/gguf_tokenizer.h"
#include "qwen/error.h"

namespace {

#define FUZZ_CHECK(cond)                                     \
  do {                                                       \
    if (!(cond)) {                                           \
      std::fprintf(stderr, "invariant failed: %s\n", #cond); \
      std::abort();                                          \
    }                                                        \
  } while (0)

void check_layout(const qwen::io::GgufFile& f, const uint8_t* data, size_t size) {
  for (const auto& t : f.tensors()) {
    FUZZ_CHECK(t.data >= data && t.data + t.nbytes <= data + size);
    FUZZ_CHECK(t.offset % f.alignment() == 0);
    int64_t be;
    size_t bb;
    FUZZ_CHECK(qwen::io::ggml_type_size(t.type, &be, &bb));
    FUZZ_CHECK(t.ne[0] % be == 0);
    size_t n = size_t(t.ne[0] / be) * bb;
    for (size_t j = 1; j < t.ne.size(); ++j) n *= size_t(t.ne[j]);
    FUZZ_CHECK(n == t.nbytes);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<const qwen::io::GgufFile> f;
  try {
    f = qwen::io::GgufFile::parse(data, size, "fuzz.gguf");
  } catch (const qwen::Error&) {
    return 0;
  }
  check_layout(*f, data, size);
  try {
    auto m = qwen::io::gguf_to_model(f);
    FUZZ_CHECK(m->config().vocab_size > 0);
  } catch (const qwen::Error&) {
  }
  try {
    qwen::io::gguf_tokenizer(*f);
  } catch (const qwen::Error&) {
  }
  return 0;
}
