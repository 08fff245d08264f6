// ops/elementwise.h — the small per-token ops of the decoder: RMSNorm, rotary embedding,
// SwiGLU, residual add, softmax, and the backward passes of RMSNorm, RoPE, SwiGLU and bias for
// training. Each has a plain loop the compiler vectorises or a SIMD path; they are a small share
// of the time next to the matmuls.
#pragma once
#include <cstdint>

namespace qwen::ops {

// y (rows, C) = x / sqrt(mean(x²) + eps) * w, computed in f32 (Hugging Face RMSNorm). y may be x.
void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t C, float eps);

// Rotary embedding, Hugging Face rotate-half convention, in place.
// x: (T, n_heads, D); cos/sin tables: (n_pos, D/2) rows (already multiplied by attention_factor);
// positions[t] selects the table row for token t.
// For i < D/2: x'[i] = x[i]c - x[i+D/2]s ; x'[i+D/2] = x[i+D/2]c + x[i]s.
void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, const int32_t* positions,
                const float* cos_tab, const float* sin_tab);

// out (n) = silu(gate) * up, silu(x) = x / (1 + exp(-x)). out may alias gate.
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// y += x
void add_inplace(float* y, const float* x, int64_t n);

// In-place softmax over n values; returns nothing. Max-subtracted, f32.
void softmax_inplace(float* x, int64_t n);

// y (n) = exp(x), vectorised where the CPU allows (relative error below 4e-7 against exact exp;
// exp of -inf is 0, overflow gives +inf, NaN stays NaN). y may be x.
void exp_f32(const float* x, float* y, int64_t n);

// Plain-loop references of the ops that have an AVX-512 path (std::exp), kept for tests and
// benchmarks; same contracts as above.
void swiglu_ref(const float* gate, const float* up, float* out, int64_t n);
void softmax_inplace_ref(float* x, int64_t n);
void exp_f32_ref(const float* x, float* y, int64_t n);

// ---- Backward passes (training) ----
// Every gradient output ACCUMULATES (+=), never overwrites, so a tensor read by several ops
// collects all its gradients. The fast versions (AVX2 when the CPU has it, OpenMP over rows for
// big inputs) keep a plain-loop *_ref with the same contract, used by tests.

// RMSNorm y = x·r·w, r = 1/sqrt(mean(x²)+eps); dr/dx = −r³·x/C gives
// dx += r·(w∘dy) − x·r³·mean(x∘w∘dy); dw += Σ_rows dy∘x·r.
// x, dy, dx (rows, C); w, dw (C). dw may be nullptr (frozen weight). Also serves Qwen3's
// per-head q/k norms (rows = T·H, C = D). dx must not alias x or dy. The dw sums run over rows in
// order for every column, so the result does not depend on the thread count.
void rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                      int64_t rows, int64_t C, float eps);
void rmsnorm_backward_ref(const float* x, const float* w, const float* dy, float* dx, float* dw,
                          int64_t rows, int64_t C, float eps);

// RoPE backward, in place on dx (T, n_heads, D): the forward is x' = R·x with R = [c −s; s c]
// per pair (i, i+D/2), so dx = Rᵀ·dx' = the same rotation with sin -> −sin (the inverse rotation
// when the tables carry no attention_factor). Same tables and positions as rope_apply.
void rope_apply_backward(float* dx, int64_t T, int64_t n_heads, int64_t D, const int32_t* positions,
                         const float* cos_tab, const float* sin_tab);

// SwiGLU out = silu(g)·u, silu(g) = g·σ(g): dg += dout·u·silu'(g), du += dout·silu(g), with
// silu'(g) = σ(g)(1 + g(1−σ(g))). gate, up, dout, dgate, dup (n); outputs must not alias inputs.
void swiglu_backward(const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup, int64_t n);
void swiglu_backward_ref(const float* gate, const float* up, const float* dout, float* dgate,
                         float* dup, int64_t n);

// Bias y = x + b broadcast over rows, so db (N) += column sums of dy (rows, N) (summed over rows
// in order: independent of the thread count).
void bias_backward(const float* dy, float* db, int64_t rows, int64_t N);

}  // namespace qwen::ops
