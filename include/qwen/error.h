/// @file qwen/error.h
/// @brief The one exception type the library throws for user-facing mistakes
/// (bad files, bad config, bad arguments). Internal invariants use assert instead.
#pragma once
#include <stdexcept>
#include <string>

namespace qwen {

/// Thrown for every error a user can cause or fix. The message is one line:
/// what went wrong, where (file / tensor / key), and what to do about it.
class Error : public std::runtime_error {
 public:
  /// An error with the given one-line message.
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

}  // namespace qwen
