// io/nf4_format.cpp — bitsandbytes-exact NF4 quantisation, double quantisation, dequantisation
// and the packed quant_state JSON (see nf4_format.h for the exactness notes).
#include "io/nf4_format.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "ops/nf4.h"
#include "qwen/error.h"

namespace qwen::io {

namespace {

// torch.linspace(start, end, steps, dtype=float32) on CPU: f32 step, the first half counted from
// start and the second half from end, each value one fused multiply-add (as its vector path).
std::vector<float> linspace_f32(float start, float end, int64_t steps) {
  std::vector<float> v(static_cast<size_t>(steps));
  const float step = (end - start) / float(steps - 1);
  const int64_t halfway = steps / 2;
  for (int64_t i = 0; i < steps; ++i)
    v[size_t(i)] = i < halfway ? std::fma(step, float(i), start)
                               : std::fma(-step, float(steps - i - 1), end);
  return v;
}

std::array<float, 256> make_dynamic_map() {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const std::vector<float> b = linspace_f32(0.1f, 1.0f, (int64_t(1) << i) + 1);
    const float scale = float(std::pow(10.0, double(i - 6)));
    std::vector<float> means;
    for (size_t j = 0; j + 1 < b.size(); ++j) means.push_back((b[j] + b[j + 1]) / 2.0f);
    for (float m : means) data.push_back(scale * m);
    for (float m : means) data.push_back(-scale * m);
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

// bitsandbytes' CPU LUT: 65536 evenly spaced values in [-1, 1], each mapped to the first code
// whose upper midpoint is not below it.
struct QuantLut {
  std::vector<uint8_t> lut;
  explicit QuantLut(const float* code) : lut(65536) {
    float mid[255];
    for (int i = 0; i < 255; ++i) mid[i] = 0.5f * (code[i] + code[i + 1]);
    int c = 0;
    for (int i = 0; i < 65536; ++i) {
      const float val = -1.0f + (2.0f * float(i)) / 65535.0f;
      while (c < 255 && mid[c] < val) ++c;
      lut[size_t(i)] = uint8_t(c);
    }
  }
  uint8_t operator()(float v) const {
    v = std::clamp(v, -1.0f, 1.0f);
    volatile float t = (v + 1.0f) * 0.5f;  // no contraction into an FMA: bnb rounds each step
    const float idx = t * 65535.0f + 0.5f;
    return lut[size_t(uint16_t(idx))];
  }
};

// One level of torch's cascade sum (aten SumKernel multi_row_sum) over `size` rows of 4 vectors
// of 8 floats each; rows at x + i*32, vector k at + k*8.
void multi_row_sum(const float* x, int64_t size, float out[4][8]) {
  constexpr int kLevels = 4;
  int64_t lg = 0;
  while ((int64_t(1) << lg) < size) ++lg;  // ceil(log2(size)), 0 for size <= 1
  const int64_t level_power = std::max<int64_t>(4, lg / kLevels);
  const int64_t level_step = int64_t(1) << level_power;
  const int64_t level_mask = level_step - 1;
  float acc[kLevels][4][8] = {};
  int64_t i = 0;
  auto add_row = [&](int64_t r) {
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 8; ++l) acc[0][k][l] += x[r * 32 + k * 8 + l];
  };
  while (i + level_step <= size) {
    for (int64_t j = 0; j < level_step; ++j, ++i) add_row(i);
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < 4; ++k)
        for (int l = 0; l < 8; ++l) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size; ++i) add_row(i);
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 8; ++l) acc[0][k][l] += acc[j][k][l];
  std::memcpy(out, acc[0], sizeof(float) * 32);
}

}  // namespace

const std::array<float, 256>& bnb_dynamic_map() {
  static const std::array<float, 256> m = make_dynamic_map();
  return m;
}

float torch_mean_f32(const float* x, int64_t n) {
  if (n <= 0) return std::nanf("");
  if (n < 8) {
    // Shorter than one vector: four scalar partial sums (torch's scalar row_sum).
    float ps[4] = {0, 0, 0, 0};
    const int64_t rows = n / 4;
    for (int64_t i = 0; i < rows; ++i)
      for (int k = 0; k < 4; ++k) ps[k] += x[i * 4 + k];
    for (int64_t i = rows * 4; i < n; ++i) ps[0] += x[i];
    return (((ps[0] + ps[1]) + ps[2]) + ps[3]) / float(n);
  }
  const int64_t vec_size = n / 8, size_ilp = vec_size / 4;
  float ps[4][8];
  multi_row_sum(x, size_ilp, ps);
  for (int64_t v = size_ilp * 4; v < vec_size; ++v)
    for (int l = 0; l < 8; ++l) ps[0][l] += x[v * 8 + l];
  for (int k = 1; k < 4; ++k)
    for (int l = 0; l < 8; ++l) ps[0][l] += ps[k][l];
  float s = 0.0f;
  for (int64_t i = vec_size * 8; i < n; ++i) s += x[i];
  for (int l = 0; l < 8; ++l) s += ps[0][l];
  return s / float(n);
}

