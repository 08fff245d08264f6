// bench/bench_lora_memory.cpp — what fine-tuning costs in memory and time per step: full
// training vs LoRA on a float base vs QLoRA on an NF4 base, on one model, through the public API
// (qwen/trainer.h). One mode per process, so the peak RSS it prints is that mode's alone; run
// it once per mode (docs/experiments/lora_memory.sh does). Random token ids: the figures do not
// depend on the data.
// Usage: bench_lora_memory --model DIR --mode full|lora|qlora [--steps 3] [--batch 4] [--seq 128]
//        [--rank 8] [--threads 2]      (qlora: DIR is an NF4 folder from `qwen quantize`)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "qwen/qwen.h"

int main(int argc, char** argv) {
  std::string model_dir, mode = "lora";
  int64_t steps = 3, batch = 4, seq = 128, rank = 8;
  int threads = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model_dir = v;
    else if (k == "--mode") mode = v;
    else if (k == "--steps") steps = std::stoll(v);
    else if (k == "--batch") batch = std::stoll(v);
    else if (k == "--seq") seq = std::stoll(v);
    else if (k == "--rank") rank = std::stoll(v);
    else if (k == "--threads") threads = std::stoi(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (model_dir.empty() || (mode != "full" && mode != "lora" && mode != "qlora")) {
    std::fprintf(stderr, "usage: %s --model DIR --mode full|lora|qlora [--steps N] [--batch B] "
                         "[--seq T] [--rank R] [--threads N]\n", argv[0]);
    return 2;
  }
  try {
    qwen::set_num_threads(threads);
    const qwen::Model base = qwen::Model::load(model_dir);
    qwen::TrainConfig tc;
    tc.steps = steps + 1;
    tc.batch = batch;
    tc.seq = seq;
    tc.lr = 1e-4;
    qwen::LoraConfig lc;
    lc.rank = rank;
    lc.nf4_base = mode == "qlora";
    if (mode == "qlora" && base.weight_type() != qwen::WeightType::NF4) {
      std::fprintf(stderr, "--mode qlora needs an NF4 folder (qwen quantize --type nf4)\n");
      return 2;
    }
    qwen::Trainer tr = mode == "full" ? qwen::Trainer(base, tc) : qwen::Trainer(base, lc, tc);
    const int64_t V = base.config().vocab_size;
    std::vector<int32_t> tokens(size_t(batch * seq)), targets(tokens.size());
    uint64_t x = 88172645463325252ull;
    std::vector<double> secs;
    for (int64_t s = 0; s <= steps; ++s) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        tokens[i] = int32_t(x % uint64_t(V));
        targets[i] = int32_t((x >> 32) % uint64_t(V));
      }
      const qwen::StepResult r = tr.step(tokens, targets, batch, seq);
      if (s > 0) secs.push_back(r.seconds);  // the first step is a warm-up
    }
    std::sort(secs.begin(), secs.end());
    const qwen::TrainMemory m = tr.memory();
    const double mib = 1024.0 * 1024.0;
    std::printf("{\"mode\": \"%s\", \"weights\": \"%s\", \"total_parameters\": %lld, "
                "\"trainable_parameters\": %lld, \"frozen_weight_mib\": %.1f, "
                "\"trainable_state_mib\": %.1f, \"activation_mib\": %.1f, \"peak_rss_mib\": %.1f, "
                "\"step_seconds\": %.3f, \"tokens_per_s\": %.1f}\n",
                mode.c_str(), qwen::weight_type_name(base.weight_type()),
                (long long)tr.total_parameters(), (long long)tr.trainable_parameters(),
                double(m.frozen_weights) / mib, double(m.trainable) / mib,
                double(m.activations) / mib, double(qwen::peak_memory_bytes()) / mib,
                secs[secs.size() / 2], double(batch * seq) / secs[secs.size() / 2]);
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
