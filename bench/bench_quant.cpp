// bench/bench_quant.cpp — speed of the quantised weight formats (NF4, Q8_0) against F32 and
// BF16, measured in one process, interleaved rep by rep, medians:
//   kernels: matvec GB/s of weights read from DRAM (a set of weight copies far larger than the
//            L3, cycled as a decode step cycles through layers) on the 124.7M model's shapes, and
//            matmul GFLOP/s (M = 128, 512) for NF4 / Q8_0 (dequantise a panel + f32 GEMM) vs F32;
//            the DRAM read roofline measured in the same run;
//   models:  decode tok/s of model folders given with --models (e.g. the 125m preset as F32 and
//            BF16 folders, and its `qwen quantize` NF4 and Q8_0 folders), each with its weight
//            bytes read per token (all matrices incl. lm_head), bits per parameter held in memory
//            and the cap (bytes per token of the first model / of this one).
// Usage: bench_quant [--reps N] [--threads N] [--only kernels|models]
//                    [--models DIR[:bf16][:nf4i16][:nf4f32][:lmq8][:dq],DIR,...] [--gen N]
//   :bf16 loads the folder as BF16; :nf4i16 / :nf4f32 decode NF4 layers with the 16-bit integer
//   matvec (ops::nf4_matvec_i16) / the exact f32 one (ops::nf4_matvec_f32) instead of the
//   registered 8-bit integer one (ops::nf4_matvec); :lmq8 re-quantises
//   lm_head to Q8_0 in memory (bench only, clearly labelled in the table); :dq keeps an NF4
//   folder's absmax double-quantised in memory as a QLoRA base does (Model::load nf4_compact),
//   instead of the f32 absmax inference loads it with (ops::nf4_matrix_expand_absmax).
//   --ppl FILE: first the perplexity of FILE's text (each model's own tokenizer) through the
//   decode path and the prefill path, per model (--reps 0: only that).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "generate/generator.h"
#include "machine_probe.h"
#include "model/decoder.h"
#include "model/model.h"
#include "ops/matmul.h"
#include "ops/nf4.h"
#include "ops/quant.h"
#include "qwen/tokenizer.h"

using qwen::DType;
using namespace qwen::bench;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// n_copies (N, K) matrices of dtype wt holding the same random values.
struct WeightSet {
  std::vector<std::vector<uint8_t>> copies;
  size_t bytes_each = 0;
  WeightSet(int64_t N, int64_t K, DType wt, int n_copies) {
    const auto w = randn(size_t(N * K), 7, 0.02f);
    // Quantised: the whole matrix as the loader holds it (NF4: header, codes, 8-bit absmax codes,
    // nested absmax: ~4.13 bits per weight).
    bytes_each = qwen::dtype_is_quantized(wt) ? qwen::ops::quant_matrix_bytes(wt, N, K)
                                              : size_t(N) * qwen::dtype_row_bytes(wt, K);
    std::vector<uint8_t> one(bytes_each);
    if (qwen::dtype_is_quantized(wt)) qwen::ops::quantize_matrix(wt, w.data(), one.data(), N, K);
    else qwen::convert_from_f32(w.data(), wt, one.data(), size_t(N * K));
    for (int i = 0; i < n_copies; ++i) copies.push_back(one);
  }
  // NF4 with the absmax decoded to f32, as inference loads it (ops::nf4_matrix_expand_absmax).
  static WeightSet nf4_expanded(const WeightSet& dq) {
    WeightSet e;
    for (const auto& c : dq.copies) e.copies.push_back(qwen::ops::nf4_matrix_expand_absmax(c.data()));
    e.bytes_each = e.copies[0].size();
    return e;
  }

 private:
  WeightSet() = default;
};

const DType kTypes[] = {DType::F32, DType::BF16, DType::Q8_0, DType::NF4};

