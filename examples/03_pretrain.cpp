// examples/03_pretrain.cpp — pretrain a small model on a text file, save it as a Hugging Face
// folder, load it back.
// The text is encoded with the tokenizer; the Trainer draws windows of seq + 1 tokens at random
// positions (next-token cross-entropy, AdamW, warm-up + cosine). Checks: the loss on the text
// falls well below its starting value (about ln V for random weights), and the saved folder loads
// back to exactly the trained weights (identical logits). The folder also gets the tokenizer, so
// `qwen generate --model OUT_DIR` works on it.
// Usage: 03_pretrain TOKENIZER_DIR TEXT_FILE OUT_DIR [STEPS]
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "qwen/qwen.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s TOKENIZER_DIR TEXT_FILE OUT_DIR [STEPS]\n", argv[0]);
    return 2;
  }
  namespace fs = std::filesystem;
  try {
    const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(argv[1]);
    std::ifstream f(argv[2]);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::vector<int32_t> ids = tok.encode(ss.str(), false);
    std::printf("text: %zu tokens\n", ids.size());

    qwen::ModelConfig cfg;
    cfg.vocab_size = tok.vocab_size();
    cfg.hidden_size = 64;
    cfg.intermediate_size = 128;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.head_dim = 16;
    cfg.qkv_bias = true;  // Qwen2
    cfg.max_position_embeddings = 256;
    cfg.eos_token_ids = {tok.eos_id() >= 0 ? tok.eos_id() : tok.token_to_id("<|endoftext|>")};
    cfg.validate();

    qwen::TrainConfig tc;
    tc.steps = argc > 4 ? std::stoll(argv[4]) : 100;
    tc.batch = 8;
    tc.seq = 64;
    tc.lr = 3e-3;
    tc.warmup = 10;
    tc.weight_decay = 0.0;
    qwen::Trainer trainer(cfg, /*seed=*/1, tc);
    std::printf("model: %lld parameters, all trainable\n", (long long)trainer.trainable_parameters());

    const double before = trainer.evaluate(ids, 4);
    trainer.fit(ids, [&](const qwen::StepResult& s) {
      if (s.step == 1 || s.step % 25 == 0 || s.step == tc.steps)
        std::printf("step %4lld  loss %.3f  lr %.2e  grad norm %.2f  %.0f tok/s\n",
                    (long long)s.step, s.loss, s.lr, s.grad_norm, double(s.tokens) / s.seconds);
      return true;
    });
    const double after = trainer.evaluate(ids, 4);
    std::printf("loss on the text: %.3f before (ln V = %.3f) -> %.3f after %lld steps\n", before,
                std::log(double(cfg.vocab_size)), after, (long long)trainer.steps_done());
    if (!(after < before - 1.5)) {
      std::printf("FAIL: the loss did not go down by 1.5 nats\n");
      return 1;
    }

    // Save as a Hugging Face folder (+ tokenizer), load back, compare.
    const fs::path out = argv[3];
    trainer.save(out.string());
    for (const char* name : {"tokenizer.json", "tokenizer_config.json"})
      if (fs::exists(fs::path(argv[1]) / name))
        fs::copy_file(fs::path(argv[1]) / name, out / name, fs::copy_options::overwrite_existing);
    const qwen::Model reloaded = qwen::Model::load(out.string());
    const std::vector<int32_t> probe(ids.begin(), ids.begin() + 32);
    const std::vector<float> a = trainer.model().forward(probe), b = reloaded.forward(probe);
    double diff = 0;
    for (size_t i = 0; i < a.size(); ++i) diff = std::fmax(diff, std::fabs(a[i] - b[i]));
    std::printf("saved %s (config.json, model.safetensors); reloaded logits differ by %.3g\n",
                out.string().c_str(), diff);
    if (diff != 0) return 1;
    std::printf("OK\n");
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
