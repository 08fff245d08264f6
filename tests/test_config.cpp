// tests/test_config.cpp — ModelConfig::from_json / to_json / validate: released Qwen2.5, Qwen3 and
// Llama 3.1 config.json files, the transformers v5 format (rope_parameters), every rope type,
// one-line errors naming the key, and round trips. ConfigExport writes configs for
// tests/data/rope/gen_rope_golden.py --check-config-export, which loads them in transformers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/rope.h"
#include "qwen/config.h"
#include "qwen/error.h"

using nlohmann::json;
using qwen::Error;
using qwen::ModelConfig;
namespace fs = std::filesystem;

namespace {

// config.json of Qwen/Qwen2.5-1.5B-Instruct (as released).
const char* kQwen25 = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 1536,
  "initializer_range": 0.02,
  "intermediate_size": 8960,
  "max_position_embeddings": 32768,
  "max_window_layers": 21,
  "model_type": "qwen2",
  "num_attention_heads": 12,
  "num_hidden_layers": 28,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// config.json of Qwen/Qwen3-0.6B (head_dim 128 != hidden/heads = 64).
const char* kQwen3 = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// config.json of meta-llama/Llama-3.1-8B-Instruct.
const char* kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

// A small valid config with one key replaced / added / removed.
json small(const std::string& model_type = "qwen2") {
  const char* arch = model_type == "qwen2" ? "Qwen2ForCausalLM"
                     : model_type == "qwen3" ? "Qwen3ForCausalLM"
                                             : "LlamaForCausalLM";
  return {{"architectures", {arch}}, {"model_type", model_type}, {"vocab_size", 100},
          {"hidden_size", 64},       {"intermediate_size", 96},  {"num_hidden_layers", 2},
          {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"rope_theta", 10000.0}};
}

ModelConfig parse(const json& j) { return ModelConfig::from_json(j.dump(), "test/config.json"); }

// Expects from_json to throw one line that names the file and contains every needle.
void expect_error_text(const std::string& text, std::initializer_list<std::string> needles) {
  try {
    ModelConfig::from_json(text, "dir/config.json");
    ADD_FAILURE() << "accepted: " << text;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("dir/config.json: ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nneedle: " << n;
  }
}
void expect_error(const json& j, std::initializer_list<std::string> needles) { expect_error_text(j.dump(), needles); }

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.qk_norm, b.qk_norm);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.hidden_act, b.hidden_act);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  // The frequencies are what matters downstream.
  EXPECT_EQ(qwen::rope_frequencies(a, 5000).inv_freq, qwen::rope_frequencies(b, 5000).inv_freq);
  EXPECT_EQ(qwen::rope_frequencies(a).attention_factor, qwen::rope_frequencies(b).attention_factor);
}

}  // namespace

TEST(Config, Qwen25Released) {
  ModelConfig c = ModelConfig::from_json(kQwen25);
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 1536);
  EXPECT_EQ(c.intermediate_size, 8960);
  EXPECT_EQ(c.num_hidden_layers, 28);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_FALSE(c.explicit_head_dim);
  EXPECT_EQ(c.q_dim(), 1536);
  EXPECT_EQ(c.kv_dim(), 256);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{151645});
  EXPECT_EQ(c.pad_token_id, -1);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(Config, Qwen3Released) {
  ModelConfig c = ModelConfig::from_json(kQwen3);
  EXPECT_EQ(c.model_type, "qwen3");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_TRUE(c.explicit_head_dim);
  EXPECT_EQ(c.q_dim(), 2048);  // != hidden_size
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_EQ(c.rope_theta, 1e6);  // integer 1000000 in the file
  EXPECT_EQ(c.max_position_embeddings, 40960);

  json j = json::parse(kQwen3);
  j["attention_bias"] = true;  // q, k, v AND o
  ModelConfig b = parse(j);
  EXPECT_TRUE(b.qkv_bias);
  EXPECT_TRUE(b.o_bias);
  j.erase("head_dim");  // Qwen3Config default
  EXPECT_EQ(parse(j).head_dim, 128);
}

