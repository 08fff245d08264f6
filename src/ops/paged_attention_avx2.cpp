// ops/paged_attention_avx2.cpp — the paged attention inner kernels of paged_attention_simd.h
// instantiated for AVX2 + FMA (8-float vectors, 3- and 4-row register blocks). Reached only
// through paged_kernels_avx2() after cpu_features() said AVX2 is there.
#include "ops/paged_attention_simd.h"
#include "ops/simd_avx2.h"

namespace qwen::ops::detail {

const PagedKernels& paged_kernels_avx2() { return PagedSimd<simd::Avx2>::table(); }

}  // namespace qwen::ops::detail
