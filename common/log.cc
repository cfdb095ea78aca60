#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/mutex.h"

namespace gradacc {
namespace {

LogLevel InitialLevel() {
  LogLevel level = LogLevel::kInfo;
  if (const char* env = std::getenv("GRADACC_LOG_LEVEL")) (void)ParseLogLevel(env, &level);
  return level;
}

std::atomic<int>& Level() {
  static std::atomic<int> level{static_cast<int>(InitialLevel())};
  return level;
}

Mutex& ProgramMu() {
  static Mutex* const mu = new Mutex();
  return *mu;
}

// Read and written under ProgramMu().
std::string& Program() {
  static std::string* const program = new std::string("gradacc");
  return *program;
}

void WriteWhole(const std::string& line) {
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n <= 0) return;  // nowhere to report a failing stderr
    done += static_cast<size_t>(n);
  }
}

}  // namespace

bool ParseLogLevel(absl::string_view text, LogLevel* level) {
  const std::string t = absl::AsciiStrToLower(text);
  for (const auto& [name, value] : {std::pair{"debug", LogLevel::kDebug}, {"info", LogLevel::kInfo},
                                     {"warning", LogLevel::kWarning}, {"error", LogLevel::kError}}) {
    if (t == name) {
      *level = value;
      return true;
    }
  }
  return false;
}

void SetLogLevel(LogLevel level) { Level().store(static_cast<int>(level), std::memory_order_relaxed); }

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= Level().load(std::memory_order_relaxed); }

void SetLogProgram(absl::string_view program) {
  MutexLock lock(&ProgramMu());
  Program() = std::string(program);
}

void LogLine(LogLevel level, absl::string_view message) {
  if (!LogEnabled(level)) return;
  std::string line;
  {
    MutexLock lock(&ProgramMu());
    line = absl::StrCat(Program(), ": ", message, "\n");
  }
  WriteWhole(line);
}

void CheckFailed(const char* file, int line, const char* condition, const std::string& message) {
  std::string program;
  {
    MutexLock lock(&ProgramMu());
    program = Program();
  }
  WriteWhole(absl::StrCat(program, ": CHECK failed at ", file, ":", line, ": ", condition, message.empty() ? "" : " — ",
                          message, "\n"));
  std::abort();
}

}  // namespace gradacc
