// End-to-end tests of `tandem serve --role prefill|decode` (docs/disagg.md "HTTP"): a prefill,
// a decode and a colocated server (real processes, the 2-layer test model, tcp transfer on
// 127.0.0.1). Each request goes to P and D exactly as `tandem router` sends it (the client's
// body plus bootstrap_host/port/room); D's greedy output must equal the colocated server's
// token for token, over /generate and /v1/completions, streaming and not, with prompts longer
// than --chunked-prefill-size. Then the failures: no bootstrap fields (400), a decode request
// whose prefill never comes (an error within the bootstrap timeout), a prefill killed
// mid-request (decode ends it with an error and serves the next one). After each, /metrics
// shows no KV page used and no PD room in flight on either side.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <random>
#include <thread>

#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace tandem::server::test {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kChunk = 48;  // --chunked-prefill-size: longer prompts are prefilled in chunks
const std::vector<std::string> kCommon{
    "--served-model-name", "tiny", "--context-length", "512", "--max-total-tokens", "16384",
    "--chunked-prefill-size",
    std::to_string(kChunk), "--kv-cache-dtype", "f32", "--max-running-requests", "16"};
const std::vector<std::string> kPd{"--pd-token", "pd-server-test", "--bootstrap-timeout-ms",
                                   "1500", "--transfer-timeout-ms", "3000"};

std::vector<std::string> args(std::vector<std::string> role) {
  std::vector<std::string> a = kCommon;
  if (!role.empty()) a.insert(a.end(), kPd.begin(), kPd.end());
  a.insert(a.end(), role.begin(), role.end());
  return a;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

class PdServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!tokenizer_dir()) return;
    prefill_ = new ServerProcess(args({"--role", "prefill", "--disaggregation-bootstrap-port", "0"}));
    decode_ = new ServerProcess(args({"--role", "decode", "--disaggregation-decode-reserve", "16"}));
    colocated_ = new ServerProcess(args({}));
    bootstrap_port_ = TestClient(prefill_->port()).get("/pd_info").json().value("bootstrap_port", 0);
  }
  static void TearDownTestSuite() {
    delete prefill_;
    delete decode_;
    delete colocated_;
    prefill_ = decode_ = colocated_ = nullptr;
  }
  void SetUp() override {
    if (prefill_ == nullptr) {
      GTEST_SKIP() << "DeepSeek-V3 tokenizer files not found: set TANDEM_TOKENIZER_DIR";
    }
  }

  // The body the router sends to both sides of a pair.
  static json with_bootstrap(json body, uint64_t room, int bootstrap_port = bootstrap_port_) {
    body["bootstrap_host"] = "127.0.0.1";
    body["bootstrap_port"] = bootstrap_port;
    body["bootstrap_room"] = room;
    return body;
  }
  static uint64_t new_room() {
    static std::mt19937_64 rng(std::random_device{}());
    return rng();
  }
  // Polls a server's /metrics until no KV page is used and no PD room is in flight.
  static bool idle(const ServerProcess& s, double timeout_s = 10.0) {
    TestClient c(s.port());
    const auto t0 = Clock::now();
    while (seconds_since(t0) < timeout_s) {
      const std::string m = c.get("/metrics").body;
      if (metric_value(m, "tandem:kv_pages_used{") == 0.0 &&
          metric_value(m, "tandem:num_requests_running{") == 0.0 &&
          metric_value(m, "tandem:pd_rooms_in_flight{").value_or(0.0) == 0.0) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "server on port " << s.port() << " still busy:\n" << c.get("/metrics").body;
    return false;
  }


 public:
  static void expect_pd_matches_colocated(const ServerProcess& prefill,
                                          const ServerProcess& decode, int count, int threads);

 protected:

  static ServerProcess *prefill_, *decode_, *colocated_;
  static int bootstrap_port_;
};
ServerProcess* PdServerTest::prefill_ = nullptr;
ServerProcess* PdServerTest::decode_ = nullptr;
ServerProcess* PdServerTest::colocated_ = nullptr;
int PdServerTest::bootstrap_port_ = 0;

// What a request produced, read the same way from any server: token ids (/generate) or text
// (/v1/completions), and the finish reason.
struct Output {
  int status = -1;
  std::vector<int32_t> ids;
  std::string text;
  std::string finish;
  std::string error;
  bool operator==(const Output& o) const {
    return status == o.status && ids == o.ids && text == o.text && finish == o.finish;
  }
};

