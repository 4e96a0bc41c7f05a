// ApiError: an expected failure on its way to the client, as the OpenAI API shapes it:
//   HTTP 4xx/5xx with {"error": {"message", "type", "param", "code"}}.
// Every handler failure becomes one of these; nothing is thrown across a handler.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tandem::server {

struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::optional<std::string> param;  // the request field at fault
  std::optional<std::string> code;   // e.g. "model_not_found", "context_length_exceeded"

  nlohmann::json to_json() const;
};

ApiError bad_request(std::string message, std::optional<std::string> param = std::nullopt,
                     std::optional<std::string> code = std::nullopt);

// Maps a runtime Status: InvalidArgument and ResourceExhausted (a request that can never fit)
// are the client's fault (400), Unavailable is 503, NotFound 404, the rest 500. The param is
// taken from a message of the form "name: ..." or "name must ..." when it names a field.
ApiError from_status(const Status& status);

}  // namespace tandem::server
