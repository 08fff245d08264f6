// bench/bench_mhc.cpp — what mHC's per-token kernels cost next to the linear layers of one block,
// to estimate the step-time overhead (issue 6 target: <= 1.10x). n = 4, C = 256 and C = 768
// (the 124.7M shape: q/o 768x768, k/v 256x768, gate/up 2048x768, down 768x2048; the C = 256 shape
// scales it: q/o 256x256, k/v 128x256, gate/up/down with F = 688), F32 weights.
//
// Per block there are two mHC sites (attention and MLP). Timed, best of --reps:
//   decode (T = 1): coefficients (fused Σx² + phi·x + gates + Sinkhorn, 20 iters), pre-aggregate,
//     post merge, per site; the 7 matvecs of the block. "hot": one block's weights, cache
//     resident; "cold": --copies blocks (weights + both sites' phi) cycled, as a decode step walks
//     its layers (weights come from DRAM). Also the projection alone through gemm_f32 + a Σx² pass
//     and through the scalar reference, to show what fusing buys.
//   train (T = --tokens): per token, the site forward and backward (post merge backward, pre
//     backward, coefficient backward with the unrolled Sinkhorn), against the block's 7 matmuls
//     forward plus their backward (dX = dY·W and dW += dYᵀ·X with gemm_f32).
//   fused (T = --tokens): mhc_site_in, mhc_site_merge_in and the backward's one-pass stream
//     gradient (mhc_site_backward_streams); "site bwd": a site's backward after F's as the trainer
//     ran it before (merge backward with its g_h_res dots + the stream pass) and as it runs it
//     now (mhc_site_backward_fused with the next site's merge-backward head).
// The overhead estimate counts only the linear layers as the block's cost (attention's score and
// value products, norms, SwiGLU and the residual are left out), so it overstates mHC's share.
//
//   bench_mhc [--threads 1] [--reps 7] [--tokens 128] [--copies 12] [--wall] [--only decode|train]
//             [--C 256|768]
// With one thread the clock is the thread's CPU time unless --wall (more than one thread: wall).
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "machine_probe.h"
#include "ops/matmul.h"
#include "ops/mhc.h"

using namespace qwen::ops;
using qwen::bench::now_s;

