// Client: the transfers. A push is a client stream (a header, then the
// gradient chunks each shard owns, or the header alone when the gradients
// are in shared memory); a pull is a server stream of parameter chunks (or a
// header naming the version in the shared parameter segment).
#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/base/config.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/kernels.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "worker/client/call_group.h"
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
  h->set_plan_id(computed_plan_id_);
  h->set_loss_scale(loss_scale_);
  for (uint32_t c : options_.covers) h->add_covers(c);
  for (uint32_t t : untouched_) h->add_untouched_tensors(t);
  for (const ModelLayout::Tensor& t : layout_.tensors()) {
    v1::TensorShape* shape = h->add_tensors();
    shape->set_name(t.name);
    for (uint64_t d : t.shape) shape->add_shape(d);
  }
  return message;
}

absl::StatusOr<v1::PushResponse> Client::Push(bool* duplicate, int* attempts_out) {
  return PushImpl(duplicate, attempts_out, /*pull_ahead=*/false, absl::Now() + options_.window_timeout);
}

absl::StatusOr<v1::PushResponse> Client::PushImpl(bool* duplicate, int* attempts_out, bool pull_ahead,
                                                  absl::Time deadline) {
  if (micro_batches_ == 0) {
    return Refusal(v1::ERROR_REASON_NOTHING_TO_PUSH,
                   absl::StrFormat("nothing to push: no micro-batch was added since window %d opened (call "
                                   "AddMicroBatch for each micro-batch added into grad())",
                                   version_),
                   {{"window", absl::StrCat(version_)}, {"worker", absl::StrCat(options_.worker)}});
  }
  const v1::PushRequest header = PushHeaderMessage();
  {
    MutexLock lock(&wire_mu_);
    wire_encoded_ = false;  // the gradients changed since the last push
  }
  // Each shard gets its part, all at once; or, pulling ahead, in waves of
  // as many shards as the job has server hosts (in shard order, so that a
  // wave of interleaved shards keeps every server host's link busy) while
  // the shards already pushed are pulled: a shard steps as soon as every
  // worker's part is in, so the links carry the next wave's pushes while
  // the new parameters of the last wave come back. A shard that already
  // has the part acknowledges a duplicate, so pushing every shard again
  // after a failure is safe.
  struct Outcome {
    v1::PushResponse response;
    bool duplicate = false;
    int attempts = 0;
    uint32_t attempts_for_key = 0;
    absl::Status pulled = absl::UnknownError("not pulled");
    v1::ParametersHeader header;
  };
  std::vector<Outcome> outcomes(shards_.size());
  for (Outcome& o : outcomes) o.attempts_for_key = push_attempts_for_key_;
  ahead_.reset();
  if (pull_ahead) PrepareStaging();
  Mutex turn_mu;
  size_t pushed = 0;  // shards whose push finished (pulling ahead)
  const size_t wave = std::max<size_t>(1, server_hosts_);
  const absl::Time pull_deadline = deadline;
  CallGroup pulls;  // a failure cancels the pulls parked on other shards
  absl::Status status = ForEachShard([&](size_t i) -> absl::Status {
    Outcome& o = outcomes[i];
    auto my_turn = [&pushed, i, wave] { return pushed + wave > i; };
    if (pull_ahead) {
      MutexLock lock(&turn_mu);
      turn_mu.Await(Condition(&my_turn));
    }
    auto r = PushShard(shards_[i], header, o.attempts_for_key, &o.duplicate, &o.attempts, deadline);
    if (pull_ahead) {
      MutexLock lock(&turn_mu);
      ++pushed;
    }
    if (!r.ok()) {
      pulls.Fail();
      return r.status();
    }
    o.response = *std::move(r);
    if (pull_ahead) o.pulled = PullShard(shards_[i], version_ + 1, pull_deadline, &o.header, version_, false, &pulls);
    return absl::OkStatus();
  });
  if (pull_ahead && status.ok() &&
      std::all_of(outcomes.begin(), outcomes.end(), [&](const Outcome& o) {
        return o.pulled.ok() && o.header.version() == outcomes[0].header.version() &&
               o.header.version() == version_ + 1;
      })) {
    ahead_ = outcomes[0].header;  // StepPull installs it without asking again
  }
  bool all_duplicates = true;
  int attempts = 0;
  for (const Outcome& o : outcomes) {
    all_duplicates &= o.duplicate;
    attempts = std::max(attempts, o.attempts);
    push_attempts_for_key_ = std::max(push_attempts_for_key_, o.attempts_for_key);
  }
  if (!status.ok()) return status;
  if (duplicate != nullptr) *duplicate = all_duplicates;
  if (attempts_out != nullptr) *attempts_out = attempts;
  return outcomes.back().response;
}

