// FaultEnv: the real file system with faults on demand (common/env.h), so
// that a full disk, a failing fsync, a torn write or a refused rename are
// tested without root or a tmpfs (the tmpfs tests of the fault tier stay as
// the end-to-end check).
//
// Thread-safe (the trainer thread writes checkpoints while the ledger's
// thread appends).
#ifndef GRADACC_TESTS_FAULT_ENV_H_
#define GRADACC_TESTS_FAULT_ENV_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/env.h"
#include "common/mutex.h"

namespace gradacc {
namespace testing {

class FaultEnv : public EnvWrapper {
 public:
  FaultEnv() : EnvWrapper(Env::Default()) {}

  // Free space in bytes for what is written from now on (-1: unlimited). A
  // write that does not fit writes what fits and fails as ENOSPC does.
  void SetSpace(int64_t bytes) {
    MutexLock lock(&mu_);
    space_ = bytes;
  }
  // fsync (of files and folders) fails with EIO, after the data is written.
  void FailSync(bool fail) {
    MutexLock lock(&mu_);
    fail_sync_ = fail;
  }
  void FailRename(bool fail) {
    MutexLock lock(&mu_);
    fail_rename_ = fail;
  }
  // The next write of a file whose path contains `part` writes half of its
  // bytes and then the process "dies": that write and every later
  // operation fail (nothing is cleaned up), as after a kill mid-write.
  void TearNextWrite(std::string part) {
    MutexLock lock(&mu_);
    tear_ = std::move(part);
  }
  bool dead() const {
    MutexLock lock(&mu_);
    return dead_;
  }
  int failures() const {
    MutexLock lock(&mu_);
    return failures_;
  }

  absl::Status WriteFileSynced(const std::string& path, absl::string_view bytes) override {
    size_t fits = bytes.size();
    absl::Status fault;
    {
      MutexLock lock(&mu_);
      if (dead_) return Dead(path);
      if (!tear_.empty() && absl::StrContains(path, tear_)) {
        tear_.clear();
        dead_ = true;
        fits = bytes.size() / 2;
        fault = absl::AbortedError(absl::StrCat("write '", path, "': the process was killed mid-write"));
      } else if (space_ >= 0 && static_cast<int64_t>(bytes.size()) > space_) {
        fits = static_cast<size_t>(space_);
        fault = absl::ResourceExhaustedError(absl::StrCat("write '", path, "': No space left on device"));
      } else if (fail_sync_) {
        fault = absl::InternalError(absl::StrCat("fsync '", path, "': Input/output error"));
      }
      if (space_ >= 0) space_ -= static_cast<int64_t>(fits);
      if (!fault.ok()) ++failures_;
    }
    if (fault.ok()) return target()->WriteFileSynced(path, bytes);
    // What reached the disk before the fault stays there.
    (void)target()->WriteFileSynced(path, bytes.substr(0, fits));
    return fault;
  }

  absl::StatusOr<std::unique_ptr<AppendableFile>> OpenAppendable(const std::string& path) override {
    {
      MutexLock lock(&mu_);
      if (dead_) return Dead(path);
    }
    auto file = target()->OpenAppendable(path);
    if (!file.ok()) return file.status();
    return std::unique_ptr<AppendableFile>(new File(this, path, *std::move(file)));
  }

  absl::Status SyncDirectory(const std::string& path) override {
    if (absl::Status s = Check(path, Fault::kSync); !s.ok()) return s;
    return target()->SyncDirectory(path);
  }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    if (absl::Status s = Check(to, Fault::kRename); !s.ok()) return s;
    return target()->Rename(from, to);
  }
  absl::Status CreateDirectory(const std::string& path) override {
    if (absl::Status s = Check(path, Fault::kNone); !s.ok()) return s;
    return target()->CreateDirectory(path);
  }
  absl::Status RemoveFile(const std::string& path) override {
    if (absl::Status s = Check(path, Fault::kNone); !s.ok()) return s;
    return target()->RemoveFile(path);
  }
  absl::Status RemoveDirectory(const std::string& path) override {
    if (absl::Status s = Check(path, Fault::kNone); !s.ok()) return s;
    return target()->RemoveDirectory(path);
  }

 private:
  // An appendable file that takes its bytes from the same free space.
  class File : public AppendableFile {
   public:
    File(FaultEnv* env, std::string path, std::unique_ptr<AppendableFile> file)
        : env_(env), path_(std::move(path)), file_(std::move(file)) {}
    absl::Status Append(absl::string_view bytes, size_t* written) override {
      size_t fits = bytes.size();
      {
        MutexLock lock(&env_->mu_);
        if (env_->dead_) return Dead(path_);
        if (env_->space_ >= 0 && static_cast<int64_t>(bytes.size()) > env_->space_) {
          fits = static_cast<size_t>(env_->space_);
          ++env_->failures_;
        }
        if (env_->space_ >= 0) env_->space_ -= static_cast<int64_t>(fits);
      }
      absl::Status s = file_->Append(bytes.substr(0, fits), written);
      if (s.ok() && fits < bytes.size()) {
        s = absl::ResourceExhaustedError(absl::StrCat("write '", path_, "': No space left on device"));
      }
      return s;
    }
    absl::Status Sync() override { return file_->Sync(); }

   private:
    FaultEnv* const env_;
    const std::string path_;
    const std::unique_ptr<AppendableFile> file_;
  };

  static absl::Status Dead(const std::string& path) {
    return absl::AbortedError(absl::StrCat("'", path, "': the process was killed"));
  }
  enum class Fault { kNone, kSync, kRename };
  absl::Status Check(const std::string& path, Fault fault) {
    MutexLock lock(&mu_);
    if (dead_) return Dead(path);
    if (fault == Fault::kSync && fail_sync_) {
      ++failures_;
      return absl::InternalError(absl::StrCat("fsync '", path, "': Input/output error"));
    }
    if (fault == Fault::kRename && fail_rename_) {
      ++failures_;
      return absl::InternalError(absl::StrCat("rename to '", path, "': Read-only file system"));
    }
    return absl::OkStatus();
  }

  mutable Mutex mu_;
  int64_t space_ ABSL_GUARDED_BY(mu_) = -1;
  bool fail_sync_ ABSL_GUARDED_BY(mu_) = false;
  bool fail_rename_ ABSL_GUARDED_BY(mu_) = false;
  std::string tear_ ABSL_GUARDED_BY(mu_);
  bool dead_ ABSL_GUARDED_BY(mu_) = false;
  int failures_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace testing
}  // namespace gradacc

#endif  // GRADACC_TESTS_FAULT_ENV_H_
