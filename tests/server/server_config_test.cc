// Unit tests of gradacc-server's command line (server/server_config.h): a
// job's relative safetensors path is taken relative to the job file.
#include "server/server_config.h"

#include <filesystem>
#include <fstream>

#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "server/trainer.h"

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

}  // namespace
}  // namespace gradacc
