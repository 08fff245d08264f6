// ops/q8_0.h — Q8_0, the 8-bit block format of GGUF: 32 values per 34-byte block (f16 scale d,
// then 32 × int8), x = d·q. Quantisation is bit-exact with the reference quantizer of pip `gguf`
// (quants.py: d = max|x| / 127 in f32, q = round-half-away-from-zero(x · (1/d)), d stored as
// f16). The kernels are registered in ops/quant.h's table (DType::Q8_0); this header adds the
// explicit entry points (scalar reference and fast path side by side for tests and benchmarks)
// and the dequantise-a-panel-then-f32-GEMM driver that every block format may reuse for matmul.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace qwen::ops {

inline constexpr int64_t kQ8_0Block = 32;       // values per block
inline constexpr size_t kQ8_0BlockBytes = 34;   // f16 d + 32 int8

// n values (a multiple of 32) <-> n/32 blocks. Quantise is scalar and gguf-exact.
void q8_0_quantize(const float* src, void* dst, int64_t n);
void q8_0_dequantize(const void* src, float* dst, int64_t n);      // fast path
void q8_0_dequantize_ref(const void* src, float* dst, int64_t n);  // scalar

// y (N) (+)= W (N, K) · x (K), W row-major Q8_0 (K a multiple of 32).
// q8_0_matvec (registered; decode): with AVX2, x is quantised once to 16-bit blocks and the block
// dot products are exact integer sums (ops/quant_gguf.h: error ≤ 2^-16 of each block's largest
// |x| times Σ|w|, 256 times below llama.cpp's 8-bit activations); 1.3-1.5× faster than
// q8_0_matvec_f32 from DRAM (docs/gguf.md). q8_0_matvec_f32 keeps x in f32 (differs from the
// reference only in summation order); q8_0_matvec_ref is the scalar reference.
void q8_0_matvec(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
void q8_0_matvec_f32(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
void q8_0_matvec_ref(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
// Y (M, N) (+)= X (M, K) · Wᵀ. q8_0_matmul (registered): with AVX2 every M >= 2 runs the
// multi-row integer kernel gguf::q8_0_matmul_act16, whose every row is bit-identical to the
// M = 1 q8_0_matvec of that row (a row's result does not depend on M; same error bound); without
// AVX2, q8_0_matmul_dequant: dequantised panels + f32 GEMM (exact x, GEMM summation order).
// true when q8_0_matmul's rows do not depend on M (AVX2: the integer kernels at every M).
bool q8_0_matmul_row_invariant();
void q8_0_matmul_dequant(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                         bool acc);
void q8_0_matmul(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc);
void q8_0_matmul_ref(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                     bool acc);

// Y (M, N) (+)= X (M, K) · Wᵀ for a block-quantised W of dtype t: rows of W are dequantised a
// panel at a time (dequant_rows(W, row0, n_rows, K, panel (n_rows, K) f32), run on all threads)
// and multiplied with the f32 GEMM (ops::gemm_f32). Prefill and training forward are
// compute-bound, so the one-off dequantisation (N·K values) is cheap next to M·N·K FMAs.
using DequantRowsFn = void (*)(const void* W, int64_t row0, int64_t n_rows, int64_t K, float* dst);
void matmul_dequant_panels(const float* X, const void* W, DType t, DequantRowsFn dequant_rows,
                           float* Y, int64_t M, int64_t N, int64_t K, bool acc);

namespace detail {
// The AVX2 kernels (q8_0_avx2.cpp); callers check cpu_features().avx2.
void q8_0_dequantize_avx2(const void* src, float* dst, int64_t n);
void q8_0_matvec_rows_avx2(const void* W, const float* x, float* y, int64_t n0, int64_t n1,
                           int64_t K, bool acc);
}  // namespace detail

}  // namespace qwen::ops
