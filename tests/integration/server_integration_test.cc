// The real gradacc-server binary on a port the OS chose, driven over real
// gRPC with raw stubs: every kind of bad input gets its own status code and
// message and leaves the window as it was; duplicates and broken streams
// count once; health and reflection are served.
#include <grpcpp/grpcpp.h>

#include <cmath>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "absl/strings/str_format.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using testing::ServerProcess;

constexpr char kJob[] = R"pb(
  job_id: "it"
  model {
    tensors { name: "w" shape: [5, 7] init { uniform { low: -1 high: 1 } } }
    tensors { name: "b" shape: [7] init { constant: 0.5 } }
  }
  optimizer { kind: KIND_SGD lr: 0.1 }
  window { num_workers: 2 micro_batches: 1 }
  total_steps: 5
  seed: 11
)pb";
constexpr int kW = 35, kB = 7, kN = 42;

std::string F32(const std::vector<float>& v, size_t from, size_t n) {
  std::string s(n * 4, '\0');
  std::memcpy(s.data(), v.data() + from, n * 4);
  return s;
}

class ServerIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("server_it");
    std::ofstream(dir_ + "/job.textproto") << kJob;
    auto server = ServerProcess::Start(dir_, {"--job=" + dir_ + "/job.textproto"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    data_ = v1::DataPlane::NewStub(channel_);
    control_ = v1::ControlPlane::NewStub(channel_);
    for (uint32_t w = 0; w < 2; ++w) {
      grads_[w].resize(kN);
      for (int i = 0; i < kN; ++i) grads_[w][i] = static_cast<float>((i * 7 + w * 3) % 11) - 5.0f;
    }
  }
  void TearDown() override {
    data_.reset();
    control_.reset();
    channel_.reset();
    if (server_ != nullptr) {
      auto code = server_->Stop();
      EXPECT_EQ(code, std::optional<int>(0)) << server_->log();
    }
  }

  grpc::Status Join(uint32_t worker, const std::string& job = "it") {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::JoinRequest r;
    r.set_job_id(job);
    r.set_worker(worker);
    v1::JoinResponse resp;
    return data_->Join(&ctx, r, &resp);
  }

  v1::PushHeader Header(uint32_t worker, uint64_t window, uint64_t samples = 4) {
    v1::PushHeader h;
    h.set_job_id("it");
    h.set_worker(worker);
    h.set_window(window);
    h.set_contribution_key(window);
    h.set_micro_batches(1);
    h.set_samples(samples);
    h.set_loss_sum(1.5);
    h.set_num_elements(kN);
    return h;
  }

  // The chunks of a correct push of `g`: w in two pieces, then b.
  static std::vector<v1::GradientChunk> Chunks(const std::vector<float>& g) {
    std::vector<v1::GradientChunk> out(3);
    out[0].set_tensor(0);
    out[0].set_offset(0);
    out[0].set_data(F32(g, 0, 20));
    out[1].set_tensor(0);
    out[1].set_offset(20);
    out[1].set_data(F32(g, 20, 15));
    out[2].set_tensor(1);
    out[2].set_offset(0);
    out[2].set_data(F32(g, kW, kB));
    return out;
  }

  // Sends header + chunks; cancels the call after `cancel_after` chunks
  // when >= 0 (a stream broken half-way).
  grpc::Status RawPush(const v1::PushHeader& h, const std::vector<v1::GradientChunk>& chunks,
                       int cancel_after = -1) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::PushResponse resp;
    auto writer = data_->Push(&ctx, &resp);
    v1::PushRequest req;
    *req.mutable_header() = h;
    bool ok = writer->Write(req);
    for (size_t i = 0; ok && i < chunks.size(); ++i) {
      if (static_cast<int>(i) == cancel_after) {
        ctx.TryCancel();
        break;
      }
      *req.mutable_chunk() = chunks[i];
      ok = writer->Write(req);
    }
    if (cancel_after < 0 && ok) writer->WritesDone();
    return writer->Finish();
  }

  grpc::Status Push(uint32_t worker, uint64_t window) {
    return RawPush(Header(worker, window), Chunks(grads_[worker]));
  }

  v1::Status Status() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::Status s;
    EXPECT_TRUE(control_->GetStatus(&ctx, v1::GetStatusRequest(), &s).ok());
    return s;
  }

  std::vector<float> Pull(uint64_t min_version, uint64_t* version = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::PullRequest r;
    r.set_job_id("it");
    r.set_min_version(min_version);
    auto reader = data_->Pull(&ctx, r);
    v1::PullResponse msg;
    std::vector<float> p(kN, NAN);
    while (reader->Read(&msg)) {
      if (msg.has_header()) {
        if (version) *version = msg.header().version();
        continue;
      }
      const size_t base = msg.chunk().tensor() == 0 ? 0 : kW;
      std::memcpy(p.data() + base + msg.chunk().offset(), msg.chunk().data().data(), msg.chunk().data().size());
    }
    EXPECT_TRUE(reader->Finish().ok());
    return p;
  }

  // Snapshot of the open window, to compare after a rejected request.
  struct WindowState {
    uint64_t step, received, samples;
    std::vector<float> params;
  };
  WindowState Window() {
    v1::Status s = Status();
    return {s.step(), s.window().contributions_received(), s.window().samples_received(), Pull(0)};
  }
  void ExpectSameWindow(const WindowState& a) {
    WindowState b = Window();
    EXPECT_EQ(a.step, b.step);
    EXPECT_EQ(a.received, b.received);
    EXPECT_EQ(a.samples, b.samples);
    EXPECT_EQ(0, std::memcmp(a.params.data(), b.params.data(), kN * 4));
  }

  // Worker 0 has pushed window 0; the tests then throw bad input at it and
  // finally complete the window, checking the result against plain SGD.
  void StartWindowWithWorker0() {
    ASSERT_TRUE(Join(0).ok());
    ASSERT_TRUE(Join(1).ok());
    p0_ = Pull(0);
    ASSERT_TRUE(Push(0, 0).ok());
  }
  void FinishWindowAndCheck() {
    grpc::Status s = Push(1, 0);
    ASSERT_TRUE(s.ok()) << s.error_message();
    uint64_t version = 0;
    std::vector<float> p1 = Pull(1, &version);
    ASSERT_EQ(version, 1u);
    for (int i = 0; i < kN; ++i) {
      const float g = (grads_[0][i] + grads_[1][i]) / 8.0f;  // 4 + 4 samples
      EXPECT_FLOAT_EQ(p1[i], p0_[i] - 0.1f * g) << i;
    }
  }
  void ExpectRejected(grpc::Status s, grpc::StatusCode code, const std::string& words) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_NE(s.error_message().find(words), std::string::npos) << s.error_message();
  }

  std::string dir_;
  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DataPlane::Stub> data_;
  std::unique_ptr<v1::ControlPlane::Stub> control_;
  std::vector<float> grads_[2];
  std::vector<float> p0_;
};

