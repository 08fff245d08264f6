// tests/test_finetune.cpp — `qwen finetune` (LoRA and QLoRA), `qwen merge`, `qwen sft-eval` and
// `--adapter` on generate / eval / forward, end to end on a tiny base (tests/data/finetune):
// the loss on the answer tokens falls; the checkpoint is a PEFT adapter folder plus optimiser and
// trainer state; --resume reproduces the uninterrupted run bit for bit (dropout on, so the
// per-step dropout seeding is covered); the trainer's eval loss equals the inference decoder's
// (sft-eval) with the adapter attached, on an F32 and on an NF4 base; merge -> generate gives
// the greedy ids of generate --adapter; bad input gives one clear error line each.
// JSONL parsing, masking and packing themselves are tested in test_sft_data.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "io/safetensors.h"
#include "model/model.h"
#include "ops/quant.h"
#include "test_util.h"
#include "train/finetune.h"

using namespace qwen_test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }
std::string fdata(const std::string& f) { return data_path("finetune/" + f); }

void expect_error(const RunResult& r, std::initializer_list<const char*> fragments) {
  EXPECT_NE(r.status, 0) << r.out;
  const size_t at = r.err.rfind("error: ");
  ASSERT_NE(at, std::string::npos) << r.err;
  const std::string line = r.err.substr(at);
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
  for (const char* f : fragments) EXPECT_NE(line.find(f), std::string::npos) << "want '" << f << "' in: " << line;
}

std::vector<json> read_metrics(const std::string& out, const std::string& type) {
  std::vector<json> v;
  std::istringstream in(read_text(out + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && json::parse(line).value("type", "") == type) v.push_back(json::parse(line));
  return v;
}

// A tiny random base with the ChatML-capable test tokenizer, made once per test binary.
const std::string& base_dir() {
  static TempDir td;
  static const std::string dir = [] {
    const std::string d = td.str("base");
    auto r = run_qwen("init --config " + q(fdata("base.json")) + " --seed 3 --tokenizer " +
                      q(data_path("tokenizer/trained")) + " --out " + q(d));
    EXPECT_EQ(r.status, 0) << r.err;
    return d;
  }();
  return dir;
}

// Common flags: small, fast, deterministic.
std::string ft_args(const std::string& out, const std::string& extra = "", const std::string& lr = "5e-3") {
  return "finetune --base " + q(base_dir()) + " --data " + q(fdata("train.jsonl")) + " --val-data " +
         q(fdata("val.jsonl")) + " --out " + q(out) + " --batch 4 --seq 64 --lr " + lr +
         " --warmup 0 --eval-every 4 --eval-batches 1 --threads 1 --seed 5 " + extra;
}

double mean_loss(const std::vector<json>& m, size_t from, size_t n) {
  double s = 0;
  for (size_t i = from; i < from + n; ++i) s += m[i]["loss"].get<double>();
  return s / double(n);
}

}  // namespace

TEST(Finetune, LoraLossFallsAndCheckpointIsAPeftFolder) {
  TempDir td;
  const std::string out = td.str("run");
  auto r = run_qwen(ft_args(out, "--steps 16 --lora-r 4 --lora-alpha 8 --target q,v,down", "2e-2"));
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("LoRA r 4"), std::string::npos) << r.out;
  const auto train = read_metrics(out, "train");
  ASSERT_EQ(train.size(), 16u);
  const double first = mean_loss(train, 0, 3), last = mean_loss(train, 13, 3);
  EXPECT_LT(last, first - 0.5) << "first " << first << " last " << last;  // nats per answer token
  const auto evals = read_metrics(out, "eval");
  ASSERT_EQ(evals.size(), 4u);
  EXPECT_LT(evals.back()["val_loss"].get<double>(), evals.front()["val_loss"].get<double>());

  // The checkpoint: PEFT files (2 layers x 3 targets x A/B), optimiser, state, tokenizer.
  const std::string ck = out + "/checkpoint";
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                        "trainer_state.json", "tokenizer.json"})
    EXPECT_TRUE(fs::exists(ck + "/" + f)) << f;
  EXPECT_TRUE(fs::exists(out + "/loss.svg"));
  const json ac = read_json(ck + "/adapter_config.json");
  EXPECT_EQ(ac["r"], 4);
  EXPECT_EQ(ac["lora_alpha"].get<double>(), 8.0);
  EXPECT_EQ(ac["target_modules"], json({"down_proj", "q_proj", "v_proj"}));
  auto st = qwen::io::SafetensorsFile::open(ck + "/adapter_model.safetensors");
  EXPECT_EQ(st->tensors().size(), 12u);
  ASSERT_NE(st->find("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"), nullptr);
  const json ts = read_json(ck + "/trainer_state.json");
  EXPECT_EQ(ts["step"], 16);
  EXPECT_EQ(ts["loader"]["format"], "qwen-sft-loader");
  const json sum = read_json(out + "/train_summary.json");
  // q (64x64), v (32x64), down (64x128) per layer, r = 4: 4·(64+64) + 4·(64+32) + 4·(128+64).
  EXPECT_EQ(sum["trainable_params"], 2 * (4 * (64 + 64) + 4 * (64 + 32) + 4 * (128 + 64)));
  EXPECT_GT(sum["trainable_fraction"].get<double>(), 0.0);
  EXPECT_LT(sum["trainable_fraction"].get<double>(), 0.2);

  // The trainer's final eval loss equals the inference decoder's with the adapter attached
  // (different code paths: TrainModel forward vs Decoder + Linear::lora).
  auto e = run_qwen("sft-eval --model " + q(base_dir()) + " --adapter " + q(ck) + " --data " +
                    q(fdata("val.jsonl")) + " --limit 4 --threads 1 --json");
  ASSERT_EQ(e.status, 0) << e.err;
  const json ej = json::parse(e.out);
  EXPECT_NEAR(ej["loss"].get<double>(), evals.back()["val_loss"].get<double>(), 1e-4);
  EXPECT_EQ(ej["n"], 4);
}

