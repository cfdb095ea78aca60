#include "tests/subprocess.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

extern char** environ;

namespace gradacc::testing {

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(const std::vector<std::string>& argv,
                                                              const std::string& log_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!log_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  // Children must not inherit a blocked-signal mask from test threads.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return absl::InternalError(absl::StrCat("spawn ", argv[0], ": ", std::strerror(rc)));
  return std::unique_ptr<Subprocess>(new Subprocess(pid));
}

Subprocess::~Subprocess() {
  if (!exit_.has_value()) {
    ::kill(pid_, SIGKILL);
    Wait(absl::Seconds(10));
  }
}

std::optional<int> Subprocess::Wait(absl::Duration timeout) {
  if (exit_.has_value()) return exit_;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_;
    }
    if (r < 0) return std::nullopt;
    if (absl::Now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void Subprocess::Signal(int sig) {
  if (!exit_.has_value()) ::kill(pid_, sig);
}

bool Subprocess::running() { return !Wait(absl::ZeroDuration()).has_value(); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

int WaitForPortFile(const std::string& file, Subprocess* process, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up && (process == nullptr || process->running())) {
    const std::string text = ReadFile(file);
    if (!text.empty() && text.back() == '\n') return std::stoi(text);
    absl::SleepFor(absl::Milliseconds(10));
  }
  return 0;
}

std::string MakeTempDir(const std::string& name) {
  static int counter = 0;
  std::string dir = absl::StrCat(::testing::TempDir(), "/gradacc_", getpid(), "_", counter++, "_", name);
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

RunResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout) {
  static int counter = 0;
  const std::string log = absl::StrCat(::testing::TempDir(), "/gradacc_run_", getpid(), "_", counter++, ".log");
  ::unlink(log.c_str());
  RunResult result;
  auto p = Subprocess::Start(argv, log);
  if (!p.ok()) {
    result.output = p.status().ToString();
    return result;
  }
  auto code = (*p)->Wait(timeout);
  if (!code.has_value()) {
    (*p)->Signal(SIGKILL);
    (*p)->Wait(absl::Seconds(5));
    result.output = "timed out\n";
  }
  result.exit_code = code.value_or(-1);
  result.output += ReadFile(log);
  return result;
}

void AllowMpiAsRoot() {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 0);
}

std::unique_ptr<Subprocess> StartTestClient(const std::string& dir, const std::string& address, int worker,
                                            const std::vector<std::string>& extra_flags) {
  std::vector<std::string> argv = {GRADACC_TEST_CLIENT_BIN, "--server=" + address,
                                   absl::StrCat("--worker=", worker)};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  auto p = Subprocess::Start(argv, absl::StrCat(dir, "/worker", worker, ".log"));
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

v1::Status CliStatus(const std::string& address) {
  auto run = RunCommand({GRADACC_CLI_BIN, "status", "--json", "--server=" + address, "--timeout_s=5"});
  v1::Status s;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(run.output, &s).ok()) << run.output;
  return s;
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(const std::string& dir,
                                                                    const std::vector<std::string>& extra_flags,
                                                                    int port) {
  auto server = std::make_unique<ServerProcess>();
  const std::string port_file = dir + "/server.port";
  ::unlink(port_file.c_str());
  server->log_path_ = dir + "/server.log";
  std::vector<std::string> argv = {GRADACC_SERVER_BIN, absl::StrCat("--listen=127.0.0.1:", port),
                                   "--port_file=" + port_file};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  auto p = Subprocess::Start(argv, server->log_path_);
  if (!p.ok()) return p.status();
  server->process_ = std::move(*p);
  server->port_ = WaitForPortFile(port_file, server->process_.get());
  if (server->port_ != 0) return server;
  if (!server->process_->running()) {
    return absl::InternalError(absl::StrCat("gradacc-server exited early:\n", server->log()));
  }
  return absl::DeadlineExceededError(absl::StrCat("gradacc-server did not write its port:\n", server->log()));
}

std::optional<int> ServerProcess::Stop() {
  process_->Signal(SIGTERM);
  return process_->Wait(absl::Seconds(15));
}

}  // namespace gradacc::testing
