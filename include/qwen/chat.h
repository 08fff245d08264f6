/// @file qwen/chat.h
/// @brief A multi-turn conversation with a ChatML model (Qwen's `<|im_start|>role ... <|im_end|>`
/// template), as `qwen chat` runs it: the KV cache is kept between turns (each turn renders the
/// whole conversation, keeps the cached tokens it shares with the previous turn and prefills only
/// the rest), replies are streamed, and when the conversation no longer fits the context the
/// oldest exchanges are dropped (the system message stays).
///
/// @code
///   qwen::ChatSession chat(model, tokenizer, {});
///   if (chat.add_user_message("Hello!").fits)
///     chat.reply([](std::string_view t) { std::cout << t << std::flush; });
/// @endcode
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "qwen/model.h"
#include "qwen/tokenizer.h"

namespace qwen::api {

/// Settings of a ChatSession.
struct ChatConfig {
  std::string system;            ///< system message; "" = none (the template may add its own)
  int64_t max_new_tokens = 512;  ///< most tokens per reply; 1 .. context - 1
  int64_t context = 0;  ///< tokens of conversation kept; 0 = max_position_embeddings, at most 4096
  float temperature = 0.7f;      ///< 0 = greedy
  int top_k = 0;                 ///< keep the k most likely tokens; 0 = off
  float top_p = 0.9f;            ///< nucleus sampling mass; 1 = off
  float min_p = 0.0f;            ///< drop tokens below min_p x the top probability; 0 = off
  float repetition_penalty = 1.0f;  ///< on the conversation's and the reply's tokens; 1 = off
  uint64_t seed = 0;             ///< one generator for the whole session, seeded once
};

/// What add_user_message() did to fit the conversation into the context.
struct ChatFit {
  /// Exchanges (user + assistant message) dropped from the start of the history to make room
  /// for the prompt plus max_new_tokens.
  int64_t dropped_turns = 0;
  /// False when the message does not fit even alone: it was not added (what was dropped stays
  /// dropped).
  bool fits = true;
};

/// Called with each piece of a reply's text as it becomes final (complete UTF-8).
using ChatTextCallback = std::function<void(std::string_view text)>;

/// One conversation. Not thread-safe; keeps the model's weights alive.
class ChatSession {
 public:
  /// Checks the settings; throws qwen::Error when the tokenizer has no <|im_start|> /
  /// <|im_end|> tokens or max_new_tokens is outside 1 .. context - 1.
  ChatSession(const Model& model, const Tokenizer& tokenizer, const ChatConfig& config = {});
  ~ChatSession();                                  ///< Frees the cache.
  ChatSession(ChatSession&&) noexcept;             ///< Moves the session.
  ChatSession& operator=(ChatSession&&) noexcept;  ///< Moves the session.

  /// Appends a user message, dropping the oldest exchanges while the rendered conversation plus
  /// max_new_tokens exceeds the context.
  ChatFit add_user_message(const std::string& text);
  /// Generates the assistant's reply to the conversation (sampling stops at the tokenizer's stop
  /// ids and the model's eos ids, at max_new_tokens, or when the context is full), streams its
  /// text to on_text and appends it to the history. Returns the reply's text (special tokens
  /// left out). Throws qwen::Error unless the last message is the user's.
  std::string reply(const ChatTextCallback& on_text = nullptr);
  /// Forgets the history (the system message stays; the cache is reused where it still fits).
  void reset();

  /// The user and assistant messages so far, as (role, content).
  const std::vector<std::pair<std::string, std::string>>& history() const;
  /// The context in tokens (ChatConfig::context resolved).
  int64_t context() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qwen::api

namespace qwen {
using namespace api;  // NOLINT: every public name of qwen::api is also qwen::name
}  // namespace qwen
