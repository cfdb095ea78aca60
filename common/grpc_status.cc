#include "common/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "google/rpc/status.pb.h"

namespace gradacc {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  std::string message(status.message());
  auto info = status.GetPayload(kErrorInfoTypeUrl);
  if (!info.has_value()) return grpc::Status(code, message);
  google::rpc::Status details;
  details.set_code(static_cast<int>(status.code()));
  details.set_message(message);
  google::protobuf::Any* any = details.add_details();
  any->set_type_url(std::string(kErrorInfoTypeUrl));
  any->set_value(std::string(*info));
  return grpc::Status(code, std::move(message), details.SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  absl::Status result(static_cast<absl::StatusCode>(status.error_code()),
                      what.empty() ? status.error_message() : absl::StrCat(what, ": ", status.error_message()));
  google::rpc::Status details;
  if (!status.error_details().empty() && details.ParseFromString(status.error_details())) {
    for (const google::protobuf::Any& any : details.details()) {
      if (any.type_url() == kErrorInfoTypeUrl) result.SetPayload(kErrorInfoTypeUrl, absl::Cord(any.value()));
    }
  }
  return result;
}

}  // namespace gradacc
