// FakeUpstream: an in-process `tandem serve --role prefill|decode` stand-in for the router tests,
// following the PD contract (docs/disagg.md): /health, /pd_info, and the generation endpoints,
// which need the bootstrap fields. The fake prefill records each room; the fake decode checks
// that it got the same body (bootstrap fields included) as the prefill of its room, and answers
// 500 when not. Both count requests whose connection the router closed.
// Thread-safety: the knobs are atomics, set from the test thread while servers run.
#pragma once

#include <httplib.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace tandem::router::testing {

// What the fake prefills saw, by room: the fake decodes compare against it.
struct RoomRegistry {
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, nlohmann::json> prefill_bodies;
};

class FakeUpstream {
 public:
  FakeUpstream(std::string role, RoomRegistry& registry, int bootstrap_port = 0);
  ~FakeUpstream() { stop(); }

  void start(int port = 0);  // port 0: a free one (the first start); a restart reuses port()
  void stop();
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Expected decode stream for a body, byte for byte (the test compares the client's bytes).
  static std::string stream_bytes(const nlohmann::json& body);

  std::atomic<bool> healthy{true};
  std::atomic<bool> claim_wrong_role{false};
  std::atomic<int> error_status{0};  // prefill: answer this status with an OpenAI error
  std::atomic<int> delay_ms{0};      // before answering
  std::atomic<bool> endless{false};  // write until the router closes the connection
  std::atomic<int> requests{0};
  std::atomic<int> in_flight{0};
  std::atomic<int> closed_by_router{0};
  std::atomic<int> mismatches{0};

  std::vector<nlohmann::json> bodies();

 private:
  void generation(const httplib::Request& req, httplib::Response& res);

  std::string role_;
  RoomRegistry& registry_;
  int bootstrap_port_;
  int port_ = 0;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<nlohmann::json> bodies_;
};

}  // namespace tandem::router::testing
