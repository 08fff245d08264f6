// serve/openai_api.cpp — see openai_api.h.
#include "serve/openai_api.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

namespace qwen::serve::api {

using json = nlohmann::json;

std::string error_json(const ApiError& e) {
  json j = {{"error",
             {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

const char* api_finish_reason(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "abort";
    case FinishReason::kNone: return "stop";
  }
  return "stop";
}

namespace {

// Thrown inside the parser, caught by parse_request.
struct Bad {
  ApiError e;
};

[[noreturn]] void bad(const std::string& param, const std::string& msg,
                      const std::string& code = "") {
  ApiError e;
  e.param = param;
  e.message = msg;
  e.code = code;
  throw Bad{e};
}

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    default: return "a value";
  }
}

// The field if present and not null.
const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

bool get_bool(const json& body, const char* key, bool def) {
  const json* v = field(body, key);
  if (!v) return def;
  if (!v->is_boolean()) bad(key, std::string("'") + key + "' must be a boolean, got " + type_name(*v));
  return v->get<bool>();
}

int64_t get_int(const json& body, const char* key, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(body, key);
  if (!v) return def;
  int64_t x = 0;
  if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    x = u > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(u);
  } else if (v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() &&
             std::fabs(v->get<double>()) < 9e15) {
    x = int64_t(v->get<double>());
  } else {
    bad(key, std::string("'") + key + "' must be an integer, got " + type_name(*v));
  }
  if (x < lo || x > hi)
    bad(key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " +
                 std::to_string(hi) + ", got " + std::to_string(x));
  return x;
}

// lo_open / hi_open: the bound itself is excluded.
double get_num(const json& body, const char* key, double def, double lo, double hi,
               bool lo_open = false, bool hi_open = false) {
  const json* v = field(body, key);
  if (!v) return def;
  if (!v->is_number()) bad(key, std::string("'") + key + "' must be a number, got " + type_name(*v));
  const double x = v->get<double>();
  const bool ok = std::isfinite(x) && (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  if (!ok) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "'%s' must be in %c%g, %g%c, got %g", key, lo_open ? '(' : '[',
                  lo, hi, hi_open ? ')' : ']', x);
    bad(key, buf);
  }
  return x;
}

std::vector<int32_t> token_ids(const json& arr, const std::string& param, int64_t vocab) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& t = arr[i];
    if (!t.is_number_integer() && !t.is_number_unsigned())
      bad(param, "'" + param + "[" + std::to_string(i) + "]' must be a token id (integer), got " +
                     type_name(t));
    const int64_t id = t.get<int64_t>();
    if (id < 0 || id >= vocab)
      bad(param, "'" + param + "[" + std::to_string(i) + "]' = " + std::to_string(id) +
                     " is not a token id of this model (vocabulary of " + std::to_string(vocab) + ")");
    ids.push_back(int32_t(id));
  }
  return ids;
}

[[noreturn]] void unsupported(const char* key, const std::string& what) {
  bad(key, std::string("'") + key + "' " + what + " is not supported by this server");
}

std::vector<int32_t> parse_prompt(const json& body, const ApiContext& ctx) {
  const json* p = field(body, "prompt");
  if (!p) bad("prompt", "'prompt' is required");
  auto encode = [&](const std::string& text) {
    if (!ctx.tok)
      bad("prompt", "this model has no tokenizer; send 'prompt' as an array of token ids");
    try {
      return ctx.tok->encode(text, true);
    } catch (const Error& e) {
      bad("prompt", std::string("'prompt' could not be tokenized: ") + e.what());
    }
  };
  if (p->is_string()) return encode(p->get<std::string>());
  if (!p->is_array())
    bad("prompt", "'prompt' must be a string or an array of token ids, got " + type_name(*p));
  if (p->empty()) bad("prompt", "'prompt' is an empty array");
  const json& first = (*p)[0];
  if (first.is_number()) return token_ids(*p, "prompt", ctx.vocab_size);
  if (p->size() > 1)
    bad("prompt", "only one prompt per request is supported (got " + std::to_string(p->size()) +
                      "); send one request per prompt");
  if (first.is_string()) return encode(first.get<std::string>());
  if (first.is_array()) return token_ids(first, "prompt", ctx.vocab_size);
  bad("prompt", "'prompt' must be a string or an array of token ids, got an array of " +
                    type_name(first).substr(type_name(first).find(' ') + 1) + "s");
}

