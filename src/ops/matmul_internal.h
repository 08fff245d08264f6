// ops/matmul_internal.h — what the matmul dispatcher (matmul.cpp) and the per-ISA kernel files
// (matmul_avx512.cpp, matmul_avx2.cpp) share: one description of a GEMM problem, the per-thread
// scratch buffers, and the per-ISA entry points. Not part of the ops API.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace qwen::ops::detail {

// C (M, N) = alpha · op(A) · op(B) + beta · C, every operand row-major.
//   op(A)(m, k) = trans_a ? A[k*lda + m] : A[m*lda + k]           (A is f32)
//   op(B)(k, n) = b_nk    ? B[n*ldb + k] : B[k*ldb + n]           (B is F32, BF16 or F16 when
//                                                                 b_nk, F32 otherwise)
// beta == 0 means C is not read (NaN/garbage in C does not propagate), as in BLAS.
// Callers guarantee M, N, K >= 1.
struct GemmProblem {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;
  int64_t lda = 0;
  bool trans_a = false;
  const void* B = nullptr;
  DType bt = DType::F32;
  int64_t ldb = 0;
  bool b_nk = true;
  float* C = nullptr;
  int64_t ldc = 0;
  float alpha = 1.0f, beta = 0.0f;
};

// Per-thread grow-only scratch, 64-byte aligned, freed when the thread exits. slot 0..3 are
// independent buffers; the pointer stays valid until the same thread asks that slot for more.
float* scratch(int slot, size_t n_floats);

// Below this many multiply-adds a product runs on the calling thread only (fork/join of the
// OpenMP team costs a few microseconds).
inline constexpr int64_t kParallelMinMacs = 1 << 16;

namespace avx512 {
void gemm(const GemmProblem& p);
void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate);
}  // namespace avx512

namespace avx2 {
void gemm(const GemmProblem& p);
void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate);
}  // namespace avx2

}  // namespace qwen::ops::detail
