// The MPI scope and the hierarchical group client without mpirun: this
// process is MPI's singleton world (one rank, one group), its leader talks
// to an in-process scripted server (tests/fake_data_plane.h).
#include "worker/training/group_client.h"

#include <memory>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/fake_data_plane.h"
#include "worker/training/mpi_scope.h"

namespace gradacc {
namespace {

using Call = testing::FakeDataPlane::Call;
using testing::FakeDataPlane;

// MPI is initialised once per process, when tests run (not when they are
// only listed).
class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    static int argc = 1;
    static char name[] = "group_client_test";
    static char* args[] = {name, nullptr};
    static char** argv = args;
    scope_ = std::make_unique<MpiScope>(&argc, &argv);
  }
  void TearDown() override { scope_.reset(); }
  static const MpiScope& scope() { return *scope_; }

 private:
  static inline std::unique_ptr<MpiScope> scope_;
};

const auto* const kEnvironment = ::testing::AddGlobalTestEnvironment(new MpiEnvironment());

ClientOptions OptionsFor(const FakeDataPlane& fake) {
  ClientOptions options;
  options.server = fake.address();
  options.worker = 7;  // ignored: the world rank is the worker
  options.retry.initial_backoff = absl::Milliseconds(1);
  options.retry.max_backoff = absl::Milliseconds(4);
  return options;
}

TEST(MpiScopeTest, ASingletonWorldAgreesWithItself) {
  const MpiScope& mpi = MpiEnvironment::scope();
  EXPECT_EQ(mpi.rank(), 0);
  EXPECT_EQ(mpi.size(), 1);
  EXPECT_TRUE(mpi.AllOk(true));
  EXPECT_FALSE(mpi.AllOk(false));
  mpi.Barrier();
}

TEST(GroupClientTest, AGroupOfOnePushesForItselfAndInstallsTheNewVersion) {
  auto fake = FakeDataPlane::Start();
  ASSERT_NE(fake, nullptr);
  auto group = GroupClient::Connect(OptionsFor(*fake));
  ASSERT_TRUE(group.ok()) << group.status();
  GroupClient& g = **group;
  EXPECT_TRUE(g.leader());
  EXPECT_EQ(g.group_size(), 1);
  EXPECT_EQ(g.worker(), 0u);
  EXPECT_EQ(g.job().job_id(), "fake");
  ASSERT_EQ(g.params().size(), FakeDataPlane::kElements);

  for (float& x : g.grad()) x = 0.5f;
  g.AddMicroBatch(4, 2.0);
  auto step = g.Step();
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->version, 1u);
  EXPECT_EQ(g.version(), 1u);
  EXPECT_EQ(g.params()[0], 1.0f);  // the fake's parameters of version v are v
  const auto pushes = fake->accepted_pushes();
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_EQ(pushes[0].worker(), 0u);
  EXPECT_EQ(pushes[0].samples(), 4u);
  EXPECT_EQ(pushes[0].covers_size(), 0);
  EXPECT_TRUE(g.Leave().ok());
  EXPECT_EQ(fake->calls(Call::kLeave), 1);
}

TEST(GroupClientTest, TheLeadersRefusalKeepsItsReasonOnEveryRank) {
  auto fake = FakeDataPlane::Start();
  ASSERT_NE(fake, nullptr);
  auto group = GroupClient::Connect(OptionsFor(*fake));
  ASSERT_TRUE(group.ok()) << group.status();
  auto step = (*group)->Step();  // no micro-batch
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(ReasonOf(step.status()), v1::ERROR_REASON_NOTHING_TO_PUSH) << step.status();
  EXPECT_EQ(fake->calls(Call::kPush), 0);
}

}  // namespace
}  // namespace gradacc
