// Helpers of the unit tests of the server's parts (tests/server/*_test.cc).
#ifndef GRADACC_TESTS_SERVER_PART_TEST_UTIL_H_
#define GRADACC_TESTS_SERVER_PART_TEST_UTIL_H_

#include <unistd.h>

#include <filesystem>
#include <string>

#include "absl/time/time.h"
#include "common/mutex.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace part_test {

// A one-shot event TSan can see (absl::Notification is Debian's,
// uninstrumented).
class Event {
 public:
  void Notify() {
    MutexLock lock(&mu_);
    done_ = true;
  }
  bool WaitFor(absl::Duration timeout) {
    MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(Condition(&done_), timeout);
  }

 private:
  Mutex mu_;
  bool done_ = false;
};

// A fresh folder for `name` under the test's temporary folder.
inline std::string TempDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + std::to_string(getpid()) + "_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace part_test
}  // namespace gradacc

#endif  // GRADACC_TESTS_SERVER_PART_TEST_UTIL_H_
