#include "app/bench_client.h"

#include <httplib.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"

namespace tandem::app {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

BenchTarget parse_base_url(const std::string& url) {
  static const std::regex re(R"(^http://([^/:]+)(?::(\d+))?/?$)");
  std::smatch m;
  TANDEM_CHECK(std::regex_match(url, m, re),
               "--base-url '{}' must look like http://HOST:PORT (https is not supported)", url);
  BenchTarget t;
  t.host = m[1];
  if (m[2].matched) t.port = std::stoi(m[2]);
  TANDEM_CHECK(t.port > 0 && t.port < 65536, "--base-url port {} out of range", t.port);
  return t;
}

RequestTiming run_streaming_completion(const BenchTarget& target, const std::string& prompt,
                                       int64_t output_len, double bench_start_s) {
  RequestTiming r;
  nlohmann::json body{{"model", target.model},
                      {"prompt", prompt},
                      {"max_tokens", output_len},
                      {"temperature", 0.0},
                      {"ignore_eos", true},
                      {"stream", true},
                      {"stream_options", {{"include_usage", true}}}};
  if (target.model.empty()) body.erase("model");
  httplib::Client client(target.host, target.port);
  client.set_read_timeout(3600, 0);
  client.set_connection_timeout(10, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = {{"Content-Type", "application/json"}, {"Accept", "text/event-stream"}};
  if (!target.api_key.empty()) req.headers.emplace("Authorization", "Bearer " + target.api_key);
  req.body = body.dump();

  const double t0 = now_seconds();
  r.start_s = t0 - bench_start_s;
  double last_token = 0.0;
  bool done = false;
  std::string buffer, error_body;
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    buffer.append(data, len);
    size_t pos;
    // SSE events end with a blank line; each carries one `data: ...` line here.
    while ((pos = buffer.find("\n\n")) != std::string::npos) {
      std::string event = buffer.substr(0, pos);
      buffer.erase(0, pos + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      const std::string payload = event.substr(6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      const double t = now_seconds();
      nlohmann::json j = nlohmann::json::parse(payload, nullptr, false);
      if (j.is_discarded()) {
        error_body = "unparsable stream chunk: " + payload.substr(0, 200);
        return false;
      }
      if (j.contains("error")) {
        error_body = j["error"].value("message", j.dump());
        return false;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        r.prompt_tokens = j["usage"].value("prompt_tokens", int64_t(0));
        r.completion_tokens = j["usage"].value("completion_tokens", int64_t(0));
      }
      const bool has_text = j.contains("choices") && !j["choices"].empty() &&
                            !j["choices"][0].value("text", std::string()).empty();
      if (!has_text) continue;
      if (last_token == 0.0) {
        r.ttft_s = t - t0;
      } else {
        r.itl_s.push_back(t - last_token);
      }
      last_token = t;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = client.send(req, res, err);
  r.e2e_s = now_seconds() - t0;
  if (!sent) {
    r.error = error_body.empty() ? "HTTP error: " + httplib::to_string(err) : error_body;
  } else if (res.status != 200) {
    r.error = "HTTP " + std::to_string(res.status) + ": " + (error_body.empty() ? buffer : error_body);
  } else if (!done) {
    r.error = "stream ended without [DONE]";
  } else if (r.completion_tokens == 0) {
    r.error = "no usage in the stream (the server must honour stream_options.include_usage)";
  } else {
    r.ok = true;
  }
  return r;
}

}  // namespace tandem::app