TEST(Config, Llama31Released) {
  ModelConfig c = ModelConfig::from_json(kLlama31);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.head_dim, 128);  // hidden / heads
  EXPECT_FALSE(c.explicit_head_dim);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);

  json j = json::parse(kLlama31);
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  j["head_dim"] = 64;
  ModelConfig b = parse(j);
  EXPECT_TRUE(b.qkv_bias && b.o_bias && b.mlp_bias);
  EXPECT_EQ(b.head_dim, 64);
  EXPECT_TRUE(b.explicit_head_dim);
  j["head_dim"] = nullptr;  // LlamaConfig: None -> hidden / heads
  EXPECT_EQ(parse(j).head_dim, 128);
  j.erase("max_position_embeddings");
  j.erase("rope_scaling");
  EXPECT_EQ(parse(j).max_position_embeddings, 2048);  // LlamaConfig default
}

TEST(Config, Qwen2HeadDimKey) {
  json j = small();
  j["head_dim"] = 16;  // equal to 64 / 4
  ModelConfig c = parse(j);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_TRUE(c.explicit_head_dim);
  j["head_dim"] = 32;  // Qwen2 modeling ignores it
  c = parse(j);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FALSE(c.explicit_head_dim);
  j["attention_bias"] = false;  // no such key for Qwen2: biases are hard-coded
  c = parse(j);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
}

TEST(Config, KvHeadsDefaultAndTokenIds) {
  json j = small();
  j["num_key_value_heads"] = nullptr;
  EXPECT_EQ(parse(j).num_key_value_heads, 4);
  j.erase("num_key_value_heads");
  EXPECT_EQ(parse(j).num_key_value_heads, 4);
  j["eos_token_id"] = {7, 8};
  j["bos_token_id"] = nullptr;
  j["pad_token_id"] = 3;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{7, 8}));
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.pad_token_id, 3);
  j["eos_token_id"] = nullptr;
  EXPECT_TRUE(parse(j).eos_token_ids.empty());
  // transformers >= 4.56 writes "dtype"; both are read.
  j["dtype"] = "float16";
  EXPECT_EQ(parse(j).torch_dtype, "float16");
  j["torch_dtype"] = "bfloat16";
  EXPECT_EQ(parse(j).torch_dtype, "bfloat16");
  // LlamaConfig's defaults apply when the keys are absent; null means none.
  json l = small("llama");
  ModelConfig lc = parse(l);
  EXPECT_EQ(lc.bos_token_id, 1);
  EXPECT_EQ(lc.eos_token_ids, std::vector<int64_t>{2});
  l["bos_token_id"] = nullptr;
  l["eos_token_id"] = nullptr;
  lc = parse(l);
  EXPECT_EQ(lc.bos_token_id, -1);
  EXPECT_TRUE(lc.eos_token_ids.empty());
  json lo = json::parse(lc.to_json());  // written as explicit nulls so transformers agrees
  EXPECT_TRUE(lo["bos_token_id"].is_null());
  EXPECT_TRUE(lo["eos_token_id"].is_null());
  EXPECT_TRUE(parse(lo).eos_token_ids.empty());
  // Only model_type, or only architectures.
  json k = small("qwen3");
  k.erase("architectures");
  EXPECT_EQ(parse(k).architecture, "Qwen3ForCausalLM");
  k = small("llama");
  k.erase("model_type");
  EXPECT_EQ(parse(k).model_type, "llama");
}

