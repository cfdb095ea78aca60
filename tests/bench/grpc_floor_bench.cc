// gRPC's own floor for a push, with none of gradacc's work: a 64 MiB payload
// sent as a client stream of messages from static slices (no copy on the
// sender, one write in flight per stream, as Client::Push), received by a
// generic callback server in a child process that drops every message (no
// copy out of gRPC's buffers, no parsing, no finiteness scan), over 1 and 2
// connections at once (the payload split between them). Both ends get the
// channel arguments gradacc's client and server use (common/wire.h). It
// bounds what any gradacc push over gRPC can reach on this machine; run.sh
// reports it next to raw TCP and gradacc's push. Prints RESULT lines.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/buffer.h"
#include "common/mutex.h"
#include "common/wire.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(int64_t, bytes, int64_t{64} << 20, "payload of one push");
ABSL_FLAG(int64_t, message_bytes, int64_t{256} << 10, "bytes per stream message (gradacc's default chunk: 64 Ki f32)");
ABSL_FLAG(int, reps, 10, "timed pushes per connection count");
ABSL_FLAG(int, streams, 1, "concurrent streams per connection, the payload split over all of them");
ABSL_FLAG(int, warmup, 2, "untimed pushes first");
ABSL_FLAG(double, timeout_s, 60, "bound on each push");

namespace {

class DropReactor : public grpc::ServerGenericBidiReactor {
 public:
  DropReactor() { StartRead(&in_); }
  void OnReadDone(bool ok) override {
    if (ok) {
      in_.Clear();
      StartRead(&in_);
      return;
    }
    const char byte = 0;
    grpc::Slice slice(&byte, 1);
    reply_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&reply_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer in_, reply_;
};

class DropService : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    return new DropReactor();
  }
};

// The child: serves until killed; writes its port to `port_fd` first.
[[noreturn]] void Serve(int port_fd) {
  DropService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  builder.SetMaxReceiveMessageSize(-1);
  for (const auto& [name, value] : gradacc::BulkTransferChannelArgs()) builder.AddChannelArgument(name, value);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || write(port_fd, &port, sizeof port) != sizeof port) _exit(1);
  close(port_fd);
  server->Wait();
  _exit(0);
}

// One stream: writes [data, data + bytes) in messages, half-closes, reads
// the one-byte answer.
class Sender : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  Sender(grpc::GenericStub& stub, const char* data, size_t bytes, size_t message_bytes, double timeout_s)
      : data_(data), bytes_(bytes), message_bytes_(message_bytes) {
    context_.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1e3)));
    stub.PrepareBidiStreamingCall(&context_, "/gradacc.bench.Floor/Push", grpc::StubOptions(), this);
    StartRead(&reply_);
    NextWrite();
    StartCall();
  }
  void OnWriteDone(bool ok) override {
    if (ok) NextWrite();
  }
  void OnReadDone(bool) override {}
  void OnDone(const grpc::Status& status) override {
    gradacc::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }
  grpc::Status Wait() {
    gradacc::MutexLock lock(&mu_, gradacc::Condition(&done_));  // bounded by the call's deadline
    return status_;
  }

 private:
  void NextWrite() {
    if (sent_ == bytes_) {
      StartWritesDone();
      return;
    }
    const size_t n = std::min(message_bytes_, bytes_ - sent_);
    grpc::Slice slice(data_ + sent_, n, grpc::Slice::STATIC_SLICE);
    out_ = grpc::ByteBuffer(&slice, 1);
    sent_ += n;
    StartWrite(&out_);
  }

  const char* const data_;
  const size_t bytes_;
  const size_t message_bytes_;
  size_t sent_ = 0;
  grpc::ClientContext context_;
  grpc::ByteBuffer out_, reply_;
  gradacc::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

int Fail(const std::string& what) {
  std::fprintf(stderr, "gradacc_bench_grpc_floor: %s\n", what.c_str());
  return 1;
}

