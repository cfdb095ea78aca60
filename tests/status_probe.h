// StatusProbe: a test's in-process view of a server's status over one gRPC
// channel (GetStatus, GetSteps), and bounded waits on it — instead of
// spawning the CLI every few milliseconds.
#ifndef GRADACC_TESTS_STATUS_PROBE_H_
#define GRADACC_TESTS_STATUS_PROBE_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "gradacc/v1/control.pb.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace gradacc::testing {

class StatusProbe {
 public:
  // `token`: a bearer token for servers that require one.
  explicit StatusProbe(const std::string& address, const std::string& token = "");
  ~StatusProbe();

  // The server's status; an empty Status (job_id "") when unreachable.
  v1::Status Get();
  v1::GetStepsResponse Steps();
  // Polls every 5 ms until `done(status)` holds; false after `timeout`.
  bool WaitFor(const std::function<bool(const v1::Status&)>& done, absl::Duration timeout = absl::Seconds(30),
               v1::Status* last = nullptr);

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::string token_;
};

}  // namespace gradacc::testing

#endif  // GRADACC_TESTS_STATUS_PROBE_H_
