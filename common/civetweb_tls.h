// HTTPS for the embedded HTTP server (common/http_server.h) over the
// process's one OpenSSL 3 — the library gRPC's TLS uses — without touching
// gRPC's TLS.
//
// Why this is needed (found with objdump/strings on Debian's libcivetweb1
// 1.15 and its source): Debian builds civetweb for the OpenSSL 1.1 API with
// OpenSSL loaded at run time, dlopen("libcrypto.so") then dlopen("libssl.so")
// (the unversioned names exist only with libssl-dev installed), and it
// requires every function of its table, among them SSL_get_peer_certificate
// — which OpenSSL 3 only has as a macro for SSL_get1_peer_certificate. So
// loading fails ("cannot find SSL_get_peer_certificate": no HTTPS at all),
// and civetweb's failure path is unsound: it dlcloses libssl but keeps its
// half-filled function table and its count of users, so after a failed
// mg_init_library(MG_FEATURES_TLS) the next mg_start can "succeed" and
// serve TLS through that table (libssl.so.3 is NODELETE, so the pointers
// stay mapped): in our runs the handshake completed and the process died
// of SIGSEGV on the first request.
//
// The fix: two shared objects built with the project (common/tls_compat/),
// whose SONAMEs are "libcrypto.so" and "libssl.so", are loaded by absolute
// path before civetweb initialises TLS. glibc's dlopen matches a requested
// name against the SONAMEs of the objects already loaded before it searches
// the disk, so civetweb gets them; they depend on libcrypto.so.3 and
// libssl.so.3, so civetweb's dlsym finds every function in the very library
// gRPC uses, plus SSL_get_peer_certificate (SSL_get1_peer_certificate by its
// 1.1 name, same contract). EnableCivetwebTls checks that civetweb's
// functions are ours (the same SSL_CTX_new).
//
// What civetweb may still do to OpenSSL's global state, and why that is
// safe for gRPC: it calls OPENSSL_init_ssl (idempotent; OpenSSL 3
// initialises itself anyway). Its only global clean-up,
// CONF_modules_unload(1) in mg_exit_library, is never reached: nothing in
// this project calls mg_exit_library. The server's SSL_CTX is made here
// (civetweb's external_ssl_ctx), so civetweb neither reads key files nor
// changes the context; it is freed by its owner, not by civetweb.
//
// Free functions; thread-safe.
#ifndef GRADACC_COMMON_CIVETWEB_TLS_H_
#define GRADACC_COMMON_CIVETWEB_TLS_H_

#include <string>

#include "absl/status/statusor.h"

struct ssl_ctx_st;

namespace gradacc {

// Loads the compatibility objects and initialises civetweb's TLS, once per
// process (later calls return the first result). FAILED_PRECONDITION, with
// the places looked in, when they are missing or civetweb still cannot use
// OpenSSL.
absl::Status EnableCivetwebTls();

// A TLS server context (TLS 1.2 or newer) holding `cert_file` (a PEM
// certificate chain) and its private key `key_file`. The caller owns it
// (SSL_CTX_free). INVALID_ARGUMENT naming the file when one cannot be used.
absl::StatusOr<ssl_ctx_st*> NewServerSslContext(const std::string& cert_file, const std::string& key_file);

}  // namespace gradacc

#endif  // GRADACC_COMMON_CIVETWEB_TLS_H_
