// tests/test_train_cli.cpp — `qwen data prepare`, `qwen train` and `qwen eval --text` end to end
// on tiny models: metrics.jsonl contract (the loss is that of the batch trained on, before the
// update, checked against an in-process replay), checkpoints that load as Hugging Face folders,
// resume reproducing the uninterrupted loss sequence exactly, SIGKILL at arbitrary moments never
// leaving a half-written checkpoint, NaN stops, and bad input: one clear error line each.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "core/cpu.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "qwen/tokenizer.h"
#include "test_util.h"
#include "train/data.h"
#include "train/optim.h"
#include "train/train_model.h"
#include "train/trainer.h"

using namespace qwen_test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

void expect_error(const RunResult& r, std::initializer_list<const char*> fragments) {
  EXPECT_NE(r.status, 0) << r.out;
  const size_t at = r.err.rfind("error: ");
  ASSERT_NE(at, std::string::npos) << r.err;
  const std::string line = r.err.substr(at);
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
  for (const char* f : fragments) EXPECT_NE(line.find(f), std::string::npos) << "want '" << f << "' in: " << line;
}

std::string config_json(int64_t V, int64_t C, int64_t F, int64_t L, int64_t H, int64_t KV,
                        bool tied = false) {
  json j = {{"architectures", {"Qwen2ForCausalLM"}},
            {"model_type", "qwen2"},
            {"vocab_size", V},
            {"hidden_size", C},
            {"intermediate_size", F},
            {"num_hidden_layers", L},
            {"num_attention_heads", H},
            {"num_key_value_heads", KV},
            {"max_position_embeddings", 128},
            {"rms_norm_eps", 1e-6},
            {"rope_theta", 10000.0},
            {"tie_word_embeddings", tied},
            {"initializer_range", 0.02},
            {"hidden_act", "silu"}};
  return j.dump(1);
}

// Ids with some structure (a noisy counter), so a model can learn something.
std::vector<int32_t> corpus(size_t n, int32_t V, uint64_t seed) {
  qwen::Rng rng(seed);
  std::vector<int32_t> v(n);
  int32_t x = 0;
  for (auto& t : v) {
    x = (rng.uniform() < 0.8) ? (x + 1) % V : int32_t(rng.next() % uint64_t(V));
    t = x;
  }
  return v;
}

std::string ids_text(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(v[i]);
  }
  return s;
}

struct TrainSetup {
  TempDir td;
  std::string cfg, data;
  std::vector<int32_t> ids;
  // A tiny model config and a data folder of n ids (val fraction 0.1).
  explicit TrainSetup(size_t n = 3000, int64_t V = 64, std::string config = "") {
    cfg = td.str("model.json");
    std::ofstream(cfg) << (config.empty() ? config_json(V, 32, 64, 2, 4, 2) : config);
    ids = corpus(n, int32_t(V), 11);
    std::ofstream(td.str("ids.txt")) << ids_text(ids);
    data = td.str("data");
    auto r = run_qwen("data prepare --ids-file " + q(td.str("ids.txt")) + " --out " + q(data) +
                      " --val-fraction 0.1");
    EXPECT_EQ(r.status, 0) << r.err;
  }
};

std::vector<json> read_metrics(const std::string& out, const std::string& type) {
  std::vector<json> v;
  std::istringstream in(read_text(out + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line);
    if (j.value("type", "") == type) v.push_back(j);
  }
  return v;
}

// The checkpoint folder loads: HF weights, optimiser state of the same size, trainer state.
int64_t check_checkpoint_loads(const std::string& ckpt) {
  auto m = qwen::Model::load(ckpt);
  qwen::train::TrainModel tm(*m);
  qwen::train::AdamW opt(tm.params(), tm.n_params());
  opt.load(ckpt + "/optimizer.safetensors");
  json st = read_json(ckpt + "/trainer_state.json");
  EXPECT_EQ(st["step"].get<int64_t>(), opt.step_count());
  EXPECT_EQ(st["n_params"].get<int64_t>(), tm.n_params());
  return st["step"].get<int64_t>();
}

}  // namespace

