// PD roles in the runtime (docs/disagg.md "Roles"), without any network: the scheduler's
// reservations (decode) and held requests (prefill) as tables and a randomized run with
// aborts, and the engine's submit_prefill / submit_decode / kv_arrived / pd_done on a fake
// runner whose next token is fake_next_token, so every output is known in advance.
#include <gtest/gtest.h>

#include <random>

#include "runtime/engine.h"
#include "tests/runtime/fake_runner.h"

namespace tandem::runtime::test {
namespace {

std::vector<int32_t> prompt_of(size_t n, int32_t start) {
  std::vector<int32_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = int32_t(2 + (size_t(start) * 31 + i * 7) % 900);
  return p;
}

SchedulerConfig sched_config(int32_t page, int64_t total, int32_t budget, bool cache = true) {
  SchedulerConfig c;
  c.page_size = page;
  c.max_total_tokens = total;
  c.max_batch_tokens = budget;
  c.enable_prefix_cache = cache;
  return c;
}

// ---- Scheduler ----

TEST(PdScheduler, ReservationIsNotScheduledUntilKvArrives) {
  Scheduler s(sched_config(4, 64, 32));
  const std::vector<int32_t> prompt = prompt_of(10, 1);
  ASSERT_TRUE(s.add_remote(7, prompt, 6, 4).ok());
  EXPECT_EQ(s.state(7), RequestState::kAwaitingKv);
  EXPECT_FALSE(s.is_reserved(7));
  Decision d = s.schedule();
  EXPECT_TRUE(d.empty());
  ASSERT_EQ(d.reserved, std::vector<RequestId>{7});
  EXPECT_TRUE(s.is_reserved(7));
  EXPECT_EQ(s.pages(7).size(), 4u);  // 10 prompt + 4 reserve tokens in pages of 4
  EXPECT_EQ(s.stats().used_pages, 4);
  EXPECT_EQ(s.stats().awaiting_kv, 1);
  s.check_invariants();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(s.schedule().empty());  // waiting for KV: nothing to compute, no new grant
    s.check_invariants();
  }
  // The prefill side sampled the first token; decoding goes on from there.
  const int32_t first = fake_next_token(prompt.back(), prompt.size());
  s.kv_arrived(7, first);
  EXPECT_EQ(s.state(7), RequestState::kDecoding);
  FakeDriver driver{s, {{7, 6}}, {}};
  d = driver.step();
  EXPECT_EQ(decision_string(d), "7:10+1*");
  EXPECT_TRUE(d.decode_only);
  while (!driver.finished.count(7)) {
    driver.step();
    s.check_invariants();
  }
  EXPECT_EQ(driver.finished[7], fake_expected_output(prompt, 6));
  EXPECT_EQ(s.stats().used_pages, 0);
  EXPECT_EQ(s.stats().cached_pages, s.stats().evictable_pages);
}

TEST(PdScheduler, ReservationsNeverOvercommitAndWaitInOrder) {
  Scheduler s(sched_config(4, 40, 64, false));  // 10 pages
  FakeDriver driver{s, {{1, 4}}, {}};
  ASSERT_TRUE(s.add(1, prompt_of(20, 1), 4).ok());  // 6 pages once decoding
  driver.step();
  // 3 pages + one kept for the running request fit; the next one (3 pages) must wait.
  ASSERT_TRUE(s.add_remote(2, prompt_of(9, 2), 3, 3).ok());
  ASSERT_TRUE(s.add_remote(3, prompt_of(9, 3), 3, 3).ok());
  Decision d = driver.step();
  EXPECT_EQ(d.reserved, std::vector<RequestId>{2});
  EXPECT_FALSE(s.is_reserved(3));
  EXPECT_EQ(s.state(3), RequestState::kAwaitingKv);
  s.check_invariants();
  // A request that could never fit is refused at once.
  EXPECT_EQ(s.add_remote(4, prompt_of(40, 4), 1, 0).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.add_remote(4, prompt_of(4, 4), 1, -1).code(), StatusCode::kInvalidArgument);
  // Request 1 finishes: its pages come back and 3 gets its reservation.
  bool granted = false;
  for (int i = 0; i < 10 && !granted; ++i) {
    d = driver.step();
    granted = d.reserved == std::vector<RequestId>{3};
    s.check_invariants();
  }
  EXPECT_TRUE(granted);
  EXPECT_TRUE(driver.finished.count(1));
  // Aborts free everything: a reserved request and one still waiting for pages.
  ASSERT_TRUE(s.add_remote(5, prompt_of(30, 5), 3, 0).ok());
  EXPECT_TRUE(s.schedule().reserved.empty());
  EXPECT_TRUE(s.abort(5));
  EXPECT_TRUE(s.abort(2));
  EXPECT_TRUE(s.abort(3));
  s.check_invariants();
  EXPECT_EQ(s.stats().free_pages, 10);
  EXPECT_EQ(s.stats().awaiting_kv, 0);
}

TEST(PdScheduler, HeldRequestKeepsItsPagesOutOfTheBatch) {
  for (const bool cache : {false, true}) {
    Scheduler s(sched_config(4, 64, 8, cache));
    const std::vector<int32_t> prompt = prompt_of(13, 9);
    ASSERT_TRUE(s.add(1, prompt, 1).ok());
    std::vector<std::string> steps;
    for (;;) {
      Decision d = s.schedule();
      steps.push_back(decision_string(d));
      std::vector<int32_t> next(d.seqs.size(), fake_next_token(prompt.back(), prompt.size()));
      s.complete(d, next);
      if (d.seqs[0].sample) break;
    }
    EXPECT_EQ(steps, (std::vector<std::string>{"1:0+8", "1:8+5*"}));
    s.hold(1);
    EXPECT_EQ(s.state(1), RequestState::kTransferring);
    EXPECT_TRUE(s.schedule().empty());
    EXPECT_EQ(s.pages(1).size(), 4u);
    EXPECT_EQ(s.stats().transferring, 1);
    EXPECT_EQ(s.stats().evictable_pages, 0);  // held pages are never evicted
    s.check_invariants();
    s.finish(1);
    s.check_invariants();
    EXPECT_EQ(s.stats().used_pages, 0);
    EXPECT_EQ(s.stats().free_pages + s.stats().evictable_pages, 16);
    EXPECT_EQ(s.stats().cached_pages, cache ? 3 : 0);  // the prompt's whole pages
  }
}

// Colocated, remote (decode role) and held (prefill role) requests with random aborts on a
// small pool; invariants after every step; nothing leaks at the end.
TEST(PdScheduler, RandomMixKeepsInvariantsAndLeaksNothing) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    Scheduler s(sched_config(4, 256, 48, seed != 2));
    FakeDriver driver{s, {}, {}};
    std::mt19937 rng(seed);
    auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    std::unordered_map<RequestId, int> kind;  // 0 local, 1 remote, 2 prefill-held
    RequestId next = 1;
    int arrived = 0, released = 0, preempted = 0;
    for (int step = 0; step < 3000 && (next <= 300 || !kind.empty()); ++step) {
      if (next <= 300 && uniform(0, 2) == 0) {
        const RequestId id = next++;
        const int k = uniform(0, 2);
        const auto prompt = prompt_of(size_t(uniform(1, 60)), int32_t(id));
        const int32_t max_new = k == 2 ? 1 : uniform(1, 30);
        const Status st = k == 1 ? s.add_remote(id, prompt, max_new, uniform(0, 16))
                                 : s.add(id, prompt, max_new);
        ASSERT_TRUE(st.ok()) << st.message();
        driver.max_new[id] = k == 2 ? 1000 : max_new;  // held ones never finish by length
        kind[id] = k;
      }
      for (auto& [id, k] : kind) {  // KV lands for some reserved requests
        if (k == 1 && s.is_reserved(id) && uniform(0, 3) == 0) {
          const auto t = s.tokens(id);
          s.kv_arrived(id, fake_next_token(t.back(), t.size()));
          ++arrived;
        }
      }
      Decision d = driver.step();
      preempted += int(d.preempted.size());
      for (const ScheduledSeq& q : d.seqs) {  // prefill role: hold after the first token
        if (kind.count(q.id) && kind[q.id] == 2 && q.sample) s.hold(q.id);
      }
      std::vector<RequestId> gone;
      for (auto& [id, k] : kind) {
        if (driver.finished.count(id)) {
          gone.push_back(id);
        } else if (uniform(0, 40) == 0) {
          EXPECT_TRUE(s.abort(id));
          gone.push_back(id);
        } else if (k == 2 && s.state(id) == RequestState::kTransferring && uniform(0, 3) == 0) {
          s.finish(id);
          ++released;
          gone.push_back(id);
        }
      }
      for (RequestId id : gone) kind.erase(id);
      s.check_invariants();
    }
    EXPECT_TRUE(kind.empty()) << "requests left after 3000 steps (seed " << seed << ")";
    // Every path was taken many times: KV arrivals, released prefills, finished decodes.
    EXPECT_GT(arrived, 40);
    EXPECT_GT(released, 40);
    EXPECT_GT(driver.finished.size(), 80u);
    std::printf("seed %u: %d KV arrivals, %d prefills released, %zu finished, %d preempted\n",
                seed, arrived, released, driver.finished.size(), preempted);
    const SchedulerStats st = s.stats();
    EXPECT_EQ(st.used_pages, 0);
    EXPECT_EQ(st.free_pages + st.evictable_pages, 64);
  }
}

