// tests/test_quant_folder.cpp — quantised model folders:
//  - a 4-bit folder written by transformers + bitsandbytes (tests/data/quant/hf_nf4_qwen2, from
//    make_golden.py) loads with exactly bitsandbytes' dequantised weights and, through the exact
//    NF4 kernels, logits within 1e-4 of the bitsandbytes model's (the default 8-bit kernels within
//    a fifth of NF4's own error);
//  - the NF4 folder we write from the same float model is tensor-for-tensor byte-identical to it
//    (names, dtypes, shapes, packed codes, absmax codes, nested fields, quant_state JSON);
//  - quantise -> load -> logits close to the float model (NF4 and Q8_0; the error is printed);
//  - a missing absmax / quant_state is a clear error naming the tensor; `qwen quantize` CLI.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "io/nf4_format.h"
#include "io/quantized_folder.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/model.h"
#include "ops/nf4.h"
#include "ops/q8_0.h"
#include "ops/quant.h"
#include "qwen/error.h"
#include "test_util.h"

using namespace qwen;
using namespace qwen_test;
namespace fs = std::filesystem;

namespace {

std::vector<float> run_logits(const Model& m, const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size());
  KvCache cache(m.config(), 1, T);
  Decoder dec(m, T);
  std::vector<float> logits(size_t(T * m.config().vocab_size));
  SeqChunk ch{0, T, ids.data()};
  dec.forward(cache, &ch, 1, LogitsMode::kAll, logits.data());
  return logits;
}

// Dequantised f32 copy of a model matrix, whatever its dtype.
std::vector<float> dense(const Linear& l) {
  std::vector<float> w(size_t(l.n_out * l.n_in));
  // A quantised matrix is addressed as a whole (NF4 has a header and nested absmax blocks that
  // run across rows).
  if (dtype_is_quantized(l.dtype)) ops::dequantize_rows(l.dtype, l.w, l.n_out, l.n_in, 0, l.n_out, w.data());
  else convert_to_f32(l.w, l.dtype, w.data(), w.size());
  return w;
}

std::vector<std::pair<std::string, const Linear*>> linears(const Model& m) {
  std::vector<std::pair<std::string, const Linear*>> v;
  for (size_t i = 0; i < m.layers().size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const LayerWeights& L = m.layers()[i];
    v.push_back({p + "self_attn.q_proj.weight", &L.q});
    v.push_back({p + "self_attn.k_proj.weight", &L.k});
    v.push_back({p + "self_attn.v_proj.weight", &L.v});
    v.push_back({p + "self_attn.o_proj.weight", &L.o});
    v.push_back({p + "mlp.gate_proj.weight", &L.gate});
    v.push_back({p + "mlp.up_proj.weight", &L.up});
    v.push_back({p + "mlp.down_proj.weight", &L.down});
  }
  return v;
}

// Relative RMS error of logits against a reference.
double rel_rms(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

const std::vector<int32_t> kIds = {3, 17, 42, 99, 5, 150, 7, 64, 1, 33, 120, 8};

}  // namespace

TEST(QuantFolder, TransformersNf4FolderLoadsWithBitsandbytesWeights) {
  const std::string dir = data_path("quant/hf_nf4_qwen2");
  ASSERT_TRUE(io::is_quantized_folder(dir));
  auto m = Model::load(dir);
  auto g = io::SafetensorsFile::open(data_path("quant/hf_nf4_qwen2_golden.safetensors"));
  int n = 0;
  for (const auto& [name, l] : linears(*m)) {
    const io::TensorInfo* t = g->find(name);
    ASSERT_NE(t, nullptr) << name;
    // Rows of 64 are held as NF4 blocks; down_proj (rows of 96) straddles rows -> dequantised f32.
    EXPECT_EQ(l->dtype, l->n_in % 64 == 0 ? DType::NF4 : DType::F32) << name;
    const auto w = dense(*l);
    ASSERT_EQ(w.size() * 4, t->nbytes) << name;
    EXPECT_EQ(std::memcmp(w.data(), t->data, t->nbytes), 0) << name;
    ++n;
  }
  EXPECT_EQ(n, 14);
  const io::TensorInfo* lt = g->find("logits");
  std::vector<float> ref(lt->nbytes / 4);
  std::memcpy(ref.data(), lt->data, lt->nbytes);
  // With the exact NF4 kernels (f32 matvec, dequantise + f32 GEMM) the prefill reproduces
  // bitsandbytes' logits (its dequantised weights in f32).
  std::vector<float> exact;
  {
    struct ExactKernels {  // restored even if an assertion returns early
      ExactKernels() { ops::detail::nf4_set_decode(ops::detail::Nf4Decode::kF32); }
      ~ExactKernels() { ops::detail::nf4_set_decode(ops::detail::Nf4Decode::kInt8); }
    } scope;
    exact = run_logits(*m, kIds);
  }
  ASSERT_EQ(exact.size(), ref.size());
  double max_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) max_err = std::max(max_err, double(std::fabs(exact[i] - ref[i])));
  std::printf("hf nf4 folder, exact kernels: max |logit - bitsandbytes logit| = %.3g\n", max_err);
  EXPECT_LT(max_err, 1e-4);
  // The default kernels round activations to 8 bits per 64-block (the decode matvec and, with
  // AVX2, the multi-row matmul of the prefill; docs/quantization.md): their logits stay within a
  // small fraction of NF4's own error against the float model this folder was quantised from
  // (measured: 0.042 relative RMS against 0.34 for NF4 itself on this tiny random model, which
  // amplifies weight error; a real model's perplexity moves by +0.005% against NF4's +0.03%).
  const auto logits = run_logits(*m, kIds);
  auto fm = Model::load(data_path("models/qwen2_gqa"));
  const auto flt = run_logits(*fm, kIds);
  const double kernel_err = rel_rms(logits, exact), nf4_err = rel_rms(exact, flt);
  std::printf("hf nf4 folder: relative RMS logit error, default vs exact kernels %.4f, NF4 vs float %.4f\n",
              kernel_err, nf4_err);
  EXPECT_LT(kernel_err, nf4_err / 5);
}

