// Unit tests of gradacc-server's command line (server/server_config.h): a
// job's relative safetensors path is taken relative to the job file.
#include "server/server_config.h"

#include <filesystem>
#include <fstream>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "server/trainer.h"

ABSL_DECLARE_FLAG(std::string, listen);
ABSL_DECLARE_FLAG(std::string, grpc_bdp_probe);
ABSL_DECLARE_FLAG(int, grpc_stream_window_kb);

namespace gradacc {
namespace {

TEST(ServerConfigTest, RelativeWeightsAreFoundBesideTheJobFile) {
  const std::string dir = ::testing::TempDir() + "/" + std::to_string(getpid()) + "_jobdir/sub";
  std::filesystem::create_directories(dir);
  const std::vector<float> w = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(WriteSafetensorsFile(dir + "/init.safetensors", {{"w", {2, 3}, w}}, {}).ok());
  std::ofstream(dir + "/job.textproto") << R"pb(
    job_id: "rel"
    model { tensors { name: "w" shape: [2, 3] } safetensors_path: "init.safetensors" }
    optimizer { kind: KIND_SGD lr: 0.1 }
    window { num_workers: 1 }
    total_steps: 1
  )pb";
  // From another working directory, as a user would run it.
  auto spec = LoadJob(dir + "/job.textproto");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model().safetensors_path(), dir + "/init.safetensors");
  auto trainer = Trainer::Create(*spec, TrainerOptions());
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  EXPECT_EQ((*trainer)->Parameters(), w);
  // Absolute paths and the built-in job are left alone.
  std::ofstream(dir + "/abs.textproto") << "model { tensors { name: \"w\" shape: [2, 3] } safetensors_path: \"/x/y\" }";
  EXPECT_EQ(LoadJob(dir + "/abs.textproto")->model().safetensors_path(), "/x/y");
  EXPECT_EQ(LoadJob("")->job_id(), DefaultJobSpec().job_id());
}

// --grpc_bdp_probe=auto: a server on loopback only does not probe (its
// windows would only hold memory), one that listens beyond it does.
TEST(ServerConfigTest, BandwidthDelayProbingIsOffOnLoopbackOnlyByDefault) {
  auto probe = [](const std::string& listen, const std::string& flag) -> absl::StatusOr<bool> {
    absl::SetFlag(&FLAGS_listen, listen);
    absl::SetFlag(&FLAGS_grpc_bdp_probe, flag);
    auto config = ConfigFromFlags();
    if (!config.ok()) return config.status();
    return config->options.grpc_bdp_probe;
  };
  EXPECT_EQ(probe("127.0.0.1:0", "auto").value(), false);
  EXPECT_EQ(probe("[::1]:0", "auto").value(), false);
  EXPECT_EQ(probe("localhost:7070", "auto").value(), false);
  EXPECT_EQ(probe("0.0.0.0:7070", "auto").value(), true);
  EXPECT_EQ(probe("10.1.2.3:7070", "auto").value(), true);
  EXPECT_EQ(probe("127.0.0.1:0", "true").value(), true);
  EXPECT_EQ(probe("0.0.0.0:7070", "false").value(), false);
  EXPECT_FALSE(probe("127.0.0.1:0", "maybe").ok());
  absl::SetFlag(&FLAGS_grpc_bdp_probe, "auto");
  absl::SetFlag(&FLAGS_grpc_stream_window_kb, 16);
  EXPECT_FALSE(ConfigFromFlags().ok());
  absl::SetFlag(&FLAGS_grpc_stream_window_kb, 1024);
  auto config = ConfigFromFlags();
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->options.grpc_stream_window_bytes, 1 << 20);
  absl::SetFlag(&FLAGS_listen, "127.0.0.1:7070");
}

}  // namespace
}  // namespace gradacc
