// examples/06_engine.cpp — the serving engine in-process: continuous batching over a paged KV
// cache. Three requests are submitted at once (two with the same seed), one is read as a stream,
// all are answered together. Checks: every request finishes with tokens and text, and the two
// requests with the same seed produce the same tokens although they ran in one batch.
// Usage: 06_engine MODEL_DIR TOKENIZER_DIR
#include <cstdio>
#include <string>
#include <vector>

#include "qwen/qwen.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR TOKENIZER_DIR\n", argv[0]);
    return 2;
  }
  try {
    const qwen::Model model = qwen::Model::load(argv[1]);
    const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(argv[2]);
    qwen::EngineConfig ec;
    ec.max_running = 8;
    ec.kv_cache_bytes = size_t(8) << 20;
    qwen::Engine engine(model, tok, ec);
    engine.start();

    qwen::GenerationConfig g;
    g.max_new_tokens = 16;
    g.temperature = 0.7f;
    g.top_k = 40;
    g.seed = 11;
    qwen::Request a = engine.submit("In the beginning God created", g);
    qwen::Request b = engine.submit("In the beginning God created", g);  // same seed
    g.seed = 12;
    qwen::Request c = engine.submit("The Jargon File is", g);

    qwen::Completion streamed;
    std::printf("streaming request %lld: ", (long long)c.id());
    while (!streamed.finished) {
      const size_t had = streamed.text.size();
      if (c.next(&streamed, std::chrono::milliseconds(1000)))
        std::printf("%s", streamed.text.substr(had).c_str());
      std::fflush(stdout);
    }
    std::printf("\n");
    const qwen::Completion ra = a.wait(), rb = b.wait();
    engine.stop();
    bool ok = true;
    const std::vector<const qwen::Completion*> all = {&ra, &rb, &streamed};
    for (const qwen::Completion* r : all) {
      std::printf("finish %s, %lld prompt + %lld generated tokens (%lld from the prefix cache): %s\n",
                  r->finish_reason.c_str(), (long long)r->prompt_tokens,
                  (long long)r->completion_tokens, (long long)r->cached_tokens, r->text.c_str());
      ok = ok && r->finished && !r->tokens.empty() && !r->text.empty();
    }
    std::printf("same seed in one batch -> same tokens: %s\n", ra.tokens == rb.tokens ? "yes" : "no");
    if (!ok || ra.tokens != rb.tokens) return 1;
    std::printf("OK\n");
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