TEST(Config, RopeKeysAllSpellings) {
  json j = small();
  // Legacy "type" and v5 "rope_type".
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 3}};
  c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, "dynamic");
  EXPECT_EQ(c.rope_scaling.factor, 3.0);
  // v5: rope_parameters holding rope_theta, no top-level key.
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 123456.0}};
  c = parse(j);
  EXPECT_EQ(c.rope_theta, 123456.0);
  EXPECT_EQ(c.rope_scaling.type, "default");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 5e5}, {"factor", 4.0},
                          {"original_max_position_embeddings", 4096}, {"beta_fast", 16},
                          {"attention_factor", 1.5}, {"truncate", false}, {"mscale", 1}, {"mscale_all_dim", 0}};
  c = parse(j);
  EXPECT_EQ(c.rope_theta, 5e5);
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_TRUE(c.rope_scaling.has_original_max);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope_scaling.beta_fast, 16);
  EXPECT_EQ(c.rope_scaling.beta_slow, 1);
  EXPECT_TRUE(c.rope_scaling.has_attention_factor);
  EXPECT_EQ(c.rope_scaling.attention_factor, 1.5);
  EXPECT_FALSE(c.rope_scaling.truncate);
  EXPECT_TRUE(c.rope_scaling.has_mscale);
  EXPECT_TRUE(c.rope_scaling.has_mscale_all_dim);
  // No rope_theta anywhere: the class default.
  j["rope_parameters"] = nullptr;
  EXPECT_EQ(parse(j).rope_theta, 10000.0);
  // Top-level rope_theta is used when the rope dict has none.
  j["rope_theta"] = 777.0;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(parse(j).rope_theta, 777.0);
  // YaRN without factor: max_position_embeddings / original (transformers' rule).
  j["max_position_embeddings"] = 65536;
  j["rope_scaling"] = {{"type", "yarn"}, {"original_max_position_embeddings", 16384}};
  EXPECT_EQ(parse(j).rope_scaling.factor, 4.0);
  // YaRN without original: falls back to max_position_embeddings.
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}};
  c = parse(j);
  EXPECT_FALSE(c.rope_scaling.has_original_max);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 65536);
  // An empty rope_scaling dict means default.
  j["rope_scaling"] = json::object();
  EXPECT_EQ(parse(j).rope_scaling.type, "default");
}

TEST(Config, ClearErrors) {
  expect_error_text("{\"hidden_size\": 64,", {"not valid JSON"});
  expect_error_text(std::string("{}\0{\"x\":1}", 10), {"not valid JSON"});
  expect_error_text("[1, 2]", {"must be a JSON object"});
  json j = small();
  j["architectures"] = {"MistralForCausalLM"};
  expect_error(j, {"unknown architecture 'MistralForCausalLM'", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                   "LlamaForCausalLM"});
  j = small();
  j.erase("architectures");
  j["model_type"] = "gemma";
  expect_error(j, {"unknown model_type 'gemma'", "Qwen2ForCausalLM (qwen2)"});
  j = small();
  j["model_type"] = "qwen3";
  expect_error(j, {"does not match model_type 'qwen3'"});
  j = small();
  j.erase("architectures");
  j.erase("model_type");
  expect_error(j, {"no 'architectures' or 'model_type'"});
  j = small();
  j["hidden_size"] = "64";
  expect_error(j, {"key 'hidden_size' must be an integer, got a string"});
  j = small();
  j["hidden_size"] = 64.5;
  expect_error(j, {"key 'hidden_size' must be an integer"});
  j = small();
  j["tie_word_embeddings"] = 1;
  expect_error(j, {"key 'tie_word_embeddings' must be true or false"});
  j = small();
  j["rms_norm_eps"] = "1e-6";
  expect_error(j, {"key 'rms_norm_eps' must be a number"});
  j = small();
  j["architectures"] = "Qwen2ForCausalLM";
  expect_error(j, {"key 'architectures' must be a list of strings"});
  j = small();
  j["eos_token_id"] = "2";
  expect_error(j, {"key 'eos_token_id' must be an integer or a list of integers"});
  j = small();
  j["eos_token_id"] = {1, "x"};
  expect_error(j, {"key 'eos_token_id'"});
  j = small();
  j.erase("vocab_size");
  expect_error(j, {"key 'vocab_size' is missing"});
  j = small();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", "2"}};
  expect_error(j, {"key 'rope_scaling.factor' must be a number"});
  j["rope_scaling"] = {{"type", "linear"}};
  expect_error(j, {"key 'rope_scaling.factor' is missing"});
  j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", {1}}, {"long_factor", {1}}};
  expect_error(j, {"rope type 'longrope' is not supported"});
  j["rope_scaling"] = {{"rope_type", "ntk-by-parts"}, {"factor", 2}};
  expect_error(j, {"unknown rope type 'ntk-by-parts'", "default, linear, dynamic, yarn, llama3"});
  j["rope_scaling"] = {{"rope_type", 3}};
  expect_error(j, {"key 'rope_scaling.rope_type' must be a string"});
  j["rope_scaling"] = "yarn";
  expect_error(j, {"key 'rope_scaling' must be an object"});
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8}, {"high_freq_factor", 4}};
  expect_error(j, {"key 'rope_scaling.low_freq_factor' is missing"});
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}, {"truncate", "no"}};
  expect_error(j, {"key 'rope_scaling.truncate' must be true or false"});
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}}}};
  expect_error(j, {"per-layer-type"});
  // validate(): inconsistent numbers.
  j = small();
  j["num_key_value_heads"] = 3;
  expect_error(j, {"num_attention_heads = 4 is not a multiple of num_key_value_heads = 3"});
  j = small();
  j["num_hidden_layers"] = 0;
  expect_error(j, {"num_hidden_layers = 0"});
  j = small();
  j["vocab_size"] = -5;
  expect_error(j, {"vocab_size = -5"});
  j = small("qwen3");
  j["head_dim"] = 15;
  expect_error(j, {"head_dim = 15 must be even"});
  j = small();
  j["hidden_size"] = 66;  // not divisible by 4 heads
  expect_error(j, {"hidden_size = 66 is not a multiple of num_attention_heads = 4"});
  j = small();
  j["rope_theta"] = -1.0;
  expect_error(j, {"rope_theta must be a positive number"});
  j = small();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 0}};
  expect_error(j, {"factor must be a positive number"});
  j = small();
  j["use_sliding_window"] = true;
  expect_error(j, {"use_sliding_window"});
  j = small();
  j["hidden_size"] = 1e300;
  expect_error(j, {"key 'hidden_size'"});
  EXPECT_THROW(ModelConfig::from_file("/nonexistent/config.json"), Error);
}

