// HTTPS from the embedded HTTP server (common/http_server.h over civetweb)
// in one process with a gRPC server on TLS: both use the process's one
// OpenSSL 3 (common/civetweb_tls.h); starting, using and stopping HTTPS
// servers leaves gRPC's TLS working, and certificate problems are reported
// naming the file.
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <fstream>
#include <memory>

#include "absl/strings/match.h"
#include "common/http_server.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/http_client.h"
#include "tests/subprocess.h"
#include "tests/test_pki.h"

namespace gradacc {
namespace {

using testing::HttpGet;
using testing::HttpsGet;
using testing::Pki;
using testing::ReadFile;

HttpServer::Handler Hello() {
  return [](const HttpRequest& request) {
    HttpResponse r;
    r.body = "hello " + request.path + "\n";
    return r;
  };
}

absl::StatusOr<std::unique_ptr<HttpServer>> StartHttps(const std::string& cert = "server",
                                                       const std::string& key = "server") {
  const Pki& pki = Pki::Get();
  HttpServerOptions options;
  options.listen = "127.0.0.1:0";
  options.tls_cert_file = pki.Path(cert + ".pem");
  options.tls_key_file = pki.Path(key + ".key");
  return HttpServer::Start(options, Hello());
}

class Serving final : public grpc::health::v1::Health::Service {
  grpc::Status Check(grpc::ServerContext*, const grpc::health::v1::HealthCheckRequest*,
                     grpc::health::v1::HealthCheckResponse* response) override {
    response->set_status(grpc::health::v1::HealthCheckResponse::SERVING);
    return grpc::Status::OK;
  }
};

// A gRPC server on TLS (mutual TLS) in this process: a health service.
class TlsGrpcServer {
 public:
  TlsGrpcServer() {
    const Pki& pki = Pki::Get();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({ReadFile(pki.Path("server.key")), ReadFile(pki.Path("server.pem"))});
    ssl.pem_root_certs = ReadFile(pki.Path("ca.pem"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::SslServerCredentials(ssl), &port_);
    builder.RegisterService(&health_);
    server_ = builder.BuildAndStart();
  }
  ~TlsGrpcServer() { server_->Shutdown(); }

  // A health check over a new mutual-TLS channel.
  grpc::Status Check() const {
    const Pki& pki = Pki::Get();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ReadFile(pki.Path("ca.pem"));
    ssl.pem_cert_chain = ReadFile(pki.Path("client.pem"));
    ssl.pem_private_key = ReadFile(pki.Path("client.key"));
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // a connection of its own: a new handshake
    auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_), grpc::SslCredentials(ssl), args);
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckResponse response;
    return stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &response);
  }
  int port() const { return port_; }

 private:
  Serving health_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST(HttpsTest, HttpsAndGrpcTlsShareOneProcess) {
  const std::string ca = Pki::Get().Path("ca.pem");
  TlsGrpcServer grpc_server;
  ASSERT_GT(grpc_server.port(), 0);
  ASSERT_TRUE(grpc_server.Check().ok()) << "gRPC TLS before any HTTPS";
  // (civetweb takes about 2 s to stop a server.)
  for (int round = 0; round < 2; ++round) {
    // Two HTTPS servers and a plain one at once; each stopped again.
    auto a = StartHttps();
    auto b = StartHttps();
    auto plain = HttpServer::Start("127.0.0.1:0", Hello());
    ASSERT_TRUE(a.ok() && b.ok() && plain.ok()) << a.status() << " " << b.status() << " " << plain.status();
    EXPECT_TRUE((*a)->tls());
    EXPECT_STREQ((*a)->scheme(), "https");
    EXPECT_STREQ((*plain)->scheme(), "http");
    const auto reply = HttpsGet((*a)->port(), "/x", ca);
    EXPECT_TRUE(reply.tls);
    EXPECT_EQ(reply.status, 200);
    EXPECT_EQ(reply.body, "hello /x\n");
    EXPECT_EQ(HttpsGet((*b)->port(), "/y", ca).body, "hello /y\n");
    EXPECT_EQ(HttpGet((*plain)->port(), "/z").body, "hello /z\n");
    EXPECT_EQ(HttpGet((*a)->port(), "/x").status, 0) << "plain HTTP to an HTTPS port";
    EXPECT_FALSE(HttpsGet((*plain)->port(), "/z", ca).tls) << "TLS to a plain port";
    EXPECT_TRUE(grpc_server.Check().ok()) << "gRPC TLS while HTTPS serves, round " << round;
    a->reset();
    EXPECT_EQ(HttpsGet((*b)->port(), "/y", ca).status, 200) << "one HTTPS server stopped, the other serves";
    b->reset();
    EXPECT_TRUE(grpc_server.Check().ok()) << "gRPC TLS after HTTPS servers stopped, round " << round;
  }
}

TEST(HttpsTest, CertificateProblemsNameTheFile) {
  const Pki& pki = Pki::Get();
  auto mismatch = StartHttps("server", "client");  // another certificate's key
  ASSERT_FALSE(mismatch.ok());
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(mismatch.status().message(), pki.Path("client.key"))) << mismatch.status();
  auto missing = StartHttps("absent", "server");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::StrContains(missing.status().message(), pki.Path("absent.pem"))) << missing.status();
  HttpServerOptions half;
  half.listen = "127.0.0.1:0";
  half.tls_cert_file = pki.Path("server.pem");
  EXPECT_EQ(HttpServer::Start(half, Hello()).status().code(), absl::StatusCode::kInvalidArgument);
  // No secret in a message: the key's content is not quoted.
  const std::string key = ReadFile(pki.Path("client.key"));
  EXPECT_FALSE(absl::StrContains(mismatch.status().message(), key.substr(40, 20)));
}

}  // namespace
}  // namespace gradacc
