// End-to-end `tandem serve --ep 2 --dp-attention` on the CPU (docs/server.md, docs/parallel.md
// "The DP engine"): two in-process expert-parallel ranks, each with 8 of the test model's 16
// experts, its own requests and KV pool. Its greedy answers over /generate and /v1/completions,
// streaming and not, with prompts longer than --chunked-prefill-size, sent 4 at a time, equal a
// plain server's token for token; /metrics sums both ranks' KV pools; /health answers. Bad
// flags (--ep without --dp-attention, --ep not dividing the experts, --ep with a PD role) stop
// the server at start with an error naming the flag.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <stdexcept>
#include <thread>

#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace tandem::server::test {
namespace {

using nlohmann::json;

constexpr int kChunk = 48;
const std::vector<std::string> kCommon{
    "--served-model-name", "tiny", "--context-length", "512", "--max-total-tokens", "4096",
    "--chunked-prefill-size", std::to_string(kChunk), "--kv-cache-dtype", "f32",
    "--max-running-requests", "16"};

std::vector<std::string> args(const std::vector<std::string>& extra) {
  std::vector<std::string> a = kCommon;
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

class EpServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!tokenizer_dir()) return;
    plain_ = new ServerProcess(args({}));
    ep_ = new ServerProcess(args({"--ep", "2", "--dp-attention"}));
  }
  static void TearDownTestSuite() {
    delete plain_;
    delete ep_;
    plain_ = ep_ = nullptr;
  }
  void SetUp() override {
    if (plain_ == nullptr) GTEST_SKIP() << "DeepSeek-V3 tokenizer files not found: set TANDEM_TOKENIZER_DIR";
  }
  static ServerProcess *plain_, *ep_;
};
ServerProcess* EpServerTest::plain_ = nullptr;
ServerProcess* EpServerTest::ep_ = nullptr;

// A request's answer, read the same way from either server.
std::string answer(const std::string& path, const Reply& r, bool stream) {
  if (r.status != 200) return "status " + std::to_string(r.status) + ": " + r.body;
  std::vector<json> parts;
  if (stream) {
    for (const std::string& e : sse_events(r.body)) {
      if (e != "[DONE]") parts.push_back(json::parse(e, nullptr, false));
    }
  } else {
    parts.push_back(r.json());
  }
  std::string out;
  for (const json& j : parts) {
    if (j.contains("error")) return "error " + j.dump();
    if (path == "/generate") {
      out = j["output_ids"].dump();  // each chunk: the whole output so far
      if (j["meta_info"]["finish_reason"].is_object()) out += " " + j["meta_info"]["finish_reason"].dump();
    } else if (j.contains("choices") && !j["choices"].empty()) {
      out += j["choices"][0].value("text", "");
      if (j["choices"][0]["finish_reason"].is_string()) {
        out += " <" + j["choices"][0]["finish_reason"].get<std::string>() + ">";
      }
    }
  }
  return out;
}

TEST_F(EpServerTest, AnswersEqualAPlainServer) {
  std::mt19937 rng(5);
  struct Job {
    std::string path;
    bool stream;
    json body;
  };
  std::vector<Job> jobs;
  for (int i = 0; i < 16; ++i) {
    const int len = i % 3 == 0 ? kChunk + 1 + int(rng() % (2 * kChunk)) : 1 + int(rng() % kChunk);
    std::vector<int32_t> prompt(static_cast<size_t>(len));
    for (int32_t& t : prompt) t = int32_t(100 + rng() % 20000);
    const int max_tokens = 1 + int(rng() % 10);
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
  std::vector<std::string> expected(jobs.size()), got(jobs.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < jobs.size();) {
      const Job& j = jobs[i];
      expected[i] = answer(j.path, TestClient(plain_->port()).post(j.path, j.body), j.stream);
      got[i] = answer(j.path, TestClient(ep_->port()).post(j.path, j.body), j.stream);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t) pool.emplace_back(worker);
  for (std::thread& t : pool) t.join();
  for (size_t i = 0; i < jobs.size(); ++i) {
    EXPECT_EQ(expected[i].rfind("status", 0), std::string::npos) << expected[i];
    EXPECT_EQ(got[i], expected[i]) << "request " << i << " " << jobs[i].path
                                   << (jobs[i].stream ? " (stream)" : "");
  }

  // Both ranks' pools (4096 tokens each in pages of 16... whatever the page size: twice the
  // plain server's), nothing left in use.
  TestClient plain(plain_->port()), ep(ep_->port());
  const std::string pm = plain.get("/metrics").body;
  std::string em;
  for (int tries = 0; tries < 100; ++tries) {  // the last stats land after the last push
    em = ep.get("/metrics").body;
    if (metric_value(em, "tandem:num_requests_running{") == 0.0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(metric_value(pm, "tandem:kv_pages_total{").has_value()) << pm;
  EXPECT_EQ(metric_value(em, "tandem:kv_pages_total{"), 2 * *metric_value(pm, "tandem:kv_pages_total{"));
  EXPECT_EQ(metric_value(em, "tandem:num_requests_running{"), 0.0);
  EXPECT_GT(metric_value(em, "tandem:generation_tokens_total{").value_or(0.0), 0.0);
  EXPECT_EQ(ep.get("/health").status, 200);
}

// Starts a server that must fail; returns its log.
std::string failed_start(const std::vector<std::string>& extra) {
  try {
    ServerProcess s(args(extra));
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(the server started)";
}

TEST_F(EpServerTest, BadFlagsAreErrors) {
  std::string log = failed_start({"--ep", "2"});
  EXPECT_NE(log.find("--ep 2 needs --dp-attention"), std::string::npos) << log;
  log = failed_start({"--ep", "3", "--dp-attention"});
  EXPECT_NE(log.find("--ep 3 must divide the model's 16 routed experts"), std::string::npos) << log;
  log = failed_start({"--ep", "0"});
  EXPECT_NE(log.find("--ep must be at least 1"), std::string::npos) << log;
  log = failed_start({"--ep", "2", "--dp-attention", "--role", "prefill"});
  EXPECT_NE(log.find("--ep"), std::string::npos) << log;
  EXPECT_NE(log.find("--role prefill"), std::string::npos) << log;
}

}  // namespace
}  // namespace tandem::server::test
