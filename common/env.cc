#include "common/env.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/files.h"

namespace gradacc {
namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  const int e = errno;
  const std::string text = absl::StrCat(what, " '", path, "': ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(text);
  if (e == EEXIST) return absl::AlreadyExistsError(text);
  if (e == ENOSPC || e == EDQUOT) return absl::ResourceExhaustedError(text);
  return absl::InternalError(text);
}

// Writes all of `bytes` to `fd` (EINTR retried); `*written` counts what did.
absl::Status WriteAll(int fd, absl::string_view bytes, const std::string& path, size_t* written) {
  *written = 0;
  while (*written < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + *written, bytes.size() - *written);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("write", path);
    }
    *written += static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

class PosixAppendableFile final : public AppendableFile {
 public:
  PosixAppendableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixAppendableFile() override { ::close(fd_); }
  absl::Status Append(absl::string_view bytes, size_t* written) override {
    return WriteAll(fd_, bytes, path_, written);
  }
  absl::Status Sync() override { return ::fsync(fd_) == 0 ? absl::OkStatus() : Errno("fsync", path_); }

 private:
  const int fd_;
  const std::string path_;
};

class PosixEnv final : public Env {
 public:
  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  absl::Status WriteFileSynced(const std::string& path, absl::string_view bytes) override {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, kPrivateFileMode);
    if (fd < 0) return Errno("create", path);
    // A file left over from an older run keeps its mode through O_TRUNC.
    (void)::fchmod(fd, kPrivateFileMode);
    size_t written = 0;
    absl::Status s = WriteAll(fd, bytes, path, &written);
    if (s.ok() && ::fsync(fd) != 0) s = Errno("fsync", path);
    if (::close(fd) != 0 && s.ok()) s = Errno("close", path);
    return s;
  }

  absl::StatusOr<std::unique_ptr<AppendableFile>> OpenAppendable(const std::string& path) override {
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, kPrivateFileMode);
    if (fd < 0) return Errno("open", path);
    return std::unique_ptr<AppendableFile>(new PosixAppendableFile(fd, path));
  }

  absl::Status SyncDirectory(const std::string& path) override {
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Errno("open", path);
    const int rc = ::fsync(fd);
    const absl::Status s = rc == 0 ? absl::OkStatus() : Errno("fsync", path);
    ::close(fd);
    return s;
  }

  absl::Status CreateDirectory(const std::string& path) override {
    return ::mkdir(path.c_str(), kPrivateDirectoryMode) == 0 ? absl::OkStatus() : Errno("mkdir", path);
  }

  absl::Status Rename(const std::string& from, const std::string& to) override {
    return ::rename(from.c_str(), to.c_str()) == 0 ? absl::OkStatus() : Errno("rename to", to);
  }

  absl::Status RemoveFile(const std::string& path) override {
    return ::unlink(path.c_str()) == 0 ? absl::OkStatus() : Errno("unlink", path);
  }

  absl::Status RemoveDirectory(const std::string& path) override {
    return ::rmdir(path.c_str()) == 0 ? absl::OkStatus() : Errno("rmdir", path);
  }

  std::vector<std::string> ListDirectory(const std::string& path) override {
    std::vector<std::string> names;
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return names;
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
    return names;
  }
};

}  // namespace

Env* Env::Default() {
  static Env* const env = new PosixEnv();
  return env;
}

}  // namespace gradacc
