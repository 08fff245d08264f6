// ops/matmul.cpp — the matrix products' front door: argument checks, runtime dispatch to the
// AVX-512 / AVX2 kernel files, the portable scalar fallbacks, and the scalar references (*_ref)
// that every fast path is tested against.
//
// References accumulate each dot product in double, in index order, from the exact f32 values of
// the operands (BF16/F16 weights widen to f32 exactly), and round once to f32 at the end; they are
// slow on purpose and kept forever. The scalar fallbacks are the paths for CPUs without AVX2:
// f32 accumulation with several partial sums, plain loops.
#include "ops/matmul.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "ops/matmul_internal.h"
#include "qwen/error.h"

namespace qwen::ops {

namespace detail {

namespace {
struct ScratchSet {
  float* ptr[4] = {nullptr, nullptr, nullptr, nullptr};
  size_t cap[4] = {0, 0, 0, 0};
  ~ScratchSet() {
    for (float* p : ptr) std::free(p);
  }
};
thread_local ScratchSet t_scratch;
}  // namespace

float* scratch(int slot, size_t n_floats) {
  ScratchSet& s = t_scratch;
  if (s.cap[slot] < n_floats) {
    std::free(s.ptr[slot]);
    const size_t bytes = (n_floats * sizeof(float) + 63) / 64 * 64;
    s.ptr[slot] = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!s.ptr[slot])
      throw Error("matmul: out of memory for a " + std::to_string(bytes) +
                  "-byte scratch buffer; free memory or use smaller shapes");
    s.cap[slot] = n_floats;
  }
  return s.ptr[slot];
}

}  // namespace detail

namespace {

using detail::GemmProblem;

inline float weight_at(const void* W, DType wt, int64_t i) {
  switch (wt) {
    case DType::F32: return static_cast<const float*>(W)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(W)[i]);
    default: return f16_to_f32(static_cast<const uint16_t*>(W)[i]);
  }
}

void check_weight_dtype(const char* fn, DType wt) {
  if (wt != DType::F32 && wt != DType::BF16 && wt != DType::F16)
    throw Error(std::string(fn) + ": weight dtype " + dtype_name(wt) +
                " is not supported; convert the weight to F32, BF16 or F16");
}

void check_dims(const char* fn, int64_t M, int64_t N, int64_t K) {
  if (M < 0 || N < 0 || K < 0)
    throw Error(std::string(fn) + ": negative size (M=" + std::to_string(M) +
                ", N=" + std::to_string(N) + ", K=" + std::to_string(K) + "); pass sizes >= 0");
}

void check_gemm_args(const char* fn, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                     int64_t lda, int64_t ldb, int64_t ldc) {
  check_dims(fn, M, N, K);
  const int64_t need_a = trans_a ? M : K, need_b = trans_b ? K : N;
  if (lda < std::max<int64_t>(1, need_a) || ldb < std::max<int64_t>(1, need_b) ||
      ldc < std::max<int64_t>(1, N))
    throw Error(std::string(fn) + ": leading dimension too small (lda=" + std::to_string(lda) +
                " needs >= " + std::to_string(need_a) + ", ldb=" + std::to_string(ldb) +
                " needs >= " + std::to_string(need_b) + ", ldc=" + std::to_string(ldc) +
                " needs >= " + std::to_string(N) + "); fix the strides");
}

// C = beta·C (beta == 0: C = 0 without reading it): the whole product when K == 0.
void scale_c(float* C, int64_t M, int64_t N, int64_t ldc, float beta) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.0f ? 0.0f : beta * C[m * ldc + n];
}

// ---- scalar fallbacks (no SIMD ISA) ----

