// ops/nf4.h — NF4 weights in memory (DType::NF4, a QLoRA base weight or a 4-bit folder's
// projections), kept in bitsandbytes' double-quantised form so that they cost ~4.13 bits per
// weight: one buffer per (N, K) matrix (K a multiple of 64), whose address is what a Linear holds:
//
//   Nf4Header (64 B)
//   codes         N·K/2 bytes, row-major, bitsandbytes' packed order (byte j: element 2j in the
//                 high nibble, element 2j+1 in the low nibble); x = absmax·NF4[code]
//   absmax        one per 64-value block (N·K/64 of them, row-major): with double quantisation an
//                 8-bit code, absmax = map[code]·nested_absmax[block/256] + offset (bitsandbytes'
//                 arithmetic, f32 multiply then add); without it (--no-double-quant) an f32
//   nested_absmax f32 per 256 blocks (double quantisation only)
//   map           256 f32, only when the folder's nested_quant_map is not bitsandbytes' dynamic
//                 map (otherwise the built-in copy, io::bnb_dynamic_map, is used)
//
// So 33 bytes per 64 weights + 4 per 16384 (4.127 bits/weight), 36 without double quantisation.
// A QLoRA base keeps the double-quantised form; inference (a folder loaded by Model::load) gets
// the f32 absmax (nf4_matrix_expand_absmax: the decode matvec ~25% faster, results unchanged).
// Rows are addressed through the matrix (nf4_view / dequantize_rows), never by pointer arithmetic
// on row bytes. Kernels: dequantise, matrix-vector (decode), matrix-matrix (prefill / training
// forward) and the input gradient of an NF4 linear for the QLoRA backward. Every fast path (AVX2)
// keeps its scalar reference here; the DType::NF4 table of ops/quant.h points to them.
#pragma once
#include <cstddef>
#include <array>
#include <cstdint>
#include <vector>

