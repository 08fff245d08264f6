// apps/qwen/main.cpp — the `qwen` command-line tool: one binary, one subcommand per job.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "qwen/error.h"
#include "qwen/version.h"

int main(int argc, char** argv) {
  CLI::App app{"qwen — train, fine-tune, evaluate and serve Qwen-style language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("qwen ") + qwen::version());
  qwen::cli::add_model_commands(app);
  qwen::cli::add_tokenizer_commands(app);
  qwen::cli::add_serve_commands(app);
  qwen::cli::add_quantize_commands(app);
  qwen::cli::add_train_commands(app);
  qwen::cli::add_gguf_commands(app);
  qwen::cli::add_finetune_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qwen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  }
  return 0;
}
