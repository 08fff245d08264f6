// tests/fuzz/fuzz_openai_request.cpp — libFuzzer target for the OpenAI request parser of the
// server (serve/openai_api.h). The first byte picks /v1/completions or /v1/chat/completions; the
// rest is the request body. No exception may escape parse_request (bad input is a 400, never a
// throw or crash); an accepted request must have valid token ids, a positive max_tokens that
// fits the context, and its response bodies must build.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "qwen/tokenizer.h"
#include "serve/openai_api.h"

namespace {
qwen::Tokenizer* g_tok = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Run from the repository root (tests/fuzz/run.sh does): the real Qwen3 tokenizer files.
  g_tok = new qwen::Tokenizer(qwen::Tokenizer::from_dir("tests/data/tokenizer/qwen3"));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool chat = data[0] & 1;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  qwen::serve::api::ApiContext ctx;
  ctx.model_name = "fuzz";
  ctx.tok = g_tok;
  ctx.vocab_size = g_tok->vocab_size();
  ctx.max_model_len = 256;
  ctx.stop_ids = g_tok->stop_ids();
  qwen::serve::api::ParsedRequest pr;
  qwen::serve::api::ApiError err;
  bool ok = false;
  try {
    ok = qwen::serve::api::parse_request(body, chat, ctx, &pr, &err);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parse_request threw: %s\n", e.what());
    std::abort();
  }
  if (!ok) {
    if (err.status < 400 || err.status > 599 || err.message.empty()) std::abort();
    (void)qwen::serve::api::error_json(err);
    return 0;
  }
  const auto& g = pr.gen;
  for (int32_t id : g.prompt)
    if (id < 0 || id >= ctx.vocab_size) {
      std::fprintf(stderr, "accepted prompt token %d out of range\n", id);
      std::abort();
    }
  if (g.prompt.empty() || int64_t(g.prompt.size()) >= ctx.max_model_len) {
    std::fprintf(stderr, "accepted a prompt of %zu tokens\n", g.prompt.size());
    std::abort();
  }
  if (g.max_tokens < 1 || int64_t(g.prompt.size()) + g.max_tokens > ctx.max_model_len) {
    std::fprintf(stderr, "accepted max_tokens %lld with a prompt of %zu tokens\n",
                 (long long)g.max_tokens, g.prompt.size());
    std::abort();
  }
  return 0;
}