TEST(QuantFolder, OurNf4FolderIsByteIdenticalToTransformers) {
  TempDir td;
  auto m = Model::load(data_path("models/qwen2_gqa"));
  io::save_quantized_folder(*m, td.str("q"), {DType::NF4, true});
  auto ours = io::Checkpoint::open(td.str("q"));
  auto theirs = io::Checkpoint::open(data_path("quant/hf_nf4_qwen2"));
  EXPECT_EQ(ours->names(), theirs->names());
  for (const std::string& name : theirs->names()) {
    const io::TensorInfo* a = ours->find(name);
    const io::TensorInfo* b = theirs->find(name);
    ASSERT_NE(a, nullptr) << name;
    EXPECT_EQ(a->dtype_name, b->dtype_name) << name;
    EXPECT_EQ(a->shape, b->shape) << name;
    ASSERT_EQ(a->nbytes, b->nbytes) << name;
    EXPECT_EQ(std::memcmp(a->data, b->data, a->nbytes), 0)
        << name << (name.find("quant_state") != std::string::npos
                        ? ": " + std::string(static_cast<const char*>(a->data), a->nbytes) + " vs " +
                              std::string(static_cast<const char*>(b->data), b->nbytes)
                        : "");
  }
  // quantization_config as transformers writes it.
  auto qa = read_json(td.str("q/config.json"))["quantization_config"];
  auto qb = read_json(data_path("quant/hf_nf4_qwen2/config.json"))["quantization_config"];
  EXPECT_EQ(qa, qb);
}

TEST(QuantFolder, QuantizeLoadLogitsCloseToFloatModel) {
  for (const char* name : {"qwen2_gqa", "qwen3_bias_tied", "llama_gqa8"}) {
    SCOPED_TRACE(name);
    auto m = Model::load(data_path(std::string("models/") + name));
    const auto ref = run_logits(*m, kIds);
    // Bounds: these tiny random models (weights N(0, 0.02), logits near zero) amplify weight
    // error; measured 0.33-0.35 for NF4 and 0.021-0.029 for Q8_0 (bitsandbytes' own NF4 model
    // gives the same logits as ours, see the tests above). A real model's perplexity change is
    // in docs/benchmarks.md.
    struct Case { io::QuantizeOptions opt; double bound; const char* tag; };
    double err_nf4 = 0, err_q8 = 0;
    for (const Case& c : {Case{{DType::NF4, true}, 0.45, "nf4+dq"}, Case{{DType::NF4, false}, 0.45, "nf4"},
                          Case{{DType::Q8_0, false}, 0.045, "q8_0"}}) {
      TempDir td;
      io::save_quantized_folder(*m, td.str("q"), c.opt);
      auto q = Model::load(td.str("q"));
      for (const auto& [lname, l] : linears(*q)) {
        if (c.opt.type == DType::Q8_0) EXPECT_EQ(l->dtype, DType::Q8_0) << lname;
        else EXPECT_EQ(l->dtype, l->n_in % 64 == 0 ? DType::NF4 : DType::F32) << lname;
      }
      const auto logits = run_logits(*q, kIds);
      const double err = rel_rms(logits, ref);
      std::printf("%s %s: relative RMS logit error vs float = %.4f\n", name, c.tag, err);
      EXPECT_LT(err, c.bound) << c.tag;
      EXPECT_GT(err, 0.0) << c.tag;  // the weights really are quantised
      (c.opt.type == DType::NF4 ? err_nf4 : err_q8) = err;
    }
    // 8 bits per weight is far closer than 4.
    EXPECT_LT(err_q8, err_nf4 / 5);
  }
}

