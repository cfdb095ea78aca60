// Helpers of the tests of the gRPC services and their reactors
// (tests/server/rpc/*_test.cc): a real GradaccServer on a port the OS chose,
// channels to it, and pushes and pulls made with the generated stubs over
// real gRPC, every call bounded by a deadline.
#ifndef GRADACC_TESTS_SERVER_RPC_RPC_TEST_UTIL_H_
#define GRADACC_TESTS_SERVER_RPC_RPC_TEST_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/errors.h"
#include "common/grpc_status.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/subprocess.h"
#include "tests/test_util.h"

namespace gradacc::rpc_test {

// A server of `spec` listening on 127.0.0.1 with a port the OS chose.
inline std::unique_ptr<GradaccServer> StartServer(const v1::JobSpec& spec, ServerOptions options = {}) {
  options.listen = "127.0.0.1:0";
  auto server = GradaccServer::Start(spec, options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// A token of each kind (worker, read-only, shard).
inline TokenSet AllTokens() {
  TokenSet t;
  t.worker = "worker-secret";
  t.reader = "reader-secret";
  t.shard = "shard-secret";
  return t;
}

// Shards 0 and 1 of `spec` served by one GradaccServer on one address (a
// port the OS chose, taken again at once: the peers' addresses are needed
// before the server starts); `port` gets it.
inline std::unique_ptr<GradaccServer> StartTwoShards(const v1::JobSpec& spec, int* port) {
  *port = testing::FreePort();
  const std::string address = absl::StrCat("127.0.0.1:", *port);
  ServerOptions options;
  options.listen = address;
  options.trainer.num_shards = 2;
  options.shards = {0, 1};
  options.shard_peers = {address, address};
  auto server = GradaccServer::Start(spec, options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

inline std::shared_ptr<grpc::Channel> Connect(int port) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
}

inline std::chrono::system_clock::time_point Deadline(absl::Duration d = absl::Seconds(20)) {
  return absl::ToChronoTime(absl::Now() + d);
}

// A client context with a deadline and, when given, a bearer token and a
// shard.
inline void Prepare(grpc::ClientContext* ctx, absl::Duration timeout = absl::Seconds(20), const std::string& token = "",
                    int shard = -1) {
  ctx->set_deadline(Deadline(timeout));
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  if (shard >= 0) ctx->AddMetadata("x-gradacc-shard", absl::StrCat(shard));
}

// The reason a refused call carries (ErrorInfo in the status details).
inline v1::ErrorReason Reason(const grpc::Status& status) { return ReasonOf(FromGrpcStatus(status)); }

// A gradient of `n` elements, element i = `scale` * (i + 1).
inline std::vector<float> Ramp(size_t n, float scale) {
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) g[i] = scale * static_cast<float>(i + 1);
  return g;
}

inline v1::PushRequest HeaderRequest(const v1::PushHeader& header) {
  v1::PushRequest r;
  *r.mutable_header() = header;
  return r;
}

// The chunks of `grad` (flat over `layout`), `chunk` elements at most each.
inline std::vector<v1::PushRequest> ChunkRequests(const ModelLayout& layout, const std::vector<float>& grad,
                                                  uint64_t chunk = 64) {
  std::vector<v1::PushRequest> out;
  for (size_t i = 0; i < layout.tensors().size(); ++i) {
    const auto& t = layout.tensors()[i];
    for (uint64_t off = 0; off < t.size; off += chunk) {
      const uint64_t n = std::min(chunk, t.size - off);
      v1::PushRequest r;
      r.mutable_chunk()->set_tensor(static_cast<uint32_t>(i));
      r.mutable_chunk()->set_offset(off);
      r.mutable_chunk()->set_data(testing::Bytes(grad.data() + t.offset + off, n));
      out.push_back(std::move(r));
    }
  }
  return out;
}

struct PushOutcome {
  grpc::Status status;
  v1::PushResponse response;
};

// Writes `messages` on one Push stream, half-closes and waits for the answer.
inline PushOutcome PushMessages(v1::DataPlane::Stub& stub, const std::vector<v1::PushRequest>& messages,
                                absl::Duration timeout = absl::Seconds(20), const std::string& token = "") {
  grpc::ClientContext ctx;
  Prepare(&ctx, timeout, token);
  PushOutcome out;
  auto writer = stub.Push(&ctx, &out.response);
  for (const v1::PushRequest& m : messages) {
    if (!writer->Write(m)) break;  // the server answered early: Finish says why
  }
  writer->WritesDone();
  out.status = writer->Finish();
  return out;
}

// A whole push: the header of `c` then its gradient in chunks.
inline PushOutcome PushContribution(v1::DataPlane::Stub& stub, const ModelLayout& layout,
                                    const testing::Contribution& c) {
  std::vector<v1::PushRequest> messages = {HeaderRequest(testing::HeaderOf(c, layout.num_elements()))};
  for (v1::PushRequest& r : ChunkRequests(layout, c.grad)) messages.push_back(std::move(r));
  return PushMessages(stub, messages);
}

struct PullOutcome {
  grpc::Status status;
  v1::ParametersHeader header;
  std::vector<float> params;  // flat, assembled from the chunks
  int messages = 0;
};

inline PullOutcome Pull(v1::DataPlane::Stub& stub, const ModelLayout& layout, const v1::PullRequest& request,
                        absl::Duration timeout = absl::Seconds(20)) {
  grpc::ClientContext ctx;
  Prepare(&ctx, timeout);
  PullOutcome out;
  out.params.assign(layout.num_elements(), 0.0f);
  auto reader = stub.Pull(&ctx, request);
  v1::PullResponse m;
  while (reader->Read(&m)) {
    ++out.messages;
    if (m.has_header()) {
      out.header = m.header();
      continue;
    }
    const auto& t = layout.tensors()[m.chunk().tensor()];
    const size_t n = m.chunk().data().size() / sizeof(float);
    std::memcpy(out.params.data() + t.offset + m.chunk().offset(), m.chunk().data().data(), n * sizeof(float));
  }
  out.status = reader->Finish();
  return out;
}

inline v1::PullRequest PullOf(uint32_t worker, uint64_t min_version) {
  v1::PullRequest r;
  r.set_worker(worker);
  r.set_min_version(min_version);
  return r;
}

inline grpc::Status Join(v1::DataPlane::Stub& stub, uint32_t worker, v1::JoinResponse* response = nullptr,
                         const std::string& token = "") {
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Seconds(20), token);
  v1::JoinRequest request;
  request.set_worker(worker);
  v1::JoinResponse ignored;
  return stub.Join(&ctx, request, response != nullptr ? response : &ignored);
}

// A gRPC server of `service` alone on 127.0.0.1 with a port the OS chose
// (written to `port`).
inline std::unique_ptr<grpc::Server> Serve(grpc::Service* service, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
  builder.RegisterService(service);
  auto server = builder.BuildAndStart();
  EXPECT_NE(server, nullptr);
  EXPECT_GT(*port, 0);
  return server;
}

}  // namespace gradacc::rpc_test

#endif  // GRADACC_TESTS_SERVER_RPC_RPC_TEST_UTIL_H_
