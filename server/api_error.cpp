#include "server/api_error.h"

#include <cctype>

namespace tandem::server {

nlohmann::json ApiError::to_json() const {
  nlohmann::json e{{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (param) e["param"] = *param;
  if (code) e["code"] = *code;
  return nlohmann::json{{"error", std::move(e)}};
}

ApiError bad_request(std::string message, std::optional<std::string> param,
                     std::optional<std::string> code) {
  ApiError e;
  e.http_status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

namespace {

// The leading identifier of "top_p must be ..." or "prompt: ...", when there is one.
std::optional<std::string> leading_field(const std::string& message) {
  size_t i = 0;
  while (i < message.size() && (std::islower(static_cast<unsigned char>(message[i])) ||
                                message[i] == '_')) {
    ++i;
  }
  if (i == 0 || i == message.size()) return std::nullopt;
  if (message[i] == ':' || message.compare(i, 6, " must ") == 0) return message.substr(0, i);
  return std::nullopt;
}

}  // namespace

ApiError from_status(const Status& status) {
  ApiError e;
  e.message = status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
    case StatusCode::kResourceExhausted:
      e.http_status = 400;
      e.param = leading_field(status.message());
      break;
    case StatusCode::kNotFound:
      e.http_status = 404;
      e.code = "not_found";
      break;
    case StatusCode::kUnavailable:
      e.http_status = 503;
      e.type = "server_error";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

}  // namespace tandem::server