std::string message_content(const json& m, size_t i, const std::string& role) {
  const std::string where = "messages[" + std::to_string(i) + "].content";
  auto it = m.find("content");
  if (it == m.end()) {
    if (role == "assistant") return "";
    bad(where, "'" + where + "' is required");
  }
  const json& c = *it;
  if (c.is_null()) {
    if (role == "assistant") return "";
    bad(where, "'" + where + "' must be a string, got null");
  }
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {  // content parts: only text
    std::string out;
    for (size_t k = 0; k < c.size(); ++k) {
      const json& part = c[k];
      const std::string pw = where + "[" + std::to_string(k) + "]";
      if (!part.is_object()) bad(where, "'" + pw + "' must be an object");
      const json* type = field(part, "type");
      if (!type || !type->is_string()) bad(where, "'" + pw + ".type' is required");
      if (type->get<std::string>() != "text")
        bad(where, "'" + pw + ".type' = '" + type->get<std::string>() +
                       "' is not supported; only text parts are");
      const json* text = field(part, "text");
      if (!text || !text->is_string()) bad(where, "'" + pw + ".text' must be a string");
      out += text->get<std::string>();
    }
    return out;
  }
  bad(where, "'" + where + "' must be a string or an array of text parts, got " + type_name(c));
}

std::vector<int32_t> parse_messages(const json& body, const ApiContext& ctx) {
  const json* ms = field(body, "messages");
  if (!ms) bad("messages", "'messages' is required");
  if (!ms->is_array()) bad("messages", "'messages' must be an array, got " + type_name(*ms));
  if (ms->empty()) bad("messages", "'messages' must hold at least one message");
  std::vector<std::pair<std::string, std::string>> msgs;
  for (size_t i = 0; i < ms->size(); ++i) {
    const json& m = (*ms)[i];
    const std::string w = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(w, "'" + w + "' must be an object, got " + type_name(m));
    const json* role = field(m, "role");
    if (!role) bad(w + ".role", "'" + w + ".role' is required");
    if (!role->is_string()) bad(w + ".role", "'" + w + ".role' must be a string, got " + type_name(*role));
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";
    if (r != "system" && r != "user" && r != "assistant")
      bad(w + ".role", "'" + w + ".role' = '" + role->get<std::string>() +
                           "' is not a supported role; use system, user or assistant");
    msgs.emplace_back(r, message_content(m, i, r));
  }
  if (!ctx.tok) bad("messages", "this model has no tokenizer, so chat is unavailable; use /v1/completions with token ids");
  std::string text;
  try {
    text = ctx.tok->apply_chat_template(msgs, true);
    return ctx.tok->encode(text, false);
  } catch (const Error& e) {
    bad("messages", std::string("'messages' could not be turned into a prompt: ") + e.what());
  }
}

