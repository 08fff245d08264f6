// tests/test_serve_engine.cpp — the serving engine on real (small, random-weight) models:
// the paged KV cache gives the decoder the same logits as the contiguous cache; batch invariance
// (8 concurrent requests, greedy and seeded sampling, produce exactly the tokens each produces
// alone, also with chunked prefill, tiny blocks, preemption and BF16 weights); prefix caching;
// cancellation frees blocks at once; stop ids and stop strings end the text at the right place;
// streamed text equals the tokenizer's decode; queue limit and request validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <atomic>
#include <cstdlib>
#include <new>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "model/decoder.h"
#include "model/model.h"
#include "ops/matmul.h"
#include "ops/nf4.h"
#include "ops/q8_0.h"
#include "ops/quant.h"
#include "qwen/tokenizer.h"
#include "serve/engine.h"
#include "serve/paged_cache.h"
#include "test_util.h"
#include "train/lora.h"

namespace {

using namespace qwen;
using namespace qwen::serve;
using Tokens = std::vector<int32_t>;

ModelConfig small_config(int64_t vocab, int64_t heads, int64_t kv_heads, int64_t max_pos = 512) {
  ModelConfig c;
  c.architecture = "Qwen2ForCausalLM";
  c.model_type = "qwen2";
  c.qkv_bias = true;
  c.vocab_size = vocab;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 64 / heads;
  c.max_position_embeddings = max_pos;
  c.rope_theta = 10000.0;
  c.initializer_range = 0.5;  // large weights: peaked, varied logits
  return c;
}

std::vector<Tokens> random_prompts(int n, int64_t vocab, uint32_t seed, int min_len, int max_len) {
  std::mt19937 rng(seed);
  std::vector<Tokens> out;
  for (int i = 0; i < n; ++i) {
    Tokens p(size_t(min_len + int(rng() % uint32_t(max_len - min_len + 1))));
    for (auto& t : p) t = int32_t(rng() % uint32_t(vocab));
    out.push_back(p);
  }
  return out;
}

GenerationRequest greedy(const Tokens& prompt, int64_t max_tokens) {
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.0f;
  r.want_text = false;
  r.want_logprobs = true;
  return r;
}

// Each request alone on a fresh engine.
std::vector<RequestOutput> run_alone(const Model& m, const EngineConfig& ec,
                                     const std::vector<GenerationRequest>& reqs) {
  std::vector<RequestOutput> out;
  for (const auto& r : reqs) {
    Engine e(m, nullptr, ec);
    auto h = e.submit(r);
    e.run_until_idle();
    out.push_back(h->wait());
  }
  return out;
}

// All requests together on one engine.
std::vector<RequestOutput> run_crowd(Engine& e, const std::vector<GenerationRequest>& reqs) {
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (const auto& r : reqs) hs.push_back(e.submit(r));
  e.run_until_idle();
  std::vector<RequestOutput> out;
  for (auto& h : hs) out.push_back(h->wait());
  return out;
}

// ---- paged cache through the decoder ------------------------------------------------------

// The decoder over the paged cache (shuffled blocks, odd block size) gives the logits of the
// decoder over the contiguous cache, for prefill in pieces and decode of 3 sequences at once.
TEST(ServeEngine, PagedCacheMatchesContiguousCache) {
  for (const char* name : {"qwen2_gqa", "qwen3_headdim", "llama_gqa8"}) {
    SCOPED_TRACE(name);
    auto m = Model::load(qwen_test::data_path(std::string("models/") + name));
    const ModelConfig& c = m->config();
    const int64_t V = c.vocab_size, bs = 5, n_seq = 3, max_len = 60;
    KvCache contig(c, n_seq, max_len);
    const int32_t n_blocks = int32_t(n_seq * ((max_len + bs - 1) / bs));
    PagedKvCache paged(c, n_blocks, int32_t(bs), n_seq);
    std::vector<int32_t> ids(static_cast<size_t>(n_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(3);
    std::shuffle(ids.begin(), ids.end(), rng);
    const int64_t per = max_len / bs;
    for (int64_t s = 0; s < n_seq; ++s) paged.bind(s, ids.data() + s * per, per, 0);
    Decoder d1(*m, 64), d2(*m, 64);
    std::vector<Tokens> seqs = random_prompts(int(n_seq), V, 11, 50, 55);
    std::vector<float> l1(size_t(n_seq * V)), l2(l1.size());
    std::vector<int64_t> done(size_t(n_seq), 0);
    // Pieces of 1 .. 13 tokens per sequence per call until each has 50 tokens.
    for (int round = 0; round < 40; ++round) {
      std::vector<SeqChunk> ch;
      for (int64_t s = 0; s < n_seq; ++s) {
        const int64_t n = std::min<int64_t>(1 + int64_t(rng() % 13), 50 - done[size_t(s)]);
        if (n <= 0) continue;
        ch.push_back(SeqChunk{s, n, seqs[size_t(s)].data() + done[size_t(s)]});
        done[size_t(s)] += n;
      }
      if (ch.empty()) break;
      d1.forward(contig, ch.data(), ch.size(), LogitsMode::kLast, l1.data());
      d2.forward(paged, ch.data(), ch.size(), LogitsMode::kLast, l2.data());
      for (size_t i = 0; i < ch.size() * size_t(V); ++i)
        ASSERT_NEAR(l1[i], l2[i], 1e-4f * (1.0f + std::fabs(l1[i]))) << "round " << round;
      for (int64_t s = 0; s < n_seq; ++s) ASSERT_EQ(contig.len(s), paged.len(s));
    }
  }
}

// ---- batch invariance -----------------------------------------------------------------------

// A random model whose seven projections per layer are quantised to Q8_0 or NF4 (embedding,
// norms and the LM head stay F32). NF4 comes in the inference form (f32 absmax, what a folder
// loaded for serving holds) or, with nf4_compact, the double-quantised QLoRA form.
std::unique_ptr<Model> random_quant_model(const ModelConfig& c, uint64_t seed, DType dtype,
                                          bool nf4_compact = false) {
  std::shared_ptr<Model> base = Model::random(c, seed);
  std::vector<LayerWeights> layers = base->layers();
  auto bufs = std::make_shared<std::vector<std::vector<uint8_t>>>();
  bufs->reserve(layers.size() * 7);
  for (LayerWeights& L : layers)
    for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
      const float* w = static_cast<const float*>(l->w);
      if (dtype == DType::NF4) {
        std::vector<uint8_t> q = ops::nf4_quantize_matrix(w, l->n_out, l->n_in);
        bufs->push_back(nf4_compact ? std::move(q) : ops::nf4_matrix_expand_absmax(q.data()));
      } else {
        bufs->emplace_back(size_t(l->n_out) * dtype_row_bytes(dtype, l->n_in));
        ops::quantize_matrix(dtype, w, bufs->back().data(), l->n_out, l->n_in);
      }
      l->w = bufs->back().data();
      l->dtype = dtype;
    }
  auto keep = std::make_shared<std::pair<std::shared_ptr<Model>, decltype(bufs)>>(base, bufs);
  return Model::from_weights(base->config(), keep, base->embed(), base->embed_dtype(),
                             base->final_norm(), base->lm_head(), layers);
}

struct InvarianceCase {
  const char* what;
  int32_t block_size;
  int64_t step_tokens;
  int32_t n_blocks;  // 0: plenty
  bool sample;
  DType dtype;
  bool nf4_compact = false;
};

TEST(ServeEngine, ConcurrentRequestsMatchRunningAlone) {
  const std::vector<InvarianceCase> cases = {
      {"greedy, blocks of 16", 16, 512, 0, false, DType::F32},
      {"greedy, chunked prefill mixed with decode, blocks of 3", 3, 24, 0, false, DType::F32},
      {"greedy, tight pool: preemption and recomputation", 4, 64, 40, false, DType::F32},
      {"seeded sampling", 16, 40, 0, true, DType::F32},
      {"greedy, BF16 weights", 8, 512, 0, false, DType::BF16},
      // Q8_0 projections: with pre-packing (F32 LM head packed) there is no companion row, the
      // multi-row Q8_0 kernel alone keeps every row's sums independent of the batch.
      {"greedy, Q8_0 projections, chunked prefill", 4, 24, 0, false, DType::Q8_0},
      {"seeded sampling, Q8_0 projections", 16, 40, 0, true, DType::Q8_0},
      // NF4 projections (FFN 128: NF4 rows are whole 64-blocks): the multi-row 8-bit kernel
      // sums every row as the 1-row matvec does (ops/nf4.h), in both absmax forms.
      {"greedy, NF4 projections, chunked prefill", 4, 24, 0, false, DType::NF4},
      {"seeded sampling, NF4 projections (double-quantised absmax)", 16, 40, 0, true, DType::NF4, true},
  };
  // Both ways to batch invariance: pre-packed weights (a packed 1-row product rounds as a batched
  // one, no companion row) and raw weights with the companion row.
  for (const bool prepack : {true, false})
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.what);
    SCOPED_TRACE(prepack ? "pre-packed weights" : "raw weights, companion row");
    ModelConfig cfg = small_config(384, 4, 2);
    if (tc.dtype == DType::NF4) cfg.intermediate_size = 128;
    auto m = dtype_is_quantized(tc.dtype) ? random_quant_model(cfg, 42, tc.dtype, tc.nf4_compact)
                                          : Model::random(cfg, 42, tc.dtype);
    std::vector<Tokens> prompts = random_prompts(8, 384, 7, 3, 45);
    std::vector<GenerationRequest> reqs;
    for (size_t i = 0; i < prompts.size(); ++i) {
      GenerationRequest r = greedy(prompts[i], 20 + int64_t(i) * 3);
      if (tc.sample) {
        r.sampling.temperature = 0.9f;
        r.sampling.top_p = 0.95f;
        r.sampling.top_k = 50;
        r.sampling.presence_penalty = 0.3f;
        r.sampling.frequency_penalty = 0.2f;
        r.sampling.seed = 1000 + i;
      }
      reqs.push_back(r);
    }
    EngineConfig ec;
    ec.block_size = tc.block_size;
    ec.max_step_tokens = tc.step_tokens;
    ec.max_running = 8;
    if (tc.n_blocks) ec.n_blocks = tc.n_blocks;
    ec.prepack_weights = prepack;
    const std::vector<RequestOutput> alone = run_alone(*m, ec, reqs);
    Engine crowd(*m, nullptr, ec);
    const bool quant_invariant = tc.dtype == DType::Q8_0 ? ops::q8_0_matmul_row_invariant()
                                 : tc.dtype == DType::NF4  ? ops::nf4_matmul_row_invariant()
                                                           : true;
    EXPECT_EQ(crowd.uses_companion_row(), !prepack || !quant_invariant);
    const std::vector<RequestOutput> together = run_crowd(crowd, reqs);
    for (size_t i = 0; i < reqs.size(); ++i) {
      ASSERT_EQ(int64_t(alone[i].tokens.size()), reqs[i].max_tokens);
      EXPECT_EQ(alone[i].tokens, together[i].tokens) << "request " << i;
      // The log-probabilities too, to the bit: any rounding difference in the batched forward
      // would show here even when it does not change a token.
      ASSERT_EQ(alone[i].logprobs.size(), alone[i].tokens.size());
      EXPECT_EQ(alone[i].logprobs, together[i].logprobs) << "request " << i;
    }
    if (tc.n_blocks) {
      EXPECT_GT(crowd.n_preemptions(), 0) << "the tight pool must force preemption";
    }
    EXPECT_EQ(crowd.kv_blocks_used(), 0);
    // The outputs are not trivial: requests differ from each other.
    EXPECT_NE(together[0].tokens, together[1].tokens);
  }
}