void bnb_quantize_blockwise(const float* x, int64_t n, const float* code, int64_t blocksize,
                            uint8_t* out, float* absmax) {
  const QuantLut lut(code);
  for (int64_t b = 0, bi = 0; b < n; b += blocksize, ++bi) {
    const int64_t e = std::min(n, b + blocksize);
    float am = 0.0f;
    for (int64_t i = b; i < e; ++i) am = std::max(am, std::fabs(x[i]));
    absmax[bi] = am;
    if (am == 0.0f) {
      std::fill(out + b, out + e, uint8_t(0));
      continue;
    }
    const float inv = 1.0f / am;
    for (int64_t i = b; i < e; ++i) out[i] = lut(x[i] * inv);
  }
}

Nf4Tensor bnb_quantize_nf4(const float* x, const std::vector<int64_t>& shape, bool double_quant,
                           const std::string& dtype) {
  Nf4Tensor t;
  t.shape = shape;
  t.numel = 1;
  for (int64_t d : shape) t.numel *= d;
  t.blocksize = 64;
  t.dtype = dtype;
  t.quant_map.assign(ops::kNf4Code, ops::kNf4Code + 16);
  const int64_t n = t.numel, bs = t.blocksize;
  const int64_t nb = t.n_blocks();
  std::vector<float> absmax(static_cast<size_t>(nb));
  std::vector<uint8_t> codes(size_t(n + 1), 7);  // the pad value 0.0 is code 7
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t s = b * bs, e = std::min(n, s + bs);
    float am = 0.0f;
    for (int64_t i = s; i < e; ++i) am = std::max(am, std::fabs(x[i]));
    const float amc = std::max(am, 1e-38f);
    if (e - s == bs) {
      // Full blocks: x · (1 / absmax); the stored absmax is not clamped.
      absmax[size_t(b)] = am;
      const float inv = 1.0f / amc;
      for (int64_t i = s; i < e; ++i)
        codes[size_t(i)] = ops::nf4_nearest_code(std::clamp(x[i] * inv, -1.0f, 1.0f));
    } else {
      // The partial block: x / absmax, and the stored absmax is the clamped one.
      absmax[size_t(b)] = amc;
      for (int64_t i = s; i < e; ++i)
        codes[size_t(i)] = ops::nf4_nearest_code(std::clamp(x[i] / amc, -1.0f, 1.0f));
    }
  }
  t.packed.resize(size_t((n + 1) / 2));
  for (int64_t j = 0; j < (n + 1) / 2; ++j)
    t.packed[size_t(j)] = uint8_t(codes[size_t(2 * j)] << 4 | codes[size_t(2 * j + 1)]);
  t.double_quant = double_quant;
  if (!double_quant) {
    t.absmax = std::move(absmax);
    return t;
  }
  // Double quantisation: offset = mean(absmax); absmax - offset in 8-bit blocks of 256.
  t.nested_offset = torch_mean_f32(absmax.data(), nb);
  for (float& a : absmax) a -= t.nested_offset;
  const auto& dm = bnb_dynamic_map();
  t.nested_quant_map.assign(dm.begin(), dm.end());
  t.nested_blocksize = 256;
  t.absmax_codes.resize(size_t(nb));
  t.nested_absmax.resize(size_t((nb + 255) / 256));
  bnb_quantize_blockwise(absmax.data(), nb, t.nested_quant_map.data(), 256, t.absmax_codes.data(),
                         t.nested_absmax.data());
  return t;
}

std::vector<float> bnb_block_absmax(const Nf4Tensor& t) {
  const int64_t nb = t.n_blocks();
  if (!t.double_quant) return t.absmax;
  std::vector<float> a(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) {
    const float v = t.nested_quant_map[t.absmax_codes[size_t(b)]] *
                    t.nested_absmax[size_t(b / t.nested_blocksize)];
    a[size_t(b)] = v + t.nested_offset;
  }
  return a;
}

void bnb_dequantize_nf4(const Nf4Tensor& t, float* out) {
  const std::vector<float> am = bnb_block_absmax(t);
  for (int64_t i = 0; i < t.numel; ++i) {
    const uint8_t byte = t.packed[size_t(i / 2)];
    const uint8_t c = (i % 2 == 0) ? byte >> 4 : byte & 15;
    out[i] = t.quant_map[c] * am[size_t(i / t.blocksize)];
  }
}