TEST_F(ServerIntegrationTest, UnknownJob) {
  StartWindowWithWorker0();
  const WindowState before = Window();
  ExpectRejected(Join(1, "other"), grpc::StatusCode::NOT_FOUND, "unknown job 'other'");
  auto h = Header(1, 0);
  h.set_job_id("other");
  ExpectRejected(RawPush(h, Chunks(grads_[1])), grpc::StatusCode::NOT_FOUND, "unknown job");
  ExpectSameWindow(before);
  FinishWindowAndCheck();
}

TEST_F(ServerIntegrationTest, UnknownWorker) {
  StartWindowWithWorker0();
  const WindowState before = Window();
  ExpectRejected(Join(9), grpc::StatusCode::INVALID_ARGUMENT, "unknown worker 9");
  ExpectRejected(RawPush(Header(9, 0), Chunks(grads_[1])), grpc::StatusCode::INVALID_ARGUMENT, "unknown worker 9");
  ExpectSameWindow(before);
  FinishWindowAndCheck();
}

TEST_F(ServerIntegrationTest, WrongTensorNameOrShape) {
  StartWindowWithWorker0();
  const WindowState before = Window();
  auto h = Header(1, 0);
  auto* t = h.add_tensors();
  t->set_name("w");
  t->add_shape(7);
  t->add_shape(5);
  auto* b = h.add_tensors();
  b->set_name("b");
  b->add_shape(7);
  ExpectRejected(RawPush(h, Chunks(grads_[1])), grpc::StatusCode::INVALID_ARGUMENT, "shape [7,5]; the job says [5,7]");
  h.mutable_tensors(0)->set_shape(0, 5);
  h.mutable_tensors(0)->set_shape(1, 7);
  h.mutable_tensors(1)->set_name("bias");
  ExpectRejected(RawPush(h, Chunks(grads_[1])), grpc::StatusCode::INVALID_ARGUMENT, "'bias'");
  auto chunks = Chunks(grads_[1]);
  chunks[2].set_name("bias");
  ExpectRejected(RawPush(Header(1, 0), chunks), grpc::StatusCode::INVALID_ARGUMENT, "tensor 1 of this job is 'b'");
  chunks = Chunks(grads_[1]);
  chunks[2].set_tensor(5);
  ExpectRejected(RawPush(Header(1, 0), chunks), grpc::StatusCode::INVALID_ARGUMENT, "chunk names tensor 5");
  ExpectSameWindow(before);
  FinishWindowAndCheck();
}

