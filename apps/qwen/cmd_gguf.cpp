// apps/qwen/cmd_gguf.cpp — `qwen export` (a model folder or GGUF file -> GGUF for llama.cpp /
// Ollama users) and `qwen chat` (an interactive terminal chat with the model's ChatML template,
// streaming output, /reset, /exit, history trimmed to the context window).
//
// Chat keeps the KV cache between turns: each turn renders the whole conversation with the chat
// template, keeps the cached tokens it shares with the previous turn's and prefills only the rest.
// When the conversation no longer fits (prompt + --max-new-tokens > context), the oldest turns
// (user + assistant) are dropped, the system message stays.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "commands.h"
#include "core/cpu.h"
#include "core/rng.h"
#include "generate/sampler.h"
#include "io/gguf_model.h"
#include "io/gguf_tokenizer.h"
#include "model/decoder.h"
#include "model/model.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"

namespace qwen::cli {

namespace {

void cmd_export(const std::string& model, const std::string& format, const std::string& type,
                const std::string& out, const std::string& name) {
  if (format != "gguf") throw Error("--format '" + format + "' is not supported; use --format gguf");
  DType t;
  if (type == "f32") t = DType::F32;
  else if (type == "f16") t = DType::F16;
  else if (type == "bf16") t = DType::BF16;
  else if (type == "q8_0") t = DType::Q8_0;
  else if (type == "q4_0") t = DType::Q4_0;
  else if (type == "q4_1") t = DType::Q4_1;
  else throw Error("--type '" + type + "' is not one of f32, f16, bf16, q8_0, q4_0, q4_1");
  auto t0 = std::chrono::steady_clock::now();
  io::GgufExportResult r = io::export_gguf(model, out, t, name);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %s, %zu tensors, %.1f MiB of tensor data (%s)%s, %.1f s\n", out.c_str(),
              r.architecture.c_str(), r.n_tensors, r.bytes / 1048576.0, type.c_str(),
              r.tokenizer ? ", with tokenizer" : ", no tokenizer", s);
}

struct ChatArgs {
  std::string model, system;
  int threads = 0;
  int64_t max_new_tokens = 512, context = 0;
  float temperature = 0.7f, top_p = 0.9f, min_p = 0.0f, repetition_penalty = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  bool quiet = false;
};

using Messages = std::vector<std::pair<std::string, std::string>>;

void cmd_chat(const ChatArgs& a) {
  set_num_threads(a.threads);
  auto model = Model::load(a.model);
  auto tok = io::load_model_tokenizer(a.model);
  if (!tok) throw Error("'" + a.model + "' has no tokenizer (tokenizer.json or GGUF tokenizer.ggml.*); chat needs one");
  const std::string tpl = io::load_chat_template(a.model);
  if (!tpl.empty() && tpl.find("<|im_start|>") == std::string::npos)
    throw Error("'" + a.model + "': its chat template is not ChatML (<|im_start|>...); only ChatML chat is supported");
  if (tok->token_to_id("<|im_start|>") < 0 || tok->token_to_id("<|im_end|>") < 0)
    throw Error("'" + a.model + "': the vocabulary has no <|im_start|> / <|im_end|> tokens; chat needs a ChatML model");
  const ModelConfig& c = model->config();
  const int64_t ctx = a.context > 0 ? std::min(a.context, c.max_position_embeddings) : std::min<int64_t>(c.max_position_embeddings, 4096);
  if (a.max_new_tokens < 1 || a.max_new_tokens >= ctx)
    throw Error("--max-new-tokens must be between 1 and the context (" + std::to_string(ctx) + ") - 1");
  std::vector<int32_t> stops = tok->stop_ids();
  for (int64_t id : c.eos_token_ids)
    if (std::find(stops.begin(), stops.end(), int32_t(id)) == stops.end()) stops.push_back(int32_t(id));

  const int64_t chunk = std::min<int64_t>(ctx, 256);
  KvCache cache(c, 1, ctx);
  Decoder dec(*model, chunk);
  Sampler sampler(c.vocab_size);
  Rng rng(a.seed);
  SamplingParams sp;
  sp.temperature = a.temperature;
  sp.top_k = a.top_k;
  sp.top_p = a.top_p;
  sp.min_p = a.min_p;
  sp.repetition_penalty = a.repetition_penalty;
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  std::vector<int32_t> cached;  // the tokens whose K/V are in the cache, in order

  Messages history;  // user / assistant turns
  auto render = [&](const Messages& h) {
    Messages all;
    if (!a.system.empty()) all.emplace_back("system", a.system);
    all.insert(all.end(), h.begin(), h.end());
    return tok->encode(tok->apply_chat_template(all, true), true);
  };
  auto say = [&](const std::string& s) {
    if (!a.quiet) std::fprintf(stderr, "%s", s.c_str());
  };
  say("chat with " + a.model + " (" + std::to_string(ctx) + "-token context). /reset clears the history, /exit quits.\n");
  std::string line;
  while (true) {
    say("> ");
    if (!std::getline(std::cin, line)) break;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      history.clear();
      say("[history cleared]\n");
      continue;
    }
    if (line[0] == '/') {
      say("[unknown command " + line + "; /reset or /exit]\n");
      continue;
    }
    history.emplace_back("user", line);
    std::vector<int32_t> prompt = render(history);
    int dropped = 0;
    while (int64_t(prompt.size()) + a.max_new_tokens > ctx && history.size() > 1) {
      history.erase(history.begin(), history.begin() + std::min<size_t>(2, history.size() - 1));
      ++dropped;
      prompt = render(history);
    }
    if (dropped) say("[dropped the " + std::to_string(dropped) + " oldest turn(s) to fit the context]\n");
    if (int64_t(prompt.size()) + a.max_new_tokens > ctx) {
      say("[this message is too long for the context of " + std::to_string(ctx) + " tokens; not sent]\n");
      history.pop_back();
      continue;
    }
    // Reuse the cached prefix; prefill the rest in chunks.
    size_t keep = 0;
    while (keep < cached.size() && keep < prompt.size() && cached[keep] == prompt[keep]) ++keep;
    if (keep == prompt.size()) --keep;  // at least one token to get logits from
    cache.set_len(0, int64_t(keep));
    cached.assign(prompt.begin(), prompt.begin() + std::ptrdiff_t(keep));
    for (size_t p = keep; p < prompt.size(); p += size_t(chunk)) {
      const int64_t n = std::min<int64_t>(chunk, int64_t(prompt.size() - p));
      SeqChunk ch{0, n, prompt.data() + p};
      dec.forward(cache, &ch, 1, LogitsMode::kLast, logits.data());
      cached.insert(cached.end(), prompt.begin() + std::ptrdiff_t(p), prompt.begin() + std::ptrdiff_t(p + size_t(n)));
    }
    StreamDecoder stream(*tok, true);
    std::vector<int32_t> reply;
    for (int64_t i = 0; i < a.max_new_tokens; ++i) {
      const int32_t t = sampler.sample(logits.data(), sp, rng, cached.data(), int64_t(cached.size()),
                                       reply.data(), int64_t(reply.size()));
      if (std::find(stops.begin(), stops.end(), t) != stops.end()) break;
      reply.push_back(t);
      const std::string s = stream.push(t);
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
      if (int64_t(cached.size()) + 1 >= ctx) break;
      SeqChunk ch{0, 1, &t};
      dec.forward(cache, &ch, 1, LogitsMode::kLast, logits.data());
      cached.push_back(t);
    }
    const std::string rest = stream.flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::printf("\n");
    std::fflush(stdout);
    history.emplace_back("assistant", tok->decode(reply, true));
  }
}

}  // namespace

