// apps/qwen/cmd_tokenizer.cpp — placeholder until the tokenizer lands (owned by the tokenizer work).
#include "commands.h"
namespace qwen::cli {
void add_tokenizer_commands(CLI::App& app) { (void)app; }
}  // namespace qwen::cli
