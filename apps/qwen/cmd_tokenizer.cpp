// apps/qwen/cmd_tokenizer.cpp — `qwen tokenizer encode|decode|train|info`: text <-> ids with a
// Hugging Face tokenizer.json (exactly the ids of the `tokenizers` library), and byte-level BPE
// training that writes tokenizer.json + tokenizer_config.json.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "qwen/error.h"
#include "qwen/runtime.h"
#include "qwen/tokenizer.h"

namespace qwen::cli {

namespace {

std::string read_stdin() {
  std::string s;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) s.append(buf, n);
  return s;
}

void write_stdout(const std::string& s) { std::fwrite(s.data(), 1, s.size(), stdout); }

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string out = "{\"ids\": [";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(ids[i]);
  }
  return out + "]}";
}

// Ids from text: whitespace/comma separated integers, a JSON array, or {"ids": [...]}.
std::vector<int32_t> parse_ids(const std::string& in, const std::string& where) {
  size_t first = in.find_first_not_of(" \t\r\n");
  std::vector<int32_t> ids;
  if (first != std::string::npos && (in[first] == '[' || in[first] == '{')) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw Error("tokenizer decode: " + where + " is not valid JSON (" + e.what() + ")");
    }
    const nlohmann::json& arr = j.is_object() && j.contains("ids") ? j["ids"] : j;
    if (!arr.is_array()) throw Error("tokenizer decode: " + where + ": expected [ids] or {\"ids\": [...]}");
    for (const auto& v : arr) {
      if (!v.is_number_integer()) throw Error("tokenizer decode: " + where + ": ids must be integers");
      int64_t x = v.get<int64_t>();
      ids.push_back(x < INT32_MIN || x > INT32_MAX ? -1 : int32_t(x));
    }
    return ids;
  }
  size_t i = 0;
  while (i < in.size()) {
    while (i < in.size() && (in[i] == ' ' || in[i] == '\t' || in[i] == '\r' || in[i] == '\n' || in[i] == ','))
      ++i;
    if (i >= in.size()) break;
    size_t j = i;
    if (in[j] == '-') ++j;
    while (j < in.size() && in[j] >= '0' && in[j] <= '9') ++j;
    if (j == i || (j == i + 1 && in[i] == '-'))
      throw Error("tokenizer decode: " + where + ": expected token ids (integers), found \"" +
                  in.substr(i, std::min(in.find_first_of(" \t\r\n,", i), i + 20) - i) + "\"");
    long long x = std::strtoll(in.substr(i, j - i).c_str(), nullptr, 10);
    ids.push_back(x < INT32_MIN || x > INT32_MAX ? -1 : int32_t(x));
    i = j;
  }
  return ids;
}

struct EncodeArgs {
  std::string dir;
  bool no_special = false, json = false, jsonl = false;
  int threads = 0;
};

void run_encode(const EncodeArgs& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  Tokenizer tok = Tokenizer::from_dir(a.dir);
  const bool special = !a.no_special;
  if (!a.jsonl) {
    std::vector<int32_t> ids = tok.encode(read_stdin(), special);
    if (a.json) {
      write_stdout(ids_json(ids) + "\n");
    } else {
      std::string out;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i) out += ' ';
        out += std::to_string(ids[i]);
      }
      write_stdout(out + "\n");
    }
    return;
  }
  // JSON lines: {"text": "..."} -> {"ids": [...]}, in order, encoded in batches on threads
  std::string line;
  std::vector<std::string> batch;
  int64_t line_no = 0;
  auto flush = [&] {
    auto all = tok.encode_batch(batch, special);
    std::string out;
    for (const auto& ids : all) out += ids_json(ids) + "\n";
    write_stdout(out);
    batch.clear();
  };
  while (std::getline(std::cin, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error("tokenizer encode --jsonl: line " + std::to_string(line_no) + " is not valid JSON (" + e.what() + ")");
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      throw Error("tokenizer encode --jsonl: line " + std::to_string(line_no) + " must be {\"text\": \"...\"}");
    batch.push_back(j["text"].get<std::string>());
    if (batch.size() >= 4096) flush();
  }
  flush();
}

}  // namespace

