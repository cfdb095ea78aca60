// libgradacc_tls_crypto.so, whose SONAME is "libcrypto.so": what civetweb's
// dlopen("libcrypto.so") finds once common/civetweb_tls.cc has loaded it,
// without libssl-dev's unversioned symlink. It only depends on
// libcrypto.so.3 (civetweb's dlsym finds the functions there). See
// common/civetweb_tls.h.
extern "C" __attribute__((visibility("default"))) int gradacc_tls_crypto_compat() { return 3; }
