// The PD roles end to end in one process (docs/disagg.md "Roles"): a prefill Engine with a
// PrefillWorker and a decode Engine with a DecodeWorker on two copies of a small random model,
// talking over tcp on 127.0.0.1. 60 greedy requests of mixed lengths (many longer than the
// prefill's step budget, so chunked) give token for token what a colocated Engine gives.
// Then each failure of DESIGN.md "Request flow (PD)" step 5, injected with the real workers or
// a hand-driven peer: bootstrap timeout, transfer timeout, prefill gone mid-request, decode
// gone, client abort, mismatched rooms. After each, both engines' kv_pages_used is back to
// idle, the failed request ended with a clear error, and nothing waited past its timeout.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "disagg/pd_worker.h"
#include "model/kv_cache.h"
#include "model/loader.h"
#include "model/presets.h"

namespace tandem::disagg {
namespace {

using runtime::Engine;
using runtime::EngineConfig;
using runtime::FinishReason;
using runtime::GenerateRequest;
using runtime::RequestStream;
using runtime::StreamEvent;
using std::chrono::milliseconds;

constexpr int32_t kPageSize = 4;
constexpr int32_t kBudget = 32;  // prefill step budget: longer prompts are chunked
const char* kToken = "pd-test-token";

struct Models {
  LoadedModel prefill, decode;  // the same weights, two copies: the sides share nothing
  static Models& get() {
    static Models m = [] {
      const ModelConfig cfg =
          ModelConfig::from_json_string(preset_config_json("mini").dump(), "mini");
      return Models{load_random_model(cfg, 17), load_random_model(cfg, 17)};
    }();
    return m;
  }
};

std::unique_ptr<Engine> make_engine(LoadedModel& m, int64_t total_tokens = 16384) {
  EngineConfig c;
  c.scheduler.page_size = kPageSize;
  c.scheduler.max_total_tokens = total_tokens;
  c.scheduler.max_batch_tokens = kBudget;
  c.kv_dtype = DType::kF32;
  c.pd_decode_reserve_tokens = 8;
  auto runner = std::make_unique<runtime::DeepseekRunner>(
      *m.model, c.scheduler.num_pages(), kPageSize, c.kv_dtype, Device::cpu());
  return std::make_unique<Engine>(m.config, std::move(runner), nullptr, c);
}

PdWorkerConfig pd_config(int bootstrap_ms = 2000, int transfer_ms = 5000) {
  PdWorkerConfig c;
  c.transfer.token = kToken;
  c.bootstrap_timeout_ms = bootstrap_ms;
  c.transfer_timeout_ms = transfer_ms;
  return c;
}

GenerateRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  GenerateRequest r{std::move(prompt), "", {}};
  r.params.temperature = 0;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  return r;
}

struct Read {
  std::vector<int32_t> ids;
  FinishReason reason = FinishReason::kNone;
  std::string error;
};

Read read_all(RequestStream& s) {
  Read r;
  StreamEvent ev;
  while (s.next(ev)) {
    r.ids.insert(r.ids.end(), ev.token_ids.begin(), ev.token_ids.end());
    if (ev.finished) r.reason = ev.finish_reason;
    if (!ev.error.empty()) r.error = ev.error;
  }
  return r;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int len) {
  std::vector<int32_t> p(static_cast<size_t>(len));
  for (int32_t& t : p) t = int32_t(2 + rng() % 500);
  return p;
}

// Waits (up to 5 s) until the engine holds no pages and no request; false if it never does.
bool idle(Engine& e) {
  for (int i = 0; i < 500; ++i) {
    const runtime::EngineStats s = e.stats();
    if (s.kv_pages_used == 0 && s.running + s.waiting + s.awaiting_kv + s.transferring == 0)
      return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return false;
}

// The decode engine still serves: a colocated request runs to its end.
void expect_serves(Engine& e) {
  std::shared_ptr<RequestStream> s;
  ASSERT_TRUE(e.submit(greedy({5, 6, 7, 8, 9}, 3), &s).ok());
  const Read r = read_all(*s);
  EXPECT_EQ(r.ids.size(), 3u);
  EXPECT_EQ(r.reason, FinishReason::kLength) << r.error;
}

template <typename Clock = std::chrono::steady_clock>
double seconds_since(typename Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(PdWorker, SixtyRequestsMatchColocatedTokenForToken) {
  Models& m = Models::get();
  std::mt19937 rng(5);
  struct Job {
    std::vector<int32_t> prompt;
    int32_t max_tokens;
  };
  std::vector<Job> jobs;
  for (int i = 0; i < 60; ++i) {
    const int len = i % 3 == 0 ? 33 + int(rng() % 70) : 1 + int(rng() % 32);  // a third chunked
    jobs.push_back({random_prompt(rng, len), int32_t(1 + rng() % 10)});
  }
  jobs[1].prompt = jobs[0].prompt;  // a repeat: the prefill side's prefix cache serves it

  // Colocated reference on the decode side's weights.
  std::vector<std::vector<int32_t>> expected;
  {
    auto colo = make_engine(m.decode);
    std::vector<std::shared_ptr<RequestStream>> streams(jobs.size());
    for (size_t i = 0; i < jobs.size(); ++i)
      ASSERT_TRUE(colo->submit(greedy(jobs[i].prompt, jobs[i].max_tokens), &streams[i]).ok());
    colo->run_until_idle();
    for (auto& s : streams) expected.push_back(read_all(*s).ids);
  }

  auto prefill = make_engine(m.prefill), decode = make_engine(m.decode);
  prefill->start();
  decode->start();
  std::unique_ptr<PrefillWorker> pw;
  std::unique_ptr<DecodeWorker> dw;
  ASSERT_TRUE(PrefillWorker::create(*prefill, pd_config(), &pw).ok());
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(), &dw).ok());
  std::vector<std::shared_ptr<RequestStream>> ps(jobs.size()), ds(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    const uint64_t room = 0x5000 + i;
    const GenerateRequest r = greedy(jobs[i].prompt, jobs[i].max_tokens);
    // Half the decode requests arrive before their prefill request, half after.
    if (i % 2) {
      ASSERT_TRUE(dw->submit(room, pw->bootstrap_endpoint(), r, &ds[i]).ok());
    }
    ASSERT_TRUE(pw->submit(room, r, &ps[i]).ok());
    if (i % 2 == 0) {
      ASSERT_TRUE(dw->submit(room, pw->bootstrap_endpoint(), r, &ds[i]).ok());
    }
  }
  int chunked = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Read d = read_all(*ds[i]), p = read_all(*ps[i]);
    ASSERT_EQ(d.error, "") << "request " << i;
    EXPECT_EQ(d.ids, expected[i]) << "request " << i << " (" << jobs[i].prompt.size()
                                  << " prompt tokens)";
    EXPECT_EQ(p.error, "") << "request " << i;
    EXPECT_EQ(p.reason, FinishReason::kLength);
    ASSERT_EQ(p.ids.size(), 1u);
    EXPECT_EQ(p.ids[0], expected[i][0]) << "the prefill side's first token";
    chunked += jobs[i].prompt.size() > size_t(kBudget);
  }
  EXPECT_GE(chunked, 15);
  EXPECT_TRUE(idle(*prefill));
  EXPECT_TRUE(idle(*decode));
  EXPECT_GT(prefill->stats().prefix_hit_tokens, 0);
  EXPECT_EQ(pw->rooms_in_flight(), 0);
  dw.reset();
  pw.reset();
}

