// ops/attention_avx2.cpp — the flash-attention inner kernels of attention_simd.h instantiated
// for AVX2 + FMA (8-float vectors, 3- and 4-row register blocks). Reached only through
// attn_kernels_avx2() after cpu_features() said AVX2 is there.
#include "ops/attention_simd.h"
#include "ops/simd_avx2.h"

namespace qwen::ops::detail {

const AttnKernels& attn_kernels_avx2() { return AttnSimd<simd::Avx2>::table(); }

}  // namespace qwen::ops::detail
