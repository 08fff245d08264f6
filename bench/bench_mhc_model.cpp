// bench/bench_mhc_model.cpp — what mHC / HC residual streams cost at model level (issue 6):
// training step time (forward + backward through TrainModel) and KV-cache decode time per token
// of a plain model vs the same model with HC and mHC sites (n streams), and the activation
// memory against the spec's formula. Targets: step ≤ 1.10× and decode ≤ 1.10× the baseline.
//
//   bench_mhc_model [--layers 24] [--hidden 64] [--ffn 192] [--heads 4] [--kv 2] [--vocab 4093]
//                   [--n 4] [--batch 8] [--seq 64] [--steps 6] [--decode 128] [--recompute]
//                   [--only base|hc|mhc]   (one variant alone, for perf profiles; no ratios)
// Prints one line per variant and the ratios to the baseline. Medians of --steps runs after one
// warm-up; the variants are interleaved so machine load affects them alike.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/decoder.h"
#include "model/model.h"
#include "train/train_model.h"

using qwen::ModelConfig;
using qwen::train::TrainModel;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Variant {
  std::string name;
  ModelConfig cfg;
  std::unique_ptr<TrainModel> tm;
  std::unique_ptr<qwen::Model> model;
  std::vector<double> step_s, decode_s;
};

}  // namespace

