// ops/nf4.h — NF4 weights in memory (DType::NF4, the frozen base weight of QLoRA): blocks of 64
// values, each 36 bytes = f32 absmax, then 32 bytes of 4-bit codes in bitsandbytes' order
// (byte j: element 2j in the high nibble, element 2j+1 in the low nibble); x = absmax·NF4[code].
// The absmax is already the dequantised one when the file used double quantisation
// (io/nf4_format.h turns bitsandbytes' serialised form into these blocks).
// Kernels: dequantise, matrix-vector (decode), matrix-matrix (prefill / training forward) and the
// input gradient of an NF4 linear for the QLoRA backward. Every fast path (AVX2) keeps its
// scalar reference here; the DType::NF4 table of ops/quant.h points to them.
#pragma once
#include <cstddef>
#include <cstdint>

namespace qwen::ops {

inline constexpr int64_t kNf4Block = 64;       // values per block
inline constexpr size_t kNf4BlockBytes = 36;   // f32 absmax + 32 code bytes

// bitsandbytes' NF4 code table (get_4bit_type("nf4")), index = 4-bit code.
extern const float kNf4Code[16];

// Nearest NF4 code of a value normalised to [-1, 1] (ties to the lower code, as torch.bucketize
// on the midpoints of adjacent codes does in bitsandbytes' quantize_4bit).
uint8_t nf4_nearest_code(float v);

// n values (a multiple of 64) -> n/64 blocks with absmax = max|x| per block, codes as
// bitsandbytes' quantize_4bit picks them. (Whole-tensor quantisation with partial blocks and
// double quantisation, bit-exact with bitsandbytes, lives in io/nf4_format.h.)
void nf4_quantize(const float* src, void* dst, int64_t n);
void nf4_dequantize(const void* src, float* dst, int64_t n);      // fast path
void nf4_dequantize_ref(const void* src, float* dst, int64_t n);  // scalar

// y (N) (+)= W (N, K) · x (K), W row-major NF4 (K a multiple of 64).
void nf4_matvec(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
void nf4_matvec_ref(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
// Y (M, N) (+)= X (M, K) · Wᵀ.
void nf4_matmul(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc);
void nf4_matmul_ref(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                    bool acc);
// QLoRA backward of y = x·Wᵀ with respect to x (W frozen, no weight gradient):
// dX (M, K) (+)= dY (M, N) · W (N, K). accumulate = true adds into dX.
void nf4_matmul_input_backward(const float* dY, const void* W, float* dX, int64_t M, int64_t N,
                               int64_t K, bool accumulate = true);
void nf4_matmul_input_backward_ref(const float* dY, const void* W, float* dX, int64_t M, int64_t N,
                                   int64_t K, bool accumulate = true);

namespace detail {
// The AVX2 kernels (nf4_avx2.cpp); callers check cpu_features().avx2.
void nf4_dequantize_avx2(const void* src, float* dst, int64_t n);
// xp: x permuted per block as nf4_permute_x lays it out (K floats).
void nf4_permute_x(const float* x, float* xp, int64_t K);
void nf4_matvec_rows_avx2(const void* W, const float* xp, float* y, int64_t n0, int64_t n1,
                          int64_t K, bool acc);
}  // namespace detail

}  // namespace qwen::ops
