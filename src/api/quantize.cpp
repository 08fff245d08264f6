// api/quantize.cpp — qwen::quantize (include/qwen/quantize.h): folder to folder and in memory,
// both through io::save_quantized_folder, so the bytes are the ones bitsandbytes / our Q8_0
// layout define. In memory goes through a temporary folder that is loaded back and removed (the
// loaded model no longer needs the files: NF4 is converted into blocks and the mappings of the
// other tensors outlive the unlink).
#include <atomic>
#include <chrono>
#include <filesystem>
#include <unistd.h>

#include "api/bridge.h"

namespace qwen::api {

namespace fs = std::filesystem;

namespace {

io::QuantizeOptions io_options(WeightType type, const QuantizeOptions& o) {
  if (type != WeightType::NF4 && type != WeightType::Q8_0)
    throw Error(std::string("quantize: type ") + weight_type_name(type) + " is not one of nf4, q8_0");
  if (!o.double_quant && type != WeightType::NF4)
    throw Error("quantize: double_quant = false applies to nf4 only");
  io::QuantizeOptions io;
  io.type = to_dtype(type);
  io.double_quant = o.double_quant;
  return io;
}

void check_float(const qwen::Model& m, const std::string& what) {
  if (dtype_is_quantized(m.matrix_dtype()))
    throw Error("quantize: " + what + " holds " + dtype_name(m.matrix_dtype()) +
                " weights already; quantise a float (f32/bf16/f16) model");
}

}  // namespace

QuantizeReport quantize(const std::string& folder_in, WeightType type, const std::string& folder_out,
                        const QuantizeOptions& options) {
  const io::QuantizeOptions io = io_options(type, options);
  if (fs::exists(folder_out) && fs::exists(folder_in) && fs::equivalent(folder_out, folder_in))
    throw Error("quantize: the output folder must differ from the source '" + folder_in +
                "' (it would be overwritten)");
  const auto t0 = std::chrono::steady_clock::now();
  Model m = options.unquantized_type == WeightType::Other
                ? Model::load(folder_in)
                : Model::load(folder_in, options.unquantized_type);
  check_float(core(m), "'" + folder_in + "'");
  io::save_quantized_folder(core(m), folder_out, io);
  // Side files (tokenizer, chat template, ...) travel with the weights.
  if (fs::is_directory(folder_in))
    for (const auto& e : fs::directory_iterator(folder_in)) {
      if (!e.is_regular_file()) continue;
      const std::string name = e.path().filename().string();
      if (name == "config.json" || name == "generation_config.json" ||
          name == "model.safetensors.index.json" || e.path().extension() == ".safetensors")
        continue;
      fs::copy_file(e.path(), fs::path(folder_out) / name, fs::copy_options::overwrite_existing);
    }
  QuantizeReport r;
  for (const auto& e : fs::directory_iterator(folder_out))
    if (e.path().extension() == ".safetensors") r.weight_file_bytes += size_t(e.file_size());
  r.parameters = m.num_parameters();
  r.bits_per_parameter = r.parameters > 0 ? 8.0 * double(r.weight_file_bytes) / double(r.parameters) : 0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

Model quantize(const Model& model, WeightType type, const QuantizeOptions& options) {
  const io::QuantizeOptions io = io_options(type, options);
  if (model.has_adapter())
    throw Error("quantize: the model has an unmerged adapter; quantise merged() or the base");
  check_float(core(model), "the model");
  static std::atomic<int> counter{0};
  const fs::path tmp = fs::temp_directory_path() /
                       ("qwen-quantize-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } cleanup{tmp};
  io::save_quantized_folder(core(model), tmp.string(), io);
  // NF4 stays double-quantised (~4.13 bits/weight) as the folder holds it: api::Trainer's QLoRA
  // base comes from here, and issue 5's memory figure is that form.
  return wrap(io::load_quantized_folder(tmp.string(), /*nf4_compact=*/true));
}

}  // namespace qwen::api
