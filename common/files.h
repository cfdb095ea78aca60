// Whole-file reads shared by the job loader, safetensors, checkpoints, TLS
// material and secrets. Free functions; thread-safe.
#ifndef GRADACC_COMMON_FILES_H_
#define GRADACC_COMMON_FILES_H_

#include <string>

#include "absl/status/statusor.h"

namespace gradacc {

// The bytes of `path`; NOT_FOUND naming the file when it cannot be opened.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace gradacc

#endif  // GRADACC_COMMON_FILES_H_
