// model/rope.cpp — RoPE inverse frequencies for default / linear / dynamic / yarn / llama3, as
// transformers' modeling_rope_utils computes them. Each step reproduces torch's fp32 arithmetic
// in the same order (python scalars are rounded to fp32 where torch rounds them; `x / t` on a
// tensor is reciprocal-then-multiply, as torch's __rtruediv__ does), so results agree with
// torch to the last bit except where torch's vectorised powf/cosf are off by one ulp.
#include "model/rope.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "qwen/error.h"

namespace qwen {

namespace {

// torch: base ** (arange(0, dim, 2).float() / dim) in fp32 (base rounded to fp32 first).
std::vector<float> pos_freqs(double base, int64_t dim) {
  const float fbase = float(base);
  std::vector<float> p(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float e = float(2 * i) / float(dim);
    p[size_t(i)] = float(std::pow(double(fbase), double(e)));
  }
  return p;
}

// torch: 1.0 / t  ==  t.reciprocal() * 1.0
std::vector<float> reciprocal(const std::vector<float>& t) {
  std::vector<float> r(t.size());
  for (size_t i = 0; i < t.size(); ++i) r[i] = 1.0f / t[i];
  return r;
}

double get_mscale(double scale, double m) {
  if (scale <= 1) return 1.0;
  return 0.1 * m * std::log(scale) + 1.0;
}

}  // namespace

RopeFreqs rope_frequencies(const ModelConfig& c, int64_t seq_len) {
  const RopeScaling& s = c.rope_scaling;
  const int64_t dim = c.head_dim;
  if (dim <= 0 || dim % 2 != 0)
    throw Error("rope: head_dim = " + std::to_string(dim) + " must be positive and even");
  const double base = c.rope_theta;
  RopeFreqs out;
  const std::string& t = s.type;

  if (t == "default") {
    out.inv_freq = reciprocal(pos_freqs(base, dim));
    return out;
  }
  if (t == "linear") {
    out.inv_freq = reciprocal(pos_freqs(base, dim));
    const float f = float(s.factor);
    for (float& v : out.inv_freq) v /= f;
    return out;
  }
  if (t == "dynamic") {
    // All python-double arithmetic, then the new base goes through the fp32 pow.
    const double m = double(c.max_position_embeddings);
    const double sl = double(std::max<int64_t>(seq_len, c.max_position_embeddings));
    const double d = double(dim);
    const double nb =
        base * std::pow((s.factor * sl / m) - (s.factor - 1), d / (d - 2));
    out.inv_freq = reciprocal(pos_freqs(nb, dim));
    return out;
  }
  if (t == "yarn") {
    const double factor = s.factor;
    const double o = s.original_max_position_embeddings;
    double af;
    if (s.has_attention_factor) {
      af = s.attention_factor;
    } else if (s.has_mscale && s.mscale != 0 && s.has_mscale_all_dim && s.mscale_all_dim != 0) {
      af = get_mscale(factor, s.mscale) / get_mscale(factor, s.mscale_all_dim);
    } else {
      af = get_mscale(factor, 1.0);
    }
    const double pi = 3.14159265358979323846;
    auto corr_dim = [&](double rot) {
      return (double(dim) * std::log(o / (rot * 2 * pi))) / (2 * std::log(base));
    };
    double low = corr_dim(s.beta_fast), high = corr_dim(s.beta_slow);
    if (s.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, double(dim - 1));
    if (low == high) high += 0.001;

    const std::vector<float> pf = pos_freqs(base, dim);
    const float ff = float(factor);
    const float flow = float(low), fspan = float(high - low);
    out.inv_freq.resize(pf.size());
    for (size_t i = 0; i < pf.size(); ++i) {
      const float extrap_inv = 1.0f / pf[i];
      const float interp_inv = 1.0f / (ff * pf[i]);
      float ramp = (float(int64_t(i)) - flow) / fspan;
      ramp = std::min(std::max(ramp, 0.0f), 1.0f);
      const float extrap = 1.0f - ramp;
      const float a = interp_inv * (1.0f - extrap);
      const float b = extrap_inv * extrap;
      out.inv_freq[i] = a + b;
    }
    out.attention_factor = float(af);
    return out;
  }
  if (t == "llama3") {
    const std::vector<float> inv = reciprocal(pos_freqs(base, dim));
    const double o = s.original_max_position_embeddings;
    const float low_wl = float(o / s.low_freq_factor), high_wl = float(o / s.high_freq_factor);
    const float ff = float(s.factor), two_pi = float(2 * 3.14159265358979323846);
    const float fo = float(o), flow = float(s.low_freq_factor);
    const float fspan = float(s.high_freq_factor - s.low_freq_factor);
    out.inv_freq.resize(inv.size());
    for (size_t i = 0; i < inv.size(); ++i) {
      const float wavelen = (1.0f / inv[i]) * two_pi;            // 2*pi / inv_freq
      float v = wavelen > low_wl ? inv[i] / ff : inv[i];
      const float smooth = ((1.0f / wavelen) * fo - flow) / fspan;  // (O / wavelen - lff) / span
      const float smoothed = ((1.0f - smooth) * v) / ff + smooth * v;
      const bool medium = !(wavelen < high_wl) && !(wavelen > low_wl);
      out.inv_freq[i] = medium ? smoothed : v;
    }
    return out;
  }
  if (t == "longrope")
    throw Error("rope: rope type 'longrope' is not supported (supported: default, linear, dynamic, "
                "yarn, llama3)");
  throw Error("rope: unknown rope type '" + t + "' (supported: default, linear, dynamic, yarn, llama3)");
}

void rope_tables(const RopeFreqs& f, int64_t n_pos, std::vector<float>* cos_tab,
                 std::vector<float>* sin_tab) {
  assert(n_pos >= 0);
  const size_t half = f.inv_freq.size();
  cos_tab->resize(size_t(n_pos) * half);  // (n_pos, D/2)
  sin_tab->resize(size_t(n_pos) * half);  // (n_pos, D/2)
  const float af = f.attention_factor;
  for (int64_t p = 0; p < n_pos; ++p) {
    const float fp = float(p);
    float* c = cos_tab->data() + size_t(p) * half;
    float* s = sin_tab->data() + size_t(p) * half;
    for (size_t i = 0; i < half; ++i) {
      const double ang = double(fp * f.inv_freq[i]);  // fp32 product, as torch
      double sn, cs;
      ::sincos(ang, &sn, &cs);  // correctly rounded to fp32 in practice; torch's Sleef is <= 1 ulp
      c[i] = float(cs) * af;
      s[i] = float(sn) * af;
    }
  }
}

}  // namespace qwen
