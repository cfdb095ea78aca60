// Env: the file-system operations gradacc's durable state goes through —
// checkpoints, the step ledger, the job marker and every atomic file write
// (common/files.h) — as leveldb's Env: Env::Default() is the real file
// system; a test wraps it (EnvWrapper) to make a disk full, an fsync fail, a
// write torn or a rename refused, without root or a tmpfs
// (tests/fault_env.h).
//
// Errors carry errno's text and the path. Implementations must be
// thread-safe: the trainer thread writes checkpoints while the ledger's
// thread appends.
#ifndef GRADACC_COMMON_ENV_H_
#define GRADACC_COMMON_ENV_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gradacc {

// A file open for appending (the step ledger).
class AppendableFile {
 public:
  virtual ~AppendableFile() = default;
  // Appends `bytes`; on failure `*written` (bytes that did reach the file)
  // may be less than bytes.size(): a line cut short.
  virtual absl::Status Append(absl::string_view bytes, size_t* written) = 0;
  virtual absl::Status Sync() = 0;
};

class Env {
 public:
  virtual ~Env() = default;
  // The real file system (POSIX); lives for the whole process.
  static Env* Default();
  // `env`, or Default() when it is null (what every "Env* env = nullptr"
  // parameter means).
  static Env* OrDefault(Env* env) { return env != nullptr ? env : Default(); }

  // NOT_FOUND naming the file when it cannot be opened.
  virtual absl::StatusOr<std::string> ReadFile(const std::string& path) = 0;
  // Creates or truncates `path` (mode 0600), writes `bytes`, fsyncs, closes.
  virtual absl::Status WriteFileSynced(const std::string& path, absl::string_view bytes) = 0;
  // Opens `path` for appending (created 0600).
  virtual absl::StatusOr<std::unique_ptr<AppendableFile>> OpenAppendable(const std::string& path) = 0;
  virtual absl::Status SyncDirectory(const std::string& path) = 0;
  // mkdir 0700; ALREADY_EXISTS when the folder (or anything) is there.
  virtual absl::Status CreateDirectory(const std::string& path) = 0;
  virtual absl::Status Rename(const std::string& from, const std::string& to) = 0;
  // NOT_FOUND when it is not there.
  virtual absl::Status RemoveFile(const std::string& path) = 0;
  virtual absl::Status RemoveDirectory(const std::string& path) = 0;  // an empty one
  // The names in a folder (no "." or ".."); empty when it cannot be read.
  virtual std::vector<std::string> ListDirectory(const std::string& path) = 0;
};

// Forwards every call to `target` (which must outlive it): override what a
// test changes.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }

  absl::StatusOr<std::string> ReadFile(const std::string& path) override { return target_->ReadFile(path); }
  absl::Status WriteFileSynced(const std::string& path, absl::string_view bytes) override {
    return target_->WriteFileSynced(path, bytes);
  }
  absl::StatusOr<std::unique_ptr<AppendableFile>> OpenAppendable(const std::string& path) override {
    return target_->OpenAppendable(path);
  }
  absl::Status SyncDirectory(const std::string& path) override { return target_->SyncDirectory(path); }
  absl::Status CreateDirectory(const std::string& path) override { return target_->CreateDirectory(path); }
  absl::Status Rename(const std::string& from, const std::string& to) override { return target_->Rename(from, to); }
  absl::Status RemoveFile(const std::string& path) override { return target_->RemoveFile(path); }
  absl::Status RemoveDirectory(const std::string& path) override { return target_->RemoveDirectory(path); }
  std::vector<std::string> ListDirectory(const std::string& path) override { return target_->ListDirectory(path); }

 private:
  Env* const target_;
};

}  // namespace gradacc

#endif  // GRADACC_COMMON_ENV_H_