std::ostream& operator<<(std::ostream& os, const Output& o) {
  return os << "{status " << o.status << ", ids " << json(o.ids).dump() << ", text "
            << json(o.text).dump() << ", finish " << o.finish << ", error " << o.error << "}";
}

Output read_output(const std::string& path, const Reply& r, bool stream) {
  Output o;
  o.status = r.status;
  if (r.status != 200) {
    o.error = r.body;
    return o;
  }
  std::vector<json> parts;
  if (stream) {
    for (const std::string& e : sse_events(r.body)) {
      if (e != "[DONE]") parts.push_back(json::parse(e, nullptr, false));
    }
  } else {
    parts.push_back(r.json());
  }
  for (const json& j : parts) {
    if (j.contains("error")) {
      o.error = j.dump();
      continue;
    }
    if (path == "/generate") {
      o.ids = j["output_ids"].get<std::vector<int32_t>>();  // each chunk: the whole output so far
      if (j["meta_info"]["finish_reason"].is_object())
        o.finish = j["meta_info"]["finish_reason"]["type"];
    } else if (j.contains("choices") && !j["choices"].empty()) {
      o.text += j["choices"][0].value("text", "");
      if (j["choices"][0]["finish_reason"].is_string()) o.finish = j["choices"][0]["finish_reason"];
    }
  }
  return o;
}

TEST_F(PdServerTest, PdInfoAndRequestsWithoutBootstrapFields) {
  const json p = TestClient(prefill_->port()).get("/pd_info").json();
  EXPECT_EQ(p["role"], "prefill");
  EXPECT_GT(bootstrap_port_, 0);
  EXPECT_EQ(TestClient(decode_->port()).get("/pd_info").json(),
            (json{{"role", "decode"}, {"bootstrap_port", 0}}));
  EXPECT_EQ(TestClient(colocated_->port()).get("/pd_info").json(),
            (json{{"role", "colocated"}, {"bootstrap_port", 0}}));

  const json body{{"prompt", "Hello"}, {"max_tokens", 3}};
  for (const ServerProcess* s : {prefill_, decode_}) {
    const Reply r = TestClient(s->port()).post("/v1/completions", body);
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_NE(r.body.find("send requests through tandem router"), std::string::npos) << r.body;
    // Part of the fields, or a bad one: 400 naming the field.
    json partial = body;
    partial["bootstrap_room"] = 5;
    const Reply r2 = TestClient(s->port()).post("/v1/completions", partial);
    EXPECT_EQ(r2.status, 400);
    EXPECT_NE(r2.body.find("bootstrap_host: missing"), std::string::npos) << r2.body;
    json bad = with_bootstrap(body, 5);
    bad["bootstrap_port"] = 70000;
    const Reply r3 = TestClient(s->port()).post("/generate", bad);
    EXPECT_EQ(r3.status, 400);
    EXPECT_NE(r3.body.find("bootstrap_port"), std::string::npos) << r3.body;
    json n2 = with_bootstrap(body, 6);
    n2["n"] = 2;
    const Reply r4 = TestClient(s->port()).post("/v1/completions", n2);
    EXPECT_EQ(r4.status, 400);
    EXPECT_NE(r4.body.find("n = 1 only"), std::string::npos) << r4.body;
  }
  EXPECT_TRUE(idle(*prefill_));
  EXPECT_TRUE(idle(*decode_));
}