// A bootstrap endpoint that accepts TCP connections (kernel backlog) but never answers the
// handshake, and a port nobody listens on.
TEST(PdWorker, BootstrapTimeoutFreesReservedPages) {
  Models& m = Models::get();
  auto decode = make_engine(m.decode);
  decode->start();
  std::unique_ptr<DecodeWorker> dw;
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(300), &dw).ok());
  std::unique_ptr<BootstrapListener> silent;
  ASSERT_TRUE(BootstrapListener::listen("127.0.0.1", 0, kToken, milliseconds(1000), &silent).ok());
  for (const std::string& endpoint : {silent->endpoint(), std::string("127.0.0.1:1")}) {
    const auto t0 = std::chrono::steady_clock::now();
    std::shared_ptr<RequestStream> s;
    ASSERT_TRUE(dw->submit(7, endpoint, greedy({3, 4, 5, 6, 7, 8, 9}, 4), &s).ok());
    const Read r = read_all(*s);
    EXPECT_EQ(r.reason, FinishReason::kError);
    EXPECT_NE(r.error.find("cannot reach the prefill bootstrap endpoint " + endpoint),
              std::string::npos)
        << r.error;
    EXPECT_LT(seconds_since(t0), 2.0);
    EXPECT_TRUE(idle(*decode));
  }
  expect_serves(*decode);
  // Bad configuration is refused naming the field.
  PdWorkerConfig bad = pd_config();
  bad.transfer_timeout_ms = 0;
  std::unique_ptr<DecodeWorker> none;
  const Status st = DecodeWorker::create(*decode, bad, &none);
  EXPECT_NE(st.message().find("transfer_timeout_ms"), std::string::npos) << st.message();
  std::shared_ptr<RequestStream> s;
  EXPECT_EQ(dw->submit(8, "", greedy({3, 4}, 2), &s).code(), StatusCode::kInvalidArgument);
}

