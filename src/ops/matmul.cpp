// ops/matmul.cpp — the matrix products' front door: argument checks, runtime dispatch to the
// AVX-512 / AVX2 kernel files, the portable scalar fallbacks, weight pre-packing and its
// registry, and the scalar references (*_ref) that every fast path is tested against.
//
// References accumulate each dot product in double, in index order, from the exact f32 values of
// the operands (BF16/F16 weights widen to f32 exactly), and round once to f32 at the end; they are
// slow on purpose and kept forever. The scalar fallbacks are the paths for CPUs without AVX2:
// f32 accumulation with several partial sums, plain loops.
#include "ops/matmul.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/cpu.h"
#include "ops/matmul_internal.h"
#include "ops/quant.h"
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
  if (const PackedWeight* P = p.packed) {
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t k = 0; k < p.K; ++k)
        bt[n * p.K + k] = weight_at(P->data.get(), P->dt, (n / P->nr * p.K + k) * P->nr + n % P->nr);
  } else {
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t k = 0; k < p.K; ++k)
        bt[n * p.K + k] = p.b_nk ? weight_at(p.B, p.bt, n * p.ldb + k)
                                 : static_cast<const float*>(p.B)[k * p.ldb + n];
  }
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

// ---- packed weights ----

int panel_width(KernelIsa isa) {
  return isa == KernelIsa::Avx512 ? detail::avx512::kNR : detail::avx2::kNR;
}

// W (N, K) rows -> k-major panels of nr rows (PackedWeight layout); a pure copy of E-sized
// elements, zero past N. Tiles of 64 k keep the nr source rows' lines in L1 while the
// destination is written linearly.
template <class E>
void pack_panels(const E* W, int64_t N, int64_t K, int nr, E* dst) {
  const int64_t n_panels = (N + nr - 1) / nr;
  // Serial on purpose: packing runs once, on whichever thread builds the model or the serving
  // engine. An OpenMP team opened there would stay alive beside the engine thread's team (4
  // managed threads on 2 cores), and libgomp then sends idle workers to sleep after every
  // parallel region instead of spinning: served decode measured 2-3x slower that way.
  for (int64_t j = 0; j < n_panels; ++j) {
    E* d = dst + j * K * nr;
    const int64_t rows = std::min<int64_t>(nr, N - j * nr);
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
      const int64_t ke = std::min(K, k0 + 64);
      for (int64_t k = k0; k < ke; ++k) {
        E* dk = d + k * nr;
        for (int64_t c = 0; c < rows; ++c) dk[c] = W[(j * nr + c) * K + k];
        for (int64_t c = rows; c < nr; ++c) dk[c] = E(0);
      }
    }
  }
}

