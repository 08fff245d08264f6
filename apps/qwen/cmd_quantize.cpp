// apps/qwen/cmd_quantize.cpp — `qwen quantize --model DIR --type nf4|q8_0 --out DIR
// [--no-double-quant] [--dtype bf16]`: writes a quantised model folder (io/quantized_folder.h)
// that generate, eval, bench and serve load unchanged. The tokenizer and other side files of the
// source folder are copied along.
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "io/quantized_folder.h"
#include "model/model.h"
#include "qwen/error.h"

namespace qwen::cli {

namespace fs = std::filesystem;

namespace {

struct QuantizeArgs {
  std::string model, type, out, dtype;
  bool no_double_quant = false;
};

void run_quantize(const QuantizeArgs& a) {
  io::QuantizeOptions opt;
  if (a.type == "nf4") opt.type = DType::NF4;
  else if (a.type == "q8_0") opt.type = DType::Q8_0;
  else throw Error("--type '" + a.type + "' is not one of nf4, q8_0");
  opt.double_quant = !a.no_double_quant;
  if (a.no_double_quant && opt.type != DType::NF4)
    throw Error("--no-double-quant applies to --type nf4 only");
  if (fs::exists(a.out) && fs::equivalent(a.out, a.model))
    throw Error("--out must differ from --model (the source folder would be overwritten)");
  DType dt = DType::F32;
  const DType* want = nullptr;
  if (!a.dtype.empty()) {
    if (a.dtype == "f32") dt = DType::F32;
    else if (a.dtype == "bf16") dt = DType::BF16;
    else if (a.dtype == "f16") dt = DType::F16;
    else throw Error("--dtype '" + a.dtype + "' is not one of f32, bf16, f16");
    want = &dt;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto m = Model::load(a.model, want);
  io::save_quantized_folder(*m, a.out, opt);
  // Side files (tokenizer, chat template, ...) travel with the weights.
  for (const auto& e : fs::directory_iterator(a.model)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name == "generation_config.json" ||
        name == "model.safetensors.index.json" || e.path().extension() == ".safetensors")
      continue;
    fs::copy_file(e.path(), fs::path(a.out) / name, fs::copy_options::overwrite_existing);
  }
  size_t bytes = 0;
  for (const auto& e : fs::directory_iterator(a.out))
    if (e.path().extension() == ".safetensors") bytes += size_t(e.file_size());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s (%s%s): %.1f MiB of weights, %.2f bits per parameter, %.1f s\n",
              a.out.c_str(), a.type.c_str(),
              opt.type == DType::NF4 ? (opt.double_quant ? ", double quant" : ", plain absmax") : "",
              double(bytes) / (1024.0 * 1024.0), 8.0 * double(bytes) / double(m->num_parameters()), s);
}

}  // namespace

void add_quantize_commands(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* c = app.add_subcommand("quantize", "write a quantised copy of a model folder (nf4 as "
                                               "bitsandbytes saves it, or q8_0)");
  c->add_option("--model", a->model, "source Hugging Face model folder (float weights)")->required();
  c->add_option("--type", a->type, "nf4 or q8_0")->required();
  c->add_option("--out", a->out, "output folder")->required();
  c->add_flag("--no-double-quant", a->no_double_quant,
              "nf4: store plain f32 absmax instead of double-quantised 8-bit absmax");
  c->add_option("--dtype", a->dtype,
                "convert the source's float weights first (f32, bf16, f16): the dtype of what stays "
                "unquantised (embeddings, norms, lm_head)");
  c->callback([a]() { run_quantize(*a); });
}

}  // namespace qwen::cli
