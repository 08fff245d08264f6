// api/model.cpp — qwen::Model (include/qwen/model.h) over the internal model (src/model),
// the LoRA adapter (src/train/lora.h) and the decoder for forward().
#include <algorithm>
#include <cctype>

#include "api/bridge.h"

namespace qwen::api {

DType to_dtype(WeightType t) {
  switch (t) {
    case WeightType::F32: return DType::F32;
    case WeightType::BF16: return DType::BF16;
    case WeightType::F16: return DType::F16;
    case WeightType::NF4: return DType::NF4;
    case WeightType::Q8_0: return DType::Q8_0;
    case WeightType::Other: break;
  }
  throw Error("weight type 'other' names no single dtype; use f32, bf16, f16, nf4 or q8_0");
}

WeightType from_dtype(DType t) {
  switch (t) {
    case DType::F32: return WeightType::F32;
    case DType::BF16: return WeightType::BF16;
    case DType::F16: return WeightType::F16;
    case DType::NF4: return WeightType::NF4;
    case DType::Q8_0: return WeightType::Q8_0;
    default: return WeightType::Other;
  }
}

const char* weight_type_name(WeightType t) {
  switch (t) {
    case WeightType::F32: return "f32";
    case WeightType::BF16: return "bf16";
    case WeightType::F16: return "f16";
    case WeightType::NF4: return "nf4";
    case WeightType::Q8_0: return "q8_0";
    case WeightType::Other: break;
  }
  return "other";
}

WeightType parse_weight_type(const std::string& s, const std::string& what) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  for (WeightType t : {WeightType::F32, WeightType::BF16, WeightType::F16, WeightType::NF4,
                       WeightType::Q8_0})
    if (l == weight_type_name(t)) return t;
  throw Error(what + " '" + s + "' is not one of f32, bf16, f16, nf4, q8_0");
}

const qwen::Model& core(const Model& m) {
  if (!m.impl() || !m.impl()->m) throw Error("qwen::Model: this handle is empty (moved from)");
  return *m.impl()->m;
}

Model wrap(std::unique_ptr<qwen::Model> m, std::shared_ptr<void> keep) {
  auto impl = std::make_shared<Model::Impl>();
  impl->keep = std::move(keep);
  impl->m = std::move(m);
  return Model(std::move(impl));
}

Model::Model(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::create(const ModelConfig& config, uint64_t seed, WeightType type) {
  if (type != WeightType::F32 && type != WeightType::BF16 && type != WeightType::F16)
    throw Error(std::string("Model::create: weight type ") + weight_type_name(type) +
                " is not a float type; create in f32/bf16/f16, then qwen::quantize");
  return wrap(qwen::Model::random(config, seed, to_dtype(type)));
}

Model Model::load(const std::string& path) { return wrap(qwen::Model::load(path)); }

Model Model::load(const std::string& path, WeightType convert_to) {
  if (convert_to != WeightType::F32 && convert_to != WeightType::BF16 &&
      convert_to != WeightType::F16)
    throw Error(std::string("Model::load: cannot convert to ") + weight_type_name(convert_to) +
                " at load time; load, then qwen::quantize");
  const DType dt = to_dtype(convert_to);
  return wrap(qwen::Model::load(path, &dt));
}

void Model::save(const std::string& dir, size_t max_shard_bytes) const {
  if (has_adapter())
    throw Error("Model::save: the model has an unmerged LoRA adapter; save merged() instead");
  core(*this).save(dir, max_shard_bytes);
}

const ModelConfig& Model::config() const { return core(*this).config(); }
int64_t Model::num_parameters() const { return core(*this).num_parameters(); }
size_t Model::weight_bytes() const { return core(*this).weight_bytes(); }
WeightType Model::weight_type() const { return from_dtype(core(*this).matrix_dtype()); }
std::string Model::matrix_dtype_name() const { return dtype_name(core(*this).matrix_dtype()); }

std::vector<float> Model::forward(const std::vector<int32_t>& ids) const {
  const qwen::Model& m = core(*this);
  const int64_t T = int64_t(ids.size());
  if (T == 0) throw Error("Model::forward: ids is empty; pass at least one token id");
  if (T > m.config().max_position_embeddings)
    throw Error("Model::forward: " + std::to_string(T) + " tokens exceed max_position_embeddings " +
                std::to_string(m.config().max_position_embeddings));
  KvCache cache(m.config(), 1, T);
  Decoder dec(m, T);
  SeqChunk chunk{0, T, ids.data()};
  std::vector<float> logits(size_t(T * m.config().vocab_size));
  dec.forward(cache, &chunk, 1, LogitsMode::kAll, logits.data());
  return logits;
}

void Model::load_adapter(const std::string& adapter_dir) {
  core(*this);
  if (impl_->adapter)
    throw Error("Model::load_adapter: an adapter is attached already; load the base again");
  if (impl_.use_count() > 1)
    throw Error("Model::load_adapter: a Generator, Engine or Trainer uses this model already; "
                "load the adapter before building them");
  auto a = train::LoraAdapter::load(adapter_dir, impl_->m->config());
  a->attach(*impl_->m);
  impl_->adapter = std::move(a);
}

bool Model::has_adapter() const { return impl_ && impl_->adapter; }

int64_t Model::adapter_parameters() const { return has_adapter() ? impl_->adapter->n_params() : 0; }

AdapterInfo Model::adapter_info() const {
  if (!has_adapter()) throw Error("Model::adapter_info: no adapter is attached (load_adapter first)");
  const train::LoraAdapter& a = *impl_->adapter;
  const train::LoraConfig& c = a.config();
  AdapterInfo info;
  info.config.rank = c.r;
  info.config.alpha = c.alpha;
  info.config.dropout = c.dropout;
  info.config.rslora = c.rslora;
  info.config.targets = c.targets;
  info.scale = double(c.scale());
  info.n_matrices = int64_t(a.modules().size());
  info.n_parameters = a.n_params();
  return info;
}

std::vector<std::string> parse_lora_targets(const std::string& s) { return train::parse_lora_targets(s); }

Model Model::merged() const {
  if (!has_adapter()) throw Error("Model::merged: no adapter is attached (load_adapter first)");
  // The merged model's norms and biases point into the base: keep the base alive with it.
  return wrap(impl_->adapter->merge(*impl_->m), impl_);
}

}  // namespace qwen::api