void parse_stop(const json& body, const ApiContext& ctx, GenerationRequest* g) {
  if (const json* s = field(body, "stop")) {
    if (s->is_string()) {
      if (!s->get<std::string>().empty()) g->stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > 16) bad("stop", "'stop' holds more than 16 sequences");
      for (size_t i = 0; i < s->size(); ++i) {
        if (!(*s)[i].is_string())
          bad("stop", "'stop[" + std::to_string(i) + "]' must be a string, got " + type_name((*s)[i]));
        if (!(*s)[i].get<std::string>().empty()) g->stop.push_back((*s)[i].get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or an array of strings, got " + type_name(*s));
    }
    if (!g->stop.empty() && !ctx.tok)
      bad("stop", "this model has no tokenizer, so stop strings are unavailable; use 'stop_token_ids'");
  }
  if (const json* s = field(body, "stop_token_ids")) {
    if (!s->is_array()) bad("stop_token_ids", "'stop_token_ids' must be an array of token ids");
    for (int32_t id : token_ids(*s, "stop_token_ids", ctx.vocab_size)) g->stop_ids.push_back(id);
  }
}

void parse_into(const json& body, bool chat, const ApiContext& ctx, ParsedRequest* out) {
  // Model.
  const json* model = field(body, "model");
  if (!model) bad("model", "'model' is required");
  if (!model->is_string()) bad("model", "'model' must be a string, got " + type_name(*model));
  if (model->get<std::string>() != ctx.model_name)
    bad("model", "the model '" + model->get<std::string>() + "' does not exist; this server serves '" +
                     ctx.model_name + "'", "model_not_found");

  // Unimplemented features, refused explicitly.
  if (get_int(body, "n", 1, 1, 1 << 20) != 1) bad("n", "'n' > 1 is not supported; send n = 1 (one request per completion)");
  if (!chat && get_int(body, "best_of", 1, 1, 1 << 20) != 1) bad("best_of", "'best_of' > 1 is not supported");
  if (!chat && get_bool(body, "echo", false)) unsupported("echo", "= true");
  if (const json* v = field(body, "logprobs"))
    if (!(v->is_boolean() && !v->get<bool>())) unsupported("logprobs", "(token log-probabilities)");
  if (field(body, "top_logprobs")) unsupported("top_logprobs", "(token log-probabilities)");
  if (const json* v = field(body, "suffix"))
    if (!(v->is_string() && v->get<std::string>().empty())) unsupported("suffix", "(insertion)");
  if (const json* v = field(body, "logit_bias"))
    if (!(v->is_object() && v->empty())) unsupported("logit_bias", "(per-token bias)");
  if (chat) {
    if (const json* v = field(body, "tools"))
      if (!(v->is_array() && v->empty())) unsupported("tools", "(function calling)");
    if (field(body, "functions")) unsupported("functions", "(function calling)");
    if (const json* v = field(body, "response_format")) {
      const json* t = v->is_object() ? field(*v, "type") : nullptr;
      if (!t || !t->is_string() || t->get<std::string>() != "text")
        unsupported("response_format", "other than {\"type\": \"text\"}");
    }
  }

  // Prompt.
  GenerationRequest& g = out->gen;
  g.prompt = chat ? parse_messages(body, ctx) : parse_prompt(body, ctx);
  const char* prompt_param = chat ? "messages" : "prompt";
  const int64_t n_prompt = int64_t(g.prompt.size());
  if (n_prompt == 0) bad(prompt_param, std::string("'") + prompt_param + "' encodes to no tokens");
  if (n_prompt >= ctx.max_model_len)
    bad(prompt_param, "This model's maximum context length is " + std::to_string(ctx.max_model_len) +
                          " tokens, but the prompt has " + std::to_string(n_prompt) +
                          " tokens (at least one must be left to generate); shorten it",
        "context_length_exceeded");

  // Sampling and length.
  const int64_t room = ctx.max_model_len - n_prompt;
  const char* mt_key = chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const json* mt = field(body, mt_key);
  const int64_t max_tokens = get_int(body, mt_key, chat ? room : std::min<int64_t>(16, room), 1, INT32_MAX);
  if (mt && max_tokens > room)
    bad(mt_key, "This model's maximum context length is " + std::to_string(ctx.max_model_len) +
                    " tokens, but " + std::to_string(n_prompt + max_tokens) + " were requested (" +
                    std::to_string(n_prompt) + " in the prompt, " + std::to_string(max_tokens) +
                    " to generate); lower '" + mt_key + "' or shorten the prompt",
        "context_length_exceeded");
  g.max_tokens = max_tokens;
  SamplingParams& s = g.sampling;
  s.temperature = float(get_num(body, "temperature", 1.0, 0.0, 2.0));
  s.top_p = float(get_num(body, "top_p", 1.0, 0.0, 1.0, true, false));
  const int64_t top_k = get_int(body, "top_k", 0, -1, INT32_MAX);
  s.top_k = top_k < 0 ? 0 : int(top_k);
  s.min_p = float(get_num(body, "min_p", 0.0, 0.0, 1.0));
  s.presence_penalty = float(get_num(body, "presence_penalty", 0.0, -2.0, 2.0));
  s.frequency_penalty = float(get_num(body, "frequency_penalty", 0.0, -2.0, 2.0));
  s.repetition_penalty = float(get_num(body, "repetition_penalty", 1.0, 0.0, 10.0, true, false));
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer() && !seed->is_number_unsigned())
      bad("seed", "'seed' must be an integer, got " + type_name(*seed));
    s.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : uint64_t(seed->get<int64_t>());
  } else {
    static thread_local std::mt19937_64 rd{std::random_device{}()};
    s.seed = rd();
  }

  // Stops.
  if (!get_bool(body, "ignore_eos", false)) g.stop_ids = ctx.stop_ids;
  parse_stop(body, ctx, &g);

  // Streaming.
  out->chat = chat;
  out->stream = get_bool(body, "stream", false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object, got " + type_name(*so));
    if (!out->stream) bad("stream_options", "'stream_options' is only allowed with 'stream': true");
    out->include_usage = get_bool(*so, "include_usage", false);
  }
  out->return_token_ids = get_bool(body, "return_token_ids", false);
  g.want_text = ctx.tok != nullptr;
}

