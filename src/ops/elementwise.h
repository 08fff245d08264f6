// ops/elementwise.h — the small per-token ops of the decoder: RMSNorm, rotary embedding,
// SwiGLU, residual add, softmax. Each has a plain loop the compiler vectorises; they are a small
// share of the time next to the matmuls.
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

}  // namespace qwen::ops
