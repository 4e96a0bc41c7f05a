// KV transfer benchmark (issue 6; docs/disagg.md "GPU runs"): moves N 64-token pages of a
// full-width DeepSeek-V3 latent cache (61 layers x 64 tokens x 576 bf16 = 73,728 bytes per page
// per layer) from a pool on GPU --src to a pool on GPU --dst, and reports GB/s and the ratio to
// the ceiling measured in the same run (one large cudaMemcpyPeerAsync src -> dst).
//
// Methods (each for every N in --pages, scattered pages and contiguous runs):
//   ceiling       one cudaMemcpyPeerAsync of --ceiling-mib, in process
//   peer_memcpy   the page writes as one cudaMemcpyPeerAsync each, in process
//   peer_kernel   the page writes as launch_page_copies kernels through peer pointers, in process
//   ipc_memcpy    the cuda_ipc transfer engine, writer and owner in two processes (as deployed),
//                 TANDEM_CUDA_IPC_COPY=memcpy
//   ipc_kernel    the same with TANDEM_CUDA_IPC_COPY=kernel
//   tcp_staged    the tcp transfer engine between two in-process engines, device memory staged
//                 through pinned host buffers (for comparison; N <= --tcp-max-pages)
// The page writes come from kv_page_writes (the code the prefill worker uses), so pages that
// are adjacent on both sides merge into one write. The owner process checks afterwards that
// the last batch's pages hold the right bytes; a mismatch is exit status 1.
//
// The owner runs as a child of this binary (TANDEM_TRANSFER_BENCH_CHILD=1): CUDA IPC cannot
// open a handle in the process that made it. It talks to the parent over its stdin/stdout.
// Thread-safety: single-threaded program.
#include <cuda_runtime_api.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "disagg/bootstrap.h"
#include "disagg/cuda_page_copy.h"
#include "disagg/transfer_engine.h"

extern char** environ;

namespace tandem::disagg {
namespace {

constexpr uint32_t kPageTokens = 64;
constexpr uint64_t kBytesPerTokenLayer = 576 * 2;  // bf16 latent + rope key
constexpr uint64_t kPageBytes = kPageTokens * kBytesPerTokenLayer;  // 73,728

struct Options {
  std::vector<int> pages = {1, 8, 32, 64, 256};
  int layers = 61;
  int pool_pages = 1024;
  int reps = 20;
  int src = 0;
  int dst = 1;
  int ceiling_mib = 1024;
  int tcp_max_pages = 32;
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "transfer_bench: %s\n", msg.c_str());
  std::exit(2);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) die(std::string(what) + ": " + cudaGetErrorString(e));
}

void check(const Status& s, const char* what) {
  if (!s.ok()) die(std::string(what) + ": " + s.message());
}

int parse_int(const std::string& flag, const std::string& v, int lo, int hi) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo || x > hi)
    die(flag + ": '" + v + "' is not an integer in [" + std::to_string(lo) + ", " +
        std::to_string(hi) + "]");
  return int(x);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: transfer_bench [--pages 1,8,32,64,256] [--layers 61] [--pool-pages 1024]\n"
          "                      [--reps 20] [--src 0] [--dst 1] [--ceiling-mib 1024]\n"
          "                      [--tcp-max-pages 32]\n"
          "Times KV page transfers of a V3 latent cache between two GPUs (see the source).\n");
      std::exit(0);
    }
    if (i + 1 >= argc) die(a + ": needs a value (see --help)");
    std::string v = argv[++i];
    if (a == "--pages") {
      o.pages.clear();
      size_t pos = 0;
      while (pos <= v.size()) {
        size_t comma = v.find(',', pos);
        if (comma == std::string::npos) comma = v.size();
        o.pages.push_back(parse_int("--pages", v.substr(pos, comma - pos), 1, 1 << 20));
        pos = comma + 1;
      }
    } else if (a == "--layers") {
      o.layers = parse_int(a, v, 1, 256);
    } else if (a == "--pool-pages") {
      o.pool_pages = parse_int(a, v, 1, 1 << 20);
    } else if (a == "--reps") {
      o.reps = parse_int(a, v, 1, 10000);
    } else if (a == "--src") {
      o.src = parse_int(a, v, 0, 1023);
    } else if (a == "--dst") {
      o.dst = parse_int(a, v, 0, 1023);
    } else if (a == "--ceiling-mib") {
      o.ceiling_mib = parse_int(a, v, 1, 1 << 16);
    } else if (a == "--tcp-max-pages") {
      o.tcp_max_pages = parse_int(a, v, 0, 1 << 20);
    } else {
      die("unknown flag '" + a + "' (see --help)");
    }
  }
  for (int n : o.pages)
    if (n > o.pool_pages)
      die("--pages: " + std::to_string(n) + " pages do not fit --pool-pages " +
          std::to_string(o.pool_pages));
  return o;
}