absl::Status Client::ForEachShard(const std::function<absl::Status(size_t)>& fn) {
  std::vector<absl::Status> results(shards_.size());
  std::vector<std::thread> threads;
  for (size_t i = 1; i < shards_.size(); ++i) threads.emplace_back([&, i] { results[i] = fn(i); });
  results[0] = fn(0);
  for (std::thread& t : threads) t.join();
  // A deadline that ran out is often only a consequence (a pull parked on
  // a shard that waits for another): report a shard's own failure first.
  for (absl::Status& r : results) {
    if (!r.ok() && !absl::IsDeadlineExceeded(r) && !absl::IsCancelled(r)) return r;
  }
  for (absl::Status& r : results) {
    if (!r.ok()) return r;
  }
  return absl::OkStatus();
}

std::string Client::NameOf(const Shard& shard) const {
  if (shards_.size() <= 1) return shard.address;
  return absl::StrFormat("shard %d (%s)", &shard - shards_.data(), shard.address);
}

void Client::PrepareShardCall(grpc::ClientContext& ctx, const Shard& shard, absl::Time deadline,
                              bool wait_for_ready) const {
  PrepareCall(ctx, options_.connection.token, deadline, wait_for_ready);
  if (shards_.size() > 1) ctx.AddMetadata(kShardMetadataKey, absl::StrCat(&shard - shards_.data()));
}

std::string Client::UnreachableShards() const {
  std::vector<std::string> away;
  for (const Shard& shard : shards_) {
    const grpc_connectivity_state state = shard.stubs->channel->GetState(/*try_to_connect=*/false);
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) away.push_back(NameOf(shard));
  }
  if (away.empty()) return "";
  return absl::StrCat(absl::StrJoin(away, ", "), away.size() == 1 ? " does" : " do", " not answer");
}

const char* Client::WirePayload(v1::WireFormat format) {
#ifdef ABSL_IS_LITTLE_ENDIAN
  if (format == v1::WIRE_FORMAT_F32) return reinterpret_cast<const char*>(grad_.data());
#endif
  // Encoded once per push, by the first shard's stream that needs it.
  MutexLock lock(&wire_mu_);
  if (!wire_encoded_) {
    const auto values = absl::MakeConstSpan(grad_.data(), layout_.num_elements());
    wire_scratch_.resize(values.size() * (format == v1::WIRE_FORMAT_F32 ? sizeof(float) : 2));
    if (format == v1::WIRE_FORMAT_BF16) {
      EncodeBf16(values, wire_scratch_.data());
    } else if (format == v1::WIRE_FORMAT_F16) {
      EncodeF16(values, wire_scratch_.data());
    } else {
      CopyToLittleEndian(values, wire_scratch_.data());
    }
    wire_encoded_ = true;
  }
  return wire_scratch_.data();
}

absl::StatusOr<v1::PushResponse> Client::PushShard(Shard& shard, v1::PushRequest header, uint32_t& attempts_for_key,
                                                   bool* duplicate, int* attempts_out, absl::Time deadline) {
  header.mutable_header()->set_num_elements(shard.end - shard.begin);
  v1::PushResponse response;
  absl::Status status = Retry(
      options_.retry, deadline,
      [&](int attempt) {
        if (attempts_out != nullptr) *attempts_out = attempt;
        header.mutable_header()->set_attempt(++attempts_for_key);
        response.Clear();
        return PushOnce(shard, header, &response, deadline);
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
                    absl::StrFormat("push of window %d by worker %d to %s", version_, options_.worker, NameOf(shard)));
  }
  return response;
}