void bench_kernels(int reps) {
  BigBuffer big(size_t(1) << 30);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double dram = dram_read_gbs(big, qwen::num_threads());
  std::printf("DRAM read (1 GiB sum-reduce, %d threads): %.1f GB/s\n\n", qwen::num_threads(), dram);
  struct Shape { int64_t N, K; const char* what; };
  const Shape shapes[] = {{2048, 768, "gate/up (2048x768)"}, {768, 2048, "down (768x2048)"},
                          {768, 768, "q/o (768x768)"}};
  // The registered kernel of each dtype (NF4: the 8-bit integer matvec, on the double-quantised
  // absmax a QLoRA base keeps), the same on NF4 with f32 absmax as inference loads it (row
  // nf4-am32), plus NF4's 16-bit integer and exact f32 kernels (ops::nf4_matvec_i16,
  // ops::nf4_matvec_f32) on the double-quantised weights.
  std::printf("matvec, weights cold (set of copies >= 256 MiB F32-equivalent cycled):\n");
  std::printf("%-20s %8s %10s %10s %12s %10s %10s\n", "shape", "dtype", "us/call", "GB/s", "% roofline",
              "vs BF16", "byte cap");
  constexpr size_t kRows = 7;
  const char* names[kRows] = {"f32", "bf16", "q8_0", "nf4", "nf4-am32", "nf4-i16", "nf4-f32"};
  const size_t set_of[kRows] = {0, 1, 2, 3, 4, 3, 3};
  for (const Shape& s : shapes) {
    const int n_copies = int(std::max<int64_t>(8, (int64_t(256) << 20) / (s.N * s.K * 4)));
    std::vector<WeightSet> sets;
    for (DType t : kTypes) sets.emplace_back(s.N, s.K, t, n_copies);
    sets.push_back(WeightSet::nf4_expanded(sets[3]));
    const auto x = randn(size_t(s.K), 3, 1.0f);
    std::vector<float> y(size_t(s.N));
    std::vector<std::vector<double>> us(kRows);
    for (int r = 0; r < reps; ++r)
      for (size_t ti = 0; ti < kRows; ++ti) {
        const WeightSet& ws = sets[set_of[ti]];
        const double t0 = now_s();
        for (int c = 0; c < n_copies; ++c) {
          const void* w = ws.copies[size_t(c)].data();
          if (ti == 5) qwen::ops::nf4_matvec_i16(w, x.data(), y.data(), s.N, s.K, false);
          else if (ti == 6) qwen::ops::nf4_matvec_f32(w, x.data(), y.data(), s.N, s.K, false);
          else qwen::ops::matvec(w, kTypes[std::min<size_t>(ti, 3)], x.data(), y.data(), s.N, s.K);
        }
        us[ti].push_back((now_s() - t0) / n_copies * 1e6);
      }
    const double bf16_us = median(us[1]);
    for (size_t ti = 0; ti < kRows; ++ti) {
      const WeightSet& ws = sets[set_of[ti]];
      const double u = median(us[ti]), gbs = double(ws.bytes_each) / (u * 1e-6) * 1e-9;
      std::printf("%-20s %8s %10.1f %10.1f %11.0f%% %9.2fx %9.2fx\n", s.what, names[ti], u, gbs,
                  100.0 * gbs / dram, bf16_us / u, double(sets[1].bytes_each) / double(ws.bytes_each));
    }
  }
  std::printf("vs BF16: BF16 us / these us; byte cap: BF16 bytes / these bytes (the speed-up if both "
              "read at one speed)\n");
  std::printf("\nmatmul (prefill), Y (M, N) = X (M, K) . W^T, W hot:\n");
  std::printf("%-20s %5s %8s %10s %10s\n", "shape", "M", "dtype", "ms/call", "GFLOP/s");
  for (const Shape& s : {shapes[0], shapes[1]}) {
    for (int64_t M : {128, 512}) {
      std::vector<WeightSet> sets;
      for (DType t : kTypes) sets.emplace_back(s.N, s.K, t, 1);
      const auto X = randn(size_t(M * s.K), 5, 1.0f);
      std::vector<float> Y(size_t(M * s.N));
      std::vector<std::vector<double>> ms(4);
      for (int r = 0; r < reps; ++r)
        for (size_t ti = 0; ti < 4; ++ti) {
          const double t0 = now_s();
          qwen::ops::matmul(X.data(), sets[ti].copies[0].data(), kTypes[ti], Y.data(), M, s.N, s.K);
          ms[ti].push_back((now_s() - t0) * 1e3);
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      for (size_t ti = 0; ti < 4; ++ti) {
        const double m = median(ms[ti]);
        std::printf("%-20s %5lld %8s %10.3f %10.1f\n", s.what, (long long)M, qwen::dtype_name(kTypes[ti]),
                    m, 2.0 * double(M * s.N * s.K) / (m * 1e-3) * 1e-9);
      }
    }
  }
}

// Bytes of a matrix as held in memory (an NF4 matrix's header and nested absmax included).
double linear_bytes(const qwen::Linear& l) {
  return l.dtype == DType::NF4 ? double(qwen::ops::nf4_total_bytes(l.w)) : double(l.bytes());
}

// Bytes of weights one decode step reads: every matrix (layers and lm_head) once, one
// embedding row.
double bytes_per_token(const qwen::Model& m) {
  double b = 0;
  for (const auto& L : m.layers())
    for (const qwen::Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) b += linear_bytes(*l);
  b += linear_bytes(m.lm_head());
  b += double(qwen::dtype_row_bytes(m.embed_dtype(), m.config().hidden_size));
  return b;
}

// Bench only (":lmq8" after a model folder): lm_head re-quantised in memory to Q8_0, to show what
// the layers of a 4-bit folder give when lm_head is not BF16. The folder format keeps lm_head in
// float (bitsandbytes' rule); this changes nothing on disk. The model object is not const (it was
// made by Model::load), so pointing its lm_head at a buffer the bench owns is well-defined.
void lm_head_to_q8_0(qwen::Model& m, std::vector<uint8_t>& buf) {
  const qwen::Linear& l = m.lm_head();
  if (l.n_in % 32 != 0 || qwen::dtype_is_quantized(l.dtype)) return;
  std::vector<float> w(size_t(l.n_out * l.n_in));
  qwen::convert_to_f32(l.w, l.dtype, w.data(), w.size());
  buf.assign(qwen::ops::quant_matrix_bytes(DType::Q8_0, l.n_out, l.n_in), 0);
  qwen::ops::quantize_matrix(DType::Q8_0, w.data(), buf.data(), l.n_out, l.n_in);
  auto& lm = const_cast<qwen::Linear&>(l);
  lm.w = buf.data();
  lm.dtype = DType::Q8_0;
}

// Perplexity of ids in windows of ctx tokens (non-overlapping), twice: through the decode path
// (one token per forward call, so every linear layer is a matvec: the NF4 8-bit integer kernel,
// or the f32 one under :nf4f32) and through the prefill path (the window in one forward call:
// dequantised panels + f32 GEMM). log-softmax in double.
struct Ppl {
  double decode = 0, prefill = 0;
  int64_t tokens = 0;
};

double nll_of(const float* logits, int64_t V, int32_t target) {
  double mx = logits[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(logits[v]));
  double z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(double(logits[v]) - mx);
  return std::log(z) + mx - double(logits[target]);
}

Ppl perplexity(const qwen::Model& m, const std::vector<int32_t>& ids, int64_t ctx) {
  const int64_t V = m.config().vocab_size;
  qwen::KvCache cache(m.config(), 1, ctx);
  qwen::Decoder dec(m, ctx);
  std::vector<float> logits(size_t(ctx * V));
  double nd = 0, np = 0;
  Ppl r;
  for (size_t w0 = 0; w0 + 1 < ids.size(); w0 += size_t(ctx)) {
    const int64_t T = std::min<int64_t>(ctx, int64_t(ids.size() - w0));
    if (T < 2) break;
    cache.reset(0);
    const qwen::SeqChunk all{0, T, ids.data() + w0};
    dec.forward(cache, &all, 1, qwen::LogitsMode::kAll, logits.data());
    for (int64_t t = 0; t + 1 < T; ++t) np += nll_of(logits.data() + t * V, V, ids[w0 + size_t(t) + 1]);
    cache.reset(0);
    for (int64_t t = 0; t + 1 < T; ++t) {
      const qwen::SeqChunk one{0, 1, ids.data() + w0 + size_t(t)};
      dec.forward(cache, &one, 1, qwen::LogitsMode::kLast, logits.data());
      nd += nll_of(logits.data(), V, ids[w0 + size_t(t) + 1]);
    }
    r.tokens += T - 1;
  }
  r.decode = std::exp(nd / double(r.tokens));
  r.prefill = std::exp(np / double(r.tokens));
  return r;
}

void bench_models(const std::string& list, int reps, int64_t gen_len, const std::string& ppl_text) {
  struct Entry {
    std::string dir, label;
    std::unique_ptr<qwen::Model> m;
    std::vector<double> tok_s;
    qwen::ops::detail::Nf4Decode nf4 = qwen::ops::detail::Nf4Decode::kInt8;
    bool lm_q8 = false;
    std::vector<uint8_t> lm_q8_buf;
  };
  std::vector<Entry> es;
  size_t p = 0;
  while (p <= list.size()) {
    size_t q = list.find(',', p);
    if (q == std::string::npos) q = list.size();
    std::string item = list.substr(p, q - p);
    p = q + 1;
    if (item.empty()) continue;
    Entry e;
    DType dt = DType::BF16;
    // DIR[:bf16][:nf4i16][:nf4f32][:lmq8][:dq] (any order after DIR)
    bool as_bf16 = false, compact = false;
    for (size_t c; (c = item.find_last_of(':')) != std::string::npos && c > 0;) {
      const std::string opt = item.substr(c + 1);
      if (opt == "bf16") as_bf16 = true;
      else if (opt == "nf4f32") e.nf4 = qwen::ops::detail::Nf4Decode::kF32;
      else if (opt == "nf4i16") e.nf4 = qwen::ops::detail::Nf4Decode::kInt16;
      else if (opt == "lmq8") e.lm_q8 = true;
      else if (opt == "dq") compact = true;
      else break;
      item = item.substr(0, c);
    }
    e.dir = item;
    e.m = qwen::Model::load(e.dir, as_bf16 ? &dt : nullptr, compact);
    e.label = e.dir.substr(e.dir.find_last_of('/') + 1) + (as_bf16 ? " (as bf16)" : "") +
              (e.nf4 == qwen::ops::detail::Nf4Decode::kF32     ? " [f32 kernel]"
               : e.nf4 == qwen::ops::detail::Nf4Decode::kInt16 ? " [i16 kernel]"
                                                                : "") +
              (e.lm_q8 ? " [lm_head q8_0]" : "") + (compact ? " [dq absmax]" : "");
    if (e.lm_q8) lm_head_to_q8_0(*e.m, e.lm_q8_buf);
    es.push_back(std::move(e));
  }
  if (!ppl_text.empty()) {
    std::ifstream f(ppl_text, std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + ppl_text);
    std::stringstream ss;
    ss << f.rdbuf();
    std::printf("\nperplexity of %s (%zu bytes), windows of the model's context, decode path (one "
                "token per forward: matvecs) and prefill path (one forward per window):\n",
                ppl_text.c_str(), ss.str().size());
    std::printf("%-36s %8s %12s %12s %10s\n", "model", "tokens", "ppl decode", "ppl prefill", "d/p - 1");
    for (auto& e : es) {
      const auto tok = qwen::Tokenizer::from_dir(e.dir);
      const auto ids = tok.encode(ss.str(), false);
      const int64_t ctx = std::min<int64_t>(512, e.m->config().max_position_embeddings);
      qwen::ops::detail::nf4_set_decode(e.nf4);
      const Ppl p = perplexity(*e.m, ids, ctx);
      qwen::ops::detail::nf4_set_decode(qwen::ops::detail::Nf4Decode::kInt8);
      std::printf("%-36s %8lld %12.4f %12.4f %+9.4f%%\n", e.label.c_str(), (long long)p.tokens, p.decode,
                  p.prefill, 100.0 * (p.decode / p.prefill - 1.0));
    }
    if (reps <= 0) return;
  }
  const int64_t prompt_len = 8;
  for (int r = 0; r < reps + 1; ++r)
    for (auto& e : es) {
      const auto& c = e.m->config();
      qwen::Generator gen(*e.m, 1, prompt_len + gen_len, prompt_len);
      std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
      for (int64_t i = 0; i < prompt_len; ++i) prompt[size_t(i)] = int32_t((i * 7919 + 13) % c.vocab_size);
      qwen::GenerationConfig g;
      g.max_new_tokens = gen_len;
      g.sampling.temperature = 0;
      qwen::GenerationStats st;
      qwen::ops::detail::nf4_set_decode(e.nf4);
      gen.generate({prompt}, g, nullptr, &st);
      qwen::ops::detail::nf4_set_decode(qwen::ops::detail::Nf4Decode::kInt8);
      if (r > 0) e.tok_s.push_back(st.decode_tok_s());
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  std::printf("\ndecode, batch 1, %lld new tokens after an 8-token prompt, %d threads, median of %d:\n",
              (long long)gen_len, qwen::num_threads(), reps);
  std::printf("%-28s %7s %10s %10s %10s %10s %9s %8s %9s %7s\n", "model", "matrix", "params",
              "bits/param", "q bits/w", "MB/token", "tok/s", "GB/s", "vs first", "cap");
  const double base = es.empty() ? 1 : median(es[0].tok_s);
  const double base_bpt = es.empty() ? 1 : bytes_per_token(*es[0].m);
  for (auto& e : es) {
    const double t = median(e.tok_s), bpt = bytes_per_token(*e.m);
    // Weight bytes held in memory: every tensor, NF4 matrices with their header and nested absmax.
    double held = double(e.m->weight_bytes()), q_bytes = 0, q_params = 0;
    for (const auto& L : e.m->layers())
      for (const qwen::Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
        if (qwen::dtype_is_quantized(l->dtype)) {
          held += linear_bytes(*l) - double(l->bytes());
          q_bytes += linear_bytes(*l);
          q_params += double(l->n_out * l->n_in);
        }
    const double bits = 8.0 * held / double(e.m->num_parameters());
    // cap: the speed-up over the first model if every byte were read at the same speed.
    std::printf("%-28s %7s %9.1fM %10.3f %10.3f %10.1f %9.1f %8.1f %8.2fx %6.2fx\n", e.label.c_str(),
                qwen::dtype_name(e.m->matrix_dtype()), e.m->num_parameters() / 1e6, bits,
                q_params > 0 ? 8.0 * q_bytes / q_params : 0.0, bpt / 1e6, t, t * bpt / 1e9, t / base,
                base_bpt / bpt);
  }
  std::printf("bits/param: all weights held in memory / all parameters; q bits/w: the quantised layer "
              "matrices only;\ncap: bytes read per token by the first model / by this one (the "
              "decode speed-up if both read at one speed)\n");
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 7, threads = 0;
  int64_t gen = 64;
  std::string only, models, ppl;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--reps") reps = std::atoi(next().c_str());
    else if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--only") only = next();
    else if (a == "--models") models = next();
    else if (a == "--gen") gen = std::atoll(next().c_str());
    else if (a == "--ppl") ppl = next();
    else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
  }
  qwen::set_num_threads(threads);
  std::printf("bench_quant: %d threads, kernels %s\n", qwen::num_threads(),
              qwen::cpu_features().avx2 ? "avx2" : "scalar");
  try {
    if (only.empty() || only == "kernels") bench_kernels(reps);
    if ((only.empty() || only == "models") && !models.empty()) bench_models(models, reps, gen, ppl);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
