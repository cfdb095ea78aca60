#include "tests/fake_data_plane.h"

#include <cstring>

#include "common/errors.h"
#include "common/grpc_status.h"

namespace gradacc::testing {
namespace {

constexpr char kJobId[] = "fake";

v1::JobSpec Job(uint64_t total_steps) {
  v1::JobSpec job;
  job.set_job_id(kJobId);
  v1::TensorSpec* w = job.mutable_model()->add_tensors();
  w->set_name("w");
  w->add_shape(4);
  w->add_shape(3);
  v1::TensorSpec* b = job.mutable_model()->add_tensors();
  b->set_name("b");
  b->add_shape(3);
  job.mutable_optimizer()->set_kind(v1::OptimizerSpec::KIND_SGD);
  job.mutable_optimizer()->set_lr(0.1);
  job.mutable_window()->set_num_workers(1);
  job.mutable_window()->set_micro_batches(1);
  job.set_total_steps(total_steps);
  return job;
}

std::string Floats(uint64_t n, float value) {
  std::string bytes(n * sizeof(float), '\0');
  for (uint64_t i = 0; i < n; ++i) std::memcpy(bytes.data() + i * sizeof(float), &value, sizeof(float));
  return bytes;
}

}  // namespace

std::unique_ptr<FakeDataPlane> FakeDataPlane::Start(uint64_t total_steps) {
  std::unique_ptr<FakeDataPlane> fake(new FakeDataPlane(total_steps));
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &fake->port_);
  builder.RegisterService(fake.get());
  fake->server_ = builder.BuildAndStart();
  if (fake->server_ == nullptr || fake->port_ == 0) return nullptr;
  return fake;
}

FakeDataPlane::~FakeDataPlane() {
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

void FakeDataPlane::Script(Call call, std::vector<absl::Status> refusals) {
  MutexLock lock(&mu_);
  for (absl::Status& s : refusals) scripts_[static_cast<int>(call)].next.push_back(std::move(s));
}

void FakeDataPlane::Always(Call call, absl::Status refusal) {
  MutexLock lock(&mu_);
  scripts_[static_cast<int>(call)].always = std::move(refusal);
}

void FakeDataPlane::Clear() {
  MutexLock lock(&mu_);
  for (CallScript& s : scripts_) {
    s.next.clear();
    s.always = absl::OkStatus();
  }
}

void FakeDataPlane::LoseNextContribution() {
  MutexLock lock(&mu_);
  lose_next_ = true;
}

void FakeDataPlane::set_version(uint64_t version) {
  MutexLock lock(&mu_);
  version_ = version;
}

uint64_t FakeDataPlane::version() {
  MutexLock lock(&mu_);
  return version_;
}

int FakeDataPlane::calls(Call call) {
  MutexLock lock(&mu_);
  return scripts_[static_cast<int>(call)].calls;
}

std::vector<v1::JoinRequest> FakeDataPlane::joins() {
  MutexLock lock(&mu_);
  return joins_;
}

std::vector<v1::PushHeader> FakeDataPlane::accepted_pushes() {
  MutexLock lock(&mu_);
  return accepted_;
}

absl::Status FakeDataPlane::Refused(Call call) {
  MutexLock lock(&mu_);
  CallScript& s = scripts_[static_cast<int>(call)];
  ++s.calls;
  if (!s.next.empty()) {
    absl::Status next = std::move(s.next.front());
    s.next.pop_front();
    return next;
  }
  return s.always;
}

grpc::Status FakeDataPlane::Join(grpc::ServerContext*, const v1::JoinRequest* request, v1::JoinResponse* response) {
  if (absl::Status refused = Refused(Call::kJoin); !refused.ok()) return ToGrpcStatus(refused);
  MutexLock lock(&mu_);
  joins_.push_back(*request);
  *response->mutable_job() = Job(total_steps_);
  response->set_window(version_);
  response->set_version(version_);
  response->set_num_elements(kElements);
  response->set_job_done(version_ >= total_steps_);
  return grpc::Status::OK;
}

grpc::Status FakeDataPlane::Push(grpc::ServerContext*, grpc::ServerReader<v1::PushRequest>* reader,
                                 v1::PushResponse* response) {
  v1::PushRequest message;
  v1::PushHeader header;
  while (reader->Read(&message)) {
    if (message.has_header()) header = message.header();
  }
  if (absl::Status refused = Refused(Call::kPush); !refused.ok()) return ToGrpcStatus(refused);
  MutexLock lock(&mu_);
  if (header.window() != version_) {
    return ToGrpcStatus(Refusal(v1::ERROR_REASON_STALE_WINDOW, "stale", {{"open_window", std::to_string(version_)}}));
  }
  accepted_.push_back(header);
  response->set_window(version_);
  ++version_;  // one worker: its push closes the window
  return grpc::Status::OK;
}

grpc::Status FakeDataPlane::Pull(grpc::ServerContext*, const v1::PullRequest* request,
                                 grpc::ServerWriter<v1::PullResponse>* writer) {
  if (absl::Status refused = Refused(Call::kPull); !refused.ok()) return ToGrpcStatus(refused);
  uint64_t version = 0;
  {
    MutexLock lock(&mu_);
    if (lose_next_ && version_ > 0) {
      lose_next_ = false;
      --version_;
      return ToGrpcStatus(Refusal(v1::ERROR_REASON_CONTRIBUTION_LOST, "restarted without that contribution"));
    }
    version = version_;
  }
  if (version < request->min_version()) {
    return ToGrpcStatus(Refusal(v1::ERROR_REASON_PULL_TIMEOUT, "the fake server does not park pulls"));
  }
  v1::PullResponse message;
  v1::ParametersHeader* header = message.mutable_header();
  header->set_version(version);
  header->set_step(version);
  header->set_job_done(version >= total_steps_);
  header->set_num_elements(kElements);
  header->set_loss(0.5);
  header->set_lr(0.1);
  writer->Write(message);
  message.Clear();
  message.mutable_chunk()->set_tensor(0);
  message.mutable_chunk()->set_data(Floats(12, static_cast<float>(version)));
  writer->Write(message);
  message.mutable_chunk()->set_tensor(1);
  message.mutable_chunk()->set_data(Floats(3, static_cast<float>(version)));
  writer->Write(message);
  return grpc::Status::OK;
}

grpc::Status FakeDataPlane::Leave(grpc::ServerContext*, const v1::LeaveRequest*, v1::LeaveResponse*) {
  if (absl::Status refused = Refused(Call::kLeave); !refused.ok()) return ToGrpcStatus(refused);
  return grpc::Status::OK;
}

grpc::Status FakeDataPlane::AttachSharedMemory(grpc::ServerContext*, const v1::AttachSharedMemoryRequest*,
                                               v1::AttachSharedMemoryResponse* response) {
  response->set_available(false);
  response->set_reason("the fake server offers no shared memory");
  return grpc::Status::OK;
}

}  // namespace gradacc::testing