absl::Status Client::PushOnce(Shard& shard, v1::PushRequest& header, v1::PushResponse* response, absl::Time deadline) {
  // Shared memory: the gradients are in the segment already; the header
  // says so and the stream (or the mailbox) carries nothing else.
  v1::PushHeader* h = header.mutable_header();
  h->set_shared_memory(grad_segment_ != nullptr);
  h->set_shared_memory_generation(grad_segment_ != nullptr ? grad_generation_ : 0);
  h->set_wire_format(h->shared_memory() ? v1::WIRE_FORMAT_F32 : options_.wire_format);
  if (bell_ != nullptr && h->shared_memory()) {
    const std::string bytes = h->SerializeAsString();
    if (bytes.size() <= sizeof(ShmMailbox::request)) return PushThroughMailbox(bytes, response, deadline);
  }
  grpc::ClientContext ctx;
  PrepareShardCall(ctx, shard, std::min(deadline, absl::Now() + options_.rpc_timeout), /*wait_for_ready=*/true);
  grpc::ByteBuffer answer;
  auto writer = shard.stubs->RawPush(&ctx, &answer);
  bool ok = writer->Write(SerializeMessage(header));
  if (ok && !h->shared_memory()) ok = WriteChunks(shard, *h, *writer);
  if (ok) writer->WritesDone();
  // The chunks point into grad_: Finish returns once the call is over.
  const absl::Status status = FromGrpcStatus(writer->Finish());
  if (status.ok() && !ParseMessage(answer, response)) {
    return absl::InternalError("the server's push answer is not a gradacc.v1.PushResponse");
  }
  return status;
}

