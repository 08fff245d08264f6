// bench/bench_matmul.cpp — speed of the matrix kernels on the 124.7M model's shapes
// (C=768, KV dim 256, F=2048, V=32000), against this machine's limits measured in the same run:
//   matvec (decode): GB/s of weight read, cold (a set of weight copies much larger than the L3,
//     cycled, as a decode step cycles through the layers) and hot (one weight, cache resident),
//     and the cold figure as % of the DRAM-read roofline;
//   matmul (prefill, M = 128 and 512): GFLOP/s for ours (F32, BF16, F16 weights) and OpenBLAS
//     sgemm (F32), interleaved rep by rep, medians, and % of the measured FMA peak (and oneDNN's
//     matmul primitive on weights it reordered once, when built with libdnnl-dev);
//   gemm_f32 (backward shapes, all transposes): ours vs OpenBLAS (and oneDNN's dnnl_sgemm);
//   --only small: small-M products (M = 1..48, batched serving) on the demo model's shapes
//     (C = 256, F = 704, V = 4096), raw and pre-packed weights, per shape and per model pass;
//   --only small-big: M = 16 / 32 / 48 on the 124.7M shapes, pre-packed F32 against OpenBLAS
//     (and oneDNN's matmul primitive on weights it reordered once, when built with Debian's
//     libdnnl-dev), per shape and per pass over the whole model.
//   --only small and small-big end with the serving ceiling: the 16-stream / 1-stream throughput
//     ratio that the measured product passes alone allow on bench_serve's workload (issue 7).
// Fairness: OpenBLAS's worker threads spin (sched_yield loop) for ~2^28 cycles after each call and
// GOMP's spin briefly after each parallel region; either steals a core from whatever runs next.
// So every OpenBLAS timing is followed by a 150 ms pause and every one of ours by 20 ms, and the
// machine limits are measured after a pause, before any OpenBLAS call.
// Usage: bench_matmul [--json] [--reps N] [--isa avx512|avx2|scalar] [--only matvec|matmul|gemm|train|train-small|train-medium|batch|small|small-big]
//                     [--threads N]
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "machine_probe.h"
#include "ops/matmul.h"

#ifdef QWEN_BENCH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

using qwen::DType;
using qwen::ops::KernelIsa;
using namespace qwen::bench;

namespace {

struct Shape {
  int64_t N, K;
  const char* what;
};
const Shape kShapes[] = {{768, 768, "q/o proj"},
                         {256, 768, "k/v proj"},
                         {2048, 768, "gate/up"},
                         {32000, 768, "lm_head"},
                         {768, 2048, "down"}};

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// n_copies weight matrices of dtype wt, (N, K) each, 64-byte aligned, random values.
struct WeightSet {
  std::vector<void*> copies;
  size_t bytes_each = 0;
  WeightSet(int64_t N, int64_t K, DType wt, int n_copies) {
    bytes_each = size_t(N * K) * qwen::dtype_size(wt);
    const std::vector<float> src = randn(size_t(N * K), 1);
    for (int c = 0; c < n_copies; ++c) {
      void* p = std::aligned_alloc(64, (bytes_each + 63) / 64 * 64);
      qwen::convert_from_f32(src.data(), wt, p, size_t(N * K));
      copies.push_back(p);
    }
  }
  ~WeightSet() {
    for (void* p : copies) std::free(p);
  }
};

const char* dname(DType t) { return qwen::dtype_name(t); }

}  // namespace


// Every linear of the 124.7M model, (N, K) each: 12 layers of q, k, v, o, gate, up, down, then
// the LM head.
struct Lin124 {
  int64_t N, K;
};
std::vector<Lin124> model_124m_linears() {
  std::vector<Lin124> lins;
  for (int l = 0; l < 12; ++l)
    for (Lin124 x : {Lin124{768, 768}, Lin124{256, 768}, Lin124{256, 768}, Lin124{768, 768},
                     Lin124{2048, 768}, Lin124{2048, 768}, Lin124{768, 2048}})
      lins.push_back(x);
  lins.push_back({32000, 768});
  return lins;
}

// Issue 7's serving target asks 16 streams for >= 6x one stream's generated tok/s. The matrix
// products alone bound that ratio: bench_serve's workload (kPrompt-token prompts, kGen generated
// tokens, greedy) costs per request kPrompt prefill rows of the layers' linears plus kGen - 1
// decode rows of everything and kGen LM-head rows. A lone stream's decode rows are 1-row passes
// (pass_s[1] each); its prefill runs at the 48-row pass rate. Sixteen streams are credited with
// the best batched pass rate measured (16, 32 or 48 rows) for all their rows. Everything else
// (attention, norms, sampling, HTTP, scheduling) is taken as free on both sides, so both rates
// are upper bounds; the printed ratio is what the products allow, not a prediction.
void print_serving_ceiling(const char* model, double macs, double macs_head,
                           const std::map<int64_t, double>& pass_s) {
  // pass_s: seconds per pass over all macs (LM head included) at M = 1, 16, 32, 48 rows.
  auto rate = [&](int64_t M) { return 2.0 * macs * double(M) / pass_s.at(M) * 1e-9; };
  const double macs_body = macs - macs_head, t1 = pass_s.at(1), prefill_gflops = rate(48);
  const double best_gflops = std::max({rate(16), rate(32), rate(48)});
  constexpr double kPrompt = 64, kGen = 64;
  const double lone_s = (kGen - 1) * t1 + 2.0 * kPrompt * macs_body / (prefill_gflops * 1e9);
  const double lone = kGen / lone_s;
  const double req_flops = 2.0 * ((kPrompt + kGen - 1) * macs_body + kGen * macs_head);
  const double crowd = kGen * best_gflops * 1e9 / req_flops;  // 16 streams: tok/s of the crowd
  std::printf("serving ceiling of the products alone, %s (bench_serve's workload: %.0f-token "
              "prompts, %.0f generated): 1 stream <= %.0f tok/s (1-row pass %.2f ms, prefill at "
              "%.0f GFLOP/s); 16 streams <= %.0f tok/s (all rows at %.0f GFLOP/s); ratio <= %.2fx\n",
              model, kPrompt, kGen, lone, t1 * 1e3, prefill_gflops, crowd, best_gflops,
              crowd / lone);
}