void matvec_scalar(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
                   bool accumulate) {
  const bool par = N * K >= detail::kParallelMinMacs;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t n = 0; n < N; ++n) {
    float s[4] = {0, 0, 0, 0};
    const int64_t base = n * K;
    int64_t k = 0;
    if (wt == DType::F32) {
      const float* w = static_cast<const float*>(W) + base;
      for (; k + 4 <= K; k += 4)
        for (int j = 0; j < 4; ++j) s[j] += w[k + j] * x[k + j];
    } else {
      for (; k + 4 <= K; k += 4)
        for (int j = 0; j < 4; ++j) s[j] += weight_at(W, wt, base + k + j) * x[k + j];
    }
    for (; k < K; ++k) s[0] += weight_at(W, wt, base + k) * x[k];
    const float t = (s[0] + s[1]) + (s[2] + s[3]);
    y[n] = accumulate ? y[n] + t : t;
  }
}

// op(A)·op(B) one output row at a time: the B rows/columns are widened into f32 once per call
// into a (N, K) scratch copy, so the inner loop is a contiguous dot product.
void gemm_scalar(const GemmProblem& p) {
  float* bt = detail::scratch(3, size_t(p.N * p.K));  // (N, K) f32
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t k = 0; k < p.K; ++k)
      bt[n * p.K + k] = p.b_nk ? weight_at(p.B, p.bt, n * p.ldb + k)
                               : static_cast<const float*>(p.B)[k * p.ldb + n];
  const bool par = p.M * p.N * p.K >= detail::kParallelMinMacs;
#pragma omp parallel if (par)
  {
    std::vector<float> arow(size_t(p.K));
#pragma omp for schedule(static)
    for (int64_t m = 0; m < p.M; ++m) {
      for (int64_t k = 0; k < p.K; ++k)
        arow[k] = p.trans_a ? p.A[k * p.lda + m] : p.A[m * p.lda + k];
      for (int64_t n = 0; n < p.N; ++n) {
        const float* w = bt + n * p.K;
        float s[4] = {0, 0, 0, 0};
        int64_t k = 0;
        for (; k + 4 <= p.K; k += 4)
          for (int j = 0; j < 4; ++j) s[j] += arow[k + j] * w[k + j];
        for (; k < p.K; ++k) s[0] += arow[k] * w[k];
        const float acc = (s[0] + s[1]) + (s[2] + s[3]);
        float& c = p.C[m * p.ldc + n];
        c = p.beta == 0.0f ? p.alpha * acc : p.alpha * acc + p.beta * c;
      }
    }
  }
}

void require(KernelIsa isa) {
  if (!kernel_isa_available(isa))
    throw Error(std::string("matmul: kernel ISA ") + kernel_isa_name(isa) +
                " is not supported by this CPU; use best_kernel_isa()");
}

void run_gemm(KernelIsa isa, const GemmProblem& p) {
  switch (isa) {
    case KernelIsa::Avx512: detail::avx512::gemm(p); return;
    case KernelIsa::Avx2: detail::avx2::gemm(p); return;
    case KernelIsa::Scalar: gemm_scalar(p); return;
  }
}

}  // namespace

// ---- ISA selection ----

const char* kernel_isa_name(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::Scalar: return "scalar";
    case KernelIsa::Avx2: return "avx2";
    case KernelIsa::Avx512: return "avx512";
  }
  return "?";
}

bool kernel_isa_available(KernelIsa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case KernelIsa::Scalar: return true;
    case KernelIsa::Avx2: return f.avx2;
    case KernelIsa::Avx512: return f.avx512;
  }
  return false;
}

KernelIsa best_kernel_isa() {
  const CpuFeatures& f = cpu_features();
  return f.avx512 ? KernelIsa::Avx512 : f.avx2 ? KernelIsa::Avx2 : KernelIsa::Scalar;
}

// ---- explicit-ISA entry points ----

