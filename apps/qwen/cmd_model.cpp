// apps/qwen/cmd_model.cpp — model commands: init (random-weight folder), info, generate, eval,
// bench, and forward (logits dump for interoperability checks). generate, eval and forward take
// --adapter DIR: a PEFT LoRA adapter attached to the loaded base, unmerged. Uses only the public
// API (qwen/eval.h holds the perplexity and benchmark loops).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "commands.h"
#include "qwen/error.h"
#include "qwen/eval.h"
#include "qwen/generator.h"
#include "qwen/model.h"
#include "qwen/runtime.h"
#include "qwen/tokenizer.h"

namespace qwen::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct ModelArgs {
  std::string model;
  std::string dtype;  // convert matrices on load
  std::string adapter;  // LoRA adapter folder ("" = none)
  int threads = 0;
};

void add_model_args(CLI::App* c, ModelArgs& a, bool with_adapter = false) {
  c->add_option("--model", a.model, "Hugging Face model folder (config.json + safetensors)")
      ->required();
  c->add_option("--dtype", a.dtype, "convert weight matrices on load: f32, bf16 or f16");
  c->add_option("--threads", a.threads, "threads for the kernels (default: all cores)");
  if (with_adapter)
    c->add_option("--adapter", a.adapter,
                  "LoRA adapter folder (PEFT: adapter_config.json + adapter_model.safetensors), "
                  "applied unmerged");
}

Model load_model(const ModelArgs& a) {
  set_num_threads(a.threads);
  Model m = a.dtype.empty() ? Model::load(a.model) : Model::load(a.model, parse_float_dtype(a.dtype));
  if (!a.adapter.empty()) m.load_adapter(a.adapter);  // before any generator is built on it
  return m;
}

std::vector<int32_t> parse_ids(const std::string& text, const std::string& where) {
  std::vector<int32_t> ids;
  std::string tok;
  auto flush = [&]() {
    if (tok.empty()) return;
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(tok.c_str(), &end, 10);
    if (*end != 0 || errno || v < 0 || v > INT32_MAX)
      throw Error(where + ": '" + tok + "' is not a token id (non-negative integer)");
    ids.push_back(int32_t(v));
    tok.clear();
  };
  for (char ch : text) {
    if (ch == ',' || std::isspace(static_cast<unsigned char>(ch))) flush();
    else tok += ch;
  }
  flush();
  return ids;
}

std::string human_bytes(double b) {
  char buf[64];
  if (b >= 1 << 30) std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1 << 30));
  else if (b >= 1 << 20) std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1 << 20));
  else std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024);
  return buf;
}