#ifdef QWEN_BENCH_DNNL
// oneDNN's matmul primitive for Y (M, N) = X (M, K) · Wᵀ with W (N, K) row-major, its weights
// reordered once into the layout the primitive chose (format any): the counterpart of our
// pre-packed weight. Threads: oneDNN's OpenMP runtime, the same team as ours.
struct DnnlEnv {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
};
DnnlEnv& dnnl_env() {
  static DnnlEnv e;
  return e;
}
struct DnnlLinear {
  dnnl::matmul prim;
  dnnl::memory wpk;
  dnnl::memory::desc src_md, dst_md;
  DnnlLinear(const float* W, int64_t M, int64_t N, int64_t K) {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    DnnlEnv& e = dnnl_env();
    src_md = dnnl::memory::desc({M, K}, dt::f32, tag::ab);
    dst_md = dnnl::memory::desc({M, N}, dt::f32, tag::ab);
    const dnnl::memory::desc wany({K, N}, dt::f32, tag::any);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, wany, dst_md), e.eng);
    prim = dnnl::matmul(pd);
    dnnl::memory wsrc({{K, N}, dt::f32, tag::ba}, e.eng, const_cast<float*>(W));
    wpk = dnnl::memory(pd.weights_desc(), e.eng);
    dnnl::reorder(wsrc, wpk).execute(e.strm, wsrc, wpk);
    e.strm.wait();
  }
  void run(const float* X, float* Y) const {
    DnnlEnv& e = dnnl_env();
    dnnl::memory s(src_md, e.eng, const_cast<float*>(X)), d(dst_md, e.eng, Y);
    prim.execute(e.strm, {{DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, wpk}, {DNNL_ARG_DST, d}});
    e.strm.wait();
  }
};

// The comparison is only meaningful if oneDNN computes the same product: the two results must
// agree to float rounding (relative to the largest output), or the program stops.
template <class F, class G>
void check_same_product(F&& ours, const G& theirs, std::vector<float>& Y, size_t n,
                        const char* what) {
  ours();
  const std::vector<float> ref(Y.begin(), Y.begin() + long(n));
  std::fill(Y.begin(), Y.begin() + long(n), 0.0f);
  theirs();
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < n; ++i) {
    worst = std::max(worst, double(std::fabs(ref[i] - Y[i])));
    scale = std::max(scale, double(std::fabs(ref[i])));
  }
  if (worst > 1e-4 * scale) {
    std::fprintf(stderr, "oneDNN and our packed matmul disagree on %s: max |diff| %g (max |y| %g)\n",
                 what, worst, scale);
    std::exit(1);
  }
}
#endif

#ifdef QWEN_BENCH_DNNL
constexpr bool kHasDnnl = true;
#else
constexpr bool kHasDnnl = false;
#endif