// A fake prefill side driven by hand: accepts one decode connection and takes its request.
struct FakePrefill {
  std::unique_ptr<BootstrapListener> listener;
  std::unique_ptr<BootstrapChannel> ch;
  KvPagesRequest request;
  FakePrefill() {
    EXPECT_TRUE(
        BootstrapListener::listen("127.0.0.1", 0, kToken, milliseconds(1000), &listener).ok());
  }
  // Accepts and acks the decode side's request (any layout).
  void accept() {
    ASSERT_TRUE(listener->accept(milliseconds(3000), &ch).ok());
    Message msg;
    ASSERT_TRUE(ch->recv(&msg, milliseconds(3000)).ok());
    ASSERT_TRUE(std::holds_alternative<KvPagesRequest>(msg));
    request = std::get<KvPagesRequest>(msg);
    ASSERT_TRUE(ch->send(Ack{request.room_id, true, ""}, milliseconds(1000)).ok());
  }
  bool heard_abort() {
    Message msg;
    return ch->recv(&msg, milliseconds(2000)).ok() && std::holds_alternative<Abort>(msg);
  }
};

Status send_late(TransferEngine& e, const RegionHandle& dst, const TransferWrite& w) {
  BatchId id;
  if (Status s = e.submit({&dst, 1}, {&w, 1}, &id); !s.ok()) return s;
  return e.wait(id, milliseconds(2000));
}

