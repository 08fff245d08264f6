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
//                    [--models DIR[:bf16],DIR,...] [--gen N]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "generate/generator.h"
#include "machine_probe.h"
#include "model/model.h"
#include "ops/matmul.h"
#include "ops/nf4.h"
#include "ops/quant.h"

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
  std::printf("matvec, weights cold (set of copies >= 256 MiB F32-equivalent cycled):\n");
  std::printf("%-20s %8s %10s %10s %12s\n", "shape", "dtype", "us/call", "GB/s", "% roofline");
  for (const Shape& s : shapes) {
    const int n_copies = int(std::max<int64_t>(8, (int64_t(256) << 20) / (s.N * s.K * 4)));
    std::vector<WeightSet> sets;
    for (DType t : kTypes) sets.emplace_back(s.N, s.K, t, n_copies);
    const auto x = randn(size_t(s.K), 3, 1.0f);
    std::vector<float> y(size_t(s.N));
    std::vector<std::vector<double>> us(4);
    for (int r = 0; r < reps; ++r)
      for (size_t ti = 0; ti < 4; ++ti) {
        const double t0 = now_s();
        for (int c = 0; c < n_copies; ++c)
          qwen::ops::matvec(sets[ti].copies[size_t(c)].data(), kTypes[ti], x.data(), y.data(), s.N, s.K);
        us[ti].push_back((now_s() - t0) / n_copies * 1e6);
      }
    for (size_t ti = 0; ti < 4; ++ti) {
      const double u = median(us[ti]), gbs = double(sets[ti].bytes_each) / (u * 1e-6) * 1e-9;
      std::printf("%-20s %8s %10.1f %10.1f %11.0f%%\n", s.what, qwen::dtype_name(kTypes[ti]), u, gbs,
                  100.0 * gbs / dram);
    }
  }
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

void bench_models(const std::string& list, int reps, int64_t gen_len) {
  struct Entry { std::string dir, label; std::unique_ptr<qwen::Model> m; std::vector<double> tok_s; };
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
    const bool as_bf16 = item.size() > 5 && item.substr(item.size() - 5) == ":bf16";
    e.dir = as_bf16 ? item.substr(0, item.size() - 5) : item;
    e.m = qwen::Model::load(e.dir, as_bf16 ? &dt : nullptr);
    e.label = e.dir.substr(e.dir.find_last_of('/') + 1) + (as_bf16 ? " (as bf16)" : "");
    es.push_back(std::move(e));
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
      gen.generate({prompt}, g, nullptr, &st);
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
  std::string only, models;
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
    else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
  }
  qwen::set_num_threads(threads);
  std::printf("bench_quant: %d threads, kernels %s\n", qwen::num_threads(),
              qwen::cpu_features().avx2 ? "avx2" : "scalar");
  try {
    if (only.empty() || only == "kernels") bench_kernels(reps);
    if ((only.empty() || only == "models") && !models.empty()) bench_models(models, reps, gen);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