// prepack_weights files every projection and the (tied) LM head with the matmul registry while
// the engine lives, and releases them with it; LoRA and mHC keep the companion row, as does
// prepack_weights = false; a Q8_0 weight does not need it (its matmul rows sum as its matvec).
TEST(ServeEngine, PrepackedWeightsLiveAsLongAsTheEngine) {
  ModelConfig c = small_config(384, 4, 2);
  c.tie_word_embeddings = true;
  auto m = Model::random(c, 9, DType::BF16);
  const Linear& q0 = m->layers()[0].q;
  const Linear& head = m->lm_head();
  ASSERT_EQ(head.w, m->embed());
  ASSERT_EQ(ops::find_prepacked_weight(q0.w, q0.dtype, q0.n_out, q0.n_in), nullptr);
  {
    EngineConfig ec;
    ec.max_running = 4;
    ec.prepack_weights = true;
    Engine e(*m, nullptr, ec);
    EXPECT_EQ(e.n_packed_weights(), 7 * c.num_hidden_layers + 1);
    EXPECT_FALSE(e.uses_companion_row());
    size_t raw = 0;
    for (const LayerWeights& L : m->layers())
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) raw += l->bytes();
    raw += head.bytes();
    EXPECT_GE(e.packed_weight_bytes(), raw);
    EXPECT_LT(e.packed_weight_bytes(), raw + raw / 2);  // panel padding only
    EXPECT_NE(ops::find_prepacked_weight(q0.w, q0.dtype, q0.n_out, q0.n_in), nullptr);
    EXPECT_NE(ops::find_prepacked_weight(head.w, head.dtype, head.n_out, head.n_in), nullptr);
    {
      Engine e2(*m, nullptr, ec);  // a second engine on the same model shares the filings
      EXPECT_EQ(e2.n_packed_weights(), e.n_packed_weights());
    }
    EXPECT_NE(ops::find_prepacked_weight(q0.w, q0.dtype, q0.n_out, q0.n_in), nullptr);
    ec.prepack_weights = false;
    Engine raw_engine(*m, nullptr, ec);
    EXPECT_EQ(raw_engine.n_packed_weights(), 0);
    EXPECT_TRUE(raw_engine.uses_companion_row());
    ec.batch_invariant = false;
    EXPECT_FALSE(Engine(*m, nullptr, ec).uses_companion_row());
  }
  EXPECT_EQ(ops::find_prepacked_weight(q0.w, q0.dtype, q0.n_out, q0.n_in), nullptr);
  EXPECT_EQ(ops::find_prepacked_weight(head.w, head.dtype, head.n_out, head.n_in), nullptr);
  // A Q8_0 weight is not packed, but its multi-row kernel sums each row exactly as the 1-row
  // matvec (ops/q8_0.h), so with the float weights packed no companion row is needed.
  std::shared_ptr<Model> base = Model::random(small_config(384, 4, 2), 9);
  std::vector<LayerWeights> layers = base->layers();
  Linear& d = layers[0].down;
  auto qbuf = std::make_shared<std::vector<uint8_t>>(size_t(d.n_out) *
                                                     dtype_row_bytes(DType::Q8_0, d.n_in));
  ops::quantize_matrix(DType::Q8_0, static_cast<const float*>(d.w), qbuf->data(), d.n_out,
                       d.n_in);
  d.w = qbuf->data();
  d.dtype = DType::Q8_0;
  auto keep = std::make_shared<std::pair<std::shared_ptr<Model>, decltype(qbuf)>>(base, qbuf);
  auto mq = Model::from_weights(base->config(), keep, base->embed(), base->embed_dtype(),
                                base->final_norm(), base->lm_head(), layers);
  EngineConfig ec;
  ec.max_running = 4;
  ec.prepack_weights = true;
  Engine eq(*mq, nullptr, ec);
  EXPECT_EQ(eq.n_packed_weights(), 7 * 2);
  EXPECT_EQ(eq.uses_companion_row(), !ops::q8_0_matmul_row_invariant());
  ec.prepack_weights = false;  // the float weights unpacked: the companion row is back
  EXPECT_TRUE(Engine(*mq, nullptr, ec).uses_companion_row());
}