TEST(PdWorker, TransferTimeoutAndMismatchedRoomFreeDecodePages) {
  Models& m = Models::get();
  auto decode = make_engine(m.decode);
  decode->start();
  std::unique_ptr<DecodeWorker> dw;
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(1000, 300), &dw).ok());
  const std::vector<int32_t> prompt = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20};

  {  // prefill acks, then says nothing: the gap timeout ends it and prefill is told
    FakePrefill fake;
    std::thread t([&] { fake.accept(); });
    const auto t0 = std::chrono::steady_clock::now();
    std::shared_ptr<RequestStream> s;
    ASSERT_TRUE(dw->submit(0x77, fake.listener->endpoint(), greedy(prompt, 4), &s).ok());
    const Read r = read_all(*s);
    t.join();
    EXPECT_EQ(r.reason, FinishReason::kError);
    EXPECT_NE(r.error.find("prefill sent nothing for 300 ms"), std::string::npos) << r.error;
    EXPECT_LT(seconds_since(t0), 2.0);
    EXPECT_EQ(fake.request.room_id, 0x77u);
    EXPECT_EQ(fake.request.num_prompt_tokens, prompt.size());
    EXPECT_EQ(fake.request.page_ids.size(), 3u);
    EXPECT_TRUE(fake.heard_abort());
    EXPECT_TRUE(idle(*decode));
  }
  {  // the metadata names another room: rejected before the pages are used
    FakePrefill fake;
    std::thread t([&] {
      fake.accept();
      const uint64_t room = fake.request.room_id;
      EXPECT_TRUE(fake.ch->send(KvChunkDone{room, 0, 0, uint32_t(prompt.size()), true},
                                milliseconds(1000))
                      .ok());
      EXPECT_TRUE(fake.ch->send(PrefillMeta{room + 1, 42, -0.5f, {}, uint32_t(prompt.size())},
                                milliseconds(1000))
                      .ok());
    });
    std::shared_ptr<RequestStream> s;
    ASSERT_TRUE(dw->submit(0x78, fake.listener->endpoint(), greedy(prompt, 4), &s).ok());
    const Read r = read_all(*s);
    t.join();
    EXPECT_EQ(r.reason, FinishReason::kError);
    EXPECT_TRUE(r.ids.empty()) << "no token of a mismatched room is streamed";
    EXPECT_NE(r.error.find("prefill metadata for room 0x79, expected room 0x78"),
              std::string::npos)
        << r.error;
    EXPECT_TRUE(fake.heard_abort());
    EXPECT_TRUE(idle(*decode));
  }
  expect_serves(*decode);
}

TEST(PdWorker, UnknownRoomAndNoDecodePeerAreRefusedOnBothSides) {
  Models& m = Models::get();
  auto prefill = make_engine(m.prefill), decode = make_engine(m.decode);
  prefill->start();
  decode->start();
  std::unique_ptr<PrefillWorker> pw;
  std::unique_ptr<DecodeWorker> dw;
  ASSERT_TRUE(PrefillWorker::create(*prefill, pd_config(300), &pw).ok());
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(300), &dw).ok());
  std::shared_ptr<RequestStream> p, d;
  // Prefill has room 1, decode asks for room 2: neither waits past the bootstrap timeout.
  ASSERT_TRUE(pw->submit(1, greedy({3, 4, 5, 6, 7}, 4), &p).ok());
  EXPECT_EQ(pw->submit(1, greedy({3, 4}, 4), &d).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(dw->submit(2, pw->bootstrap_endpoint(), greedy({3, 4, 5, 6, 7}, 4), &d).ok());
  const Read rp = read_all(*p), rd = read_all(*d);
  EXPECT_EQ(rp.reason, FinishReason::kError);
  EXPECT_NE(rp.error.find("no decode server connected within 300 ms"), std::string::npos)
      << rp.error;
  EXPECT_EQ(rd.reason, FinishReason::kError);
  EXPECT_NE(rd.error.find("prefill has no request for room 0x2"), std::string::npos) << rd.error;
  EXPECT_TRUE(idle(*prefill));
  EXPECT_TRUE(idle(*decode));
}

