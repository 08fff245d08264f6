// ops/elementwise_avx2.cpp — SwiGLU, softmax and exp of elementwise_simd.h instantiated for
// AVX2 + FMA; reached from elementwise.cpp after cpu_features() said AVX2 is there.
#include "ops/elementwise_simd.h"
#include "ops/simd_avx2.h"

namespace qwen::ops::detail {

using E256 = ElementwiseSimd<simd::Avx2>;
void swiglu_avx2(const float* g, const float* u, float* o, int64_t n) { E256::swiglu(g, u, o, n); }
void softmax_inplace_avx2(float* x, int64_t n) { E256::softmax(x, n); }
void exp_f32_avx2(const float* x, float* y, int64_t n) { E256::exp(x, y, n); }

}  // namespace qwen::ops::detail