TEST(Finetune, ResumeEqualsUninterrupted) {
  for (const std::string mode : {"", "--qlora nf4 --recompute"}) {
    SCOPED_TRACE(mode.empty() ? "LoRA" : mode);
    TempDir td;
    const std::string a = td.str("a"), b = td.str("b");
    const std::string common = "--steps 8 --lora-dropout 0.1 --grad-accum 2 --save-every 0 " + mode;
    ASSERT_EQ(run_qwen(ft_args(a, common)).status, 0);
    auto r1 = run_qwen(ft_args(b, common + " --stop-after 3"));
    ASSERT_EQ(r1.status, 0) << r1.err;
    auto r2 = run_qwen("finetune --out " + q(b) + " --resume");
    ASSERT_EQ(r2.status, 0) << r2.err;
    EXPECT_NE(r2.out.find("resuming: steps 4..8"), std::string::npos) << r2.out;
    const auto ma = read_metrics(a, "train"), mb = read_metrics(b, "train");
    ASSERT_EQ(ma.size(), 8u);
    ASSERT_EQ(mb.size(), 8u);
    for (size_t i = 0; i < 8; ++i) {
      EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << "step " << i + 1;
      EXPECT_EQ(ma[i]["grad_norm"].get<double>(), mb[i]["grad_norm"].get<double>()) << "step " << i + 1;
    }
    EXPECT_EQ(read_text(a + "/checkpoint/adapter_model.safetensors"),
              read_text(b + "/checkpoint/adapter_model.safetensors"));
    EXPECT_EQ(read_text(a + "/checkpoint/optimizer.safetensors"),
              read_text(b + "/checkpoint/optimizer.safetensors"));
  }
}

