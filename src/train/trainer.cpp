// train/trainer.cpp — the `qwen train` loop, checkpoints and resumption. See trainer.h.
#include "train/trainer.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/cpu.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"
#include "train/data.h"
#include "train/plot.h"

namespace qwen::train {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

volatile std::sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

// SIGINT/SIGTERM set a flag for the loop while training runs; the old handlers come back after.
struct SignalGuard {
  struct sigaction old_int {}, old_term {};
  SignalGuard() {
    g_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
};

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read '" + path + "': " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void fsync_path(const std::string& path, bool dir) {
  int fd = ::open(path.c_str(), dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return;
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && !dir) throw Error("cannot sync '" + path + "': " + std::strerror(err));
}

size_t peak_rss() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return size_t(ru.ru_maxrss) * 1024;
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = long(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string human_bytes(double b) {
  char buf[64];
  if (b >= double(1 << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1 << 30));
  else if (b >= double(1 << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1 << 20));
  else std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024);
  return buf;
}

std::string abs_path(const std::string& p) {
  if (p.empty()) return p;
  std::error_code ec;
  fs::path a = fs::absolute(p, ec);
  return ec ? p : a.lexically_normal().string();
}

}  // namespace

std::string absolute_path(const std::string& p) { return abs_path(p); }

// Options as saved in trainer_state.json, keyed by their command-line flag names.
json options_json(const TrainOptions& o) {
  return json{{"config", o.config},
              {"init-from", o.init_from},
              {"data", o.data},
              {"tokenizer", o.tokenizer},
              {"steps", o.steps},
              {"batch", o.batch},
              {"seq", o.seq},
              {"grad-accum", o.grad_accum},
              {"lr", o.lr},
              {"warmup", o.warmup},
              {"lr-schedule", lr_schedule_name(o.lr_schedule)},
              {"min-lr-ratio", o.min_lr_ratio},
              {"weight-decay", o.weight_decay},
              {"beta1", o.beta1},
              {"beta2", o.beta2},
              {"adam-eps", o.adam_eps},
              {"clip-grad-norm", o.clip_grad_norm},
              {"eval-every", o.eval_every},
              {"eval-batches", o.eval_batches},
              {"save-every", o.save_every},
              {"log-every", o.log_every},
              {"time-budget", o.time_budget},
              {"seed", o.seed},
              {"threads", o.threads},
              {"sequential", o.sequential},
              {"recompute", o.recompute}};
}

// Every option not given on the command line takes its saved value.
void apply_saved_options(TrainOptions& o, const json& j, const std::set<std::string>& given) {
  auto take = [&](const char* key, auto& field) {
    if (given.count(key) || !j.contains(key)) return;
    field = j.at(key).get<std::decay_t<decltype(field)>>();
  };
  take("data", o.data);
  take("tokenizer", o.tokenizer);
  take("steps", o.steps);
  take("batch", o.batch);
  take("seq", o.seq);
  take("grad-accum", o.grad_accum);
  take("lr", o.lr);
  take("warmup", o.warmup);
  if (!given.count("lr-schedule") && j.contains("lr-schedule"))
    o.lr_schedule = parse_lr_schedule(j["lr-schedule"].get<std::string>());
  take("min-lr-ratio", o.min_lr_ratio);
  take("weight-decay", o.weight_decay);
  take("beta1", o.beta1);
  take("beta2", o.beta2);
  take("adam-eps", o.adam_eps);
  take("clip-grad-norm", o.clip_grad_norm);
  take("eval-every", o.eval_every);
  take("eval-batches", o.eval_batches);
  take("save-every", o.save_every);
  take("log-every", o.log_every);
  take("time-budget", o.time_budget);
  take("seed", o.seed);
  take("threads", o.threads);
  take("sequential", o.sequential);
  take("recompute", o.recompute);
}

