// SleepyRunner: wraps the real ModelRunner and sleeps before every forward step for as long as
// POST /slow_down last asked (0: no sleep). The reference deployment saturated its decode
// batches this way: with every step slowed, requests pile up in the running batch.
// Thread-safe: set_sleep may be called from any thread; run belongs to the engine thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "runtime/model_runner.h"

namespace tandem::server {

class SleepyRunner : public runtime::ModelRunner {
 public:
  explicit SleepyRunner(std::unique_ptr<runtime::ModelRunner> inner) : inner_(std::move(inner)) {}
  // --ep: every rank's runner follows `shared`'s setting (one /slow_down for all ranks).
  SleepyRunner(std::unique_ptr<runtime::ModelRunner> inner, const SleepyRunner& shared)
      : inner_(std::move(inner)), sleep_s_(shared.sleep_s_) {}

  void set_sleep(double seconds) { sleep_s_->store(seconds > 0.0 ? seconds : 0.0); }
  double sleep_seconds() const { return sleep_s_->load(); }

  Tensor run(const runtime::Decision& decision, const runtime::Scheduler& scheduler) override {
    if (const double s = sleep_s_->load(); s > 0.0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(s));
    }
    return inner_->run(decision, scheduler);
  }
  runtime::StepOutput step(const runtime::Decision& decision, const runtime::Scheduler& scheduler,
                           std::span<const runtime::RowSampling> sampling) override {
    if (const double s = sleep_s_->load(); s > 0.0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(s));
    }
    return inner_->step(decision, scheduler, sampling);  // keeps the inner runner's GPU sampling
  }
  // The PD workers register the real runner's KV pool with the transfer engine.
  runtime::KvMemory kv_memory() override { return inner_->kv_memory(); }

 private:
  std::unique_ptr<runtime::ModelRunner> inner_;
  std::shared_ptr<std::atomic<double>> sleep_s_ = std::make_shared<std::atomic<double>>(0.0);
};

}  // namespace tandem::server