// A LoRA adapter saved by Hugging Face PEFT (tests/data/lora/qwen2_gqa_r4, from
// gen_peft_golden.py) served unmerged on its base model. Requests whose prompts are the golden's
// prefixes, all in one crowd with chunked prefill: each first token's log-probability is PEFT's
// log-softmax of the golden logits at that position (the logits agree within 1e-4 in
// LoraPeft.Qwen2AllTargets; a log-softmax adds at most as much again), and the token is PEFT's
// argmax wherever the top two logits are not within 1e-3. Longer generations in a crowd give
// exactly the tokens and log-probabilities each gives alone (an adapter keeps the companion
// row), with and without pre-packed base weights.
TEST(ServeEngine, LoraAdapterServedUnmergedMatchesPeftAndIsBatchInvariant) {
  const std::string dir = qwen_test::data_path("lora/qwen2_gqa_r4");
  const auto g = qwen_test::read_json(dir + "/golden.json");
  auto m = Model::load(qwen_test::data_path("models/" + g["base"].get<std::string>()));
  auto adapter = train::LoraAdapter::load(dir, m->config());
  adapter->attach(*m);
  Tokens ids;
  for (const auto& v : g["input_ids"]) ids.push_back(v.get<int32_t>());
  const std::vector<float> ref = qwen_test::read_f32(dir + "/logits.f32");
  const int64_t V = m->config().vocab_size, T = int64_t(ids.size());
  ASSERT_EQ(int64_t(ref.size()), T * V);
  for (const bool prepack : {true, false}) {
    SCOPED_TRACE(prepack ? "pre-packed base weights" : "raw base weights");
    EngineConfig ec;
    ec.block_size = 4;
    ec.max_step_tokens = 24;  // the 12 prompts (78 tokens) take several chunked steps
    ec.max_running = 16;
    ec.prepack_weights = prepack;
    std::vector<GenerationRequest> firsts;
    for (int64_t t = 1; t <= T; ++t) firsts.push_back(greedy(Tokens(ids.begin(), ids.begin() + t), 1));
    Engine e(*m, nullptr, ec);
    EXPECT_TRUE(e.uses_companion_row());
    const std::vector<RequestOutput> got = run_crowd(e, firsts);
    int n_clear = 0;
    for (int64_t t = 1; t <= T; ++t) {
      SCOPED_TRACE("prefix of " + std::to_string(t) + " tokens");
      const float* row = ref.data() + (t - 1) * V;
      const RequestOutput& o = got[size_t(t - 1)];
      ASSERT_EQ(o.tokens.size(), 1u);
      ASSERT_EQ(o.logprobs.size(), 1u);
      const float mx = *std::max_element(row, row + V);
      double sum = 0;
      for (int64_t j = 0; j < V; ++j) sum += std::exp(double(row[j] - mx));
      const double want = double(row[o.tokens[0]] - mx) - std::log(sum);
      EXPECT_NEAR(o.logprobs[0], want, 2e-4);
      std::vector<float> sorted(row, row + V);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      if (sorted[0] - sorted[1] > 1e-3f) {
        ++n_clear;
        EXPECT_EQ(o.tokens[0], int32_t(std::max_element(row, row + V) - row));
      }
    }
    EXPECT_GE(n_clear, int(T) - 2) << "the golden should have few near ties";
    std::vector<GenerationRequest> longer;
    for (int64_t t = 2; t <= T; ++t) longer.push_back(greedy(Tokens(ids.begin(), ids.begin() + t), 10 + t));
    const std::vector<RequestOutput> alone = run_alone(*m, ec, longer);
    Engine crowd(*m, nullptr, ec);
    const std::vector<RequestOutput> together = run_crowd(crowd, longer);
    for (size_t i = 0; i < longer.size(); ++i) {
      EXPECT_EQ(alone[i].tokens, together[i].tokens) << "request " << i;
      EXPECT_EQ(alone[i].logprobs, together[i].logprobs) << "request " << i;
    }
    EXPECT_EQ(crowd.kv_blocks_used(), 0);
  }
}

