// ops/quant.cpp — routes block-quantised dtypes to their format's kernel table (see quant.h).
#include "ops/quant.h"

#include <cstdint>
#include <string>

#include "qwen/error.h"

namespace qwen::ops {

const QuantKernels& quant_kernels(DType t) {
  const QuantKernels* k = nullptr;
  switch (t) {
    case DType::Q8_0: k = detail::q8_0_kernels(); break;
    case DType::NF4: k = detail::nf4_kernels(); break;
    case DType::Q4_0: k = detail::q4_0_kernels(); break;
    case DType::Q4_1: k = detail::q4_1_kernels(); break;
    case DType::Q4_K: k = detail::q4_k_kernels(); break;
    case DType::Q6_K: k = detail::q6_k_kernels(); break;
    default:
      throw Error(std::string("dtype ") + dtype_name(t) + " is not a block-quantised format");
  }
  if (!k) throw Error(std::string("no kernels for weight format ") + dtype_name(t) + " in this build");
  return *k;
}

static void check_k(const char* what, DType t, int64_t K) {
  if (K % dtype_block_elems(t) != 0)
    throw Error(std::string(what) + ": row length " + std::to_string(K) + " is not a multiple of " +
                dtype_name(t) + "'s block of " + std::to_string(dtype_block_elems(t)) + " values");
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  check_k("dequantize", t, n);
  quant_kernels(t).dequantize(src, dst, n);
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  check_k("quantize", t, n);
  const QuantKernels& k = quant_kernels(t);
  if (!k.quantize)
    throw Error(std::string("quantising to ") + dtype_name(t) +
                " row by row is not supported; quantise the whole matrix (ops::quantize_matrix)");
  k.quantize(src, dst, n);
}

size_t quant_matrix_bytes(DType t, int64_t N, int64_t K) {
  check_k("quantise a matrix", t, K);
  const QuantKernels& k = quant_kernels(t);
  return k.matrix_bytes ? k.matrix_bytes(N, K) : size_t(N) * dtype_row_bytes(t, K);
}

void quantize_matrix(DType t, const float* src, void* dst, int64_t N, int64_t K) {
  check_k("quantise a matrix", t, K);
  const QuantKernels& k = quant_kernels(t);
  if (k.quantize_matrix) return k.quantize_matrix(src, dst, N, K);
  if (!k.quantize) throw Error(std::string("quantising to ") + dtype_name(t) + " is not supported");
  const size_t rb = dtype_row_bytes(t, K);
  for (int64_t n = 0; n < N; ++n) k.quantize(src + n * K, static_cast<uint8_t*>(dst) + size_t(n) * rb, K);
}

void dequantize_rows(DType t, const void* W, int64_t N, int64_t K, int64_t row0, int64_t n_rows,
                     float* dst) {
  check_k("dequantise rows", t, K);
  if (row0 < 0 || n_rows < 0 || row0 + n_rows > N)
    throw Error("dequantise rows: rows " + std::to_string(row0) + " .. " + std::to_string(row0 + n_rows) +
                " are outside a matrix of " + std::to_string(N) + " rows");
  const QuantKernels& k = quant_kernels(t);
  if (k.dequantize_rows) return k.dequantize_rows(W, row0, n_rows, K, dst);
  const size_t rb = dtype_row_bytes(t, K);
  for (int64_t n = 0; n < n_rows; ++n)
    k.dequantize(static_cast<const uint8_t*>(W) + size_t(row0 + n) * rb, dst + n * K, K);
}

void matvec_quant(const void* W, DType t, const float* x, float* y, int64_t N, int64_t K, bool acc) {
  check_k("matvec", t, K);
  quant_kernels(t).matvec(W, x, y, N, K, acc);
}

void matmul_quant(const float* X, const void* W, DType t, float* Y, int64_t M, int64_t N, int64_t K,
                  bool acc) {
  check_k("matmul", t, K);
  const QuantKernels& k = quant_kernels(t);
  if (M == 1) return k.matvec(W, X, Y, N, K, acc);
  k.matmul(X, W, Y, M, N, K, acc);
}

}  // namespace qwen::ops