int main(int argc, char** argv) {
  bool json = false;
  int reps = 7;
  std::string only;
  KernelIsa isa = qwen::ops::best_kernel_isa();
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json")
      json = true;
    else if (a == "--reps" && i + 1 < argc)
      reps = std::atoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc)
      only = argv[++i];
    else if (a == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (a == "--isa" && i + 1 < argc) {
      const std::string v = argv[++i];
      isa = v == "avx512" ? KernelIsa::Avx512 : v == "avx2" ? KernelIsa::Avx2 : KernelIsa::Scalar;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--json] [--reps N] [--isa avx512|avx2|scalar] "
                   "[--only matvec|matmul|gemm|train|train-small|train-medium|batch|small|small-big] [--threads N]\n",
                   argv[0]);
      return 2;
    }
  }
  if (!qwen::ops::kernel_isa_available(isa)) {
    std::fprintf(stderr, "bench_matmul: this CPU cannot run the %s kernels\n",
                 qwen::ops::kernel_isa_name(isa));
    return 1;
  }
  if (threads > 0) qwen::set_num_threads(threads);
  const int nt = qwen::num_threads();
  openblas_set_num_threads(nt);
  auto settle = [](int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); };
  settle(300);  // OpenBLAS's workers spin for a while after start-up

  nlohmann::json out;
  out["isa"] = qwen::ops::kernel_isa_name(isa);
  out["threads"] = nt;
  out["openblas_config"] = openblas_get_config();

  // Machine limits, measured now (the machine drifts between processes).
  const bool wide = isa == KernelIsa::Avx512;
  const double peak = isa == KernelIsa::Scalar ? 0 : fma_peak_gflops(wide, nt, 5);
  double dram = 0;
  {
    BigBuffer buf(size_t(512) << 20);
    dram = dram_read_gbs(buf, nt, 5);
  }
  out["fma_peak_gflops"] = peak;
  out["dram_read_gbs"] = dram;
  if (!json)
    std::printf(
        "isa %s, %d threads, OpenBLAS '%s'\nmeasured now: fp32 FMA peak (%s) %.1f GFLOP/s, "
        "DRAM read %.2f GB/s\n",
        qwen::ops::kernel_isa_name(isa), nt, openblas_get_config(), wide ? "AVX-512" : "AVX2", peak,
        dram);

  // ---------------- matvec ----------------
  if (only.empty() || only == "matvec") {
    if (!json)
      std::printf(
          "\nmatvec y = W·x (decode): GB/s of weight bytes; cold = %s\n"
          "%-9s %-6s %5s %5s %9s %9s %8s %9s\n",
          "copies cycled, >= 512 MiB in all", "shape", "dtype", "N", "K", "MiB", "cold GB/s",
          "% DRAM", "hot GB/s");
    nlohmann::json rows = nlohmann::json::array();
    for (const Shape& s : kShapes)
      for (DType wt : {DType::F32, DType::BF16, DType::F16}) {
        const size_t bytes = size_t(s.N * s.K) * qwen::dtype_size(wt);
        const int n_copies = int(std::max<size_t>(2, ((size_t(512) << 20) + bytes - 1) / bytes));
        WeightSet ws(s.N, s.K, wt, n_copies);
        const std::vector<float> x = randn(size_t(s.K), 2);
        std::vector<float> y(size_t(s.N));
        // cold: one timing = one pass over all copies
        std::vector<double> cold, hot;
        for (int r = 0; r < reps; ++r) {
          const double t0 = now_s();
          for (void* w : ws.copies) qwen::ops::matvec_isa(isa, w, wt, x.data(), y.data(), s.N, s.K);
          cold.push_back(double(bytes) * n_copies / (now_s() - t0) * 1e-9);
        }
        // hot: the same copy over and over; one timing = enough calls for ~5 ms
        const int inner = int(std::max<size_t>(4, size_t(200e6) / bytes));
        for (int i = 0; i < 3; ++i)
          qwen::ops::matvec_isa(isa, ws.copies[0], wt, x.data(), y.data(), s.N, s.K);
        for (int r = 0; r < reps; ++r) {
          const double t0 = now_s();
          for (int i = 0; i < inner; ++i)
            qwen::ops::matvec_isa(isa, ws.copies[0], wt, x.data(), y.data(), s.N, s.K);
          hot.push_back(double(bytes) * inner / (now_s() - t0) * 1e-9);
        }
        const double c = median(cold), h = median(hot);
        rows.push_back({{"shape", s.what},
                        {"dtype", dname(wt)},
                        {"N", s.N},
                        {"K", s.K},
                        {"bytes", bytes},
                        {"cold_gbs", c},
                        {"cold_pct_dram", 100 * c / dram},
                        {"hot_gbs", h}});
        if (!json)
          std::printf("%-9s %-6s %5lld %5lld %9.2f %9.2f %7.0f%% %9.2f\n", s.what, dname(wt),
                      (long long)s.N, (long long)s.K, bytes / 1048576.0, c, 100 * c / dram, h);
      }
    out["matvec"] = rows;
  }

  // ---------------- matmul ----------------
  if (only.empty() || only == "matmul") {
    if (!json)
      std::printf(
          "\nmatmul Y = X·Wᵀ (prefill): GFLOP/s (2·M·N·K / time), medians of %d, "
          "ours and OpenBLAS sgemm interleaved; pk = weight pre-packed (matmul_packed)\n"
          "%-9s %4s %5s %5s %9s %9s %9s %9s %9s %9s %9s%s\n",
          reps, "shape", "M", "N", "K", "ours F32", "BLAS F32", "ours BF16", "ours F16",
          "pk F32", "pk BF16", "pkF32 %pk", kHasDnnl ? "    oneDNN" : "");
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t M : {128, 512})
      for (const Shape& s : kShapes) {
        const int64_t N = s.N, K = s.K;
        const std::vector<float> X = randn(size_t(M * K), 3);
        const std::vector<float> Wf = randn(size_t(N * K), 4);
        std::vector<uint16_t> Wb(size_t(N * K)), Wh(size_t(N * K));
        qwen::convert_from_f32(Wf.data(), DType::BF16, Wb.data(), Wf.size());
        qwen::convert_from_f32(Wf.data(), DType::F16, Wh.data(), Wf.size());
        std::vector<float> Y(size_t(M * N));
        const double flops = 2.0 * M * N * K;
        // enough calls per timing for ~20 ms at 100 GFLOP/s
        const int inner = int(std::max(1.0, 2e9 / flops));
        auto time_it = [&](auto&& fn) {
          const double t0 = now_s();
          for (int i = 0; i < inner; ++i) fn();
          return flops * inner / (now_s() - t0) * 1e-9;
        };
        auto ours = [&](const void* W, DType wt) {
          return [&, W, wt] { qwen::ops::matmul_isa(isa, X.data(), W, wt, Y.data(), M, N, K); };
        };
        auto blas = [&] {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f,
                      X.data(), int(K), Wf.data(), int(K), 0.0f, Y.data(), int(N));
        };
        const auto pf = qwen::ops::pack_weight(Wf.data(), DType::F32, N, K, isa);
        const auto pb = qwen::ops::pack_weight(Wb.data(), DType::BF16, N, K, isa);
        auto packed = [&](const qwen::ops::PackedWeight& P) {
          return [&] { qwen::ops::matmul_packed(X.data(), P, Y.data(), M); };
        };
        std::function<void()> dnnl_call;  // oneDNN matmul primitive, weights reordered once
#ifdef QWEN_BENCH_DNNL
        const DnnlLinear dl(Wf.data(), M, N, K);
        dnnl_call = [&] { dl.run(X.data(), Y.data()); };
        check_same_product(packed(*pf), dnnl_call, Y, size_t(M * N), s.what);