void check_options(const TrainOptions& o) {
  auto bad = [](const std::string& m) { throw Error(m); };
  if (o.out.empty()) bad("--out DIR is required");
  if (o.steps < 1) bad("--steps must be >= 1");
  if (o.batch < 1) bad("--batch must be >= 1");
  if (o.seq < 1) bad("--seq must be >= 1");
  if (o.grad_accum < 1) bad("--grad-accum must be >= 1");
  if (!(o.lr >= 0) || !std::isfinite(o.lr)) bad("--lr must be a finite number >= 0");
  if (o.warmup < 0) bad("--warmup must be >= 0");
  if (!(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1)) bad("--min-lr-ratio must be in [0, 1]");
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay)) bad("--weight-decay must be >= 0");
  if (!(o.beta1 >= 0 && o.beta1 < 1)) bad("--beta1 must be in [0, 1)");
  if (!(o.beta2 >= 0 && o.beta2 < 1)) bad("--beta2 must be in [0, 1)");
  if (!(o.adam_eps > 0) || !std::isfinite(o.adam_eps)) bad("--adam-eps must be > 0");
  if (!(o.clip_grad_norm >= 0) || !std::isfinite(o.clip_grad_norm))
    bad("--clip-grad-norm must be >= 0 (0 = off)");
  if (o.eval_every < 0 || o.save_every < 0 || o.log_every < 0 || o.eval_batches < 1)
    bad("--eval-every, --save-every and --log-every must be >= 0 and --eval-batches >= 1");
  if (o.stop_after < 0) bad("--stop-after must be >= 0");
  if (!(o.time_budget >= 0) || !std::isfinite(o.time_budget)) bad("--time-budget must be >= 0 seconds");
  if (o.threads < 0) bad("--threads must be >= 0");
}

// Create the output folder and prove it is writable (so a bad --out fails before training).
void prepare_out_dir(const std::string& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out))
    throw Error("cannot create --out folder '" + out + "': " +
                (ec ? ec.message() : std::string("a file of that name exists")));
  const std::string probe = (fs::path(out) / ".write-test").string();
  FILE* f = std::fopen(probe.c_str(), "wb");
  bool ok = f && std::fwrite("ok", 1, 2, f) == 2;
  int err = ok ? 0 : errno;
  if (f && std::fclose(f) != 0 && ok) { ok = false; err = errno; }
  std::remove(probe.c_str());
  if (!ok)
    throw Error("cannot write to --out folder '" + out + "': " + std::strerror(err ? err : EIO));
}

namespace {

// splitmix64 of (seed, i): well-spread per-micro-batch seeds.
uint64_t mix_seed(uint64_t seed, uint64_t i) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct MetricPoint {
  int64_t step;
  double value;
};

void write_svg(const std::string& out, const std::vector<MetricPoint>& train,
               const std::vector<MetricPoint>& val, const std::string& title) {
  PlotSeries a{"train loss", "#1f77b4", {}, false}, b{"validation loss", "#d62728", {}, true};
  for (auto p : train) a.xy.push_back({double(p.step), p.value});
  for (auto p : val) b.xy.push_back({double(p.step), p.value});
  std::vector<PlotSeries> s{a};
  if (!val.empty()) s.push_back(b);
  io::write_file_atomic((fs::path(out) / "loss.svg").string(),
                        line_chart_svg(s, title, "step", "loss (nats/token)"));
}

}  // namespace

// ---------------------------------------------------------------------------------------------