TEST_F(ServerIntegrationTest, ChunkPastTheEnd) {
  StartWindowWithWorker0();
  const WindowState before = Window();
  auto chunks = Chunks(grads_[1]);
  chunks[2].set_offset(3);
  ExpectRejected(RawPush(Header(1, 0), chunks), grpc::StatusCode::INVALID_ARGUMENT, "past the end of tensor 'b'");
  chunks[2].set_offset(uint64_t{1} << 62);
  ExpectRejected(RawPush(Header(1, 0), chunks), grpc::StatusCode::INVALID_ARGUMENT, "past the end");
  ExpectSameWindow(before);
  FinishWindowAndCheck();
}

TEST_F(ServerIntegrationTest, OverlappingAndMissingChunks) {
  StartWindowWithWorker0();
  const WindowState before = Window();
  auto chunks = Chunks(grads_[1]);
  chunks[1].set_offset(19);
  chunks[1].set_data(F32(grads_[1], 19, 16));
  ExpectRejected(RawPush(Header(1, 0), chunks), grpc::StatusCode::INVALID_ARGUMENT, "overlaps");
  chunks = Chunks(grads_[1]);
  chunks.erase(chunks.begin() + 1);
  ExpectRejected(RawPush(Header(1, 0), chunks), grpc::StatusCode::INVALID_ARGUMENT,
                 "missing tensor 'w' from element 20");
  ExpectSameWindow(before);
  FinishWindowAndCheck();
}

TEST_F(ServerIntegrationTest, NaNAndInf) {
  StartWindowWithWorker0();
  const WindowState before = Window();
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    std::vector<float> g = grads_[1];
    g[kW + 3] = bad;
    ExpectRejected(RawPush(Header(1, 0), Chunks(g)), grpc::StatusCode::INVALID_ARGUMENT,
                   "tensor 'b' is not finite at element 3");
  }
  ExpectSameWindow(before);
  FinishWindowAndCheck();
}

TEST_F(ServerIntegrationTest, AbsurdDeclaredSize) {
  StartWindowWithWorker0();
  const WindowState before = Window();
  auto h = Header(1, 0);
  h.set_num_elements(uint64_t{1} << 60);  // 4 EiB: must not be allocated
  ExpectRejected(RawPush(h, Chunks(grads_[1])), grpc::StatusCode::INVALID_ARGUMENT,
                 "declares 1152921504606846976 elements; the model has 42");
  h = Header(1, 0, uint64_t{1} << 62);
  ExpectRejected(RawPush(h, Chunks(grads_[1])), grpc::StatusCode::INVALID_ARGUMENT, "absurd sample count");
  EXPECT_TRUE(server_->process().running());
  ExpectSameWindow(before);
  FinishWindowAndCheck();
}

TEST_F(ServerIntegrationTest, PushBeforeJoin) {
  ExpectRejected(Push(1, 0), grpc::StatusCode::FAILED_PRECONDITION, "pushed before joining");
  StartWindowWithWorker0();
  FinishWindowAndCheck();
}

TEST_F(ServerIntegrationTest, StaleWindowIsRejected) {
  StartWindowWithWorker0();
  FinishWindowAndCheck();
  const WindowState before = Window();
  auto h = Header(1, 0);
  h.set_contribution_key(99);
  ExpectRejected(RawPush(h, Chunks(grads_[1])), grpc::StatusCode::ABORTED, "stale: window 0 is closed");
  ExpectSameWindow(before);
}