namespace {

std::vector<float> randn(size_t n, float sd, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// The clock: this thread's CPU time (default with one thread: on a shared, loaded machine it
// leaves out the time other processes hold the core) or wall time (--wall; needed with threads).
bool g_wall = false;
double clock_s() {
  if (g_wall) return now_s();
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Seconds per call of f: calls repeated for >= 20 ms per rep, the best rep (on a shared machine
// the least disturbed one; the medians swing with the other jobs' load).
double time_call(const std::function<void()>& f, int reps) {
  f();
  int64_t calls = 1;
  for (;;) {
    const double t0 = clock_s();
    for (int64_t i = 0; i < calls; ++i) f();
    if (clock_s() - t0 >= 0.02) break;
    calls *= 2;
  }
  std::vector<double> r;
  for (int k = 0; k < reps; ++k) {
    const double t0 = clock_s();
    for (int64_t i = 0; i < calls; ++i) f();
    r.push_back((clock_s() - t0) / double(calls));
  }
  return *std::min_element(r.begin(), r.end());
}

struct Linear {
  int64_t N, K;
};

struct Shape {
  int64_t C;
  std::vector<Linear> lin;  // q, k, v, o, gate, up, down
};

Shape make_shape(int64_t C) {
  if (C == 768)
    return {
        C, {{768, 768}, {256, 768}, {256, 768}, {768, 768}, {2048, 768}, {2048, 768}, {768, 2048}}};
  return {C, {{256, 256}, {128, 256}, {128, 256}, {256, 256}, {688, 256}, {688, 256}, {256, 688}}};
}

// One block's weights and both sites' mHC parameters.
struct BlockParams {
  std::vector<std::vector<float>> w;
  std::vector<float> phi[2], bias[2], alpha[2];
};

BlockParams make_block(const Shape& s, const MhcDims& d, uint32_t seed) {
  BlockParams b;
  for (const Linear& l : s.lin) b.w.push_back(randn(size_t(l.N * l.K), 0.02f, seed++));
  for (int site = 0; site < 2; ++site) {
    b.phi[site].resize(size_t(d.phi_size()));
    b.bias[site].resize(size_t(d.K()));
    b.alpha[site].resize(3);
    MhcInitOptions o;
    o.seed = seed++;
    mhc_init_site(d, site, o, b.phi[site].data(), b.bias[site].data(), b.alpha[site].data());
    // Trained-looking gates: the dynamic part matters, logits spread over a few units.
    for (float& a : b.alpha[site]) a = 1.0f;
  }
  return b;
}

void run_shape(int64_t C, int reps, int64_t T, int copies, const std::string& only) {
  const Shape s = make_shape(C);
  MhcDims d;
  d.n = 4;
  d.C = C;
  d.iters = 20;
  const int64_t n = d.n, K = d.K(), nC = n * C;
  std::vector<BlockParams> blocks;
  for (int b = 0; b < copies; ++b) blocks.push_back(make_block(s, d, 1000u * uint32_t(b + 1)));
  double w_bytes = 0, phi_bytes = 2.0 * double(d.phi_size()) * 4;
  for (const Linear& l : s.lin) w_bytes += double(l.N * l.K) * 4;
  std::printf(
      "\n== n = 4, C = %lld: block linear weights %.2f MB, phi of two sites %.2f MB (%.1f%%)\n",
      (long long)C, w_bytes / 1e6, phi_bytes / 1e6, 100 * phi_bytes / w_bytes);

  // ---- decode, T = 1 ----
  if (only != "train") {
    std::vector<float> X = randn(size_t(nC), 1.0f, 7), Xo(static_cast<size_t>(nC)),
                       u(static_cast<size_t>(C)), y = randn(size_t(C), 1.0f, 8);
    std::vector<float> cb(size_t(mhc_coefs_size(1, n)));
    const MhcCoefs<float> co = mhc_coefs_view(cb.data(), 1, n);
    std::vector<float> xin = randn(2048, 1.0f, 9), yout(2048);
    auto site_params = [&](int b, int site) {
      return MhcParams<float>{blocks[size_t(b)].phi[site].data(),
                              blocks[size_t(b)].bias[site].data(),
                              blocks[size_t(b)].alpha[site].data()};
    };
    const MhcParams<float> p0 = site_params(0, 0);
    const double t_coef =
        time_call([&] { mhc_coefficients_forward(d, p0, X.data(), 1, co); }, reps);
    const double t_pre =
        time_call([&] { mhc_pre_aggregate(d, X.data(), co.h_pre, 1, u.data()); }, reps);
    const double t_post = time_call(
        [&] { mhc_post_merge(d, X.data(), co.h_res, co.h_post, y.data(), 1, Xo.data()); }, reps);
    std::vector<float> zres(size_t(n * n)), hres(size_t(n * n));
    for (int64_t k = 0; k < n * n; ++k) zres[size_t(k)] = float(k % 5) - 2.0f;
    const double t_sk = time_call([&] { sinkhorn_forward(zres.data(), hres.data(), n, 20); }, reps);
    std::vector<float> proj(static_cast<size_t>(K)), sq(1);
    const double t_gemm = time_call(
        [&] {
          gemm_f32(false, true, 1, K, nC, 1.0f, X.data(), nC, p0.phi, nC, 0.0f, proj.data(), K);
          float s2 = 0;
          for (int64_t c = 0; c < nC; ++c) s2 += X[size_t(c)] * X[size_t(c)];
          sq[0] = s2;
        },
        reps);
    const double t_coef_ref =
        time_call([&] { mhc_coefficients_forward_ref(d, p0, X.data(), 1, co); }, reps);
    auto linear_decode = [&](int b) {
      for (size_t i = 0; i < s.lin.size(); ++i)
        matvec(blocks[size_t(b)].w[i].data(), qwen::DType::F32, xin.data(), yout.data(), s.lin[i].N,
               s.lin[i].K);
    };
    // The decoder's F16 copies of phi (mhc_pack_phi_half), one per block and site.
    std::vector<std::vector<uint16_t>> half(size_t(2 * copies));
    std::vector<std::vector<float>> half_scale(size_t(2 * copies));
    for (int b = 0; b < copies; ++b)
      for (int site = 0; site < 2; ++site) {
        auto& h = half[size_t(2 * b + site)];
        auto& sc = half_scale[size_t(2 * b + site)];
        h.resize(size_t(d.phi_size()));
        sc.resize(size_t(d.phi_rows()));
        mhc_pack_phi_half(d, blocks[size_t(b)].phi[site].data(), h.data(), sc.data());
      }
    auto mhc_decode_with = [&](int b, bool use_half) {
      for (int site = 0; site < 2; ++site) {
        MhcParams<float> p = site_params(b, site);
        if (use_half) {
          p.phi_half = half[size_t(2 * b + site)].data();
          p.phi_half_scale = half_scale[size_t(2 * b + site)].data();
        }
        mhc_site_in(d, p, X.data(), 1, co, u.data());
        mhc_post_merge(d, X.data(), co.h_res, co.h_post, y.data(), 1, Xo.data());
      }
    };
    auto mhc_decode = [&](int b) { mhc_decode_with(b, false); };
    const double hot_lin = time_call([&] { linear_decode(0); }, reps);
    const double hot_mhc = time_call([&] { mhc_decode(0); }, reps);
    const double cold_lin = time_call(
                                [&] {
                                  for (int b = 0; b < copies; ++b) linear_decode(b);
                                },
                                reps) /
                            copies;
    const double cold_mhc = time_call(
                                [&] {
                                  for (int b = 0; b < copies; ++b) mhc_decode(b);
                                },
                                reps) /
                            copies;
    const double hot_half = time_call([&] { mhc_decode_with(0, true); }, reps);
    const double cold_half = time_call(
                                 [&] {
                                   for (int b = 0; b < copies; ++b) mhc_decode_with(b, true);
                                 },
                                 reps) /
                             copies;
    std::printf("decode, one token, one site (hot):\n");
    std::printf(
        "  coefficients (fused Σx²+phi·x, gates, Sinkhorn)  %8.2f us   [scalar sinkhorn_forward, "
        "one matrix: %.2f us]\n",
        t_coef * 1e6, t_sk * 1e6);
    std::printf(
        "    projection via gemm_f32 + Σx² loop (no gates)   %8.2f us ; scalar reference "
        "coefficients %.2f us\n",
        t_gemm * 1e6, t_coef_ref * 1e6);
    std::printf("  pre-aggregate %.3f us, post merge %.3f us\n", t_pre * 1e6, t_post * 1e6);
    std::printf("decode, one block (2 sites) vs its 7 matvecs:\n");
    std::printf("  hot : mHC %8.2f us, linear %8.2f us  -> x%.3f\n", hot_mhc * 1e6, hot_lin * 1e6,
                (hot_lin + hot_mhc) / hot_lin);
    std::printf("  cold: mHC %8.2f us, linear %8.2f us  -> x%.3f   (%d blocks cycled)\n",
                cold_mhc * 1e6, cold_lin * 1e6, (cold_lin + cold_mhc) / cold_lin, copies);
    std::printf("  F16 phi copy (the decoder's): hot mHC %8.2f us, cold mHC %8.2f us -> x%.3f cold\n",
                hot_half * 1e6, cold_half * 1e6, (cold_lin + cold_half) / cold_lin);
  }
  if (only == "decode") return;
  auto site_params = [&](int b, int site) {
    return MhcParams<float>{blocks[size_t(b)].phi[site].data(), blocks[size_t(b)].bias[site].data(),
                            blocks[size_t(b)].alpha[site].data()};
  };

  // ---- training / prefill, T tokens ----
  std::vector<float> XT = randn(size_t(T * nC), 1.0f, 11), XoT(XT.size()), uT(size_t(T * C)),
                     yT = randn(size_t(T * C), 1.0f, 12), G = randn(XT.size(), 1.0f, 13),
                     gX(XT.size()), gF(size_t(T * C)), gu = randn(size_t(T * C), 1.0f, 14);
  std::vector<float> cbT(size_t(mhc_coefs_size(T, n)));
  const MhcCoefs<float> cT = mhc_coefs_view(cbT.data(), T, n);
  std::vector<float> g_hres(size_t(T * n * n)), g_hpost(size_t(T * n)), g_hpre(size_t(T * n));
  std::vector<float> gphi(size_t(d.phi_size())), gbias(static_cast<size_t>(K)), galpha(3);
  auto mhc_fwd = [&] {
    for (int site = 0; site < 2; ++site) {
      mhc_coefficients_forward(d, site_params(0, site), XT.data(), T, cT);
      mhc_pre_aggregate(d, XT.data(), cT.h_pre, T, uT.data());
      mhc_post_merge(d, XT.data(), cT.h_res, cT.h_post, yT.data(), T, XoT.data());
    }
  };
  auto mhc_bwd = [&] {
    for (int site = 0; site < 2; ++site) {
      mhc_post_merge_backward(d, XT.data(), cT.h_res, cT.h_post, yT.data(), G.data(), T, gX.data(),
                              g_hres.data(), g_hpost.data(), gF.data());
      mhc_pre_aggregate_backward(d, XT.data(), cT.h_pre, gu.data(), T, gX.data(), g_hpre.data());
      mhc_coefficients_backward(d, site_params(0, site), XT.data(), cT, g_hpre.data(),
                                g_hpost.data(), g_hres.data(), T, gX.data(),
                                MhcGrads<float>{gphi.data(), gbias.data(), galpha.data()});
    }
  };
  mhc_fwd();
  std::vector<float> A = randn(size_t(T * 2048), 1.0f, 15), Y(size_t(T * 2048)),
                     dY = randn(size_t(T * 2048), 1.0f, 16), dX(size_t(T * 2048));
  std::vector<std::vector<float>> dW;
  for (const Linear& l : s.lin) dW.emplace_back(size_t(l.N * l.K), 0.0f);
  auto lin_fwd = [&] {
    for (size_t i = 0; i < s.lin.size(); ++i)
      matmul(A.data(), blocks[0].w[i].data(), qwen::DType::F32, Y.data(), T, s.lin[i].N,
             s.lin[i].K);
  };
  auto lin_bwd = [&] {
    for (size_t i = 0; i < s.lin.size(); ++i) {
      const int64_t N = s.lin[i].N, Kd = s.lin[i].K;
      // dX (T, K) = dY (T, N)·W (N, K); dW (N, K) += dYᵀ·X.
      gemm_f32(false, false, T, Kd, N, 1.0f, dY.data(), N, blocks[0].w[i].data(), Kd, 0.0f,
               dX.data(), Kd);
      gemm_f32(true, false, N, Kd, T, 1.0f, dY.data(), N, A.data(), Kd, 1.0f, dW[i].data(), Kd);
    }
  };
  const double t_mf = time_call(mhc_fwd, reps), t_mb = time_call(mhc_bwd, reps);
  const MhcParams<float> q0 = site_params(0, 0);
  const double us = 1e6 / double(T);
  const double b_coef_f =
      time_call([&] { mhc_coefficients_forward(d, q0, XT.data(), T, cT); }, reps);
  const double b_pre_f =
      time_call([&] { mhc_pre_aggregate(d, XT.data(), cT.h_pre, T, uT.data()); }, reps);
  const double b_post_f = time_call(
      [&] { mhc_post_merge(d, XT.data(), cT.h_res, cT.h_post, yT.data(), T, XoT.data()); }, reps);
  const double b_post_b = time_call(
      [&] {
        mhc_post_merge_backward(d, XT.data(), cT.h_res, cT.h_post, yT.data(), G.data(), T,
                                gX.data(), g_hres.data(), g_hpost.data(), gF.data());
      },
      reps);
  const double b_pre_b = time_call(
      [&] {
        mhc_pre_aggregate_backward(d, XT.data(), cT.h_pre, gu.data(), T, gX.data(), g_hpre.data());
      },
      reps);
  const double b_coef_b = time_call(
      [&] {
        mhc_coefficients_backward(d, q0, XT.data(), cT, g_hpre.data(), g_hpost.data(),
                                  g_hres.data(), T, gX.data(),
                                  MhcGrads<float>{gphi.data(), gbias.data(), galpha.data()});
      },
      reps);
  std::printf("train/prefill, T = %lld, per token, one site:\n", (long long)T);
  std::printf("  forward : coefficients %.3f us, pre %.3f us, post merge %.3f us\n", b_coef_f * us,
              b_pre_f * us, b_post_f * us);
  std::printf("  backward: coefficients %.3f us, pre %.3f us, post merge %.3f us\n", b_coef_b * us,
              b_pre_b * us, b_post_b * us);
  // The fused calls the trainer makes (issue 6): the input side of a site, the merge + next
  // site's input side, and the backward's stream pass (mhc_site_backward_streams).
  std::vector<float> cbT2(cbT.size());
  const MhcCoefs<float> cT2 = mhc_coefs_view(cbT2.data(), T, n);
  const double b_in = time_call([&] { mhc_site_in(d, q0, XT.data(), T, cT, uT.data()); }, reps);
  const double b_merge_in = time_call(
      [&] {
        mhc_site_merge_in(d, XT.data(), cT, yT.data(), T, XoT.data(), site_params(0, 1), cT2,
                          uT.data());
      },
      reps);
  const double b_streams = time_call(
      [&] {
        mhc_site_backward_streams(d, q0, XT.data(), cT, G.data(), gu.data(), g_hpost.data(),
                                  g_hres.data(), T, g_hpre.data(), gX.data(),
                                  MhcGrads<float>{gphi.data(), gbias.data(), galpha.data()});
      },
      reps);
  // What the trainer runs per site since the sixth pass: the merge backward's head only, and
  // mhc_site_backward_fused (g_h_res from its own dots, the next site's head from its g_X),
  // against the merge backward with its g_h_res dots + the stream pass before it.
  std::vector<float> ghp2(size_t(T * n));
  const double b_site_old = time_call(
      [&] {
        mhc_post_merge_backward(d, XT.data(), cT.h_res, cT.h_post, yT.data(), G.data(), T,
                                static_cast<float*>(nullptr), g_hres.data(), g_hpost.data(),
                                gF.data());
        mhc_site_backward_streams(d, q0, XT.data(), cT, G.data(), gu.data(), g_hpost.data(),
                                  g_hres.data(), T, g_hpre.data(), gX.data(),
                                  MhcGrads<float>{gphi.data(), gbias.data(), galpha.data()});
      },
      reps);
  const MhcMergeHead<float> head{yT.data(), cT2.h_post, gF.data(), ghp2.data()};
  const double b_site_fused = time_call(
      [&] {
        mhc_site_backward_fused(d, q0, XT.data(), cT, G.data(), gu.data(), g_hpost.data(), T,
                                g_hpre.data(), gX.data(),
                                MhcGrads<float>{gphi.data(), gbias.data(), galpha.data()}, &head);
      },
      reps);
  std::printf("  fused   : site_in %.3f us, merge + next site_in %.3f us, backward stream pass "
              "%.3f us\n", b_in * us, b_merge_in * us, b_streams * us);
  std::printf("  site bwd: merge backward (g_h_res, g_h_post, g_F) + stream pass %.3f us, "
              "fused (dots + next head) %.3f us\n", b_site_old * us, b_site_fused * us);
  const double t_lf = time_call(lin_fwd, reps), t_lb = time_call(lin_bwd, reps);
  std::printf("train/prefill, T = %lld, per token, one block (2 sites):\n", (long long)T);
  std::printf("  forward : mHC %7.3f us, linear %7.3f us  -> x%.3f\n", t_mf / T * 1e6,
              t_lf / T * 1e6, (t_lf + t_mf) / t_lf);
  std::printf("  backward: mHC %7.3f us, linear %7.3f us  -> x%.3f\n", t_mb / T * 1e6,
              t_lb / T * 1e6, (t_lb + t_mb) / t_lb);
  std::printf("  step (fwd + bwd)                                 -> x%.3f\n",
              (t_lf + t_lb + t_mf + t_mb) / (t_lf + t_lb));
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, reps = 7, copies = 12;
  int64_t T = 128;
  std::string only;
  std::vector<int64_t> sizes = {256, 768};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_mhc: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads")
      threads = std::atoi(next());
    else if (a == "--reps")
      reps = std::atoi(next());
    else if (a == "--tokens")
      T = std::atoll(next());
    else if (a == "--copies")
      copies = std::atoi(next());
    else if (a == "--wall")
      g_wall = true;
    else if (a == "--only")
      only = next();
    else if (a == "--C")
      sizes = {std::atoll(next())};
    else {
      std::fprintf(stderr,
                   "usage: bench_mhc [--threads N] [--reps N] [--tokens T] [--copies N] [--wall] "
                   "[--only decode|train] [--C C]\n");
      return 2;
    }
  }
  qwen::set_num_threads(threads);
  if (threads > 1) g_wall = true;
  std::printf("bench_mhc: threads %d, reps %d, AVX2 %s, T = %lld, cold set %d blocks, clock %s\n",
              threads, reps, qwen::cpu_features().avx2 ? "yes" : "no", (long long)T, copies,
              g_wall ? "wall" : "thread CPU time");
  for (int64_t C : sizes) run_shape(C, reps, T, copies, only);
  return 0;
}
