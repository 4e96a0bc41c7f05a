// tandem router against fake prefill/decode servers (fake_upstream.h): the PD contract's
// forwarding, streaming passthrough, both policies, health (down, 503, back), prefill errors,
// client disconnects, bad JSON and /metrics.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <thread>

#include "router/router.h"
#include "tests/router/fake_upstream.h"

namespace tandem::router {
namespace {

using nlohmann::json;
using testing::FakeUpstream;
using testing::RoomRegistry;
using Clock = std::chrono::steady_clock;

// Polls `cond` for up to 5 s.
template <typename F>
bool eventually(F cond) {
  const auto end = Clock::now() + std::chrono::seconds(5);
  while (Clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

class RouterTest : public ::testing::Test {
 protected:
  // n_prefill prefills and n_decode decodes, and a router over them (started by start_router).
  void make_upstreams(int n_prefill, int n_decode) {
    for (int i = 0; i < n_prefill; ++i) {
      prefills_.push_back(std::make_unique<FakeUpstream>("prefill", registry_, 41000 + i));
      prefills_.back()->start();
    }
    for (int i = 0; i < n_decode; ++i) {
      decodes_.push_back(std::make_unique<FakeUpstream>("decode", registry_));
      decodes_.back()->start();
    }
  }
  void start_router(const std::string& policy = "round-robin", const std::string& api_key = "") {
    RouterConfig c;
    for (auto& p : prefills_) c.prefill_urls.push_back(p->url());
    for (auto& d : decodes_) c.decode_urls.push_back(d->url());
    c.port = 0;
    c.policy = policy;
    c.health_interval_s = 60;  // the tests poll explicitly
    c.request_timeout_s = request_timeout_s_;
    c.api_key = api_key;
    c.http_threads = 32;
    ASSERT_TRUE(c.validate().ok()) << c.validate().message();
    router_ = std::make_unique<Router>(c);
    ASSERT_TRUE(router_->bind().ok());
    thread_ = std::thread([this] { router_->run(); });
    client_ = std::make_unique<httplib::Client>("127.0.0.1", router_->port());
    client_->set_read_timeout(20, 0);
    ASSERT_TRUE(eventually([&] {
      auto r = client_->Get("/metrics");
      return r && r->status == 200;
    }));
  }
  void TearDown() override {
    if (router_) router_->stop();
    if (thread_.joinable()) thread_.join();
    router_.reset();
    for (auto& u : prefills_) u->stop();
    for (auto& u : decodes_) u->stop();
  }
  httplib::Result post(const json& body, const std::string& path = "/v1/completions") {
    return client_->Post(path.c_str(), body.dump(), "application/json");
  }
  std::string metrics() {
    auto r = client_->Get("/metrics");
    return r ? r->body : "";
  }

  double request_timeout_s_ = 20;
  RoomRegistry registry_;
  std::vector<std::unique_ptr<FakeUpstream>> prefills_, decodes_;
  std::unique_ptr<Router> router_;
  std::thread thread_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(RouterTest, ForwardsNonStreamingWithEqualBootstrapFields) {
  make_upstreams(1, 1);
  start_router();
  for (const char* path : {"/v1/completions", "/v1/chat/completions", "/generate"}) {
    auto r = post({{"prompt", "hi"}, {"max_tokens", 3}}, path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], "hello from decode");
  }
  ASSERT_EQ(prefills_[0]->bodies().size(), 3u);
  ASSERT_EQ(decodes_[0]->bodies().size(), 3u);
  EXPECT_EQ(decodes_[0]->mismatches, 0);
  for (size_t i = 0; i < 3; ++i) {
    const json p = prefills_[0]->bodies()[i];
    EXPECT_EQ(p["bootstrap_host"], "127.0.0.1");
    EXPECT_EQ(p["bootstrap_port"], 41000);
    EXPECT_TRUE(p["bootstrap_room"].is_number_unsigned());
    EXPECT_EQ(p["prompt"], "hi");
    EXPECT_EQ(p["max_tokens"], 3);
    EXPECT_EQ(p.size(), 5u);  // the client's two fields and the router's three
    EXPECT_EQ(decodes_[0]->bodies()[i], p);
  }
  EXPECT_NE(prefills_[0]->bodies()[0]["bootstrap_room"], prefills_[0]->bodies()[1]["bootstrap_room"]);
}

TEST_F(RouterTest, StreamsDecodeBytesExactlyAsTheyCome) {
  make_upstreams(1, 1);
  start_router();
  std::string got;
  std::vector<double> arrivals;
  const auto t0 = Clock::now();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = {{"Content-Type", "application/json"}};
  req.body = json{{"prompt", "hi"}, {"stream", true}}.dump();
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    got.append(data, n);
    arrivals.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    return true;
  };
  httplib::Response res;
  httplib::Error err;
  ASSERT_TRUE(client_->send(req, res, err)) << httplib::to_string(err);
  EXPECT_EQ(res.status, 200);
  EXPECT_EQ(res.get_header_value("Content-Type"), "text/event-stream");
  ASSERT_EQ(decodes_[0]->bodies().size(), 1u);
  EXPECT_EQ(got, FakeUpstream::stream_bytes(decodes_[0]->bodies()[0]));
  // The decode writes its 5 events 60 ms apart: passed through, not gathered, they arrive apart.
  ASSERT_GE(arrivals.size(), 2u);
  EXPECT_GT(arrivals.back() - arrivals.front(), 0.15);
}

// A short stream that decode finishes before prefill answers (found by pd_server_test's 200
// requests: the client got 200 with an empty body): the bytes still reach the client.
TEST_F(RouterTest, StreamFinishedBeforePrefillAnsweredIsPassedWhole) {
  make_upstreams(1, 1);
  prefills_[0]->delay_ms = 600;  // decode's 5 events take about 300 ms
  start_router();
  auto r = post({{"prompt", "hi"}, {"stream", true}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  ASSERT_EQ(decodes_[0]->bodies().size(), 1u);
  EXPECT_EQ(r->body, FakeUpstream::stream_bytes(decodes_[0]->bodies()[0]));
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
}

TEST_F(RouterTest, RoundRobinSpreadsOverHealthyServers) {
  make_upstreams(2, 3);
  start_router("round-robin");
  for (int i = 0; i < 6; ++i) ASSERT_EQ(post({{"prompt", "x"}})->status, 200);
  EXPECT_EQ(prefills_[0]->requests, 3);
  EXPECT_EQ(prefills_[1]->requests, 3);
  for (auto& d : decodes_) EXPECT_EQ(d->requests, 2);
  EXPECT_EQ(prefills_[1]->bodies()[0]["bootstrap_port"], 41001);
}

TEST_F(RouterTest, LeastLoadAvoidsTheBusyServer) {
  make_upstreams(1, 2);
  start_router("least-load");
  for (auto& d : decodes_) d->delay_ms = 1500;
  std::thread slow([&] {
    httplib::Client c("127.0.0.1", router_->port());
    c.set_read_timeout(20, 0);
    auto r = c.Post("/v1/completions", json{{"prompt", "slow"}}.dump(), "application/json");
    EXPECT_TRUE(r && r->status == 200);
  });
  ASSERT_TRUE(eventually([&] { return decodes_[0]->in_flight + decodes_[1]->in_flight == 1; }));
  const int busy = decodes_[0]->in_flight == 1 ? 0 : 1;
  for (auto& d : decodes_) d->delay_ms = 0;
  for (int i = 0; i < 4; ++i) ASSERT_EQ(post({{"prompt", "quick"}})->status, 200);
  EXPECT_EQ(decodes_[busy]->requests, 1);
  EXPECT_EQ(decodes_[1 - busy]->requests, 4);
  slow.join();
}

TEST_F(RouterTest, DownServerIsSkippedAnd503WhenNoneLeftThenRoutedAgain) {
  make_upstreams(1, 2);
  start_router();
  ASSERT_EQ(client_->Get("/health")->status, 200);
  // Decode 1 dies between polls: a request that picks it moves to decode 0 before it starts.
  const int port1 = decodes_[1]->port();
  decodes_[1]->stop();
  for (int i = 0; i < 3; ++i) ASSERT_EQ(post({{"prompt", "x"}})->status, 200);
  EXPECT_EQ(decodes_[0]->requests, 3);
  EXPECT_NE(metrics().find("tandem_router_upstream_healthy{role=\"decode\",url=\"" + decodes_[1]->url() + "\"} 0"),
            std::string::npos);
  // Decode 0 reports unhealthy: no decode is left.
  decodes_[0]->healthy = false;
  router_->poll_health_now();
  auto r = post({{"prompt", "x"}});
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(json::parse(r->body)["error"]["message"], "no healthy decode server");
  EXPECT_EQ(client_->Get("/health")->status, 503);
  EXPECT_EQ(decodes_[0]->requests, 3);
  EXPECT_EQ(prefills_[0]->requests, 3);
  EXPECT_NE(metrics().find("tandem_router_upstream_requests_total{role=\"prefill\",url=\"" + prefills_[0]->url() +
                           "\"} 3"),
            std::string::npos);
  // Both come back.
  decodes_[0]->healthy = true;
  decodes_[1]->start(port1);
  router_->poll_health_now();
  EXPECT_EQ(client_->Get("/health")->status, 200);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(post({{"prompt", "x"}})->status, 200);
  EXPECT_EQ(decodes_[0]->requests, 5);
  EXPECT_EQ(decodes_[1]->requests, 2);
}

TEST_F(RouterTest, WrongRoleIsUnhealthy) {
  make_upstreams(1, 1);
  prefills_[0]->claim_wrong_role = true;
  start_router();
  EXPECT_EQ(client_->Get("/health")->status, 503);
  auto r = post({{"prompt", "x"}});
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(json::parse(r->body)["error"]["message"], "no healthy prefill server");
  prefills_[0]->claim_wrong_role = false;
  router_->poll_health_now();
  EXPECT_EQ(post({{"prompt", "x"}})->status, 200);
}

TEST_F(RouterTest, PrefillErrorReachesClientAndClosesDecode) {
  make_upstreams(1, 1);
  start_router();
  prefills_[0]->error_status = 500;
  prefills_[0]->delay_ms = 100;
  decodes_[0]->endless = true;  // decode keeps its stream open until the router closes it
  auto r = post({{"prompt", "x"}, {"stream", true}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500);
  EXPECT_EQ(json::parse(r->body)["error"]["message"], "prefill failed: fake error");
  EXPECT_TRUE(eventually([&] { return decodes_[0]->closed_by_router == 1; }));
  EXPECT_TRUE(eventually([&] { return decodes_[0]->in_flight == 0; }));
  EXPECT_NE(metrics().find("tandem_router_requests_failed_total{reason=\"prefill_error\"} 1"), std::string::npos);
}

TEST_F(RouterTest, TimeoutIs504AndClosesBothUpstreams) {
  make_upstreams(1, 1);
  request_timeout_s_ = 0.3;
  start_router();
  prefills_[0]->endless = true;
  decodes_[0]->endless = true;
  auto r = post({{"prompt", "x"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 504);
  EXPECT_TRUE(eventually([&] { return prefills_[0]->closed_by_router == 1 && decodes_[0]->closed_by_router == 1; }));
  EXPECT_NE(metrics().find("tandem_router_requests_failed_total{reason=\"timeout\"} 1"), std::string::npos);
}

// Sends a request on a raw socket and closes it after `wait_ms` (reading what came first).
std::string send_and_leave(int port, const std::string& body, int wait_ms) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  EXPECT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
  char buf[4096];
  const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  ::close(fd);
  return n > 0 ? std::string(buf, n) : "";
}

TEST_F(RouterTest, ClientLeavingBeforeAnAnswerClosesBothUpstreams) {
  make_upstreams(1, 1);
  start_router();
  prefills_[0]->endless = true;  // prefill never finishes
  decodes_[0]->endless = true;
  const std::string early = send_and_leave(router_->port(), json{{"prompt", "x"}, {"stream", true}}.dump(), 300);
  EXPECT_EQ(early, "");  // nothing committed while the prefill runs
  EXPECT_TRUE(eventually([&] { return prefills_[0]->closed_by_router == 1; }));
  EXPECT_TRUE(eventually([&] { return decodes_[0]->closed_by_router == 1; }));
  EXPECT_TRUE(eventually([&] {
    return metrics().find("tandem_router_requests_failed_total{reason=\"client_disconnect\"} 1") != std::string::npos;
  }));
  EXPECT_NE(metrics().find("tandem_router_requests_in_flight 0"), std::string::npos);
}

TEST_F(RouterTest, ClientLeavingMidStreamClosesDecode) {
  make_upstreams(1, 1);
  start_router();
  decodes_[0]->endless = true;
  const std::string early = send_and_leave(router_->port(), json{{"prompt", "x"}, {"stream", true}}.dump(), 300);
  EXPECT_EQ(early.rfind("HTTP/1.1 200", 0), 0u) << early;
  EXPECT_NE(early.find(": ping"), std::string::npos);
  EXPECT_TRUE(eventually([&] { return decodes_[0]->closed_by_router == 1; }));
  EXPECT_TRUE(eventually([&] { return metrics().find("tandem_router_requests_in_flight 0") != std::string::npos; }));
}

TEST_F(RouterTest, BadJsonIs400WithoutTouchingUpstreams) {
  make_upstreams(1, 1);
  start_router();
  for (const std::string body : {"{not json", "[1,2]", R"({"prompt":"x","bootstrap_room":5})"}) {
    auto r = client_->Post("/v1/completions", body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << body;
    EXPECT_EQ(json::parse(r->body)["error"]["type"], "invalid_request_error");
  }
  EXPECT_EQ(prefills_[0]->requests, 0);
  EXPECT_EQ(decodes_[0]->requests, 0);
  EXPECT_NE(metrics().find("tandem_router_requests_failed_total{reason=\"bad_request\"} 3"), std::string::npos);
}

TEST_F(RouterTest, ApiKeyAndModels) {
  make_upstreams(1, 1);
  start_router("round-robin", "sekret");
  EXPECT_EQ(post({{"prompt", "x"}})->status, 401);
  EXPECT_EQ(client_->Get("/v1/models")->status, 401);
  EXPECT_EQ(client_->Get("/health")->status, 200);
  httplib::Headers auth{{"Authorization", "Bearer sekret"}};
  auto m = client_->Get("/v1/models", auth);
  ASSERT_EQ(m->status, 200);
  EXPECT_EQ(json::parse(m->body)["data"][0]["id"], "fake-decode");
  EXPECT_EQ(client_->Post("/v1/completions", auth, json{{"prompt", "x"}}.dump(), "application/json")->status, 200);
  EXPECT_EQ(prefills_[0]->requests, 1);
}

TEST_F(RouterTest, MetricsCountRequests) {
  make_upstreams(1, 1);
  start_router();
  for (int i = 0; i < 3; ++i) ASSERT_EQ(post({{"prompt", "x"}})->status, 200);
  ASSERT_EQ(client_->Post("/v1/completions", "nope", "application/json")->status, 400);
  const std::string m = metrics();
  EXPECT_NE(m.find("tandem_router_requests_total 4\n"), std::string::npos) << m;
  EXPECT_NE(m.find("tandem_router_requests_failed_total{reason=\"bad_request\"} 1\n"), std::string::npos) << m;
  EXPECT_NE(m.find("tandem_router_request_duration_seconds_count 3\n"), std::string::npos) << m;
  EXPECT_NE(m.find("tandem_router_upstream_requests_total{role=\"prefill\",url=\"" + prefills_[0]->url() + "\"} 3"),
            std::string::npos) << m;
  EXPECT_NE(m.find("tandem_router_upstream_healthy{role=\"decode\",url=\"" + decodes_[0]->url() + "\"} 1"),
            std::string::npos) << m;
  EXPECT_NE(m.find("tandem_router_upstream_in_flight{role=\"decode\",url=\"" + decodes_[0]->url() + "\"} 0"),
            std::string::npos) << m;
}

TEST(RouterConfigTest, ValidateNamesTheFlag) {
  RouterConfig c;
  EXPECT_NE(c.validate().message().find("--prefill"), std::string::npos);
  c.prefill_urls = {"http://a:1"};
  EXPECT_NE(c.validate().message().find("--decode"), std::string::npos);
  c.decode_urls = {"https://b:2"};
  EXPECT_NE(c.validate().message().find("--decode 'https://b:2'"), std::string::npos);
  c.decode_urls = {"http://b:2/"};
  EXPECT_TRUE(c.validate().ok());
  c.policy = "random";
  EXPECT_NE(c.validate().message().find("--policy"), std::string::npos);
  c.policy = "least-load";
  c.health_interval_s = 0;
  EXPECT_NE(c.validate().message().find("--health-interval-s"), std::string::npos);
  c.health_interval_s = 1;
  c.request_timeout_s = -1;
  EXPECT_NE(c.validate().message().find("--request-timeout-s"), std::string::npos);
  c.request_timeout_s = 1;
  c.prefill_urls = {"http://a:70000"};
  EXPECT_NE(c.validate().message().find("--prefill"), std::string::npos);
}

}  // namespace
}  // namespace tandem::router