// Prefill runs the first chunk of a long prompt, sends it, and then the whole prefill worker
// goes away: decode ends the request with an error, frees its pages and keeps serving.
TEST(PdWorker, PrefillGoneMidRequest) {
  Models& m = Models::get();
  auto prefill = make_engine(m.prefill), decode = make_engine(m.decode);
  decode->start();  // prefill is stepped by hand
  std::unique_ptr<PrefillWorker> pw;
  std::unique_ptr<DecodeWorker> dw;
  ASSERT_TRUE(PrefillWorker::create(*prefill, pd_config(), &pw).ok());
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(), &dw).ok());
  std::mt19937 rng(3);
  const GenerateRequest r = greedy(random_prompt(rng, 90), 5);
  std::shared_ptr<RequestStream> p, d;
  ASSERT_TRUE(pw->submit(9, r, &p).ok());
  ASSERT_TRUE(dw->submit(9, pw->bootstrap_endpoint(), r, &d).ok());
  ASSERT_TRUE(prefill->step());  // chunk 0 of 3
  std::this_thread::sleep_for(milliseconds(300));  // connected, chunk 0 sent
  EXPECT_GT(decode->stats().kv_pages_used, 0);
  const auto t0 = std::chrono::steady_clock::now();
  pw.reset();
  const Read rd = read_all(*d);
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_EQ(rd.reason, FinishReason::kError);
  EXPECT_NE(rd.error.find("PD decode, room 0x9: prefill"), std::string::npos) << rd.error;
  EXPECT_TRUE(idle(*decode));
  expect_serves(*decode);
  prefill->run_until_idle();  // the prefill engine frees its side too
  const Read rp = read_all(*p);
  EXPECT_EQ(rp.reason, FinishReason::kError);
  EXPECT_NE(rp.error.find("shut"), std::string::npos) << rp.error;
  EXPECT_TRUE(idle(*prefill));
}

// The decode server disappears after its request was acknowledged: prefill frees its pages
// and ends the request with an error instead of computing for nobody.
TEST(PdWorker, DecodeGoneFreesPrefillPages) {
  Models& m = Models::get();
  auto prefill = make_engine(m.prefill);
  std::unique_ptr<PrefillWorker> pw;
  ASSERT_TRUE(PrefillWorker::create(*prefill, pd_config(), &pw).ok());
  std::mt19937 rng(4);
  const std::vector<int32_t> prompt = random_prompt(rng, 70);
  std::shared_ptr<RequestStream> p;
  ASSERT_TRUE(pw->submit(0x31, greedy(prompt, 5), &p).ok());
  {
    // A decode side by hand: its own pages and transfer engine, a valid request, then gone.
    const ModelConfig& cfg = m.decode.config;
    KvCache cache = KvCache::create(cfg, 64, kPageSize, DType::kF32);
    std::unique_ptr<TransferEngine> te;
    TransferConfig tc;
    tc.token = kToken;
    ASSERT_TRUE(make_transfer_engine(tc, &te).ok());
    KvPagesRequest req;
    req.room_id = 0x31;
    req.page_size = kPageSize;
    req.num_layers = uint32_t(cfg.num_hidden_layers);
    req.bytes_per_token_layer = uint64_t(cfg.kv_cache_dim()) * 4;
    req.num_prompt_tokens = uint32_t(prompt.size());
    for (int32_t i = 0; i < 18; ++i) req.page_ids.push_back(i);
    for (Tensor& t : cache.layers) {
      RegionHandle h;
      ASSERT_TRUE(te->register_region(t.raw_data(), t.nbytes(), MemoryKind::kHost, 0, &h).ok());
      req.regions.push_back(h);
    }
    std::unique_ptr<BootstrapChannel> ch;
    ASSERT_TRUE(bootstrap_connect(pw->bootstrap_endpoint(), kToken, milliseconds(1000), &ch).ok());
    ASSERT_TRUE(decode_send_request(*ch, req, milliseconds(2000)).ok());
  }  // channel, transfer engine and pages gone
  prefill->start();
  const auto t0 = std::chrono::steady_clock::now();
  const Read rp = read_all(*p);
  EXPECT_LT(seconds_since(t0), 3.0);
  EXPECT_EQ(rp.reason, FinishReason::kError);
  EXPECT_NE(rp.error.find("PD prefill, room 0x31"), std::string::npos) << rp.error;
  EXPECT_TRUE(idle(*prefill));
  EXPECT_EQ(pw->rooms_in_flight(), 0);
}