TEST(ServeEngine, PrefixCacheReusesBlocksAndKeepsOutput) {
  auto m = Model::random(small_config(384, 4, 2), 5);
  EngineConfig ec;
  ec.block_size = 4;
  Engine e(*m, nullptr, ec);
  Tokens prompt = random_prompts(1, 384, 9, 37, 37)[0];
  auto h1 = e.submit(greedy(prompt, 10));
  e.run_until_idle();
  const RequestOutput o1 = h1->wait();
  EXPECT_EQ(o1.cached_tokens, 0);
  auto h2 = e.submit(greedy(prompt, 10));
  e.run_until_idle();
  const RequestOutput o2 = h2->wait();
  EXPECT_EQ(o2.cached_tokens, 36);  // 9 full blocks; the last prompt token is recomputed
  EXPECT_EQ(o1.tokens, o2.tokens);
  EXPECT_EQ(o2.prompt_tokens, 37);
  EXPECT_EQ(o2.completion_tokens, 10);
}

// ---- cancellation ---------------------------------------------------------------------------

TEST(ServeEngine, CancelFreesBlocksAtOnce) {
  auto m = Model::random(small_config(384, 4, 2, 2048), 5);
  EngineConfig ec;
  ec.block_size = 4;
  Engine e(*m, nullptr, ec);
  e.start();
  auto h = e.submit(greedy(random_prompts(1, 384, 1, 30, 30)[0], 1500));
  RequestOutput out;
  while (out.tokens.size() < 3) h->next(&out, std::chrono::milliseconds(1000));
  EXPECT_GT(e.kv_blocks_used(), 0);
  h->cancel();
  const auto t0 = std::chrono::steady_clock::now();
  while (!out.finished) h->next(&out, std::chrono::milliseconds(1000));
  EXPECT_EQ(out.reason, FinishReason::kCancelled);
  EXPECT_LT(out.tokens.size(), 1500u);
  while (e.kv_blocks_used() != 0 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(e.kv_blocks_used(), 0);
  EXPECT_EQ(e.n_active(), 0);
  // After stop() nothing is accepted.
  e.stop(false);
  EXPECT_THROW(e.submit(greedy({1, 2}, 2)), Error);
}

TEST(ServeEngine, QueueLimitAndValidation) {
  auto m = Model::random(small_config(384, 4, 2, 128), 5);
  EngineConfig ec;
  ec.max_running = 1;
  ec.max_queue = 2;
  Engine e(*m, nullptr, ec);  // not started: nothing leaves the queue
  for (int i = 0; i < 3; ++i) e.submit(greedy({1, 2, 3}, 2));  // 1 free slot + 2 queued
  EXPECT_THROW(e.submit(greedy({1, 2, 3}, 2)), QueueFull);
  EXPECT_THROW(e.submit(greedy({}, 2)), Error);
  EXPECT_THROW(e.submit(greedy({1, 384}, 2)), Error);     // id out of the vocabulary
  EXPECT_THROW(e.submit(greedy({1, 2}, 0)), Error);
  EXPECT_THROW(e.submit(greedy(Tokens(100, 1), 29)), Error);  // 129 tokens > context 128
  GenerationRequest text = greedy({1, 2}, 2);
  text.want_text = true;
  EXPECT_THROW(e.submit(text), Error);  // no tokenizer
  e.run_until_idle();
  EXPECT_EQ(e.n_active(), 0);
}

// ---- no allocation per decode step ---------------------------------------------------------

// Counts the operator new calls of the process while g_count_news is set.
std::atomic<bool> g_count_news{false};
std::atomic<int64_t> g_news{0};

}  // namespace