// ---- Engine ----

// Logits that make fake_next_token the greedy choice.
class FakeModelRunner : public ModelRunner {
 public:
  Tensor run(const Decision& d, const Scheduler& s) override {
    Tensor logits = Tensor::zeros({int64_t(d.seqs.size()), kVocab}, DType::kF32);
    for (size_t i = 0; i < d.seqs.size(); ++i) {
      const size_t upto = size_t(d.seqs[i].cached_len + d.seqs[i].num_tokens);
      const auto tokens = s.tokens(d.seqs[i].id);
      logits.data<float>()[int64_t(i) * kVocab + fake_next_token(tokens[upto - 1], upto)] = 10.0f;
    }
    return logits;
  }
  static constexpr int64_t kVocab = 1024;
};

ModelConfig model_config() {
  ModelConfig c;
  c.vocab_size = FakeModelRunner::kVocab;
  c.max_position_embeddings = 4096;
  c.eos_token_ids = {1};
  return c;
}

EngineConfig engine_config(int64_t total, int32_t budget, int32_t reserve = 8) {
  EngineConfig c;
  c.scheduler = sched_config(4, total, budget);
  c.kv_dtype = DType::kF32;
  c.pd_decode_reserve_tokens = reserve;
  return c;
}

GenerateRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  GenerateRequest r{std::move(prompt), "", {}};
  r.params.temperature = 0;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  r.params.logprobs = true;
  return r;
}