// Built-in shapes for `qwen init`, named after their parameter count.
ModelConfig preset(const std::string& name) {
  ModelConfig c;
  c.architecture = "Qwen2ForCausalLM";
  c.model_type = "qwen2";
  c.qkv_bias = true;
  c.rope_theta = 1000000.0;
  c.max_position_embeddings = 2048;
  c.bos_token_id = -1;
  if (name == "tiny") {  // 0.4M: tests and the demo's first seconds
    c.vocab_size = 512; c.hidden_size = 64; c.intermediate_size = 176; c.num_hidden_layers = 2;
    c.num_attention_heads = 4; c.num_key_value_heads = 2;
  } else if (name == "7m") {  // peers.md "small"
    c.vocab_size = 8192; c.hidden_size = 256; c.intermediate_size = 704; c.num_hidden_layers = 4;
    c.num_attention_heads = 8; c.num_key_value_heads = 4;
  } else if (name == "26m") {
    c.vocab_size = 4096; c.hidden_size = 512; c.intermediate_size = 1408; c.num_hidden_layers = 8;
    c.num_attention_heads = 8; c.num_key_value_heads = 4; c.tie_word_embeddings = true;
  } else if (name == "125m") {  // the 124.7M benchmark shape
    c.vocab_size = 32000; c.hidden_size = 768; c.intermediate_size = 2048; c.num_hidden_layers = 12;
    c.num_attention_heads = 12; c.num_key_value_heads = 4;
  } else {
    throw Error("unknown preset '" + name + "'; choose tiny, 7m, 26m or 125m");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

void cmd_init(const std::string& config_path, const std::string& preset_name,
              const std::string& out, const std::string& dtype, uint64_t seed,
              const std::string& tokenizer_dir) {
  ModelConfig c;
  if (!config_path.empty()) c = ModelConfig::from_file(config_path);
  else c = preset(preset_name.empty() ? "tiny" : preset_name);
  const WeightType dt = parse_float_dtype(dtype);
  if (!tokenizer_dir.empty()) {
    Tokenizer tok = Tokenizer::from_dir(tokenizer_dir);
    if (tok.vocab_size() > c.vocab_size)
      throw Error("tokenizer in '" + tokenizer_dir + "' has " + std::to_string(tok.vocab_size()) +
                  " tokens but the model's vocab_size is " + std::to_string(c.vocab_size));
    c.eos_token_ids.clear();
    if (tok.eos_id() >= 0) c.eos_token_ids.push_back(tok.eos_id());
    c.bos_token_id = tok.bos_id();
  }
  Model m = Model::create(c, seed, dt);
  m.save(out);
  if (!tokenizer_dir.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      fs::path src = fs::path(tokenizer_dir) / f;
      if (fs::exists(src)) fs::copy_file(src, fs::path(out) / f, fs::copy_options::overwrite_existing);
    }
  }
  std::printf("wrote %s: %s, %.2fM parameters, %s weights (%s)\n", out.c_str(),
              c.architecture.c_str(), m.num_parameters() / 1e6, dtype.c_str(),
              human_bytes(double(m.weight_bytes())).c_str());
}

void cmd_info(const ModelArgs& a, bool as_json) {
  Model m = load_model(a);
  const ModelConfig& c = m.config();
  const int64_t n = m.num_parameters();
  if (as_json) {
    json j = {{"architecture", c.architecture}, {"model_type", c.model_type},
              {"parameters", n}, {"weight_bytes", m.weight_bytes()},
              {"hidden_size", c.hidden_size}, {"num_hidden_layers", c.num_hidden_layers},
              {"num_attention_heads", c.num_attention_heads},
              {"num_key_value_heads", c.num_key_value_heads}, {"head_dim", c.head_dim},
              {"intermediate_size", c.intermediate_size}, {"vocab_size", c.vocab_size},
              {"max_position_embeddings", c.max_position_embeddings},
              {"rope_type", c.rope_scaling.type}, {"tie_word_embeddings", c.tie_word_embeddings},
              {"bytes_f32", n * 4}, {"bytes_bf16", n * 2}, {"bytes_f16", n * 2}};
    std::cout << j.dump(1) << "\n";
    return;
  }
  std::printf("architecture      %s (%s)\n", c.architecture.c_str(), c.model_type.c_str());
  std::printf("parameters        %lld (%.2fM)\n", (long long)n, n / 1e6);
  std::printf("layers            %lld, hidden %lld, ffn %lld, vocab %lld\n",
              (long long)c.num_hidden_layers, (long long)c.hidden_size,
              (long long)c.intermediate_size, (long long)c.vocab_size);
  std::printf("attention         %lld query heads, %lld kv heads (GQA %lld:1), head_dim %lld%s\n",
              (long long)c.num_attention_heads, (long long)c.num_key_value_heads,
              (long long)(c.num_attention_heads / c.num_key_value_heads), (long long)c.head_dim,
              c.qk_norm ? ", q/k norm" : "");
  std::printf("biases            qkv %s, o %s\n", c.qkv_bias ? "yes" : "no", c.o_bias ? "yes" : "no");
  std::printf("rope              theta %g, scaling %s (factor %g), context %lld\n", c.rope_theta,
              c.rope_scaling.type.c_str(), c.rope_scaling.factor,
              (long long)c.max_position_embeddings);
  std::printf("embeddings        %s\n", c.tie_word_embeddings ? "tied" : "separate lm_head");
  std::printf("weights in memory %s (matrices %s)\n", human_bytes(double(m.weight_bytes())).c_str(),
              m.matrix_dtype_name().c_str());
  std::printf("memory by dtype   f32 %s, bf16 %s, f16 %s\n", human_bytes(n * 4.0).c_str(),
              human_bytes(n * 2.0).c_str(), human_bytes(n * 2.0).c_str());
  const double kv_per_tok = 2.0 * c.num_hidden_layers * c.kv_dim() * 4;
  std::printf("kv cache (f32)    %s per token, %s at full context\n",
              human_bytes(kv_per_tok).c_str(),
              human_bytes(kv_per_tok * c.max_position_embeddings).c_str());
}

struct GenArgs {
  ModelArgs m;
  std::string prompt, prompt_ids, stop_ids;
  int64_t max_new_tokens = 64;
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f, repetition_penalty = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  bool json_out = false, ignore_eos = false;
};

void cmd_generate(const GenArgs& a) {
  if (a.prompt.empty() == a.prompt_ids.empty())
    throw Error("give exactly one of --prompt TEXT or --prompt-ids 1,2,3");
  Model m = load_model(a.m);
  const ModelConfig& c = m.config();
  const std::optional<Tokenizer> tok = model_tokenizer(a.m.model);  // tokenizer.json, or the GGUF file's own
  std::vector<int32_t> prompt;
  if (!a.prompt.empty()) {
    if (!tok)
      throw Error("--prompt needs tokenizer.json in '" + a.m.model + "'; use --prompt-ids instead");
    prompt = tok->encode(a.prompt, true);
    if (prompt.empty()) throw Error("--prompt encodes to no tokens");
  } else {
    prompt = parse_ids(a.prompt_ids, "--prompt-ids");
    if (prompt.empty()) throw Error("--prompt-ids holds no ids");
  }
  for (int32_t id : prompt)
    if (id >= c.vocab_size)
      throw Error("prompt token id " + std::to_string(id) + " is out of range for vocab_size " +
                  std::to_string(c.vocab_size));
  const int64_t context = int64_t(prompt.size()) + a.max_new_tokens;
  if (context > c.max_position_embeddings && c.rope_scaling.type != "dynamic")
    throw Error("prompt of " + std::to_string(prompt.size()) + " tokens plus --max-new-tokens " +
                std::to_string(a.max_new_tokens) + " exceeds the model's context of " +
                std::to_string(c.max_position_embeddings) + " tokens");
  GenerationConfig g;
  g.max_new_tokens = a.max_new_tokens;
  g.temperature = a.temperature;
  g.top_k = a.top_k;
  g.top_p = a.top_p;
  g.min_p = a.min_p;
  g.repetition_penalty = a.repetition_penalty;
  g.seed = a.seed;
  g.stop_at_eos = false;  // the stop ids are listed here
  if (!a.ignore_eos) {
    for (int64_t id : c.eos_token_ids) g.stop_ids.push_back(int32_t(id));
    if (tok)
      for (int32_t id : tok->stop_ids())
        if (std::find(g.stop_ids.begin(), g.stop_ids.end(), id) == g.stop_ids.end())
          g.stop_ids.push_back(id);
  }
  if (!a.stop_ids.empty())
    for (int32_t id : parse_ids(a.stop_ids, "--stop-ids")) g.stop_ids.push_back(id);

  Generator gen(m);  // without the tokenizer: the stream is decoded here, stop ids included
  std::optional<StreamDecoder> stream;
  if (tok && !a.json_out) stream.emplace(*tok, true);
  const GenerationResult res = gen.generate(prompt, g, [&](int32_t t, std::string_view) {
    if (stream) {
      std::string s = stream->push(t);
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    } else if (!a.json_out) {
      std::printf("%d ", t);
      std::fflush(stdout);
    }
    return true;
  });
  const std::vector<int32_t>& ids = res.tokens;
  if (a.json_out) {
    json j = {{"ids", ids},
              {"prompt_tokens", prompt.size()},
              {"prefill_tok_s", res.prefill_tok_s},
              {"decode_tok_s", res.decode_tok_s}};
    j["text"] = tok ? json(tok->decode(ids, true)) : json(nullptr);
    std::cout << j.dump() << "\n";
    return;
  }
  if (stream) {
    std::string s = stream->flush();
    std::fwrite(s.data(), 1, s.size(), stdout);
  }
  std::printf("\n");
  std::fflush(stdout);
  std::fprintf(stderr, "[%zu prompt tokens, %zu generated; prefill %.1f tok/s, decode %.1f tok/s]\n",
               prompt.size(), ids.size(), res.prefill_tok_s, res.decode_tok_s);
}

// Mean next-token cross-entropy over a token sequence (qwen::evaluate_perplexity). Sequences
// longer than the context are scored with overlapping windows: each window scores only the tokens
// the previous one did not, with up to (context - stride) tokens of left context.
// --text FILE is tokenised with the model folder's tokenizer (special tokens as the tokenizer
// adds them, as `qwen data prepare` does).
void cmd_eval(const ModelArgs& a, const std::string& ids_file, const std::string& text_file,
              int64_t context_arg, int64_t stride_arg, bool as_json) {
  if (ids_file.empty() == text_file.empty())
    throw Error("give exactly one of --ids-file F (token ids) or --text F (UTF-8 text)");
  const std::string& src = ids_file.empty() ? text_file : ids_file;
  std::ifstream f(src, std::ios::binary);
  if (!f) throw Error("cannot open " + std::string(ids_file.empty() ? "--text" : "--ids-file") + " '" + src + "'");
  std::stringstream ss;
  ss << f.rdbuf();
  std::vector<int32_t> ids;
  if (!ids_file.empty()) {
    ids = parse_ids(ss.str(), ids_file);
  } else {
    const std::optional<Tokenizer> tk = model_tokenizer(a.model);  // tokenizer.json, or the GGUF file's own
    if (!tk)
      throw Error("--text needs tokenizer.json in '" + a.model + "' (or a GGUF file with a tokenizer); tokenise yourself and use --ids-file");
    set_num_threads(a.threads);
    ids = tk->encode(ss.str(), true);
  }
  if (ids.size() < 2) throw Error(src + ": needs at least 2 tokens to score");
  Model m = load_model(a);
  const int64_t V = m.config().vocab_size;
  for (int32_t id : ids)
    if (id >= V)
      throw Error(ids_file + ": token id " + std::to_string(id) + " is out of range for vocab_size " +
                  std::to_string(V));
  const bool progress_tty = isatty(STDERR_FILENO) != 0;
  PerplexityConfig pc;
  pc.context = context_arg;
  pc.stride = stride_arg;
  if (!as_json && progress_tty)  // a log file gets no carriage-return progress
    pc.on_progress = [](int64_t scored, int64_t total) {
      std::fprintf(stderr, "\r  scored %lld / %lld tokens", (long long)scored, (long long)total);
    };
  const PerplexityResult r = evaluate_perplexity(m, ids, pc);
  if (as_json) {
    std::cout << json{{"loss", r.loss}, {"perplexity", r.perplexity}, {"tokens", r.tokens}}.dump()
              << "\n";
  } else {
    if (progress_tty) std::fprintf(stderr, "\r");
    std::printf("loss %.6f nats/token, perplexity %.4f over %lld predicted tokens "
                "(context %lld, stride %lld, %.1f tok/s)\n",
                r.loss, r.perplexity, (long long)r.tokens, (long long)r.context, (long long)r.stride,
                r.tokens / r.seconds);
  }
}

void cmd_bench(const ModelArgs& a, int64_t prompt_len, int64_t gen_len, int reps, bool as_json) {
  Model m = load_model(a);
  const ModelConfig& c = m.config();
  if (prompt_len < 1 || gen_len < 1) throw Error("--prompt-len and --gen-len must be >= 1");
  const int64_t ctx = prompt_len + gen_len;
  if (ctx > c.max_position_embeddings)
    throw Error("--prompt-len + --gen-len = " + std::to_string(ctx) +
                " exceeds the model's context of " + std::to_string(c.max_position_embeddings));
  BenchConfig bc;
  bc.prompt_len = prompt_len;
  bc.gen_len = gen_len;
  bc.reps = reps;
  const BenchResult b = benchmark(m, bc);
  const double p = b.prefill_tok_s, d = b.decode_tok_s;
  const size_t rss = peak_memory_bytes();
  // Matmul FLOPs per prompt token: 2 x the layer weights (embedding lookups are free), plus the
  // lm_head, which the prefill applies to the last token only.
  const double head = double(c.vocab_size * c.hidden_size);
  const double layer_params =
      double(m.num_parameters()) - head * (c.tie_word_embeddings ? 1 : 2);
  const double flops_per_tok = 2.0 * layer_params + 2.0 * head / double(prompt_len);
  if (as_json) {
    std::cout << json{{"prefill_tok_s", p},
                      {"decode_tok_s", d},
                      {"peak_rss_bytes", rss},
                      {"weight_bytes", m.weight_bytes()},
                      {"kv_cache_bytes", b.kv_cache_bytes},
                      {"workspace_bytes", b.workspace_bytes},
                      {"threads", num_threads()},
                      {"prompt_len", prompt_len},
                      {"gen_len", gen_len}}
                     .dump()
              << "\n";
    return;
  }
  std::printf("model      %s, %.2fM parameters, %s weights (%s)\n", c.architecture.c_str(),
              m.num_parameters() / 1e6, m.matrix_dtype_name().c_str(),
              human_bytes(double(m.weight_bytes())).c_str());
  std::printf("threads    %d\n", num_threads());
  std::printf("prefill    %8.1f tok/s  (%lld tokens, ~%.1f GFLOP/s in matmuls)\n", p,
              (long long)prompt_len, p * flops_per_tok / 1e9);
  std::printf("decode     %8.1f tok/s  (%lld tokens, %.1f GB/s of weights)\n", d, (long long)gen_len,
              d * double(m.weight_bytes()) / 1e9);
  std::printf("peak RSS   %s (weights %s + kv cache %s + workspace %s)\n",
              human_bytes(double(rss)).c_str(), human_bytes(double(m.weight_bytes())).c_str(),
              human_bytes(double(b.kv_cache_bytes)).c_str(),
              human_bytes(double(b.workspace_bytes)).c_str());
}

void cmd_forward(const ModelArgs& a, const std::string& ids_text, const std::string& out_path) {
  Model m = load_model(a);
  const ModelConfig& c = m.config();
  std::vector<int32_t> ids = parse_ids(ids_text, "--prompt-ids");
  if (ids.empty()) throw Error("--prompt-ids holds no ids");
  const int64_t T = int64_t(ids.size());
  const std::vector<float> logits = m.forward(ids);  // (T, V)
  std::ofstream f(out_path, std::ios::binary);
  if (!f) throw Error("cannot write '" + out_path + "'");
  f.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * 4));
  std::printf("wrote logits (%lld, %lld) float32 to %s\n", (long long)T, (long long)c.vocab_size,
              out_path.c_str());
}

}  // namespace

