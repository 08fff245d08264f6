// ops/quant.cpp — routes block-quantised dtypes to their format's kernel table (see quant.h).
#include "ops/quant.h"

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
  if (!k.quantize) throw Error(std::string("quantising to ") + dtype_name(t) + " is not supported");
  k.quantize(src, dst, n);
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