// Packed weights filed by weight pointer, with a count of the prepack_weight calls not yet
// released (several decoders may share one model).
struct Registry {
  struct Entry {
    std::shared_ptr<const PackedWeight> packed;
    int64_t refs = 0;
  };
  std::shared_mutex mu;
  std::unordered_map<const void*, Entry> map;
  std::atomic<size_t> size{0};
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

namespace detail {
std::shared_ptr<PackedWeight> pack_weight_layout(const void* W, DType wt, int64_t N, int64_t K,
                                                 int nr, KernelIsa isa) {
  check_weight_dtype("pack_weight", wt);
  if (N <= 0 || K <= 0)
    throw Error("pack_weight: empty weight (N=" + std::to_string(N) + ", K=" + std::to_string(K) +
                "); pack only matrices with N, K >= 1");
  auto P = std::make_shared<PackedWeight>();
  P->N = N, P->K = K, P->dt = wt, P->isa = isa, P->nr = nr;
  const size_t es = dtype_size(wt);
  P->bytes = size_t(P->n_panels() * K) * size_t(P->nr) * es;
  void* mem = std::aligned_alloc(64, (P->bytes + 63) / 64 * 64);
  if (!mem)
    throw Error("pack_weight: out of memory for " + std::to_string(P->bytes) +
                " bytes of packed weight; free memory or do not pre-pack");
  P->data = std::unique_ptr<uint8_t, void (*)(void*)>(static_cast<uint8_t*>(mem), std::free);
  if (es == 4)
    pack_panels(static_cast<const uint32_t*>(W), N, K, P->nr, reinterpret_cast<uint32_t*>(mem));
  else
    pack_panels(static_cast<const uint16_t*>(W), N, K, P->nr, reinterpret_cast<uint16_t*>(mem));
  return P;
}
}  // namespace detail

std::shared_ptr<const PackedWeight> pack_weight(const void* W, DType wt, int64_t N, int64_t K,
                                                KernelIsa isa) {
  require(isa);
  return detail::pack_weight_layout(W, wt, N, K, panel_width(isa), isa);
}

size_t packed_weight_bytes(const PackedWeight& P) { return P.bytes; }

void matmul_packed(const float* X, const PackedWeight& P, float* Y, int64_t M, bool accumulate) {
  check_dims("matmul_packed", M, P.N, P.K);
  if (M == 0) return;
  if (M == 1) {
    switch (P.isa) {
      case KernelIsa::Avx512: return detail::avx512::matvec_packed(P, X, Y, accumulate);
      case KernelIsa::Avx2: return detail::avx2::matvec_packed(P, X, Y, accumulate);
      case KernelIsa::Scalar: break;  // one-row GEMM below: same order as every other M
    }
  }
  GemmProblem p;
  p.M = M, p.N = P.N, p.K = P.K;
  p.A = X, p.lda = P.K, p.trans_a = false;
  p.packed = &P;
  p.C = Y, p.ldc = P.N;
  p.alpha = 1.0f, p.beta = accumulate ? 1.0f : 0.0f;
  run_gemm(P.isa, p);
}

void prepack_weight(const void* W, DType wt, int64_t N, int64_t K) {
  Registry& r = registry();
  {
    std::unique_lock lk(r.mu);
    const auto it = r.map.find(W);
    if (it != r.map.end() && it->second.packed->dt == wt && it->second.packed->N == N &&
        it->second.packed->K == K) {
      ++it->second.refs;  // already packed (the weight must not have changed meanwhile)
      return;
    }
  }
  std::shared_ptr<const PackedWeight> P = pack_weight(W, wt, N, K, best_kernel_isa());
  std::unique_lock lk(r.mu);
  Registry::Entry& e = r.map[W];
  if (e.packed && e.packed->dt == wt && e.packed->N == N && e.packed->K == K) {
    ++e.refs;  // another thread packed it meanwhile
    return;
  }
  e.packed = std::move(P);  // new, or the same pointer now holding another matrix
  e.refs = 1;
  r.size.store(r.map.size());
}

void release_prepacked_weight(const void* W) {
  Registry& r = registry();
  std::unique_lock lk(r.mu);
  const auto it = r.map.find(W);
  if (it == r.map.end() || --it->second.refs > 0) return;
  r.map.erase(it);
  r.size.store(r.map.size());
}

std::shared_ptr<const PackedWeight> find_prepacked_weight(const void* W, DType wt, int64_t N,
                                                          int64_t K) {
  Registry& r = registry();
  if (r.size.load(std::memory_order_relaxed) == 0) return nullptr;
  std::shared_lock lk(r.mu);
  const auto it = r.map.find(W);
  if (it == r.map.end()) return nullptr;
  const PackedWeight& P = *it->second.packed;
  if (P.dt != wt || P.N != N || P.K != K || P.isa != best_kernel_isa()) return nullptr;
  return it->second.packed;
}

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
  if (dtype_is_quantized(wt)) return matmul_quant(X, W, wt, Y, M, N, K, accumulate);
  if (const auto P = find_prepacked_weight(W, wt, N, K)) return matmul_packed(X, *P, Y, M, accumulate);
  matmul_isa(best_kernel_isa(), X, W, wt, Y, M, N, K, accumulate);
}

void matvec(const void* W, DType wt, const float* x, float* y, int64_t N, int64_t K,
            bool accumulate) {
  if (dtype_is_quantized(wt)) return matvec_quant(W, wt, x, y, N, K, accumulate);
  if (const auto P = find_prepacked_weight(W, wt, N, K)) return matmul_packed(x, *P, y, 1, accumulate);
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
  if (dtype_is_quantized(wt)) return quant_kernels(wt).matvec_ref(W, x, y, N, K, accumulate);
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
  if (dtype_is_quantized(wt)) return quant_kernels(wt).matmul_ref(X, W, Y, M, N, K, accumulate);
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