json usage(const RequestOutput& out) {
  return {{"prompt_tokens", out.prompt_tokens},
          {"completion_tokens", out.completion_tokens},
          {"total_tokens", out.prompt_tokens + out.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", out.cached_tokens}}}};
}

}  // namespace

bool parse_request(const std::string& body, bool chat, const ApiContext& ctx, ParsedRequest* out,
                   ApiError* err) {
  *out = ParsedRequest{};
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // syntax errors, and numbers too large (out_of_range)
    err->status = 400;
    err->message = std::string("the request body is not valid JSON: ") + e.what();
    err->param.clear();
    return false;
  }
  if (!j.is_object()) {
    err->status = 400;
    err->message = "the request body must be a JSON object, got " + type_name(j);
    err->param.clear();
    return false;
  }
  try {
    parse_into(j, chat, ctx, out);
  } catch (const Bad& b) {
    *err = b.e;
    return false;
  } catch (const json::exception& e) {  // e.g. invalid UTF-8 inside a string
    err->status = 400;
    err->message = std::string("the request body could not be read: ") + e.what();
    return false;
  }
  return true;
}

std::string response_json(const ParsedRequest& pr, const std::string& id, int64_t created,
                          const std::string& model, const RequestOutput& out) {
  json choice = {{"index", 0}, {"logprobs", nullptr},
                 {"finish_reason", api_finish_reason(out.reason)}};
  if (pr.chat) choice["message"] = {{"role", "assistant"}, {"content", out.text}};
  else choice["text"] = out.text;
  if (pr.return_token_ids) choice["token_ids"] = out.tokens;
  json j = {{"id", id},
            {"object", pr.chat ? "chat.completion" : "text_completion"},
            {"created", created},
            {"model", model},
            {"choices", json::array({choice})},
            {"usage", usage(out)}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

// One streaming chunk as nlohmann::json writes it (object keys sorted, non-ASCII as UTF-8,
// invalid UTF-8 replaced by U+FFFD).
std::string chunk_json_tree(const ParsedRequest& pr, std::string_view id, int64_t created,
                            std::string_view model, std::string_view text,
                            const int32_t* tokens, size_t n_tokens, const char* finish,
                            bool role_only) {
  json choice = {{"index", 0}, {"logprobs", nullptr},
                 {"finish_reason", finish ? json(finish) : json(nullptr)}};
  if (pr.chat) {
    if (role_only) choice["delta"] = {{"role", "assistant"}, {"content", ""}};
    else if (finish && text.empty()) choice["delta"] = json::object();
    else choice["delta"] = {{"content", std::string(text)}};
  } else {
    choice["text"] = std::string(text);
  }
  if (pr.return_token_ids && !role_only)
    choice["token_ids"] = std::vector<int32_t>(tokens, tokens + n_tokens);
  json j = {{"id", std::string(id)},
            {"object", pr.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created},
            {"model", std::string(model)},
            {"choices", json::array({choice})}};
  if (pr.include_usage) j["usage"] = nullptr;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace

void append_chunk_json(std::string* out, const ParsedRequest& pr, std::string_view id,
                       int64_t created, std::string_view model, std::string_view text,
                       const int32_t* tokens, size_t n_tokens, const char* finish,
                       bool role_only) {
  out->append(chunk_json_tree(pr, id, created, model, text, tokens, n_tokens, finish, role_only));
}

std::string chunk_json(const ParsedRequest& pr, const std::string& id, int64_t created,
                       const std::string& model, const std::string& text,
                       const std::vector<int32_t>& tokens, const char* finish, bool role_only) {
  return chunk_json_tree(pr, id, created, model, text, tokens.data(), tokens.size(), finish,
                         role_only);
}

std::string usage_chunk_json(const ParsedRequest& pr, const std::string& id, int64_t created,
                             const std::string& model, const RequestOutput& out) {
  json j = {{"id", id},
            {"object", pr.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created},
            {"model", model},
            {"choices", json::array()},
            {"usage", usage(out)}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace qwen::serve::api
