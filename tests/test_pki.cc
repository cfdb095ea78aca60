#include "tests/test_pki.h"

#include <sys/stat.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"

namespace gradacc::testing {

const Pki& Pki::Get() {
  static Pki* pki = new Pki();
  return *pki;
}

Pki::Pki() : dir(MakeTempDir("pki")) {
  auto sh = [&](const std::string& cmd) {
    auto r = RunCommand({"/bin/sh", "-c", "cd " + dir + " && " + cmd});
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
  };
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  for (const char* ca : {"ca", "otherca"}) {
    sh(absl::StrCat("openssl req -x509 ", ec, " -keyout ", ca, ".key -out ", ca, ".pem -days 2 -subj /CN=", ca));
  }
  std::ofstream(dir + "/server.ext") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  std::ofstream(dir + "/client.ext") << "extendedKeyUsage=clientAuth\n";
  auto leaf = [&](const std::string& name, const std::string& ca, const std::string& ext) {
    sh(absl::StrCat("openssl req ", ec, " -keyout ", name, ".key -out ", name, ".csr -subj /CN=", name));
    sh(absl::StrCat("openssl x509 -req -in ", name, ".csr -CA ", ca, ".pem -CAkey ", ca, ".key -CAcreateserial -out ",
                    name, ".pem -days 2 -extfile ", ext));
  };
  leaf("server", "ca", "server.ext");
  leaf("client", "ca", "client.ext");
  leaf("intruder", "otherca", "client.ext");
  for (const auto& [name, token] : {std::pair<const char*, const char*>{"worker", kWorkerToken},
                                    {"reader", kReaderToken},
                                    {"shard", kShardToken},
                                    {"wrong", "not-a-token"}}) {
    const std::string path = absl::StrCat(dir, "/", name, ".token");
    std::ofstream(path) << token << "\n";
    ::chmod(path.c_str(), 0600);
  }
}

}  // namespace gradacc::testing