TEST(QuantFolder, Q8_0FolderHoldsGgufBlocksInPlace) {
  TempDir td;
  auto m = Model::load(data_path("models/qwen2_gqa"));
  io::save_quantized_folder(*m, td.str("q"), {DType::Q8_0, true});
  auto ck = io::Checkpoint::open(td.str("q"));
  const io::TensorInfo* t = ck->find("model.layers.1.mlp.down_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype_name, "U8");
  EXPECT_EQ(t->shape, (std::vector<int64_t>{64, 96 / 32 * 34}));
  const auto& down = m->layers()[1].down;
  std::vector<float> w = dense(down);
  std::vector<uint8_t> want(t->nbytes);
  ops::q8_0_quantize(w.data(), want.data(), int64_t(w.size()));
  EXPECT_EQ(std::memcmp(want.data(), t->data, t->nbytes), 0);
  EXPECT_EQ(read_json(td.str("q/config.json"))["quantization_config"]["quant_method"], "q8_0");
}

TEST(QuantFolder, MissingOrBadTensorsAreClearErrors) {
  const std::string src = data_path("quant/hf_nf4_qwen2");
  auto ck = io::SafetensorsFile::open(src + "/model.safetensors");
  auto rewrite = [&](const std::string& drop, const std::string& dir) {
    fs::create_directories(dir);
    std::vector<io::TensorToWrite> tw;
    for (const auto& t : ck->tensors())
      if (t.name != drop) tw.push_back({t.name, t.dtype, t.shape, t.data});
    io::write_safetensors(dir + "/model.safetensors", tw);
    fs::copy_file(src + "/config.json", dir + "/config.json");
  };
  for (const std::string drop : {"model.layers.0.self_attn.q_proj.weight.absmax",
                                 "model.layers.1.mlp.up_proj.weight.nested_absmax",
                                 "model.layers.0.self_attn.k_proj.weight.quant_map",
                                 "model.layers.1.self_attn.o_proj.weight.quant_state.bitsandbytes__nf4"}) {
    TempDir td;
    rewrite(drop, td.str("m"));
    try {
      Model::load(td.str("m"));
      ADD_FAILURE() << "no error without " << drop;
    } catch (const Error& e) {
      const std::string msg = e.what();
      const std::string key = drop.substr(0, drop.find(".quant_state") == std::string::npos ? drop.size()
                                                                                               : drop.find(".quant_state"));
      EXPECT_NE(msg.find(key), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  // An unsupported quant_method is named.
  TempDir td;
  fs::create_directories(td.str("m"));
  fs::copy_file(src + "/model.safetensors", td.str("m/model.safetensors"));
  auto cfg = read_json(src + "/config.json");
  cfg["quantization_config"]["quant_method"] = "gptq";
  std::ofstream(td.str("m/config.json")) << cfg.dump();
  try {
    Model::load(td.str("m"));
    ADD_FAILURE() << "gptq accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gptq"), std::string::npos) << e.what();
  }
}

TEST(QuantFolder, CliQuantize) {
  TempDir td;
  const std::string src = data_path("models/qwen2_gqa");
  auto r = run_qwen("quantize --model " + src + " --type nf4 --out " + td.str("nf4"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("bits per parameter"), std::string::npos) << r.out;
  auto m = Model::load(td.str("nf4"));
  EXPECT_EQ(m->layers()[0].q.dtype, DType::NF4);
  r = run_qwen("quantize --model " + src + " --type q8_0 --out " + td.str("q8"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(Model::load(td.str("q8"))->layers()[0].q.dtype, DType::Q8_0);
  r = run_qwen("quantize --model " + src + " --type nf4 --no-double-quant --out " + td.str("plain"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(read_json(td.str("plain/config.json"))["quantization_config"]["bnb_4bit_use_double_quant"].get<bool>());
  r = run_qwen("quantize --model " + src + " --type int3 --out " + td.str("bad"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("int3"), std::string::npos) << r.err;
  // Quantising a quantised folder is refused with a clear line.
  r = run_qwen("quantize --model " + td.str("nf4") + " --type q8_0 --out " + td.str("again"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("error:"), std::string::npos) << r.err;
}