#endif
        time_it(ours(Wf.data(), DType::F32));  // warm up both
        time_it(blas);
        settle(150);
        std::vector<double> of, bf, ob, oh, pkf, pkb, dn;
        for (int r = 0; r < reps; ++r) {
          of.push_back(time_it(ours(Wf.data(), DType::F32)));
          settle(20);
          bf.push_back(time_it(blas));
          settle(150);
          ob.push_back(time_it(ours(Wb.data(), DType::BF16)));
          oh.push_back(time_it(ours(Wh.data(), DType::F16)));
          pkf.push_back(time_it(packed(*pf)));
          pkb.push_back(time_it(packed(*pb)));
          if (dnnl_call) dn.push_back(time_it(dnnl_call));
        }
        const double a = median(of), b = median(bf), c = median(ob), d = median(oh);
        const double e = median(pkf), f = median(pkb);
        rows.push_back({{"shape", s.what},
                        {"M", M},
                        {"N", N},
                        {"K", K},
                        {"ours_f32_gflops", a},
                        {"openblas_f32_gflops", b},
                        {"ours_bf16_gflops", c},
                        {"ours_f16_gflops", d},
                        {"packed_f32_gflops", e},
                        {"packed_bf16_gflops", f},
                        {"ours_f32_pct_peak", peak > 0 ? 100 * a / peak : 0},
                        {"packed_f32_pct_peak", peak > 0 ? 100 * e / peak : 0}});
        if (!dn.empty()) rows.back()["onednn_f32_gflops"] = median(dn);
        if (!json) {
          std::printf("%-9s %4lld %5lld %5lld %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %8.0f%%",
                      s.what, (long long)M, (long long)N, (long long)K, a, b, c, d, e, f,
                      peak > 0 ? 100 * e / peak : 0.0);
          if (!dn.empty()) std::printf(" %9.1f", median(dn));
          std::printf("\n");
        }
      }
    out["matmul"] = rows;
  }

  // ---------------- gemm_f32 (backward shapes) ----------------
  if (only.empty() || only == "gemm") {
    if (!json)
      std::printf(
          "\ngemm_f32 C = op(A)·op(B) (backward shapes, T=512 tokens): GFLOP/s, medians%s\n"
          "%-26s %5s %5s %5s %9s %9s%s\n",
          kHasDnnl ? " (oneDNN: dnnl_sgemm, no packing, as both others)" : "", "case", "M", "N",
          "K", "ours", "OpenBLAS", kHasDnnl ? "    oneDNN" : "");
    struct G {
      const char* what;
      bool ta, tb;
      int64_t M, N, K;
    };
    const G cases[] = {{"dX = dY·W   (NN)", false, false, 512, 768, 2048},
                       {"dX = dY·W   (NN)", false, false, 512, 2048, 768},
                       {"Y = X·Wt    (NT)", false, true, 512, 768, 768},
                       {"dW = dYt·X  (TN)", true, false, 768, 768, 512},
                       {"dW = dYt·X  (TN)", true, false, 2048, 768, 512},
                       {"A^T·B^T     (TT)", true, true, 512, 768, 768}};
    nlohmann::json rows = nlohmann::json::array();
    for (const G& g : cases) {
      const int64_t rows_a = g.ta ? g.K : g.M, cols_a = g.ta ? g.M : g.K;
      const int64_t rows_b = g.tb ? g.N : g.K, cols_b = g.tb ? g.K : g.N;
      const std::vector<float> A = randn(size_t(rows_a * cols_a), 5);
      const std::vector<float> B = randn(size_t(rows_b * cols_b), 6);
      std::vector<float> C(size_t(g.M * g.N));
      const double flops = 2.0 * g.M * g.N * g.K;
      const int inner = int(std::max(1.0, 2e9 / flops));
      auto time_it = [&](auto&& fn) {
        const double t0 = now_s();
        for (int i = 0; i < inner; ++i) fn();
        return flops * inner / (now_s() - t0) * 1e-9;
      };
      auto ours = [&] {
        qwen::ops::gemm_f32_isa(isa, g.ta, g.tb, g.M, g.N, g.K, 1.0f, A.data(), cols_a, B.data(),
                                cols_b, 0.0f, C.data(), g.N);
      };
      auto blas = [&] {
        cblas_sgemm(CblasRowMajor, g.ta ? CblasTrans : CblasNoTrans,
                    g.tb ? CblasTrans : CblasNoTrans, int(g.M), int(g.N), int(g.K), 1.0f, A.data(),
                    int(cols_a), B.data(), int(cols_b), 0.0f, C.data(), int(g.N));
      };
      std::function<void()> dnnl_call;
#ifdef QWEN_BENCH_DNNL
      dnnl_call = [&] {
        const dnnl_status_t st =
            dnnl_sgemm(g.ta ? 'T' : 'N', g.tb ? 'T' : 'N', g.M, g.N, g.K, 1.0f, A.data(), cols_a,
                       B.data(), cols_b, 0.0f, C.data(), g.N);
        if (st != dnnl_success) std::exit(1);
      };
      check_same_product(ours, dnnl_call, C, C.size(), g.what);
#endif
      time_it(ours);
      time_it(blas);
      if (dnnl_call) time_it(dnnl_call);
      settle(150);
      std::vector<double> o, b, d;
      for (int r = 0; r < reps; ++r) {
        o.push_back(time_it(ours));
        settle(20);
        b.push_back(time_it(blas));
        if (dnnl_call) {
          settle(20);
          d.push_back(time_it(dnnl_call));
        }
        settle(150);
      }
      rows.push_back({{"case", g.what},
                      {"M", g.M},
                      {"N", g.N},
                      {"K", g.K},
                      {"ours_gflops", median(o)},
                      {"openblas_gflops", median(b)}});
      if (!d.empty()) rows.back()["onednn_gflops"] = median(d);
      if (!json) {
        std::printf("%-26s %5lld %5lld %5lld %9.1f %9.1f", g.what, (long long)g.M, (long long)g.N,
                    (long long)g.K, median(o), median(b));
        if (!d.empty()) std::printf(" %9.1f", median(d));
        std::printf("\n");
      }
    }
    out["gemm_f32"] = rows;
  }
  // ---------------- training (issue 4): the three products of every linear layer ----------------
  if (only == "train" || only == "train-small" || only == "train-medium") {
    // T = 2048 tokens per step; per linear W (out, in): forward Y = X·Wᵀ (matmul), dX = dY·W
    // (gemm NN), dW += dYᵀ·X (gemm TN, K = T, beta = 1). The lm_head runs in 256-row blocks
    // inside ops/cross_entropy (logits NT, dh NN with K = V, dW TN with K = 256).
    struct Cfg {
      const char* name;
      int64_t C, F, V, qd, kvd;
    };
    std::vector<Cfg> cfgs;
    if (only != "train-medium") cfgs.push_back({"small", 256, 704, 8192, 256, 128});
    if (only != "train-small") cfgs.push_back({"medium", 768, 2048, 32000, 768, 256});
    const int64_t T = 2048, RB = 256;
    if (!json)
      std::printf(
          "\ntraining products, T=%lld tokens: GFLOP/s, medians of %d, ours and OpenBLAS%s "
          "interleaved\n%-7s %-8s %-4s %5s %5s %5s %9s %9s %7s %7s%s\n",
          (long long)T, reps, kHasDnnl ? " and oneDNN (dnnl_sgemm)" : "", "config", "layer", "op",
          "M", "N", "K", "ours", "OpenBLAS", "%peak", "vsBLAS", kHasDnnl ? "    oneDNN  vsDNNL" : "");
    nlohmann::json rows = nlohmann::json::array();
    for (const Cfg& c : cfgs) {
      // Seconds for one layer's products (q, k, v, o, gate, up, down: each op once) and for the
      // LM head's T / RB blocks, per library: what a training step spends in them.
      double layer_s[3] = {0, 0, 0}, head_s[3] = {0, 0, 0};
      struct L {
        const char* what;
        int64_t out, in;
      };
      const L lins[] = {{"q/o", c.qd, c.C}, {"k/v", c.kvd, c.C}, {"gate/up", c.F, c.C},
                        {"down", c.C, c.F}};
      struct G {
        const char* layer;
        const char* op;
        bool ta, tb;
        int64_t M, N, K;
        float beta;
      };
      std::vector<G> gs;
      for (const L& l : lins) {
        gs.push_back({l.what, "fwd", false, true, T, l.out, l.in, 0.0f});
        gs.push_back({l.what, "dX", false, false, T, l.in, l.out, 0.0f});
        gs.push_back({l.what, "dW", true, false, l.out, l.in, T, 1.0f});
      }
      gs.push_back({"lm_head", "fwd", false, true, RB, c.V, c.C, 0.0f});
      gs.push_back({"lm_head", "dX", false, false, RB, c.C, c.V, 1.0f});
      gs.push_back({"lm_head", "dW", true, false, c.V, c.C, RB, 1.0f});
      for (const G& g : gs) {
        const int64_t rows_a = g.ta ? g.K : g.M, cols_a = g.ta ? g.M : g.K;
        const int64_t rows_b = g.tb ? g.N : g.K, cols_b = g.tb ? g.K : g.N;
        const std::vector<float> A = randn(size_t(rows_a * cols_a), 5);
        const std::vector<float> B = randn(size_t(rows_b * cols_b), 6);
        std::vector<float> C(size_t(g.M * g.N), 0.0f);
        const double flops = 2.0 * g.M * g.N * g.K;
        const int inner = int(std::max(1.0, 4e9 / flops));
        auto time_it = [&](auto&& fn) {
          const double t0 = now_s();
          for (int i = 0; i < inner; ++i) fn();
          return flops * inner / (now_s() - t0) * 1e-9;
        };
        // The forward product goes through matmul (what the trainer calls), the others through
        // gemm_f32.
        auto ours = [&] {
          if (g.tb && !g.ta && g.beta == 0.0f)
            qwen::ops::matmul_isa(isa, A.data(), B.data(), DType::F32, C.data(), g.M, g.N, g.K);
          else
            qwen::ops::gemm_f32_isa(isa, g.ta, g.tb, g.M, g.N, g.K, 1.0f, A.data(), cols_a,
                                    B.data(), cols_b, g.beta, C.data(), g.N);
        };
        auto blas = [&] {
          cblas_sgemm(CblasRowMajor, g.ta ? CblasTrans : CblasNoTrans,
                      g.tb ? CblasTrans : CblasNoTrans, int(g.M), int(g.N), int(g.K), 1.0f,
                      A.data(), int(cols_a), B.data(), int(cols_b), g.beta, C.data(), int(g.N));
        };
        std::function<void()> dnnl_call;
#ifdef QWEN_BENCH_DNNL
        dnnl_call = [&] {
          if (dnnl_sgemm(g.ta ? 'T' : 'N', g.tb ? 'T' : 'N', g.M, g.N, g.K, 1.0f, A.data(), cols_a,
                         B.data(), cols_b, g.beta, C.data(), g.N) != dnnl_success)
            std::exit(1);
        };
        if (g.beta == 0.0f) check_same_product(ours, dnnl_call, C, C.size(), g.layer);
#endif
        time_it(ours);
        time_it(blas);
        if (dnnl_call) time_it(dnnl_call);
        settle(150);
        std::vector<double> o, b, d;
        for (int r = 0; r < reps; ++r) {
          o.push_back(time_it(ours));
          settle(20);
          b.push_back(time_it(blas));
          if (dnnl_call) {
            settle(20);
            d.push_back(time_it(dnnl_call));
          }
          settle(150);
        }
        const double mo = median(o), mb = median(b), md = d.empty() ? 0.0 : median(d);
        const bool head = std::string(g.layer) == "lm_head";
        const double mult = head ? double(T / RB) : std::string(g.layer) == "down" ? 1.0 : 2.0;
        double* acc = head ? head_s : layer_s;
        acc[0] += mult * flops / (mo * 1e9);
        acc[1] += mult * flops / (mb * 1e9);
        if (md > 0) acc[2] += mult * flops / (md * 1e9);
        rows.push_back({{"config", c.name},
                        {"layer", g.layer},
                        {"op", g.op},
                        {"M", g.M},
                        {"N", g.N},
                        {"K", g.K},
                        {"ours_gflops", mo},
                        {"openblas_gflops", mb},
                        {"ours_pct_peak", peak > 0 ? 100 * mo / peak : 0}});
        if (md > 0) rows.back()["onednn_gflops"] = md;
        if (!json) {
          std::printf("%-7s %-8s %-4s %5lld %5lld %5lld %9.1f %9.1f %6.0f%% %7.2f", c.name,
                      g.layer, g.op, (long long)g.M, (long long)g.N, (long long)g.K, mo, mb,
                      peak > 0 ? 100 * mo / peak : 0.0, mo / mb);
          if (md > 0) std::printf(" %9.1f %7.2f", md, mo / md);
          std::printf("\n");
        }
      }
      if (!json) {
        std::printf("%-7s one layer's products: ours %.1f ms, OpenBLAS %.1f ms", c.name,
                    layer_s[0] * 1e3, layer_s[1] * 1e3);
        if (layer_s[2] > 0) std::printf(", oneDNN %.1f ms", layer_s[2] * 1e3);
        std::printf("; LM head (%lld blocks): ours %.1f ms, OpenBLAS %.1f ms", (long long)(T / RB),
                    head_s[0] * 1e3, head_s[1] * 1e3);
        if (head_s[2] > 0) std::printf(", oneDNN %.1f ms", head_s[2] * 1e3);
        std::printf("\n");
      }
    }
    out["train"] = rows;
  }

  // ---------------- small-M batches (issue 7): M streams against the whole model ----------------
  if (only == "batch") {
    // Every linear of the 124.7M model (12 layers of q, k, v, o, gate, up, down + lm_head), one
    // copy each, so a pass reads all weights from DRAM as a decode step does. M = 1 is matvec.
    const std::vector<Lin124> lins = model_124m_linears();
    if (!json)
      std::printf(
          "\nsmall-M batches: one pass over all linears of the 124.7M model (M rows each), ms per "
          "pass, medians of %d;\nspeedup = M · t(1) / t(M) (streams served per single-stream "
          "time); packed = weights pre-packed (pack_weight + matmul_packed)\n"
          "%-6s %-6s %4s %9s %9s %9s %9s\n",
          reps, "dtype", "weight", "M", "ms", "GB/s", "GFLOP/s", "speedup");
    nlohmann::json rows = nlohmann::json::array();
    for (DType wt : {DType::F32, DType::BF16})
    for (bool packed : {false, true}) {
      std::vector<void*> ws;
      size_t total_bytes = 0;
      double macs = 0;
      for (const Lin124& l : lins) {
        const size_t bytes = size_t(l.N * l.K) * qwen::dtype_size(wt);
        void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
        const std::vector<float> src = randn(size_t(l.N * l.K), uint32_t(ws.size() + 7));
        qwen::convert_from_f32(src.data(), wt, p, size_t(l.N * l.K));
        ws.push_back(p);
        total_bytes += bytes;
        macs += double(l.N * l.K);
      }
      std::vector<std::shared_ptr<const qwen::ops::PackedWeight>> pws;
      if (packed) {
        for (size_t i = 0; i < lins.size(); ++i)
          pws.push_back(qwen::ops::pack_weight(ws[i], wt, lins[i].N, lins[i].K, isa));
        for (void* p : ws) std::free(p);  // only the packed copies are read
        ws.clear();
      }
      const std::vector<float> X = randn(size_t(16 * 2048), 9);
      std::vector<float> Y(size_t(16 * 32000));
      double t1 = 0;
      for (int64_t M : {1, 2, 4, 8, 16}) {
        auto pass = [&] {
          for (size_t i = 0; i < lins.size(); ++i)
            if (packed)
              qwen::ops::matmul_packed(X.data(), *pws[i], Y.data(), M);
            else
              qwen::ops::matmul_isa(isa, X.data(), ws[i], wt, Y.data(), M, lins[i].N, lins[i].K);
        };
        pass();
        std::vector<double> t;
        for (int r = 0; r < reps; ++r) {
          const double t0 = now_s();
          pass();
          t.push_back(now_s() - t0);
        }
        const double tm = median(t);
        if (M == 1) t1 = tm;
        const double speedup = double(M) * t1 / tm;
        rows.push_back({{"dtype", dname(wt)},
                        {"packed", packed},
                        {"M", M},
                        {"ms", tm * 1e3},
                        {"gbs", total_bytes / tm * 1e-9},
                        {"gflops", 2.0 * macs * M / tm * 1e-9},
                        {"speedup", speedup}});
        if (!json)
          std::printf("%-6s %-6s %4lld %9.2f %9.2f %9.1f %9.2f\n", dname(wt),
                      packed ? "packed" : "raw", (long long)M, tm * 1e3,
                      total_bytes / tm * 1e-9, 2.0 * macs * M / tm * 1e-9, speedup);
      }
      for (void* p : ws) std::free(p);
    }
    out["batch"] = rows;
  }

  if (only == "small") {
    // Small-M products on the demo model's shapes (C = 256, q 256, k/v 128, F = 704, V = 4096;
    // all weights together 16 MiB F32, L3-resident as in serving): per shape and M, the raw
    // weight (matmul) and the pre-packed one (matmul_packed), F32 and BF16, GFLOP/s and µs per
    // call (medians of reps timings of enough calls for ~2 ms each); then one pass over every
    // linear of the model (4 layers of q, k, v, o, gate, up, down + lm_head), as a decode step.
    struct Lin {
      int64_t N, K;
      const char* what;
    };
    const Lin shapes[] = {{256, 256, "q/o"},     {128, 256, "k/v"},  {512, 256, "qkv"},
                          {704, 256, "gate/up"}, {256, 704, "down"}, {4096, 256, "lm_head"}};
    const int64_t Ms[] = {1, 2, 4, 8, 16, 32, 48};
    if (!json)
      std::printf("\nsmall M on the demo model's shapes: GFLOP/s (µs per call), medians of %d\n"
                  "%-8s %5s %5s %-5s %4s %16s %16s\n",
                  reps, "shape", "N", "K", "dtype", "M", "raw", "packed");
    nlohmann::json rows = nlohmann::json::array();
    const std::vector<float> X = randn(size_t(64 * 704), 11);
    std::vector<float> Y(size_t(64 * 4096));
    auto time_calls = [&](auto&& fn, double flops) {
      const int inner = int(std::max(4.0, 2e-3 * 50e9 / flops));
      fn();
      std::vector<double> t;
      for (int r = 0; r < reps; ++r) {
        const double t0 = now_s();
        for (int i = 0; i < inner; ++i) fn();
        t.push_back((now_s() - t0) / inner);
      }
      return median(t);
    };
    for (const Lin& l : shapes)
      for (DType wt : {DType::F32, DType::BF16}) {
        const std::vector<float> Wf = randn(size_t(l.N * l.K), 12);
        std::vector<uint16_t> Wb(size_t(l.N * l.K));
        qwen::convert_from_f32(Wf.data(), DType::BF16, Wb.data(), Wf.size());
        const void* W = wt == DType::F32 ? static_cast<const void*>(Wf.data()) : Wb.data();
        const auto P = qwen::ops::pack_weight(W, wt, l.N, l.K, isa);
        for (int64_t M : Ms) {
          const double flops = 2.0 * M * l.N * l.K;
          const double tr = time_calls(
              [&] { qwen::ops::matmul_isa(isa, X.data(), W, wt, Y.data(), M, l.N, l.K); }, flops);
          const double tp =
              time_calls([&] { qwen::ops::matmul_packed(X.data(), *P, Y.data(), M); }, flops);
          rows.push_back({{"shape", l.what}, {"N", l.N}, {"K", l.K}, {"dtype", dname(wt)},
                          {"M", M}, {"raw_us", tr * 1e6}, {"packed_us", tp * 1e6},
                          {"raw_gflops", flops / tr * 1e-9}, {"packed_gflops", flops / tp * 1e-9}});
          if (!json)
            std::printf("%-8s %5lld %5lld %-5s %4lld %7.1f (%6.1f) %7.1f (%6.1f)\n", l.what,
                        (long long)l.N, (long long)l.K, dname(wt), (long long)M,
                        flops / tr * 1e-9, tr * 1e6, flops / tp * 1e-9, tp * 1e6);
        }
      }
    out["small"] = rows;
    // Whole-model passes.
    std::vector<Lin> lins;
    for (int layer = 0; layer < 4; ++layer)
      for (Lin x : {Lin{256, 256, ""}, Lin{128, 256, ""}, Lin{128, 256, ""}, Lin{256, 256, ""},
                    Lin{704, 256, ""}, Lin{704, 256, ""}, Lin{256, 704, ""}})
        lins.push_back(x);
    lins.push_back({4096, 256, ""});
    double macs = 0;
    for (const Lin& l : lins) macs += double(l.N * l.K);
    if (!json)
      std::printf("\none pass over all linears of the demo model (%zu products), µs per pass and "
                  "GFLOP/s\n%-5s %4s %16s %16s\n", lins.size(), "dtype", "M", "raw", "packed");
    nlohmann::json passes = nlohmann::json::array();
    std::map<int64_t, double> packed_f32_s;  // M -> seconds per packed F32 pass
    for (DType wt : {DType::F32, DType::BF16}) {
      std::vector<std::vector<uint16_t>> wb;
      std::vector<std::vector<float>> wf;
      std::vector<const void*> ws;
      std::vector<std::shared_ptr<const qwen::ops::PackedWeight>> pws;
      for (size_t i = 0; i < lins.size(); ++i) {
        wf.push_back(randn(size_t(lins[i].N * lins[i].K), uint32_t(20 + i)));
        if (wt == DType::BF16) {
          wb.emplace_back(wf.back().size());
          qwen::convert_from_f32(wf.back().data(), wt, wb.back().data(), wf.back().size());
          ws.push_back(wb.back().data());
        } else {
          ws.push_back(wf.back().data());
        }
      }
      for (size_t i = 0; i < lins.size(); ++i)
        pws.push_back(qwen::ops::pack_weight(ws[i], wt, lins[i].N, lins[i].K, isa));
      for (int64_t M : Ms) {
        const double flops = 2.0 * macs * double(M);
        const double tr = time_calls(
            [&] {
              for (size_t i = 0; i < lins.size(); ++i)
                qwen::ops::matmul_isa(isa, X.data(), ws[i], wt, Y.data(), M, lins[i].N, lins[i].K);
            },
            flops);
        const double tp = time_calls(
            [&] {
              for (size_t i = 0; i < lins.size(); ++i)
                qwen::ops::matmul_packed(X.data(), *pws[i], Y.data(), M);
            },
            flops);
        passes.push_back({{"dtype", dname(wt)}, {"M", M}, {"raw_us", tr * 1e6},
                          {"packed_us", tp * 1e6}});
        if (wt == DType::F32) packed_f32_s[M] = tp;
        if (!json)
          std::printf("%-5s %4lld %7.1f (%6.1f) %7.1f (%6.1f)\n", dname(wt), (long long)M,
                      flops / tr * 1e-9, tr * 1e6, flops / tp * 1e-9, tp * 1e6);
      }
    }
    out["small_pass"] = passes;
    if (!json) {
      std::printf("\n");
      print_serving_ceiling("4.0M demo model, F32 packed", macs, 4096.0 * 256.0, packed_f32_s);
    }
  }

  if (only == "small-big") {

    // Small-M products on the 124.7M model's shapes (issue 7's batched decode steps: M = 16 decode
    // rows, 32 / 48 with a prefill chunk): ours on the pre-packed F32 weight against OpenBLAS
    // sgemm on the same (N, K) weight, interleaved rep by rep, GFLOP/s medians; per shape with
    // one weight (cache-resident but for the LM head), then one pass over every linear of the
    // model (12 layers + LM head, 400 MB: read from DRAM, as a decode step reads them).
    if (!json) {
      std::printf("\nsmall M on the 124.7M model's shapes, F32: GFLOP/s, medians of %d "
                  "(pk = ours, pre-packed weight%s)\n%-9s %4s %5s %5s %9s %9s %7s",
                  reps, kHasDnnl ? "; oneDNN = its matmul primitive, weights reordered once" : "",
                  "shape", "M", "N", "K", "pk F32", "BLAS F32", "pk/BLAS");
      if (kHasDnnl) std::printf(" %9s %7s", "oneDNN", "pk/dnnl");
      std::printf("\n");
    }
    nlohmann::json rows = nlohmann::json::array();
    const std::vector<float> X = randn(size_t(48 * 2048), 13);
    std::vector<float> Y(size_t(48 * 32000));
    auto time_calls = [&](auto&& fn, double flops) {
      const int inner = int(std::max(2.0, 10e-3 * 100e9 / flops));
      const double t0 = now_s();
      for (int i = 0; i < inner; ++i) fn();
      return flops * inner / (now_s() - t0) * 1e-9;
    };
    for (const Shape& s : kShapes) {
      const std::vector<float> Wf = randn(size_t(s.N * s.K), 14);
      const auto P = qwen::ops::pack_weight(Wf.data(), DType::F32, s.N, s.K, isa);
      for (int64_t M : {16, 32, 48}) {
        const double flops = 2.0 * M * s.N * s.K;
        auto ours = [&] { qwen::ops::matmul_packed(X.data(), *P, Y.data(), M); };
        auto blas = [&] {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(s.N), int(s.K), 1.0f,
                      X.data(), int(s.K), Wf.data(), int(s.K), 0.0f, Y.data(), int(s.N));
        };
        std::function<void()> dnnl_call;
#ifdef QWEN_BENCH_DNNL
        const DnnlLinear dl(Wf.data(), M, s.N, s.K);
        dnnl_call = [&] { dl.run(X.data(), Y.data()); };
        check_same_product(ours, dnnl_call, Y, size_t(M * s.N), s.what);
#endif
        time_calls(ours, flops);
        time_calls(blas, flops);
        if (dnnl_call) time_calls(dnnl_call, flops);
        settle(150);
        std::vector<double> a, b, c;
        for (int r = 0; r < reps; ++r) {
          a.push_back(time_calls(ours, flops));
          settle(20);
          b.push_back(time_calls(blas, flops));
          if (dnnl_call) {
            settle(20);
            c.push_back(time_calls(dnnl_call, flops));
          }
          settle(150);
        }
        const double ga = median(a), gb = median(b), gc = c.empty() ? 0.0 : median(c);
        nlohmann::json row = {{"shape", s.what}, {"M", M}, {"N", s.N}, {"K", s.K},
                              {"packed_f32_gflops", ga}, {"openblas_f32_gflops", gb}};
        if (!c.empty()) row["onednn_f32_gflops"] = gc;
        rows.push_back(row);
        if (!json) {
          std::printf("%-9s %4lld %5lld %5lld %9.1f %9.1f %6.2fx", s.what, (long long)M,
                      (long long)s.N, (long long)s.K, ga, gb, ga / gb);
          if (!c.empty()) std::printf(" %9.1f %6.2fx", gc, ga / gc);
          std::printf("\n");
        }
      }
    }
    out["small_big"] = rows;
    // Whole-model pass: every weight once, DRAM-resident in total.
    const std::vector<Lin124> lins = model_124m_linears();
    std::vector<std::vector<float>> wf;
    std::vector<std::shared_ptr<const qwen::ops::PackedWeight>> pws;
    double macs = 0;
    for (size_t i = 0; i < lins.size(); ++i) {
      wf.push_back(randn(size_t(lins[i].N * lins[i].K), uint32_t(30 + i)));
      pws.push_back(qwen::ops::pack_weight(wf.back().data(), DType::F32, lins[i].N, lins[i].K, isa));
      macs += double(lins[i].N * lins[i].K);
    }
    if (!json)
      std::printf("\none pass over all linears of the 124.7M model (85 products, F32), ms per pass "
                  "(GFLOP/s), medians of %d\n%4s %16s %16s%s\n", reps, "M", "pk F32", "BLAS F32",
                  kHasDnnl ? "           oneDNN" : "");
    nlohmann::json passes = nlohmann::json::array();
    std::map<int64_t, double> pass_s;  // M -> seconds per pass, ours
    for (int64_t M : {1, 16, 32, 48}) {
      auto ours = [&] {
        for (size_t i = 0; i < lins.size(); ++i)
          qwen::ops::matmul_packed(X.data(), *pws[i], Y.data(), M);
      };
      auto blas = [&] {
        for (size_t i = 0; i < lins.size(); ++i)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(lins[i].N),
                      int(lins[i].K), 1.0f, X.data(), int(lins[i].K), wf[i].data(),
                      int(lins[i].K), 0.0f, Y.data(), int(lins[i].N));
      };
      std::function<void()> dnnl_pass;