bool Client::WriteChunks(const Shard& shard, const v1::PushHeader& header,
                         grpc::ClientWriter<grpc::ByteBuffer>& writer) {
  const size_t width = header.wire_format() == v1::WIRE_FORMAT_F32 ? sizeof(float) : 2;
  const char* const payload = WirePayload(header.wire_format());
  grpc::WriteOptions options;
  for (size_t i = 0; i < layout_.tensors().size(); ++i) {
    const ModelLayout::Tensor& t = layout_.tensors()[i];
    // The part of this tensor the shard owns.
    const uint64_t lo = std::max(t.offset, shard.begin), hi = std::min(t.offset + t.size, shard.end);
    if (lo >= hi) continue;
    for (uint64_t off = lo - t.offset; off < hi - t.offset; off += options_.chunk_elements) {
      const uint64_t n = std::min<uint64_t>(options_.chunk_elements, hi - t.offset - off);
      const grpc::ByteBuffer message =
          ChunkMessage(static_cast<uint32_t>(i), off, payload + (t.offset + off) * width, n * width);
      if (!writer.Write(message, options)) return false;
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

absl::Status Client::PullExact(uint64_t version, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  v1::ParametersHeader header;
  GRADACC_RETURN_IF_ERROR(Retry(options_.retry, deadline, [&](int) {
    return PullAllShards(version, deadline, std::nullopt, &header, /*exact=*/true);
  }));
  InstallPulled(header);
  return absl::OkStatus();
}

absl::Status Client::PullAllShards(uint64_t min_version, absl::Time deadline, std::optional<uint64_t> pushed_key,
                                   v1::ParametersHeader* header, bool exact) {
  std::vector<v1::ParametersHeader> headers(shards_.size());
  uint64_t want = min_version;
  PrepareStaging();
  if (exact) {
    CallGroup group;
    GRADACC_RETURN_IF_ERROR(ForEachShard([&](size_t i) {
      return PullShard(shards_[i], want, deadline, &headers[i], pushed_key, /*exact=*/true, &group);
    }));
    *header = headers[0];
    return absl::OkStatus();
  }
  // Every shard must hand over the same version; a shard that lags (another
  // worker's window may be closing) is asked again for the newest one seen.
  for (int round = 0; round < kShardRounds; ++round) {
    uint64_t newest = 0, oldest = ~uint64_t{0};
    CallGroup group;
    auto pull = [&](size_t i) {
      if (round > 0 && headers[i].version() >= want) return absl::OkStatus();
      return PullShard(shards_[i], want, deadline, &headers[i], pushed_key, false, &group);
    };
    if (params_segment_ == nullptr) {
      GRADACC_RETURN_IF_ERROR(ForEachShard(pull));  // every shard at once
    } else {
      for (size_t i = 0; i < shards_.size(); ++i) GRADACC_RETURN_IF_ERROR(pull(i));
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

void Client::PrepareStaging() {
  if (!staging_.owned()) staging_ = FloatBuffer(layout_.num_elements());
  pulled_in_place_ = false;
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
  // A join's plan of the same window is at least as new as this header's
  // (a joiner may have been added to a window that had no members).
  if (header.has_plan() && (header.plan().window() > plan_.window() || plan_.id() == 0)) plan_ = header.plan();
  loss_scale_ = header.loss_scale();
  version_ = header.version();
}

absl::Status Client::PullShard(Shard& shard, uint64_t min_version, absl::Time deadline,
                               v1::ParametersHeader* header_out, std::optional<uint64_t> pushed_key, bool exact,
                               CallGroup* group) {
  if (!exact && bell_ != nullptr && params_segment_ != nullptr && PullThroughBell(min_version, deadline, header_out)) {
    return absl::OkStatus();
  }
  v1::PullRequest request;
  request.set_job_id(job_.job_id());
  request.set_worker(options_.worker);
  request.set_min_version(min_version);
  request.set_exact_version(exact);
  request.set_shared_memory(params_segment_ != nullptr);
  if (pushed_key.has_value()) request.set_contribution_key(*pushed_key);
  grpc::ClientContext ctx;
  PrepareShardCall(ctx, shard, deadline, /*wait_for_ready=*/true);
  if (group != nullptr && !group->Add(&ctx)) {
    return absl::CancelledError(absl::StrFormat("pull from %s not started: another shard's failed", NameOf(shard)));
  }
  auto reader = shard.stubs->RawPull(&ctx, request);
  v1::ParametersHeader header;
  bool have_header = false;
  const uint64_t received = ReadParameters(shard, ctx, *reader, &header, &have_header);
  const grpc::Status finished = reader->Finish();
  if (group != nullptr) {
    group->Remove(&ctx);
    if (!finished.ok()) group->Fail();
  }
  GRADACC_RETURN_IF_ERROR(
      FromGrpcStatus(finished, absl::StrFormat("pull of version >= %d from %s", min_version, NameOf(shard))));
  if (have_header && header.shared_memory() && received == 0) {
    if (params_segment_ != nullptr && ReadSharedParameters(header.version())) {
      *header_out = header;
      return absl::OkStatus();
    }
    // The server moved past that version while we read it (or we hold no
    // segment any more): this pull goes through gRPC.
    DetachSharedMemory();
    shm_note_ = "the parameter segment changed while read; pulling through gRPC";
    return PullShard(shard, min_version, deadline, header_out, pushed_key, exact);
  }
  const uint64_t expect = shard.end - shard.begin;
  if (!have_header || received != expect) {
    return absl::DataLossError(absl::StrFormat("pull of version >= %d from %s: incomplete parameters (%d of %d)",
                                               min_version, NameOf(shard), received, expect));
  }
  *header_out = header;
  return absl::OkStatus();
}

uint64_t Client::ReadParameters(const Shard& shard, grpc::ClientContext& ctx,
                                grpc::ClientReader<grpc::ByteBuffer>& reader, v1::ParametersHeader* header,
                                bool* have_header) {
  grpc::ByteBuffer msg;
  uint64_t received = 0;
  const uint64_t expect = shard.end - shard.begin;
  while (reader.Read(&msg)) {
    bool malformed = false;
    ChunkRef ref;
    v1::PullResponse parsed;
    if (ScanMessage(msg, &ref) == MessageKind::kChunk) {
      malformed = !*have_header || !PlaceChunk(
                                       shard, ref.tensor, ref.offset, ref.data_size,
                                       [&](char* dst) { return ReadChunkPayload(msg, ref, dst); }, &received);
    } else if (!ParseMessage(msg, &parsed)) {
      malformed = true;
    } else if (parsed.has_header()) {
      *header = parsed.header();
      *have_header = true;
      malformed = header->num_elements() != expect;
    } else {
      const v1::GradientChunk& c = parsed.chunk();
      malformed = !*have_header || !PlaceChunk(
                                       shard, c.tensor(), c.offset(), c.data().size(),
                                       [&](char* dst) {
                                         std::memcpy(dst, c.data().data(), c.data().size());
                                         return true;
                                       },
                                       &received);
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

bool Client::PlaceChunk(const Shard& shard, uint32_t tensor, uint64_t offset, size_t bytes,
                        const std::function<bool(char*)>& read, uint64_t* received) {
  if (tensor >= layout_.tensors().size() || bytes % sizeof(float) != 0) return false;
  const ModelLayout::Tensor& t = layout_.tensors()[tensor];
  const uint64_t n = bytes / sizeof(float);
  const uint64_t flat = t.offset + offset;
  if (offset > t.size || n > t.size - offset || flat < shard.begin || flat + n > shard.end) return false;
  float* const dst = staging_.data() + flat;
#ifdef ABSL_IS_LITTLE_ENDIAN
  if (!read(reinterpret_cast<char*>(dst))) return false;
#else
  std::vector<char> bytes_le(bytes);
  if (!read(bytes_le.data())) return false;
  CopyFromLittleEndian(bytes_le.data(), absl::MakeSpan(dst, n));
#endif
  *received += n;
  return true;
}

}  // namespace gradacc
