// The real `tandem router` binary: flag errors name the flag, --help explains, and a started
// router forwards a request to fake upstreams and stops cleanly on SIGTERM.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <memory>
#include <cstdio>
#include <string>

#include "tests/router/fake_upstream.h"

namespace tandem::router {
namespace {

struct CliRun {
  int exit_code;
  std::string output;
};

CliRun run_cli(const std::string& args) {
  const std::string cmd = std::string(TANDEM_EXE) + " router " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = std::fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(RouterCliTest, HelpExplains) {
  CliRun r = run_cli("--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* flag : {"--prefill", "--decode", "--policy", "--health-interval-s", "--request-timeout-s",
                           "--api-key", "least-load", "bootstrap_room"}) {
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
  }
}

TEST(RouterCliTest, BadFlagsNameTheFlag) {
  const std::string ok = "--prefill http://127.0.0.1:1 --decode http://127.0.0.1:2 ";
  const std::pair<std::string, std::string> cases[] = {
      {"--decode http://127.0.0.1:2", "--prefill"},
      {"--prefill http://127.0.0.1:1", "--decode"},
      {ok + "--policy random", "--policy"},
      {ok + "--port 70000", "--port"},
      {ok + "--health-interval-s 0", "--health-interval-s"},
      {ok + "--request-timeout-s -3", "--request-timeout-s"},
      {"--prefill https://a:1 --decode http://127.0.0.1:2 --port 0", "--prefill 'https://a:1'"},
      {"--prefill http://a:1 --decode b:2 --port 0", "--decode 'b:2'"},
  };
  for (const auto& [args, flag] : cases) {
    CliRun r = run_cli(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE(r.output.find(flag), std::string::npos) << args << "\n" << r.output;
  }
}

TEST(RouterCliTest, BinaryForwardsAndStopsOnSigterm) {
  testing::RoomRegistry registry;
  testing::FakeUpstream prefill("prefill", registry, 42000), decode("decode", registry);
  prefill.start();
  decode.start();
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::execl(TANDEM_EXE, TANDEM_EXE, "--log-level", "warn", "router", "--prefill", prefill.url().c_str(), "--decode",
            decode.url().c_str(), "--port", "0", nullptr);
    ::_exit(127);
  }
  ::close(out[1]);
  // A failed assertion below still ends the router.
  bool reaped = false;
  std::shared_ptr<void> reaper(nullptr, [pid, &reaped](void*) {
    if (!reaped && ::kill(pid, SIGKILL) == 0) ::waitpid(pid, nullptr, 0);
  });
  FILE* f = ::fdopen(out[0], "r");
  char line[256] = {};
  ASSERT_NE(std::fgets(line, sizeof(line), f), nullptr);
  int port = 0;
  ASSERT_EQ(std::sscanf(line, "tandem router listening on http://127.0.0.1:%d", &port), 1) << line;
  httplib::Client client("127.0.0.1", port);
  auto r = client.Post("/v1/completions", R"({"prompt":"hi"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(decode.requests, 1);
  EXPECT_EQ(decode.mismatches, 0);
  EXPECT_EQ(client.Get("/health")->status, 200);
  ::kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  reaped = true;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::fclose(f);
}

}  // namespace
}  // namespace tandem::router
