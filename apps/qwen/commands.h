// apps/qwen/commands.h — each command group of the `qwen` CLI registers its subcommands here.
// A command's callback throws qwen::Error for user mistakes; main() prints it as one line and
// exits non-zero. The commands use only the public API (include/qwen); tests/test_api.cpp fails
// if an apps/qwen file includes anything else of the project.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "qwen/model.h"

namespace qwen::cli {

void add_model_commands(CLI::App& app);      // info, generate, eval, bench (cmd_model.cpp)
void add_tokenizer_commands(CLI::App& app);  // tokenizer encode|decode|train (cmd_tokenizer.cpp)
void add_serve_commands(CLI::App& app);      // serve (cmd_serve.cpp)
void add_quantize_commands(CLI::App& app);   // quantize (cmd_quantize.cpp)
void add_train_commands(CLI::App& app);      // data prepare, train (cmd_train.cpp)
void add_gguf_commands(CLI::App& app);       // export, chat (cmd_gguf.cpp)
void add_finetune_commands(CLI::App& app);   // finetune, merge, sft-eval (cmd_finetune.cpp)

// --dtype of the loading commands: f32 / float32, bf16 / bfloat16, f16 / float16; throws
// qwen::Error naming --dtype otherwise (cmd_model.cpp).
WeightType parse_float_dtype(const std::string& s);

}  // namespace qwen::cli
