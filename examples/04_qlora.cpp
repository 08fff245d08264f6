// examples/04_qlora.cpp — QLoRA fine-tuning: the base model is quantised to 4-bit NF4 and
// frozen; only the LoRA adapters (rank 8 on all seven projections) are trained, here to teach
// the model one sentence. Prints trainable vs total parameters and the memory measured, and
// writes the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors).
// Checks: the trainable count is exactly r·(in + out) summed over the adapted projections, the
// frozen base really is NF4, the loss on the sentence falls, and merging the adapter into the
// weights gives the same logits as running it unmerged (up to the rounding of the NF4
// inference kernels, which quantise activations to 8 bits per 64-block: docs/quantization.md).
// Usage: 04_qlora BASE_MODEL_DIR TOKENIZER_DIR ADAPTER_OUT_DIR
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "qwen/qwen.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s BASE_MODEL_DIR TOKENIZER_DIR ADAPTER_OUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    const qwen::Model base = qwen::Model::load(argv[1]);
    const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(argv[2]);
    std::string task;
    for (int i = 0; i < 64; ++i) task += "Hello world, the answer is forty two.\n";
    const std::vector<int32_t> ids = tok.encode(task, false);

    qwen::LoraConfig lora;
    lora.rank = 8;
    lora.alpha = 16;
    lora.dropout = 0.05;
    lora.nf4_base = true;  // QLoRA
    qwen::TrainConfig tc;
    tc.steps = 100;
    tc.batch = 4;
    tc.seq = 32;
    tc.lr = 2e-2;
    tc.warmup = 4;
    tc.weight_decay = 0.0;
    qwen::Trainer trainer(base, lora, tc);

    const qwen::ModelConfig& c = base.config();
    const int64_t C = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
    const int64_t expected =
        c.num_hidden_layers * lora.rank * ((C + qd) + 2 * (C + kvd) + (qd + C) + 3 * (C + F));
    const int64_t trainable = trainer.trainable_parameters(), total = trainer.total_parameters();
    std::printf("trainable parameters: %lld of %lld (%.2f%%), formula %lld\n", (long long)trainable,
                (long long)total, 100.0 * double(trainable) / double(total), (long long)expected);
    if (trainable != expected) return 1;
    std::printf("frozen base: %s\n", qwen::weight_type_name(trainer.model().weight_type()));
    if (trainer.model().weight_type() != qwen::WeightType::NF4) return 1;

    const double before = trainer.evaluate(ids, 2);
    trainer.fit(ids, [](const qwen::StepResult& s) {
      if (s.step == 1 || s.step % 20 == 0)
        std::printf("step %3lld  loss %.3f\n", (long long)s.step, s.loss);
      return true;
    });
    const double after = trainer.evaluate(ids, 2);
    std::printf("loss on the task: %.3f -> %.3f\n", before, after);
    if (!(after < before - 1.0)) return 1;

    const qwen::TrainMemory m = trainer.memory();
    std::printf("memory: frozen NF4 base %.1f KiB (f32 base %.1f KiB), adapters + grads + AdamW "
                "%.1f KiB, activations %.1f KiB; peak RSS of the process %.1f MiB\n",
                double(m.frozen_weights) / 1024, double(base.weight_bytes()) / 1024,
                double(m.trainable) / 1024, double(m.activations) / 1024,
                double(qwen::peak_memory_bytes()) / (1 << 20));
    if (!(m.frozen_weights < base.weight_bytes())) return 1;

    trainer.save(argv[3]);
    const bool peft = std::filesystem::exists(std::filesystem::path(argv[3]) / "adapter_config.json") &&
                      std::filesystem::exists(std::filesystem::path(argv[3]) / "adapter_model.safetensors");
    std::printf("saved PEFT adapter to %s: %s\n", argv[3], peft ? "yes" : "no");
    if (!peft) return 1;

    // Unmerged (NF4 base + adapter) vs merged (W + s·B·A in f32): the same function. The
    // unmerged forward runs the NF4 inference kernels (8-bit activations per 64-block, every
    // M), so the two differ by that rounding: ~3e-3 of the largest logit on this model (it was
    // ~1e-6 when prefill dequantised to f32); a merge that lost or doubled the adapter's
    // delta moves the logits by O(1) (the adapter lowered the loss by more than 1 nat).
    const std::vector<int32_t> probe(ids.begin(), ids.begin() + 16);
    const std::vector<float> a = trainer.model().forward(probe);
    const std::vector<float> b = trainer.merged_model().forward(probe);
    double diff = 0, scale = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      diff = std::fmax(diff, std::fabs(a[i] - b[i]));
      scale = std::fmax(scale, std::fabs(a[i]));
    }
    std::printf("merged vs unmerged logits: max |diff| %.2g (max |logit| %.2g)\n", diff, scale);
    if (!(diff <= 1e-2 * scale)) return 1;
    std::printf("OK\n");
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
