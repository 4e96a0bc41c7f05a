// GPU transports (needs a GPU; skips without one): tcp with device regions (staged through
// pinned buffers, small staging so every write is chunked) and cuda_ipc between two
// processes (CUDA IPC cannot open a handle in the process that made it): this binary re-runs
// itself as the child with TANDEM_DISAGG_IPC_CHILD set.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "disagg/transfer_engine.h"

extern char** environ;

namespace tandem::disagg {
namespace {

using std::chrono::milliseconds;

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = uint8_t(rng());
  return v;
}

void* device_buffer(int device, const std::vector<uint8_t>& init) {
  void* p = nullptr;
  EXPECT_EQ(cudaSetDevice(device), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&p, init.size()), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, init.data(), init.size(), cudaMemcpyHostToDevice), cudaSuccess);
  return p;
}

std::vector<uint8_t> read_back(const void* p, size_t n) {
  std::vector<uint8_t> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n, cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

TEST(DisaggCuda, TcpStagesDeviceMemory) {
  if (device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int dst_device = device_count() > 1 ? 1 : 0;
  TransferConfig c;
  c.token = "t";
  c.staging_bytes = 64 << 10;
  std::unique_ptr<TransferEngine> a, b;
  ASSERT_TRUE(make_transfer_engine(c, &a).ok());
  ASSERT_TRUE(make_transfer_engine(c, &b).ok());
  constexpr size_t kBytes = 3 << 20;
  std::vector<uint8_t> src = random_bytes(kBytes, 1), host_dst(kBytes, 0x77);
  void* d_src = device_buffer(0, src);
  void* d_dst = device_buffer(dst_device, std::vector<uint8_t>(kBytes, 0x55));
  RegionHandle hs, hd, hh;
  ASSERT_TRUE(a->register_region(d_src, kBytes, MemoryKind::kDevice, 0, &hs).ok());
  ASSERT_TRUE(b->register_region(d_dst, kBytes, MemoryKind::kDevice, dst_device, &hd).ok());
  ASSERT_TRUE(b->register_region(host_dst.data(), kBytes, MemoryKind::kHost, 0, &hh).ok());
  // Device → device in pieces of odd sizes, and device → host in one write.
  std::vector<TransferWrite> writes;
  for (size_t off = 0; off < kBytes;) {
    size_t n = std::min<size_t>(kBytes - off, 100003);
    writes.push_back({hs.region_id, off, 0, off, n});
    off += n;
  }
  writes.push_back({hs.region_id, 0, 1, 0, kBytes});
  RegionHandle dsts[] = {hd, hh};
  BatchId id;
  ASSERT_TRUE(a->submit(dsts, writes, &id).ok());
  Status s = a->wait(id, milliseconds(20000));
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(read_back(d_dst, kBytes) == src);
  EXPECT_TRUE(host_dst == src);
  a.reset();
  b.reset();
  cudaFree(d_src);
  cudaFree(d_dst);
}

constexpr size_t kIpcBytes = 5 << 20;
constexpr size_t kIpcOffset = 4096;  // the region starts inside its allocation

// Child: reads the parent's region handle, writes a known pattern into it over cuda_ipc.
TEST(DisaggCuda, IpcChildRole) {
  const char* path = std::getenv("TANDEM_DISAGG_IPC_CHILD");
  if (!path) GTEST_SKIP() << "runs only as the child of IpcBetweenProcesses";
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> frame((std::istreambuf_iterator<char>(in)), {});
  Message m;
  ASSERT_TRUE(decode_frame(frame, &m).ok());
  const KvPagesRequest& req = std::get<KvPagesRequest>(m);
  ASSERT_EQ(req.regions.size(), 1u);
  TransferConfig c;
  c.backend = "cuda_ipc";
  c.device_index = device_count() > 1 ? 1 : 0;
  std::unique_ptr<TransferEngine> e;
  Status s = make_transfer_engine(c, &e);
  ASSERT_TRUE(s.ok()) << s.message();
  void* d_src = device_buffer(c.device_index, random_bytes(kIpcBytes, 9));
  RegionHandle hs;
  ASSERT_TRUE(e->register_region(d_src, kIpcBytes, MemoryKind::kDevice, c.device_index, &hs).ok());
  std::vector<TransferWrite> writes = {{hs.region_id, 0, 0, 0, kIpcBytes / 2},
                                       {hs.region_id, kIpcBytes / 2, 0, kIpcBytes / 2,
                                        kIpcBytes / 2}};
  BatchId id;
  s = e->submit(req.regions, writes, &id);
  ASSERT_TRUE(s.ok()) << s.message();
  s = e->wait(id, milliseconds(20000));
  ASSERT_TRUE(s.ok()) << s.message();
  TransferWrite outside{hs.region_id, 0, 0, 1, kIpcBytes};
  EXPECT_FALSE(e->submit(req.regions, {&outside, 1}, &id).ok());
}

TEST(DisaggCuda, IpcBetweenProcesses) {
  if (std::getenv("TANDEM_DISAGG_IPC_CHILD")) GTEST_SKIP() << "child";
  if (device_count() == 0) GTEST_SKIP() << "no CUDA device";
  TransferConfig c;
  c.backend = "cuda_ipc";
  std::unique_ptr<TransferEngine> e;
  Status s = make_transfer_engine(c, &e);
  ASSERT_TRUE(s.ok()) << s.message();
  void* alloc = device_buffer(0, std::vector<uint8_t>(kIpcBytes + 2 * kIpcOffset, 0x33));
  RegionHandle h;
  s = e->register_region(static_cast<uint8_t*>(alloc) + kIpcOffset, kIpcBytes,
                         MemoryKind::kDevice, 0, &h);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(h.ipc_offset_bytes, kIpcOffset);
  KvPagesRequest req;
  req.regions = {h};
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("tandem_ipc_" + std::to_string(::getpid()))).string();
  {
    std::vector<uint8_t> frame = encode_frame(req);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<char*>(frame.data()),
                                                std::streamsize(frame.size()));
  }
  std::string env = "TANDEM_DISAGG_IPC_CHILD=" + path;
  std::vector<char*> envp;
  for (char** p = environ; *p; ++p) envp.push_back(*p);
  envp.push_back(env.data());
  envp.push_back(nullptr);
  std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string filter = "--gtest_filter=DisaggCuda.IpcChildRole";
  char* argv[] = {exe.data(), filter.data(), nullptr};
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, envp.data()), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  std::filesystem::remove(path);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child failed: " << status;
  std::vector<uint8_t> got = read_back(alloc, kIpcBytes + 2 * kIpcOffset);
  std::vector<uint8_t> want = random_bytes(kIpcBytes, 9);
  EXPECT_EQ(std::memcmp(got.data() + kIpcOffset, want.data(), kIpcBytes), 0);
  for (size_t i = 0; i < kIpcOffset; ++i) {
    ASSERT_EQ(got[i], 0x33) << "guard before, byte " << i;
    ASSERT_EQ(got[kIpcOffset + kIpcBytes + i], 0x33) << "guard after, byte " << i;
  }
  e.reset();
  cudaFree(alloc);
}

}  // namespace
}  // namespace tandem::disagg
