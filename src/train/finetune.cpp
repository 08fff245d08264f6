// train/finetune.cpp — `qwen finetune` (LoRA / QLoRA on packed instruction data, through the
// shared training loop), in-memory NF4 quantisation of a base, and the task evaluation. See
// finetune.h.
#include "train/finetune.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/cpu.h"
#include "generate/generator.h"
#include "model/decoder.h"
#include "ops/quant.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"

namespace qwen::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* const kProjections[] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                    "gate_proj", "up_proj", "down_proj"};

// Packed instruction rows (SftPacker) as the loop's batch source.
class PackedSource : public BatchSource {
 public:
  PackedSource(const SftDataset& data, uint64_t seed, int64_t batch)
      : packer_(data, seed), B_(batch) {}
  void next(int32_t* tokens, int32_t* targets) override { packer_.next_batch(B_, tokens, targets); }
  json state() const override { return {{"loader", json::parse(packer_.save_state())}}; }
  void restore(const json& saved) override { packer_.restore_state(saved.at("loader").dump()); }
  const SftPacker& packer() const { return packer_; }

 private:
  SftPacker packer_;
  int64_t B_;
};

std::string targets_list(const std::vector<std::string>& t) {
  std::string s;
  for (const auto& x : t) s += (s.empty() ? "" : ",") + x;
  return s;
}

json finetune_options_json(const FinetuneOptions& o) {
  json j = options_json(o.train);
  for (const char* k : {"config", "init-from", "data", "tokenizer", "sequential"}) j.erase(k);
  j["base"] = o.base;
  j["data"] = o.data;
  j["val-data"] = o.val_data;
  j["lora-r"] = o.lora.r;
  j["lora-alpha"] = o.lora.alpha;
  j["lora-dropout"] = o.lora.dropout;
  j["target"] = targets_list(o.lora.targets);
  j["rslora"] = o.lora.rslora;
  j["qlora"] = o.qlora;
  j["on-bad-line"] = o.on_bad_line == OnBadLine::skip ? "skip" : "stop";
  return j;
}

// Mean loss over the loss tokens of examples [0, n) of data, each alone in a row of T tokens.
double sft_eval_sum(TrainModel& model, const SftDataset& data, int64_t n, int64_t B, int64_t T,
                    int64_t* n_counted) {
  SftEvalIterator it(data);
  const int64_t S = data.seq();
  std::vector<int32_t> row_tk(static_cast<size_t>(S)), row_tg(static_cast<size_t>(S));
  std::vector<int32_t> tk(static_cast<size_t>(B * T)), tg(static_cast<size_t>(B * T));
  double sum = 0;
  int64_t count = 0;
  for (int64_t i0 = 0; i0 < n; i0 += B) {
    const int64_t nb = std::min(B, n - i0);
    for (int64_t b = 0; b < nb; ++b) {
      it.row(i0 + b, row_tk.data(), row_tg.data());
      std::copy(row_tk.begin(), row_tk.begin() + T, tk.begin() + b * T);
      std::copy(row_tg.begin(), row_tg.begin() + T, tg.begin() + b * T);
    }
    int64_t c = 0;
    sum += model.forward_loss(tk.data(), tg.data(), nb, T, &c);
    count += c;
  }
  *n_counted = count;
  return sum;
}

}  // namespace

std::vector<std::string> parse_lora_targets(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s + ",") {
    if (ch == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (ch != ' ') {
      cur += ch;
    }
  }
  return out;
}

std::unique_ptr<Model> quantize_layers_nf4(const Model& base, int64_t* n_quantized,
                                           int64_t* n_kept) {
  ops::quant_kernels(DType::NF4);  // throws if this build has no NF4 kernels
  auto store = std::make_shared<std::vector<std::vector<uint8_t>>>();
  std::vector<LayerWeights> layers = base.layers();
  int64_t nq = 0, nk = 0;
  std::vector<float> row;
  for (auto& L : layers)
    for (const char* name : kProjections) {
      Linear& l = layer_linear(L, name);
      if (l.dtype == DType::NF4) continue;
      if (l.n_in % dtype_block_elems(DType::NF4) != 0 || dtype_is_quantized(l.dtype)) {
        ++nk;
        continue;
      }
      store->emplace_back(ops::quant_matrix_bytes(DType::NF4, l.n_out, l.n_in));
      uint8_t* dst = store->back().data();
      row.resize(size_t(l.n_out * l.n_in));
      convert_to_f32(l.w, l.dtype, row.data(), row.size());
      ops::quantize_matrix(DType::NF4, row.data(), dst, l.n_out, l.n_in);
      l.w = dst;
      l.dtype = DType::NF4;
      ++nq;
    }
  if (n_quantized) *n_quantized = nq;
  if (n_kept) *n_kept = nk;
  return Model::from_weights(base.config(), store, base.embed(), base.embed_dtype(),
                             base.final_norm(), base.lm_head(), std::move(layers));
}

