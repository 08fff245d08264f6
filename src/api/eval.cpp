// api/eval.cpp — qwen/eval.h: perplexity over overlapping windows (the decoder with a contiguous
// cache, logits of every position) and the prefill / decode benchmark (the batched generator on
// one sequence), what `qwen eval` and `qwen bench` print.
#include <algorithm>
#include <chrono>
#include <cmath>

#include "api/bridge.h"

namespace qwen::api {

PerplexityResult evaluate_perplexity(const Model& model, const std::vector<int32_t>& ids,
                                     const PerplexityConfig& config) {
  const qwen::Model& m = core(model);
  const ModelConfig& c = m.config();
  const int64_t V = c.vocab_size;
  const int64_t N = int64_t(ids.size());
  if (N < 2) throw Error("evaluate_perplexity: needs at least 2 tokens to score, got " + std::to_string(N));
  for (int32_t id : ids)
    if (id < 0 || id >= V)
      throw Error("evaluate_perplexity: token id " + std::to_string(id) +
                  " is out of range for vocab_size " + std::to_string(V));
  PerplexityResult r;
  r.context = std::min<int64_t>(config.context > 0 ? config.context : c.max_position_embeddings, N);
  r.stride = config.stride > 0 ? std::min(config.stride, r.context)
                               : std::max<int64_t>(1, r.context / 2);
  const int64_t ctx = r.context;
  const int64_t chunk = std::min<int64_t>(ctx, 256);
  KvCache cache(c, 1, ctx);
  Decoder dec(m, chunk);
  std::vector<float> logits(size_t(chunk * V));  // (chunk, V)
  double nll = 0;
  int64_t scored = 0;  // tokens predicted so far: ids[1 .. scored]
  int64_t begin = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (scored < N - 1) {
    const int64_t end = std::min(N, begin + ctx);  // window ids[begin, end)
    cache.reset(0);
    for (int64_t p = begin; p < end - 1; p += chunk) {
      const int64_t n = std::min(chunk, end - 1 - p);
      SeqChunk ch{0, n, ids.data() + p};
      dec.forward(cache, &ch, 1, LogitsMode::kAll, logits.data());
      for (int64_t t = 0; t < n; ++t) {
        const int64_t target_pos = p + t + 1;
        if (target_pos <= scored) continue;  // scored by an earlier window
        const float* row = logits.data() + t * V;
        float mx = row[0];
        for (int64_t v = 1; v < V; ++v) mx = std::max(mx, row[v]);
        double s = 0;
        for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v] - mx));
        nll += (std::log(s) + mx) - row[ids[size_t(target_pos)]];
        scored = target_pos;
      }
    }
    if (end == N) break;
    begin += r.stride;
    if (config.on_progress) config.on_progress(scored, N - 1);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens = N - 1;
  r.loss = nll / double(N - 1);
  r.perplexity = std::exp(r.loss);
  return r;
}

BenchResult benchmark(const Model& model, const BenchConfig& config) {
  const qwen::Model& m = core(model);
  const ModelConfig& c = m.config();
  const int64_t prompt_len = config.prompt_len, gen_len = config.gen_len;
  if (prompt_len < 1 || gen_len < 1)
    throw Error("benchmark: prompt_len and gen_len must be >= 1");
  if (config.reps < 0) throw Error("benchmark: reps must be >= 0");
  const int64_t ctx = prompt_len + gen_len;
  if (ctx > c.max_position_embeddings)
    throw Error("benchmark: prompt_len + gen_len = " + std::to_string(ctx) +
                " exceeds the model's context of " + std::to_string(c.max_position_embeddings));
  qwen::Generator gen(m, 1, ctx, prompt_len);
  Rng rng(config.seed);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (auto& t : prompt) t = int32_t(rng.next() % uint64_t(c.vocab_size));
  qwen::GenerationConfig g;
  g.max_new_tokens = gen_len;
  g.sampling.temperature = 0;
  std::vector<double> pre, dec;
  for (int r = 0; r < config.reps + 1; ++r) {  // the first run warms caches and page-ins
    GenerationStats st;
    gen.generate({prompt}, g, nullptr, &st);
    if (r == 0 && config.reps > 0) continue;
    pre.push_back(st.prefill_tok_s());
    dec.push_back(st.decode_tok_s());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  BenchResult r;
  r.prefill_tok_s = median(pre);
  r.decode_tok_s = median(dec);
  r.kv_cache_bytes = gen.kv_cache_bytes();
  r.workspace_bytes = gen.workspace_bytes();
  return r;
}

}  // namespace qwen::api
