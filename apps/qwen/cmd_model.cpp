// apps/qwen/cmd_model.cpp — placeholder, replaced by the model commands.
#include "commands.h"
namespace qwen::cli {
void add_model_commands(CLI::App& app) { (void)app; }
}  // namespace qwen::cli
