// serve/openai_api.h — the OpenAI-compatible request and response bodies, with no networking:
// parse_request() turns the JSON of POST /v1/completions or /v1/chat/completions into an engine
// request or an OpenAI-style error naming the field; the *_json() functions build the response
// bodies and the server-sent-event chunks. Kept apart from the HTTP code so it is tested directly.
//
// Rules: unknown fields are ignored (as OpenAI-compatible servers do) and JSON null counts as
// absent; known fields with a wrong type or out of range, missing required fields, an unknown
// role or model, and prompts longer than the context are 400s that name the field; supported but
// unimplemented values (n > 1, echo, logprobs, tools, ...) are 400s that say so.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "qwen/tokenizer.h"
#include "serve/engine.h"

namespace qwen::serve::api {

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" -> null
  std::string code;   // "" -> null
};
// {"error": {"message", "type", "param", "code"}}
std::string error_json(const ApiError& e);

struct ApiContext {
  std::string model_name;
  const Tokenizer* tok = nullptr;  // null: token-id prompts only, no text
  int64_t vocab_size = 0;
  int64_t max_model_len = 0;
  std::vector<int32_t> stop_ids;   // end-of-generation ids applied unless ignore_eos
};

struct ParsedRequest {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
  bool return_token_ids = false;  // extension: token ids in the choices
  GenerationRequest gen;
};

// Returns false and fills *err for a bad request.
bool parse_request(const std::string& body, bool chat, const ApiContext& ctx, ParsedRequest* out,
                   ApiError* err);

// "stop", "length", or "abort" (cancelled: the server is shutting down).
const char* api_finish_reason(FinishReason r);

// The whole (non-streamed) response.
std::string response_json(const ParsedRequest& pr, const std::string& id, int64_t created,
                          const std::string& model, const RequestOutput& out);
// One streamed chunk (the JSON after "data: "). Chat: role_only sends {"role":"assistant"}.
// finish: null for a content chunk, else the finish reason of the last chunk.
std::string chunk_json(const ParsedRequest& pr, const std::string& id, int64_t created,
                       const std::string& model, const std::string& text,
                       const std::vector<int32_t>& tokens, const char* finish, bool role_only);
// The same chunk appended to *out (the streaming path reuses one buffer per stream).
void append_chunk_json(std::string* out, const ParsedRequest& pr, std::string_view id,
                       int64_t created, std::string_view model, std::string_view text,
                       const int32_t* tokens, size_t n_tokens, const char* finish,
                       bool role_only);
// The final usage-only chunk (stream_options.include_usage).
std::string usage_chunk_json(const ParsedRequest& pr, const std::string& id, int64_t created,
                             const std::string& model, const RequestOutput& out);

}  // namespace qwen::serve::api
