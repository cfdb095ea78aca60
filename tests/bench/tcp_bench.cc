// Raw loopback TCP throughput: the ceiling for anything that moves bytes
// through a socket on this host, the best the kernel gives. For each
// configuration — 1 or 2 connections, and the default or a fixed socket
// buffer size (SO_SNDBUF/SO_RCVBUF of 256 KiB, 1 MiB, 4 MiB) — sender
// threads send a --mib MiB message (split evenly over the connections) over
// 127.0.0.1 to receiver threads, which read it into a buffer allocated once
// and each answer with one byte; a message's time is from the first send to
// the last answer. Prints, as RESULT lines (tests/bench/bench_util.h), each
// configuration's median GB/s over --reps messages (after --warmup), and the
// best configuration's median, min and max as the baseline.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(int, mib, 64, "message size in MiB");
ABSL_FLAG(int, reps, 10, "timed messages");
ABSL_FLAG(int, warmup, 2, "untimed messages first");

namespace {

bool SendAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t k = send(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool RecvAll(int fd, char* p, size_t n) {
  while (n > 0) {
    const ssize_t k = recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

int Fail(const char* what) {
  std::perror(what);
  return 1;
}

void SetBuffers(int fd, int bytes) {
  if (bytes <= 0) return;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}

// GB/s of each timed message over `connections` connections with socket
// buffers of `sockbuf` bytes (0: the kernel's default and autotuning).
std::vector<double> Measure(size_t bytes, int connections, int sockbuf, int reps, int warmup) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  SetBuffers(listener, sockbuf);  // inherited by the accepted sockets
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(listener, connections) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("listen");
    return {};
  }
  gradacc::bench::Bytes in(bytes), out(bytes);
  const size_t part = bytes / static_cast<size_t>(connections);
  const int total = reps + warmup;
  std::vector<int> fds;
  for (int c = 0; c < connections; ++c) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    SetBuffers(fd, sockbuf);
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      std::perror("connect");
      return {};
    }
    fds.push_back(fd);
  }
  std::vector<std::thread> receivers;
  for (int c = 0; c < connections; ++c) {
    const int fd = accept(listener, nullptr, nullptr);
    receivers.emplace_back([&, fd, c] {
      char* const at = in.data() + part * static_cast<size_t>(c);
      for (int i = 0; i < total; ++i) {
        const char ack = 1;
        if (!RecvAll(fd, at, part) || !SendAll(fd, &ack, 1)) break;
      }
      close(fd);
    });
  }
  std::vector<double> gbps;
  for (int i = 0; i < total; ++i) {
    bool ok = true;
    const double t0 = gradacc::bench::NowSeconds();
    std::vector<std::thread> senders;
    for (int c = 1; c < connections; ++c) {
      senders.emplace_back([&, c] {
        char ack = 0;
        if (!SendAll(fds[c], out.data() + part * static_cast<size_t>(c), part) || !RecvAll(fds[c], &ack, 1)) ok = false;
      });
    }
    char ack = 0;
    if (!SendAll(fds[0], out.data(), part) || !RecvAll(fds[0], &ack, 1)) ok = false;
    for (std::thread& t : senders) t.join();
    const double dt = gradacc::bench::NowSeconds() - t0;
    if (!ok) break;
    if (i >= warmup) gbps.push_back(static_cast<double>(part) * connections / dt / 1e9);
  }
  for (int fd : fds) close(fd);
  for (std::thread& t : receivers) t.join();
  close(listener);
  return gbps;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const size_t bytes = static_cast<size_t>(absl::GetFlag(FLAGS_mib)) << 20;
  const int reps = absl::GetFlag(FLAGS_reps), warmup = absl::GetFlag(FLAGS_warmup);
  std::vector<double> best;
  for (int connections : {1, 2}) {
    for (int sockbuf : {0, 256 << 10, 1 << 20, 4 << 20}) {
      const std::vector<double> gbps = Measure(bytes, connections, sockbuf, reps, warmup);
      if (gbps.empty()) return Fail("transfer");
      const std::string setting = absl::StrCat(connections, "conn_", sockbuf == 0 ? std::string("auto") : absl::StrCat(sockbuf >> 10, "KiB"));
      gradacc::bench::PrintResult("tcp", "loopback_config", bytes / 4, connections, setting, "gbps_median",
                                  gradacc::bench::Median(gbps), "GB/s");
      if (best.empty() || gradacc::bench::Median(gbps) > gradacc::bench::Median(best)) best = gbps;
    }
  }
  gradacc::bench::PrintResult("tcp", "loopback", bytes / 4, 1, "best", "gbps_median", gradacc::bench::Median(best), "GB/s");
  gradacc::bench::PrintResult("tcp", "loopback", bytes / 4, 1, "best", "gbps_min", gradacc::bench::Min(best), "GB/s");
  gradacc::bench::PrintResult("tcp", "loopback", bytes / 4, 1, "best", "gbps_max", gradacc::bench::Max(best), "GB/s");
  return 0;
}