TEST(Config, ToJsonWritesTransformersKeys) {
  ModelConfig c = ModelConfig::from_json(kQwen25);
  const std::string text = c.to_json();
  EXPECT_EQ(text.rfind("{\n  \"architectures\": [\n    \"Qwen2ForCausalLM\"\n  ],", 0), 0u) << text;  // indent 2
  json j = json::parse(text);
  EXPECT_FALSE(j.contains("head_dim"));  // never for qwen2
  EXPECT_EQ(j["model_type"], "qwen2");
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["rope_theta"].get<double>(), 1e6);
  EXPECT_TRUE(j["rope_scaling"].is_null());
  EXPECT_EQ(j["eos_token_id"], 151645);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_TRUE(j["tie_word_embeddings"].get<bool>());
  EXPECT_FALSE(j.contains("pad_token_id"));
  expect_same(c, ModelConfig::from_json(text));

  ModelConfig q3 = ModelConfig::from_json(kQwen3);
  json j3 = json::parse(q3.to_json());
  EXPECT_EQ(j3["head_dim"], 128);
  EXPECT_EQ(j3["attention_bias"], false);
  expect_same(q3, ModelConfig::from_json(q3.to_json()));

  ModelConfig l = ModelConfig::from_json(kLlama31);
  json jl = json::parse(l.to_json());
  EXPECT_EQ(jl["eos_token_id"], json({128001, 128008, 128009}));
  EXPECT_EQ(jl["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(jl["rope_scaling"]["type"], "llama3");
  EXPECT_EQ(jl["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_EQ(jl["rope_scaling"]["low_freq_factor"], 1.0);
  EXPECT_EQ(jl["max_position_embeddings"], 131072);
  expect_same(l, ModelConfig::from_json(l.to_json()));
}

TEST(Config, ToJsonYarnSetsMaxPositions) {
  // The Qwen2.5 YaRN recipe added to a 32768-position config: writers emit
  // max_position_embeddings = factor * original so every transformers version agrees.
  json j = json::parse(kQwen25);
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  json out = json::parse(c.to_json());
  EXPECT_EQ(out["max_position_embeddings"], 131072);
  EXPECT_EQ(out["rope_scaling"]["original_max_position_embeddings"], 32768);
  EXPECT_EQ(out["rope_scaling"]["factor"], 4.0);
  EXPECT_FALSE(out["rope_scaling"].contains("truncate"));
  ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.max_position_embeddings, 131072);
  expect_same(c, back);
  // Optional YaRN keys survive the round trip.
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 2.5}, {"original_max_position_embeddings", 8192},
                       {"beta_fast", 16.0}, {"beta_slow", 2.0}, {"attention_factor", 1.25}, {"truncate", false}};
  c = parse(j);
  back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.rope_scaling.beta_fast, 16.0);
  EXPECT_EQ(back.rope_scaling.beta_slow, 2.0);
  EXPECT_EQ(back.rope_scaling.attention_factor, 1.25);
  EXPECT_FALSE(back.rope_scaling.truncate);
  expect_same(c, back);
}