StepStats train_step(TrainModel& model, AdamW& opt, const std::vector<const int32_t*>& tokens,
                     const std::vector<const int32_t*>& targets, int64_t B, int64_t T, double lr,
                     double max_norm, const uint64_t* dropout_seeds) {
  StepStats st;
  model.zero_grad();
  int64_t total = 0;
  for (const int32_t* tg : targets)
    for (int64_t i = 0; i < B * T; ++i) total += tg[i] >= 0;
  st.n_counted = total;
  if (total == 0) return st;  // nothing to learn from; no update
  const float scale = float(1.0 / double(total));
  double sum = 0;
  for (size_t k = 0; k < tokens.size(); ++k) {
    if (dropout_seeds) model.set_dropout_seed(dropout_seeds[k]);
    sum += model.forward_backward(tokens[k], targets[k], B, T, scale, nullptr);
  }
  st.loss = sum / double(total);
  st.grad_norm = clip_grad_norm(model.grad_data(), model.n_params(), max_norm);
  st.finite = std::isfinite(st.loss) && std::isfinite(st.grad_norm);
  if (!st.finite) return st;
  opt.step(model.param_data(), model.grad_data(), lr);
  return st;
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

std::string recover_checkpoint(const std::string& out) {
  const fs::path ckpt = fs::path(out) / "checkpoint";
  const fs::path tmp = fs::path(out) / "checkpoint.tmp";
  const fs::path old = fs::path(out) / "checkpoint.old";
  std::error_code ec;
  // A kill between the two renames of the fallback path: the old one is complete.
  if (!fs::exists(ckpt) && fs::exists(old / "trainer_state.json")) fs::rename(old, ckpt, ec);
  // A temporary folder is an unfinished save (or the previous checkpoint after an exchange).
  fs::remove_all(tmp, ec);
  if (fs::exists(ckpt)) fs::remove_all(old, ec);
  return fs::exists(ckpt / "trainer_state.json") ? ckpt.string() : std::string();
}

void save_checkpoint(const std::string& out, const TrainModel& model, const AdamW& opt,
                     const std::string& trainer_state_json, const std::string& tokenizer_dir) {
  const fs::path ckpt = fs::path(out) / "checkpoint";
  const fs::path tmp = fs::path(out) / "checkpoint.tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp, ec);
    if (ec) throw Error("cannot create '" + tmp.string() + "': " + ec.message());
    model.save(tmp.string());
    opt.save((tmp / "optimizer.safetensors").string());
    if (!tokenizer_dir.empty())
      for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        const fs::path src = fs::path(tokenizer_dir) / f;
        if (fs::exists(src)) io::write_file_atomic((tmp / f).string(), read_text(src.string()));
      }
    // Written last: its presence marks a complete folder.
    io::write_file_atomic((tmp / "trainer_state.json").string(), trainer_state_json);
    for (const auto& e : fs::directory_iterator(tmp)) fsync_path(e.path().string(), false);
    fsync_path(tmp.string(), true);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  if (!fs::exists(ckpt)) {
    if (::rename(tmp.c_str(), ckpt.c_str()) != 0)
      throw Error("cannot rename '" + tmp.string() + "' to '" + ckpt.string() + "': " +
                  std::strerror(errno));
  } else if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, ckpt.c_str(), RENAME_EXCHANGE) == 0) {
    // One atomic swap: ckpt is the new folder, tmp holds the previous one.
    fs::remove_all(tmp, ec);
  } else {
    // File systems without RENAME_EXCHANGE: two renames; recover_checkpoint() repairs a kill
    // between them.
    const fs::path old = fs::path(out) / "checkpoint.old";
    fs::remove_all(old, ec);
    if (::rename(ckpt.c_str(), old.c_str()) != 0 || ::rename(tmp.c_str(), ckpt.c_str()) != 0)
      throw Error("cannot replace checkpoint '" + ckpt.string() + "': " + std::strerror(errno));
    fs::remove_all(old, ec);
  }
  fsync_path(out, true);
}

// ---------------------------------------------------------------------------------------------
// The loop

namespace {

// Pretraining windows from token shards.
class ShardSource : public BatchSource {
 public:
  ShardSource(const TokenStream& data, const TrainOptions& o)
      : loader_(data, o.batch, o.seq, o.seed, o.sequential), sequential_(o.sequential) {}
  void next(int32_t* tokens, int32_t* targets) override { loader_.next(tokens, targets); }
  json state() const override {
    const LoaderState ls = loader_.state();
    return {{"loader", {{"seed", ls.seed}, {"epoch", ls.epoch}, {"cursor", ls.cursor},
                        {"sequential", sequential_}}},
            {"rng", {{"kind", "xoshiro256** per (seed, epoch)"}, {"seed", ls.seed}, {"epoch", ls.epoch}}}};
  }
  void restore(const json& saved) override {
    LoaderState ls;
    ls.seed = saved.at("loader").at("seed").get<uint64_t>();
    ls.epoch = saved.at("loader").at("epoch").get<int64_t>();
    ls.cursor = saved.at("loader").at("cursor").get<int64_t>();
    loader_.set_state(ls);
  }

 private:
  DataLoader loader_;
  bool sequential_;
};

}  // namespace

json start_run(const TrainOptions& o, std::string* ckpt_dir) {
  if (o.out.empty()) throw Error("--out DIR is required");
  const std::string& out = o.out;
  prepare_out_dir(out);
  *ckpt_dir = recover_checkpoint(out);
  if (!o.resume) {
    if (!ckpt_dir->empty())
      throw Error("'" + out + "' already holds a checkpoint; pass --resume to continue it or choose "
                  "another --out");
    return json();
  }
  if (ckpt_dir->empty())
    throw Error("--resume: no checkpoint in '" + out + "' (expected " + out +
                "/checkpoint/trainer_state.json); start without --resume");
  try {
    json st = json::parse(read_text((fs::path(*ckpt_dir) / "trainer_state.json").string()));
    if (!st.contains("options")) throw Error("'" + *ckpt_dir + "/trainer_state.json' has no options");
    return st;
  } catch (const json::exception& e) {
    throw Error("'" + *ckpt_dir + "/trainer_state.json' is not valid (" + e.what() + ")");
  }
}

