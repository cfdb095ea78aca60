// libgradacc_tls_ssl.so, whose SONAME is "libssl.so": what civetweb's
// dlopen("libssl.so") finds once common/civetweb_tls.cc has loaded it. It
// depends on libssl.so.3, so civetweb's dlsym reaches every OpenSSL 3
// function through it, and adds the one OpenSSL 1.1 name civetweb needs
// that OpenSSL 3 only has as a macro. See common/civetweb_tls.h.
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate

extern "C" __attribute__((visibility("default"))) X509* SSL_get_peer_certificate(const SSL* ssl) {
  // OpenSSL 3 renamed it, same contract: a new reference the caller frees.
  return SSL_get1_peer_certificate(ssl);
}