void matvec_isa(KernelIsa isa, const void* W, DType wt, const float* x, float* y, int64_t N,
                int64_t K, bool accumulate) {
  check_weight_dtype("matvec", wt);
  check_dims("matvec", 1, N, K);
  require(isa);
  if (N == 0) return;
  if (K == 0) {
    if (!accumulate) std::memset(y, 0, size_t(N) * sizeof(float));
    return;
  }
  switch (isa) {
    case KernelIsa::Avx512: detail::avx512::matvec(W, wt, x, y, N, K, accumulate); return;
    case KernelIsa::Avx2: detail::avx2::matvec(W, wt, x, y, N, K, accumulate); return;
    case KernelIsa::Scalar: matvec_scalar(W, wt, x, y, N, K, accumulate); return;
  }
}

void matmul_isa(KernelIsa isa, const float* X, const void* W, DType wt, float* Y, int64_t M,
                int64_t N, int64_t K, bool accumulate) {
  check_weight_dtype("matmul", wt);
  check_dims("matmul", M, N, K);
  require(isa);
  if (M == 0 || N == 0) return;
  if (M == 1) return matvec_isa(isa, W, wt, X, Y, N, K, accumulate);
  if (K == 0) return scale_c(Y, M, N, N, accumulate ? 1.0f : 0.0f);
  GemmProblem p;
  p.M = M, p.N = N, p.K = K;
  p.A = X, p.lda = K, p.trans_a = false;
  p.B = W, p.bt = wt, p.ldb = K, p.b_nk = true;
  p.C = Y, p.ldc = N;
  p.alpha = 1.0f, p.beta = accumulate ? 1.0f : 0.0f;
  run_gemm(isa, p);
}

void gemm_f32_isa(KernelIsa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                  float* C, int64_t ldc) {
  check_gemm_args("gemm_f32", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  require(isa);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) return scale_c(C, M, N, ldc, beta);
  GemmProblem p;
  p.M = M, p.N = N, p.K = K;
  p.A = A, p.lda = lda, p.trans_a = trans_a;
  p.B = B, p.bt = DType::F32, p.ldb = ldb, p.b_nk = trans_b;
  p.C = C, p.ldc = ldc;
  p.alpha = alpha, p.beta = beta;
  run_gemm(isa, p);
}

// ---- public entry points ----

void matmul(const float* X, const void* W, DType wt, float* Y, int64_t M, int64_t N, int64_t K,
            bool accumulate) {
  matmul_isa(best_kernel_isa(), X, W, wt, Y, M, N, K, accumulate);
}

void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate) {
  matvec_isa(best_kernel_isa(), W, wt, x, y, N, K, accumulate);
}

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) {
  gemm_f32_isa(best_kernel_isa(), trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ---- references ----

void matvec_ref(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
                bool accumulate) {
  check_weight_dtype("matvec_ref", wt);
  check_dims("matvec_ref", 1, N, K);
  for (int64_t n = 0; n < N; ++n) {
    double s = 0.0;
    for (int64_t k = 0; k < K; ++k) s += double(weight_at(W, wt, n * K + k)) * double(x[k]);
    y[n] = accumulate ? float(double(y[n]) + s) : float(s);
  }
}

void matmul_ref(const float* X, const void* W, DType wt, float* Y, int64_t M, int64_t N, int64_t K,
                bool accumulate) {
  check_weight_dtype("matmul_ref", wt);
  check_dims("matmul_ref", M, N, K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k)
        s += double(X[m * K + k]) * double(weight_at(W, wt, n * K + k));
      float& y = Y[m * N + n];
      y = accumulate ? float(double(y) + s) : float(s);
    }
}

// beta == 0: C is not read (BLAS convention).
void gemm_f32_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc) {
  check_gemm_args("gemm_f32_ref", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = trans_a ? A[k * lda + m] : A[m * lda + k];
        const double b = trans_b ? B[n * ldb + k] : B[k * ldb + n];
        s += a * b;
      }
      float& c = C[m * ldc + n];
      const double r = double(alpha) * s + (beta == 0.0f ? 0.0 : double(beta) * double(c));
      c = float(r);
    }
}

}  // namespace qwen::ops