TEST(Finetune, QloraMatchesTheInferencePathOnAnNf4Base) {
  TempDir td;
  const std::string out = td.str("q");
  auto r = run_qwen(ft_args(out, "--steps 12 --qlora nf4"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("quantised to NF4 in memory: 14 matrices"), std::string::npos) << r.out;
  const auto train = read_metrics(out, "train");
  EXPECT_LT(mean_loss(train, 9, 3), mean_loss(train, 0, 3) - 0.5);
  const json sum = read_json(out + "/train_summary.json");
  EXPECT_EQ(sum["nf4_matrices"], 14);
  // 33 B per 64 weights (codes + 8-bit absmax code; double quantisation's nested absmax and the
  // header are not in Linear::bytes()).
  EXPECT_NEAR(sum["nf4_matrix_bits_per_param"].get<double>(), 4.125, 1e-9);
  // Eval loss of the trainer (NF4 frozen base + adapter) = decoder's on the same NF4 weights,
  // whether quantised in memory (sft-eval --qlora) or loaded from an NF4 folder.
  const double vl = read_metrics(out, "eval").back()["val_loss"].get<double>();
  auto e = run_qwen("sft-eval --model " + q(base_dir()) + " --qlora nf4 --adapter " +
                    q(out + "/checkpoint") + " --data " + q(fdata("val.jsonl")) + " --limit 4 --threads 1 --json");
  ASSERT_EQ(e.status, 0) << e.err;
  EXPECT_NEAR(json::parse(e.out)["loss"].get<double>(), vl, 1e-4);
  const std::string nf4 = td.str("base-nf4");
  ASSERT_EQ(run_qwen("quantize --model " + q(base_dir()) + " --type nf4 --out " + q(nf4)).status, 0);
  auto e2 = run_qwen("sft-eval --model " + q(nf4) + " --adapter " + q(out + "/checkpoint") +
                     " --data " + q(fdata("val.jsonl")) + " --limit 4 --threads 1 --json");
  ASSERT_EQ(e2.status, 0) << e2.err;
  EXPECT_NEAR(json::parse(e2.out)["loss"].get<double>(), vl, 1e-4);
  // Fine-tuning directly on the NF4 folder works too (no --qlora needed).
  auto r2 = run_qwen("finetune --base " + q(nf4) + " --data " + q(fdata("train.jsonl")) + " --out " +
                     q(td.str("q2")) + " --steps 2 --batch 2 --seq 64 --threads 1 --eval-every 0");
  ASSERT_EQ(r2.status, 0) << r2.err;
  EXPECT_EQ(read_json(td.str("q2/train_summary.json"))["nf4_matrices"], 14);
}

TEST(Finetune, MergeThenGenerateEqualsGenerateWithAdapter) {
  TempDir td;
  const std::string out = td.str("run");
  ASSERT_EQ(run_qwen(ft_args(out, "--steps 10", "2e-2")).status, 0);
  const std::string ck = out + "/checkpoint", merged = td.str("merged");
  auto m = run_qwen("merge --base " + q(base_dir()) + " --adapter " + q(ck) + " --out " + q(merged));
  ASSERT_EQ(m.status, 0) << m.err;
  EXPECT_TRUE(fs::exists(merged + "/tokenizer.json"));
  EXPECT_FALSE(fs::exists(merged + "/adapter_config.json"));
  // A chat prompt of a validation example.
  const std::string prompt = "698,85,198,30,31,32,699,198,698,76,94,198";
  const std::string gen = " --prompt-ids " + prompt + " --max-new-tokens 24 --temperature 0 --ignore-eos --json --threads 1";
  auto g1 = run_qwen("generate --model " + q(merged) + gen);
  auto g2 = run_qwen("generate --model " + q(base_dir()) + " --adapter " + q(ck) + gen);
  auto g0 = run_qwen("generate --model " + q(base_dir()) + gen);
  ASSERT_EQ(g1.status, 0) << g1.err;
  ASSERT_EQ(g2.status, 0) << g2.err;
  ASSERT_EQ(g0.status, 0) << g0.err;
  EXPECT_EQ(json::parse(g1.out)["ids"], json::parse(g2.out)["ids"]);
  // The adapter matters: its logits differ from the base's, and equal the merged model's.
  auto fwd = [&](const std::string& args, const std::string& f) {
    auto r = run_qwen("forward " + args + " --prompt-ids " + prompt + " --threads 1 --out " + q(td.str(f)));
    EXPECT_EQ(r.status, 0) << r.err;
    return read_f32(td.str(f));
  };
  const auto lm = fwd("--model " + q(merged), "m.bin");
  const auto la = fwd("--model " + q(base_dir()) + " --adapter " + q(ck), "a.bin");
  const auto lb = fwd("--model " + q(base_dir()), "b.bin");
  ASSERT_EQ(lm.size(), la.size());
  ASSERT_EQ(lb.size(), la.size());
  double d_merge = 0, d_base = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    d_merge = std::max(d_merge, double(std::fabs(lm[i] - la[i])));
    d_base = std::max(d_base, double(std::fabs(lb[i] - la[i])));
  }
  EXPECT_LT(d_merge, 1e-4);
  EXPECT_GT(d_base, 1e-2);
  // eval --adapter runs the adapter too: its loss differs from the base's.
  std::ofstream(td.str("ids.txt")) << "698 85 198 30 31 32 699 198 698 76 94 198 40 41";
  auto e1 = run_qwen("eval --model " + q(base_dir()) + " --adapter " + q(ck) + " --ids-file " + q(td.str("ids.txt")) + " --json --threads 1");
  auto e2 = run_qwen("eval --model " + q(merged) + " --ids-file " + q(td.str("ids.txt")) + " --json --threads 1");
  ASSERT_EQ(e1.status, 0) << e1.err;
  ASSERT_EQ(e2.status, 0) << e2.err;
  EXPECT_NEAR(json::parse(e1.out)["loss"].get<double>(), json::parse(e2.out)["loss"].get<double>(), 1e-5);
}