// Median GB/s of pushes of the payload split over `connections` x --streams
// concurrent streams, on `connections` connections of their own.
int Measure(int port, int connections, const char* data, size_t bytes) {
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int c = 0; c < connections; ++c) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
    args.SetInt("gradacc.bench.connection", c);
    args.SetMaxSendMessageSize(-1);
    for (const auto& [name, value] : gradacc::BulkTransferChannelArgs()) args.SetInt(name, value);
    auto channel =
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      return Fail("cannot connect to the drop server");
    }
    stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  }
  const size_t message_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_message_bytes));
  const int streams = absl::GetFlag(FLAGS_streams);
  const size_t per = (bytes / (connections * streams) + message_bytes - 1) / message_bytes * message_bytes;
  std::vector<double> gbps;
  const int warmup = absl::GetFlag(FLAGS_warmup);
  for (int rep = 0; rep < warmup + absl::GetFlag(FLAGS_reps); ++rep) {
    const double t0 = gradacc::bench::NowSeconds();
    std::vector<std::unique_ptr<Sender>> senders;
    for (int c = 0; c < connections * streams; ++c) {
      const size_t begin = std::min(bytes, per * c), end = std::min(bytes, per * (c + 1));
      senders.push_back(std::make_unique<Sender>(*stubs[c % connections], data + begin, end - begin, message_bytes,
                                                 absl::GetFlag(FLAGS_timeout_s)));
    }
    for (auto& s : senders) {
      const grpc::Status status = s->Wait();
      if (!status.ok()) return Fail(absl::StrCat("push: ", status.error_message()));
    }
    const double t1 = gradacc::bench::NowSeconds();
    if (rep >= warmup) gbps.push_back(static_cast<double>(bytes) / (t1 - t0) / 1e9);
  }
  const std::string setting = absl::StrCat(connections, "conn", streams > 1 ? absl::StrCat(streams, "streams") : "");
  const uint64_t floats = bytes / 4;
  using gradacc::bench::PrintResult;
  PrintResult("push", "grpc_floor", floats, 1, setting, "gbps_median", gradacc::bench::Median(gbps), "GB/s");
  PrintResult("push", "grpc_floor", floats, 1, setting, "gbps_min", gradacc::bench::Min(gbps), "GB/s");
  PrintResult("push", "grpc_floor", floats, 1, setting, "gbps_max", gradacc::bench::Max(gbps), "GB/s");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int64_t bytes = absl::GetFlag(FLAGS_bytes);
  if (bytes <= 0 || absl::GetFlag(FLAGS_message_bytes) <= 0 || absl::GetFlag(FLAGS_streams) <= 0) {
    return Fail("--bytes, --message_bytes and --streams must be > 0");
  }
  // The server is forked before gRPC starts any thread in this process.
  int fds[2];
  if (pipe(fds) != 0) return Fail("pipe failed");
  const pid_t child = fork();
  if (child < 0) return Fail("fork failed");
  if (child == 0) {
    close(fds[0]);
    gradacc::KeepFreedMemoryForReuse();  // as gradacc-server does
    gradacc::SkipMutexDeadlockDetectionInOptimizedBuilds();
    Serve(fds[1]);
  }
  close(fds[1]);
  gradacc::KeepFreedMemoryForReuse();  // as gradacc-worker does
  gradacc::SkipMutexDeadlockDetectionInOptimizedBuilds();
  int port = 0;
  const bool got_port = read(fds[0], &port, sizeof port) == sizeof port;
  close(fds[0]);
  int rc = got_port ? 0 : Fail("the drop server did not start");
  gradacc::bench::Bytes payload(static_cast<size_t>(bytes));
  gradacc::bench::FillGradient(reinterpret_cast<float*>(payload.data()), static_cast<size_t>(bytes) / 4, 0, 0);
  for (int connections : {1, 2}) {
    if (rc == 0) rc = Measure(port, connections, payload.data(), static_cast<size_t>(bytes));
  }
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  return rc;
}
