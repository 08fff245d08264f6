// ops/matmul.h — the matrix products of the model: weight-typed matmul for prefill and
// training forward, matrix-vector for decode, and a general f32 GEMM for backward passes.
// Weights are row-major (N, K) as Hugging Face stores nn.Linear: output feature n is row n.
// Activations are always f32. Every fast path has a scalar reference (the *_ref functions),
// kept forever for tests. Kernels dispatch at run time on cpu_features().
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace qwen::ops {

// Y (M, N) = X (M, K) · Wᵀ,  W (N, K) of dtype wt (F32, BF16 or F16).
// If accumulate, Y += X·Wᵀ instead of Y = X·Wᵀ. Rows of X and Y are contiguous (ld = K, N).
// Uses all op threads (OpenMP); M == 1 goes to matvec.
void matmul(const float* X, const void* W, DType wt, float* Y, int64_t M, int64_t N, int64_t K,
            bool accumulate = false);
void matmul_ref(const float* X, const void* W, DType wt, float* Y, int64_t M, int64_t N,
                int64_t K, bool accumulate = false);

// y (N) = W (N, K) · x (K), decode path, memory-bound: reads W once, streaming.
void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate = false);
void matvec_ref(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
                bool accumulate = false);

// General f32 GEMM, row-major: C (M, N) = alpha · op(A) · op(B) + beta · C,
// op(A) is (M, K): A is (M, K) with lda >= K, or if trans_a, A is (K, M) with lda >= M.
// op(B) is (K, N): B is (K, N) with ldb >= N, or if trans_b, B is (N, K) with ldb >= K.
// For backward passes: dX = dY·W (trans_b=false with W (N,K)), dW += dYᵀ·X (trans_a=true).
void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc);
void gemm_f32_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc);

// ---- Explicit-ISA entry points (tests and benchmarks compare the paths side by side) ----
// The public functions above pick the best path for this CPU once (cpu_features(), which honours
// QWEN_ISA). These run one path by name; asking for a path this CPU lacks throws qwen::Error.
enum class KernelIsa : uint8_t { Scalar = 0, Avx2 = 1, Avx512 = 2 };
const char* kernel_isa_name(KernelIsa isa);
KernelIsa best_kernel_isa();               // what the public functions use
bool kernel_isa_available(KernelIsa isa);  // does this CPU run it

void matmul_isa(KernelIsa isa, const float* X, const void* W, DType wt, float* Y, int64_t M,
                int64_t N, int64_t K, bool accumulate = false);
void matvec_isa(KernelIsa isa, const void* W, DType wt, const float* x, float* y, int64_t N,
                int64_t K, bool accumulate = false);
void gemm_f32_isa(KernelIsa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                  float beta, float* C, int64_t ldc);

}  // namespace qwen::ops
