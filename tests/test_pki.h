// Certificates and tokens for the security tests, made once per test
// process by the openssl command: a CA, a server certificate for 127.0.0.1
// (also usable as a client certificate, as shards use it) and a client
// certificate signed by it, and a second CA with its own client
// certificate; token files for workers, readers and shards, 0600.
// Thread-compatible (Get() once from the test's thread).
#ifndef GRADACC_TESTS_TEST_PKI_H_
#define GRADACC_TESTS_TEST_PKI_H_

#include <string>

namespace gradacc::testing {

inline constexpr char kWorkerToken[] = "wkr-5f1c0a9e27d84b6c93a1e0f4d2b7c8a6";
inline constexpr char kReaderToken[] = "rdr-0b8e3d71c6a94f52a7e9d1c3b5f2a864";
inline constexpr char kShardToken[] = "shd-9d3a6c1e58b04f7fa2c81e65d0b9a347";

class Pki {
 public:
  static const Pki& Get();
  // <dir>/<name>: ca.pem, server.pem/.key, client.pem/.key, intruder.pem/.key
  // (signed by otherca.pem), worker.token, reader.token, shard.token,
  // wrong.token.
  std::string Path(const std::string& name) const { return dir + "/" + name; }
  std::string dir;

 private:
  Pki();
};

}  // namespace gradacc::testing

#endif  // GRADACC_TESTS_TEST_PKI_H_