TEST(Finetune, QuantizeLayersNf4KeepsOddRowsAndDequantisesClose) {
  qwen::ModelConfig c;
  c.architecture = "Qwen2ForCausalLM";
  c.model_type = "qwen2";
  c.vocab_size = 96; c.hidden_size = 64; c.intermediate_size = 96;  // down_proj rows of 96: kept
  c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2; c.head_dim = 16;
  c.max_position_embeddings = 64;
  auto base = qwen::Model::random(c, 9);
  int64_t nq = 0, nk = 0;
  auto m = qwen::train::quantize_layers_nf4(*base, &nq, &nk);
  EXPECT_EQ(nq, 12);
  EXPECT_EQ(nk, 2);
  const qwen::Linear& a = base->layers()[1].up;
  const qwen::Linear& b = m->layers()[1].up;
  ASSERT_EQ(b.dtype, qwen::DType::NF4);
  EXPECT_EQ(m->layers()[1].down.dtype, qwen::DType::F32);
  std::vector<float> row(size_t(a.n_in));
  double err = 0, mag = 0;
  for (int64_t o = 0; o < a.n_out; ++o) {
    qwen::ops::dequantize_rows(qwen::DType::NF4, b.w, a.n_out, a.n_in, o, 1, row.data());
    for (int64_t i = 0; i < a.n_in; ++i) {
      const float w = static_cast<const float*>(a.w)[o * a.n_in + i];
      err = std::max(err, double(std::fabs(row[size_t(i)] - w)));
      mag = std::max(mag, double(std::fabs(w)));
    }
  }
  EXPECT_GT(err, 0.0);
  EXPECT_LT(err, 0.2 * mag);  // NF4 steps are at most ~0.28 of a block's absmax apart
}

TEST(Finetune, BadInput) {
  TempDir td;
  expect_error(run_qwen(ft_args(td.str("a"), "--lora-r 0")), {"rank", ">= 1"});
  expect_error(run_qwen(ft_args(td.str("b"), "--lora-alpha -2")), {"alpha", "> 0"});
  expect_error(run_qwen(ft_args(td.str("c"), "--target q,x")), {"unknown LoRA target 'x'"});
  expect_error(run_qwen(ft_args(td.str("d"), "--qlora int3")), {"--qlora 'int3'", "nf4"});
  // Malformed JSONL: line numbers; stop (default) or skip.
  std::string text = read_text(fdata("train.jsonl"));
  const size_t cut = text.find('\n', text.find('\n') + 1) + 1;  // after line 2
  text.insert(cut, "{\"prompt\": \"x\"}\nnot json\n");
  std::ofstream(td.str("bad.jsonl")) << text;
  const std::string base = "finetune --base " + q(base_dir()) + " --data " + q(td.str("bad.jsonl")) +
                           " --steps 1 --batch 2 --seq 64 --threads 1 --eval-every 0 --out ";
  expect_error(run_qwen(base + q(td.str("e"))), {"bad.jsonl:3"});
  auto r = run_qwen(base + q(td.str("f")) + " --on-bad-line skip");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("skipped 2 malformed lines (3, 4)"), std::string::npos) << r.out;
  expect_error(run_qwen(base + q(td.str("g")) + " --on-bad-line maybe"), {"--on-bad-line"});
  // Resume: no checkpoint; a LoRA setting that cannot change.
  expect_error(run_qwen("finetune --out " + q(td.str("none")) + " --resume"), {"no checkpoint"});
  expect_error(run_qwen("finetune --out " + q(td.str("f")) + " --resume --lora-r 16"), {"--lora-r", "--resume"});
  expect_error(run_qwen(base + q(td.str("f"))), {"already holds a checkpoint"});
  // A base without a tokenizer; an adapter for another base.
  expect_error(run_qwen("finetune --base " + q(data_path("models/qwen2_gqa")) + " --data " +
                        q(fdata("train.jsonl")) + " --out " + q(td.str("h"))),
               {"tokenizer.json"});
  expect_error(run_qwen("generate --model " + q(data_path("models/qwen2_gqa")) + " --adapter " +
                        q(td.str("f/checkpoint")) + " --prompt-ids 1,2 --max-new-tokens 2"),
               {"adapter tensor", "the adapter is for a different base model"});
  expect_error(run_qwen("merge --base " + q(base_dir()) + " --adapter " + q(td.str("nothing")) +
                        " --out " + q(td.str("m"))),
               {"adapter_config.json"});
}