void add_gguf_commands(CLI::App& app) {
  {
    auto* c = app.add_subcommand("export", "write a model (folder or GGUF) as a GGUF file for llama.cpp / Ollama");
    static std::string model, format = "gguf", type = "f16", out, name;
    c->add_option("--model", model, "Hugging Face model folder or .gguf file")->required();
    c->add_option("--format", format, "output format (gguf)");
    c->add_option("--type", type, "weight type: f32, f16, bf16, q8_0, q4_0, q4_1 (default f16)");
    c->add_option("--out", out, "output .gguf file")->required();
    c->add_option("--name", name, "general.name (default: the folder name)");
    c->callback([&]() { cmd_export(model, format, type, out, name); });
  }
  {
    auto* c = app.add_subcommand("chat", "interactive chat with a model's ChatML template (stdin -> stdout)");
    static ChatArgs a;
    c->add_option("--model", a.model, "model folder or .gguf file")->required();
    c->add_option("--system", a.system, "system message (default: the template's own, if any)");
    c->add_option("--max-new-tokens", a.max_new_tokens, "most tokens per reply (default 512)");
    c->add_option("--context", a.context, "context window in tokens (default: the model's, at most 4096)");
    c->add_option("--temperature", a.temperature, "sampling temperature, 0 = greedy (default 0.7)");
    c->add_option("--top-k", a.top_k, "keep the k most likely tokens (0 = off)");
    c->add_option("--top-p", a.top_p, "nucleus sampling mass (default 0.9)");
    c->add_option("--min-p", a.min_p, "drop tokens below min-p x the top probability (0 = off)");
    c->add_option("--repetition-penalty", a.repetition_penalty, "penalise seen tokens (1 = off)");
    c->add_option("--seed", a.seed, "sampling seed (default 0)");
    c->add_option("--threads", a.threads, "threads for the kernels (default: all cores)");
    c->add_flag("--quiet", a.quiet, "no banner, prompts or notes on stderr");
    c->callback([&]() { cmd_chat(a); });
  }
}

}  // namespace qwen::cli
