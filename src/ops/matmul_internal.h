// ops/matmul_internal.h — what the matmul dispatcher (matmul.cpp) and the per-ISA kernel files
// (matmul_avx512.cpp, matmul_avx2.cpp) share: one description of a GEMM problem, the packed
// weight layout, the per-thread scratch buffers, and the per-ISA entry points. Not part of the
// ops API.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/dtype.h"
#include "ops/matmul.h"

namespace qwen::ops {

// A weight W (N, K) in the GEMM's B-panel layout: panel j holds weight rows j·nr .. j·nr+nr−1
// (zero past N) as K rows of nr values, k-major, in W's dtype:
//   element (k, c) of panel j  =  W[(j·nr + c)·K + k]  at  data[(j·K + k)·nr + c].
// A panel's k rows [k0, k0+kc) are therefore one contiguous run of kc·nr values, exactly what the
// micro-kernel reads (F32) or what is widened into its f32 panel buffer (BF16, F16).
struct PackedWeight {
  int64_t N = 0, K = 0;
  DType dt = DType::F32;
  int nr = 0;                          // panel width of the ISA it was packed for
  KernelIsa isa = KernelIsa::Scalar;
  std::unique_ptr<uint8_t, void (*)(void*)> data{nullptr, nullptr};  // 64-byte aligned
  size_t bytes = 0;

  int64_t n_panels() const { return (N + nr - 1) / nr; }
  size_t elem_size() const { return dt == DType::F32 ? 4 : 2; }
  const uint8_t* panel(int64_t j, int64_t k0) const {
    return data.get() + (size_t(j * K + k0) * size_t(nr)) * elem_size();
  }
};

}  // namespace qwen::ops

namespace qwen::ops::detail {

// C (M, N) = alpha · op(A) · op(B) + beta · C, every operand row-major.
//   op(A)(m, k) = trans_a ? A[k*lda + m] : A[m*lda + k]           (A is f32)
//   op(B)(k, n) = b_nk    ? B[n*ldb + k] : B[k*ldb + n]           (B is F32, BF16 or F16 when
//                                                                 b_nk, F32 otherwise)
// or, when packed is set, op(B)(k, n) = W[n*K + k] read from the packed weight (B, bt, ldb and
// b_nk are then unused).
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
  const PackedWeight* packed = nullptr;
  float* C = nullptr;
  int64_t ldc = 0;
  float alpha = 1.0f, beta = 0.0f;
};

// Per-thread grow-only scratch, 64-byte aligned, freed when the thread exits. slot 0..3 are
// independent buffers; the pointer stays valid until the same thread asks that slot for more.
float* scratch(int slot, size_t n_floats);

// pack_weight without the ISA check: the layout for panel width nr, tagged isa (tests use it to
// feed the emulated AVX-512 kernels).
std::shared_ptr<PackedWeight> pack_weight_layout(const void* W, DType wt, int64_t N, int64_t K,
                                                 int nr, KernelIsa isa);

// Below this many multiply-adds a product runs on the calling thread only (fork/join of the
// OpenMP team costs a few microseconds).
inline constexpr int64_t kParallelMinMacs = 1 << 16;

// Each ISA file provides: gemm (any GemmProblem, packed or not), matvec (raw row-major weight,
// dot-product order), matvec_packed (y (+)= W·x on a packed weight, in the GEMM's summation
// order), and its panel width nr.
namespace avx512 {
inline constexpr int kNR = 32;
void gemm(const GemmProblem& p);
void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate);
void matvec_packed(const PackedWeight& P, const float* x, float* y, bool accumulate);
}  // namespace avx512

namespace avx2 {
inline constexpr int kNR = 16;
void gemm(const GemmProblem& p);
void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate);
void matvec_packed(const PackedWeight& P, const float* x, float* y, bool accumulate);
}  // namespace avx2

}  // namespace qwen::ops::detail