// Sends `count` requests of mixed endpoints, prompt lengths and output lengths to a real
// `tandem router` in front of `prefill` + `decode` and the same to the colocated server,
// `threads` at a time; the router's answer must equal the colocated one.
void PdServerTest::expect_pd_matches_colocated(const ServerProcess& prefill,
                                               const ServerProcess& decode, int count,
                                               int threads) {
  ServerProcess router({"--prefill", "http://127.0.0.1:" + std::to_string(prefill.port()),
                        "--decode", "http://127.0.0.1:" + std::to_string(decode.port()),
                        "--health-interval-s", "0.5", "--request-timeout-s", "60"},
                       ServerProcess::Command::kRouter);
  std::mt19937 rng(11 + uint32_t(count));
  struct Job {
    std::string path;
    bool stream;
    json body;
  };
  std::vector<Job> jobs;
  for (int i = 0; i < count; ++i) {
    // A third longer than the chunk (up to 4 chunks), the rest 1 token to one chunk.
    const int len = i % 3 == 0 ? kChunk + 1 + int(rng() % (3 * kChunk)) : 1 + int(rng() % kChunk);
    std::vector<int32_t> prompt(static_cast<size_t>(len));
    for (int32_t& t : prompt) t = int32_t(100 + rng() % 20000);
    const int max_tokens = 1 + int(rng() % 12);
    const bool stream = i % 4 >= 2;
    if (i % 2 == 0) {
      jobs.push_back({"/generate", stream,
                      json{{"input_ids", prompt}, {"stream", stream},
                           {"sampling_params", {{"max_new_tokens", max_tokens},
                                                {"temperature", 0}, {"ignore_eos", true}}}}});
    } else {
      jobs.push_back({"/v1/completions", stream,
                      json{{"prompt", prompt}, {"max_tokens", max_tokens}, {"stream", stream},
                           {"temperature", 0}, {"ignore_eos", true}}});
    }
  }
  jobs[1].body["prompt"] = jobs[0].body["input_ids"];  // a repeat: P's prefix cache serves it

  std::vector<Output> expected(jobs.size()), got(jobs.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < jobs.size();) {
      const Job& j = jobs[i];
      expected[i] = read_output(j.path, TestClient(colocated_->port()).post(j.path, j.body), j.stream);
      got[i] = read_output(j.path, TestClient(router.port()).post(j.path, j.body), j.stream);
    }
  };
  const auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (std::thread& t : pool) t.join();
  std::printf("%zu requests through tandem router in %.1f s\n", jobs.size(), seconds_since(t0));

  int chunked = 0, equal = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_EQ(expected[i].status, 200) << expected[i];
    EXPECT_EQ(got[i], expected[i]) << "request " << i << " " << jobs[i].path
                                   << (jobs[i].stream ? " (stream)" : "");
    equal += got[i] == expected[i];
    const json& prompt = jobs[i].body.contains("input_ids") ? jobs[i].body["input_ids"]
                                                            : jobs[i].body["prompt"];
    chunked += prompt.size() > size_t(kChunk);
  }
  std::printf("%d of %zu equal token for token; %d prompts chunked\n", equal, jobs.size(), chunked);
  EXPECT_GE(chunked, count / 4);
  // Every request went through this pair: the router counted them and both sides are idle.
  const std::string rm = TestClient(router.port()).get("/metrics").body;
  EXPECT_NE(rm.find("tandem_router"), std::string::npos);
  EXPECT_TRUE(idle(prefill));
  EXPECT_TRUE(idle(decode));
}

// The requirement: 200 requests of mixed lengths over each transfer backend, through
// `tandem router`, token for token the colocated output. tcp: 200 in CI (about 35 s on the
// shared 2-core machine); ucx: 40 in CI and the 200 as a separate ctest entry labelled `slow`
// (pd_server_slow_test, filter *Slow), since both 200s take over a minute there.
TEST_F(PdServerTest, TwoHundredRequestsThroughRouterMatchColocatedOverTcp) {
  expect_pd_matches_colocated(*prefill_, *decode_, 200, 8);
}

#ifdef TANDEM_TEST_UCX
void expect_ucx_pair_matches_colocated(int count) {
  ServerProcess p(args({"--role", "prefill", "--disaggregation-bootstrap-port", "0",
                        "--transfer-backend", "ucx"}));
  ServerProcess d(args({"--role", "decode", "--transfer-backend", "ucx"}));
  PdServerTest::expect_pd_matches_colocated(p, d, count, 8);
}

TEST_F(PdServerTest, FortyRequestsThroughRouterMatchColocatedOverUcx) {
  expect_ucx_pair_matches_colocated(40);
}

TEST_F(PdServerTest, TwoHundredRequestsThroughRouterMatchColocatedOverUcxSlow) {
  expect_ucx_pair_matches_colocated(200);
}
#endif