namespace qwen::ops {

inline constexpr int64_t kNf4Block = 64;      // values per block
inline constexpr size_t kNf4BlockBytes = 33;  // 32 code bytes + 1 absmax code (double quant)
inline constexpr int64_t kNf4NestedBlock = 256;

// bitsandbytes' NF4 code table (get_4bit_type("nf4")), index = 4-bit code.
extern const float kNf4Code[16];
// The same table in 16-bit fixed point for the 16-bit matvec (nf4_matvec_i16): round(kNf4Code[c]·8191)
// (kNf4CodeI16Scale = 8191: products with 16-bit activations cannot overflow the kernel's i32
// block sums, 8·8191·32767 < 2^31; see nf4_avx2.cpp).
inline constexpr int32_t kNf4CodeI16Scale = 8191;
extern const std::array<int16_t, 16> kNf4CodeI16;
// The same table in 8 bits for the registered decode matvec: kNf4CodeU8[c] = round(NF4[c]·64) + 64
// (0..128, unsigned for vpmaddubsw; value (t − 64)/64, within kNf4CodeU8MaxErr = 0.00694 of
// NF4[c]; ±1 and 0 exact). 64 = kNf4CodeU8Scale = kNf4CodeU8Offset.
inline constexpr int32_t kNf4CodeU8Scale = 64, kNf4CodeU8Offset = 64;
extern const std::array<uint8_t, 16> kNf4CodeU8;
inline constexpr double kNf4CodeU8MaxErr = 0.006933;  // ≥ max_c |(t_c − 64)/64 − NF4[c]| (c = 1: 0.0069322)

// Nearest NF4 code of a value normalised to [-1, 1] (ties to the lower code, as torch.bucketize
// on the midpoints of adjacent codes does in bitsandbytes' quantize_4bit).
uint8_t nf4_nearest_code(float v);

struct Nf4Header {
  char magic[4];              // "NF4M"
  uint32_t flags;             // kNf4DoubleQuant | kNf4OwnMap
  int64_t rows, cols;
  float offset;               // double quant: the mean subtracted before quantising the absmax
  int32_t nested_blocksize;   // double quant: 256
  uint64_t absmax_off, nested_off, map_off, total_bytes;  // byte offsets from the header
};
static_assert(sizeof(Nf4Header) == 64, "Nf4Header is 64 bytes");
inline constexpr uint32_t kNf4DoubleQuant = 1, kNf4OwnMap = 2;

// Pointers into one NF4 matrix.
struct Nf4View {
  const Nf4Header* h = nullptr;
  const uint8_t* codes = nullptr;         // (N, K/2)
  const uint8_t* absmax_codes = nullptr;  // (N·K/64) double quant, else null
  const float* absmax_f32 = nullptr;      // (N·K/64) plain, else null
  const float* nested = nullptr;          // (ceil(N·K/64 / nested_blocksize))
  const float* map = nullptr;             // (256) the nested quant map
  int64_t rows() const { return h->rows; }
  int64_t cols() const { return h->cols; }
};

// Bytes of an (N, K) NF4 matrix.
size_t nf4_matrix_bytes(int64_t N, int64_t K, bool double_quant, bool own_map = false);
// Writes the header of an (N, K) matrix into dst (nf4_matrix_bytes of it) and returns a view
// whose arrays the caller fills (cast away const).
Nf4View nf4_matrix_init(void* dst, int64_t N, int64_t K, bool double_quant, float offset,
                        int32_t nested_blocksize, const float* own_map);
// The view of a matrix; throws qwen::Error if W does not start with an NF4 header (e.g. a
// pointer into the middle of one: address rows through the matrix).
Nf4View nf4_view(const void* W);
size_t nf4_total_bytes(const void* W);
// The f32 absmax of blocks [b0, b0 + n) of the matrix (bit-identical to bitsandbytes'
// dequantize_4bit: map[code]·nested + offset, no fused multiply-add).
void nf4_block_absmax(const Nf4View& v, int64_t b0, int64_t n, float* out);

// For inference: the same matrix with its double-quantised absmax decoded once to one f32 per
// block (the plain layout a --no-double-quant folder loads into), so that the decode matvec does
// not decode it on every call. The f32 values are exactly nf4_block_absmax's (bitsandbytes'
// map[code]·nested + offset), which is what every kernel multiplies by, so dequantise, matvec
// (all three kernels) and matmul give bit-identical results for the two forms. Memory: 36 B per
// 64 weights instead of 33 (+0.375 bit per weight: ~4.5 bits instead of ~4.13). A QLoRA base
// keeps the compact form (Model::load with nf4_compact). A plain matrix is returned as a copy.
std::vector<uint8_t> nf4_matrix_expand_absmax(const void* W);

// bitsandbytes' quantize_4bit of a row-major (N, K) f32 matrix (K a multiple of 64) with
// compress_statistics = double_quant, as an in-memory matrix (codes, absmax, double quantisation
// bit-identical to io::bnb_quantize_nf4).
std::vector<uint8_t> nf4_quantize_matrix(const float* src, int64_t N, int64_t K, bool double_quant = true);

// dst (n) = the first n values of the matrix (n a multiple of 64; all of it: rows·cols).
void nf4_dequantize(const void* W, float* dst, int64_t n);      // fast path
void nf4_dequantize_ref(const void* W, float* dst, int64_t n);  // scalar
// dst (n_rows, K) = rows row0 .. row0 + n_rows of the (N, K) matrix.
void nf4_dequantize_rows(const void* W, int64_t row0, int64_t n_rows, int64_t K, float* dst);

// y (N) (+)= W (N, K) · x (K), W an NF4 matrix. Three kernels, one reference:
// nf4_matvec (the registered decode kernel, DType::NF4's k.matvec) is an 8-bit integer dot
// product (vpmaddubsw, as llama.cpp's q4_0 × q8_0): the code table as unsigned bytes
// t_c = round(NF4[c]·64) + 64 (kNf4CodeU8), x quantised once per call per 64-block b to int8
// q_x = round(x·127/max|x_b|) (scale s_b = max|x_b|/127); per block the exact i32 sum
// Σ_j (t_cj − 64)·q_xj (Σ t·q from vpmaddubsw + vpmaddwd, minus 64·Σ q_x), then
// y += absmax_b·(s_b/64)·sum in f32. Against y* = Σ_b absmax_b Σ_j NF4[c_j]·x_j the error is
//   |y − y*| ≤ Σ_b absmax_b · Σ_j ( e_w·|x_j| + e_x,b·|NF4[c_j]| + e_w·e_x,b )  +  f32 rounding
// with e_w = kNf4CodeU8MaxErr = 0.00694 (table rounding: |(t_c − 64)/64 − NF4[c]|, measured over
// the 16 codes; 1/20 to 1/40 of NF4's own rounding, 0.15 of absmax at most) and
// e_x,b = 0.5·s_b·(1 + 2^-6) (activation rounding, 1/254 of max|x_b| per element; the 2^-6 covers
// the f32 rounding of 127/max|x_b| and of x times it); f32 rounding as for the 16-bit kernel below.
// No saturation: a vpmaddubsw pair is at most 2·128·127 = 32512 < 32767; a block's i32 sum is
// at most 64·128·127 in magnitude.
// nf4_matvec_i16 (the previous registered kernel, kept as a named alternative) is a 16-bit integer
// dot product: the code table as int16 q_c = round(NF4[c]·8191) (kNf4CodeI16), x quantised once per
// call per 64-block b to int16 q_x = round(x·32767/max|x_b|) (scale s_b = max|x_b|/32767), exact
// i32 sums per block, then y += absmax_b·(s_b/8191)·sum in f32. Its error has the same form with
// e_w = 0.5/8191 (table rounding: |q_c/8191 − NF4[c]| ≤ 0.5/8191, ≤ 6.1e-5 of absmax per
// weight) and e_x,b = 0.5·s_b·(1 + 2^-6) (activation rounding, 2^-16 of max|x_b| per element; the
// 2^-6 covers the f32 rounding of 32767/max|x_b| and of x times it: < 2·2^-24·32767 < 0.004
// units of s_b); for both, the f32 rounding is that of converting each block's i32 sum, its
// scale (three roundings) and the nb FMAs into 8 lanes and 2 chains, below
// (nb + 16)·2^-24·Σ|absmax_b·NF4[c_j]·x_j|.
// A call whose x holds a NaN or an infinity takes the exact f32 kernel (so they propagate as in
// the reference), as does one with a nonzero block below ~1e-30 in magnitude (its scale would be
// subnormal).
// nf4_matvec_f32: the exact f32 AVX2 kernel (f32 code values by vpshufb byte planes; x not
// rounded, error = f32 summation order only), kept for tests and benches.
void nf4_matvec(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
void nf4_matvec_i16(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
void nf4_matvec_f32(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
void nf4_matvec_ref(const void* W, const float* x, float* y, int64_t N, int64_t K, bool acc);
// Y (M, N) (+)= X (M, K) · Wᵀ.
// nf4_matmul (registered: prefill, the training forward, served batches): M = 1 is nf4_matvec;
// with AVX2 every M >= 2 runs nf4_matmul_act8, whose every row is bit-identical to nf4_matvec of
// that row alone (a row's result does not depend on M or on the other rows; the 8-bit error
// bound above); without AVX2 (or while a bench routes decode to another kernel,
// detail::nf4_set_decode), nf4_matmul_dequant.
// nf4_matmul_act8: the multi-row 8-bit integer kernel. M <= 3: nf4_matvec row by row (faster
// there: it decodes each block in registers). M >= 4: each row of X is quantised as nf4_matvec
// quantises x; each weight block's codes are looked up once (per panel of ~96 KiB of activation
// rows) and applied to all rows, 2 weight rows × 4 activation rows per tile, with the matvec's
// per-block arithmetic and final fold unchanged. A row holding a NaN or an infinity (or a
// nonzero block below ~1e-30) takes nf4_matvec_f32, as nf4_matvec does. Weight rows are split
// over the threads in groups of 4, as in nf4_matvec.
// nf4_matmul_dequant: dequantised panels of W + f32 GEMM (exact x, GEMM summation order; the
// registered path before 2026-11-28 13:00 UTC, kept as a named alternative).
// nf4_matmul_row_invariant(): true when nf4_matmul's rows do not depend on M (AVX2: the integer
// kernels at every M).
void nf4_matmul(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc);
void nf4_matmul_act8(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K, bool acc);
void nf4_matmul_dequant(const float* X, const void* W, float* Y, int64_t M, int64_t N, int64_t K,
                        bool acc);
bool nf4_matmul_row_invariant();
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
// dst (n_blocks·64) from codes (n_blocks·32 bytes) and the blocks' f32 absmax.
void nf4_dequantize_blocks_avx2(const uint8_t* codes, const float* absmax, float* dst,
                                int64_t n_blocks);
// xp: x permuted per block as nf4_permute_x lays it out (K floats).
void nf4_permute_x(const float* x, float* xp, int64_t K);
// y[n] (+)= row n · x for rows n0 .. n1 of the matrix.
void nf4_matvec_rows_avx2(const Nf4View& v, const float* xp, float* y, int64_t n0, int64_t n1,
                          int64_t K, bool acc);
// x (K) -> permuted int16 blocks xq (K, the order nf4_matvec_rows_act16_avx2 multiplies in)
// and xs (K/64) = s_b/8191 (see nf4_matvec). Returns false (xq, xs partly written) if x holds a
// NaN or an infinity, or a nonzero block whose scale would be subnormal (max|x_b| < ~1e-30).
bool nf4_quantize_act16(const float* x, int64_t K, int16_t* xq, float* xs);
// y[n] (+)= row n · x for rows n0 .. n1, 16-bit integer products (see nf4_matvec). xs must be
// readable 8 floats past its K/64 (vector tails; their values do not matter).
void nf4_matvec_rows_act16_avx2(const Nf4View& v, const int16_t* xq, const float* xs, float* y,
                                int64_t n0, int64_t n1, int64_t K, bool acc);
// x (K) -> int8 blocks xq (K: per block the 32 even elements, then the 32 odd ones, the order
// of the high- and low-nibble index vectors), xc (8 i32 per block: 64·Σ q_x in lane 0, zeros)
// and xs (K/64) = s_b/64 (see nf4_matvec). Returns false (outputs partly written) if x holds a
// NaN or an infinity, or a nonzero block whose scale would be subnormal.
bool nf4_quantize_act8(const float* x, int64_t K, int8_t* xq, int32_t* xc, float* xs);
// y[n] (+)= row n · x for rows n0 .. n1, 8-bit integer products (see nf4_matvec). xs must be
// readable 8 floats past its K/64 (vector tails; their values do not matter).
void nf4_matvec_rows_act8_avx2(const Nf4View& v, const int8_t* xq, const int32_t* xc, const float* xs,
                               float* y, int64_t n0, int64_t n1, int64_t K, bool acc);
// The quantised activation rows of nf4_matmul_act8, M of them, interleaved by tiles of 4 rows:
// q (tile t, block b, row i of the tile: 64 int8 at ((t·nb + b)·4 + i)·64, nf4_quantize_act8's
// order; rows past M in the last tile are not read), c (64·Σ q_x of that block) and s (its scale
// s_b/64), both at (t·nb + b)·4 + i, and per row its output row y[m] (N floats).
struct Nf4ActTiles {
  const int8_t* q;
  const int32_t* c;
  const float* s;
  float* const* y;
  int64_t M;
};
// y of every row (+)= rows n0 .. n1 of W · x; n0 a multiple of 4; rows from n_single on
// (N/4·4: the matvec's single rows) fold as the matvec's single rows, the others in groups of 4.
// Bit-identical to nf4_matvec_rows_act8_avx2 on each row alone.
void nf4_matmul_rows_act8_avx2(const Nf4View& v, const Nf4ActTiles& a, int64_t n0, int64_t n1,
                               int64_t n_single, int64_t K, bool acc);
// Benches only (bench_quant): route nf4_matvec, and so every NF4 decode, to another kernel
// (the 16-bit integer or the exact f32 one) until set back to kInt8, to compare them in one
// process. nf4_set_decode_f32(on) is nf4_set_decode(on ? kF32 : kInt8).
enum class Nf4Decode { kInt8, kInt16, kF32 };
void nf4_set_decode(Nf4Decode k);
void nf4_set_decode_f32(bool on);
}  // namespace detail

}  // namespace qwen::ops