struct Read {
  std::vector<int32_t> ids;
  FinishReason reason = FinishReason::kNone;
  std::string error;
  size_t logprobs = 0;
};

Read read_all(RequestStream& s) {
  Read r;
  StreamEvent ev;
  while (s.next(ev)) {
    r.ids.insert(r.ids.end(), ev.token_ids.begin(), ev.token_ids.end());
    r.logprobs += ev.logprobs.size();
    if (ev.finished) r.reason = ev.finish_reason;
    if (!ev.error.empty()) r.error = ev.error;
  }
  return r;
}

Engine make_engine(const EngineConfig& c) {
  return Engine(model_config(), std::make_unique<FakeModelRunner>(), nullptr, c);
}

TEST(PdEngine, PrefillReportsChunksAndHoldsPagesUntilReleased) {
  Engine engine(model_config(), std::make_unique<FakeModelRunner>(), nullptr,
                engine_config(256, 16));
  const std::vector<int32_t> prompt = prompt_of(37, 3);
  std::vector<PrefillChunk> chunks;
  std::shared_ptr<RequestStream> stream;
  ASSERT_TRUE(engine
                  .submit_prefill(greedy(prompt, 50),
                                  [&](const PrefillChunk& c) { chunks.push_back(c); }, &stream)
                  .ok());
  engine.run_until_idle();
  ASSERT_EQ(chunks.size(), 3u);  // 16-token steps: [0,16) [16,32) [32,37)
  int32_t next = 0;
  for (const PrefillChunk& c : chunks) {
    EXPECT_EQ(c.request_id, stream->id());
    EXPECT_EQ(c.first_token, next);
    next += c.num_tokens;
    EXPECT_EQ(c.pages.size(), size_t((next + 3) / 4));
    EXPECT_EQ(c.last, next == 37);
    if (!c.last) {
      EXPECT_EQ(next % 4, 0);
    }
  }
  EXPECT_EQ(next, 37);
  const auto held_pages = engine.scheduler().pages(stream->id() << 8);  // n = 1: index 0
  EXPECT_EQ(chunks.back().pages, std::vector<int32_t>(held_pages.begin(), held_pages.end()));
  const int32_t first = fake_next_token(prompt.back(), prompt.size());
  EXPECT_EQ(chunks.back().first.token, first);
  EngineStats st = engine.stats();
  EXPECT_EQ(st.transferring, 1);
  EXPECT_EQ(st.kv_pages_used, 10);  // held until the PD layer is done
  EXPECT_EQ(st.running, 0);
  engine.pd_done(stream->id(), {});
  engine.run_until_idle();
  const Read r = read_all(*stream);
  EXPECT_EQ(r.ids, std::vector<int32_t>{first});
  EXPECT_EQ(r.logprobs, 1u);
  EXPECT_EQ(r.reason, FinishReason::kLength);
  st = engine.stats();
  EXPECT_EQ(st.kv_pages_used, 0);
  EXPECT_EQ(st.transferring, 0);
}