int main(int argc, char** argv) {
  int64_t layers = 24, hidden = 64, ffn = 192, heads = 4, kv = 2, vocab = 4093, n = 4, B = 8,
          T = 64, steps = 6, n_decode = 128;
  bool recompute = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> int64_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (a == "--layers") layers = next();
    else if (a == "--hidden") hidden = next();
    else if (a == "--ffn") ffn = next();
    else if (a == "--heads") heads = next();
    else if (a == "--kv") kv = next();
    else if (a == "--vocab") vocab = next();
    else if (a == "--n") n = next();
    else if (a == "--batch") B = next();
    else if (a == "--seq") T = next();
    else if (a == "--steps") steps = next();
    else if (a == "--decode") n_decode = next();
    else if (a == "--recompute") recompute = true;
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else {
      std::fprintf(stderr, "unknown option %s (see the header of bench_mhc_model.cpp)\n", a.c_str());
      return 2;
    }
  }
  ModelConfig base;
  base.vocab_size = vocab;
  base.hidden_size = hidden;
  base.intermediate_size = ffn;
  base.num_hidden_layers = layers;
  base.num_attention_heads = heads;
  base.num_key_value_heads = kv;
  base.head_dim = hidden / heads;
  base.max_position_embeddings = 4096;
  base.qkv_bias = true;
  base.tie_word_embeddings = true;

  std::vector<Variant> vs(3);
  vs[0].name = "baseline";
  vs[0].cfg = base;
  vs[1].name = "HC n=" + std::to_string(n);
  vs[1].cfg = base;
  vs[1].cfg.use_mhc = true;
  vs[1].cfg.mhc_num_streams = n;
  vs[1].cfg.mhc_mode = "hc";
  vs[2].name = "mHC n=" + std::to_string(n);
  vs[2].cfg = vs[1].cfg;
  vs[2].cfg.mhc_mode = "mhc";
  if (!only.empty()) {
    const int keep = only == "base" ? 0 : only == "hc" ? 1 : only == "mhc" ? 2 : -1;
    if (keep < 0) {
      std::fprintf(stderr, "--only takes base, hc or mhc\n");
      return 2;
    }
    Variant v = std::move(vs[size_t(keep)]);
    vs.clear();
    vs.push_back(std::move(v));
  }
  qwen::train::TrainModelOptions opt;
  opt.recompute = recompute;
  for (auto& v : vs) {
    v.tm = std::make_unique<TrainModel>(v.cfg, 1, opt);
    v.model = v.tm->as_model();
  }
  std::printf("config: %lld layers, C=%lld, F=%lld, H=%lld, KV=%lld, V=%lld; batch %lld x seq %lld%s\n",
              (long long)layers, (long long)hidden, (long long)ffn, (long long)heads, (long long)kv,
              (long long)vocab, (long long)B, (long long)T, recompute ? ", recompute" : "");

  qwen::Rng rng(5);
  std::vector<int32_t> tok(size_t(B * T)), tgt(size_t(B * T));
  for (auto& t : tok) t = int32_t(rng.next() % uint64_t(vocab));
  for (auto& t : tgt) t = int32_t(rng.next() % uint64_t(vocab));

  // Training steps, interleaved.
  for (int64_t s = 0; s <= steps; ++s)
    for (auto& v : vs) {
      v.tm->zero_grad();
      const double t0 = now();
      v.tm->forward_backward(tok.data(), tgt.data(), B, T, 1.0f / float(B * T));
      if (s > 0) v.step_s.push_back(now() - t0);
    }
  // Decode: n_decode tokens one at a time after a 1-token prompt, interleaved per repeat (7
  // repeats: on the shared machine single repeats vary by ±15 %).
  for (int rep = 0; rep < 7; ++rep)
    for (auto& v : vs) {
      qwen::Decoder dec(*v.model, 1);
      qwen::KvCache cache(v.cfg, 1, n_decode + 1);
      std::vector<float> logits(static_cast<size_t>(vocab));
      const double t0 = now();
      for (int64_t t = 0; t < n_decode; ++t) {
        qwen::SeqChunk ch{0, 1, tok.data() + (t % (B * T))};
        dec.forward(cache, &ch, 1, qwen::LogitsMode::kLast, logits.data());
      }
      v.decode_s.push_back((now() - t0) / double(n_decode));
    }

  const double step0 = median(vs[0].step_s), dec0 = median(vs[0].decode_s);
  const size_t act0 = vs[0].tm->activation_bytes();
  std::printf("%-10s %12s %8s %14s %8s %14s %10s %12s\n", "variant", "step ms", "x base",
              "decode us/tok", "x base", "activations", "x base", "params");
  for (auto& v : vs) {
    const double st = median(v.step_s), de = median(v.decode_s);
    std::printf("%-10s %12.1f %8.3f %14.1f %8.3f %11.1f MB %10.3f %12lld\n", v.name.c_str(),
                st * 1e3, st / step0, de * 1e6, de / dec0, double(v.tm->activation_bytes()) / 1e6,
                double(v.tm->activation_bytes()) / double(act0), (long long)v.tm->n_params());
  }
  if (vs.size() < 3) return 0;
  // Spec §7.4 with block recomputation (L_r sub-layers per block) vs what TrainModel keeps.
  const int64_t N = B * T, Lsub = 2 * layers, C = hidden;
  const double extra_mhc = double(vs[2].tm->activation_bytes()) - double(act0);
  std::printf("mHC extra activation memory: %.1f MB = %.1f floats per token per sub-layer "
              "(stored per site: X (n·C = %lld) + F (C) + coefficients (~%lld))\n",
              extra_mhc / 1e6, extra_mhc / 4 / double(N) / double(Lsub), (long long)(n * C),
              (long long)(qwen::ops::mhc_coefs_size(1, n)));
  int64_t best_lr = 1;
  double best = 1e300;
  for (int64_t lr = 1; lr <= Lsub; ++lr) {
    const double m = double(n * C) * double((Lsub + lr - 1) / lr) + double((n + 2) * C) * double(lr);
    if (m < best) best = m, best_lr = lr;
  }
  std::printf("spec formula nC·ceil(L/L_r) + (n+2)C·L_r (L = %lld sub-layers): %.0f floats per token "
              "at L_r* = %lld (%.1f MB for %lld tokens); no recompute: n·C·L = %lld floats per token\n",
              (long long)Lsub, best, (long long)best_lr, best * 4 * double(N) / 1e6, (long long)N,
              (long long)(n * C * Lsub));
  return 0;
}
