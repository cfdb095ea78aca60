#include "worker/training/group_client.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/errors.h"
#include "common/kernels.h"
#include "common/status_macros.h"

namespace gradacc {
namespace {

constexpr int kTagCounts = 701;
constexpr int kTagGradient = 702;
constexpr int kTagUntouched = 703;

// Sends a string from the group's leader to every rank of `comm`.
void ShareString(std::string& text, MPI_Comm comm) {
  int length = static_cast<int>(text.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, comm);
  text.resize(length);
  MPI_Bcast(text.data(), length, MPI_CHAR, 0, comm);
}

// Broadcasts a status from the group's leader: code, message and the error
// reason (so every rank acts on the same ClientAction).
absl::Status ShareStatus(const absl::Status& mine, MPI_Comm comm) {
  int code = static_cast<int>(mine.code());
  MPI_Bcast(&code, 1, MPI_INT, 0, comm);
  std::string message(mine.message());
  ShareString(message, comm);
  std::string info;
  if (auto payload = mine.GetPayload(kErrorInfoTypeUrl); payload.has_value()) info = std::string(*payload);
  ShareString(info, comm);
  if (code == 0) return absl::OkStatus();
  absl::Status shared(static_cast<absl::StatusCode>(code), absl::StrCat("group leader: ", message));
  if (!info.empty()) shared.SetPayload(kErrorInfoTypeUrl, absl::Cord(info));
  return shared;
}

// Counts of one rank's window, sent to the leader.
struct Counts {
  uint64_t samples;
  uint64_t micro_batches;
  double loss_sum;
};

// The outcome of a step, broadcast by the leader.
struct Outcome {
  uint64_t window, version;
  double loss, lr;
  float loss_scale;
  uint8_t duplicate, stale, job_done, done, skipped;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GroupClient>> GroupClient::Connect(ClientOptions options) {
  std::unique_ptr<GroupClient> g(new GroupClient());
  MPI_Comm_rank(MPI_COMM_WORLD, &g->world_rank_);
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g->world_rank_, MPI_INFO_NULL, &g->local_);
  MPI_Comm_rank(g->local_, &g->local_rank_);
  MPI_Comm_size(g->local_, &g->local_size_);
  std::vector<int> ranks(g->local_size_);
  MPI_Allgather(&g->world_rank_, 1, MPI_INT, ranks.data(), 1, MPI_INT, g->local_);
  g->members_.assign(ranks.begin(), ranks.end());

