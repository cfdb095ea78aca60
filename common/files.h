// Whole-file reads and atomic writes shared by the job loader, safetensors, checkpoints, TLS
// material and secrets. Free functions over an Env (common/env.h; null: the
// real file system); thread-safe.
//
// Every file gradacc creates is private to its user: files 0600, folders
// 0700 (the umask can only narrow that). Checkpoints, the step ledger and
// the final parameters hold the model and who trained it.
#ifndef GRADACC_COMMON_FILES_H_
#define GRADACC_COMMON_FILES_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/env.h"

namespace gradacc {

// The bytes of `path`; NOT_FOUND naming the file when it cannot be opened.
absl::StatusOr<std::string> ReadFileToString(const std::string& path, Env* env = nullptr);

// The one way gradacc replaces a file: `bytes` go to a temporary file beside
// `path`, which is fsync'ed and renamed over `path`, then the folder is
// fsync'ed, so a crash leaves either the old file or the new one, whole.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes, Env* env = nullptr);
// Writes `bytes` to `path` and fsyncs it (no rename: for files inside a
// temporary folder that is itself renamed into place).
absl::Status WriteFileSynced(const std::string& path, absl::string_view bytes, Env* env = nullptr);
// fsyncs a folder (after creating, renaming or removing entries in it).
absl::Status SyncDirectory(const std::string& path, Env* env = nullptr);
// Creates folder `path` 0700; OK when it exists already (its mode is left
// as it is: it may be the user's).
absl::Status MakePrivateDirectory(const std::string& path, Env* env = nullptr);

inline constexpr int kPrivateFileMode = 0600;
inline constexpr int kPrivateDirectoryMode = 0700;

}  // namespace gradacc

#endif  // GRADACC_COMMON_FILES_H_