// The replacements pair malloc/aligned_alloc with free; GCC cannot see that and warns.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (g_count_news.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a) {
  if (g_count_news.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  const size_t al = size_t(a);
  if (void* p = std::aligned_alloc(al, (std::max<size_t>(n, 1) + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

// The allocations of serving a batch of requests do not depend on how many tokens they
// generate: the decode steps (scheduling, block growth, prefix-cache inserts, the forward,
// sampling with every filter and penalty, log-probabilities, stop checks, hand-over to the
// handles) allocate nothing. Text is off: the tokenizer's streaming decoder returns strings.
TEST(ServeEngine, DecodeStepsDoNotAllocate) {
  auto m = Model::random(small_config(384, 4, 2), 3);
  const std::vector<Tokens> prompts = random_prompts(4, 384, 21, 5, 30);
  auto requests = [&](int64_t max_tokens, bool sample, uint64_t seed) {
    std::vector<GenerationRequest> out;
    for (size_t i = 0; i < prompts.size(); ++i) {
      GenerationRequest r = greedy(prompts[i], max_tokens);
      if (sample) {  // every filter and penalty, on different requests
        r.sampling.temperature = 0.8f;
        r.sampling.top_k = i % 2 ? 40 : 0;
        r.sampling.top_p = i % 2 ? 1.0f : 0.9f;
        r.sampling.min_p = i == 2 ? 0.01f : 0.0f;
        r.sampling.repetition_penalty = 1.1f;
        r.sampling.presence_penalty = 0.2f;
        r.sampling.frequency_penalty = 0.1f;
        r.sampling.seed = seed + i;
      }
      out.push_back(r);
    }
    return out;
  };
  auto news_for = [&](int64_t max_tokens, bool sample) {
    EngineConfig ec;
    ec.block_size = 4;  // a new block (and a prefix-cache insert) every 4 tokens
    ec.max_running = 4;
    Engine e(*m, nullptr, ec);
    run_crowd(e, requests(max_tokens, sample, 1));  // warm-up: first-call buffers
    std::vector<std::shared_ptr<RequestHandle>> hs;
    for (const GenerationRequest& r : requests(max_tokens, sample, 100)) hs.push_back(e.submit(r));
    g_news = 0;
    g_count_news = true;
    e.run_until_idle();
    g_count_news = false;
    for (auto& h : hs) EXPECT_EQ(int64_t(h->wait().tokens.size()), max_tokens);
    return g_news.load();
  };
  for (bool sample : {false, true}) {
    SCOPED_TRACE(sample ? "sampling" : "greedy");
    const int64_t short_run = news_for(6, sample), long_run = news_for(40, sample);
    EXPECT_GT(short_run, 0);  // admission allocates (the request's state): the counter works
    EXPECT_EQ(long_run, short_run) << "34 more decode steps allocated";
  }
}

// ---- text: stop ids, stop strings, streaming ------------------------------------------------

class ServeEngineText : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tok_ = new Tokenizer(Tokenizer::from_dir(qwen_test::data_path("tokenizer/qwen3")));
    ModelConfig c = small_config(tok_->vocab_size(), 4, 2, 256);
    c.hidden_size = 32;
    c.head_dim = 8;
    c.num_hidden_layers = 1;
    c.initializer_range = 0.3;
    c.tie_word_embeddings = true;
    model_ = Model::random(c, 77).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tok_;
  }
  GenerationRequest req(const std::string& text, int64_t max_tokens) {
    GenerationRequest r;
    r.prompt = tok_->encode(text, true);
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0.0f;
    return r;
  }
  RequestOutput run(const GenerationRequest& r) {
    Engine e(*model_, tok_, EngineConfig{});
    auto h = e.submit(r);
    e.run_until_idle();
    return h->wait();
  }
  static Tokenizer* tok_;
  static Model* model_;
};
Tokenizer* ServeEngineText::tok_ = nullptr;
Model* ServeEngineText::model_ = nullptr;

TEST_F(ServeEngineText, StreamedTextEqualsDecode) {
  Engine e(*model_, tok_, EngineConfig{});
  e.start();
  auto h = e.submit(req("Hello, my name is", 40));
  RequestOutput out;
  std::string joined;
  size_t n_pieces = 0;
  for (;;) {
    RequestOutput piece;
    if (!h->next(&piece, std::chrono::milliseconds(2000))) continue;
    joined += piece.text;
    out.tokens.insert(out.tokens.end(), piece.tokens.begin(), piece.tokens.end());
    ++n_pieces;
    if (piece.finished) {
      out.reason = piece.reason;
      break;
    }
  }
  EXPECT_EQ(out.reason, FinishReason::kLength);
  ASSERT_EQ(out.tokens.size(), 40u);
  EXPECT_EQ(joined, tok_->decode(out.tokens, true));
  EXPECT_GT(n_pieces, 1u);
}

TEST_F(ServeEngineText, StopIdsAndStopStrings) {
  const RequestOutput full = run(req("The quick brown fox", 40));
  ASSERT_EQ(full.tokens.size(), 40u);
  const std::string text = tok_->decode(full.tokens, true);
  ASSERT_EQ(full.text, text);
  // Stop id: the 6th generated token (first occurrence) ends it; its text is left out.
  {
    GenerationRequest r = req("The quick brown fox", 40);
    const int32_t stop = full.tokens[5];
    r.stop_ids = {stop};
    const RequestOutput o = run(r);
    const size_t first = size_t(std::find(full.tokens.begin(), full.tokens.end(), stop) - full.tokens.begin());
    EXPECT_EQ(o.reason, FinishReason::kStop);
    EXPECT_EQ(o.tokens, Tokens(full.tokens.begin(), full.tokens.begin() + long(first) + 1));
    EXPECT_EQ(o.text, tok_->decode(Tokens(full.tokens.begin(), full.tokens.begin() + long(first)), true));
  }
  // Stop string: a piece of the text from its middle; output ends right before its first match.
  {
    ASSERT_GT(text.size(), 20u);
    const std::string stop = text.substr(text.size() / 2, 5);
    GenerationRequest r = req("The quick brown fox", 40);
    r.stop = {"this string never appears 12345", stop};
    const RequestOutput o = run(r);
    EXPECT_EQ(o.reason, FinishReason::kStop);
    EXPECT_EQ(o.text, text.substr(0, text.find(stop)));
    EXPECT_LT(o.tokens.size(), full.tokens.size());
  }
}

}  // namespace