TrainResult run_training(TrainOptions o, const std::set<std::string>& given) {
  std::string ckpt_dir;
  json saved_state = start_run(o, &ckpt_dir);
  if (o.resume) {
    try {
      apply_saved_options(o, saved_state.at("options"), given);
    } catch (const json::exception& e) {
      throw Error("'" + ckpt_dir + "/trainer_state.json' is not valid (" + e.what() + ")");
    }
  } else {
    if (o.config.empty() == o.init_from.empty())
      throw Error("give exactly one of --config model.json (new model) or --init-from DIR "
                  "(existing weights)");
    if (o.data.empty()) throw Error("--data DIR is required (a folder from `qwen data prepare`)");
  }
  check_options(o);
  set_num_threads(o.threads);
  o.threads = num_threads();  // saved as a number: a resumed run uses the same count
  o.data = abs_path(o.data);
  o.tokenizer = abs_path(o.tokenizer);
  o.config = abs_path(o.config);
  o.init_from = abs_path(o.init_from);

  // Data first: the cheapest thing to get wrong.
  TokenStream train_data(o.data, "train");
  const DataMeta& meta = train_data.meta();
  std::unique_ptr<TokenStream> val_data;
  if (o.eval_every > 0 && meta.n_val_tokens >= 2) val_data = std::make_unique<TokenStream>(o.data, "val");

  // Tokenizer copied into checkpoints: --tokenizer, else the checkpoint's (resume), else the init
  // folder's, else the data's.
  std::string tok_dir = o.tokenizer;
  if (tok_dir.empty() && o.resume && fs::exists(fs::path(ckpt_dir) / "tokenizer.json")) tok_dir = ckpt_dir;
  if (tok_dir.empty() && !o.init_from.empty() && fs::exists(fs::path(o.init_from) / "tokenizer.json"))
    tok_dir = o.init_from;
  if (tok_dir.empty() && !meta.tokenizer.empty() &&
      fs::exists(fs::path(o.data) / meta.tokenizer / "tokenizer.json"))
    tok_dir = (fs::path(o.data) / meta.tokenizer).string();
  std::unique_ptr<Tokenizer> tok;
  if (!tok_dir.empty()) {
    if (!fs::exists(fs::path(tok_dir) / "tokenizer.json"))
      throw Error("--tokenizer '" + tok_dir + "' has no tokenizer.json");
    tok = std::make_unique<Tokenizer>(Tokenizer::from_dir(tok_dir));
  }

  // The model.
  std::unique_ptr<TrainModel> model;
  TrainModelOptions mopt;
  mopt.recompute = o.recompute;
  if (o.resume) {
    auto m = Model::load(ckpt_dir);
    model = std::make_unique<TrainModel>(*m, mopt);
  } else if (!o.init_from.empty()) {
    auto m = Model::load(o.init_from);
    model = std::make_unique<TrainModel>(*m, mopt);
  } else {
    ModelConfig cfg = ModelConfig::from_file(o.config);
    cfg.validate(o.config);
    cfg.torch_dtype = "float32";
    if (tok && cfg.eos_token_ids.empty() && tok->eos_id() >= 0) cfg.eos_token_ids.push_back(tok->eos_id());
    model = std::make_unique<TrainModel>(cfg, o.seed, mopt);
  }
  const ModelConfig& cfg = model->config();
  if (meta.vocab_size > cfg.vocab_size || meta.max_id >= cfg.vocab_size)
    throw Error("the data in '" + o.data + "' was tokenised with a vocabulary of " +
                std::to_string(std::max(meta.vocab_size, meta.max_id + 1)) +
                " ids but the model's vocab_size is " + std::to_string(cfg.vocab_size) +
                "; use a model config whose vocab_size covers the tokenizer, or re-run data prepare");
  if (tok && !meta.tokenizer.empty() && tok->vocab_size() != meta.vocab_size)
    throw Error("tokenizer '" + tok_dir + "' has " + std::to_string(tok->vocab_size()) +
                " ids but the data in '" + o.data + "' was prepared with a tokenizer of " +
                std::to_string(meta.vocab_size) + " ids; pass the tokenizer the data was made with");
  if (tok && tok->vocab_size() > cfg.vocab_size)
    throw Error("tokenizer '" + tok_dir + "' has " + std::to_string(tok->vocab_size()) +
                " ids but the model's vocab_size is " + std::to_string(cfg.vocab_size));
  if (o.seq > cfg.max_position_embeddings)
    throw Error("--seq " + std::to_string(o.seq) + " exceeds the model's max_position_embeddings " +
                std::to_string(cfg.max_position_embeddings));

  ShardSource source(train_data, o);
  const int64_t B = o.batch, T = o.seq, A = o.grad_accum;

  // Validation rows: consecutive rows of the val split, at most eval_batches · B of them.
  std::vector<int64_t> val_rows;
  int64_t Tv = T;
  if (val_data) {
    Tv = std::min<int64_t>(T, val_data->size() - 1);
    const int64_t rows = std::min<int64_t>(val_data->size() / (Tv + 1), o.eval_batches * B);
    for (int64_t r = 0; r < rows; ++r) val_rows.push_back(r * (Tv + 1));
  }
  LoopSpec spec;
  spec.model = model.get();
  spec.data = &source;
  if (o.eval_every > 0 && !val_rows.empty()) {
    spec.evaluate = [&](int64_t* n_counted) {
      std::vector<int32_t> buf(size_t(Tv + 1)), tk, tg;
      double sum = 0;
      int64_t n = 0;
      for (size_t r0 = 0; r0 < val_rows.size(); r0 += size_t(B)) {
        const int64_t nb = std::min<int64_t>(B, int64_t(val_rows.size() - r0));
        tk.resize(size_t(nb * Tv));
        tg.resize(size_t(nb * Tv));
        for (int64_t b = 0; b < nb; ++b) {
          val_data->read(val_rows[r0 + size_t(b)], Tv + 1, buf.data());
          std::copy(buf.begin(), buf.end() - 1, tk.begin() + b * Tv);
          std::copy(buf.begin() + 1, buf.end(), tg.begin() + b * Tv);
        }
        int64_t c = 0;
        sum += model->forward_loss(tk.data(), tg.data(), nb, Tv, &c);
        n += c;
      }
      *n_counted = n;
      return sum;
    };
    spec.eval_tokens = int64_t(val_rows.size()) * Tv;
  }
  spec.ckpt_dir = ckpt_dir;
  spec.saved_state = saved_state;
  spec.tokenizer_dir = tok_dir;
  spec.options = [&o]() { return options_json(o); };
  spec.flops_per_token = 6.0 * double(model->n_params());
  spec.header = [&](int64_t first, int64_t stop) {
    const int64_t tokens_per_step = B * T * A;
    std::printf("model %s: %.2fM parameters (%lld layers, hidden %lld, vocab %lld)%s\n",
                cfg.architecture.c_str(), double(model->n_params()) / 1e6,
                (long long)cfg.num_hidden_layers, (long long)cfg.hidden_size,
                (long long)cfg.vocab_size, o.recompute ? ", activation recomputation" : "");
    std::printf("data %s: %lld train tokens, %lld val tokens; %lld tokens/step (batch %lld x seq "
                "%lld x accum %lld), %s%s\n",
                o.data.c_str(), (long long)train_data.size(), (long long)meta.n_val_tokens,
                (long long)tokens_per_step, (long long)B, (long long)T, (long long)A,
                o.sequential ? "sequential rows" : "shuffled windows",
                val_rows.empty() ? ", no validation" : "");
    std::printf("%s steps %lld..%lld of %lld, lr %.3g (%s, warmup %lld), AdamW betas (%g, %g) eps %g "
                "wd %g, clip %g, %d threads\n",
                o.resume ? "resuming:" : "training:", (long long)first, (long long)stop,
                (long long)o.steps, o.lr, lr_schedule_name(o.lr_schedule), (long long)o.warmup,
                o.beta1, o.beta2, o.adam_eps, o.weight_decay, o.clip_grad_norm, num_threads());
  };
  return run_loop(o, spec);
}