#ifdef QWEN_BENCH_DNNL
      // One primitive and one reordered weight per linear for this M (M = 1 included: oneDNN
      // has no separate matrix-vector entry point).
      std::vector<DnnlLinear> dls;
      dls.reserve(lins.size());
      for (size_t i = 0; i < lins.size(); ++i)
        dls.emplace_back(wf[i].data(), M, lins[i].N, lins[i].K);
      dnnl_pass = [&] {
        for (size_t i = 0; i < lins.size(); ++i) dls[i].run(X.data(), Y.data());
      };
#endif
      ours();
      blas();
      if (dnnl_pass) dnnl_pass();
      settle(150);
      std::vector<double> a, b, c;
      for (int r = 0; r < reps; ++r) {
        double t0 = now_s();
        ours();
        a.push_back(now_s() - t0);
        settle(20);
        t0 = now_s();
        blas();
        b.push_back(now_s() - t0);
        if (dnnl_pass) {
          settle(20);
          t0 = now_s();
          dnnl_pass();
          c.push_back(now_s() - t0);
        }
        settle(150);
      }
      const double ta = median(a), tb = median(b), flops = 2.0 * macs * double(M);
      pass_s[M] = ta;
      nlohmann::json row = {{"M", M}, {"packed_ms", ta * 1e3}, {"openblas_ms", tb * 1e3}};
      if (!c.empty()) row["onednn_ms"] = median(c) * 1e3;
      passes.push_back(row);
      if (!json) {
        std::printf("%4lld %8.2f (%5.1f) %8.2f (%5.1f)", (long long)M, ta * 1e3,
                    flops / ta * 1e-9, tb * 1e3, flops / tb * 1e-9);
        if (!c.empty())
          std::printf(" %8.2f (%5.1f)", median(c) * 1e3, flops / median(c) * 1e-9);
        std::printf("\n");
      }
    }
    out["small_big_pass"] = passes;
    if (!json) {
      std::printf("\n");
      print_serving_ceiling("124.7M model, F32 packed", macs, 32000.0 * 768.0, pass_s);
    }
  }

  if (json) std::printf("%s\n", out.dump().c_str());
  return 0;
}
