// Test helpers for the end-to-end server tests: a small random model with DeepSeek-V3's
// vocabulary and real tokenizer, the real `tandem serve` binary started on a free port, and
// a raw-socket HTTP client for the cases httplib's client cannot express (leaving mid-request).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tandem::server::test {

// TANDEM_TOKENIZER_DIR, else ${TANDEM_SOURCE_DIR}/../shared/data/deepseek-v3; nullopt when
// tokenizer.json is not there.
std::optional<std::filesystem::path> tokenizer_dir();

// A 2-layer version of the `tiny` preset (vocab 129280) with the tokenizer files copied in,
// written once under the build directory and reused.
std::filesystem::path test_model_dir();

class ServerProcess {
 public:
  enum class Command { kServe, kRouter };
  // Starts `tandem serve --model-path <test model> --port 0 <args>` (kRouter: `tandem router
  // --port 0 <args>`) and waits (up to 60 s) for its "listening on" line. Throws
  // std::runtime_error with the process's log on failure.
  explicit ServerProcess(const std::vector<std::string>& args, Command command = Command::kServe);
  ~ServerProcess();  // SIGKILL if still running

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  void signal(int signo) const;
  // Waits for the process to exit; its exit status, or nullopt after `timeout_s`.
  std::optional<int> wait(double timeout_s);
  std::string log() const;  // stdout + stderr so far

 private:
  pid_t pid_ = -1;
  int port_ = -1;
  std::filesystem::path log_path_;
};

// One HTTP/1.1 request over a fresh socket; returns the raw response (headers and body) read
// until the server closes or `max_bytes` arrived. The socket is closed on return.
std::string raw_request(int port, const std::string& request, size_t max_bytes = 1 << 20);

// Connects and sends `request`, keeping the socket open; the caller closes it (to leave).
int raw_send(int port, const std::string& request);

// "POST path" with a JSON body as raw HTTP/1.1 text.
std::string http_post(const std::string& path, const std::string& body,
                      const std::string& extra_headers = "");

// The `data:` payloads of an SSE body, in order ("[DONE]" included).
std::vector<std::string> sse_events(const std::string& body);

// A metric's value in a Prometheus text body (the first series whose name and labels start
// with `series`), or nullopt.
std::optional<double> metric_value(const std::string& metrics, const std::string& series);

}  // namespace tandem::server::test