TEST_F(ServerIntegrationTest, DuplicatesAndBrokenStreamsCountOnce) {
  StartWindowWithWorker0();
  // Worker 0 again: acknowledged as a duplicate, not counted.
  ExpectRejected(Push(0, 0), grpc::StatusCode::ALREADY_EXISTS, "duplicate");
  // Worker 1's stream breaks after one chunk; nothing is counted. The
  // server must have admitted the stream before it breaks (worker 1's
  // last-seen time moves), and counts the broken stream as refused once it
  // has handled it: wait for both before looking at the window.
  const uint64_t rejected_before = Status().contributions_rejected();
  const int64_t seen_before = Status().workers(1).last_seen_unix_micros();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::PushResponse resp;
    auto writer = data_->Push(&ctx, &resp);
    v1::PushRequest req;
    *req.mutable_header() = Header(1, 0);
    ASSERT_TRUE(writer->Write(req));
    *req.mutable_chunk() = Chunks(grads_[1])[0];
    ASSERT_TRUE(writer->Write(req));
    for (int i = 0; i < 1000 && Status().workers(1).last_seen_unix_micros() == seen_before; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_NE(Status().workers(1).last_seen_unix_micros(), seen_before) << "the server never admitted the push";
    ctx.TryCancel();
    EXPECT_FALSE(writer->Finish().ok());
  }
  for (int i = 0; i < 1000 && Status().contributions_rejected() == rejected_before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(Status().contributions_rejected(), rejected_before + 1) << "the server never saw the broken stream";
  EXPECT_EQ(Status().window().contributions_received(), 1u);
  EXPECT_EQ(Status().step(), 0u);
  // The retry, same key, completes the window; resending it is a duplicate.
  FinishWindowAndCheck();
  ExpectRejected(Push(1, 0), grpc::StatusCode::ALREADY_EXISTS, "already applied to window 0");
  const v1::Status s = Status();
  EXPECT_EQ(s.contributions_accepted(), 2u);
  EXPECT_EQ(s.contributions_duplicate(), 2u);
}

TEST_F(ServerIntegrationTest, ParkedPullWaitsForTheWindow) {
  StartWindowWithWorker0();
  // The pull is answered only once version 1 exists, and then with it.
  std::vector<float> got;
  uint64_t version = 0;
  gradacc::Mutex mu;
  bool answered = false;
  std::thread puller([&] {
    uint64_t v = 0;
    std::vector<float> p = Pull(1, &v);
    gradacc::MutexLock lock(&mu);
    got = std::move(p);
    version = v;
    answered = true;
  });
  // Parked: the server counts it on worker 0 (Pull's worker) once it has it.
  for (int i = 0; i < 2000; ++i) {
    {
      gradacc::MutexLock lock(&mu);
      ASSERT_FALSE(answered) << "answered before the window closed, with version " << version;
    }
    if (Status().window().contributions_received() == 1 && i > 20) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  {
    gradacc::MutexLock lock(&mu);
    EXPECT_FALSE(answered);
  }
  FinishWindowAndCheck();
  puller.join();
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(got, Pull(1)) << "the parked pull got version 1's parameters";
}

TEST_F(ServerIntegrationTest, ShutdownFinishesParkedPullsWithUnavailable) {
  StartWindowWithWorker0();
  grpc::Status result;
  std::thread puller([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::PullRequest r;
    r.set_min_version(1);
    auto reader = data_->Pull(&ctx, r);
    v1::PullResponse msg;
    while (reader->Read(&msg)) {
    }
    result = reader->Finish();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(server_->Stop(), std::optional<int>(0));
  puller.join();
  EXPECT_EQ(result.error_code(), grpc::StatusCode::UNAVAILABLE) << result.error_message();
  EXPECT_NE(server_->log().find("SIGTERM received"), std::string::npos);
  server_.reset();
}

TEST_F(ServerIntegrationTest, WatchStatusEmitsOnSteps) {
  StartWindowWithWorker0();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto reader = control_->WatchStatus(&ctx, v1::WatchStatusRequest());
  v1::Status s;
  ASSERT_TRUE(reader->Read(&s));
  EXPECT_EQ(s.step(), 0u);
  FinishWindowAndCheck();
  bool saw_step = false;
  while (!saw_step && reader->Read(&s)) saw_step = s.step() == 1;
  EXPECT_TRUE(saw_step);
  ctx.TryCancel();
  reader->Finish();
}

TEST_F(ServerIntegrationTest, HealthAndReflectionAreServed) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel_);
  grpc::ClientContext rctx;
  rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = reflection->ServerReflectionInfo(&rctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("*");
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  std::vector<std::string> services;
  for (const auto& s : resp.list_services_response().service()) services.push_back(s.name());
  EXPECT_NE(std::find(services.begin(), services.end(), "gradacc.v1.DataPlane"), services.end());
  EXPECT_NE(std::find(services.begin(), services.end(), "gradacc.v1.ControlPlane"), services.end());
  EXPECT_NE(std::find(services.begin(), services.end(), "grpc.health.v1.Health"), services.end());
  stream->Finish();
}

// A raw client of one server with its own job (the fixture's is fixed).
class RawClient {
 public:
  explicit RawClient(const std::string& address)
      : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
        data_(v1::DataPlane::NewStub(channel_)),
        control_(v1::ControlPlane::NewStub(channel_)) {}
  grpc::Status Join(uint32_t worker, v1::JoinResponse* response = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::JoinRequest r;
    r.set_worker(worker);
    v1::JoinResponse local;
    return data_->Join(&ctx, r, response != nullptr ? response : &local);
  }
  // Pushes `values` (the whole model, one tensor) in chunks of 256 Ki.
  grpc::Status Push(uint32_t worker, uint64_t window, uint64_t key, const std::vector<float>& values,
                    v1::PushResponse* response) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto writer = data_->Push(&ctx, response);
    v1::PushRequest req;
    v1::PushHeader* h = req.mutable_header();
    h->set_worker(worker);
    h->set_window(window);
    h->set_contribution_key(key);
    h->set_micro_batches(1);
    h->set_samples(1);
    h->set_num_elements(values.size());
    bool ok = writer->Write(req);
    constexpr size_t kChunk = 256 * 1024;
    for (size_t off = 0; ok && off < values.size(); off += kChunk) {
      const size_t n = std::min(kChunk, values.size() - off);
      v1::PushRequest c;
      c.mutable_chunk()->set_tensor(0);
      c.mutable_chunk()->set_offset(off);
      c.mutable_chunk()->set_data(F32(values, off, n));
      ok = writer->Write(c);
    }
    if (ok) writer->WritesDone();
    return writer->Finish();
  }
  // The version a Pull(min_version) answers with, and its status.
  grpc::Status PullVersion(uint32_t worker, uint64_t min_version, uint64_t* version, bool* job_done = nullptr,
                           absl::Duration deadline = absl::Seconds(30)) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    v1::PullRequest r;
    r.set_worker(worker);
    r.set_min_version(min_version);
    auto reader = data_->Pull(&ctx, r);
    v1::PullResponse msg;
    while (reader->Read(&msg)) {
      if (!msg.has_header()) continue;
      *version = msg.header().version();
      if (job_done != nullptr) *job_done = msg.header().job_done();
    }
    return reader->Finish();
  }
  v1::Status Status() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::Status s;
    EXPECT_TRUE(control_->GetStatus(&ctx, v1::GetStatusRequest(), &s).ok());
    return s;
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DataPlane::Stub> data_;
  std::unique_ptr<v1::ControlPlane::Stub> control_;
};

std::unique_ptr<ServerProcess> StartWithJob(const std::string& name, const std::string& job,
                                            const std::vector<std::string>& flags = {}) {
  const std::string dir = testing::MakeTempDir(name);
  std::ofstream(dir + "/job.textproto") << job;
  std::vector<std::string> all = {"--job=" + dir + "/job.textproto"};
  all.insert(all.end(), flags.begin(), flags.end());
  auto server = ServerProcess::Start(dir, all);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

// On an unsharded server the closing push is answered once the step is
// applied and the new version published (closed_window and
// version_published): a GetStatus or a Pull(min_version = 0) right after it
// sees the new version. A 1M-element Adam model makes the step take time.
TEST(ProtocolTest, ClosingPushIsAnsweredOnceTheVersionIsPublished) {
  auto server = StartWithJob("closing", R"pb(
    job_id: "big"
    model { tensors { name: "w" shape: [1000, 1000] init { uniform { low: -1 high: 1 } } } }
    optimizer { kind: KIND_ADAM lr: 0.001 }
    window { num_workers: 2 }
    total_steps: 10
  )pb", {"--shared_memory_dir="});
  ASSERT_NE(server, nullptr);
  RawClient c(server->address());
  ASSERT_TRUE(c.Join(0).ok());
  ASSERT_TRUE(c.Join(1).ok());
  std::vector<float> g(1000 * 1000);
  for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>((i % 101) - 50) * 1e-3f;
  for (uint64_t w = 0; w < 10; ++w) {
    v1::PushResponse first, closing;
    ASSERT_TRUE(c.Push(0, w, w, g, &first).ok());
    EXPECT_FALSE(first.closed_window());
    ASSERT_TRUE(c.Push(1, w, w, g, &closing).ok());
    ASSERT_TRUE(closing.closed_window());
    EXPECT_TRUE(closing.version_published());
    EXPECT_EQ(c.Status().version(), w + 1) << "window " << w;
    uint64_t version = 0;
    ASSERT_TRUE(c.PullVersion(0, 0, &version).ok());
    EXPECT_EQ(version, w + 1) << "window " << w;
  }
  EXPECT_EQ(server->Stop(), std::optional<int>(0));
}

// One validator for join, push and pull: an elastic job's worker with an id
// beyond num_workers (up to max_workers) may pull.
TEST(ProtocolTest, ElasticWorkersBeyondNumWorkersMayPull) {
  auto server = StartWithJob("elastic", R"pb(
    job_id: "el"
    model { tensors { name: "w" shape: [8] } }
    optimizer { kind: KIND_SGD lr: 0.1 }
    window { num_workers: 1 max_workers: 4 min_workers: 1 }
    total_steps: 3
  )pb", {"--shared_memory_dir="});
  ASSERT_NE(server, nullptr);
  RawClient c(server->address());
  ASSERT_TRUE(c.Join(3).ok());
  uint64_t version = 99;
  const grpc::Status pulled = c.PullVersion(3, 0, &version);
  EXPECT_TRUE(pulled.ok()) << pulled.error_message();
  EXPECT_EQ(version, 0u);
  v1::PushResponse r;
  ASSERT_TRUE(c.Push(3, 0, 0, std::vector<float>(8, 1.0f), &r).ok());
  ASSERT_TRUE(c.PullVersion(3, 1, &version).ok());
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(c.PullVersion(4, 0, &version).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "beyond max_workers";
  EXPECT_EQ(server->Stop(), std::optional<int>(0));
}

// A key reused for another window is refused (a client told to treat
// duplicates as success would otherwise hang); a pull on a finished job is
// answered at once with job_done.
TEST(ProtocolTest, ReusedKeysAreRefusedAndFinishedJobsAnswerPullsAtOnce) {
  auto server = StartWithJob("keys", R"pb(
    job_id: "keys"
    model { tensors { name: "w" shape: [8] } }
    optimizer { kind: KIND_SGD lr: 0.1 }
    window { num_workers: 1 }
    total_steps: 2
  )pb", {"--shared_memory_dir="});
  ASSERT_NE(server, nullptr);
  RawClient c(server->address());
  ASSERT_TRUE(c.Join(0).ok());
  v1::PushResponse r;
  ASSERT_TRUE(c.Push(0, 0, 7, std::vector<float>(8, 1.0f), &r).ok());
  const grpc::Status reused = c.Push(0, 1, 7, std::vector<float>(8, 1.0f), &r);
  EXPECT_EQ(reused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << reused.error_message();
  EXPECT_NE(reused.error_message().find("already used for window 0"), std::string::npos) << reused.error_message();
  EXPECT_EQ(c.Status().version(), 1u) << "nothing counted";
  ASSERT_TRUE(c.Push(0, 1, 8, std::vector<float>(8, 1.0f), &r).ok());
  uint64_t version = 0;
  bool done = false;
  const absl::Time before = absl::Now();
  ASSERT_TRUE(c.PullVersion(0, 100, &version, &done).ok());
  EXPECT_LT(absl::Now() - before, absl::Seconds(5)) << "a finished job answers at once";
  EXPECT_TRUE(done);
  EXPECT_EQ(version, 2u);
  EXPECT_EQ(server->Stop(), std::optional<int>(0));
}

}  // namespace
}  // namespace gradacc