TEST(PdEngine, PrefillFailureEndsTheRequestWithAnErrorAndFreesPages) {
  Engine engine = make_engine(engine_config(256, 8));
  std::shared_ptr<RequestStream> mid, held;
  int ended = 0;
  // Fails after its first chunk (the PD layer's transfer failed), while still prefilling.
  ASSERT_TRUE(engine
                  .submit_prefill(greedy(prompt_of(30, 1), 5),
                                  [&](const PrefillChunk& c) {
                                    if (c.ended) {
                                      ++ended;  // the engine says so when it ends the request
                                    } else if (c.first_token == 0)
                                      engine.pd_done(c.request_id,
                                                     {StatusCode::kUnavailable, "peer gone"});
                                  },
                                  &mid)
                  .ok());
  ASSERT_TRUE(engine.submit_prefill(greedy(prompt_of(9, 2), 5), [](const PrefillChunk&) {}, &held)
                  .ok());
  engine.run_until_idle();
  engine.pd_done(held->id(), {StatusCode::kDeadlineExceeded, "transfer timed out"});
  engine.pd_done(held->id() + 100, {});  // unknown: ignored
  engine.run_until_idle();
  const Read a = read_all(*mid), b = read_all(*held);
  EXPECT_EQ(a.reason, FinishReason::kError);
  EXPECT_EQ(a.error, "peer gone");
  EXPECT_TRUE(a.ids.empty());
  EXPECT_EQ(b.reason, FinishReason::kError);
  EXPECT_EQ(b.error, "transfer timed out");
  EXPECT_EQ(b.ids.size(), 1u);
  EXPECT_EQ(ended, 1);
  EXPECT_EQ(engine.stats().kv_pages_used, 0);
  // n > 1 and a missing callback are refused, naming the problem.
  GenerateRequest r = greedy(prompt_of(5, 1), 3);
  r.params.n = 2;
  std::shared_ptr<RequestStream> s;
  EXPECT_NE(engine.submit_prefill(r, [](const PrefillChunk&) {}, &s).message().find("n:"),
            std::string::npos);
  EXPECT_EQ(engine.submit_decode(greedy(prompt_of(5, 1), 3), {}, &s).code(),
            StatusCode::kInvalidArgument);
}

TEST(PdEngine, DecodeReservesThenStreamsTheFirstTokenAndDecodes) {
  Engine engine = make_engine(engine_config(256, 64, 8));
  const std::vector<int32_t> prompt = prompt_of(21, 4);
  std::vector<int32_t> pages;
  std::shared_ptr<RequestStream> stream;
  ASSERT_TRUE(engine
                  .submit_decode(greedy(prompt, 12),
                                 [&](const KvReservation& k) {
                                   EXPECT_EQ(k.num_prompt_tokens, 21);
                                   pages = k.pages;
                                 },
                                 &stream)
                  .ok());
  engine.run_until_idle();
  EXPECT_EQ(pages.size(), size_t((21 + 8 + 3) / 4));
  EngineStats st = engine.stats();
  EXPECT_EQ(st.awaiting_kv, 1);
  EXPECT_EQ(st.kv_pages_used, int32_t(pages.size()));
  EXPECT_EQ(st.steps, 0);  // nothing computed while the KV is elsewhere
  SampleResult first;
  first.token = fake_next_token(prompt.back(), prompt.size());
  first.logprob = -0.25f;
  engine.kv_arrived(stream->id(), first);
  engine.run_until_idle();
  const Read r = read_all(*stream);
  EXPECT_EQ(r.ids, fake_expected_output(prompt, 12));
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.logprobs, 12u);
  st = engine.stats();
  EXPECT_EQ(st.kv_pages_used, 0);
  EXPECT_EQ(st.awaiting_kv, 0);
  EXPECT_EQ(st.generated_tokens, 12);
}

