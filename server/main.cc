// gradacc-server: parses flags and serves the job until SIGTERM or SIGINT
// (graceful: parked calls finish with UNAVAILABLE, a final checkpoint is
// written, exit 0). Everything else is in server/server_config.h.
#include <signal.h>

#include <cstdio>

#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "common/buffer.h"
#include "common/log.h"
#include "common/mutex.h"
#include "common/usage.h"
#include "server/server_config.h"

int main(int argc, char** argv) {
  constexpr char kUsage[] = "gradacc-server [--job=FILE] [--listen=HOST:PORT] ...: serves one gradacc job";
  gradacc::InitUsage(kUsage);
  gradacc::SetLogProgram("gradacc-server");  // every log line: "gradacc-server: ..."
  if (gradacc::HelpRequested(argc, argv)) {
    std::fputs(gradacc::FlagsHelp(kUsage).c_str(), stdout);
    return 0;
  }
  gradacc::KeepFreedMemoryForReuse();
  gradacc::SkipMutexDeadlockDetectionInOptimizedBuilds();
  absl::ParseCommandLine(argc, argv);
  // Signals are taken by one thread with sigwait, so they must be blocked in
  // every thread, which inherit this mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto config = gradacc::ConfigFromFlags();
  if (!config.ok()) {
    GRADACC_LOG(ERROR, "%s", config.status().ToString());
    return 1;
  }
  return gradacc::RunServer(*config, signals);
}
