// Internal to the client library: the gRPC stubs of one server (a shard) and
// the deadline of a call. Kept out of client.h so that code linking the
// library does not compile gRPC's headers.
#ifndef GRADACC_WORKER_CLIENT_STUBS_H_
#define GRADACC_WORKER_CLIENT_STUBS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <utility>

#include "absl/time/time.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "common/channel.h"

namespace gradacc {

// Owned by a Client; used by one thread at a time, like the Client.
// Push and Pull also have raw forms: their messages are grpc::ByteBuffers
// whose chunk payloads are not copied (common/wire.h); the wire is the
// same as the generated stub's.
class GradaccStubs {
 public:
  explicit GradaccStubs(std::shared_ptr<grpc::Channel> channel)
      : channel(std::move(channel)),
        data(v1::DataPlane::NewStub(this->channel)),
        control(v1::ControlPlane::NewStub(this->channel)),
        push_(kPushMethod, grpc::internal::RpcMethod::CLIENT_STREAMING, this->channel),
        pull_(kPullMethod, grpc::internal::RpcMethod::SERVER_STREAMING, this->channel) {}
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::DataPlane::Stub> data;
  std::unique_ptr<v1::ControlPlane::Stub> control;

  // DataPlane.Push with messages as ByteBuffers; *response is a serialised
  // PushResponse once Finish returns OK.
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> RawPush(grpc::ClientContext* ctx, grpc::ByteBuffer* response) {
    return std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>>(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel.get(), push_, ctx, response));
  }
  // DataPlane.Pull whose stream messages are read as ByteBuffers.
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> RawPull(grpc::ClientContext* ctx,
                                                                const v1::PullRequest& request) {
    return std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>>(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel.get(), pull_, ctx, request));
  }

 private:
  static constexpr char kPushMethod[] = "/gradacc.v1.DataPlane/Push";
  static constexpr char kPullMethod[] = "/gradacc.v1.DataPlane/Pull";
  const grpc::internal::RpcMethod push_;
  const grpc::internal::RpcMethod pull_;
};

// A call's context: the bearer token, a deadline and, for calls that should
// survive a server restart, wait_for_ready.
inline void PrepareCall(grpc::ClientContext& ctx, const std::string& token, absl::Time deadline, bool wait_for_ready) {
  Authenticate(ctx, token);
  ctx.set_deadline(absl::ToChronoTime(deadline));
  ctx.set_wait_for_ready(wait_for_ready);
}

}  // namespace gradacc

#endif  // GRADACC_WORKER_CLIENT_STUBS_H_
