// gradacc-worker's option checks, in-process (worker/training/worker_options.h).
#include "worker/training/worker_options.h"

#include <cstdlib>
#include <fstream>
#include <functional>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

WorkerOptions Valid() {
  WorkerOptions o;
  o.server = "127.0.0.1:7070";
  return o;
}

// `change` applied to valid options makes them invalid, with `words` in the
// message.
void ExpectInvalid(const std::function<void(WorkerOptions&)>& change, const std::string& words) {
  WorkerOptions o = Valid();
  change(o);
  const absl::Status s = ValidateWorkerOptions(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << words;
  EXPECT_TRUE(absl::StrContains(s.message(), words)) << "expected '" << words << "' in: " << s;
}

TEST(WorkerOptionsTest, DefaultsWithAServerAreValid) {
  EXPECT_TRUE(ValidateWorkerOptions(Valid()).ok());
  WorkerOptions o = Valid();
  o.model = "softmax";
  o.device = "cuda";  // whether this build and machine have CUDA is checked later
  o.hidden = "256,128";
  o.progress = "bar";
  o.wire_format = "bf16";
  o.tls_cert = "c.pem";
  o.tls_key = "k.pem";
  EXPECT_TRUE(ValidateWorkerOptions(o).ok());
}

TEST(WorkerOptionsTest, EachBadOptionIsNamed) {
  ExpectInvalid([](WorkerOptions& o) { o.server.clear(); }, "--server=HOST:PORT is required");
  ExpectInvalid([](WorkerOptions& o) { o.device = "tpu"; }, "unknown --device 'tpu'");
  ExpectInvalid([](WorkerOptions& o) { o.model = "resnet"; }, "unknown --model 'resnet'");
  ExpectInvalid([](WorkerOptions& o) { o.hidden = "256,x"; }, "bad --hidden width 'x'");
  ExpectInvalid([](WorkerOptions& o) { o.progress = "dots"; }, "--progress must be lines or bar");
  ExpectInvalid([](WorkerOptions& o) { o.wire_format = "f8"; }, "unknown wire format 'f8'");
  ExpectInvalid([](WorkerOptions& o) { o.micro_batch = -1; }, "--micro_batch=-1 is out of range");
  ExpectInvalid([](WorkerOptions& o) { o.micro_batch = int64_t{1} << 40; }, "--micro_batch=");
  ExpectInvalid([](WorkerOptions& o) { o.accumulation_steps = -2; }, "--accumulation_steps=-2");
  ExpectInvalid([](WorkerOptions& o) { o.epochs = -1; }, "--epochs=-1");
  ExpectInvalid([](WorkerOptions& o) { o.steps = -1; }, "--steps=-1");
  ExpectInvalid([](WorkerOptions& o) { o.train_limit = -5; }, "--train_limit=-5");
  ExpectInvalid([](WorkerOptions& o) { o.log_every = -1; }, "--log_every=-1");
  ExpectInvalid([](WorkerOptions& o) { o.connect_timeout_s = 0; }, "--connect_timeout_s must be a positive");
  ExpectInvalid([](WorkerOptions& o) { o.window_timeout_s = -3; }, "--window_timeout_s must be a positive");
  ExpectInvalid([](WorkerOptions& o) { o.tls_cert = "c.pem"; }, "--tls_cert and --tls_key go together");
  ExpectInvalid([](WorkerOptions& o) { o.rank = -2; }, "--rank must be >= 0");
  ExpectInvalid([](WorkerOptions& o) { o.world_size = -1; }, "--world_size=-1");
  ExpectInvalid(
      [](WorkerOptions& o) {
        o.rank = 3;
        o.world_size = 3;
      },
      "--rank must be below --world_size");
  ExpectInvalid(
      [](WorkerOptions& o) {
        o.rank = 1;
        o.hierarchical = true;
      },
      "cannot take part in --hierarchical");
}

TEST(WorkerOptionsTest, ClientAndTrainingOptionsFollowTheFlags) {
  WorkerOptions o = Valid();
  o.wire_format = "f16";
  o.shared_memory = false;
  o.connect_timeout_s = 2.5;
  o.micro_batch = 25;
  o.accumulation_steps = 3;
  o.progress = "bar";
  const std::string dir = testing::MakeTempDir("worker_options");
  o.token_file = dir + "/token";
  std::ofstream(o.token_file) << "wkr-token-1\n";
  auto client = ClientOptionsFor(o, 3);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(client->worker, 3u);
  EXPECT_EQ(client->wire_format, v1::WIRE_FORMAT_F16);
  EXPECT_FALSE(client->shared_memory);
  EXPECT_EQ(client->connect_timeout, absl::Milliseconds(2500));
  EXPECT_EQ(client->connection.token, "wkr-token-1");
  const TrainingOptions t0 = TrainingOptionsFor(o, 0), t1 = TrainingOptionsFor(o, 1);
  EXPECT_EQ(t0.micro_batch, 25u);
  EXPECT_EQ(t0.accumulation_steps, 3u);
  EXPECT_TRUE(t0.report);
  EXPECT_FALSE(t1.report);
  EXPECT_EQ(t1.progress, "bar");
}

TEST(WorkerOptionsTest, ATokenFileWithASecondLineIsRefusedWithoutShowingIt) {
  WorkerOptions o = Valid();
  const std::string dir = testing::MakeTempDir("worker_options_token");
  o.token_file = dir + "/token";
  std::ofstream(o.token_file) << "wkr-first\nwkr-second\n";
  auto client = ClientOptionsFor(o, 0);
  ASSERT_FALSE(client.ok());
  EXPECT_TRUE(absl::StrContains(client.status().message(), o.token_file)) << client.status();
  EXPECT_FALSE(absl::StrContains(client.status().message(), "wkr-")) << client.status();
}

}  // namespace
}  // namespace gradacc