// The client aborts on the decode side while the prefill is still queued: decode frees its
// pages at once and the prefill side hears Abort, frees its pages and ends its request.
TEST(PdWorker, ClientAbortOnDecodeReachesPrefill) {
  Models& m = Models::get();
  auto prefill = make_engine(m.prefill), decode = make_engine(m.decode);
  decode->start();
  std::unique_ptr<PrefillWorker> pw;
  std::unique_ptr<DecodeWorker> dw;
  ASSERT_TRUE(PrefillWorker::create(*prefill, pd_config(), &pw).ok());
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(), &dw).ok());
  std::mt19937 rng(6);
  const GenerateRequest r = greedy(random_prompt(rng, 40), 5);
  std::shared_ptr<RequestStream> p, d;
  ASSERT_TRUE(pw->submit(0x44, r, &p).ok());
  ASSERT_TRUE(dw->submit(0x44, pw->bootstrap_endpoint(), r, &d).ok());
  std::this_thread::sleep_for(milliseconds(300));  // decode connected and sent its request
  EXPECT_GT(decode->stats().kv_pages_used, 0);
  dw->abort(d->id());
  const Read rd = read_all(*d);
  EXPECT_EQ(rd.reason, FinishReason::kAbort);
  EXPECT_TRUE(idle(*decode));
  for (int i = 0; i < 200 && pw->rooms_in_flight() > 0; ++i)
    std::this_thread::sleep_for(milliseconds(10));
  EXPECT_EQ(pw->rooms_in_flight(), 0) << "prefill did not hear the Abort";
  prefill->start();
  const Read rp = read_all(*p);
  EXPECT_EQ(rp.reason, FinishReason::kError);
  EXPECT_NE(rp.error.find("decode aborted: aborted by the client"), std::string::npos)
      << rp.error;
  EXPECT_TRUE(idle(*prefill));
  expect_serves(*decode);
}

// The client aborts on the prefill side (the router gave up): decode hears Abort and frees its
// pages; prefill ends the request once no transfer reads its pages. Also an abort before any
// decode peer connected.
TEST(PdWorker, ClientAbortOnPrefillReachesDecode) {
  Models& m = Models::get();
  auto prefill = make_engine(m.prefill), decode = make_engine(m.decode);
  decode->start();
  std::unique_ptr<PrefillWorker> pw;
  std::unique_ptr<DecodeWorker> dw;
  ASSERT_TRUE(PrefillWorker::create(*prefill, pd_config(), &pw).ok());
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(), &dw).ok());
  std::mt19937 rng(8);
  const GenerateRequest r = greedy(random_prompt(rng, 50), 5);
  std::shared_ptr<RequestStream> p, d, q;
  ASSERT_TRUE(pw->submit(0x55, r, &p).ok());
  ASSERT_TRUE(pw->submit(0x56, r, &q).ok());
  ASSERT_TRUE(dw->submit(0x55, pw->bootstrap_endpoint(), r, &d).ok());
  ASSERT_TRUE(prefill->step());  // the first chunk of both
  std::this_thread::sleep_for(milliseconds(300));
  pw->abort(p->id());
  pw->abort(q->id());  // room 0x56 has no decode peer
  const Read rd = read_all(*d);
  EXPECT_EQ(rd.reason, FinishReason::kError);
  EXPECT_NE(rd.error.find("prefill aborted: aborted by the client"), std::string::npos)
      << rd.error;
  EXPECT_TRUE(idle(*decode));
  prefill->start();
  const Read rp = read_all(*p), rq = read_all(*q);
  EXPECT_EQ(rp.reason, FinishReason::kError);
  EXPECT_NE(rp.error.find("room 0x55: aborted by the client"), std::string::npos) << rp.error;
  EXPECT_NE(rq.error.find("room 0x56: aborted by the client"), std::string::npos) << rq.error;
  EXPECT_TRUE(idle(*prefill));
  EXPECT_EQ(pw->rooms_in_flight(), 0);
  expect_serves(*decode);
}