  absl::Status connected;
  if (g->leader()) {
    options.worker = static_cast<uint32_t>(g->world_rank_);
    options.covers.assign(g->members_.begin() + 1, g->members_.end());
    auto client = Client::Connect(options);
    if (client.ok()) {
      g->client_ = *std::move(client);
    } else {
      connected = client.status();
    }
  }
  GRADACC_RETURN_IF_ERROR(ShareStatus(connected, g->local_));
  // The job, the version and the parameters, from the leader.
  std::string job;
  if (g->leader()) job = g->client_->job().SerializeAsString();
  ShareString(job, g->local_);
  if (!g->job_.ParseFromString(job)) return absl::InternalError("the group leader sent an unreadable job");
  uint64_t state[3] = {0, 0, 0};
  if (g->leader()) {
    const float scale = g->client_->loss_scale();
    state[0] = g->client_->version(), state[1] = g->client_->done();
    std::memcpy(&state[2], &scale, sizeof(scale));
  }
  MPI_Bcast(state, 3, MPI_UINT64_T, 0, g->local_);
  g->version_ = state[0];
  g->done_ = state[1] != 0;
  std::memcpy(&g->loss_scale_, &state[2], sizeof(float));
  GRADACC_ASSIGN_OR_RETURN(ModelLayout layout, ModelLayout::FromSpec(g->job_.model()));
  const uint64_t n = layout.num_elements();
  if (g->leader()) {
    if (g->local_size_ > 1) g->incoming_ = FloatBuffer(n);
    MPI_Bcast(const_cast<float*>(g->client_->params().data()), static_cast<int>(n), MPI_FLOAT, 0, g->local_);
  } else {
    g->params_ = FloatBuffer(n);
    g->grad_ = FloatBuffer(n);
    MPI_Bcast(g->params_.data(), static_cast<int>(n), MPI_FLOAT, 0, g->local_);
  }
  return g;
}

GroupClient::~GroupClient() {
  if (local_ != MPI_COMM_NULL) MPI_Comm_free(&local_);
}

absl::Span<const float> GroupClient::params() const { return leader() ? client_->params() : params_.span(); }

absl::Span<float> GroupClient::grad() { return leader() ? client_->grad() : grad_.span(); }

void GroupClient::AddMicroBatch(uint64_t samples, double loss_sum) {
  if (leader()) {
    client_->AddMicroBatch(samples, loss_sum);
    return;
  }
  samples_ += samples;
  loss_sum_ += loss_sum;
  ++micro_batches_;
}

absl::Status GroupClient::SetUntouched(std::vector<uint32_t> tensors) {
  if (leader()) return client_->SetUntouched(std::move(tensors));
  std::vector<uint8_t> mask(static_cast<size_t>(job_.model().tensors_size()), 0);
  for (uint32_t t : tensors) {
    if (t >= mask.size()) {
      return absl::InvalidArgumentError(absl::StrFormat("untouched tensor %d: the job has %d tensors", t, mask.size()));
    }
    mask[t] = 1;
  }
  untouched_ = std::move(mask);
  return absl::OkStatus();
}

void GroupClient::Discard() {
  if (leader()) {
    client_->Discard();
    return;
  }
  untouched_.clear();
  std::fill(grad_.data(), grad_.data() + grad_.size(), 0.0f);
  samples_ = 0;
  loss_sum_ = 0;
  micro_batches_ = 0;
}

absl::StatusOr<StepResult> GroupClient::Step() {
  const int n = static_cast<int>(leader() ? client_->grad().size() : grad_.size());
  StepResult result;
  if (!leader()) {
    Counts counts{samples_, micro_batches_, loss_sum_};
    MPI_Send(&counts, sizeof(counts), MPI_BYTE, 0, kTagCounts, local_);
    MPI_Send(grad_.data(), n, MPI_FLOAT, 0, kTagGradient, local_);
    // Every tensor touched unless told otherwise.
    if (untouched_.empty()) untouched_.assign(static_cast<size_t>(job_.model().tensors_size()), 0);
    MPI_Send(untouched_.data(), static_cast<int>(untouched_.size()), MPI_BYTE, 0, kTagUntouched, local_);
    GRADACC_RETURN_IF_ERROR(ShareStep(absl::InternalError("unused"), &result));
    MPI_Bcast(params_.data(), n, MPI_FLOAT, 0, local_);
    Discard();  // the next window starts from zero
    return result;
  }
  // In rank order: ((g_leader + g_1) + g_2) + ..., counts likewise; a
  // tensor is untouched by the group when no rank of it touched it.
  const size_t tensors = client_->layout().tensors().size();
  std::vector<uint8_t> untouched(tensors, 0), theirs(tensors);
  for (uint32_t t : client_->untouched()) untouched[t] = 1;
  for (int r = 1; r < local_size_; ++r) {
    Counts counts;
    MPI_Recv(&counts, sizeof(counts), MPI_BYTE, r, kTagCounts, local_, MPI_STATUS_IGNORE);
    MPI_Recv(incoming_.data(), n, MPI_FLOAT, r, kTagGradient, local_, MPI_STATUS_IGNORE);
    MPI_Recv(theirs.data(), static_cast<int>(tensors), MPI_BYTE, r, kTagUntouched, local_, MPI_STATUS_IGNORE);
    for (size_t t = 0; t < tensors; ++t) untouched[t] &= theirs[t];
    AddInto(client_->grad(), incoming_.span());
    client_->AddCoveredContribution(counts.samples, static_cast<uint32_t>(counts.micro_batches), counts.loss_sum);
  }
  std::vector<uint32_t> group_untouched;
  for (size_t t = 0; t < tensors; ++t) {
    if (untouched[t]) group_untouched.push_back(static_cast<uint32_t>(t));
  }
  GRADACC_RETURN_IF_ERROR(client_->SetUntouched(std::move(group_untouched)));
  GRADACC_RETURN_IF_ERROR(ShareStep(client_->Step(), &result));
  MPI_Bcast(const_cast<float*>(client_->params().data()), n, MPI_FLOAT, 0, local_);
  return result;
}

absl::Status GroupClient::ShareStep(const absl::StatusOr<StepResult>& step, StepResult* out) {
  GRADACC_RETURN_IF_ERROR(ShareStatus(leader() ? step.status() : absl::OkStatus(), local_));
  Outcome o{};
  if (leader()) {
    o = Outcome{step->window,    step->version,  step->loss,           step->lr,     step->loss_scale,
                step->duplicate, step->stale,    step->job_done,       client_->done(), step->skipped};
  }
  MPI_Bcast(&o, sizeof(o), MPI_BYTE, 0, local_);
  out->window = o.window;
  out->version = o.version;
  out->loss = o.loss;
  out->lr = o.lr;
  out->duplicate = o.duplicate;
  out->stale = o.stale;
  out->job_done = o.job_done;
  out->skipped = o.skipped != 0;
  out->loss_scale = o.loss_scale;
  if (leader()) *out = *step;
  version_ = o.version;
  loss_scale_ = o.loss_scale;
  done_ = o.done != 0;
  return absl::OkStatus();
}

std::string GroupClient::transport() const {
  if (!leader()) return absl::StrFormat("hierarchical: via rank %d", members_[0]);
  return absl::StrFormat("hierarchical: group of %d ranks, pushed by rank %d through %s", local_size_, world_rank_,
                         client_->transport());
}

absl::Status GroupClient::ReportTestAccuracy(double accuracy, uint64_t step) {
  if (!leader()) return absl::FailedPreconditionError("only a group's leader talks to the server");
  return client_->ReportTestAccuracy(accuracy, step);
}

absl::StatusOr<v1::Status> GroupClient::GetStatus() {
  if (!leader()) return absl::FailedPreconditionError("only a group's leader talks to the server");
  return client_->GetStatus();
}

absl::Status GroupClient::Leave() { return leader() ? client_->Leave() : absl::OkStatus(); }

}  // namespace gradacc