WeightType parse_float_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return WeightType::F32;
  if (s == "bf16" || s == "bfloat16") return WeightType::BF16;
  if (s == "f16" || s == "float16") return WeightType::F16;
  throw Error("--dtype '" + s + "' is not one of f32, bf16, f16");
}

void add_model_commands(CLI::App& app) {
  {
    auto* c = app.add_subcommand("init", "write a random-weight model folder (Hugging Face format)");
    static std::string config, preset_name, out, dtype = "f32", tokenizer;
    static uint64_t seed = 0;
    c->add_option("--config", config, "config.json to build from (else --preset)");
    c->add_option("--preset", preset_name, "built-in shape: tiny, 7m, 26m, 125m (default tiny)");
    c->add_option("--out", out, "output folder")->required();
    c->add_option("--dtype", dtype, "weight dtype: f32, bf16 or f16 (default f32)");
    c->add_option("--seed", seed, "random seed (default 0)");
    c->add_option("--tokenizer", tokenizer, "folder with tokenizer.json to copy in");
    c->callback([&]() { cmd_init(config, preset_name, out, dtype, seed, tokenizer); });
  }
  {
    auto* c = app.add_subcommand("info", "architecture, parameter count and memory of a model");
    static ModelArgs a;
    static bool j = false;
    add_model_args(c, a);
    c->add_flag("--json", j, "print JSON");
    c->callback([&]() { cmd_info(a, j); });
  }
  {
    auto* c = app.add_subcommand("generate", "generate text from a prompt");
    static GenArgs a;
    add_model_args(c, a.m, true);
    c->add_option("--prompt", a.prompt, "prompt text (needs tokenizer.json in the model folder)");
    c->add_option("--prompt-ids", a.prompt_ids, "prompt as token ids, e.g. 1,2,3");
    c->add_option("--max-new-tokens", a.max_new_tokens, "tokens to generate (default 64)");
    c->add_option("--temperature", a.temperature, "sampling temperature, 0 = greedy (default 1)");
    c->add_option("--top-k", a.top_k, "keep the k most likely tokens (0 = off)");
    c->add_option("--top-p", a.top_p, "nucleus sampling mass (1 = off)");
    c->add_option("--min-p", a.min_p, "drop tokens below min-p x the top probability (0 = off)");
    c->add_option("--repetition-penalty", a.repetition_penalty, "penalise seen tokens (1 = off)");
    c->add_option("--seed", a.seed, "sampling seed (default 0)");
    c->add_option("--stop-ids", a.stop_ids, "extra token ids that end generation, e.g. 2,7");
    c->add_flag("--ignore-eos", a.ignore_eos, "do not stop on the model's eos tokens");
    c->add_flag("--json", a.json_out,
                "print {\"ids\", \"text\", \"prefill_tok_s\", \"decode_tok_s\"} as JSON");
    c->callback([&]() { cmd_generate(a); });
  }
  {
    auto* c = app.add_subcommand("eval", "cross-entropy and perplexity of a token sequence");
    static ModelArgs a;
    static std::string ids_file, text_file;
    static int64_t context = 0, stride = 0;
    static bool j = false;
    add_model_args(c, a, true);
    c->add_option("--ids-file", ids_file, "token ids, whitespace- or comma-separated");
    c->add_option("--text", text_file, "UTF-8 text, tokenised with the model folder's tokenizer");
    c->add_option("--context", context, "window length (default: the model's context)");
    c->add_option("--stride", stride, "window step when the text is longer (default context/2)");
    c->add_flag("--json", j, "print {\"loss\", \"perplexity\", \"tokens\"} as JSON");
    c->callback([&]() { cmd_eval(a, ids_file, text_file, context, stride, j); });
  }
  {
    auto* c = app.add_subcommand("bench", "prefill and decode speed, peak memory");
    static ModelArgs a;
    static int64_t prompt_len = 128, gen_len = 64;
    static int reps = 3;
    static bool j = false;
    add_model_args(c, a);
    c->add_option("--prompt-len", prompt_len, "prompt tokens (default 128)");
    c->add_option("--gen-len", gen_len, "generated tokens (default 64)");
    c->add_option("--reps", reps, "timed repetitions after one warm-up; median reported (default 3)");
    c->add_flag("--json", j, "print {\"prefill_tok_s\", \"decode_tok_s\", \"peak_rss_bytes\"}");
    c->callback([&]() { cmd_bench(a, prompt_len, gen_len, reps, j); });
  }
  {
    auto* c = app.add_subcommand("forward", "write the logits of a token sequence (float32, (T, V))");
    static ModelArgs a;
    static std::string ids, out;
    add_model_args(c, a, true);
    c->add_option("--prompt-ids", ids, "token ids, e.g. 1,2,3")->required();
    c->add_option("--out", out, "output file")->required();
    c->callback([&]() { cmd_forward(a, ids, out); });
  }
}

}  // namespace qwen::cli
