// A JSON-over-HTTP client for the server tests (httplib's client underneath).
#pragma once

#include <httplib.h>

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace tandem::server::test {

struct Reply {
  int status = -1;  // -1: no response (connection failed)
  std::string body;
  httplib::Headers headers;
  nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
};

class TestClient {
 public:
  explicit TestClient(int port, std::string api_key = "") : api_key_(std::move(api_key)) {
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port);
    client_->set_read_timeout(120, 0);
    client_->set_write_timeout(30, 0);
    client_->set_connection_timeout(10, 0);
  }

  Reply post(const std::string& path, const std::string& body) {
    return convert(client_->Post(path.c_str(), headers(), body, "application/json"));
  }
  Reply post(const std::string& path, const nlohmann::json& body) { return post(path, body.dump()); }
  Reply get(const std::string& path) { return convert(client_->Get(path.c_str(), headers())); }

 private:
  httplib::Headers headers() const {
    httplib::Headers h;
    if (!api_key_.empty()) h.emplace("Authorization", "Bearer " + api_key_);
    return h;
  }
  static Reply convert(const httplib::Result& r) {
    Reply out;
    if (!r) return out;
    out.status = r->status;
    out.body = r->body;
    out.headers = r->headers;
    return out;
  }

  std::string api_key_;
  std::unique_ptr<httplib::Client> client_;
};

}  // namespace tandem::server::test