// A prefill that waits in its engine's queue for three times decode's gap timeout: the
// prefill side's keepalives keep decode waiting, so the gap timeout bounds silence only.
TEST(PdWorker, QueuedPrefillKeepsDecodeAliveWithKeepalives) {
  Models& m = Models::get();
  auto prefill = make_engine(m.prefill), decode = make_engine(m.decode);
  decode->start();
  std::unique_ptr<PrefillWorker> pw;
  std::unique_ptr<DecodeWorker> dw;
  ASSERT_TRUE(PrefillWorker::create(*prefill, pd_config(2000, 300), &pw).ok());
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(2000, 300), &dw).ok());
  std::mt19937 rng(9);
  const GenerateRequest r = greedy(random_prompt(rng, 45), 6);
  std::shared_ptr<RequestStream> p, d;
  ASSERT_TRUE(pw->submit(0x66, r, &p).ok());
  ASSERT_TRUE(dw->submit(0x66, pw->bootstrap_endpoint(), r, &d).ok());
  std::this_thread::sleep_for(milliseconds(900));  // the prefill engine is not running yet
  prefill->start();
  const Read rd = read_all(*d), rp = read_all(*p);
  EXPECT_EQ(rd.error, "");
  EXPECT_EQ(rd.ids.size(), 6u);
  EXPECT_EQ(rp.error, "");
  ASSERT_EQ(rp.ids.size(), 1u);
  EXPECT_EQ(rp.ids[0], rd.ids[0]);
  EXPECT_TRUE(idle(*prefill));
  EXPECT_TRUE(idle(*decode));
}

