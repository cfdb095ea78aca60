// Helpers of the tests of the client library's parts
// (tests/worker/client/*_test.cc): client options for an in-process
// GradaccServer (tests/server/rpc/rpc_test_util.h starts one on a port the
// OS chose), with every wait bounded.
#ifndef GRADACC_TESTS_WORKER_CLIENT_CLIENT_TEST_UTIL_H_
#define GRADACC_TESTS_WORKER_CLIENT_CLIENT_TEST_UTIL_H_

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "worker/client/client.h"

namespace gradacc::client_test {

inline ClientOptions OptionsFor(const std::string& server, uint32_t worker) {
  ClientOptions options;
  options.server = server;
  options.worker = worker;
  options.connect_timeout = absl::Seconds(20);
  options.rpc_timeout = absl::Seconds(20);
  options.window_timeout = absl::Seconds(30);
  options.retry.initial_backoff = absl::Milliseconds(1);
  options.retry.max_backoff = absl::Milliseconds(10);
  options.shared_memory = false;  // gRPC only, whatever the host offers
  return options;
}

inline std::string Local(int port) { return absl::StrCat("127.0.0.1:", port); }

}  // namespace gradacc::client_test

#endif  // GRADACC_TESTS_WORKER_CLIENT_CLIENT_TEST_UTIL_H_
