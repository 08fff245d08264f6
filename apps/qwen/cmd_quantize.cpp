// apps/qwen/cmd_quantize.cpp — `qwen quantize --model DIR --type nf4|q8_0 --out DIR
// [--no-double-quant] [--dtype bf16]`: writes a quantised model folder (qwen/quantize.h) that
// generate, eval, bench and serve load unchanged. The tokenizer and other side files of the
// source folder are copied along. Uses only the public API.
#include <cstdio>

#include "commands.h"
#include "qwen/error.h"
#include "qwen/quantize.h"

namespace qwen::cli {

namespace {

struct QuantizeArgs {
  std::string model, type, out, dtype;
  bool no_double_quant = false;
};

void run_quantize(const QuantizeArgs& a) {
  const WeightType type = parse_weight_type(a.type, "--type");
  if (type != WeightType::NF4 && type != WeightType::Q8_0)
    throw Error("--type '" + a.type + "' is not one of nf4, q8_0");
  if (a.no_double_quant && type != WeightType::NF4)
    throw Error("--no-double-quant applies to --type nf4 only");
  QuantizeOptions opt;
  opt.double_quant = !a.no_double_quant;
  if (!a.dtype.empty()) {
    opt.unquantized_type = parse_weight_type(a.dtype, "--dtype");
    if (opt.unquantized_type != WeightType::F32 && opt.unquantized_type != WeightType::BF16 &&
        opt.unquantized_type != WeightType::F16)
      throw Error("--dtype '" + a.dtype + "' is not one of f32, bf16, f16");
  }
  const QuantizeReport r = quantize(a.model, type, a.out, opt);
  std::printf("wrote %s (%s%s): %.1f MiB of weights, %.2f bits per parameter, %.1f s\n",
              a.out.c_str(), a.type.c_str(),
              type == WeightType::NF4 ? (opt.double_quant ? ", double quant" : ", plain absmax") : "",
              double(r.weight_file_bytes) / (1024.0 * 1024.0), r.bits_per_parameter, r.seconds);
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
