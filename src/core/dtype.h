// core/dtype.h — element types of tensors stored in memory and on disk, and the scalar
// conversions between them (IEEE binary16 and bfloat16 <-> float32).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace qwen {

// Plain element types, then block-quantised weight formats. A quantised matrix row of n_in
// values is n_in / block_elems(t) blocks of block_bytes(t) bytes, each block carrying its own
// scale(s), so a row-major (N, K) matrix is N·K/block_elems blocks with no side arrays:
//   Q8_0  32 values: f16 scale d, 32 × int8            (34 B)  x = d·q           (GGUF)
//   Q4_0  32 values: f16 d, 16 B nibbles               (18 B)  x = d·(q − 8)     (GGUF)
//   Q4_1  32 values: f16 d, f16 m, 16 B nibbles        (20 B)  x = d·q + m       (GGUF)
//   Q4_K  256 values, 144 B; Q6_K 256 values, 210 B                             (GGUF k-quants)
//   NF4   64 values: 32 B of 4-bit codes + an 8-bit absmax code (33 B)  x = absmax·NF4[q]
//         (bitsandbytes' code table, nibble order and double quantisation; not N independent
//         rows: a matrix has a header and per-256-block nested absmax, see ops/nf4.h, so address
//         it with ops::dequantize_rows / quant_matrix_bytes, not row pointers)
enum class DType : uint8_t {
  F32 = 0, F16 = 1, BF16 = 2, I32 = 3, I64 = 4, U8 = 5,
  Q8_0 = 16, Q4_0 = 17, Q4_1 = 18, Q4_K = 19, Q6_K = 20, NF4 = 21,
};

inline bool dtype_is_quantized(DType t) { return uint8_t(t) >= 16; }

// Values per block (1 for plain types) and bytes per block.
inline int64_t dtype_block_elems(DType t) {
  switch (t) {
    case DType::Q8_0: case DType::Q4_0: case DType::Q4_1: return 32;
    case DType::Q4_K: case DType::Q6_K: return 256;
    case DType::NF4: return 64;
    default: return 1;
  }
}
inline size_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
    case DType::Q8_0: return 34;
    case DType::Q4_0: return 18;
    case DType::Q4_1: return 20;
    case DType::Q4_K: return 144;
    case DType::Q6_K: return 210;
    case DType::NF4: return 33;
  }
  return 0;
}

// Bytes per element of a plain type (0 for block formats: use dtype_row_bytes).
inline size_t dtype_size(DType t) { return dtype_is_quantized(t) ? 0 : dtype_block_bytes(t); }

// Bytes of n consecutive values (n a multiple of the block size for block formats).
inline size_t dtype_row_bytes(DType t, int64_t n) {
  return size_t(n / dtype_block_elems(t)) * dtype_block_bytes(t);
}

// safetensors dtype strings ("F32", "F16", "BF16", "I32", "I64", "U8"); block formats are
// named "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "NF4" (never written as safetensors dtypes).
const char* dtype_name(DType t);
// Returns false if the name is not one of the six safetensors dtypes above.
bool dtype_from_name(const std::string& name, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even, as torch does; NaN stays NaN (quiet).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round-to-nearest-even, overflow to inf

// Bulk conversions (scalar; fast paths live in ops).
void convert_to_f32(const void* src, DType t, float* dst, size_t n);
void convert_from_f32(const float* src, DType t, void* dst, size_t n);

}  // namespace qwen