TrainResult run_loop(TrainOptions& o, LoopSpec& spec) {
  TrainResult res;
  TrainModel* model = spec.model;
  const std::string& out = o.out;
  const std::string& ckpt_dir = spec.ckpt_dir;
  const json& saved_state = spec.saved_state;
  AdamWOptions aopt{o.beta1, o.beta2, o.adam_eps, o.weight_decay};
  AdamW adamw(model->params(), model->n_params(), aopt);
  int64_t start_step = 0;  // steps already done
  double elapsed_before = 0;
  int64_t last_saved = -1;
  std::vector<MetricPoint> train_pts, val_pts;
  const std::string metrics_path = (fs::path(out) / "metrics.jsonl").string();
  if (o.resume) {
    adamw.load((fs::path(ckpt_dir) / "optimizer.safetensors").string());
    try {
      start_step = saved_state.at("step").get<int64_t>();
      spec.data->restore(saved_state);
      elapsed_before = saved_state.value("elapsed_s", 0.0);
    } catch (const json::exception& e) {
      throw Error("'" + ckpt_dir + "/trainer_state.json' is not valid (" + e.what() + ")");
    }
    if (adamw.step_count() != start_step)
      throw Error("checkpoint '" + ckpt_dir + "' is inconsistent: optimiser at step " +
                  std::to_string(adamw.step_count()) + ", trainer at step " + std::to_string(start_step));
    last_saved = start_step;
  }
  // metrics.jsonl: keep what the checkpoint has seen, drop lines of steps run after it.
  {
    std::string kept;
    if (o.resume && fs::exists(metrics_path)) {
      std::istringstream in(read_text(metrics_path));
      std::string line;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        json j;
        try { j = json::parse(line); } catch (...) { continue; }  // a line cut by a kill
        const int64_t s = j.value("step", int64_t(-1));
        if (s < 0 || s > start_step) continue;
        const std::string type = j.value("type", "train");
        if (type == "train" && j.contains("loss")) train_pts.push_back({s, j["loss"].get<double>()});
        if (type == "eval" && j.contains("val_loss")) val_pts.push_back({s, j["val_loss"].get<double>()});
        kept += line + "\n";
      }
    }
    io::write_file_atomic(metrics_path, kept);
  }
  FILE* metrics = std::fopen(metrics_path.c_str(), "ab");
  if (!metrics) throw Error("cannot open '" + metrics_path + "' for writing: " + std::strerror(errno));
  struct Closer { FILE* f; ~Closer() { std::fclose(f); } } closer{metrics};
  auto emit = [&](const ojson& j) {
    const std::string s = j.dump() + "\n";
    if (std::fwrite(s.data(), 1, s.size(), metrics) != s.size() || std::fflush(metrics) != 0)
      throw Error("cannot write '" + metrics_path + "': " + std::strerror(errno) +
                  " (disk full?); the last checkpoint is intact");
  };

  int64_t stop = o.stop_after > 0 ? std::min(o.stop_after, o.steps) : o.steps;
  LrScheduleOptions sched{o.lr_schedule, o.lr, o.warmup, o.steps, o.min_lr_ratio};
  const int64_t B = o.batch, T = o.seq, A = o.grad_accum;
  const int64_t tokens_per_step = B * T * A;

  auto state_json = [&](int64_t step, double elapsed) {
    json j = spec.data->state();
    j.update(json{{"step", step},
              {"tokens_seen", step * tokens_per_step},
              {"elapsed_s", elapsed},
              {"n_params", model->n_params()},
              {"options", spec.options()},
              {"last_loss", train_pts.empty() ? json(nullptr) : json(train_pts.back().value)},
              {"last_val_loss", val_pts.empty() ? json(nullptr) : json(val_pts.back().value)}});
    return j.dump(1) + "\n";
  };
  auto save = [&](int64_t step, double elapsed) {
    try {
      save_checkpoint(out, *model, adamw, state_json(step, elapsed), spec.tokenizer_dir);
    } catch (const Error& e) {
      throw Error(std::string("saving the checkpoint of step ") + std::to_string(step) + " failed: " +
                  e.what() + (last_saved >= 0 ? "; the checkpoint of step " +
                                                    std::to_string(last_saved) + " is intact"
                                              : std::string()));
    }
    last_saved = step;
    write_svg(out, train_pts, val_pts, spec.plot_title);
  };

  const bool validate = o.eval_every > 0 && spec.evaluate;
  auto evaluate = [&]() {
    int64_t n = 0;
    const double sum = spec.evaluate(&n);
    return n > 0 ? sum / double(n) : NAN;
  };

  res.first_step = start_step + 1;
  res.last_step = start_step;
  if (start_step >= stop) {
    if (!o.quiet)
      std::printf("the checkpoint in %s is already at step %lld (--steps %lld); nothing to do\n",
                  out.c_str(), (long long)start_step, (long long)stop);
    return res;
  }
  if (!o.quiet && spec.header) {
    spec.header(start_step + 1, stop);
    std::fflush(stdout);
  }

  SignalGuard guard;
  std::vector<int32_t> tok_buf(size_t(A * B * T)), tgt_buf(size_t(A * B * T));
  std::vector<const int32_t*> tk_ptrs, tg_ptrs;
  std::vector<uint64_t> dropout_seeds(static_cast<size_t>(A), 0);
  for (int64_t a = 0; a < A; ++a) {
    tk_ptrs.push_back(tok_buf.data() + a * B * T);
    tg_ptrs.push_back(tgt_buf.data() + a * B * T);
  }
  std::vector<double> rates;
  const auto t_start = std::chrono::steady_clock::now();
  auto since_start = [&]() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  };
  double train_secs = 0, first_secs = 0;
  // --time-budget: after this step the run's length is fixed from the measured step time.
  constexpr int64_t kBudgetStep = 6;
  for (int64_t step = start_step + 1; step <= stop; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = lr_at(sched, step - 1);
    for (int64_t a = 0; a < A; ++a)
      spec.data->next(tok_buf.data() + a * B * T, tgt_buf.data() + a * B * T);
    for (int64_t a = 0; a < A; ++a)  // LoRA dropout masks: a function of (seed, step, micro-batch)
      dropout_seeds[size_t(a)] = mix_seed(spec.dropout_seed, uint64_t(step) * uint64_t(A) + uint64_t(a));
    const StepStats st = train_step(*model, adamw, tk_ptrs, tg_ptrs, B, T, lr, o.clip_grad_norm,
                                    model->is_lora() ? dropout_seeds.data() : nullptr);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!st.finite) {
      write_svg(out, train_pts, val_pts, spec.plot_title);
      throw Error(std::string("loss is ") + (std::isfinite(st.loss) ? "finite but the gradient is " : "") +
                  (std::isnan(st.loss) || std::isnan(st.grad_norm) ? "NaN" : "infinite") +
                  " at step " + std::to_string(step) + "; stopped without applying it: " +
                  (last_saved >= 0 ? "the last good checkpoint (step " + std::to_string(last_saved) +
                                         ") is in " + out + "/checkpoint"
                                   : std::string("no checkpoint had been written yet")) +
                  "; try a lower --lr or --clip-grad-norm");
    }
    train_secs += dt;
    if (step == start_step + 1) first_secs = dt;
    const double rate = double(tokens_per_step) / dt;
    rates.push_back(rate);
    res.last_step = step;
    res.last_loss = st.loss;
    train_pts.push_back({step, st.loss});
    emit(ojson{{"type", "train"},
              {"step", step},
              {"loss", st.loss},
              {"lr", lr},
              {"grad_norm", st.grad_norm},
              {"tokens_per_s", rate},
              {"tokens", step * tokens_per_step},
              {"elapsed_s", elapsed_before + since_start()}});
    if (!o.quiet && o.log_every > 0 && (step % o.log_every == 0 || step == stop || step == start_step + 1)) {
      const double eta = train_secs / double(step - start_step) * double(stop - step);
      std::printf("step %6lld/%lld | loss %.6f | lr %.3e | grad norm %.4f | %.0f tok/s | ETA %s\n",
                  (long long)step, (long long)o.steps, st.loss, lr, st.grad_norm, rate,
                  fmt_duration(eta).c_str());
      std::fflush(stdout);
    }
    if (o.time_budget > 0 && step == kBudgetStep && start_step < kBudgetStep && o.steps > kBudgetStep) {
      // Seconds per step without the first (allocations, cold caches), plus evaluations: a
      // forward pass costs about a third of a training step per token.
      double per_step = (train_secs - first_secs) / double(step - start_step - 1);
      if (validate)
        per_step += per_step * double(spec.eval_tokens) / double(tokens_per_step) / 3.0 /
                    double(o.eval_every);
      const double left = o.time_budget - since_start();
      const int64_t total = step + std::max<int64_t>(1, int64_t(left / per_step));
      if (total < o.steps) {
        o.steps = total;
        sched.total_steps = total;
        stop = o.stop_after > 0 ? std::min(o.stop_after, o.steps) : o.steps;
        if (!o.quiet) {
          std::printf("time budget %.0fs: %.3fs per step -> %lld steps in total\n", o.time_budget,
                      per_step, (long long)o.steps);
          std::fflush(stdout);
        }
      }
    }
    if (validate && (step % o.eval_every == 0 || step == o.steps)) {
      const auto e0 = std::chrono::steady_clock::now();
      const double vl = evaluate();
      const double es = std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
      res.last_val_loss = vl;
      val_pts.push_back({step, vl});
      emit(ojson{{"type", "eval"},
                {"step", step},
                {"val_loss", vl},
                {"val_perplexity", std::exp(vl)},
                {"val_tokens", spec.eval_tokens},
                {"elapsed_s", elapsed_before + since_start()}});
      if (!o.quiet) {
        std::printf("eval step %lld | val loss %.4f | val perplexity %.2f | %lld tokens in %.1fs\n",
                    (long long)step, vl, std::exp(vl), (long long)spec.eval_tokens, es);
        std::fflush(stdout);
      }
      write_svg(out, train_pts, val_pts, spec.plot_title);
    }
    const bool interrupted = g_signal != 0;
    if (step == stop || interrupted || (o.save_every > 0 && step % o.save_every == 0)) {
      const auto s0 = std::chrono::steady_clock::now();
      save(step, elapsed_before + since_start());
      if (!o.quiet) {
        std::printf("saved %s/checkpoint (step %lld) in %.2fs\n", out.c_str(), (long long)step,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count());
        std::fflush(stdout);
      }
    }
    if (interrupted) {
      res.interrupted = true;
      if (!o.quiet) std::printf("interrupted by signal %d after step %lld\n", int(g_signal), (long long)step);
      break;
    }
  }

  std::vector<double> r = rates;
  if (r.size() > 1) r.erase(r.begin());  // the first step warms caches and allocates
  std::sort(r.begin(), r.end());
  res.tokens_per_s = r.empty() ? 0 : r[r.size() / 2];
  res.activation_bytes = model->activation_bytes();
  res.peak_rss_bytes = peak_rss();
  const double flops_per_token = spec.flops_per_token;
  json summary = {{"params", model->n_params()},
                  {"first_step", res.first_step},
                  {"last_step", res.last_step},
                  {"tokens_per_step", tokens_per_step},
                  {"tokens_per_s_median", res.tokens_per_s},
                  {"train_flops_per_s", flops_per_token * res.tokens_per_s},
                  {"activation_bytes", res.activation_bytes},
                  {"peak_rss_bytes", res.peak_rss_bytes},
                  {"recompute", o.recompute},
                  {"threads", num_threads()},
                  {"batch", B},
                  {"seq", T},
                  {"grad_accum", A},
                  {"last_loss", res.last_loss},
                  {"last_val_loss", res.last_val_loss >= 0 ? json(res.last_val_loss) : json(nullptr)},
                  {"interrupted", res.interrupted}};
  if (spec.summary_extra.is_object()) summary.update(spec.summary_extra);
  io::write_file_atomic((fs::path(out) / "train_summary.json").string(), summary.dump(1) + "\n");
  if (!o.quiet) {
    std::printf("done: steps %lld..%lld, last loss %.4f", (long long)res.first_step,
                (long long)res.last_step, res.last_loss);
    if (res.last_val_loss >= 0)
      std::printf(", val loss %.4f (perplexity %.2f)", res.last_val_loss, std::exp(res.last_val_loss));
    std::printf("; %.0f tok/s (median), %.2f GFLOP/s (%s); activations %s, peak RSS %s\n",
                res.tokens_per_s, flops_per_token * res.tokens_per_s / 1e9, spec.flops_label.c_str(),
                human_bytes(double(res.activation_bytes)).c_str(),
                human_bytes(double(res.peak_rss_bytes)).c_str());
    std::fflush(stdout);
  }
  return res;
}

}  // namespace qwen::train