FinetuneResult run_finetune(FinetuneOptions o, const std::set<std::string>& given) {
  TrainOptions& t = o.train;
  if (t.resume)
    for (const char* k : {"base", "lora-r", "lora-alpha", "lora-dropout", "target", "rslora", "qlora"})
      if (given.count(k))
        throw Error(std::string("--") + k + " cannot change on --resume (the checkpoint fixes the base "
                    "and the adapter); drop it or start a new --out");
  std::string ckpt_dir;
  const json saved_state = start_run(t, &ckpt_dir);
  if (t.resume) {
    try {
      const json& so = saved_state.at("options");
      apply_saved_options(t, so, given);
      o.base = so.at("base").get<std::string>();
      o.qlora = so.value("qlora", "");
      if (!given.count("data")) o.data = so.at("data").get<std::string>();
      if (!given.count("val-data")) o.val_data = so.value("val-data", "");
      if (!given.count("on-bad-line"))
        o.on_bad_line = so.value("on-bad-line", "stop") == "skip" ? OnBadLine::skip : OnBadLine::stop;
    } catch (const json::exception& e) {
      throw Error("'" + ckpt_dir + "/trainer_state.json' is not valid (" + e.what() + ")");
    }
  } else {
    if (o.base.empty()) throw Error("--base DIR is required (the model folder to fine-tune)");
    if (o.data.empty()) throw Error("--data FILE.jsonl is required (instruction data, one JSON object a line)");
    o.lora.validate();
    for (auto& x : o.lora.targets) {  // short names, as --target takes them
      const std::string m = LoraConfig::module_name(x);
      x = m.substr(0, m.size() - 5);
    }
  }
  if (!o.qlora.empty() && o.qlora != "nf4")
    throw Error("--qlora '" + o.qlora + "' is not supported; use --qlora nf4");
  check_options(t);
  set_num_threads(t.threads);
  t.threads = num_threads();
  o.base = absolute_path(o.base);
  o.data = absolute_path(o.data);
  o.val_data = absolute_path(o.val_data);

  // Tokenizer and data first: the cheapest things to get wrong.
  if (!fs::exists(fs::path(o.base) / "tokenizer.json"))
    throw Error("--base '" + o.base + "' has no tokenizer.json (needed to render the chat data)");
  const Tokenizer tok = Tokenizer::from_dir(o.base);
  SftOptions so;
  so.seq = t.seq;
  so.on_bad_line = o.on_bad_line;
  const SftDataset train_data = SftDataset::load(o.data, tok, so);
  std::unique_ptr<SftDataset> val_data;
  if (!o.val_data.empty()) val_data = std::make_unique<SftDataset>(SftDataset::load(o.val_data, tok, so));

  // The frozen base (quantised to NF4 if asked) and the adapter.
  std::unique_ptr<Model> loaded = Model::load(o.base, nullptr, /*nf4_compact=*/true);  // QLoRA: ~4.13 bits
  const ModelConfig& cfg = loaded->config();
  if (tok.vocab_size() > cfg.vocab_size)
    throw Error("the tokenizer in '" + o.base + "' has " + std::to_string(tok.vocab_size()) +
                " ids but the model's vocab_size is " + std::to_string(cfg.vocab_size));
  if (t.seq > cfg.max_position_embeddings)
    throw Error("--seq " + std::to_string(t.seq) + " exceeds the model's max_position_embeddings " +
                std::to_string(cfg.max_position_embeddings));
  FinetuneResult fr;
  std::unique_ptr<Model> quantized;
  int64_t n_kept = 0;
  if (o.qlora == "nf4" && loaded->matrix_dtype() != DType::NF4)
    quantized = quantize_layers_nf4(*loaded, &fr.quantized_matrices, &n_kept);
  else
    for (const auto& L : loaded->layers())
      for (const char* name : kProjections) fr.quantized_matrices += layer_linear(L, name).dtype == DType::NF4;
  const Model& base = quantized ? *quantized : *loaded;
  std::unique_ptr<LoraAdapter> adapter =
      t.resume ? LoraAdapter::load(ckpt_dir, cfg) : LoraAdapter::create(cfg, o.lora, t.seed);
  if (t.resume) o.lora = adapter->config();
  TrainModelOptions mopt;
  mopt.recompute = t.recompute;
  TrainModel model(base, *adapter, mopt);

  fr.base_params = base.num_parameters();
  fr.trainable_params = model.n_params();
  fr.base_weight_bytes = base.weight_bytes();
  size_t quant_bytes = 0;
  int64_t quant_params = 0;
  for (const auto& L : base.layers())
    for (const char* name : kProjections) {
      const Linear& l = layer_linear(L, name);
      if (l.dtype != DType::NF4) continue;
      quant_bytes += l.bytes();
      quant_params += l.n_out * l.n_in;
    }

  PackedSource source(train_data, t.seed, t.batch);
  const int64_t B = t.batch, T = t.seq, A = t.grad_accum;
  LoopSpec spec;
  spec.model = &model;
  spec.data = &source;
  int64_t n_val = 0, T_val = 1;
  if (val_data && t.eval_every > 0) {
    n_val = std::min<int64_t>(val_data->size(), t.eval_batches * B);
    for (int64_t i = 0; i < n_val; ++i)  // rows only as long as the longest example needs
      T_val = std::max<int64_t>(T_val, int64_t(val_data->examples()[size_t(i)].ids.size()) - 1);
    T_val = std::min(T_val, T);
    spec.evaluate = [&](int64_t* n_counted) {
      return sft_eval_sum(model, *val_data, n_val, B, T_val, n_counted);
    };
    spec.eval_tokens = n_val * T_val;
  }
  spec.ckpt_dir = ckpt_dir;
  spec.saved_state = saved_state;
  spec.tokenizer_dir = o.base;
  spec.options = [&]() { return finetune_options_json(o); };
  spec.plot_title = quantized || base.matrix_dtype() == DType::NF4 ? "qwen finetune (QLoRA): loss"
                                                                   : "qwen finetune (LoRA): loss";
  spec.dropout_seed = t.seed ^ 0x10DA5EEDull;
  // Per token: forward 2·N_base, backward dX 2·N_base (frozen weights get no gradient), and the
  // adapter's own 6·N_adapter.
  spec.flops_per_token = 4.0 * double(fr.base_params) + 6.0 * double(fr.trainable_params);
  spec.flops_label = "(4·N_base + 6·N_adapter)·tok/s";
  const double frac = double(fr.trainable_params) / double(fr.base_params);
  spec.summary_extra = {{"base", o.base},
                        {"base_params", fr.base_params},
                        {"trainable_params", fr.trainable_params},
                        {"trainable_fraction", frac},
                        {"base_weight_bytes", fr.base_weight_bytes},
                        {"nf4_matrices", fr.quantized_matrices},
                        {"nf4_matrix_bits_per_param",
                         quant_params > 0 ? json(8.0 * double(quant_bytes) / double(quant_params)) : json(nullptr)},
                        {"lora_r", o.lora.r},
                        {"lora_alpha", o.lora.alpha},
                        {"targets", targets_list(o.lora.targets)},
                        {"train_examples", train_data.size()},
                        {"val_examples", n_val}};
  spec.header = [&](int64_t first, int64_t stop) {
    std::printf("base %s: %s, %.2fM parameters (%s%s), weights %.1f MiB in memory\n", o.base.c_str(),
                cfg.architecture.c_str(), double(fr.base_params) / 1e6,
                dtype_name(base.matrix_dtype()),
                quantized ? (", quantised to NF4 in memory: " + std::to_string(fr.quantized_matrices) +
                             " matrices" + (n_kept ? ", " + std::to_string(n_kept) + " kept (rows not a multiple of 64)" : ""))
                                .c_str()
                          : "",
                double(fr.base_weight_bytes) / (1 << 20));
    std::printf("LoRA r %lld, alpha %g%s, dropout %g on %s: %lld trainable parameters (%.3f%% of the "
                "base)%s\n",
                (long long)o.lora.r, o.lora.alpha, o.lora.rslora ? " (rsLoRA)" : "", o.lora.dropout,
                targets_list(o.lora.targets).c_str(), (long long)fr.trainable_params, 100.0 * frac,
                t.recompute ? ", activation recomputation" : "");
    std::printf("data %s\n", train_data.report().summary().c_str());
    std::printf("     %lld packed rows of %lld tokens per epoch; %lld tokens/step (batch %lld x seq "
                "%lld x accum %lld)%s\n",
                (long long)source.packer().rows_in_epoch(), (long long)T, (long long)(B * T * A),
                (long long)B, (long long)T, (long long)A,
                val_data ? "" : ", no validation");
    if (val_data)
      std::printf("val  %s; %lld examples per evaluation\n", val_data->report().summary().c_str(),
                  (long long)n_val);
    std::printf("%s steps %lld..%lld of %lld, lr %.3g (%s, warmup %lld), AdamW betas (%g, %g) eps %g "
                "wd %g, clip %g, %d threads\n",
                t.resume ? "resuming:" : "fine-tuning:", (long long)first, (long long)stop,
                (long long)t.steps, t.lr, lr_schedule_name(t.lr_schedule), (long long)t.warmup,
                t.beta1, t.beta2, t.adam_eps, t.weight_decay, t.clip_grad_norm, num_threads());
  };
  fr.train = run_loop(t, spec);
  return fr;
}