TEST(TrainCli, MetricsLossIsTheBatchBeforeItsUpdate) {
  TrainSetup s;
  const std::string init = s.td.str("init"), out = s.td.str("out");
  auto r = run_qwen("init --config " + q(s.cfg) + " --seed 5 --out " + q(init));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string opts = " --steps 3 --batch 2 --seq 16 --lr 1e-3 --lr-schedule constant "
                           "--weight-decay 0.1 --beta1 0.9 --beta2 0.95 --adam-eps 1e-8 "
                           "--clip-grad-norm 0.5 --eval-every 2 --save-every 0 --threads 1";
  r = run_qwen("train --init-from " + q(init) + " --data " + q(s.data) + " --out " + q(out) +
               " --sequential" + opts);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("step      1/3 | loss "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tok/s"), std::string::npos);
  EXPECT_NE(r.out.find("ETA"), std::string::npos);
  EXPECT_NE(r.out.find("val perplexity"), std::string::npos);
  auto train = read_metrics(out, "train");
  auto eval = read_metrics(out, "eval");
  ASSERT_EQ(train.size(), 3u);
  ASSERT_EQ(eval.size(), 2u);  // step 2 and the last step
  for (size_t i = 0; i < train.size(); ++i) {
    for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens_per_s"})
      ASSERT_TRUE(train[i].contains(k)) << k;
    EXPECT_EQ(train[i]["step"].get<int64_t>(), int64_t(i) + 1);
    EXPECT_DOUBLE_EQ(train[i]["lr"].get<double>(), 1e-3);
    EXPECT_GT(train[i]["tokens_per_s"].get<double>(), 0);
  }
  EXPECT_EQ(eval[0]["step"].get<int64_t>(), 2);
  EXPECT_NEAR(eval[0]["val_perplexity"].get<double>(), std::exp(eval[0]["val_loss"].get<double>()), 1e-6);
  EXPECT_FALSE(eval[0].contains("loss"));

  // Replay in process: sequential rows 0-1, 2-3, 4-5 of the training split, the same step.
  qwen::set_num_threads(1);
  auto m0 = qwen::Model::load(init);
  qwen::train::TrainModel tm(*m0);
  qwen::train::AdamWOptions ao{0.9, 0.95, 1e-8, 0.1};
  qwen::train::AdamW opt(tm.params(), tm.n_params(), ao);
  const int64_t B = 2, T = 16;
  for (int64_t step = 0; step < 3; ++step) {
    std::vector<int32_t> tk(size_t(B * T)), tg(size_t(B * T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const size_t at = size_t((step * B + b) * (T + 1) + t);
        tk[size_t(b * T + t)] = s.ids[at];
        tg[size_t(b * T + t)] = s.ids[at + 1];
      }
    auto st = qwen::train::train_step(tm, opt, {tk.data()}, {tg.data()}, B, T, 1e-3, 0.5);
    EXPECT_NEAR(train[size_t(step)]["loss"].get<double>(), st.loss, 1e-5 * st.loss) << "step " << step + 1;
    EXPECT_NEAR(train[size_t(step)]["grad_norm"].get<double>(), st.grad_norm, 1e-4 * st.grad_norm);
  }
  // The final checkpoint: an HF folder our loader takes, weights equal to the replay's.
  const std::string ckpt = out + "/checkpoint";
  EXPECT_EQ(check_checkpoint_loads(ckpt), 3);
  EXPECT_TRUE(fs::exists(ckpt + "/config.json"));
  auto saved = qwen::Model::load(ckpt);
  qwen::train::TrainModel ts(*saved);
  double max_diff = 0;
  for (int64_t i = 0; i < ts.n_params(); ++i)
    max_diff = std::max(max_diff, double(std::fabs(ts.param_data()[i] - tm.param_data()[i])));
  EXPECT_LT(max_diff, 1e-5);
  const std::string svg = read_text(out + "/loss.svg");
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("validation loss"), std::string::npos);
  EXPECT_TRUE(fs::exists(out + "/train_summary.json"));
}

TEST(TrainCli, ResumeReproducesTheUninterruptedRun) {
  TrainSetup s(700);  // a few windows only: the shuffled loader crosses epochs within the run
  const std::string opts = " --data " + q(s.data) + " --config " + q(s.cfg) +
                           " --steps 9 --batch 2 --seq 16 --grad-accum 2 --lr 3e-3 --warmup 2 "
                           "--eval-every 4 --save-every 3 --threads 1";
  const std::string a = s.td.str("a"), b = s.td.str("b");
  auto r = run_qwen("train --out " + q(a) + opts + " --seed 4");
  ASSERT_EQ(r.status, 0) << r.err;
  r = run_qwen("train --out " + q(b) + opts + " --seed 4 --stop-after 5");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(check_checkpoint_loads(b + "/checkpoint"), 5);
  // Resume with no other option: everything else comes from the checkpoint.
  r = run_qwen("train --out " + q(b) + " --resume");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("resuming: steps 6..9"), std::string::npos) << r.out;
  auto ta = read_metrics(a, "train"), tb = read_metrics(b, "train");
  ASSERT_EQ(ta.size(), 9u);
  ASSERT_EQ(tb.size(), 9u);
  for (size_t i = 0; i < 9; ++i) {
    EXPECT_EQ(tb[i]["step"], ta[i]["step"]);
    EXPECT_EQ(tb[i]["loss"].get<double>(), ta[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(tb[i]["grad_norm"].get<double>(), ta[i]["grad_norm"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(tb[i]["lr"].get<double>(), ta[i]["lr"].get<double>());
  }
  auto ea = read_metrics(a, "eval"), eb = read_metrics(b, "eval");
  ASSERT_EQ(ea.size(), eb.size());
  for (size_t i = 0; i < ea.size(); ++i) EXPECT_EQ(ea[i]["val_loss"].get<double>(), eb[i]["val_loss"].get<double>());
  // Same final weights, bit for bit.
  EXPECT_EQ(read_text(a + "/checkpoint/model.safetensors"), read_text(b + "/checkpoint/model.safetensors"));
  // A second, different seed gives another trajectory (the comparison above can fail).
  const std::string c = s.td.str("c");
  r = run_qwen("train --out " + q(c) + opts + " --seed 5 --stop-after 2");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(read_metrics(c, "train")[1]["loss"].get<double>(), ta[1]["loss"].get<double>());
  // Two threads: runs are just as repeatable.
  const std::string d1 = s.td.str("d1"), d2 = s.td.str("d2");
  const std::string two = " --data " + q(s.data) + " --config " + q(s.cfg) +
                          " --steps 3 --batch 2 --seq 16 --grad-accum 2 --eval-every 0 --threads 2";
  ASSERT_EQ(run_qwen("train --out " + q(d1) + two).status, 0);
  ASSERT_EQ(run_qwen("train --out " + q(d2) + two).status, 0);
  auto m1 = read_metrics(d1, "train"), m2 = read_metrics(d2, "train");
  ASSERT_EQ(m1.size(), 3u);
  ASSERT_EQ(m2.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(m1[i]["loss"].get<double>(), m2[i]["loss"].get<double>());
  EXPECT_EQ(read_text(d1 + "/checkpoint/model.safetensors"), read_text(d2 + "/checkpoint/model.safetensors"));
}

namespace {

pid_t spawn_qwen(const std::vector<std::string>& args, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    (void)f;
    dup2(fileno(stdout), 2);
    std::vector<char*> argv;
    std::string bin = QWEN_BIN;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

TEST(TrainCli, KillAtAnyMomentLeavesALoadableCheckpoint) {
  // Big enough that writing a checkpoint takes a while, small enough that steps are quick:
  // saving every step, the process spends most of its time inside saves.
  TrainSetup s(4000, 512, config_json(512, 128, 256, 2, 4, 2));
  const std::string out = s.td.str("out");
  const std::string state = out + "/checkpoint/trainer_state.json";
  auto saved_step = [&]() -> int64_t {
    std::error_code ec;
    if (!fs::exists(state, ec)) return -1;
    try {
      return read_json(state)["step"].get<int64_t>();
    } catch (...) {
      return -1;  // replaced while being read
    }
  };
  const int rounds = 10;
  int64_t last = 0;
  double period_us = 0;  // time from one checkpoint to the next
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::string> args = {"train", "--out", out, "--steps", "100000", "--save-every", "1",
                                     "--eval-every", "0", "--log-every", "0", "--threads", "1"};
    if (round == 0) {
      for (const char* a : {"--config", s.cfg.c_str(), "--data", s.data.c_str(), "--batch", "2",
                            "--seq", "16", "--seed", "1"})
        args.push_back(a);
    } else {
      args.push_back("--resume");
    }
    const std::string log = s.td.str("log" + std::to_string(round));
    pid_t pid = spawn_qwen(args, log);
    ASSERT_GT(pid, 0);
    // Wait for a checkpoint newer than the resumed one (and, in the first round, time two of
    // them), then kill at a point spread over the save cycle: round r at r/rounds of it.
    const auto t0 = std::chrono::steady_clock::now();
    auto wait_newer = [&](int64_t than) {
      int64_t st;
      while ((st = saved_step()) <= than) {
        if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(30)) return int64_t(-1);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      return st;
    };
    int64_t st = wait_newer(last);
    ASSERT_GE(st, 0) << read_text(log);
    if (round == 0) {
      const auto a = std::chrono::steady_clock::now();
      st = wait_newer(st);
      ASSERT_GE(st, 0) << read_text(log);
      period_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(int64_t(period_us * round / rounds)));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << read_text(log);
    // Without any repair, the checkpoint folder is complete and consistent.
    const int64_t step = check_checkpoint_loads(out + "/checkpoint");
    EXPECT_GE(step, last);
    last = step;
  }
  // And training resumes from it.
  auto r = run_qwen("train --out " + q(out) + " --resume --steps " + std::to_string(last + 2) +
                    " --save-every 0");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(check_checkpoint_loads(out + "/checkpoint"), last + 2);
  EXPECT_FALSE(fs::exists(out + "/checkpoint.tmp"));
}

TEST(TrainCli, NanLossStopsAndKeepsTheLastGoodCheckpoint) {
  TrainSetup s;
  const std::string out = s.td.str("out");
  auto r = run_qwen("train --config " + q(s.cfg) + " --data " + q(s.data) + " --out " + q(out) +
                    " --steps 50 --batch 2 --seq 16 --lr 1e30 --clip-grad-norm 0 --save-every 1 "
                    "--eval-every 0 --threads 1");
  expect_error(r, {"at step", "last good checkpoint (step"});
  const size_t at = r.err.find("at step ");
  ASSERT_NE(at, std::string::npos);
  const int64_t bad_step = std::stoll(r.err.substr(at + 8));
  EXPECT_GE(bad_step, 2);
  EXPECT_EQ(check_checkpoint_loads(out + "/checkpoint"), bad_step - 1);
  EXPECT_EQ(int64_t(read_metrics(out, "train").size()), bad_step - 1);
}

TEST(TrainCli, OffSwitchesStillWriteTheFinalCheckpoint) {
  TrainSetup s;
  const std::string out = s.td.str("out");
  auto r = run_qwen("train --config " + q(s.cfg) + " --data " + q(s.data) + " --out " + q(out) +
                    " --steps 2 --batch 2 --seq 8 --eval-every 0 --save-every 0 --recompute --threads 1");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(check_checkpoint_loads(out + "/checkpoint"), 2);
  EXPECT_TRUE(read_metrics(out, "eval").empty());
  EXPECT_EQ(read_metrics(out, "train").size(), 2u);
  // Without --resume an existing checkpoint is never overwritten.
  r = run_qwen("train --config " + q(s.cfg) + " --data " + q(s.data) + " --out " + q(out) + " --steps 2");
  expect_error(r, {"already holds a checkpoint", "--resume"});
  EXPECT_EQ(check_checkpoint_loads(out + "/checkpoint"), 2);
}

TEST(TrainCli, TimeBudgetFixesTheLengthAfterStepSix) {
  TrainSetup s;
  const std::string out = s.td.str("out");
  // A budget already spent by step 6: the run ends one step later, with the cosine schedule
  // recomputed for 7 steps (warm-up 6 keeps steps 1-6 independent of the length).
  auto r = run_qwen("train --config " + q(s.cfg) + " --data " + q(s.data) + " --out " + q(out) +
                    " --steps 1000 --time-budget 0.001 --warmup 6 --lr 1e-3 --batch 2 --seq 8 "
                    "--eval-every 0 --threads 1");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("-> 7 steps in total"), std::string::npos) << r.out;
  auto t = read_metrics(out, "train");
  ASSERT_EQ(t.size(), 7u);
  qwen::train::LrScheduleOptions so;
  so.lr = 1e-3;
  so.warmup = 6;
  so.total_steps = 7;
  for (size_t i = 0; i < 7; ++i) EXPECT_DOUBLE_EQ(t[i]["lr"].get<double>(), qwen::train::lr_at(so, int64_t(i)));
  EXPECT_EQ(check_checkpoint_loads(out + "/checkpoint"), 7);
}

TEST(TrainCli, BadInput) {
  TrainSetup s;
  const std::string base = " --data " + q(s.data) + " --steps 1 --batch 1 --seq 8 --threads 1 --out ";
  auto cfg = [&](const std::string& name, const std::string& text) {
    std::ofstream(s.td.str(name)) << text;
    return q(s.td.str(name));
  };
  // Inconsistent config sizes.
  expect_error(run_qwen("train --config " + cfg("h.json", config_json(64, 36, 64, 1, 8, 2)) + base + q(s.td.str("o1"))),
               {"h.json", "num_attention_heads"});
  expect_error(run_qwen("train --config " + cfg("kv.json", config_json(64, 32, 64, 1, 4, 3)) + base + q(s.td.str("o2"))),
               {"kv.json", "num_key_value_heads"});
  // Missing data folder.
  expect_error(run_qwen("train --config " + q(s.cfg) + " --data " + q(s.td.str("nodata")) +
                        " --out " + q(s.td.str("o3"))),
               {"nodata", "does not exist"});
  // Model vocabulary smaller than the data's / the tokenizer's.
  expect_error(run_qwen("train --config " + cfg("v.json", config_json(32, 32, 64, 1, 4, 2)) + base + q(s.td.str("o4"))),
               {"vocab"});
  std::ofstream(s.td.str("t.txt")) << "Some text to tokenise for the data folder.\n";
  ASSERT_EQ(run_qwen("data prepare --tokenizer " + q(data_path("tokenizer/trained")) + " --input " +
                     q(s.td.str("t.txt")) + " --out " + q(s.td.str("tdata")) + " --val-fraction 0")
                .status,
            0);
  expect_error(run_qwen("train --config " + q(s.cfg) + " --data " + q(s.td.str("tdata")) +
                        " --seq 4 --out " + q(s.td.str("o5"))),
               {"vocab", "64"});
  // A --tokenizer other than the one the data was made with.
  expect_error(run_qwen("train --config " + cfg("v2.json", config_json(2048, 32, 64, 1, 4, 2)) +
                        " --data " + q(s.td.str("tdata")) + " --tokenizer " +
                        q(data_path("tokenizer/gpt2_style")) + " --seq 4 --out " + q(s.td.str("o5b"))),
               {"gpt2_style", "1503", "700"});
  // Unwritable output folders.
  expect_error(run_qwen("train --config " + q(s.cfg) + base + "/proc/qwen-cannot-write"), {"--out", "/proc/qwen-cannot-write"});
  std::ofstream(s.td.str("afile")) << "x";
  expect_error(run_qwen("train --config " + q(s.cfg) + base + q(s.td.str("afile") + "/sub")), {"afile"});
  // Corrupt shards.
  fs::copy(s.data, s.td.str("bad"), fs::copy_options::recursive);
  {
    std::fstream f(s.td.str("bad/train_000.bin"), std::ios::in | std::ios::out | std::ios::binary);
    f.write("JUNKJUNK", 8);
  }
  expect_error(run_qwen("train --config " + q(s.cfg) + " --data " + q(s.td.str("bad")) + " --out " + q(s.td.str("o6"))),
               {"train_000.bin", "wrong magic"});
  fs::resize_file(s.td.str("bad/val_000.bin"), 40);
  fs::copy_file(s.data + "/train_000.bin", s.td.str("bad/train_000.bin"), fs::copy_options::overwrite_existing);
  expect_error(run_qwen("train --config " + q(s.cfg) + " --data " + q(s.td.str("bad")) + " --out " + q(s.td.str("o7"))),
               {"val_000.bin", "truncated"});
  // Options.
  expect_error(run_qwen("train --data " + q(s.data) + " --out " + q(s.td.str("o8"))), {"--config", "--init-from"});
  expect_error(run_qwen("train --out " + q(s.td.str("o9")) + " --resume"), {"--resume", "no checkpoint"});
  expect_error(run_qwen("train --config " + q(s.cfg) + base + q(s.td.str("o10")) + " --lr-schedule linear"),
               {"linear", "constant"});
  expect_error(run_qwen("train --config " + q(s.cfg) + " --data " + q(s.data) + " --seq 1000 --out " + q(s.td.str("o11"))),
               {"--seq", "max_position_embeddings"});
  // data prepare.
  expect_error(run_qwen("data prepare --input " + q(s.td.str("t.txt")) + " --out " + q(s.td.str("d1"))), {"--tokenizer"});
  expect_error(run_qwen("data prepare --tokenizer " + q(data_path("tokenizer/trained")) + " --input " +
                        q(s.td.str("missing.txt")) + " --out " + q(s.td.str("d2"))),
               {"missing.txt"});
}

TEST(TrainCli, EvalTextEqualsEvalIds) {
  TempDir td;
  const std::string tokdir = data_path("tokenizer/trained");
  qwen::Tokenizer tok = qwen::Tokenizer::from_dir(tokdir);
  std::ofstream(td.str("m.json")) << config_json(tok.vocab_size(), 32, 64, 1, 4, 2);
  auto r = run_qwen("init --config " + q(td.str("m.json")) + " --seed 2 --tokenizer " + q(tokdir) +
                    " --out " + q(td.str("m")));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string text =
      "She was the youngest of the two daughters of a most affectionate, indulgent father; and "
      "had, in consequence of her sister's marriage, been mistress of his house from a very early "
      "period. Her mother had died too long ago for her to have more than an indistinct "
      "remembrance of her caresses.\n";
  std::ofstream(td.str("t.txt")) << text;
  std::ofstream(td.str("ids.txt")) << ids_text(tok.encode(text, true));
  auto a = run_qwen("eval --model " + q(td.str("m")) + " --text " + q(td.str("t.txt")) + " --context 32 --threads 1 --json");
  auto b = run_qwen("eval --model " + q(td.str("m")) + " --ids-file " + q(td.str("ids.txt")) + " --context 32 --threads 1 --json");
  ASSERT_EQ(a.status, 0) << a.err;
  ASSERT_EQ(b.status, 0) << b.err;
  auto ja = json::parse(a.out), jb = json::parse(b.out);
  EXPECT_EQ(ja["tokens"], jb["tokens"]);
  EXPECT_EQ(ja["tokens"].get<size_t>(), tok.encode(text, true).size() - 1);
  EXPECT_EQ(ja["loss"].get<double>(), jb["loss"].get<double>());
  // Errors: both sources, a folder without a tokenizer.
  expect_error(run_qwen("eval --model " + q(td.str("m")) + " --text " + q(td.str("t.txt")) +
                        " --ids-file " + q(td.str("ids.txt"))),
               {"--ids-file", "--text"});
  fs::remove(td.str("m/tokenizer.json"));
  expect_error(run_qwen("eval --model " + q(td.str("m")) + " --text " + q(td.str("t.txt"))), {"tokenizer.json"});
}
