// api/gguf.cpp — qwen/gguf.h (export_gguf over io::export_gguf) and the model-path tokenizer
// look-ups of qwen/tokenizer.h (model_tokenizer, model_chat_template over io/gguf_tokenizer.h),
// which read a GGUF file's own tokenizer as well as a folder's tokenizer.json.
#include <algorithm>

#include "api/bridge.h"

namespace qwen {

std::optional<Tokenizer> model_tokenizer(const std::string& model_path) {
  std::unique_ptr<Tokenizer> t = io::load_model_tokenizer(model_path);
  if (!t) return std::nullopt;
  return std::move(*t);
}

std::string model_chat_template(const std::string& model_path) {
  return io::load_chat_template(model_path);
}

}  // namespace qwen

namespace qwen::api {

namespace {

struct ExportType {
  const char* name;
  DType type;
};
constexpr ExportType kExportTypes[] = {{"f32", DType::F32},   {"f16", DType::F16},
                                       {"bf16", DType::BF16}, {"q8_0", DType::Q8_0},
                                       {"q4_0", DType::Q4_0}, {"q4_1", DType::Q4_1}};

}  // namespace

std::vector<std::string> gguf_export_types() {
  std::vector<std::string> v;
  for (const ExportType& t : kExportTypes) v.push_back(t.name);
  return v;
}

GgufExportResult export_gguf(const std::string& model_path, const std::string& out_path,
                             const GgufExportConfig& config) {
  const ExportType* t = std::find_if(std::begin(kExportTypes), std::end(kExportTypes),
                                     [&](const ExportType& e) { return config.type == e.name; });
  if (t == std::end(kExportTypes))
    throw Error("export_gguf: type '" + config.type + "' is not one of f32, f16, bf16, q8_0, q4_0, q4_1");
  const io::GgufExportResult r = io::export_gguf(model_path, out_path, t->type, config.name);
  GgufExportResult out;
  out.n_tensors = r.n_tensors;
  out.bytes = r.bytes;
  out.architecture = r.architecture;
  out.tokenizer = r.tokenizer;
  return out;
}

}  // namespace qwen::api
