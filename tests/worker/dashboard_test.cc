// The dashboard in-process: its page is dashboard.html byte for byte (the
// asset compiled in at build time), its JSON before any server was seen, and
// WaitUntil returning on state, bounded.
#include "worker/dashboard/dashboard.h"
#include "worker/dashboard/dashboard_guard.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/http_client.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

// The body of a plain HTTP/1.1 GET on loopback (tests/http_client.h).
std::string HttpGet(int port, const std::string& path) { return testing::HttpGet(port, path).body; }

std::unique_ptr<Dashboard> StartLocal(const std::string& server = "") {
  DashboardOptions options;
  options.listen = "127.0.0.1:0";
  options.server = server;
  auto dashboard = Dashboard::Start(options);
  EXPECT_TRUE(dashboard.ok()) << dashboard.status();
  return dashboard.ok() ? *std::move(dashboard) : nullptr;
}

TEST(DashboardPageTest, ServesTheHtmlAssetAsItIsInTheSourceTree) {
  const std::string asset = testing::ReadFile(GRADACC_SOURCE_DIR "/worker/dashboard/dashboard.html");
  ASSERT_GT(asset.size(), 1000u);
  EXPECT_EQ(std::string(DashboardPage()), asset);
  auto dashboard = StartLocal();
  ASSERT_NE(dashboard, nullptr);
  EXPECT_EQ(HttpGet(dashboard->port(), "/"), asset);
}

TEST(DashboardPageTest, BeforeAnyServerThereIsNoStatusAndNoLabels) {
  auto dashboard = StartLocal();
  ASSERT_NE(dashboard, nullptr);
  EXPECT_EQ(HttpGet(dashboard->port(), "/api/status"), R"({"connected":false,"status":null,"display":null})");
  EXPECT_EQ(HttpGet(dashboard->port(), "/nothing-here"), "not found\n");
}

TEST(DashboardWaitTest, AConditionThatNeverHoldsTimesOut) {
  // Port 1 on loopback: nothing listens, the dashboard never connects.
  auto dashboard = StartLocal("127.0.0.1:1");
  ASSERT_NE(dashboard, nullptr);
  int evaluations = 0;
  EXPECT_FALSE(dashboard->WaitUntil(
      [&](const Dashboard::View& v) {
        ++evaluations;
        return v.connected || v.status != nullptr;
      },
      absl::Milliseconds(50)));
  EXPECT_GE(evaluations, 1);
  EXPECT_TRUE(dashboard->WaitUntil([](const Dashboard::View& v) { return v.steps == 0; }, absl::Seconds(10)));
}

TEST(DashboardGuardTest, AcceptsOnlyTheHostsItServes) {
  const DashboardGuard local("127.0.0.1:8080", "");
  for (const char* host : {"127.0.0.1:8080", "127.0.0.1", "localhost:8080", "LOCALHOST", "localhost.", "[::1]:8080",
                           "[::1]", "::1"}) {
    EXPECT_TRUE(local.HostAllowed(host)) << host;
  }
  for (const char* host : {"", "evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.2:8080",
                           "[::2]:8080", "0.0.0.0:8080"}) {
    EXPECT_FALSE(local.HostAllowed(host)) << host;
  }
  EXPECT_TRUE(DashboardGuard("[::1]:0", "").HostAllowed("[::1]:1234"));
  EXPECT_TRUE(DashboardGuard("dash.example.org:80", "").HostAllowed("Dash.Example.org"));
  EXPECT_FALSE(DashboardGuard("dash.example.org:80", "").HostAllowed("evil.example"));
  // A wildcard listener: this machine's addresses, still not another name.
  const DashboardGuard any("0.0.0.0:8080", "");
  EXPECT_TRUE(any.HostAllowed("127.0.0.1:8080"));
  EXPECT_FALSE(any.HostAllowed("evil.example:8080"));
}

TEST(DashboardGuardTest, DataNeedsTheTokenWhenItHasOne) {
  const DashboardGuard guard("127.0.0.1:0", "s3cret");
  HttpRequest r;
  r.host = "127.0.0.1";
  EXPECT_FALSE(guard.Check(r, /*data=*/false).has_value()) << "the page itself";
  EXPECT_EQ(guard.Check(r, true).value().status, 401);
  r.authorization = "Bearer wrong";
  EXPECT_EQ(guard.Check(r, true).value().status, 401);
  r.authorization = "s3cret";
  EXPECT_EQ(guard.Check(r, true).value().status, 401);
  r.authorization = "Bearer s3cret";
  EXPECT_FALSE(guard.Check(r, true).has_value());
  r.host = "evil.example";
  EXPECT_EQ(guard.Check(r, true).value().status, 403);
  EXPECT_FALSE(DashboardGuard("127.0.0.1:0", "").Check(HttpRequest{"/api/status", "", "localhost", ""}, true));
}

}  // namespace
}  // namespace gradacc
