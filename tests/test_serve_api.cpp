// tests/test_serve_api.cpp — the OpenAI request parser and response builders (serve/openai_api.h)
// without any networking: every kind of bad input gets a 400 whose error names the field (invalid
// JSON, non-object body, wrong types, missing fields, unknown role or model, out-of-range values,
// prompts past the context, unsupported features), unknown fields are ignored, defaults follow
// OpenAI (completions: 16 tokens; chat: the rest of the context), and the response bodies and
// stream chunks have the shapes the official clients read.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "qwen/tokenizer.h"
#include "serve/openai_api.h"
#include "test_util.h"

namespace {

using namespace qwen;
using namespace qwen::serve;
using json = nlohmann::json;

class ServeApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tok_ = new Tokenizer(Tokenizer::from_dir(qwen_test::data_path("tokenizer/qwen3")));
  }
  static void TearDownTestSuite() { delete tok_; }
  api::ApiContext ctx(bool with_tok = true) {
    api::ApiContext c;
    c.model_name = "m";
    c.tok = with_tok ? tok_ : nullptr;
    c.vocab_size = with_tok ? tok_->vocab_size() : 160;
    c.max_model_len = 64;
    c.stop_ids = {7, 9};
    return c;
  }
  // Parses; returns the error (status 0 when it parsed).
  api::ApiError parse(const std::string& body, bool chat, api::ParsedRequest* out = nullptr,
                      bool with_tok = true) {
    api::ParsedRequest pr;
    api::ApiError e;
    if (api::parse_request(body, chat, ctx(with_tok), out ? out : &pr, &e)) e.status = 0;
    return e;
  }
  void expect_400(const std::string& body, bool chat, const std::string& param,
                  const std::string& words) {
    api::ApiError e = parse(body, chat);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body << " -> " << e.message;
    EXPECT_NE(e.message.find(words), std::string::npos) << body << " -> " << e.message;
    // The error body is the OpenAI shape.
    json j = json::parse(api::error_json(e));
    EXPECT_EQ(j["error"]["message"], e.message);
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    if (param.empty()) EXPECT_TRUE(j["error"]["param"].is_null());
    else EXPECT_EQ(j["error"]["param"], param);
  }
  static Tokenizer* tok_;
};
Tokenizer* ServeApi::tok_ = nullptr;

TEST_F(ServeApi, BadBodies) {
  expect_400("{not json", false, "", "not valid JSON");
  expect_400("", false, "", "not valid JSON");
  expect_400("[1, 2]", false, "", "must be a JSON object");
  expect_400("\"text\"", true, "", "must be a JSON object");
  // Found by tests/fuzz/fuzz_openai_request: a number too large for a double made the JSON
  // library throw out_of_range, which escaped parse_request.
  expect_400(R"({"model": "m", "prompt": "hi", "max_tokens": 99999e9999999999999999999999})", false,
             "", "not valid JSON");
}

TEST_F(ServeApi, MissingAndWrongFields) {
  expect_400(R"({"prompt": "hi"})", false, "model", "'model' is required");
  expect_400(R"({"model": 3, "prompt": "hi"})", false, "model", "must be a string");
  expect_400(R"({"model": "other", "prompt": "hi"})", false, "model", "does not exist");
  EXPECT_EQ(parse(R"({"model": "other", "prompt": "hi"})", false).code, "model_not_found");
  expect_400(R"({"model": "m"})", false, "prompt", "'prompt' is required");
  expect_400(R"({"model": "m", "prompt": {"a": 1}})", false, "prompt", "must be a string");
  expect_400(R"({"model": "m", "prompt": []})", false, "prompt", "empty array");
  expect_400(R"({"model": "m", "prompt": ["a", "b"]})", false, "prompt", "only one prompt");
  expect_400(R"({"model": "m", "prompt": [1, "x"]})", false, "prompt", "prompt[1]");
  expect_400(R"({"model": "m", "prompt": [1, 999999999]})", false, "prompt", "not a token id");
  expect_400(R"({"model": "m", "prompt": ""})", false, "prompt", "encodes to no tokens");
  expect_400(R"({"model": "m", "prompt": "hi", "max_tokens": "5"})", false, "max_tokens", "must be an integer");
  expect_400(R"({"model": "m", "prompt": "hi", "max_tokens": 2.5})", false, "max_tokens", "must be an integer");
  expect_400(R"({"model": "m", "prompt": "hi", "temperature": "hot"})", false, "temperature", "must be a number");
  expect_400(R"({"model": "m", "prompt": "hi", "stream": 1})", false, "stream", "must be a boolean");
  expect_400(R"({"model": "m", "prompt": "hi", "stop": 5})", false, "stop", "string or an array");
  expect_400(R"({"model": "m", "prompt": "hi", "stop": ["a", 1]})", false, "stop", "stop[1]");
  expect_400(R"({"model": "m", "prompt": "hi", "seed": "x"})", false, "seed", "must be an integer");
  expect_400(R"({"model": "m", "prompt": "hi", "stream_options": {"include_usage": true}})", false,
             "stream_options", "only allowed with 'stream': true");
}

