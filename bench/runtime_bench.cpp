// Scheduler + page allocator + prefix cache time per step with 1,024 running requests
// (goal: under 100 us per step, so the CPU-side plan never shows next to a ~10 ms GPU decode
// step). Steady state with churn: a request that reaches its output length finishes and a new
// one arrives, so steps mix decodes with prefill chunks, page growth and prefix-cache inserts.
// No in-process peer exists (the reference schedulers are Python); the ratio printed is to
// the 100 us goal.
#include <benchmark/benchmark.h>

#include <random>

#include "runtime/scheduler.h"

namespace {

using namespace tandem::runtime;

void BM_SchedulerStep(benchmark::State& state) {
  const int32_t running = int32_t(state.range(0));
  const int32_t page_size = int32_t(state.range(1));
  SchedulerConfig config;
  config.page_size = page_size;
  config.max_running_requests = running;
  config.max_batch_tokens = running + 512;  // all decodes plus a prefill chunk
  config.max_total_tokens = int64_t(running) * 2048;
  Scheduler sched(config);
  std::mt19937 rng(1);
  // Per-request output limit and count, indexed by id (ids are sequential): the harness's own
  // bookkeeping stays out of the measurement as far as possible.
  std::vector<int32_t> limit{0}, produced{0};
  RequestId next_id = 1;
  std::vector<int32_t> system_prompt(200);  // shared by all: prefix-cache hits
  for (int32_t& t : system_prompt) t = int32_t(rng() % 50000);
  auto add = [&] {
    std::vector<int32_t> prompt = system_prompt;
    for (int i = 0; i < 56; ++i) prompt.push_back(int32_t(rng() % 50000));
    const RequestId id = next_id++;
    limit.push_back(256 + int32_t(rng() % 1024));
    produced.push_back(0);
    (void)sched.add(id, std::move(prompt), limit[id]);
  };
  for (int32_t i = 0; i < running; ++i) add();
  std::vector<int32_t> next;
  std::vector<RequestId> done;
  auto step = [&] {
    const Decision d = sched.schedule();
    next.assign(d.seqs.size(), 7);
    sched.complete(d, next);
    done.clear();
    for (const ScheduledSeq& s : d.seqs) {
      if (s.sample && ++produced[s.id] >= limit[s.id]) done.push_back(s.id);
    }
    for (const RequestId id : done) {
      sched.finish(id);
      add();
    }
    return d.seqs.size();
  };
  for (int i = 0; i < 600; ++i) step();  // past the initial prefills into steady state
  int64_t scheduled = 0;
  for (auto _ : state) scheduled += int64_t(step());
  const auto st = sched.stats();
  state.counters["requests_per_step"] = double(scheduled) / double(state.iterations());
  state.counters["running"] = st.running;
  state.counters["preemptions"] = double(st.preemptions);
  state.counters["x_faster_than_goal"] = benchmark::Counter(
      100e-6 * double(state.iterations()), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_SchedulerStep)
    ->Args({1024, 16})
    ->Args({1024, 1})
    ->Args({1024, 64})
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