// Byte value of page p of layer l in the source pool (so a page landing in the wrong place is
// seen by the owner's check).
uint8_t page_value(int page, int layer) { return uint8_t((page * 131 + layer * 37 + 11) & 0xff); }

std::vector<uint8_t*> alloc_pool(int device, int layers, int pages, bool fill) {
  check(cudaSetDevice(device), "cudaSetDevice");
  std::vector<uint8_t*> pool(layers);
  for (int l = 0; l < layers; ++l) {
    void* p = nullptr;
    check(cudaMalloc(&p, size_t(pages) * kPageBytes), "cudaMalloc pool layer");
    pool[l] = static_cast<uint8_t*>(p);
    check(cudaMemset(pool[l], 0, size_t(pages) * kPageBytes), "cudaMemset");
    if (fill)
      for (int p = 0; p < pages; ++p)
        check(cudaMemsetAsync(pool[l] + size_t(p) * kPageBytes, page_value(p, l), kPageBytes),
              "cudaMemsetAsync");
  }
  check(cudaDeviceSynchronize(), "fill pool");
  return pool;
}

bool read_exact(int fd, void* buf, size_t n) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

void write_exact(int fd, const void* buf, size_t n) {
  auto* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = ::write(fd, p, n);
    if (r <= 0) die("pipe write failed");
    p += r;
    n -= size_t(r);
  }
}

// ---- the owner (decode side): registers its pool, hands the handles over, checks pages.
int child_main(const Options& o) {
  std::vector<uint8_t*> pool = alloc_pool(o.dst, o.layers, o.pool_pages, false);
  TransferConfig c;
  c.backend = "cuda_ipc";
  c.device_index = o.dst;
  std::unique_ptr<TransferEngine> engine;
  check(make_transfer_engine(c, &engine), "cuda_ipc engine (owner)");
  KvPagesRequest req;
  req.page_size = kPageTokens;
  req.num_layers = uint32_t(o.layers);
  req.bytes_per_token_layer = kBytesPerTokenLayer;
  for (int l = 0; l < o.layers; ++l) {
    RegionHandle h;
    check(engine->register_region(pool[l], size_t(o.pool_pages) * kPageBytes, MemoryKind::kDevice,
                                  o.dst, &h),
          "register owner region");
    req.regions.push_back(h);
  }
  std::vector<uint8_t> frame = encode_frame(req);
  uint32_t len = uint32_t(frame.size());
  write_exact(1, &len, 4);
  write_exact(1, frame.data(), frame.size());
  // The parent sends (dst page, src page) pairs of its last batch, then closes.
  uint32_t count = 0;
  if (!read_exact(0, &count, 4)) die("owner: parent went away");
  std::vector<int32_t> pairs(size_t(count) * 2);
  if (!read_exact(0, pairs.data(), pairs.size() * 4)) die("owner: short page list");
  std::vector<uint8_t> host(kPageBytes);
  uint32_t bad = 0;
  check(cudaSetDevice(o.dst), "cudaSetDevice");
  for (uint32_t i = 0; i < count; ++i) {
    for (int l = 0; l < o.layers; ++l) {
      check(cudaMemcpy(host.data(), pool[l] + size_t(pairs[2 * i]) * kPageBytes, kPageBytes,
                       cudaMemcpyDeviceToHost),
            "read back");
      uint8_t want = page_value(pairs[2 * i + 1], l);
      if (std::any_of(host.begin(), host.end(), [&](uint8_t b) { return b != want; })) ++bad;
    }
  }
  write_exact(1, &bad, 4);
  engine.reset();
  for (uint8_t* p : pool) cudaFree(p);
  return bad == 0 ? 0 : 1;
}

