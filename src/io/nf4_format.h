// io/nf4_format.h — NF4 exactly as bitsandbytes defines and serialises it: quantize_4bit (blocks
// of 64, per-block absmax, nearest NF4 code, two codes per byte with the first element in the
// high nibble, a partial last block and an odd count padded with code 7), double quantisation of
// the absmax values (offset = their mean, then 8-bit blockwise quantisation with the signed
// dynamic map in blocks of 256), and the packed safetensors form transformers writes for a 4-bit
// model (formats.md §5). bnb_to_nf4_matrix turns it into the in-memory DType::NF4 matrix the
// kernels of ops/nf4.h read (the same codes and double-quantised absmax, ~4.13 bits/weight).
//
// Bit-exactness notes (checked against pip bitsandbytes 0.50 on CPU by tests/test_quant_nf4.cpp):
// - the 4-bit codes come from bitsandbytes' Python default backend (torch.bucketize on code
//   midpoints, x·(1/absmax) for full blocks, x/absmax for the partial block);
// - the 8-bit absmax codes come from its C++ CPU kernel, which maps x/absmax to one of 65536
//   evenly spaced bins and takes each bin's nearest dynamic-map entry (not the exact nearest);
// - the offset is torch's float32 mean, whose summation order we replicate (torch on one thread
//   with 8-wide AVX2 vectors: the golden files are made that way; with more threads or AVX-512
//   torch may differ from itself in the last bit of the offset).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace qwen::io {

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 ascending values.
const std::array<float, 256>& bnb_dynamic_map();

// One quantised tensor, as bitsandbytes' QuantState holds it.
struct Nf4Tensor {
  std::vector<int64_t> shape;          // original shape, e.g. (out, in)
  int64_t numel = 0;
  int64_t blocksize = 64;
  std::string dtype = "float32";       // original dtype as torch names it (float32, bfloat16, float16)
  std::vector<uint8_t> packed;         // (numel + 1) / 2 bytes
  std::vector<float> quant_map;        // 16 entries (the NF4 table)
  bool double_quant = false;
  std::vector<float> absmax;           // plain: one f32 per block
  std::vector<uint8_t> absmax_codes;   // double quant: one 8-bit code per block
  std::vector<float> nested_absmax;    // double quant: one f32 per 256 blocks
  std::vector<float> nested_quant_map; // double quant: 256 entries (the dynamic map)
  int64_t nested_blocksize = 256;
  float nested_offset = 0.0f;

  int64_t n_blocks() const { return (numel + blocksize - 1) / blocksize; }
};

// bitsandbytes.functional.quantize_4bit(x, blocksize=64, quant_type="nf4",
// compress_statistics=double_quant). x holds numel(shape) values in row-major order.
Nf4Tensor bnb_quantize_nf4(const float* x, const std::vector<int64_t>& shape, bool double_quant,
                           const std::string& dtype = "float32");

// bitsandbytes' 8-bit blockwise quantisation on CPU (quantize_blockwise): per block of
// `blocksize`, absmax = max|x| and code = LUT-nearest entry of `code` (256 ascending values).
void bnb_quantize_blockwise(const float* x, int64_t n, const float* code, int64_t blocksize,
                            uint8_t* out, float* absmax);

// torch.mean of a contiguous float32 vector on one thread with AVX2 (the same summation order).
float torch_mean_f32(const float* x, int64_t n);

// The absmax of every block as dequantize_4bit uses it (f32; nested codes dequantised + offset).
std::vector<float> bnb_block_absmax(const Nf4Tensor& t);
// dequantize_4bit: numel values in f32.
void bnb_dequantize_nf4(const Nf4Tensor& t, float* out);
// The in-memory DType::NF4 matrix (ops/nf4.h) of a 2-D tensor (rows, cols) with cols % 64 == 0
// and blocksize 64: packed codes, absmax codes, nested absmax and offset as they are (f32 absmax
// without double quantisation). Throws qwen::Error otherwise.
std::vector<uint8_t> bnb_to_nf4_matrix(const Nf4Tensor& t);

// The JSON text stored in `<prefix>.weight.quant_state.bitsandbytes__nf4` (json.dumps of the
// non-tensor fields in QuantState.as_dict order), and its parser (fills shape, blocksize, dtype,
// nested_blocksize, nested_offset, double_quant from the presence of nested fields).
std::string bnb_quant_state_json(const Nf4Tensor& t);
void bnb_parse_quant_state_json(const std::string& text, Nf4Tensor* t, const std::string& where);

}  // namespace qwen::io