// The client leaves: before the prefill came (decode's abort tells the prefill side), and
// mid-stream. Both sides free everything.
TEST_F(PdServerTest, ClientLeavingAbortsBothSides) {
  const json body{{"input_ids", {5, 6, 7, 8, 9, 10, 11, 12}},
                  {"stream", true},
                  {"sampling_params", {{"max_new_tokens", 400}, {"temperature", 0}, {"ignore_eos", true}}}};
  auto aborted = [] {
    return metric_value(TestClient(decode_->port()).get("/metrics").body,
                        "tandem:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"}")
        .value_or(-1);
  };
  const double aborted_before = aborted();
  // Before its prefill: D has reserved and connected to P, which waits for the room.
  int fd = raw_send(decode_->port(), http_post("/generate", with_bootstrap(body, new_room()).dump()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::close(fd);
  EXPECT_TRUE(idle(*decode_));
  EXPECT_TRUE(idle(*prefill_));
  // Mid-stream: the first SSE bytes arrived, then the client goes.
  const json pd = with_bootstrap(body, new_room());
  auto p = std::async(std::launch::async, [&] { return TestClient(prefill_->port()).post("/generate", pd); });
  fd = raw_send(decode_->port(), http_post("/generate", pd.dump()));
  std::string got;
  char buf[4096];
  while (got.find("output_ids") == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0) << got;
    got.append(buf, size_t(n));
  }
  ::close(fd);
  EXPECT_EQ(p.get().status, 200);  // P's part was done before D streamed
  EXPECT_TRUE(idle(*decode_));
  EXPECT_TRUE(idle(*prefill_));
  EXPECT_EQ(aborted(), aborted_before + 2);
}

// Bad PD flags stop `tandem serve` at start-up with an error naming the flag.
TEST_F(PdServerTest, BadPdFlagsAreRefusedNamingTheFlag) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"--role", "bogus"}, "--role"},
      {{"--role", "decode", "--bootstrap-timeout-ms", "0"}, "--bootstrap-timeout-ms must be > 0"},
      {{"--role", "decode", "--transfer-timeout-ms", "-5"}, "--transfer-timeout-ms must be > 0"},
      {{"--role", "decode", "--disaggregation-decode-reserve", "-1"},
       "--disaggregation-decode-reserve must be >= 0"},
      {{"--transfer-backend", "carrier-pigeon"}, "--transfer-backend"},
      {{"--role", "prefill", "--pd-advertise-host", "0.0.0.0"},
       "--pd-advertise-host '0.0.0.0' is a wildcard address"},
      {{"--role", "decode", "--pd-advertise-host", "::"}, "--pd-advertise-host '::' is a wildcard"},
      {{"--role", "decode", "--pd-advertise-host", "my host"},
       "--pd-advertise-host 'my host' is not a host name or IP address"},
      {{"--pd-advertise-host", "10.0.0.2"}, "--pd-advertise-host is for --role prefill or decode"},
      // The bootstrap port is taken (by the suite's prefill server).
      {{"--role", "prefill", "--disaggregation-bootstrap-port", std::to_string(bootstrap_port_)},
       "--role prefill"},
  };
  for (const auto& [flags, want] : cases) {
    try {
      ServerProcess s(flags);
      ADD_FAILURE() << "started with " << json(flags).dump();
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos)
          << json(flags).dump() << ":\n" << e.what();
    }
  }
}

// --pd-advertise-host on a prefill: /pd_info names it and tandem router tells decode servers to
// connect there instead of the host in the prefill's URL. Advertised as 127.0.0.2, where
// nobody listens (the prefill binds 127.0.0.1 only), the decode side's connection fails naming
// that address; advertised as "localhost", requests work.
TEST_F(PdServerTest, AdvertiseHostIsWhereTheRouterSendsDecode) {
  const json body{{"input_ids", {5, 6, 7, 8, 9, 10, 11}},
                  {"sampling_params", {{"max_new_tokens", 3}, {"temperature", 0}, {"ignore_eos", true}}}};
  const Output want = read_output("/generate", TestClient(colocated_->port()).post("/generate", body), false);
  for (const std::string host : {"127.0.0.2", "localhost"}) {
    SCOPED_TRACE(host);
    ServerProcess p(args({"--role", "prefill", "--disaggregation-bootstrap-port", "0",
                          "--pd-advertise-host", host}));
    const json info = TestClient(p.port()).get("/pd_info").json();
    EXPECT_EQ(info.value("bootstrap_host", ""), host) << info.dump();
    ServerProcess router({"--prefill", "http://127.0.0.1:" + std::to_string(p.port()), "--decode",
                          "http://127.0.0.1:" + std::to_string(decode_->port())},
                         ServerProcess::Command::kRouter);
    const Reply r = TestClient(router.port()).post("/generate", body);
    if (host == "localhost") {
      EXPECT_EQ(read_output("/generate", r, false), want) << r.body;
    } else {
      EXPECT_EQ(r.status, 502) << r.body;
      EXPECT_NE(r.body.find("cannot reach the prefill bootstrap endpoint 127.0.0.2:" +
                            std::to_string(info.value("bootstrap_port", 0))),
                std::string::npos)
          << r.body;
    }
    EXPECT_TRUE(idle(*decode_));
    EXPECT_TRUE(idle(p));
  }
}