// ---- the writer (prefill side).
using Clock = std::chrono::steady_clock;

struct Row {
  std::string method;
  std::string layout;  // scattered | contiguous | -
  int pages = 0;
  size_t writes = 0;
  uint64_t bytes = 0;
  double median_ms = 0;
  double gbps = 0;
};

template <typename Fn>
double median_ms(int reps, Fn&& once) {
  once();  // warm-up (opens IPC handles, first launch)
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    once();
    t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct PagePlan {
  std::vector<int32_t> src_pages, dst_pages;
};

PagePlan plan(int n, int pool_pages, bool contiguous, std::mt19937& rng) {
  PagePlan p;
  if (contiguous) {
    int a = int(rng() % uint32_t(pool_pages - n + 1)), b = int(rng() % uint32_t(pool_pages - n + 1));
    for (int i = 0; i < n; ++i) {
      p.src_pages.push_back(a + i);
      p.dst_pages.push_back(b + i);
    }
    return p;
  }
  std::vector<int32_t> s(pool_pages), d(pool_pages);
  std::iota(s.begin(), s.end(), 0);
  std::iota(d.begin(), d.end(), 0);
  std::shuffle(s.begin(), s.end(), rng);
  std::shuffle(d.begin(), d.end(), rng);
  p.src_pages.assign(s.begin(), s.begin() + n);
  p.dst_pages.assign(d.begin(), d.begin() + n);
  return p;
}

std::vector<TransferWrite> writes_for(const PagePlan& p, const std::vector<RegionHandle>& dst,
                                      const std::vector<uint64_t>& src_regions) {
  KvPagesRequest req;
  req.page_size = kPageTokens;
  req.num_layers = uint32_t(dst.size());
  req.bytes_per_token_layer = kBytesPerTokenLayer;
  req.num_prompt_tokens = uint32_t(p.dst_pages.size() * kPageTokens);
  req.page_ids = p.dst_pages;
  req.regions = dst;
  std::vector<TransferWrite> w;
  check(kv_page_writes(req, src_regions, p.src_pages, 0, req.num_prompt_tokens, &w),
        "kv_page_writes");
  return w;
}

void run_engine(TransferEngine& e, const std::vector<RegionHandle>& dst,
                const std::vector<TransferWrite>& w) {
  BatchId id;
  check(e.submit(dst, w, &id), "submit");
  check(e.wait(id, std::chrono::milliseconds(60000)), "wait");
}

std::vector<uint64_t> register_all(TransferEngine& e, const std::vector<uint8_t*>& pool,
                                   size_t bytes, int device, std::vector<RegionHandle>* handles) {
  std::vector<uint64_t> ids;
  for (uint8_t* p : pool) {
    RegionHandle h;
    check(e.register_region(p, bytes, MemoryKind::kDevice, device, &h), "register_region");
    ids.push_back(h.region_id);
    if (handles) handles->push_back(h);
  }
  return ids;
}

pid_t spawn_owner(int* to_child, int* from_child, char** argv) {
  int in[2], out[2];
  if (pipe(in) != 0 || pipe(out) != 0) die("pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addclose(&fa, in[1]);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  std::vector<char*> envp;
  for (char** p = environ; *p; ++p) envp.push_back(*p);
  std::string flag = "TANDEM_TRANSFER_BENCH_CHILD=1";
  envp.push_back(flag.data());
  envp.push_back(nullptr);
  std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  pid_t pid;
  if (posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv, envp.data()) != 0) die("spawn failed");
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  *to_child = in[1];
  *from_child = out[0];
  return pid;
}

int parent_main(const Options& o, char** argv) {
  const size_t pool_bytes = size_t(o.pool_pages) * kPageBytes;
  std::vector<uint8_t*> src = alloc_pool(o.src, o.layers, o.pool_pages, true);
  std::vector<uint8_t*> local_dst = alloc_pool(o.dst, o.layers, o.pool_pages, false);
  std::vector<Row> rows;
  std::mt19937 rng(1234);

  // Ceiling: one large peer copy.
  const size_t big = size_t(o.ceiling_mib) << 20;
  void *a = nullptr, *b = nullptr;
  check(cudaSetDevice(o.src), "cudaSetDevice");
  check(cudaMalloc(&a, big), "cudaMalloc ceiling src");
  if (o.src != o.dst) {
    int can = 0;
    check(cudaDeviceCanAccessPeer(&can, o.src, o.dst), "cudaDeviceCanAccessPeer");
    if (!can) die("GPU " + std::to_string(o.src) + " cannot access GPU " + std::to_string(o.dst));
    cudaError_t e = cudaDeviceEnablePeerAccess(o.dst, 0);
    if (e != cudaErrorPeerAccessAlreadyEnabled) check(e, "cudaDeviceEnablePeerAccess");
    cudaGetLastError();
  }
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cudaSetDevice(o.dst), "cudaSetDevice");
  check(cudaMalloc(&b, big), "cudaMalloc ceiling dst");
  check(cudaSetDevice(o.src), "cudaSetDevice");
  double ceil_ms = median_ms(std::max(3, o.reps / 2), [&] {
    check(cudaMemcpyPeerAsync(b, o.dst, a, o.src, big, stream), "cudaMemcpyPeerAsync");
    check(cudaStreamSynchronize(stream), "sync");
  });
  const double ceiling = double(big) / ceil_ms / 1e6;
  rows.push_back({"ceiling", "-", 0, 1, big, ceil_ms, ceiling});
  cudaFree(a);
  cudaFree(b);
  std::fprintf(stderr, "ceiling %d MiB GPU%d->GPU%d: %.1f GB/s\n", o.ceiling_mib, o.src, o.dst,
               ceiling);

  // Engines: cuda_ipc writers (memcpy, kernel) talking to the owner process, tcp staged in
  // process. Handles for in-process methods: the local_dst pointers directly.
  int to_child = -1, from_child = -1;
  pid_t child = spawn_owner(&to_child, &from_child, argv);
  uint32_t len = 0;
  if (!read_exact(from_child, &len, 4)) die("owner process failed to start (see its stderr)");
  std::vector<uint8_t> frame(len);
  if (!read_exact(from_child, frame.data(), len)) die("owner: short frame");
  Message m;
  check(decode_frame(frame, &m), "owner's frame");
  const std::vector<RegionHandle> owner = std::get<KvPagesRequest>(m).regions;

  std::unique_ptr<TransferEngine> ipc[2];
  std::vector<uint64_t> ipc_src[2];
  const char* modes[2] = {"memcpy", "kernel"};
  for (int k = 0; k < 2; ++k) {
    setenv("TANDEM_CUDA_IPC_COPY", modes[k], 1);
    TransferConfig c;
    c.backend = "cuda_ipc";
    c.device_index = o.src;
    c.transfer_timeout_ms = 60000;
    check(make_transfer_engine(c, &ipc[k]), "cuda_ipc engine (writer)");
    ipc_src[k] = register_all(*ipc[k], src, pool_bytes, o.src, nullptr);
  }
  unsetenv("TANDEM_CUDA_IPC_COPY");
  TransferConfig tc;
  tc.token = "bench";
  tc.transfer_timeout_ms = 60000;
  std::unique_ptr<TransferEngine> tcp_a, tcp_b;
  check(make_transfer_engine(tc, &tcp_a), "tcp engine");
  check(make_transfer_engine(tc, &tcp_b), "tcp engine");
  std::vector<uint64_t> tcp_src = register_all(*tcp_a, src, pool_bytes, o.src, nullptr);
  std::vector<RegionHandle> tcp_dst;
  register_all(*tcp_b, local_dst, pool_bytes, o.dst, &tcp_dst);
  // peer_* use fake region ids 0..layers-1 through kv_page_writes.
  std::vector<uint64_t> fake_src(o.layers);
  std::iota(fake_src.begin(), fake_src.end(), 0);

  PagePlan last;
  for (int n : o.pages) {
    for (bool contiguous : {false, true}) {
      PagePlan p = plan(n, o.pool_pages, contiguous, rng);
      const char* layout = contiguous ? "contiguous" : "scattered";
      const uint64_t bytes = uint64_t(n) * o.layers * kPageBytes;
      auto add = [&](const std::string& method, size_t writes, double ms) {
        rows.push_back({method, layout, n, writes, bytes, ms, double(bytes) / ms / 1e6});
        std::fprintf(stderr, "%-12s %-10s %4d pages: %8.3f ms %8.1f GB/s\n", method.c_str(),
                     layout, n, ms, rows.back().gbps);
      };
      std::vector<TransferWrite> w = writes_for(p, owner, fake_src);
      check(cudaSetDevice(o.src), "cudaSetDevice");  // the stream's device
      add("peer_memcpy", w.size(), median_ms(o.reps, [&] {
            for (const TransferWrite& x : w)
              check(cudaMemcpyPeerAsync(local_dst[x.dst_index] + x.dst_offset_bytes, o.dst,
                                        src[x.src_region] + x.src_offset_bytes, o.src,
                                        x.length_bytes, stream),
                    "cudaMemcpyPeerAsync");
            check(cudaStreamSynchronize(stream), "sync");
          }));
      std::vector<PageCopy> copies;
      for (const TransferWrite& x : w)
        copies.push_back({src[x.src_region] + x.src_offset_bytes,
                          local_dst[x.dst_index] + x.dst_offset_bytes, x.length_bytes});
      add("peer_kernel", w.size(), median_ms(o.reps, [&] {
            for (size_t i = 0; i < copies.size(); i += kPageCopiesPerLaunch)
              check(cudaError_t(launch_page_copies(
                        copies.data() + i, std::min(kPageCopiesPerLaunch, copies.size() - i),
                        stream)),
                    "launch_page_copies");
            check(cudaStreamSynchronize(stream), "sync");
          }));
      for (int k = 0; k < 2; ++k) {
        std::vector<TransferWrite> wi = writes_for(p, owner, ipc_src[k]);
        add(std::string("ipc_") + modes[k], wi.size(),
            median_ms(o.reps, [&] { run_engine(*ipc[k], owner, wi); }));
      }
      if (n <= o.tcp_max_pages) {
        std::vector<TransferWrite> wt = writes_for(p, tcp_dst, tcp_src);
        add("tcp_staged", wt.size(),
            median_ms(std::min(o.reps, 3), [&] { run_engine(*tcp_a, tcp_dst, wt); }));
      }
      last = p;
    }
  }
  // The owner checks the last batch's pages (written last by ipc_kernel).
  uint32_t count = uint32_t(last.dst_pages.size());
  std::vector<int32_t> pairs;
  for (uint32_t i = 0; i < count; ++i) {
    pairs.push_back(last.dst_pages[i]);
    pairs.push_back(last.src_pages[i]);
  }
  write_exact(to_child, &count, 4);
  write_exact(to_child, pairs.data(), pairs.size() * 4);
  uint32_t bad = ~0u;
  read_exact(from_child, &bad, 4);
  close(to_child);
  int status = 0;
  waitpid(child, &status, 0);

  std::printf("\n## KV transfer, %d layers x 64-token pages (%llu B per page per layer), GPU%d -> "
              "GPU%d\n\n",
              o.layers, static_cast<unsigned long long>(kPageBytes), o.src, o.dst);
  std::printf("| method | pages | layout | writes | MB | median ms | GB/s | of ceiling |\n");
  std::printf("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Row& r : rows)
    std::printf("| %s | %d | %s | %zu | %.1f | %.3f | %.1f | %.0f%% |\n", r.method.c_str(), r.pages,
                r.layout.c_str(), r.writes, double(r.bytes) / 1e6, r.median_ms, r.gbps,
                100.0 * r.gbps / ceiling);
  std::printf("\nowner check of the last batch (%u pages x %d layers): %s\n", count, o.layers,
              bad == 0 ? "all bytes right" : (std::to_string(bad) + " page-layers WRONG").c_str());
  const bool ok = bad == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace tandem::disagg

int main(int argc, char** argv) {
  using namespace tandem::disagg;
  Options o = parse(argc, argv);
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) die("no CUDA device");
  if (o.src >= n || o.dst >= n)
    die("--src/--dst: this machine has " + std::to_string(n) + " GPU(s)");
  if (std::getenv("TANDEM_TRANSFER_BENCH_CHILD")) return child_main(o);
  return parent_main(o, argv);
}
