// tests/test_decode_alloc.cpp — the decode loop does not allocate: operator new is counted
// between consecutive generated tokens (after warm-up), and must not move.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "generate/generator.h"
#include "model/model.h"
#include "test_util.h"

static std::atomic<long> g_news{0};

void* operator new(size_t n) {
  ++g_news;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  ++g_news;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

using namespace qwen;

TEST(Decode, NoAllocationBetweenTokens) {
  for (const char* name : {"qwen2_gqa", "qwen3_bf16"}) {
    auto m = Model::load(qwen_test::data_path(std::string("models/") + name));
    Generator gen(*m, 2, 48, 16);
    GenerationConfig gc;
    gc.max_new_tokens = 24;
    gc.sampling.temperature = 0.9f;
    gc.sampling.top_p = 0.9f;
    gc.sampling.top_k = 50;
    gc.sampling.repetition_penalty = 1.1f;
    std::vector<long> at_token;
    at_token.reserve(100);
    gen.generate({{1, 2, 3}, {4, 5, 6, 7, 8}}, gc);  // warm-up: thread-local scratch grows here
    gen.generate({{1, 2, 3}, {4, 5, 6, 7, 8}}, gc, [&](int64_t seq, int32_t) {
      if (seq == 0) at_token.push_back(g_news.load());
      return true;
    });
    ASSERT_GE(at_token.size(), 10u);
    // From the second token on, every step is a pure decode step.
    for (size_t i = 2; i < at_token.size(); ++i)
      EXPECT_EQ(at_token[i], at_token[i - 1]) << name << ": allocation during decode step " << i;
  }
}
