// End-to-end tests of `tandem serve`'s API: the real binary on a free port with a 2-layer
// random model and DeepSeek-V3's tokenizer, spoken to over HTTP. Completions and chat,
// streaming and not, n > 1, logprobs, stop strings and token ids, usage, /generate, /abort,
// /slow_down, /metrics, /health, client disconnects, and the OpenAI Python client.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/server/server_process.h"
#include "tests/server/test_client.h"

namespace tandem::server::test {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

class ApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!tokenizer_dir()) return;
    server_ = new ServerProcess({"--served-model-name", "tiny", "--context-length", "256",
                                 "--max-total-tokens", "8192", "--max-running-requests", "16"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (server_ == nullptr) {
      GTEST_SKIP() << "DeepSeek-V3 tokenizer files not found: set TANDEM_TOKENIZER_DIR to a "
                      "folder with tokenizer.json and tokenizer_config.json";
    }
  }

  static int port() { return server_->port(); }
  static TestClient client() { return TestClient(port()); }
  static std::string metrics() { return client().get("/metrics").body; }
  static double metric(const std::string& series) {
    return metric_value(metrics(), series).value_or(-1.0);
  }
  // Polls /metrics until the running and waiting gauges are 0 and the KV usage is back to 0.
  static bool wait_idle(double timeout_s = 10.0) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    while (Clock::now() < deadline) {
      const std::string m = metrics();
      if (metric_value(m, "tandem:num_requests_running{") == 0.0 &&
          metric_value(m, "tandem:num_requests_waiting{") == 0.0 &&
          metric_value(m, "tandem:token_usage{") == 0.0) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  static void slow_down(json seconds) {
    ASSERT_EQ(client().post("/slow_down", json{{"forward_sleep_time", seconds}}).status, 200);
  }

  static ServerProcess* server_;
};
ServerProcess* ApiTest::server_ = nullptr;

json greedy_completion(int max_tokens) {
  return json{{"model", "tiny"}, {"prompt", "The capital of France is"},
              {"max_tokens", max_tokens}, {"temperature", 0}, {"ignore_eos", true}};
}

TEST_F(ApiTest, ModelsAndHealth) {
  Reply models = client().get("/v1/models");
  ASSERT_EQ(models.status, 200) << models.body;
  EXPECT_EQ(models.json()["object"], "list");
  EXPECT_EQ(models.json()["data"][0]["id"], "tiny");
  EXPECT_EQ(models.json()["data"][0]["max_model_len"], 256);
  EXPECT_EQ(client().get("/health").status, 200);
}

TEST_F(ApiTest, CompletionWithUsage) {
  Reply r = client().post("/v1/completions", greedy_completion(8));
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.json();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["text"].is_string());
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 3);
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
  EXPECT_EQ(j["usage"]["total_tokens"].get<int>(),
            j["usage"]["prompt_tokens"].get<int>() + 8);
  // Greedy is deterministic; so is sampling with a seed.
  EXPECT_EQ(client().post("/v1/completions", greedy_completion(8)).json()["choices"][0]["text"],
            j["choices"][0]["text"]);
  json seeded = greedy_completion(8);
  seeded["temperature"] = 1.0;
  seeded["seed"] = 1234;
  EXPECT_EQ(client().post("/v1/completions", seeded).json()["choices"][0]["text"],
            client().post("/v1/completions", seeded).json()["choices"][0]["text"]);
}

TEST_F(ApiTest, CompletionStreamMatchesWholeResponse) {
  const std::string whole =
      client().post("/v1/completions", greedy_completion(10)).json()["choices"][0]["text"];
  json body = greedy_completion(10);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  Reply r = client().post("/v1/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.headers.find("Content-Type")->second.find("text/event-stream"), std::string::npos);
  const std::vector<std::string> events = sse_events(r.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const json c = json::parse(events[i]);
    EXPECT_EQ(c["object"], "text_completion");
    EXPECT_TRUE(c.contains("usage") && c["usage"].is_null());
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, whole);
  EXPECT_EQ(finish, "length");
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 10);
}

