#include "tests/status_probe.h"

#include <grpcpp/grpcpp.h>

#include "gradacc/v1/control.grpc.pb.h"

namespace gradacc::testing {

StatusProbe::StatusProbe(const std::string& address, const std::string& token)
    : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())), token_(token) {}

StatusProbe::~StatusProbe() = default;

v1::Status StatusProbe::Get() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
  v1::Status s;
  if (!v1::ControlPlane::NewStub(channel_)->GetStatus(&ctx, v1::GetStatusRequest(), &s).ok()) return v1::Status();
  return s;
}

v1::GetStepsResponse StatusProbe::Steps() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
  v1::GetStepsResponse r;
  (void)v1::ControlPlane::NewStub(channel_)->GetSteps(&ctx, v1::GetStepsRequest(), &r);
  return r;
}

bool StatusProbe::WaitFor(const std::function<bool(const v1::Status&)>& done, absl::Duration timeout,
                          v1::Status* last) {
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    const v1::Status s = Get();
    if (last != nullptr) *last = s;
    if (!s.job_id().empty() && done(s)) return true;
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

}  // namespace gradacc::testing
