// Errors, three tiers (STYLE.md 7):
//  1. broken invariant / bad argument: TANDEM_CHECK throws tandem::Error with file and line;
//  2. vendor calls (CUDA, cuBLAS, NCCL): their own check macros in ops/cuda, same exception;
//  3. expected failures (bad request, out of pages, timeouts): tandem::Status, returned.
// Library code never calls exit(); exceptions never cross a thread or process boundary.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace tandem {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] void throw_error(const char* file, int line, const std::string& message);

// Expected-failure result. `ok()` or a code with a message that is safe to show a user.
enum class StatusCode { kOk, kInvalidArgument, kNotFound, kOutOfRange, kResourceExhausted,
                        kUnavailable, kDeadlineExceeded, kAborted, kInternal };

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok_status() { return {}; }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

}  // namespace tandem

// Throws tandem::Error("file:line: message") when `cond` is false. The message is a fmt
// format string with arguments; it should say what was expected and what was found.
#define TANDEM_CHECK(cond, ...)                                                      \
  do {                                                                               \
    if (!(cond)) [[unlikely]] {                                                      \
      ::tandem::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__));         \
    }                                                                                \
  } while (0)

#define TANDEM_FAIL(...) ::tandem::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