TEST_F(PdServerTest, DecodeRequestWhosePrefillNeverComesEndsWithAnError) {
  const json body{{"input_ids", {5, 6, 7, 8, 9, 10, 11}},
                  {"sampling_params", {{"max_new_tokens", 4}, {"temperature", 0}}}};
  // A socket that accepts connections (the kernel's backlog) and never answers.
  const int silent = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(silent, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(silent, 8), 0);
  ASSERT_EQ(::getsockname(silent, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  struct Case {
    int port;
    int status;
    std::string message;
  };
  const Case cases[] = {
      // P is reachable but never gets this room's request: it gives up at its bootstrap timeout.
      {bootstrap_port_, 502, "prefill has no request for room"},
      {1, 502, "cannot reach the prefill bootstrap endpoint 127.0.0.1:1"},  // nobody listens
      {ntohs(addr.sin_port), 504, "cannot reach the prefill bootstrap endpoint"},  // silent
  };
  for (const Case& c : cases) {
    const auto t0 = Clock::now();
    const Reply r = TestClient(decode_->port()).post("/generate", with_bootstrap(body, new_room(), c.port));
    EXPECT_EQ(r.status, c.status) << r.body;
    const std::string message = r.json()["error"].value("message", "");
    EXPECT_EQ(message.rfind("PD decode failed: ", 0), 0u) << r.body;
    EXPECT_NE(message.find(c.message), std::string::npos) << r.body;
    EXPECT_EQ(r.json()["error"]["code"], c.status == 504 ? "pd_timeout" : "pd_peer_failed");
    EXPECT_LT(seconds_since(t0), 5.0);
    EXPECT_TRUE(idle(*decode_));
    EXPECT_TRUE(idle(*prefill_));
  }
  ::close(silent);
  // Streaming: the headers are out, so the error comes as an SSE event.
  json s = body;
  s["stream"] = true;
  const Reply r = TestClient(decode_->port()).post("/generate", with_bootstrap(s, new_room()));
  ASSERT_EQ(r.status, 200);
  const std::vector<std::string> events = sse_events(r.body);
  ASSERT_GE(events.size(), 2u) << r.body;
  EXPECT_NE(events[events.size() - 2].find("PD decode failed"), std::string::npos) << r.body;
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_TRUE(idle(*decode_));
  EXPECT_TRUE(idle(*prefill_));
}

TEST_F(PdServerTest, PrefillKilledMidRequestFailsDecodeWhichServesOn) {
  ServerProcess doomed(args({"--role", "prefill", "--disaggregation-bootstrap-port", "0"}));
  const int doomed_port = TestClient(doomed.port()).get("/pd_info").json()["bootstrap_port"];
  // Every forward step of the doomed prefill sleeps: its 5-chunk prefill takes seconds.
  ASSERT_EQ(TestClient(doomed.port()).post("/slow_down", json{{"forward_sleep_time", 0.4}}).status, 200);
  std::vector<int32_t> prompt(5 * kChunk);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(300 + i);
  const json body{{"input_ids", prompt},
                  {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}}}};
  const json pd = with_bootstrap(body, new_room(), doomed_port);
  auto p = std::async(std::launch::async, [&] { return TestClient(doomed.port()).post("/generate", pd); });
  auto d = std::async(std::launch::async, [&] { return TestClient(decode_->port()).post("/generate", pd); });
  std::this_thread::sleep_for(std::chrono::milliseconds(900));  // mid-prefill
  doomed.signal(SIGKILL);
  const auto t0 = Clock::now();
  const Reply r = d.get();
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_NE(r.body.find("PD decode failed"), std::string::npos) << r.body;
  EXPECT_LT(seconds_since(t0), 5.0);
  EXPECT_EQ(p.get().status, -1);  // the prefill died with the connection open
  EXPECT_TRUE(idle(*decode_));

  // The decode server serves the next request, through the live prefill.
  const Output want = read_output("/generate", TestClient(colocated_->port()).post("/generate", body), false);
  const json next = with_bootstrap(body, new_room());
  auto p2 = std::async(std::launch::async, [&] { return TestClient(prefill_->port()).post("/generate", next); });
  const Output got = read_output("/generate", TestClient(decode_->port()).post("/generate", next), false);
  EXPECT_EQ(p2.get().status, 200);
  EXPECT_EQ(got, want);
  EXPECT_EQ(got.ids.size(), 8u);
  EXPECT_TRUE(idle(*decode_));
  EXPECT_TRUE(idle(*prefill_));
}

}  // namespace
}  // namespace tandem::server::test
