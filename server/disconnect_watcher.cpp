#include "server/disconnect_watcher.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <vector>

#include "core/log.h"

namespace tandem::server {

DisconnectWatcher::DisconnectWatcher(std::function<void(runtime::RequestId)> on_disconnect)
    : on_disconnect_(std::move(on_disconnect)), thread_([this] { loop(); }) {}

DisconnectWatcher::~DisconnectWatcher() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

DisconnectWatcher::Handle& DisconnectWatcher::Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    owner_ = o.owner_;
    key_ = o.key_;
    o.owner_ = nullptr;
  }
  return *this;
}

void DisconnectWatcher::Handle::reset() {
  if (owner_ != nullptr) owner_->unwatch(key_);
  owner_ = nullptr;
}

DisconnectWatcher::Handle DisconnectWatcher::watch(int fd, runtime::RequestId id) {
  if (fd < 0) return {};
  std::lock_guard lk(mu_);
  const uint64_t key = next_key_++;
  entries_.emplace(key, Entry{fd, id, false});
  return Handle(this, key);
}

void DisconnectWatcher::unwatch(uint64_t key) {
  std::lock_guard lk(mu_);
  entries_.erase(key);
}

void DisconnectWatcher::loop() {
  std::vector<pollfd> fds;
  std::vector<uint64_t> keys;
  std::unique_lock lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, std::chrono::milliseconds(50));
    if (stop_ || entries_.empty()) continue;
    // Polled under the lock: a handle cannot be released (and its socket closed and reused)
    // while its fd is being looked at.
    fds.clear();
    keys.clear();
    for (const auto& [key, e] : entries_) {
      if (e.fired) continue;
      fds.push_back(pollfd{e.fd, POLLRDHUP, 0});
      keys.push_back(key);
    }
    if (fds.empty() || ::poll(fds.data(), fds.size(), 0) <= 0) continue;
    std::vector<runtime::RequestId> gone;
    for (size_t i = 0; i < fds.size(); ++i) {
      if ((fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) == 0) continue;
      Entry& e = entries_.at(keys[i]);
      e.fired = true;
      gone.push_back(e.id);
    }
    lk.unlock();
    for (const runtime::RequestId id : gone) {
      TANDEM_LOG_INFO("client disconnected: aborting request {}", id);
      on_disconnect_(id);
    }
    lk.lock();
  }
}

namespace {

bool address_of(const sockaddr_storage& a, socklen_t len, std::string& host, int& port) {
  char buf[NI_MAXHOST];
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, buf, sizeof(buf), nullptr, 0,
                    NI_NUMERICHOST) != 0) {
    return false;
  }
  host = buf;
  if (a.ss_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  } else if (a.ss_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  } else {
    return false;
  }
  return true;
}

}  // namespace

int find_connection_socket(const std::string& remote_addr, int remote_port, int local_port) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (const dirent* d = ::readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(d->d_name, &end, 10);
    if (end == d->d_name || *end != '\0' || fd == ::dirfd(dir)) continue;
    struct stat st;
    if (::fstat(int(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{}, local{};
    socklen_t peer_len = sizeof(peer), local_len = sizeof(local);
    if (::getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
    if (::getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0) continue;
    std::string peer_host, local_host;
    int peer_port = -1, port = -1;
    if (!address_of(peer, peer_len, peer_host, peer_port) ||
        !address_of(local, local_len, local_host, port)) {
      continue;
    }
    if (peer_port == remote_port && port == local_port && peer_host == remote_addr) {
      found = int(fd);
      break;
    }
  }
  ::closedir(dir);
  return found;
}

}  // namespace tandem::server
