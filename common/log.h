// Leveled logging and invariant checks for gradacc's processes.
//
// GRADACC_LOG(WARNING, "version %d is not published", v) prints one line on
// stderr, "<program>: <message>" (the program: SetLogProgram, e.g.
// "gradacc-server" or "gradacc-worker[3]"), when its level is at or above
// the process's (GRADACC_LOG_LEVEL = debug, info, warning or error; default
// info). Lines are written whole (one write each), so concurrent threads do
// not interleave within a line. A sink of our own rather than a library:
// Debian 12's Abseil (20220623) predates absl/log, and glog would add a
// dependency and its own flags for four levels and a prefix.
//
// GRADACC_CHECK(cond) / GRADACC_CHECK_MSG(cond, format, ...) state an
// invariant: when it does not hold the process prints where and why and
// aborts (a core for the post-mortem), in every build type. Use them for
// what no input can cause; a bad input gets a Status with its reason.
//
// Thread-safe.
#ifndef GRADACC_COMMON_LOG_H_
#define GRADACC_COMMON_LOG_H_

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace gradacc {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning", "error" (any case); false for anything else.
bool ParseLogLevel(absl::string_view text, LogLevel* level);
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void SetLogProgram(absl::string_view program);
// One line: "<program>: <message>\n".
void LogLine(LogLevel level, absl::string_view message);
[[noreturn]] void CheckFailed(const char* file, int line, const char* condition, const std::string& message);

namespace log_internal {  // GRADACC_LOG's level names
inline constexpr LogLevel kDEBUG = LogLevel::kDebug;
inline constexpr LogLevel kINFO = LogLevel::kInfo;
inline constexpr LogLevel kWARNING = LogLevel::kWarning;
inline constexpr LogLevel kERROR = LogLevel::kError;
}  // namespace log_internal

}  // namespace gradacc

#define GRADACC_LOG(level, ...)                                                              \
  do {                                                                                       \
    if (::gradacc::LogEnabled(::gradacc::log_internal::k##level)) {                          \
      ::gradacc::LogLine(::gradacc::log_internal::k##level, ::absl::StrFormat(__VA_ARGS__)); \
    }                                                                                        \
  } while (false)

#define GRADACC_CHECK(condition) \
  ((condition) ? static_cast<void>(0) : ::gradacc::CheckFailed(__FILE__, __LINE__, #condition, ""))

#define GRADACC_CHECK_MSG(condition, ...) \
  ((condition) ? static_cast<void>(0)     \
               : ::gradacc::CheckFailed(__FILE__, __LINE__, #condition, ::absl::StrFormat(__VA_ARGS__)))

#endif  // GRADACC_COMMON_LOG_H_