std::vector<uint8_t> bnb_to_nf4_matrix(const Nf4Tensor& t) {
  if (t.blocksize != ops::kNf4Block || t.shape.size() != 2 || t.shape[1] % ops::kNf4Block != 0)
    throw Error("NF4 tensor of shape " + std::to_string(t.shape.size() == 2 ? t.shape[0] : -1) +
                "x" + std::to_string(t.shape.size() == 2 ? t.shape[1] : -1) + " with blocksize " +
                std::to_string(t.blocksize) +
                " cannot be held as an in-memory NF4 matrix (needs 2-D, blocksize 64, columns a "
                "multiple of 64)");
  for (int i = 0; i < 16; ++i)
    if (t.quant_map[size_t(i)] != ops::kNf4Code[i])
      throw Error("NF4 tensor's quant_map differs from bitsandbytes' NF4 table at entry " +
                  std::to_string(i) + "; only nf4 is supported");
  const int64_t N = t.shape[0], K = t.shape[1], nb = t.n_blocks();
  const float* own_map = nullptr;
  if (t.double_quant) {
    if (t.nested_quant_map.size() != 256 || t.absmax_codes.size() != size_t(nb) ||
        t.nested_absmax.size() != size_t((nb + t.nested_blocksize - 1) / t.nested_blocksize))
      throw Error("NF4 tensor's double-quantisation arrays have the wrong sizes");
    const auto& dm = bnb_dynamic_map();
    if (std::memcmp(t.nested_quant_map.data(), dm.data(), 256 * 4) != 0) own_map = t.nested_quant_map.data();
  } else if (t.absmax.size() != size_t(nb)) {
    throw Error("NF4 tensor has " + std::to_string(t.absmax.size()) + " absmax values for " +
                std::to_string(nb) + " blocks");
  }
  std::vector<uint8_t> m(ops::nf4_matrix_bytes(N, K, t.double_quant, own_map != nullptr));
  const ops::Nf4View v = ops::nf4_matrix_init(m.data(), N, K, t.double_quant, t.nested_offset,
                                              int32_t(t.nested_blocksize), own_map);
  std::memcpy(const_cast<uint8_t*>(v.codes), t.packed.data(), size_t(N * K / 2));
  if (t.double_quant) {
    std::memcpy(const_cast<uint8_t*>(v.absmax_codes), t.absmax_codes.data(), size_t(nb));
    std::memcpy(const_cast<float*>(v.nested), t.nested_absmax.data(), t.nested_absmax.size() * 4);
  } else {
    std::memcpy(const_cast<float*>(v.absmax_f32), t.absmax.data(), size_t(nb) * 4);
  }
  return m;
}

std::string bnb_quant_state_json(const Nf4Tensor& t) {
  // json.dumps with its default ", " / ": " separators, keys in QuantState.as_dict order.
  std::string s = "{\"quant_type\": \"nf4\", \"blocksize\": " + std::to_string(t.blocksize) +
                  ", \"dtype\": \"" + t.dtype + "\", \"shape\": [";
  for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  s += "]";
  if (t.double_quant) {
    // The offset as Python's repr of the double of the f32 (shortest round-trip digits).
    nlohmann::json off = double(t.nested_offset);
    s += ", \"nested_blocksize\": " + std::to_string(t.nested_blocksize) +
         ", \"nested_dtype\": \"float32\", \"nested_offset\": " + off.dump();
  }
  return s + "}";
}

void bnb_parse_quant_state_json(const std::string& text, Nf4Tensor* t, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw Error(where + ": quant_state is not valid JSON (" + e.what() + ")");
  }
  auto need = [&](const char* key) -> const nlohmann::json& {
    if (!j.is_object() || !j.contains(key))
      throw Error(where + ": quant_state has no '" + std::string(key) + "'");
    return j.at(key);
  };
  try {
    const std::string qt = need("quant_type").get<std::string>();
    if (qt != "nf4") throw Error(where + ": quant_type '" + qt + "' is not supported (only nf4)");
    t->blocksize = need("blocksize").get<int64_t>();
    t->dtype = need("dtype").get<std::string>();
    t->shape = need("shape").get<std::vector<int64_t>>();
    t->numel = 1;
    for (int64_t d : t->shape) t->numel *= d;
    t->double_quant = j.contains("nested_offset");
    if (t->double_quant) {
      t->nested_blocksize = need("nested_blocksize").get<int64_t>();
      t->nested_offset = float(need("nested_offset").get<double>());
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": bad quant_state field (" + e.what() + ")");
  }
  if (t->blocksize <= 0 || t->numel < 0 || (t->double_quant && t->nested_blocksize <= 0))
    throw Error(where + ": quant_state has a non-positive blocksize or a negative shape");
}

}  // namespace qwen::io