TEST_F(ServeApi, OutOfRange) {
  expect_400(R"({"model": "m", "prompt": "hi", "top_p": 1.5})", false, "top_p", "(0, 1]");
  expect_400(R"({"model": "m", "prompt": "hi", "top_p": 0})", false, "top_p", "(0, 1]");
  expect_400(R"({"model": "m", "prompt": "hi", "max_tokens": 0})", false, "max_tokens", "between 1");
  expect_400(R"({"model": "m", "prompt": "hi", "max_tokens": -3})", false, "max_tokens", "between 1");
  expect_400(R"({"model": "m", "prompt": "hi", "temperature": 2.5})", false, "temperature", "[0, 2]");
  expect_400(R"({"model": "m", "prompt": "hi", "temperature": -0.1})", false, "temperature", "[0, 2]");
  expect_400(R"({"model": "m", "prompt": "hi", "top_k": -2})", false, "top_k", "between -1");
  expect_400(R"({"model": "m", "prompt": "hi", "min_p": 1.2})", false, "min_p", "[0, 1]");
  expect_400(R"({"model": "m", "prompt": "hi", "presence_penalty": 3})", false, "presence_penalty", "[-2, 2]");
  expect_400(R"({"model": "m", "prompt": "hi", "frequency_penalty": -2.5})", false, "frequency_penalty", "[-2, 2]");
}

TEST_F(ServeApi, ContextLimit) {
  // max_model_len is 64 here.
  std::string long_prompt = "[" + std::string("1,") + "1";
  for (int i = 0; i < 70; ++i) long_prompt += ",1";
  long_prompt += "]";
  expect_400(R"({"model": "m", "prompt": )" + long_prompt + "}", false, "prompt", "maximum context length is 64");
  EXPECT_EQ(parse(R"({"model": "m", "prompt": )" + long_prompt + "}", false).code, "context_length_exceeded");
  expect_400(R"({"model": "m", "prompt": [1, 2, 3], "max_tokens": 62})", false, "max_tokens", "65 were requested");
  api::ParsedRequest pr;
  ASSERT_EQ(parse(R"({"model": "m", "prompt": [1, 2, 3], "max_tokens": 61})", false, &pr).status, 0);
  EXPECT_EQ(pr.gen.max_tokens, 61);
  // Defaults: completions 16 (or what fits), chat the rest of the context.
  ASSERT_EQ(parse(R"({"model": "m", "prompt": [1, 2, 3]})", false, &pr).status, 0);
  EXPECT_EQ(pr.gen.max_tokens, 16);
  ASSERT_EQ(parse(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}]})", true, &pr).status, 0);
  EXPECT_EQ(pr.gen.max_tokens, 64 - int64_t(pr.gen.prompt.size()));
  ASSERT_EQ(parse(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5})", true, &pr).status, 0);
  EXPECT_EQ(pr.gen.max_tokens, 5);
}

TEST_F(ServeApi, ChatMessages) {
  expect_400(R"({"model": "m"})", true, "messages", "'messages' is required");
  expect_400(R"({"model": "m", "messages": "hi"})", true, "messages", "must be an array");
  expect_400(R"({"model": "m", "messages": []})", true, "messages", "at least one");
  expect_400(R"({"model": "m", "messages": [3]})", true, "messages[0]", "must be an object");
  expect_400(R"({"model": "m", "messages": [{"content": "hi"}]})", true, "messages[0].role", "is required");
  expect_400(R"({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "hi"}]})",
             true, "messages[1].role", "'wizard' is not a supported role");
  expect_400(R"({"model": "m", "messages": [{"role": "user"}]})", true, "messages[0].content", "is required");
  expect_400(R"({"model": "m", "messages": [{"role": "user", "content": 5}]})", true, "messages[0].content", "must be a string");
  expect_400(R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", true,
             "messages[0].content", "only text parts");
  // Text parts are joined; the prompt is the ChatML template encoded.
  api::ParsedRequest pr;
  ASSERT_EQ(parse(R"({"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]})",
                  true, &pr).status, 0);
  const std::string want = tok_->apply_chat_template({{"system", "Be brief."}, {"user", "Hello"}}, true);
  EXPECT_EQ(pr.gen.prompt, tok_->encode(want, false));
  EXPECT_TRUE(pr.chat);
}

TEST_F(ServeApi, UnsupportedFeaturesSaySo) {
  expect_400(R"({"model": "m", "prompt": "hi", "n": 2})", false, "n", "not supported");
  expect_400(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3})", true, "n", "not supported");
  expect_400(R"({"model": "m", "prompt": "hi", "echo": true})", false, "echo", "not supported");
  expect_400(R"({"model": "m", "prompt": "hi", "best_of": 2})", false, "best_of", "not supported");
  expect_400(R"({"model": "m", "prompt": "hi", "logprobs": 2})", false, "logprobs", "not supported");
  expect_400(R"({"model": "m", "prompt": "hi", "logit_bias": {"5": 10}})", false, "logit_bias", "not supported");
  expect_400(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]})",
             true, "tools", "not supported");
  expect_400(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}})",
             true, "response_format", "not supported");
}

