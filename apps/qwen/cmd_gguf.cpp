// apps/qwen/cmd_gguf.cpp — `qwen export` (a model folder or GGUF file -> GGUF for llama.cpp /
// Ollama users) and `qwen chat` (an interactive terminal chat with the model's ChatML template,
// streaming output, /reset, /exit, history trimmed to the context window).
//
// Chat keeps the KV cache between turns: each turn renders the whole conversation with the chat
// template, keeps the cached tokens it shares with the previous turn's and prefills only the rest.
// When the conversation no longer fits (prompt + --max-new-tokens > context), the oldest turns
// (user + assistant) are dropped, the system message stays. Uses only the public API
// (qwen/gguf.h, and qwen::ChatSession of qwen/chat.h, which does the above).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "qwen/chat.h"
#include "qwen/error.h"
#include "qwen/gguf.h"
#include "qwen/model.h"
#include "qwen/runtime.h"
#include "qwen/tokenizer.h"

namespace qwen::cli {

namespace {

void cmd_export(const std::string& model, const std::string& format, const std::string& type,
                const std::string& out, const std::string& name) {
  if (format != "gguf") throw Error("--format '" + format + "' is not supported; use --format gguf");
  const std::vector<std::string> types = gguf_export_types();
  if (std::find(types.begin(), types.end(), type) == types.end())
    throw Error("--type '" + type + "' is not one of f32, f16, bf16, q8_0, q4_0, q4_1");
  GgufExportConfig cfg;
  cfg.type = type;
  cfg.name = name;
  auto t0 = std::chrono::steady_clock::now();
  const GgufExportResult r = export_gguf(model, out, cfg);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %s, %zu tensors, %.1f MiB of tensor data (%s)%s, %.1f s\n", out.c_str(),
              r.architecture.c_str(), r.n_tensors, r.bytes / 1048576.0, type.c_str(),
              r.tokenizer ? ", with tokenizer" : ", no tokenizer", s);
}

struct ChatArgs {
  std::string model;
  int threads = 0;
  bool quiet = false;
  ChatConfig chat;  // --system, --max-new-tokens, --context and the sampling flags
};

void cmd_chat(const ChatArgs& a) {
  set_num_threads(a.threads);
  Model model = Model::load(a.model);
  const std::optional<Tokenizer> tok = model_tokenizer(a.model);
  if (!tok) throw Error("'" + a.model + "' has no tokenizer (tokenizer.json or GGUF tokenizer.ggml.*); chat needs one");
  const std::string tpl = model_chat_template(a.model);
  if (!tpl.empty() && tpl.find("<|im_start|>") == std::string::npos)
    throw Error("'" + a.model + "': its chat template is not ChatML (<|im_start|>...); only ChatML chat is supported");
  // ChatSession checks the vocabulary (ChatML tokens) and --max-new-tokens against the context.
  ChatSession chat = [&] {
    try {
      return ChatSession(model, *tok, a.chat);
    } catch (const Error& e) {
      throw Error("'" + a.model + "': " + e.what());
    }
  }();
  const int64_t ctx = chat.context();

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
      chat.reset();
      say("[history cleared]\n");
      continue;
    }
    if (line[0] == '/') {
      say("[unknown command " + line + "; /reset or /exit]\n");
      continue;
    }
    const ChatFit fit = chat.add_user_message(line);
    if (fit.dropped_turns) say("[dropped the " + std::to_string(fit.dropped_turns) + " oldest turn(s) to fit the context]\n");
    if (!fit.fits) {
      say("[this message is too long for the context of " + std::to_string(ctx) + " tokens; not sent]\n");
      continue;
    }
    chat.reply([](std::string_view s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    });
    std::printf("\n");
    std::fflush(stdout);
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
    c->add_option("--system", a.chat.system, "system message (default: the template's own, if any)");
    c->add_option("--max-new-tokens", a.chat.max_new_tokens, "most tokens per reply (default 512)");
    c->add_option("--context", a.chat.context, "context window in tokens (default: the model's, at most 4096)");
    c->add_option("--temperature", a.chat.temperature, "sampling temperature, 0 = greedy (default 0.7)");
    c->add_option("--top-k", a.chat.top_k, "keep the k most likely tokens (0 = off)");
    c->add_option("--top-p", a.chat.top_p, "nucleus sampling mass (default 0.9)");
    c->add_option("--min-p", a.chat.min_p, "drop tokens below min-p x the top probability (0 = off)");
    c->add_option("--repetition-penalty", a.chat.repetition_penalty, "penalise seen tokens (1 = off)");
    c->add_option("--seed", a.chat.seed, "sampling seed (default 0)");
    c->add_option("--threads", a.threads, "threads for the kernels (default: all cores)");
    c->add_flag("--quiet", a.quiet, "no banner, prompts or notes on stderr");
    c->callback([&]() { cmd_chat(a); });
  }
}

}  // namespace qwen::cli
