// Client: the transfers. A push is a client stream (a header, then the
// gradient chunks each shard owns, or the header alone when the gradients
// are in shared memory); a pull is a server stream of parameter chunks (or a
// header naming the version in the shared parameter segment).
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/kernels.h"
#include "common/status_macros.h"
#include "worker/client/client.h"
#include "worker/client/stubs.h"

namespace gradacc {
namespace {

// A push is tried again for RETRY (same key) and PUSH_AGAIN.
bool ShouldPushAgain(const absl::Status& status) {
  const v1::ClientAction action = ActionOf(status);
  return action == v1::CLIENT_ACTION_RETRY || action == v1::CLIENT_ACTION_PUSH_AGAIN;
}

// The shards' versions may differ while a window closes: pull again this
// many times for the newest one seen.
constexpr int kShardRounds = 4;

}  // namespace

v1::PushRequest Client::PushHeaderMessage() const {
  v1::PushRequest message;
  v1::PushHeader* h = message.mutable_header();
  h->set_job_id(job_.job_id());
  h->set_worker(options_.worker);
  h->set_window(version_);
  // One contribution per worker per window: the window number is a key that
  // stays the same across retries, reconnections and worker restarts.
  h->set_contribution_key(version_);
  h->set_micro_batches(micro_batches_);
  h->set_samples(samples_);
  h->set_loss_sum(loss_sum_);
  for (uint32_t c : options_.covers) h->add_covers(c);
  for (const ModelLayout::Tensor& t : layout_.tensors()) {
    v1::TensorShape* shape = h->add_tensors();
    shape->set_name(t.name);
    for (uint64_t d : t.shape) shape->add_shape(d);
  }
  return message;
}

absl::StatusOr<v1::PushResponse> Client::Push(bool* duplicate, int* attempts_out) {
  if (micro_batches_ == 0) {
    return Refusal(v1::ERROR_REASON_NOTHING_TO_PUSH,
                   absl::StrFormat("nothing to push: no micro-batch was added since window %d opened (call "
                                   "AddMicroBatch for each micro-batch added into grad())",
                                   version_),
                   {{"window", absl::StrCat(version_)}, {"worker", absl::StrCat(options_.worker)}});
  }
  const v1::PushRequest header = PushHeaderMessage();
  // Each shard gets its part. A shard that already has it acknowledges a
  // duplicate, so pushing every shard again after a failure is safe.
  v1::PushResponse last_response;
  bool all_duplicates = true;
  const uint32_t first_attempt = push_attempts_for_key_;
  int attempts = 0;
  for (Shard& shard : shards_) {
    push_attempts_for_key_ = first_attempt;
    bool dup = false;
    int used = 0;
    auto r = PushShard(shard, header, &dup, &used);
    attempts = std::max(attempts, used);
    if (!r.ok()) return r.status();
    all_duplicates &= dup;
    last_response = *r;
  }
  if (duplicate != nullptr) *duplicate = all_duplicates;
  if (attempts_out != nullptr) *attempts_out = attempts;
  return last_response;
}

absl::StatusOr<v1::PushResponse> Client::PushShard(Shard& shard, v1::PushRequest header, bool* duplicate,
                                                   int* attempts_out) {
  header.mutable_header()->set_num_elements(shard.end - shard.begin);
  v1::PushResponse response;
  absl::Status status = Retry(
      options_.retry, absl::Now() + options_.window_timeout,
      [&](int attempt) {
        if (attempts_out != nullptr) *attempts_out = attempt;
        header.mutable_header()->set_attempt(++push_attempts_for_key_);
        response.Clear();
        return PushOnce(shard, header, &response);
      },
      ShouldPushAgain);
  const bool acknowledged = ActionOf(status) == v1::CLIENT_ACTION_ACKNOWLEDGED;
  if (duplicate != nullptr) *duplicate = acknowledged;
  if (acknowledged) {
    response.set_window(version_);
    return response;
  }
  if (!status.ok()) {
    return Annotate(status,
                    absl::StrFormat("push of window %d by worker %d to %s", version_, options_.worker, shard.address));
  }
  return response;
}

absl::Status Client::PushOnce(Shard& shard, v1::PushRequest& header, v1::PushResponse* response) {
  grpc::ClientContext ctx;
  PrepareCall(ctx, options_.connection.token, absl::Now() + options_.rpc_timeout, /*wait_for_ready=*/true);
  auto writer = shard.stubs->data->Push(&ctx, response);
  // Shared memory: the gradients are in the segment already; the header
  // says so and the stream carries nothing else.
  v1::PushHeader* h = header.mutable_header();
  h->set_shared_memory(grad_segment_ != nullptr);
  h->set_shared_memory_generation(grad_segment_ != nullptr ? grad_generation_ : 0);
  h->set_wire_format(h->shared_memory() ? v1::WIRE_FORMAT_F32 : options_.wire_format);
  bool ok = writer->Write(header);
  if (ok && !h->shared_memory()) ok = WriteChunks(shard, *h, *writer);
  if (ok) writer->WritesDone();
  return FromGrpcStatus(writer->Finish());
}

bool Client::WriteChunks(const Shard& shard, const v1::PushHeader& header,
                         grpc::ClientWriter<v1::PushRequest>& writer) {
  v1::PushRequest message;
  for (size_t i = 0; i < layout_.tensors().size(); ++i) {
    const ModelLayout::Tensor& t = layout_.tensors()[i];
    // The part of this tensor the shard owns.
    const uint64_t lo = std::max(t.offset, shard.begin), hi = std::min(t.offset + t.size, shard.end);
    if (lo >= hi) continue;
    for (uint64_t off = lo - t.offset; off < hi - t.offset; off += options_.chunk_elements) {
      const uint64_t n = std::min<uint64_t>(options_.chunk_elements, hi - t.offset - off);
      v1::GradientChunk* c = message.mutable_chunk();
      c->set_tensor(static_cast<uint32_t>(i));
      c->set_offset(off);
      std::string* data = c->mutable_data();
      const auto values = absl::MakeConstSpan(grad_.data() + t.offset + off, n);
      switch (header.wire_format()) {
        case v1::WIRE_FORMAT_BF16:
          data->resize(n * 2);
          EncodeBf16(values, data->data());
          break;
        case v1::WIRE_FORMAT_F16:
          data->resize(n * 2);
          EncodeF16(values, data->data());
          break;
        default:
          data->resize(n * sizeof(float));
          CopyToLittleEndian(values, data->data());
      }
      if (!writer.Write(message)) return false;
    }
  }
  return true;
}

absl::Status Client::Pull(uint64_t min_version, absl::Duration timeout, v1::ParametersHeader* header_out,
                          std::optional<uint64_t> pushed_key) {
  const absl::Time deadline = absl::Now() + timeout;
  v1::ParametersHeader header;
  GRADACC_RETURN_IF_ERROR(
      Retry(options_.retry, deadline, [&](int) { return PullAllShards(min_version, deadline, pushed_key, &header); }));
  if (header_out != nullptr) *header_out = header;
  InstallPulled(header);
  return absl::OkStatus();
}

absl::Status Client::PullAllShards(uint64_t min_version, absl::Time deadline, std::optional<uint64_t> pushed_key,
                                   v1::ParametersHeader* header) {
  std::vector<v1::ParametersHeader> headers(shards_.size());
  uint64_t want = min_version;
  // Every shard must hand over the same version; a shard that lags (another
  // worker's window may be closing) is asked again for the newest one seen.
  for (int round = 0; round < kShardRounds; ++round) {
    uint64_t newest = 0, oldest = ~uint64_t{0};
    for (size_t i = 0; i < shards_.size(); ++i) {
      if (round > 0 && headers[i].version() >= want) continue;
      GRADACC_RETURN_IF_ERROR(PullShard(shards_[i], want, deadline, &headers[i], pushed_key));
    }
    for (const auto& h : headers) {
      newest = std::max<uint64_t>(newest, h.version());
      oldest = std::min<uint64_t>(oldest, h.version());
    }
    if (newest == oldest || headers[0].job_done()) break;
    want = newest;
  }
  for (const auto& h : headers) {
    if (h.version() != headers[0].version()) {
      return absl::UnavailableError("the shards did not settle on one version; try again");
    }
  }
  *header = headers[0];
  return absl::OkStatus();
}

void Client::InstallPulled(const v1::ParametersHeader& header) {
  done_ = header.job_done();
  if (header.version() < version_) return;  // never go back
  if (pulled_in_place_) {
    if (params_.owned()) {
      Retire(std::move(staging_));
      staging_ = std::move(params_);
    }
    params_ = FloatBuffer::View(params_segment_->data(), layout_.num_elements());
  } else if (params_.owned()) {
    std::swap(params_, staging_);
  } else {
    params_ = std::move(staging_);
    staging_ = FloatBuffer(layout_.num_elements());
  }
  if (header.version() > version_) ZeroGradients();
  version_ = header.version();
}

absl::Status Client::PullShard(Shard& shard, uint64_t min_version, absl::Time deadline,
                               v1::ParametersHeader* header_out, std::optional<uint64_t> pushed_key) {
  v1::PullRequest request;
  request.set_job_id(job_.job_id());
  request.set_worker(options_.worker);
  request.set_min_version(min_version);
  request.set_shared_memory(params_segment_ != nullptr);
  if (pushed_key.has_value()) request.set_contribution_key(*pushed_key);
  if (!staging_.owned()) staging_ = FloatBuffer(layout_.num_elements());
  grpc::ClientContext ctx;
  PrepareCall(ctx, options_.connection.token, deadline, /*wait_for_ready=*/true);
  auto reader = shard.stubs->data->Pull(&ctx, request);
  v1::ParametersHeader header;
  bool have_header = false;
  const uint64_t received = ReadParameters(shard, ctx, *reader, &header, &have_header);
  GRADACC_RETURN_IF_ERROR(
      FromGrpcStatus(reader->Finish(), absl::StrFormat("pull of version >= %d from %s", min_version, shard.address)));
  pulled_in_place_ = false;
  if (have_header && header.shared_memory() && received == 0) {
    if (params_segment_ != nullptr && ReadSharedParameters(header.version())) {
      *header_out = header;
      return absl::OkStatus();
    }
    // The server moved past that version while we read it (or we hold no
    // segment any more): this pull goes through gRPC.
    DetachSharedMemory();
    shm_note_ = "the parameter segment changed while read; pulling through gRPC";
    return PullShard(shard, min_version, deadline, header_out, pushed_key);
  }
  const uint64_t expect = shard.end - shard.begin;
  if (!have_header || received != expect) {
    return absl::DataLossError(absl::StrFormat("pull of version >= %d from %s: incomplete parameters (%d of %d)",
                                               min_version, shard.address, received, expect));
  }
  *header_out = header;
  return absl::OkStatus();
}

uint64_t Client::ReadParameters(const Shard& shard, grpc::ClientContext& ctx,
                                grpc::ClientReader<v1::PullResponse>& reader, v1::ParametersHeader* header,
                                bool* have_header) {
  v1::PullResponse msg;
  uint64_t received = 0;
  const uint64_t expect = shard.end - shard.begin;
  while (reader.Read(&msg)) {
    bool malformed = false;
    if (msg.has_header()) {
      *header = msg.header();
      *have_header = true;
      malformed = header->num_elements() != expect;
    } else {
      const v1::GradientChunk& c = msg.chunk();
      malformed = !*have_header || c.tensor() >= layout_.tensors().size();
      const ModelLayout::Tensor* t = malformed ? nullptr : &layout_.tensors()[c.tensor()];
      const uint64_t n = c.data().size() / sizeof(float);
      const uint64_t flat = malformed ? 0 : t->offset + c.offset();
      malformed =
          malformed || c.offset() > t->size || n > t->size - c.offset() || flat < shard.begin || flat + n > shard.end;
      if (!malformed) {
        CopyFromLittleEndian(c.data().data(), absl::MakeSpan(staging_.data() + flat, n));
        received += n;
      }
    }
    if (malformed) {
      // Stop the server sending the rest: Finish reports CANCELLED, and the
      // pull is retried.
      ctx.TryCancel();
      break;
    }
  }
  return received;
}

}  // namespace gradacc
