// Raw loopback TCP throughput: the ceiling for anything that moves bytes
// through a socket on this host. One thread sends --mib MiB messages over
// 127.0.0.1 to a receiver thread, which reads each whole message into a
// buffer allocated once and answers with one byte; a message's time is from
// the first send to the answer. Prints the median GB/s over --reps messages
// (after --warmup) as a RESULT line (tests/bench/bench_util.h).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
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

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const size_t bytes = static_cast<size_t>(absl::GetFlag(FLAGS_mib)) << 20;
  const int reps = absl::GetFlag(FLAGS_reps), warmup = absl::GetFlag(FLAGS_warmup);

  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return Fail("bind");
  if (listen(listener, 1) != 0) return Fail("listen");
  if (getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return Fail("getsockname");

  gradacc::bench::Bytes in(bytes), out(bytes);
  const int total = reps + warmup;
  std::thread receiver([&] {
    const int fd = accept(listener, nullptr, nullptr);
    if (fd < 0) return;
    for (int i = 0; i < total; ++i) {
      if (!RecvAll(fd, in.data(), bytes)) break;
      const char ack = 1;
      if (!SendAll(fd, &ack, 1)) break;
    }
    close(fd);
  });

  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return Fail("connect");
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::vector<double> gbps;
  for (int i = 0; i < total; ++i) {
    const double t0 = gradacc::bench::NowSeconds();
    char ack = 0;
    if (!SendAll(fd, out.data(), bytes) || !RecvAll(fd, &ack, 1)) return Fail("transfer");
    const double dt = gradacc::bench::NowSeconds() - t0;
    if (i >= warmup) gbps.push_back(static_cast<double>(bytes) / dt / 1e9);
  }
  close(fd);
  receiver.join();
  close(listener);
  gradacc::bench::PrintResult("tcp", "loopback", bytes / 4, 1, "threads", "gbps_median", gradacc::bench::Median(gbps),
                              "GB/s");
  gradacc::bench::PrintResult("tcp", "loopback", bytes / 4, 1, "threads", "gbps_min", gradacc::bench::Min(gbps), "GB/s");
  gradacc::bench::PrintResult("tcp", "loopback", bytes / 4, 1, "threads", "gbps_max", gradacc::bench::Max(gbps), "GB/s");
  return 0;
}
