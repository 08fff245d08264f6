/// @file qwen/qwen.h
/// @brief The whole public API in one include. Every name lives in namespace qwen (the classes
/// are declared in qwen::api and made visible in qwen by a using-directive, so write qwen::Model,
/// qwen::Generator, ...). Errors are thrown as qwen::Error with a one-line message; the library
/// never exits the process.
///
/// | header | what |
/// |---|---|
/// | qwen/version.h | QWEN_VERSION, qwen::version() |
/// | qwen/error.h | qwen::Error |
/// | qwen/config.h | qwen::ModelConfig (config.json) |
/// | qwen/tokenizer.h | qwen::Tokenizer, StreamDecoder, BPE training |
/// | qwen/model.h | qwen::Model: create, load, save, forward |
/// | qwen/generator.h | qwen::Generator, GenerationConfig, streaming |
/// | qwen/trainer.h | qwen::Trainer, TrainConfig (pretraining, LoRA, QLoRA) |
/// | qwen/lora.h | qwen::LoraConfig |
/// | qwen/train_job.h | prepare_data, run_train_job (what `qwen train` runs) |
/// | qwen/quantize.h | qwen::quantize (NF4, Q8_0) |
/// | qwen/finetune.h | run_finetune, run_task_eval (what `qwen finetune` / `qwen sft-eval` run) |
/// | qwen/eval.h | evaluate_perplexity, benchmark (what `qwen eval` / `qwen bench` report) |
/// | qwen/chat.h | qwen::ChatSession (multi-turn ChatML chat with a kept KV cache) |
/// | qwen/gguf.h | export_gguf (llama.cpp / Ollama files) |
/// | qwen/engine.h | qwen::Engine, Request, Server (serving in-process) |
/// | qwen/runtime.h | threads, peak memory |
#pragma once

#include "qwen/version.h"
#include "qwen/error.h"
#include "qwen/config.h"
#include "qwen/tokenizer.h"
#include "qwen/runtime.h"
#include "qwen/model.h"
#include "qwen/generator.h"
#include "qwen/lora.h"
#include "qwen/trainer.h"
#include "qwen/train_job.h"
#include "qwen/quantize.h"
#include "qwen/finetune.h"
#include "qwen/eval.h"
#include "qwen/chat.h"
#include "qwen/gguf.h"
#include "qwen/engine.h"