void add_tokenizer_commands(CLI::App& app) {
  CLI::App* t = app.add_subcommand("tokenizer", "encode / decode text with a tokenizer.json, train a BPE tokenizer");
  t->require_subcommand(1);

  auto enc = std::make_shared<EncodeArgs>();
  CLI::App* e = t->add_subcommand("encode", "text on stdin -> token ids on stdout");
  e->add_option("--tokenizer", enc->dir, "directory with tokenizer.json (and tokenizer_config.json)")->required();
  e->add_flag("--no-special", enc->no_special, "add no special tokens (add_special_tokens=False)");
  e->add_flag("--json", enc->json, "print {\"ids\": [...]} instead of ids separated by spaces");
  e->add_flag("--jsonl", enc->jsonl, "each input line {\"text\": \"...\"} gives one output line {\"ids\": [...]}");
  e->add_option("--threads", enc->threads, "threads for --jsonl batches (default: all cores)");
  e->callback([enc] { run_encode(*enc); });

  auto dir = std::make_shared<std::string>();
  auto skip = std::make_shared<bool>(false);
  auto djsonl = std::make_shared<bool>(false);
  CLI::App* d = t->add_subcommand("decode", "token ids on stdin (spaces/commas, [..] or {\"ids\": [..]}) -> text on stdout");
  d->add_option("--tokenizer", *dir, "directory with tokenizer.json (and tokenizer_config.json)")->required();
  d->add_flag("--skip-special", *skip, "leave out special tokens");
  d->add_flag("--jsonl", *djsonl, "each input line {\"ids\": [...]} gives one output line {\"text\": \"...\"}");
  d->callback([dir, skip, djsonl] {
    Tokenizer tok = Tokenizer::from_dir(*dir);
    if (!*djsonl) {
      write_stdout(tok.decode(parse_ids(read_stdin(), "stdin"), *skip));
      return;
    }
    std::string line;
    int64_t line_no = 0;
    while (std::getline(std::cin, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      auto ids = parse_ids(line, "line " + std::to_string(line_no));
      nlohmann::json out = {{"text", tok.decode(ids, *skip)}};
      write_stdout(out.dump() + "\n");
    }
  });

  auto topt = std::make_shared<BpeTrainOptions>();
  auto inputs = std::make_shared<std::vector<std::string>>();
  auto out_dir = std::make_shared<std::string>();
  auto quiet = std::make_shared<bool>(false);
  CLI::App* tr = t->add_subcommand("train", "train a byte-level BPE tokenizer (Qwen's regex, NFC) on text files");
  tr->add_option("--input", *inputs, "UTF-8 text files (each is one document)")->required()->expected(1, -1);
  tr->add_option("--vocab-size", topt->vocab_size, "vocabulary size including 256 byte tokens and the special tokens")->required();
  tr->add_option("--out", *out_dir, "directory to write tokenizer.json and tokenizer_config.json to")->required();
  tr->add_option("--min-frequency", topt->min_frequency, "never merge pairs seen fewer times (default 2)");
  tr->add_option("--special", topt->special_tokens, "special tokens (default <|endoftext|> <|im_start|> <|im_end|>)");
  tr->add_option("--threads", topt->n_threads, "threads for counting (default: all cores)");
  tr->add_flag("--quiet", *quiet, "no progress on stderr");
  tr->callback([topt, inputs, out_dir, quiet] {
    topt->verbose = !*quiet;
    BpeTrainResult r = train_bpe_files(*inputs, *out_dir, *topt);
    if (!*quiet)
      std::fprintf(stderr, "tokenizer train: %lld merges, vocabulary %lld (incl. %zu special) in %.2f s -> %s\n",
                   (long long)r.n_merges, (long long)r.vocab_size, topt->special_tokens.size(), r.seconds,
                   out_dir->c_str());
  });

  auto idir = std::make_shared<std::string>();
  CLI::App* in = t->add_subcommand("info", "vocabulary size and special ids of a tokenizer");
  in->add_option("--tokenizer", *idir, "directory with tokenizer.json (and tokenizer_config.json)")->required();
  in->callback([idir] {
    Tokenizer tok = Tokenizer::from_dir(*idir);
    nlohmann::json j = {{"vocab_size", tok.vocab_size()}, {"bos_id", tok.bos_id()}, {"eos_id", tok.eos_id()},
                        {"pad_id", tok.pad_id()}, {"stop_ids", tok.stop_ids()}};
    write_stdout(j.dump() + "\n");
  });
}

}  // namespace qwen::cli
