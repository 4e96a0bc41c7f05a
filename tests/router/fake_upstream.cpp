#include "tests/router/fake_upstream.h"

#include <fmt/format.h>

#include <chrono>

namespace tandem::router::testing {
namespace {

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace

FakeUpstream::FakeUpstream(std::string role, RoomRegistry& registry, int bootstrap_port)
    : role_(std::move(role)), registry_(registry), bootstrap_port_(bootstrap_port) {}

void FakeUpstream::start(int port) {
  server_ = std::make_unique<httplib::Server>();
  server_->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = healthy ? 200 : 503;
    res.set_content("{}", "application/json");
  });
  server_->Get("/pd_info", [this](const httplib::Request&, httplib::Response& res) {
    const std::string role = claim_wrong_role ? (role_ == "prefill" ? "decode" : "prefill") : role_;
    res.set_content(nlohmann::json{{"role", role}, {"bootstrap_port", bootstrap_port_}}.dump(), "application/json");
  });
  server_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(nlohmann::json{{"object", "list"}, {"data", {{{"id", "fake-" + role_}}}}}.dump(),
                    "application/json");
  });
  for (const char* path : {"/v1/completions", "/v1/chat/completions", "/generate"}) {
    server_->Post(path, [this](const httplib::Request& req, httplib::Response& res) { generation(req, res); });
  }
  if (port == 0) {
    port_ = server_->bind_to_any_port("127.0.0.1");
  } else {
    // A restarted server: the old socket may linger a moment.
    for (int i = 0; i < 100 && !server_->bind_to_port("127.0.0.1", port); ++i) sleep_ms(20);
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  while (!server_->is_running()) sleep_ms(1);
}

void FakeUpstream::stop() {
  if (!server_) return;
  server_->stop();
  thread_.join();
  server_.reset();
}

std::vector<nlohmann::json> FakeUpstream::bodies() {
  std::lock_guard lock(mu_);
  return bodies_;
}

std::string FakeUpstream::stream_bytes(const nlohmann::json& body) {
  std::string out;
  for (int i = 0; i < 4; ++i) {
    const nlohmann::json event{{"choices", {{{"index", 0}, {"text", fmt::format("t{}", i)}}}},
                               {"room", body["bootstrap_room"]}};
    out += fmt::format("data: {}\n\n", event.dump());
  }
  return out + "data: [DONE]\n\n";
}

void FakeUpstream::generation(const httplib::Request& req, httplib::Response& res) {
  const int delay = delay_ms;  // as when the request came: the test may change it meanwhile
  requests++;
  nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
  if (!body.is_object() || !body.contains("bootstrap_room")) {
    res.status = 400;
    res.set_content(R"({"error":{"message":"send requests through tandem router"}})", "application/json");
    return;
  }
  {
    std::lock_guard lock(mu_);
    bodies_.push_back(body);
  }
  const uint64_t room = body["bootstrap_room"].get<uint64_t>();
  in_flight++;
  // Held by the response's content provider too, so a stream counts until it ends.
  std::shared_ptr<void> guard(nullptr, [this](void*) { in_flight--; });
  if (role_ == "prefill") {
    {
      std::lock_guard lock(registry_.mu);
      registry_.prefill_bodies[room] = body;
    }
    registry_.cv.notify_all();
  } else {
    // Like a decode server pulling KV from its prefill: the room must be the prefill's.
    std::unique_lock lock(registry_.mu);
    const bool seen = registry_.cv.wait_for(lock, std::chrono::seconds(3),
                                            [&] { return registry_.prefill_bodies.count(room) > 0; });
    if (!seen || registry_.prefill_bodies[room] != body) {
      mismatches++;
      res.status = 500;
      res.set_content(R"({"error":{"message":"room or bootstrap fields differ from the prefill's"}})",
                      "application/json");
      return;
    }
  }
  sleep_ms(delay);
  if (endless) {
    // Writes until the router closes the connection (a prefill's filler is JSON whitespace).
    const bool sse = role_ == "decode";
    res.set_chunked_content_provider(sse ? "text/event-stream" : "application/json",
                                     [this, sse, guard](size_t, httplib::DataSink& sink) {
                                       const std::string filler = sse ? ": ping\n\n" : " ";
                                       if (!sink.write(filler.data(), filler.size())) {
                                         closed_by_router++;
                                         return false;
                                       }
                                       sleep_ms(10);
                                       return true;
                                     });
    return;
  }
  if (error_status != 0) {
    res.status = error_status;
    res.set_content(R"({"error":{"message":"prefill failed: fake error","type":"server_error"}})",
                    "application/json");
    return;
  }
  if (role_ == "prefill" || !body.value("stream", false)) {
    res.set_content(nlohmann::json{{"choices", {{{"index", 0}, {"text", "hello from " + role_}}}},
                                   {"room", room}}.dump(),
                    "application/json");
    return;
  }
  const std::string bytes = stream_bytes(body);
  res.set_chunked_content_provider("text/event-stream", [bytes, guard](size_t offset, httplib::DataSink& sink) {
    // One event per write, 60 ms apart: the client must see the first long before the last.
    const size_t end = bytes.find("\n\n", offset) + 2;
    if (!sink.write(bytes.data() + offset, end - offset)) return false;
    if (end == bytes.size()) {
      sink.done();
    } else {
      sleep_ms(60);
    }
    return true;
  });
}

}  // namespace tandem::router::testing
