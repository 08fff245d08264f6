// ops/elementwise_avx512.cpp — SwiGLU, softmax and exp of elementwise_simd.h instantiated for
// AVX-512; reached from elementwise.cpp after cpu_features() said AVX-512 is there.
// g++ 12's intrinsics pass _mm512_undefined_ps() as the unused source of many instructions and
// then warn (maybe-)uninitialized at the header line; that warning is spurious here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "ops/elementwise_simd.h"
#include "ops/simd_avx512.h"

namespace qwen::ops::detail {

using E512 = ElementwiseSimd<simd::Avx512>;
void swiglu_avx512(const float* g, const float* u, float* o, int64_t n) {
  E512::swiglu(g, u, o, n);
}
void softmax_inplace_avx512(float* x, int64_t n) { E512::softmax(x, n); }
void exp_f32_avx512(const float* x, float* y, int64_t n) { E512::exp(x, y, n); }

}  // namespace qwen::ops::detail
