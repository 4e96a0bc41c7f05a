// End-to-end tests of the server's limits: API key, body size, admission control (503 with
// Retry-After when the running and queued sequences are at their limit), and graceful
// shutdown on SIGTERM (in-flight requests finish, or are aborted at --shutdown-timeout).
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "app/bench_client.h"
#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace tandem::server::test {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

#define REQUIRE_TOKENIZER()                                                              \
  if (!tokenizer_dir()) {                                                                \
    GTEST_SKIP() << "DeepSeek-V3 tokenizer files not found: set TANDEM_TOKENIZER_DIR to a " \
                    "folder with tokenizer.json and tokenizer_config.json";              \
  }

// Waits until /metrics shows `running` running and `waiting` waiting sequences.
bool wait_for_load(TestClient& c, double running, double waiting) {
  for (int i = 0; i < 1000; ++i) {
    const std::string m = c.get("/metrics").body;
    if (metric_value(m, "tandem:num_requests_running{") == running &&
        metric_value(m, "tandem:num_requests_waiting{") == waiting) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

json long_generate(const std::string& rid) {
  return json{{"text", "Count to a thousand:"},
              {"rid", rid},
              {"sampling_params", {{"max_new_tokens", 200}, {"ignore_eos", true}}}};
}

TEST(ServerLimits, ApiKeyBodySizeAndOverload) {
  REQUIRE_TOKENIZER();
  ServerProcess server({"--api-key", "sekrit", "--max-body-bytes", "4096",
                        "--max-running-requests", "1", "--max-queued-requests", "1",
                        "--context-length", "512", "--max-total-tokens", "4096"});
  TestClient anonymous(server.port());
  TestClient wrong(server.port(), "sekrit2");
  TestClient c(server.port(), "sekrit");
  const json small{{"prompt", "Hi"}, {"max_tokens", 2}};

  // Auth: Bearer key on everything but /health and /metrics.
  Reply r = anonymous.post("/v1/completions", small);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.json()["error"]["code"], "invalid_api_key");
  EXPECT_EQ(wrong.post("/v1/completions", small).status, 401);
  EXPECT_EQ(anonymous.get("/v1/models").status, 401);
  EXPECT_EQ(anonymous.post("/slow_down", json{{"forward_sleep_time", 1}}).status, 401);
  EXPECT_EQ(anonymous.get("/health").status, 200);
  EXPECT_EQ(anonymous.get("/metrics").status, 200);
  EXPECT_EQ(c.post("/v1/completions", small).status, 200);

  // A body over --max-body-bytes: 413 with a JSON error, and the server goes on.
  json big = small;
  big["prompt"] = std::string(8000, 'a');
  r = c.post("/v1/completions", big);
  EXPECT_EQ(r.status, 413) << r.body;
  EXPECT_TRUE(r.json().contains("error")) << r.body;
  EXPECT_EQ(c.post("/v1/completions", small).status, 200);

  // Overload: one running and one queued sequence fill the server; the next request gets 503.
  ASSERT_EQ(c.post("/slow_down", json{{"forward_sleep_time", 0.05}}).status, 200);
  Reply a, b;
  std::thread ta([&] { a = TestClient(server.port(), "sekrit").post("/generate", long_generate("o1")); });
  ASSERT_TRUE(wait_for_load(c, 1, 0));
  std::thread tb([&] { b = TestClient(server.port(), "sekrit").post("/generate", long_generate("o2")); });
  ASSERT_TRUE(wait_for_load(c, 1, 1));
  r = c.post("/v1/completions", small);
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_EQ(r.json()["error"]["code"], "server_overloaded");
  EXPECT_FALSE(r.headers.find("Retry-After") == r.headers.end());
  EXPECT_EQ(c.get("/health").status, 200);  // overloaded is not unhealthy
  const std::string m = c.get("/metrics").body;
  EXPECT_GE(metric_value(m, "tandem:num_requests_rejected_total{").value_or(0), 1);
  EXPECT_EQ(c.post("/abort", json{{"rid", "o1"}}).status, 200);
  EXPECT_EQ(c.post("/abort", json{{"rid", "o2"}}).status, 200);
  ta.join();
  tb.join();
  EXPECT_EQ(a.json()["meta_info"]["finish_reason"]["type"], "abort");
  EXPECT_EQ(b.json()["meta_info"]["finish_reason"]["type"], "abort");
  ASSERT_EQ(c.post("/slow_down", json{{"forward_sleep_time", nullptr}}).status, 200);
  EXPECT_EQ(c.post("/v1/completions", small).status, 200);  // room again
}

// SIGTERM: new requests are refused, /health turns 503, a request that can finish within
// --shutdown-timeout does, a longer one is aborted at the timeout, and the process exits 0.
TEST(ServerLimits, GracefulShutdownOnSigterm) {
  REQUIRE_TOKENIZER();
  ServerProcess server({"--shutdown-timeout", "2", "--context-length", "2048",
                        "--max-total-tokens", "8192"});
  TestClient c(server.port());
  ASSERT_EQ(c.post("/slow_down", json{{"forward_sleep_time", 0.05}}).status, 200);
  Reply short_reply, long_reply;
  json short_body{{"prompt", "Hi"}, {"max_tokens", 12}, {"ignore_eos", true}, {"stream", true}};
  json long_body{{"prompt", "Hello"}, {"max_tokens", 1000}, {"ignore_eos", true}};
  std::thread ts([&] { short_reply = TestClient(server.port()).post("/v1/completions", short_body); });
  std::thread tl([&] { long_reply = TestClient(server.port()).post("/v1/completions", long_body); });
  ASSERT_TRUE(wait_for_load(c, 2, 0));

  const auto t0 = Clock::now();
  server.signal(SIGTERM);
  int health = 200;
  for (int i = 0; i < 200 && health == 200; ++i) {
    health = c.get("/health").status;
    if (health == 200) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(health, 503);
  Reply refused = c.post("/v1/completions", json{{"prompt", "Hi"}, {"max_tokens", 2}});
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_EQ(refused.json()["error"]["code"], "server_shutting_down");

  ts.join();
  ASSERT_EQ(short_reply.status, 200);
  const std::vector<std::string> events = sse_events(short_reply.body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(json::parse(events[events.size() - 2])["choices"][0]["finish_reason"], "length");

  tl.join();
  ASSERT_EQ(long_reply.status, 200) << long_reply.body;
  EXPECT_EQ(long_reply.json()["choices"][0]["finish_reason"], "abort");
  EXPECT_LT(long_reply.json()["usage"]["completion_tokens"].get<int>(), 1000);

  const std::optional<int> rc = server.wait(15.0);
  ASSERT_TRUE(rc.has_value()) << "still running after SIGTERM\n" << server.log();
  EXPECT_EQ(*rc, 0) << server.log();
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GE(took, 1.5);  // waited for the timeout before aborting
  EXPECT_LT(took, 12.0);
  EXPECT_NE(server.log().find("SIGTERM"), std::string::npos);
}

}  // namespace
}  // namespace tandem::server::test

namespace tandem::server::test {
namespace {

// A second SIGINT does not wait for --shutdown-timeout: in-flight requests are aborted now.
TEST(ServerLimits, SecondSignalAbortsAtOnce) {
  REQUIRE_TOKENIZER();
  ServerProcess server({"--shutdown-timeout", "60", "--context-length", "2048",
                        "--max-total-tokens", "8192"});
  TestClient c(server.port());
  ASSERT_EQ(c.post("/slow_down", json{{"forward_sleep_time", 0.05}}).status, 200);
  Reply reply;
  std::thread t([&] {
    reply = TestClient(server.port())
                .post("/v1/completions", json{{"prompt", "Hi"}, {"max_tokens", 1000}, {"ignore_eos", true}});
  });
  ASSERT_TRUE(wait_for_load(c, 1, 0));
  const auto t0 = Clock::now();
  server.signal(SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  server.signal(SIGINT);
  t.join();
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.json()["choices"][0]["finish_reason"], "abort");
  const std::optional<int> rc = server.wait(10.0);
  ASSERT_TRUE(rc.has_value()) << server.log();
  EXPECT_EQ(*rc, 0) << server.log();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 8.0);
}

// The server process's thread count ("Threads:" in /proc/PID/status), or -1.
int process_threads(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

// The server process's open sockets (its connections and the listener).
int process_sockets(pid_t pid) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code link_ec;
    const std::filesystem::path target = std::filesystem::read_symlink(e.path(), link_ec);
    if (!link_ec && target.string().rfind("socket:", 0) == 0) ++n;
  }
  return n;
}

// 1,000 clients stream at once (a burst of connections, as a load balancer or a benchmark
// sends): every request completes with exactly its token count and the server returns to idle.
// Slowed-down steps keep the streams open long enough to look at the server meanwhile: with
// most of the thousand connections open, it still runs on a few threads (no thread per
// connection).
TEST(ServerLimits, ThousandConcurrentStreams) {
  REQUIRE_TOKENIZER();
  ServerProcess server({"--max-running-requests", "256", "--max-queued-requests", "1024",
                        "--max-total-tokens", "32768", "--context-length", "256",
                        "--http-threads", "4"});
  constexpr int kClients = 1000, kTokens = 4;
  // One request first, so the I/O threads and the CPU backend's pool (one thread per core)
  // exist: the bound is that baseline plus a little, never a thread per connection.
  ASSERT_EQ(TestClient(server.port()).post("/v1/completions", json{{"prompt", "Hi"}, {"max_tokens", 1}}).status, 200);
  const int baseline_threads = process_threads(server.pid());
  ASSERT_GT(baseline_threads, 0);
  const int max_server_threads = std::max(40, baseline_threads + 16);
  ASSERT_EQ(TestClient(server.port()).post("/slow_down", json{{"forward_sleep_time", 0.05}}).status, 200);
  tandem::app::BenchTarget target{"127.0.0.1", server.port(), "", ""};
  std::vector<tandem::app::RequestTiming> results(kClients);
  std::vector<std::thread> clients;
  std::atomic<int> finished{0};
  int max_threads = 0, max_sockets = 0, threads_at_max_sockets = 0;
  std::thread sampler([&] {
    while (finished.load() < kClients) {
      const int threads = process_threads(server.pid());
      const int sockets = process_sockets(server.pid());
      max_threads = std::max(max_threads, threads);
      if (sockets > max_sockets) {
        max_sockets = sockets;
        threads_at_max_sockets = threads;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  const double start = tandem::app::now_seconds();
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      results[i] = tandem::app::run_streaming_completion(target, "Hello number " + std::to_string(i),
                                                         kTokens, start);
      finished.fetch_add(1);
    });
  }
  for (auto& t : clients) t.join();
  sampler.join();
  // Most connections were open at one time, and the server kept its few threads (4 I/O
  // threads, the engine's, the CPU backend's).
  EXPECT_GE(max_sockets, kClients / 2) << "the streams did not overlap; the test proves nothing";
  EXPECT_GT(threads_at_max_sockets, 0);
  EXPECT_LT(max_threads, max_server_threads) << "with " << max_sockets << " sockets open";
  std::printf("1000 streams: up to %d server sockets open at once, at most %d server threads "
              "(%d when idle)\n", max_sockets, max_threads, baseline_threads);
  ASSERT_EQ(TestClient(server.port()).post("/slow_down", json{{"forward_sleep_time", nullptr}}).status, 200);
  int ok = 0;
  for (const auto& r : results) {
    // Token chunks may be fewer than tokens: text that ends inside a UTF-8 character is held
    // back until it is whole, so usage (not the chunk count) is the token count.
    if (r.ok && r.completion_tokens == kTokens && r.ttft_s > 0.0) {
      ++ok;
    } else if (ok < 3) {
      ADD_FAILURE() << "request failed: " << r.error << " tokens " << r.completion_tokens;
    }
  }
  EXPECT_EQ(ok, kClients);
  TestClient client(server.port());
  double usage = -1.0, running = -1.0;
  for (int i = 0; i < 100 && (usage != 0.0 || running != 0.0); ++i) {
    const std::string m = client.get("/metrics").body;
    usage = metric_value(m, "tandem:token_usage{").value_or(-1.0);
    running = metric_value(m, "tandem:num_requests_running{").value_or(-1.0);
    if (usage != 0.0 || running != 0.0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(running, 0.0);
  EXPECT_EQ(usage, 0.0);
}

}  // namespace
}  // namespace tandem::server::test
