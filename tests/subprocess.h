// Child processes for integration tests: the real binaries, started with
// posix_spawn, output captured to files, every wait bounded.
#ifndef GRADACC_TESTS_SUBPROCESS_H_
#define GRADACC_TESTS_SUBPROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gradacc/v1/control.pb.h"

namespace gradacc::testing {

// A running child. Killed (SIGKILL) on destruction if still running.
class Subprocess {
 public:
  // argv[0] is the program path. stdout and stderr go to `log_path`
  // (appended); empty = inherit.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv,
                                                           const std::string& log_path = "");
  ~Subprocess();

  pid_t pid() const { return pid_; }
  // Exit code (or 128 + signal) once exited; nullopt on timeout.
  std::optional<int> Wait(absl::Duration timeout);
  void Signal(int sig);
  bool running();

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  std::optional<int> exit_;
};

// Runs to completion (bounded); returns exit code and captured output.
struct RunResult {
  int exit_code = -1;
  std::string output;
};
RunResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout = absl::Seconds(30));

std::string ReadFile(const std::string& path);
// A port the OS picks on 127.0.0.1 (bound to port 0, read back, released):
// for a server that must keep its port across restarts, or that peers must
// know before it starts.
int FreePort();

// The port a process writes to `file` (a number and a newline) once it
// serves; 0 when `timeout` passes or `process` (when given) exits first.
int WaitForPortFile(const std::string& file, Subprocess* process = nullptr,
                    absl::Duration timeout = absl::Seconds(20));

// A fresh, empty folder under the test temp dir.
std::string MakeTempDir(const std::string& name);

// Lets mpirun run as root and oversubscribe the cores (CI runs as root on 2
// cores); children inherit it.
void AllowMpiAsRoot();

// A gradacc_test_client worker process (tests/test_client.cc) with its
// output in <dir>/worker<k>.log.
std::unique_ptr<Subprocess> StartTestClient(const std::string& dir, const std::string& address, int worker,
                                            const std::vector<std::string>& extra_flags = {});

// `gradacc status --json` of a server, parsed (an empty Status on failure).
v1::Status CliStatus(const std::string& address);

// A gradacc-server child on 127.0.0.1 with a port the OS chose.
class ServerProcess {
 public:
  // Listens on 127.0.0.1:`port` (0: a port the OS chooses).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const std::string& dir,
                                                              const std::vector<std::string>& extra_flags,
                                                              int port = 0);
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  Subprocess& process() { return *process_; }
  std::string log() const { return ReadFile(log_path_); }
  // SIGTERM and wait (bounded); returns the exit code.
  std::optional<int> Stop();

 private:
  std::unique_ptr<Subprocess> process_;
  int port_ = 0;
  std::string log_path_;
};

}  // namespace gradacc::testing

#endif  // GRADACC_TESTS_SUBPROCESS_H_
