// ops/paged_attention_avx512.cpp — the paged attention inner kernels of paged_attention_simd.h
// instantiated for AVX-512 (16-float vectors, 6-row register blocks). Reached only through
// paged_kernels_avx512() after cpu_features() said AVX-512 is there.
// g++ 12's intrinsics pass _mm512_undefined_ps() as the unused source of many instructions and
// then warn (maybe-)uninitialized at the header line; that warning is spurious here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "ops/paged_attention_simd.h"
#include "ops/simd_avx512.h"

namespace qwen::ops::detail {

const PagedKernels& paged_kernels_avx512() { return PagedSimd<simd::Avx512>::table(); }

}  // namespace qwen::ops::detail