TaskEval evaluate_task(const Model& m, const Tokenizer& tok, const SftDataset& data, int64_t limit,
                       int64_t max_new_tokens, int64_t batch) {
  const ModelConfig& c = m.config();
  const int64_t n = limit > 0 ? std::min(limit, data.size()) : data.size();
  const int64_t V = c.vocab_size;
  TaskEval r;
  r.n = n;
  if (n == 0) return r;
  SftEvalIterator it(data);
  // Loss: each example alone through the inference decoder.
  int64_t longest = 1;
  for (int64_t i = 0; i < n; ++i) longest = std::max<int64_t>(longest, int64_t(data.examples()[size_t(i)].ids.size()));
  {
    KvCache cache(c, 1, longest);
    Decoder dec(m, longest);
    std::vector<float> logits(size_t(longest * V));
    double nll = 0;
    for (int64_t i = 0; i < n; ++i) {
      const SftExample& e = data.examples()[size_t(i)];
      const int64_t L = int64_t(e.ids.size()) - 1;
      if (L < 1) continue;
      cache.reset(0);
      SeqChunk ch{0, L, e.ids.data()};
      dec.forward(cache, &ch, 1, LogitsMode::kAll, logits.data());
      for (int64_t p = 0; p < L; ++p) {
        if (!e.loss_mask[size_t(p + 1)]) continue;
        const float* row = logits.data() + p * V;
        const float mx = *std::max_element(row, row + V);
        double s = 0;
        for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v] - mx));
        nll += std::log(s) + mx - row[e.ids[size_t(p + 1)]];
        ++r.n_loss_tokens;
      }
    }
    r.loss = r.n_loss_tokens > 0 ? nll / double(r.n_loss_tokens) : NAN;
  }
  // Accuracy: greedy answers to the prompts, `batch` at a time.
  GenerationConfig g;
  g.max_new_tokens = max_new_tokens;
  g.sampling.temperature = 0;
  for (int64_t id : c.eos_token_ids) g.stop_ids.push_back(int32_t(id));
  for (int32_t id : tok.stop_ids())
    if (std::find(g.stop_ids.begin(), g.stop_ids.end(), id) == g.stop_ids.end()) g.stop_ids.push_back(id);
  int64_t longest_prompt = 1;
  for (int64_t i = 0; i < n; ++i) longest_prompt = std::max<int64_t>(longest_prompt, data.examples()[size_t(i)].n_prompt);
  const int64_t bsz = std::max<int64_t>(1, std::min(batch, n));
  Generator gen(m, bsz, longest_prompt + max_new_tokens, 512);
  for (int64_t i0 = 0; i0 < n; i0 += bsz) {
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t i = i0; i < std::min(n, i0 + bsz); ++i) prompts.push_back(it.prompt_ids(i));
    const auto outs = gen.generate(prompts, g);
    for (size_t k = 0; k < outs.size(); ++k) {
      const std::string text = tok.decode(outs[k], false);
      const bool ok = exact_match(text, it.reference(i0 + int64_t(k)));
      r.generated.push_back(text);
      r.correct.push_back(ok);
      r.n_correct += ok;
    }
  }
  return r;
}

}  // namespace qwen::train