// Page safety (docs/disagg.md "The fence"): after a decode-side failure once the KV request
// went out, decode keeps the room's pages until prefill confirms its Abort (or closes), and
// only then frees them and ends the request; a write prefill makes before confirming lands in
// pages nobody else has. Failures injected mid-transfer with a hand-driven prefill: a chunk
// out of order (decode's protocol check), a client abort; then a prefill that never
// confirms (released at transfer timeout + margin, not before); then a real request is exact.
TEST(PdWorker, DecodeHoldsPagesUntilPrefillConfirmsAbort) {
  Models& m = Models::get();
  auto decode = make_engine(m.decode);
  decode->start();
  std::unique_ptr<DecodeWorker> dw;
  constexpr int kTransferMs = 600;
  ASSERT_TRUE(DecodeWorker::create(*decode, pd_config(2000, kTransferMs), &dw).ok());
  const std::vector<int32_t> prompt = {21, 22, 23, 24, 25, 26, 27, 28, 29};
  using SteadyClock = std::chrono::steady_clock;

  // The fake prefill's own transfer engine, to make a "late" write into decode's pages.
  std::unique_ptr<TransferEngine> te;
  TransferConfig tc;
  tc.token = kToken;
  ASSERT_TRUE(make_transfer_engine(tc, &te).ok());
  std::vector<uint8_t> late(64, 0xAB);
  RegionHandle src;
  ASSERT_TRUE(te->register_region(late.data(), late.size(), MemoryKind::kHost, 0, &src).ok());

  for (const bool client_abort : {false, true}) {
    SCOPED_TRACE(client_abort ? "client abort" : "chunk out of order");
    FakePrefill fake;
    std::shared_ptr<RequestStream> s;
    ASSERT_TRUE(dw->submit(0x90 + client_abort, fake.listener->endpoint(), greedy(prompt, 4), &s)
                    .ok());
    fake.accept();
    // Mid-transfer: chunk 0 (one page) reported, then the failure.
    const uint64_t room = fake.request.room_id;
    ASSERT_TRUE(fake.ch->send(KvChunkDone{room, 0, 0, 4, false}, milliseconds(1000)).ok());
    if (client_abort) {
      std::this_thread::sleep_for(milliseconds(50));
      dw->abort(s->id());
    } else {
      ASSERT_TRUE(fake.ch->send(KvChunkDone{room, 7, 4, 4, false}, milliseconds(1000)).ok());
    }
    SteadyClock::time_point ended;
    Read r;
    std::thread reader([&] {
      r = read_all(*s);
      ended = SteadyClock::now();
    });
    ASSERT_TRUE(fake.heard_abort());
    // Decode gave up but still holds the pages: a write now is harmless.
    const int64_t held = decode->stats().kv_pages_used;
    EXPECT_GE(held, 3) << "prompt pages + reserve";
    const TransferWrite w{src.region_id, 0, 0,
                          uint64_t(fake.request.page_ids[1]) * kPageSize *
                              fake.request.bytes_per_token_layer,
                          late.size()};
    EXPECT_TRUE(send_late(*te, fake.request.regions[0], w).ok());
    std::this_thread::sleep_for(milliseconds(300));
    EXPECT_EQ(decode->stats().kv_pages_used, held) << "pages freed before prefill confirmed";
    const auto confirmed = SteadyClock::now();
    ASSERT_TRUE(fake.ch->send(Abort{room, "decode aborted: confirmed"}, milliseconds(1000)).ok());
    reader.join();
    EXPECT_GE(ended, confirmed) << "the request ended before prefill confirmed";
    EXPECT_LT(std::chrono::duration<double>(ended - confirmed).count(), 0.5);
    if (client_abort) {
      EXPECT_EQ(r.reason, FinishReason::kAbort) << r.error;
    } else {
      EXPECT_EQ(r.reason, FinishReason::kError);
      EXPECT_NE(r.error.find("chunk out of order"), std::string::npos) << r.error;
    }
    EXPECT_TRUE(idle(*decode));
  }
  EXPECT_EQ(dw->fences(), 2);
  EXPECT_EQ(dw->fences_timed_out(), 0);

  {  // a prefill that never confirms: the pages go at transfer timeout + margin, not before
    FakePrefill fake;
    std::shared_ptr<RequestStream> s;
    ASSERT_TRUE(dw->submit(0x92, fake.listener->endpoint(), greedy(prompt, 4), &s).ok());
    fake.accept();
    ASSERT_TRUE(fake.ch->send(KvChunkDone{fake.request.room_id, 3, 0, 4, false},
                              milliseconds(1000)).ok());
    ASSERT_TRUE(fake.heard_abort());
    const auto t0 = SteadyClock::now();
    const Read r = read_all(*s);
    const double waited = seconds_since(t0);
    EXPECT_GE(waited, (kTransferMs + DecodeWorker::kFenceMarginMs) / 1000.0 - 0.05);
    EXPECT_LT(waited, 2.0);
    EXPECT_EQ(r.reason, FinishReason::kError);
    EXPECT_TRUE(idle(*decode));
    EXPECT_EQ(dw->fences_timed_out(), 1);
  }

  // The next request through a real prefill gives the colocated output exactly.
  auto prefill = make_engine(m.prefill);
  prefill->start();
  std::unique_ptr<PrefillWorker> pw;
  ASSERT_TRUE(PrefillWorker::create(*prefill, pd_config(), &pw).ok());
  std::mt19937 rng(12);
  const GenerateRequest req = greedy(random_prompt(rng, 45), 6);
  std::vector<int32_t> expected;
  {
    auto colo = make_engine(m.decode);
    std::shared_ptr<RequestStream> c;
    ASSERT_TRUE(colo->submit(req, &c).ok());
    colo->run_until_idle();
    expected = read_all(*c).ids;
  }
  std::shared_ptr<RequestStream> p, d;
  ASSERT_TRUE(pw->submit(0x93, req, &p).ok());
  ASSERT_TRUE(dw->submit(0x93, pw->bootstrap_endpoint(), req, &d).ok());
  const Read rd = read_all(*d);
  EXPECT_EQ(rd.error, "");
  EXPECT_EQ(rd.ids, expected);
  EXPECT_EQ(read_all(*p).error, "");
  EXPECT_TRUE(idle(*decode));
  EXPECT_TRUE(idle(*prefill));
}

}  // namespace
}  // namespace tandem::disagg