TEST(Config, FromFileNamesThePath) {
  std::string tmpl = (fs::temp_directory_path() / "qwen_cfg_XXXXXX").string();
  const std::string dir = mkdtemp(tmpl.data());
  const std::string path = dir + "/config.json";
  {
    std::ofstream f(path);
    json j = small();
    j["hidden_size"] = true;
    f << j.dump();
  }
  try {
    ModelConfig::from_file(path);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": key 'hidden_size'"), std::string::npos) << e.what();
  }
  {
    std::ofstream f(path);
    f << kQwen3;
  }
  EXPECT_EQ(ModelConfig::from_file(path).head_dim, 128);
  fs::remove_all(dir);
}

// Writes <case>/config.json + expected.json for gen_rope_golden.py --check-config-export, which
// loads each with transformers. Without QWEN_EXPORT_DIR the files go to a temp folder.
TEST(ConfigExport, WritesConfigsForTransformers) {
  const char* env = std::getenv("QWEN_EXPORT_DIR");
  std::string tmpl = (fs::temp_directory_path() / "qwen_cfgx_XXXXXX").string();
  const std::string out = env ? std::string(env) : std::string(mkdtemp(tmpl.data()));
  auto emit = [&](const std::string& name, const json& in) {
    ModelConfig c = parse(in);
    const std::string text = c.to_json();
    ModelConfig back = ModelConfig::from_json(text);
    expect_same(c, back);
    qwen::RopeFreqs f = qwen::rope_frequencies(back);
    json exp = {{"architecture", back.architecture},
                {"head_dim", back.head_dim},
                {"num_key_value_heads", back.num_key_value_heads},
                {"qkv_bias", back.qkv_bias},
                {"o_bias", back.o_bias},
                {"mlp_bias", back.mlp_bias},
                {"qk_norm", back.qk_norm},
                {"tie_word_embeddings", back.tie_word_embeddings},
                {"max_position_embeddings", back.max_position_embeddings},
                {"torch_dtype", back.torch_dtype},
                {"inv_freq", f.inv_freq},
                {"attention_factor", f.attention_factor}};
    if (back.eos_token_ids.size() == 1) exp["eos_token_id"] = back.eos_token_ids[0];
    else if (back.eos_token_ids.empty()) exp["eos_token_id"] = nullptr;
    else exp["eos_token_id"] = back.eos_token_ids;
    fs::create_directories(out + "/" + name);
    std::ofstream(out + "/" + name + "/config.json") << text;
    std::ofstream(out + "/" + name + "/expected.json") << exp.dump(1);
  };
  json j = small("qwen2");
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = {1, 2};
  j["torch_dtype"] = "bfloat16";
  emit("qwen2_tied", j);
  j = small("qwen2");
  j["max_position_embeddings"] = 32768;
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096}};
  j["torch_dtype"] = "float32";
  emit("qwen2_yarn", j);
  j = small("qwen3");
  j["head_dim"] = 32;
  j["attention_bias"] = true;
  j["eos_token_id"] = 5;
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 2.0},
                          {"original_max_position_embeddings", 2048}, {"beta_fast", 8.0}, {"attention_factor", 1.2}};
  j["torch_dtype"] = "bfloat16";
  emit("qwen3_bias_yarn", j);
  j = small("llama");
  j["mlp_bias"] = true;
  j["max_position_embeddings"] = 65536;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  j["torch_dtype"] = "float16";
  emit("llama_llama3_mlp_bias", j);
  j = small("llama");
  j["head_dim"] = 32;
  j["attention_bias"] = true;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  j["torch_dtype"] = "float32";
  emit("llama_head_dim_linear", j);
  if (!env) fs::remove_all(out);
}
