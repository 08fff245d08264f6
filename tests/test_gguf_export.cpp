// tests/test_gguf_export.cpp — `qwen export --format gguf` of the tiny test models against pip
// `gguf` and llama.cpp (tests/data/gguf/export_golden.json, made by gen_export_golden.py from the
// same deterministic exports): the keys, tensor names, shapes and types gguf-py read back, and
// llama.cpp's greedy continuations of a fixed prompt compared with ours — from the Hugging Face
// folder for F32/F16 exports, from the exported file for Q8_0 (the quantised weights are the
// model then).
#include <gtest/gtest.h>

#include <cmath>

#include "generate/generator.h"
#include "io/gguf.h"
#include "io/gguf_model.h"
#include "model/model.h"
#include "test_gguf_util.h"
#include "test_util.h"

using namespace qwen;
using qwen_test::TempDir;

namespace {

const nlohmann::json& golden() {
  static nlohmann::json j = qwen_test::read_json(qwen_test::data_path("gguf/export_golden.json"));
  return j;
}


}  // namespace

TEST(GgufExport, KeysAndTensorsAsGgufPyReadThem) {
  for (const auto& [name, types] : golden()["models"].items()) {
    for (const auto& [type, g] : types.items()) {
      SCOPED_TRACE(name + " " + type);
      TempDir td;
      DType dt = type == "f32" ? DType::F32 : type == "f16" ? DType::F16 : DType::Q8_0;
      io::export_gguf(qwen_test::data_path("models/" + name), td.str("m.gguf"), dt);
      auto f = io::GgufFile::open(td.str("m.gguf"));
      size_t n_keys = 0;
      for (const auto& [k, v] : f->metadata()) {
        ++n_keys;
        ASSERT_TRUE(g["keys"].contains(k)) << "key " << k << " not seen by gguf-py";
        const auto& want = g["keys"][k];
        if (v.type == io::GgufType::ARRAY) {
          EXPECT_EQ(want["type"], "array") << k;
          EXPECT_EQ(v.count, want["count"].get<uint64_t>()) << k;
        } else if (v.type == io::GgufType::STRING) {
          EXPECT_EQ(want["type"], "STRING") << k;
          EXPECT_EQ(v.str, want["value"].get<std::string>()) << k;
        } else if (v.is_float()) {
          EXPECT_EQ(want["type"], "FLOAT32") << k;
          EXPECT_EQ(float(v.f), want["value"].get<float>()) << k;
        } else {
          EXPECT_EQ(want["type"], v.type == io::GgufType::BOOL ? "BOOL" : v.type == io::GgufType::U32 ? "UINT32" : "other") << k;
          EXPECT_EQ(v.i, want["value"].get<int64_t>()) << k;
        }
      }
      EXPECT_EQ(n_keys, g["keys"].size());
      ASSERT_EQ(f->tensors().size(), g["tensors"].size());
      for (size_t i = 0; i < f->tensors().size(); ++i) {
        const auto& t = f->tensors()[i];
        const auto& w = g["tensors"][i];
        EXPECT_EQ(t.name, w["name"].get<std::string>());
        EXPECT_EQ(t.ne, w["ne"].get<std::vector<int64_t>>()) << t.name;
        EXPECT_EQ(io::ggml_type_name(t.type), w["type"].get<std::string>()) << t.name;
      }
    }
  }
}

// llama.cpp's greedy continuation of the exported file against ours (tests/test_gguf_util.h
// has the near-tie argument): from the Hugging Face folder for F32 / F16 exports, from the
// exported file for Q8_0.
TEST(GgufExport, LlamaCppGreedyMatchesOurs) {
  const std::vector<int32_t> prompt = golden()["prompt"];
  for (const auto& [name, types] : golden()["models"].items()) {
    const std::string dir = qwen_test::data_path("models/" + name);
    auto hf = Model::load(dir);
    for (const auto& [type, g] : types.items()) {
      SCOPED_TRACE(name + " " + type);
      const std::vector<int32_t> want = g["greedy"];
      qwen_test::GreedyCheck r;
      if (type == "q8_0") {
        TempDir td;
        io::export_gguf(dir, td.str("m.gguf"), DType::Q8_0);
        r = qwen_test::check_greedy(*Model::load(td.str("m.gguf")), prompt, want, g);
      } else {
        r = qwen_test::check_greedy(*hf, prompt, want, g);
      }
      if (type != "q8_0") {
        EXPECT_EQ(r.agree, want.size()) << "F32/F16 weights: llama.cpp and our HF-folder run must agree";
      }
      if (r.agree < want.size()) {
        EXPECT_LE(r.ref_margin, 2 * r.e) << "parted from llama.cpp at step " << r.agree << " where the exact model was clear";
      }
    }
  }
}
