// The HTTP side of `tandem bench`: one streaming OpenAI completions request, timed per chunk.
// Thread-safe: each call uses its own connection.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tandem::app {

struct BenchTarget {
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string api_key;
  std::string model;  // "model" field of the request
};

struct RequestTiming {
  bool ok = false;
  std::string error;
  int64_t prompt_tokens = 0;      // from the response's usage
  int64_t completion_tokens = 0;  // from the response's usage
  double ttft_s = 0.0;            // send to first token chunk
  double e2e_s = 0.0;             // send to [DONE]
  std::vector<double> itl_s;      // gaps between token chunks
  double start_s = 0.0;           // send time, seconds since the benchmark started
};

// Parses "http://host:port" (no path). Throws tandem::Error naming the flag on bad input.
BenchTarget parse_base_url(const std::string& url);

// POST /v1/completions with stream=true, stream_options.include_usage, ignore_eos and
// max_tokens = output_len; reads the SSE stream to its end.
RequestTiming run_streaming_completion(const BenchTarget& target, const std::string& prompt,
                                       int64_t output_len, double bench_start_s);

double now_seconds();  // steady clock

}  // namespace tandem::app
