#include "common/files.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace gradacc {
namespace {

std::string Parent(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

absl::StatusOr<std::string> ReadFileToString(const std::string& path, Env* env) { return Env::OrDefault(env)->ReadFile(path); }

absl::Status WriteFileSynced(const std::string& path, absl::string_view bytes, Env* env) {
  return Env::OrDefault(env)->WriteFileSynced(path, bytes);
}

absl::Status SyncDirectory(const std::string& path, Env* env) { return Env::OrDefault(env)->SyncDirectory(path); }

absl::Status MakePrivateDirectory(const std::string& path, Env* env) {
  absl::Status s = Env::OrDefault(env)->CreateDirectory(path);
  return absl::IsAlreadyExists(s) ? absl::OkStatus() : s;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes, Env* env) {
  env = Env::OrDefault(env);
  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid());
  absl::Status s = env->WriteFileSynced(tmp, bytes);
  if (s.ok()) s = env->Rename(tmp, path);
  if (!s.ok()) {
    (void)env->RemoveFile(tmp);
    return s;
  }
  return env->SyncDirectory(Parent(path));
}

}  // namespace gradacc
