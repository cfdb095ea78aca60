#include "common/civetweb_tls.h"

#include <civetweb.h>
#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace gradacc {
namespace {

// Where the compatibility objects are: next to an installed or built binary
// (<bin>/../lib/gradacc; the build tree has the same shape), then the
// configured install and build folders.
std::vector<std::string> CompatDirs() {
  std::vector<std::string> dirs;
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string path(exe, static_cast<size_t>(n));
    path = path.substr(0, path.rfind('/'));
    dirs.push_back(path.substr(0, path.rfind('/')) + "/lib/gradacc");
  }
  for (const char* dir : {GRADACC_TLS_COMPAT_INSTALL_DIR, GRADACC_TLS_COMPAT_BUILD_DIR}) {
    if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
  }
  return dirs;
}

// dlopen()s `file` from the first folder that has it; the handle is kept
// for the life of the process (civetweb's handles refer to it).
void* LoadCompat(const std::vector<std::string>& dirs, const char* file) {
  for (const std::string& dir : dirs) {
    const std::string path = dir + "/" + file;
    if (::access(path.c_str(), R_OK) != 0) continue;
    if (void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return handle;
  }
  return nullptr;
}

absl::Status Enable() {
  const std::vector<std::string> dirs = CompatDirs();
  void* crypto = LoadCompat(dirs, "libgradacc_tls_crypto.so");
  void* ssl = LoadCompat(dirs, "libgradacc_tls_ssl.so");
  if (crypto == nullptr || ssl == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "HTTPS needs libgradacc_tls_crypto.so and libgradacc_tls_ssl.so (built and installed with gradacc); "
        "looked in ",
        absl::StrJoin(dirs, ", ")));
  }
  // civetweb's dlopen("libssl.so") now returns `ssl`: check it reaches the
  // OpenSSL this binary (and gRPC) uses before civetweb relies on it.
  void* loaded = ::dlopen("libssl.so", RTLD_NOW | RTLD_NOLOAD);
  const bool same = loaded == ssl && ::dlsym(ssl, "SSL_CTX_new") == reinterpret_cast<void*>(&SSL_CTX_new);
  if (loaded != nullptr) ::dlclose(loaded);
  if (!same) {
    return absl::FailedPreconditionError("civetweb would not use this process's OpenSSL; HTTPS is unavailable");
  }
  if ((mg_init_library(MG_FEATURES_TLS) & MG_FEATURES_TLS) == 0) {
    return absl::FailedPreconditionError("civetweb could not initialise TLS");
  }
  return absl::OkStatus();
}

std::string OpenSslError() {
  char text[256] = "unknown error";
  if (const unsigned long e = ERR_get_error(); e != 0) ERR_error_string_n(e, text, sizeof(text));
  ERR_clear_error();
  return text;
}

}  // namespace

absl::Status EnableCivetwebTls() {
  static std::once_flag once;
  static absl::Status* status = nullptr;
  std::call_once(once, [] { status = new absl::Status(Enable()); });
  return *status;
}

absl::StatusOr<ssl_ctx_st*> NewServerSslContext(const std::string& cert_file, const std::string& key_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", OpenSslError()));
  absl::Status status;
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
    status = absl::InternalError(absl::StrCat("TLS 1.2 minimum: ", OpenSslError()));
  } else if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    status = absl::InvalidArgumentError(absl::StrCat("certificate '", cert_file, "': ", OpenSslError()));
  } else if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
             SSL_CTX_check_private_key(ctx) != 1) {
    status = absl::InvalidArgumentError(
        absl::StrCat("private key '", key_file, "' (of '", cert_file, "'): ", OpenSslError()));
  }
  if (!status.ok()) {
    SSL_CTX_free(ctx);
    return status;
  }
  return ctx;
}

}  // namespace gradacc