TEST_F(ServeApi, UnknownFieldsIgnoredAndValuesTaken) {
  api::ParsedRequest pr;
  const std::string body = R"({"model": "m", "prompt": "Hello world", "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 1234, "stop": ["\n\n", "END"],
      "stop_token_ids": [3], "presence_penalty": 0.5, "frequency_penalty": -0.5, "stream": true,
      "stream_options": {"include_usage": true}, "user": "u1", "some_future_field": {"x": [1]},
      "n": 1, "logprobs": null, "echo": false, "suffix": null, "logit_bias": {}})";
  ASSERT_EQ(parse(body, false, &pr).status, 0);
  EXPECT_EQ(pr.gen.prompt, tok_->encode("Hello world", true));
  EXPECT_EQ(pr.gen.max_tokens, 7);
  EXPECT_FLOAT_EQ(pr.gen.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(pr.gen.sampling.top_p, 0.9f);
  EXPECT_EQ(pr.gen.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(pr.gen.sampling.min_p, 0.05f);
  EXPECT_EQ(pr.gen.sampling.seed, 1234u);
  EXPECT_FLOAT_EQ(pr.gen.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(pr.gen.sampling.frequency_penalty, -0.5f);
  EXPECT_EQ(pr.gen.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(pr.gen.stop_ids, (std::vector<int32_t>{7, 9, 3}));  // defaults, then the request's
  EXPECT_TRUE(pr.stream);
  EXPECT_TRUE(pr.include_usage);
  // ignore_eos drops the default stop ids; top_k -1 means off.
  ASSERT_EQ(parse(R"({"model": "m", "prompt": [1], "ignore_eos": true, "top_k": -1, "stop": "x"})", false, &pr).status, 0);
  EXPECT_TRUE(pr.gen.stop_ids.empty());
  EXPECT_EQ(pr.gen.sampling.top_k, 0);
  EXPECT_EQ(pr.gen.stop, (std::vector<std::string>{"x"}));
}

TEST_F(ServeApi, WithoutTokenizer) {
  api::ParsedRequest pr;
  api::ApiError e = parse(R"({"model": "m", "prompt": "hi"})", false, &pr, false);
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message.find("no tokenizer"), std::string::npos);
  e = parse(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}]})", true, &pr, false);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "messages");
  ASSERT_EQ(parse(R"({"model": "m", "prompt": [1, 2, 159], "return_token_ids": true})", false, &pr, false).status, 0);
  EXPECT_EQ(pr.gen.prompt, (std::vector<int32_t>{1, 2, 159}));
  EXPECT_FALSE(pr.gen.want_text);
  EXPECT_TRUE(pr.return_token_ids);
  e = parse(R"({"model": "m", "prompt": [1, 160]})", false, &pr, false);
  EXPECT_EQ(e.param, "prompt");
}

TEST_F(ServeApi, ResponseShapes) {
  api::ParsedRequest pr;
  ASSERT_EQ(parse(R"({"model": "m", "prompt": "hi", "return_token_ids": true})", false, &pr).status, 0);
  RequestOutput out;
  out.text = "abc";
  out.tokens = {5, 6};
  out.finished = true;
  out.reason = FinishReason::kLength;
  out.prompt_tokens = 3;
  out.completion_tokens = 2;
  out.cached_tokens = 1;
  json j = json::parse(api::response_json(pr, "cmpl-1", 100, "m", out));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "abc");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["token_ids"], json({5, 6}));
  EXPECT_EQ(j["usage"]["total_tokens"], 5);
  EXPECT_EQ(j["usage"]["prompt_tokens_details"]["cached_tokens"], 1);

  api::ParsedRequest chat;
  ASSERT_EQ(parse(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true})", true, &chat).status, 0);
  out.reason = FinishReason::kStop;
  j = json::parse(api::response_json(chat, "c-1", 100, "m", out));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "abc");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  j = json::parse(api::chunk_json(chat, "c-1", 100, "m", "", {}, nullptr, true));
  EXPECT_EQ(j["object"], "chat.completion.chunk");
  EXPECT_EQ(j["choices"][0]["delta"]["role"], "assistant");
  j = json::parse(api::chunk_json(chat, "c-1", 100, "m", "de", {1}, nullptr, false));
  EXPECT_EQ(j["choices"][0]["delta"]["content"], "de");
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  j = json::parse(api::chunk_json(chat, "c-1", 100, "m", "", {}, "length", false));
  EXPECT_TRUE(j["choices"][0]["delta"].empty());
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  j = json::parse(api::usage_chunk_json(chat, "c-1", 100, "m", out));
  EXPECT_TRUE(j["choices"].empty());
  EXPECT_EQ(j["usage"]["completion_tokens"], 2);
}

}  // namespace