// A seeded sampled request (temperature 3, a presence penalty) gives the same tokens split
// over a prefill and a decode engine as on one colocated engine: the decode side's Sampler
// accepts the first token (penalty state) and continues the request's draw counter.
TEST(PdEngine, SeededSamplingContinuesFromPrefillToDecode) {
  const std::vector<int32_t> prompt = prompt_of(13, 9);
  auto request = [&] {
    GenerateRequest r{prompt, "", {}};
    r.params.temperature = 3.0f;  // flat enough that the draws leave the greedy path
    r.params.presence_penalty = 0.5f;
    r.params.seed = 77;
    r.params.max_tokens = 40;
    r.params.ignore_eos = true;
    return r;
  };
  Engine colocated = make_engine(engine_config(256, 64));
  std::shared_ptr<RequestStream> cs;
  ASSERT_TRUE(colocated.submit(request(), &cs).ok());
  colocated.run_until_idle();
  const Read want = read_all(*cs);
  ASSERT_EQ(want.ids.size(), 40u);

  Engine prefill = make_engine(engine_config(256, 64));
  SampleResult first;
  bool last = false;
  std::shared_ptr<RequestStream> ps;
  ASSERT_TRUE(prefill
                  .submit_prefill(request(),
                                  [&](const PrefillChunk& c) {
                                    if (c.last) {
                                      first = c.first;
                                      last = true;
                                    }
                                  },
                                  &ps)
                  .ok());
  prefill.run_until_idle();
  ASSERT_TRUE(last);
  prefill.pd_done(ps->id(), {});
  prefill.run_until_idle();
  Engine decode = make_engine(engine_config(256, 64));
  std::shared_ptr<RequestStream> ds;
  ASSERT_TRUE(decode.submit_decode(request(), [](const KvReservation&) {}, &ds).ok());
  decode.run_until_idle();
  decode.kv_arrived(ds->id(), first);
  decode.run_until_idle();
  const Read got = read_all(*ds);
  EXPECT_EQ(got.ids, want.ids);
  // The fake's logits make the sampled tokens differ from greedy decoding somewhere.
  EXPECT_NE(want.ids, fake_expected_output(prompt, 40));
}

TEST(PdEngine, DecodeAbortErrorAndEarlyKvFreeReservedPages) {
  Engine engine = make_engine(engine_config(64, 64, 0));  // 16 pages
  std::shared_ptr<RequestStream> a, b, c, d;
  int reserved = 0;
  auto on_reserved = [&](const KvReservation&) { ++reserved; };
  ASSERT_TRUE(engine.submit_decode(greedy(prompt_of(20, 1), 4), on_reserved, &a).ok());
  ASSERT_TRUE(engine.submit_decode(greedy(prompt_of(20, 2), 4), on_reserved, &b).ok());
  // Needs 8 pages + 2 kept free: waits until a or b lets go.
  ASSERT_TRUE(engine.submit_decode(greedy(prompt_of(32, 3), 4), on_reserved, &c).ok());
  engine.run_until_idle();
  EXPECT_EQ(reserved, 2);
  EXPECT_EQ(engine.stats().awaiting_kv, 3);
  EXPECT_EQ(engine.stats().kv_pages_used, 10);
  engine.abort(a->id());  // client went away
  engine.pd_done(b->id(), {StatusCode::kDeadlineExceeded, "prefill sent nothing for 100 ms"});
  engine.run_until_idle();
  EXPECT_EQ(reserved, 3);  // c got its pages
  EXPECT_EQ(read_all(*a).reason, FinishReason::kAbort);
  const Read rb = read_all(*b);
  EXPECT_EQ(rb.reason, FinishReason::kError);
  EXPECT_EQ(rb.error, "prefill sent nothing for 100 ms");
  engine.abort(c->id());
  // KV "arriving" for a request with no reservation yet is an error, not a silent start.
  ASSERT_TRUE(engine.submit_decode(greedy(prompt_of(62, 4), 1), on_reserved, &d).ok());
  engine.kv_arrived(d->id(), {});
  engine.run_until_idle();
  const Read rd = read_all(*d);
  EXPECT_EQ(rd.reason, FinishReason::kError);
  EXPECT_NE(rd.error.find("without reserved pages"), std::string::npos) << rd.error;
  EXPECT_EQ(read_all(*c).reason, FinishReason::kAbort);
  EXPECT_EQ(engine.stats().kv_pages_used, 0);
  EXPECT_EQ(engine.stats().awaiting_kv, 0);
  // Never fits the pool: refused at submit.
  std::shared_ptr<RequestStream> e;
  EXPECT_EQ(engine.submit_decode(greedy(prompt_of(64, 5), 4), on_reserved, &e).code(),
            StatusCode::kResourceExhausted);
}

TEST(PdEngine, DecodeReserveIsValidated) {
  EngineConfig c = engine_config(64, 64);
  c.pd_decode_reserve_tokens = -1;
  const Status s = c.validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("disaggregation_decode_reserve"), std::string::npos);
}

}  // namespace
}  // namespace tandem::runtime::test
