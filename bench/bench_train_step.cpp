// bench_train_step.cpp — time of one training forward+backward of the trainable decoder
// (TrainModel) on the small or medium config, and a per-phase breakdown, with
// activation recomputation off and on. Prints tokens/s, MFU against a given peak, and
// activation memory. Usage: bench_train_step [small|medium] [reps] [peak_gflops]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "train/train_model.h"

using namespace qwen;

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "small";
  const int reps = argc > 2 ? std::atoi(argv[2]) : 3;
  const double peak = argc > 3 ? std::atof(argv[3]) : 199.6;
  ModelConfig c;
  int64_t B, T;
  if (which == "medium") {
    c.vocab_size = 32000; c.hidden_size = 768; c.num_hidden_layers = 12;
    c.num_attention_heads = 12; c.num_key_value_heads = 4; c.intermediate_size = 2048;
    B = 4; T = 512;
  } else {
    c.vocab_size = 8192; c.hidden_size = 256; c.num_hidden_layers = 4;
    c.num_attention_heads = 8; c.num_key_value_heads = 4; c.intermediate_size = 704;
    B = 8; T = 256;
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  c.qkv_bias = true;
  c.max_position_embeddings = 4096;
  Rng rng(1);
  std::vector<int32_t> tok(size_t(B * T)), tgt(size_t(B * T));
  for (auto& t : tok) t = int32_t(rng.next() % uint64_t(c.vocab_size));
  for (auto& t : tgt) t = int32_t(rng.next() % uint64_t(c.vocab_size));
  for (int rc = 0; rc < 2; ++rc) {
    train::TrainModelOptions opt;
    opt.recompute = rc == 1;
    train::TrainModel m(c, 0, opt);
    const double n_params = double(m.n_params());
    m.zero_grad();
    m.forward_backward(tok.data(), tgt.data(), B, T, 1.0f / float(B * T));  // warm-up
    std::vector<double> ts;
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      m.forward_backward(tok.data(), tgt.data(), B, T, 1.0f / float(B * T));
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    double best = ts[0];
    for (double t : ts) best = std::min(best, t);
    const double tps = double(B * T) / best;
    std::printf("%s recompute=%d params=%.2fM B=%lld T=%lld step %.3f s  %.0f tok/s  MFU %.1f%%  "
                "activations %.1f MiB\n",
                which.c_str(), rc, n_params / 1e6, (long long)B, (long long)T, best, tps,
                100.0 * 6.0 * n_params * tps / (peak * 1e9), m.activation_bytes() / 1048576.0);
  }
  return 0;
}
