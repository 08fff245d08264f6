// ops/quant_gguf.h — internals of the GGUF block formats Q4_0, Q4_1, Q4_K and Q6_K shared by
// quant_gguf.cpp (scalar references, registration, dispatch) and quant_gguf_avx2.cpp (fast
// kernels). Not part of the ops API: callers use ops/quant.h.
//
// Block layouts (ggml's, little-endian; d, m, dmin are IEEE fp16):
//   Q8_0  (34 B / 32):  d, int8 qs[32]       x[j] = d·qs[j]  (its own kernels: ops/q8_0.h)
//   Q4_0  (18 B / 32):  d, qs[16]            x[j] = d·(lo(qs[j]) − 8), x[j+16] = d·(hi(qs[j]) − 8)
//   Q4_1  (20 B / 32):  d, m, qs[16]         x[j] = d·lo(qs[j]) + m,   x[j+16] = d·hi(qs[j]) + m
//   Q4_K (144 B / 256): d, dmin, scales[12], qs[128]: 8 sub-blocks of 32, 6-bit scale and min each;
//                       sub-block pair p (64 values) uses qs[32p..32p+31], low nibbles first
//   Q6_K (210 B / 256): ql[128], qh[64], int8 scales[16], d: 16 sub-blocks of 16, 6-bit values − 32
//
// Fast matvec (decode): the activation x is quantised once per call to 16-bit blocks of 32
// (QAct: f32 scale dx = max|x|/32767, q = round(x/dx), and dx·Σq), and every weight block's
// integer dot product with it is exact; the only error is x's rounding, |x − dx·q| ≤ dx/2, so
// |y_fast − y_exact| ≤ Σ_blocks dx_b/2 · Σ_j |w_j| (plus f32 rounding): 2^-16 of the block's
// largest activation per element, 256 times less than llama.cpp's 8-bit activations. Tests hold
// the kernels to that bound against the scalar references, which use the exact x.
// Fast matmul (prefill): weight rows are dequantised into f32 tiles and multiplied with the
// f32 GEMM (exact x; the only difference to the reference is f32 summation order).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace qwen::ops::gguf {

// x (K) quantised to 16-bit blocks of 32: q (K), d (K/32) = max|x|/32767, s (K/32) = d·Σq.
struct QAct {
  int16_t* q = nullptr;
  float* d = nullptr;
  float* s = nullptr;
};

// Scalar (baseline) building blocks, also used by the AVX2 file for tails.
void dequantize_q4_0(const void* src, float* dst, int64_t n);
void dequantize_q4_1(const void* src, float* dst, int64_t n);
void dequantize_q4_k(const void* src, float* dst, int64_t n);
void dequantize_q6_k(const void* src, float* dst, int64_t n);
void quantize_act_ref(const float* x, int64_t K, QAct a);
// Dot products of one weight row (K values) with a quantised activation (scalar references of
// the fast kernels' arithmetic).
float dot_q4_0_act_ref(const void* row, QAct a, int64_t K);
float dot_q4_1_act_ref(const void* row, QAct a, int64_t K);
float dot_q8_0_act_ref(const void* row, QAct a, int64_t K);

// Q8_0 decode matvec with 16-bit activations (the same scheme and error bound as Q4_0 / Q4_1
// above): y (N) (+)= W (N, K) · x, W row-major Q8_0 (ops/q8_0.h's layout), on the OpenMP threads.
// ops::q8_0_matvec (the registered kernel) runs this; falls back to ops::q8_0_matvec_f32
// without AVX2. Measured on SmolLM2's shapes from DRAM
// (bench_gguf_kernels, 1 thread): see docs/gguf.md.
void q8_0_matvec_act16(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);

// Q8_0 matmul with the act16 scheme: Y (M, N) (+)= X (M, K) · Wᵀ, every row quantised and
// multiplied exactly as q8_0_matvec_act16 does for that row alone, so a row's result does not
// depend on M or on the other rows (batch invariance without a companion row); weight blocks
// are decoded once per call and applied to four activation rows at a time. Falls back to
// ops::q8_0_matmul's dequantise + GEMM path without AVX2 (q8_0_matmul_row_invariant() says which).
void q8_0_matmul_act16(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                       bool acc);
// true when q8_0_matmul_act16 runs the integer kernel (AVX2): each row then sums as alone.
bool q8_0_matmul_row_invariant();

namespace avx2 {
void quantize_act(const float* x, int64_t K, QAct a);
// y[r] (+)= row r · x for rows [r0, r1) of W (N, K).
void matvec_rows_q4_0(const void* W, QAct a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc);
void matvec_rows_q4_1(const void* W, QAct a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc);
void matvec_rows_q8_0(const void* W, QAct a, float* y, int64_t r0, int64_t r1, int64_t K, bool acc);
// Y[m] (ldy apart) (+)= rows [r0, r1) of W · x_m for the M quantised activation rows a[0..M):
// each weight group of four rows is decoded once into wq (64-byte aligned, 4·K i16) and sc
// (64-byte aligned, 8·K/32 f32) and applied to all M rows; every row's result is bit-identical
// to matvec_rows_q8_0 on that row alone (r0 a multiple of 4 or the start of the last rows).
void matmul_rows_q8_0(const void* W, const QAct* a, int64_t M, float* Y, int64_t ldy, int64_t r0,
                      int64_t r1, int64_t K, bool acc, int16_t* wq, float* sc);
// Rows [r0, r1) of W dequantised to f32, row-major with ld K.
void dequantize_rows_q4_0(const void* W, float* dst, int64_t r0, int64_t r1, int64_t K);
void dequantize_rows_q4_1(const void* W, float* dst, int64_t r0, int64_t r1, int64_t K);
// f32 dot product of n values.
float dot_f32(const float* a, const float* b, int64_t n);
}  // namespace avx2

}  // namespace qwen::ops::gguf
