// HttpRequest / HttpResponse: tandem's own view of one HTTP exchange, so the handlers depend on
// no HTTP library (the transport, http_server.cpp, converts from and to Boost.Beast's types).
// Thread-safety: plain values; one connection uses each.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tandem::server {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// Header names compare case-insensitively (RFC 9110 section 5.1).
bool header_name_equal(std::string_view a, std::string_view b);

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: path and query
  std::string path;    // the target without its query
  HttpHeaders headers;
  std::string body;
  std::string remote_addr;
  int remote_port = 0;

  // The first header named `name`, or "" when there is none.
  std::string header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type;  // empty: no body
  std::string body;
  HttpHeaders headers;  // besides Content-Type and Content-Length

  void set_content(std::string content, std::string type) {
    body = std::move(content);
    content_type = std::move(type);
  }
  void set_header(std::string name, std::string value);
};

}  // namespace tandem::server
