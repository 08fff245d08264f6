// core/dtype.h — element types of tensors stored in memory and on disk, and the scalar
// conversions between them (IEEE binary16 and bfloat16 <-> float32).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace qwen {

enum class DType : uint8_t { F32 = 0, F16 = 1, BF16 = 2, I32 = 3, I64 = 4, U8 = 5 };

// Bytes per element.
inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

// safetensors dtype strings ("F32", "F16", "BF16", "I32", "I64", "U8").
const char* dtype_name(DType t);
// Returns false if the name is not one we support.
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