TEST_F(ApiTest, ChatWholeAndStreamed) {
  json body{{"model", "tiny"},
            {"messages", {{{"role", "system"}, {"content", "Be brief."}},
                          {{"role", "user"}, {"content", "Hello!"}}}},
            {"max_completion_tokens", 6}, {"temperature", 0}, {"ignore_eos", true}};
  Reply r = client().post("/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.json();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 6);
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 5);  // the template's tokens included

  body["stream"] = true;
  Reply s = client().post("/v1/chat/completions", body);
  ASSERT_EQ(s.status, 200) << s.body;
  const std::vector<std::string> events = sse_events(s.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string text, finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i]);
    EXPECT_FALSE(c.contains("usage"));  // not asked for
    const json& delta = c["choices"][0]["delta"];
    if (delta.contains("content")) text += delta["content"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, j["choices"][0]["message"]["content"]);
  EXPECT_EQ(finish, "length");
}

TEST_F(ApiTest, SeveralChoices) {
  json body = greedy_completion(5);
  body["n"] = 3;
  body["temperature"] = 1.0;
  body["seed"] = 5;
  Reply r = client().post("/v1/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.json();
  ASSERT_EQ(j["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["finish_reason"], "length");
  }
  EXPECT_EQ(j["usage"]["completion_tokens"], 15);

  body["stream"] = true;
  body["n"] = 2;
  const std::vector<std::string> events = sse_events(client().post("/v1/completions", body).body);
  int finished[2] = {0, 0};
  for (const std::string& e : events) {
    if (e == "[DONE]") continue;
    const json c = json::parse(e);
    if (!c["choices"][0]["finish_reason"].is_null()) ++finished[c["choices"][0]["index"].get<int>()];
  }
  EXPECT_EQ(finished[0], 1);
  EXPECT_EQ(finished[1], 1);
}

TEST_F(ApiTest, CompletionLogprobs) {
  json body = greedy_completion(4);
  body["logprobs"] = 3;
  Reply r = client().post("/v1/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const json lp = r.json()["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 4u);
  ASSERT_EQ(lp["token_logprobs"].size(), 4u);
  ASSERT_EQ(lp["top_logprobs"].size(), 4u);
  ASSERT_EQ(lp["text_offset"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const double chosen = lp["token_logprobs"][i];
    EXPECT_LE(chosen, 0.0);
    const json& top = lp["top_logprobs"][i];
    EXPECT_GE(top.size(), 1u);  // tokens with the same text share a key
    EXPECT_LE(top.size(), 3u);
    // Greedy: the chosen token is the most likely one.
    for (auto it = top.begin(); it != top.end(); ++it) EXPECT_LE(it.value().get<double>(), chosen + 1e-4);
  }
}

TEST_F(ApiTest, ChatLogprobs) {
  json body{{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
            {"max_tokens", 3}, {"temperature", 0}, {"ignore_eos", true},
            {"logprobs", true}, {"top_logprobs", 2}};
  Reply r = client().post("/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const json content = r.json()["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 3u);
  for (const json& t : content) {
    EXPECT_TRUE(t["token"].is_string());
    EXPECT_TRUE(t["bytes"].is_array());
    EXPECT_LE(t["logprob"].get<double>(), 0.0);
    ASSERT_EQ(t["top_logprobs"].size(), 2u);
    EXPECT_GE(t["logprob"].get<double>() + 1e-4, t["top_logprobs"][0]["logprob"].get<double>());
  }
}

TEST_F(ApiTest, StopStringsAndStopTokenIds) {
  const json plain = client().post("/v1/completions", greedy_completion(16)).json();
  const std::string text = plain["choices"][0]["text"];
  // A stop string taken from the middle of the greedy text, cut at character boundaries.
  size_t from = text.size() / 2;
  while (from > 0 && (static_cast<unsigned char>(text[from]) & 0xC0) == 0x80) --from;
  size_t to = from + 1;
  while (to < text.size() && (static_cast<unsigned char>(text[to]) & 0xC0) == 0x80) ++to;
  ASSERT_GT(to, from) << "empty greedy text: " << text;
  const std::string stop = text.substr(from, to - from);
  json body = greedy_completion(16);
  body["stop"] = json::array({"\x01never\x01", stop});
  const json stopped = client().post("/v1/completions", body).json();
  EXPECT_EQ(stopped["choices"][0]["text"], text.substr(0, text.find(stop)));
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
  body["stop"] = stop;  // a single string works too
  EXPECT_EQ(client().post("/v1/completions", body).json()["choices"][0]["finish_reason"], "stop");

  // Stop token ids, through /generate, which returns the ids.
  json gen{{"text", "The capital of France is"},
           {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}}}};
  const std::vector<int> ids = client().post("/generate", gen).json()["output_ids"];
  ASSERT_EQ(ids.size(), 8u);
  gen["sampling_params"]["stop_token_ids"] = {ids[4]};
  const json g = client().post("/generate", gen).json();
  const size_t first = size_t(std::find(ids.begin(), ids.end(), ids[4]) - ids.begin());
  EXPECT_EQ(g["output_ids"].size(), first + 1);
  EXPECT_EQ(g["meta_info"]["finish_reason"]["type"], "stop");
}

TEST_F(ApiTest, NativeGenerate) {
  json body{{"input_ids", {0, 3923, 344, 245, 1665}},
            {"sampling_params", {{"max_new_tokens", 5}, {"temperature", 0}, {"ignore_eos", true}}},
            {"return_logprob", true}};
  Reply r = client().post("/generate", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.json();
  EXPECT_EQ(j["output_ids"].size(), 5u);
  EXPECT_TRUE(j["text"].is_string());
  EXPECT_EQ(j["meta_info"]["finish_reason"]["type"], "length");
  EXPECT_EQ(j["meta_info"]["prompt_tokens"], 5);
  EXPECT_EQ(j["meta_info"]["completion_tokens"], 5);
  EXPECT_EQ(j["meta_info"]["output_token_logprobs"].size(), 5u);

  body["stream"] = true;
  const std::vector<std::string> events = sse_events(client().post("/generate", body).body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json last = json::parse(events[events.size() - 2]);
  EXPECT_EQ(last["output_ids"], j["output_ids"]);  // cumulative, as SGLang streams it
  EXPECT_EQ(last["meta_info"]["finish_reason"]["type"], "length");
}

TEST_F(ApiTest, SlowDownMakesEveryStepSleep) {
  json body = greedy_completion(3);
  auto timed = [&] {
    const auto t0 = Clock::now();
    EXPECT_EQ(client().post("/v1/completions", body).status, 200);
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  slow_down(0.25);
  const double slow = timed();  // at least 3 steps (prefill + 2 decodes)
  slow_down(nullptr);
  const double fast = timed();
  EXPECT_GE(slow, 0.75);
  EXPECT_LT(fast, slow - 0.4);
  EXPECT_EQ(client().post("/slow_down", json{{"forward_sleep_time", -1}}).status, 400);
}

TEST_F(ApiTest, AbortByRid) {
  slow_down(0.05);
  json body{{"text", "Once upon a time"},
            {"rid", "abort-me"},
            {"sampling_params", {{"max_new_tokens", 200}, {"ignore_eos", true}}}};
  Reply result;
  std::thread t([&] { result = client().post("/generate", body); });
  int status = 0;
  for (int i = 0; i < 500 && status != 200; ++i) {  // 404 until the request is registered
    status = client().post("/abort", json{{"rid", "abort-me"}}).status;
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  t.join();
  slow_down(nullptr);
  EXPECT_EQ(status, 200);
  ASSERT_EQ(result.status, 200) << result.body;
  EXPECT_EQ(result.json()["meta_info"]["finish_reason"]["type"], "abort");
  EXPECT_LT(result.json()["output_ids"].size(), 200u);
  EXPECT_EQ(client().post("/abort", json{{"rid", "no-such-request"}}).status, 404);
  EXPECT_TRUE(wait_idle());
}

// A client that leaves aborts its request; the engine frees its pages.
TEST_F(ApiTest, DisconnectAborts) {
  ASSERT_TRUE(wait_idle());
  const double aborted_before = metric("tandem:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"}");
  slow_down(0.05);
  json body = greedy_completion(200);
  body["stream"] = true;
  // Streaming: leave after the first chunk.
  int fd = raw_send(port(), http_post("/v1/completions", body.dump()));
  char buf[4096];
  std::string got;
  while (got.find("data: ") == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0);
    got.append(buf, size_t(n));
  }
  // The engine publishes its stats after the step that produced the chunk.
  for (int i = 0; i < 500 && metric("tandem:num_requests_running{") < 1.0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(metric("tandem:num_requests_running{"), 1.0);
  EXPECT_GT(metric("tandem:token_usage{"), 0.0);
  ::close(fd);
  EXPECT_TRUE(wait_idle()) << metrics();

  // Not streaming: the response would come only at the end; leave while it runs.
  body["stream"] = false;
  fd = raw_send(port(), http_post("/v1/completions", body.dump()));
  for (int i = 0; i < 500 && metric("tandem:num_requests_running{") < 1.0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(metric("tandem:num_requests_running{"), 1.0);
  ::close(fd);
  EXPECT_TRUE(wait_idle()) << metrics();
  slow_down(nullptr);
  EXPECT_EQ(metric("tandem:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"}"),
            aborted_before + 2);
}

TEST_F(ApiTest, MetricsInPrometheusFormat) {
  ASSERT_EQ(client().post("/v1/completions", greedy_completion(4)).status, 200);
  Reply r = client().get("/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.headers.find("Content-Type")->second.find("text/plain"), std::string::npos);
  const std::string& m = r.body;
  for (const char* name :
       {"tandem:num_requests_running", "tandem:num_requests_waiting", "tandem:token_usage",
        "tandem:prompt_tokens_total", "tandem:generation_tokens_total",
        "tandem:num_preemptions_total", "tandem:request_success_total"}) {
    EXPECT_NE(m.find(std::string("# TYPE ") + name + " "), std::string::npos) << name;
  }
  for (const char* h : {"tandem:time_to_first_token_seconds", "tandem:inter_token_latency_seconds",
                        "tandem:e2e_request_latency_seconds"}) {
    EXPECT_NE(m.find(std::string("# TYPE ") + h + " histogram"), std::string::npos) << h;
    EXPECT_GT(metric_value(m, std::string(h) + "_count{").value_or(0), 0) << h;
    EXPECT_GT(metric_value(m, std::string(h) + "_bucket{model_name=\"tiny\",le=\"+Inf\"}").value_or(0), 0) << h;
  }
  EXPECT_GT(metric_value(m, "tandem:prompt_tokens_total{").value_or(0), 0);
  EXPECT_GT(metric_value(m, "tandem:generation_tokens_total{").value_or(0), 0);
}

// Every bad request gets an OpenAI-style error with the right status; the server keeps serving.
TEST_F(ApiTest, BadInputGetsJsonErrors) {
  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* param;  // nullptr: not checked
  };
  const std::string long_prompt = [] {
    std::string s;
    for (int i = 0; i < 400; ++i) s += "hello ";
    return s;
  }();
  auto completion = [](json extra) {
    json b{{"prompt", "Hi"}, {"max_tokens", 2}};
    if (extra.is_object()) b.update(extra);
    return b.dump();
  };
  auto chat = [](json extra) {
    json b{{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 2}};
    if (extra.is_object()) b.update(extra);
    return b.dump();
  };
  const std::vector<Case> cases = {
      {"/v1/completions", "{not json", 400, nullptr},
      {"/v1/completions", "[1, 2]", 400, nullptr},
      {"/v1/completions", R"({"max_tokens": 2})", 400, "prompt"},
      {"/v1/completions", completion({{"max_tokens", "ten"}}), 400, "max_tokens"},
      {"/v1/completions", completion({{"temperature", "hot"}}), 400, "temperature"},
      {"/v1/completions", completion({{"stream", "yes"}}), 400, "stream"},
      {"/v1/completions", completion({{"stop", 5}}), 400, "stop"},
      {"/v1/completions", completion({{"model", "gpt-9"}}), 404, "model"},
      {"/v1/completions", completion({{"prompt", long_prompt}}), 400, "prompt"},
      {"/v1/completions", completion({{"max_tokens", 10000}}), 400, "max_tokens"},
      {"/v1/completions", completion({{"max_tokens", -1}}), 400, "max_tokens"},
      {"/v1/completions", completion({{"max_tokens", 1000000000000LL}}), 400, "max_tokens"},
      {"/v1/completions", completion({{"temperature", -0.5}}), 400, "temperature"},
      {"/v1/completions", completion({{"top_p", 0}}), 400, "top_p"},
      {"/v1/completions", completion({{"top_k", -7}}), 400, "top_k"},
      {"/v1/completions", completion({{"n", 0}}), 400, "n"},
      {"/v1/completions", completion({{"n", 100000}}), 400, "n"},
      {"/v1/completions", completion({{"logprobs", 50}}), 400, "logprobs"},
      {"/v1/completions", completion({{"seed", -1}}), 400, "seed"},
      {"/v1/completions", completion({{"frequency_penalty", 5}}), 400, "frequency_penalty"},
      {"/v1/completions", completion({{"stop_token_ids", {-1}}}), 400, "stop_token_ids"},
      {"/v1/completions", completion({{"prompt", {1, 2, 99999999}}}), 400, "prompt"},
      {"/v1/completions", completion({{"echo", true}}), 400, "echo"},
      {"/v1/chat/completions", chat({{"messages", "hi"}}), 400, "messages"},
      {"/v1/chat/completions", chat({{"messages", json::array()}}), 400, "messages"},
      {"/v1/chat/completions", chat({{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}), 400, "messages"},
      {"/v1/chat/completions", chat({{"top_logprobs", 30}, {"logprobs", true}}), 400, "top_logprobs"},
      {"/v1/chat/completions", chat({{"max_completion_tokens", 0}}), 400, "max_completion_tokens"},
      {"/v1/chat/completions", chat({{"model", "nope"}}), 404, "model"},
      {"/generate", R"({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2, "bogus": 1}})", 400, "sampling_params"},
      {"/generate", R"({"sampling_params": {}})", 400, "input_ids"},
      {"/abort", R"({"rid": 5})", 400, "rid"},
      {"/no/such/route", "{}", 404, nullptr},
      {"/v1/completions", "", 400, nullptr},
      {"/v1/completions", "null", 400, nullptr},
      {"/v1/completions", completion({{"prompt", nullptr}}), 400, "prompt"},
      {"/v1/completions", completion({{"prompt", json::array()}}), 400, "prompt"},
      {"/v1/completions", completion({{"prompt", 42}}), 400, "prompt"},
      {"/v1/completions", completion({{"max_tokens", 1.5}}), 400, "max_tokens"},
      {"/v1/completions", completion({{"min_p", 2}}), 400, "min_p"},
      {"/v1/completions", completion({{"presence_penalty", -3}}), 400, "presence_penalty"},
      {"/v1/completions", completion({{"repetition_penalty", 0}}), 400, "repetition_penalty"},
      {"/v1/completions", completion({{"top_p", 1.5}}), 400, "top_p"},
      {"/v1/completions", completion({{"logprobs", -1}}), 400, "logprobs"},
      {"/v1/completions", completion({{"ignore_eos", "no"}}), 400, "ignore_eos"},
      {"/v1/completions", completion({{"stop", {"a", 3}}}), 400, "stop"},
      {"/v1/completions", completion({{"n", "two"}}), 400, "n"},
      {"/v1/completions", completion({{"seed", "x"}}), 400, "seed"},
      {"/v1/completions", completion({{"suffix", "x"}}), 400, "suffix"},
      {"/v1/completions", completion({{"best_of", 3}}), 400, "best_of"},
      {"/v1/completions", completion({{"logit_bias", {{"5", 10}}}}), 400, "logit_bias"},
      {"/v1/completions", completion({{"model", 7}}), 400, "model"},
      {"/v1/chat/completions", "[]", 400, nullptr},
      {"/v1/chat/completions", chat({{"messages", {{{"role", "user"}}}}}), 400, "messages"},
      {"/v1/chat/completions", chat({{"messages", {{{"role", "user"}, {"content", 5}}}}}), 400, "messages"},
      {"/v1/chat/completions", chat({{"messages", {"not an object"}}}), 400, "messages"},
      {"/v1/chat/completions", chat({{"stop", json::object()}}), 400, "stop"},
      {"/v1/chat/completions", chat({{"temperature", -1}}), 400, "temperature"},
      {"/v1/chat/completions", chat({{"n", -2}}), 400, "n"},
      {"/generate", R"({"input_ids": "abc", "sampling_params": {}})", 400, "input_ids"},
      {"/generate", R"({"input_ids": [], "sampling_params": {}})", 400, "input_ids"},
      {"/generate", "{oops", 400, nullptr},
      {"/slow_down", R"({"forward_sleep_time": -1})", 400, "forward_sleep_time"},
      {"/slow_down", R"({"forward_sleep_time": "long"})", 400, "forward_sleep_time"},
      {"/abort", "{bad", 400, nullptr},
  };
  ASSERT_GE(cases.size(), 50u);
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.path) + " " + c.body.substr(0, 120));
    Reply r = client().post(c.path, c.body);
    EXPECT_EQ(r.status, c.status) << r.body;
    const json j = r.json();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
    const json& e = j["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty());
    EXPECT_TRUE(e["type"].is_string());
    EXPECT_TRUE(e.contains("param") && e.contains("code"));
    if (c.param != nullptr) {
      EXPECT_EQ(e["param"], c.param);
    }
  }
  Reply too_long = client().post("/v1/completions", completion({{"prompt", long_prompt}}));
  EXPECT_EQ(too_long.json()["error"]["code"], "context_length_exceeded");
  EXPECT_EQ(client().post("/v1/completions", completion({{"model", "x"}})).json()["error"]["code"],
            "model_not_found");
  EXPECT_EQ(client().get("/health").status, 200);
  EXPECT_EQ(client().post("/v1/completions", completion({})).status, 200);
}

// The HTTP layer itself, over raw sockets: keep-alive, pipelining, HTTP/1.0 streaming,
// Expect: 100-continue, and its own errors (405, 414, a malformed request) as JSON bodies.
TEST_F(ApiTest, HttpTransport) {
  auto status_of = [](const std::string& response) {
    return response.size() > 12 ? std::atoi(response.c_str() + 9) : -1;
  };
  auto body_of = [](const std::string& response) {
    const size_t end = response.find("\r\n\r\n");
    return end == std::string::npos ? std::string() : response.substr(end + 4);
  };
  // Two requests pipelined on one connection: both answered, in order, the second closes it.
  const std::string both =
      raw_request(port(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                          "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const size_t second = both.find("HTTP/1.1 ", 1);
  ASSERT_NE(second, std::string::npos) << both;
  EXPECT_EQ(status_of(both), 200) << both;
  EXPECT_NE(both.find("\"status\":\"ok\""), std::string::npos) << both;
  EXPECT_EQ(status_of(both.substr(second)), 200) << both;
  EXPECT_NE(both.find("\"max_model_len\":256", second), std::string::npos) << both;

  // HTTP/1.0 has no chunked encoding: the SSE body runs until the server closes.
  json body = greedy_completion(3);
  body["stream"] = true;
  std::string req = http_post("/v1/completions", body.dump());
  req.replace(req.find("HTTP/1.1"), 8, "HTTP/1.0");
  std::string r = raw_request(port(), req);
  EXPECT_EQ(r.rfind("HTTP/1.0 200", 0), 0u) << r;
  EXPECT_EQ(r.find("chunked"), std::string::npos) << r;
  std::vector<std::string> events = sse_events(body_of(r));
  ASSERT_GE(events.size(), 2u) << r;
  EXPECT_EQ(events.back(), "[DONE]");

  // Expect: 100-continue gets the interim answer, then the real one.
  r = raw_request(port(), http_post("/v1/completions", greedy_completion(2).dump(),
                                    "Expect: 100-continue\r\n"));
  EXPECT_EQ(r.rfind("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", 0), 0u) << r;

  // The transport's own errors carry the same JSON error bodies as the handlers'.
  struct Case {
    std::string request;
    int status;
  };
  const std::vector<Case> cases = {
      {"GET /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405},
      {"GET /" + std::string(10000, 'a') + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 414},
      {"NONSENSE\r\n\r\n", 400},
      {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: zebra\r\n\r\n", 400},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.request.substr(0, 60));
    r = raw_request(port(), c.request);
    EXPECT_EQ(status_of(r), c.status) << r;
    const json j = json::parse(body_of(r), nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r;
    EXPECT_TRUE(j["error"]["message"].is_string());
  }
  EXPECT_EQ(client().get("/health").status, 200);
}

// The official OpenAI Python client against the server (skipped without the package).
TEST_F(ApiTest, OpenAIPythonClient) {
  if (std::system("python3 -c 'import openai' > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "the Python package `openai` is not installed (pip install openai); "
                    "tools/test.sh installs it";
  }
  const std::string script = std::string(TANDEM_SOURCE_DIR) + "/tests/server/openai_client_test.py";
  const std::string out = std::string(TANDEM_BINARY_DIR) + "/tests/server/openai_client_test.log";
  const std::string cmd = "python3 " + script + " --base-url http://127.0.0.1:" +
                          std::to_string(port()) + "/v1 --model tiny > " + out + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream in(out);
  std::stringstream log;
  log << in.rdbuf();
  EXPECT_EQ(rc, 0) << log.str();
}

}  // namespace
}  // namespace tandem::server::test
