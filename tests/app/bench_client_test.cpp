// tandem bench's client against an in-process fake server speaking the OpenAI streaming format.
#include <gtest/gtest.h>
#include <httplib.h>

#include <thread>

#include "app/bench_client.h"
#include "app/bench_report.h"
#include "core/error.h"

namespace tandem::app {
namespace {

class FakeServer {
 public:
  explicit FakeServer(std::function<void(const httplib::Request&, httplib::Response&)> handler) {
    server_.Post("/v1/completions", handler);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeServer() {
    server_.stop();
    thread_.join();
  }
  BenchTarget target() const { return {"127.0.0.1", port_, "", ""}; }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

// Streams `tokens` chunks 20 ms apart, then a usage chunk and [DONE].
void stream_tokens(httplib::Response& res, int tokens, bool usage, bool done) {
  res.set_chunked_content_provider("text/event-stream", [=](size_t, httplib::DataSink& sink) {
    for (int i = 0; i < tokens; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      const std::string chunk = R"(data: {"choices":[{"index":0,"text":"t)" + std::to_string(i) + "\"}]}\n\n";
      sink.write(chunk.data(), chunk.size());
    }
    std::string tail;
    if (usage) tail += "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":" + std::to_string(tokens) + "}}\n\n";
    if (done) tail += "data: [DONE]\n\n";
    sink.write(tail.data(), tail.size());
    sink.done();
    return true;
  });
}

TEST(BenchClient, TimesEveryChunkAndReadsUsage) {
  FakeServer server([](const httplib::Request& req, httplib::Response& res) {
    const auto body = nlohmann::json::parse(req.body);
    EXPECT_TRUE(body["stream"].get<bool>());
    EXPECT_TRUE(body["stream_options"]["include_usage"].get<bool>());
    EXPECT_EQ(body["max_tokens"].get<int>(), 5);
    stream_tokens(res, 5, true, true);
  });
  const RequestTiming t = run_streaming_completion(server.target(), "hello", 5, now_seconds());
  ASSERT_TRUE(t.ok) << t.error;
  EXPECT_EQ(t.prompt_tokens, 7);
  EXPECT_EQ(t.completion_tokens, 5);
  EXPECT_EQ(t.itl_s.size(), 4u);
  EXPECT_GE(t.ttft_s, 0.015);
  for (double gap : t.itl_s) EXPECT_GE(gap, 0.015);
  EXPECT_GE(t.e2e_s, t.ttft_s);
}

TEST(BenchClient, ReportsServerErrorsAndTruncatedStreams) {
  FakeServer bad([](const httplib::Request&, httplib::Response& res) {
    res.status = 400;
    res.set_content(R"({"error":{"message":"max_tokens must be positive"}})", "application/json");
  });
  RequestTiming t = run_streaming_completion(bad.target(), "x", 5, now_seconds());
  EXPECT_FALSE(t.ok);
  EXPECT_NE(t.error.find("HTTP 400"), std::string::npos) << t.error;

  FakeServer truncated([](const httplib::Request&, httplib::Response& res) { stream_tokens(res, 3, true, false); });
  t = run_streaming_completion(truncated.target(), "x", 3, now_seconds());
  EXPECT_FALSE(t.ok);
  EXPECT_NE(t.error.find("[DONE]"), std::string::npos) << t.error;

  FakeServer no_usage([](const httplib::Request&, httplib::Response& res) { stream_tokens(res, 3, false, true); });
  t = run_streaming_completion(no_usage.target(), "x", 3, now_seconds());
  EXPECT_FALSE(t.ok);
  EXPECT_NE(t.error.find("usage"), std::string::npos) << t.error;

  t = run_streaming_completion({"127.0.0.1", 1, "", ""}, "x", 3, now_seconds());
  EXPECT_FALSE(t.ok);
}

TEST(BenchReport, PercentilesAndThroughput) {
  const Distribution d = Distribution::of({4, 1, 3, 2, 5});
  EXPECT_DOUBLE_EQ(d.mean, 3.0);
  EXPECT_DOUBLE_EQ(d.median, 3.0);
  EXPECT_DOUBLE_EQ(d.p90, 4.6);
  EXPECT_DOUBLE_EQ(d.max, 5.0);
  RequestTiming a{true, "", 10, 4, 0.5, 2.0, {0.5, 0.5, 0.5}, 0};
  RequestTiming b{false, "boom", 0, 0, 0, 0, {}, 0};
  const BenchSummary s = BenchSummary::of({a, b}, 2.0, 2);
  EXPECT_EQ(s.completed, 1);
  EXPECT_EQ(s.failed, 1);
  const auto j = s.to_json();
  EXPECT_DOUBLE_EQ(j["output_throughput"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(j["output_throughput_per_gpu"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["tpot_ms"]["mean"].get<double>(), 500.0);  // (2.0 - 0.5) / 3
  EXPECT_EQ(j["errors"][0], "boom");
}

TEST(BenchClient, BaseUrlIsValidated) {
  EXPECT_EQ(parse_base_url("http://localhost:8080").port, 8080);
  EXPECT_EQ(parse_base_url("http://10.0.0.1").port, 30000);
  EXPECT_THROW(parse_base_url("https://x:1"), Error);
  EXPECT_THROW(parse_base_url("localhost:80"), Error);
  EXPECT_THROW(parse_base_url("http://x:99999"), Error);
}

}  // namespace
}  // namespace tandem::app
