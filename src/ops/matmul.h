// ops/matmul.h — the matrix products of the model: weight-typed matmul for prefill and
// training forward, matrix-vector for decode, and a general f32 GEMM for backward passes.
// Weights are row-major (N, K) as Hugging Face stores nn.Linear: output feature n is row n.
// Activations are always f32. Every fast path has a scalar reference (the *_ref functions),
// kept forever for tests. Kernels dispatch at run time on cpu_features().
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/dtype.h"

namespace qwen::ops {

// Y (M, N) = X (M, K) · Wᵀ,  W (N, K) of dtype wt (F32, BF16, F16, or a block-quantised format of
// core/dtype.h, routed to ops/quant.h; the *_isa entry points take only the float dtypes).
// If accumulate, Y += X·Wᵀ instead of Y = X·Wᵀ. Rows of X and Y are contiguous (ld = K, N).
// Uses all op threads (OpenMP); M == 1 goes to matvec. A weight registered with prepack_weight
// (below) is read from its packed copy.
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

// ---- Pre-packed weights (prefill and batched serving) ----
// A weight W (N, K) packed once into the layout the GEMM kernel reads: k-major panels of the
// kernel's column width (16 on AVX2, 32 on AVX-512), same dtype as W (F32, BF16 or F16), so it
// takes about as many bytes as W. A product on a packed weight skips the per-call transposition
// of W (about 10% of a 128-row prefill GEMM) and reads the weight as one linear stream, which
// makes small-M products (M = 2..16, batched decode) cost close to one matvec's memory traffic.
// Numerics: for every M >= 1 a row of X·Wᵀ on the packed weight is bit-identical to the same
// row of any other M (M = 1 included) and to the unpacked matmul with M >= 2 (same kernel, same
// summation order); only the unpacked M = 1 matvec sums in another order.
// The packed copy does not follow later changes of W: re-pack after modifying W (a trainer
// that updates weights in place must not pack them).
struct PackedWeight;
std::shared_ptr<const PackedWeight> pack_weight(const void* W, DType wt, int64_t N, int64_t K,
                                                KernelIsa isa = best_kernel_isa());
size_t packed_weight_bytes(const PackedWeight& P);
// Y (M, N) (+)= X (M, K) · Wᵀ on a packed weight (M == 1 is the packed matvec).
void matmul_packed(const float* X, const PackedWeight& P, float* Y, int64_t M,
                   bool accumulate = false);

// Registry: prepack_weight(W, ...) packs W for best_kernel_isa() and files the copy under the
// pointer W; from then on the public matmul() and matvec() on W (same dtype and shape) use it.
// Calls are counted: packing an already filed W again only adds a reference, and each
// release_prepacked_weight(W) drops one; the copy is freed with the last. Whoever files W must
// release it before freeing or changing W (PrepackedWeightGuard does it on scope exit), and
// must not file weights that something else updates in place while they are filed (a trainer's
// ops::matmul would read the stale copy). Thread-safe; a lookup costs one shared lock per call.
void prepack_weight(const void* W, DType wt, int64_t N, int64_t K);
void release_prepacked_weight(const void* W);
std::shared_ptr<const PackedWeight> find_prepacked_weight(const void* W, DType wt, int64_t N,
                                                          int64_t K);

class PrepackedWeightGuard {
 public:
  PrepackedWeightGuard(const void* W, DType wt, int64_t N, int64_t K) : w_(W) {
    prepack_weight(W, wt, N, K);
  }
  ~PrepackedWeightGuard() { release_prepacked_weight(w_); }
  PrepackedWeightGuard(const PrepackedWeightGuard&) = delete;
  PrepackedWeightGuard& operator=(const PrepackedWeightGuard&) = delete;

 private:
  const void* w_;
};

}  // namespace qwen::ops
