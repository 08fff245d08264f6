// ops/quant.h — kernels for block-quantised weight matrices (the formats listed in core/dtype.h):
// dequantise rows, quantise rows, matrix-vector for decode and matrix-matrix for prefill and
// training forward. ops::matmul / ops::matvec route a quantised dtype here, so the decoder and
// every caller see one interface. Each format registers a table of kernels (QuantKernels) from
// its own source file: q8_0.cpp and nf4.cpp (QLoRA / 8-bit issue), quant_gguf.cpp (Q4_0, Q4_1,
// Q4_K, Q6_K for GGUF files). Every fast kernel has a scalar reference in the same table.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace qwen::ops {

struct QuantKernels {
  // dst (n) = values of n consecutive weights starting at a block boundary of src.
  void (*dequantize)(const void* src, float* dst, int64_t n) = nullptr;
  // dst = blocks encoding src (n values, a multiple of the block size). May be null for formats
  // we only read (Q4_K, Q6_K).
  void (*quantize)(const float* src, void* dst, int64_t n) = nullptr;
  // y (N) (+)= W (N, K) · x (K). Fast path and scalar reference.
  void (*matvec)(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) = nullptr;
  void (*matvec_ref)(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc) = nullptr;
  // Y (M, N) (+)= X (M, K) · Wᵀ. Fast path and scalar reference.
  void (*matmul)(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc) = nullptr;
  void (*matmul_ref)(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc) = nullptr;
  // Formats whose matrices are not N independent rows (NF4: a header, the codes, then the
  // double-quantised absmax of the whole matrix) set these three; null means "row after row of
  // dtype_row_bytes each", which the wrappers below then do themselves.
  // dst (n_rows, K) = rows row0 .. row0 + n_rows of the matrix W.
  void (*dequantize_rows)(const void* W, int64_t row0, int64_t n_rows, int64_t K, float* dst) = nullptr;
  // dst (matrix_bytes(N, K) bytes) = src (N, K) quantised.
  void (*quantize_matrix)(const float* src, void* dst, int64_t N, int64_t K) = nullptr;
  size_t (*matrix_bytes)(int64_t N, int64_t K) = nullptr;
};

// The table of a format; throws qwen::Error if t is not a block format or has no kernels.
const QuantKernels& quant_kernels(DType t);

// Convenience wrappers (check that K is a multiple of the block size, with a clear error).
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
void quantize_row(DType t, const float* src, void* dst, int64_t n);
void matvec_quant(const void* W, DType t, const float* x, float* y, int64_t N, int64_t K, bool acc);
void matmul_quant(const float* X, const void* W, DType t, float* Y, int64_t M, int64_t N, int64_t K,
                  bool acc);

// Whole matrices (N, K), for every block format: bytes a quantised matrix occupies (N row sizes,
// or NF4's header + codes + absmax), quantise one, dequantise some of its rows. Use these rather
// than row pointers W + n·dtype_row_bytes, which are wrong for NF4.
size_t quant_matrix_bytes(DType t, int64_t N, int64_t K);
void quantize_matrix(DType t, const float* src, void* dst, int64_t N, int64_t K);
void dequantize_rows(DType t, const void* W, int64_t N, int64_t K, int64_t row0, int64_t n_rows,
                     float* dst);

// Registration points, each defined in its format's source file.
namespace detail {
const QuantKernels* q8_0_kernels();   // q8_0.cpp
const QuantKernels* nf4_kernels();    // nf4.cpp
const QuantKernels* q4_0_kernels();   // quant_gguf.cpp
const QuantKernels* q4_1_kernels();   // quant_gguf.cpp
const QuantKernels* q4_k_kernels();   // quant_gguf.cpp
const QuantKernels* q6_k_kernels();   // quant_gguf.cpp
}  // namespace detail

}  // namespace qwen::ops
