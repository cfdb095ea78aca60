#include "worker/client.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/kernels.h"
#include "common/status_macros.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"

namespace gradacc {

class GradaccStubs {
 public:
  explicit GradaccStubs(std::shared_ptr<grpc::Channel> channel)
      : channel(std::move(channel)),
        data(v1::DataPlane::NewStub(this->channel)),
        control(v1::ControlPlane::NewStub(this->channel)) {}
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::DataPlane::Stub> data;
  std::unique_ptr<v1::ControlPlane::Stub> control;
};

namespace {

absl::Status FromGrpc(const grpc::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), absl::StrCat(what, ": ", s.error_message()));
}

bool Retryable(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
      return true;
    default:
      return false;
  }
}

std::string LocalHostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "";
  return buf;
}

}  // namespace

absl::StatusOr<v1::WireFormat> ParseWireFormat(absl::string_view name) {
  if (name == "f32") return v1::WIRE_FORMAT_F32;
  if (name == "bf16") return v1::WIRE_FORMAT_BF16;
  if (name == "f16") return v1::WIRE_FORMAT_F16;
  return absl::InvalidArgumentError(absl::StrCat("unknown wire format '", name, "'; known: f32, bf16, f16"));
}

Client::Client(const ClientOptions& options) : options_(options) {}
Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.server.empty()) return absl::InvalidArgumentError("no server address given");
  std::unique_ptr<Client> client(new Client(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Reconnect quickly after a server restart or a dropped connection (gRPC's
  // default backoff grows to two minutes).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // A sharded job lists every shard's address, in shard order.
  const absl::Time give_up = absl::Now() + options.connect_timeout;
  for (absl::string_view address : absl::StrSplit(options.server, ',', absl::SkipWhitespace())) {
    ConnectionOptions connection = options.connection;
    connection.server = std::string(address);
    auto channel = MakeChannel(connection, args);
    if (!channel.ok()) return channel.status();
    Shard shard;
    shard.address = std::string(address);
    shard.stubs = std::make_unique<GradaccStubs>(*channel);
    if (!shard.stubs->channel->WaitForConnected(absl::ToChronoTime(give_up))) {
      return absl::UnavailableError(absl::StrFormat("cannot reach gradacc server at %s within %s", address,
                                                    absl::FormatDuration(options.connect_timeout)));
    }
    client->shards_.push_back(std::move(shard));
  }
  // Join and fetch the current parameters, retrying through dropped
  // connections until the connect timeout.
  absl::Duration backoff = options.retry_backoff;
  while (true) {
    absl::Status status = client->JoinAndFetch(give_up);
    if (status.ok()) return client;
    if (!Retryable(static_cast<grpc::StatusCode>(status.code())) || absl::Now() + backoff >= give_up) return status;
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(backoff));
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
}

v1::JoinRequest Client::JoinRequestFor(const std::string& job_id) const {
  v1::JoinRequest request;
  request.set_job_id(job_id);
  request.set_worker(options_.worker);
  request.set_hostname(options_.hostname.empty() ? LocalHostname() : options_.hostname);
  for (uint32_t c : options_.covers) request.add_covers(c);
  request.set_held_version(version_);
  return request;
}

absl::Status Client::JoinAndFetch(absl::Time give_up) {
  uint64_t first_window = 0, version = 0;
  for (size_t i = 0; i < shards_.size(); ++i) {
    const v1::JoinRequest request = JoinRequestFor(options_.job_id);
    v1::JoinResponse response;
    grpc::ClientContext ctx;
    Authenticate(ctx, options_.connection.token);
    ctx.set_deadline(absl::ToChronoTime(std::max(give_up, absl::Now() + options_.rpc_timeout)));
    ctx.set_wait_for_ready(true);
    GRADACC_RETURN_IF_ERROR(
        FromGrpc(shards_[i].stubs->data->Join(&ctx, request, &response), "join " + shards_[i].address));
    if (params_.size() == 0 && i == 0) {
      job_ = response.job();
      GRADACC_ASSIGN_OR_RETURN(layout_, ModelLayout::FromSpec(job_.model()));
      if (layout_.num_elements() != response.num_elements()) {
        return absl::InternalError("server's job and element count disagree");
      }
    }
    const uint32_t num_shards = std::max(1u, response.num_shards());
    if (num_shards != shards_.size() || response.shard() != i) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s is shard %d of %d, but it was given as shard %d of %d: list every shard's address, in shard order",
          shards_[i].address, response.shard(), num_shards, i, shards_.size()));
    }
    shards_[i].begin = num_shards > 1 ? response.shard_begin() : 0;
    shards_[i].end = num_shards > 1 ? response.shard_end() : layout_.num_elements();
    if (shards_[i].begin != (i == 0 ? 0 : shards_[i - 1].end)) {
      return absl::FailedPreconditionError("the shards' element ranges do not tile the model");
    }
    first_window = std::max<uint64_t>(first_window, response.window());
    version = i == 0 ? response.version() : std::min<uint64_t>(version, response.version());
  }
  if (shards_.back().end != layout_.num_elements()) {
    return absl::FailedPreconditionError("the shards' element ranges do not cover the model");
  }
  if (params_.size() == 0) {
    params_ = FloatBuffer(layout_.num_elements());
    staging_ = FloatBuffer(layout_.num_elements());
    grad_ = FloatBuffer(layout_.num_elements());
    version_ = 0;
  }
  SetUpSharedMemory();
  // Fetch the current parameters (whatever version the server is at); an
  // elastic job may make the next window this worker's first.
  GRADACC_RETURN_IF_ERROR(Pull(version, options_.rpc_timeout));
  if (first_window > version_) GRADACC_RETURN_IF_ERROR(Pull(first_window, options_.window_timeout));
  return absl::OkStatus();
}

absl::Span<const float> Client::param(int tensor) const {
  const auto& t = layout_.tensors()[tensor];
  return absl::MakeConstSpan(params_.data() + t.offset, t.size);
}

absl::Span<float> Client::grad(int tensor) {
  const auto& t = layout_.tensors()[tensor];
  return absl::MakeSpan(grad_.data() + t.offset, t.size);
}

void Client::AddMicroBatch(uint64_t samples, double loss_sum) {
  samples_ += samples;
  loss_sum_ += loss_sum;
  ++micro_batches_;
}

void Client::SetUpSharedMemory() {
  if (!options_.shared_memory) {
    shm_note_ = "shared memory off in this worker";
    return;
  }
  if (shards_.size() != 1) {
    shm_note_ = "sharded job";
    return;
  }
  v1::AttachSharedMemoryRequest request;
  request.set_job_id(job_.job_id());
  request.set_worker(options_.worker);
  v1::AttachSharedMemoryResponse offer;
  auto attach = [&] {
    grpc::ClientContext ctx;
    Authenticate(ctx, options_.connection.token);
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    return shards_[0].stubs->data->AttachSharedMemory(&ctx, request, &offer);
  };
  if (grpc::Status s = attach(); !s.ok()) {
    DetachSharedMemory();
    shm_note_ = absl::StrCat("attach failed: ", s.error_message());
    return;
  }
  if (!offer.available()) {
    DetachSharedMemory();
    shm_note_ = offer.reason();
    return;
  }
  const ShmNonce nonce = {offer.nonce_hi(), offer.nonce_lo()};
  if (grad_segment_ != nullptr && grad_segment_->path() == offer.grad_path() &&
      grad_segment_->header()->nonce == nonce) {
    return;  // the same server instance: already attached
  }
  DetachSharedMemory();
  const uint64_t n = layout_.num_elements();
  absl::Status failed;
  auto params = offer.num_elements() == n ? ShmSegment::Open(offer.params_path(), /*writable=*/false, n, nonce)
                                          : absl::FailedPreconditionError("segment size differs from the model");
  if (params.ok()) {
    auto grad = ShmSegment::Open(offer.grad_path(), /*writable=*/true, n, nonce);
    if (grad.ok()) {
      // The gradient gathered so far moves into the segment.
      std::copy(grad_.data(), grad_.data() + n, (*grad)->data());
      grad_ = FloatBuffer::View((*grad)->data(), n);
      grad_segment_ = *std::move(grad);
      grad_generation_ = offer.generation();
      params_segment_ = *std::move(params);
      params_stable_ = offer.params_stable();
      shm_note_.clear();
      return;
    }
    failed = grad.status();
  } else {
    failed = params.status();
  }
  shm_note_ = std::string(failed.message());
  request.set_failure(shm_note_);
  (void)attach();  // best effort: status shows it
}

void Client::DetachSharedMemory() {
  const uint64_t n = layout_.num_elements();
  if (!grad_.owned()) {
    FloatBuffer own(n);
    std::copy(grad_.data(), grad_.data() + n, own.data());
    grad_ = std::move(own);
  }
  if (!params_.owned()) {
    FloatBuffer own(n);
    std::copy(params_.data(), params_.data() + n, own.data());
    params_ = std::move(own);
  }
  grad_segment_.reset();
  params_segment_.reset();
  pulled_in_place_ = false;
}

bool Client::ReadSharedParameters(uint64_t version) {
  const std::atomic<uint64_t>& seq = params_segment_->header()->seq;
  if (seq.load(std::memory_order_acquire) != 2 * version) return false;
  if (params_stable_) {
    // Stays in place until this worker has pushed the window: use it there.
    pulled_in_place_ = true;
    return true;
  }
  std::copy(params_segment_->data(), params_segment_->data() + layout_.num_elements(), staging_.data());
  std::atomic_thread_fence(std::memory_order_acquire);
  pulled_in_place_ = false;
  return seq.load(std::memory_order_relaxed) == 2 * version;
}

std::string Client::transport() const {
  if (grad_segment_ != nullptr) return params_stable_ ? "shared memory (parameters in place)" : "shared memory";
  return shm_note_.empty() ? "gRPC" : absl::StrCat("gRPC (", shm_note_, ")");
}

void Client::AddCoveredContribution(uint64_t samples, uint32_t micro_batches, double loss_sum) {
  samples_ += samples;
  loss_sum_ += loss_sum;
  micro_batches_ += micro_batches;
}

void Client::ZeroGradients() {
  push_attempts_for_key_ = 0;
  std::fill(grad_.data(), grad_.data() + grad_.size(), 0.0f);
  samples_ = 0;
  micro_batches_ = 0;
  loss_sum_ = 0;
}

absl::StatusOr<v1::PushResponse> Client::Push(bool* duplicate, int* attempts_out) {
  if (micro_batches_ == 0) {
    return absl::FailedPreconditionError("nothing to push: no micro-batch was added since the window opened");
  }
  v1::PushRequest header_msg;
  v1::PushHeader* h = header_msg.mutable_header();
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
  // Each shard gets its part. A shard that already has it answers
  // ALREADY_EXISTS, so pushing every shard again after a failure is safe.
  v1::PushResponse last_response;
  bool all_duplicates = true;
  const uint32_t first_attempt = push_attempts_for_key_;
  int attempts = 0;
  for (Shard& shard : shards_) {
    push_attempts_for_key_ = first_attempt;
    bool dup = false;
    int used = 0;
    auto r = PushShard(shard, header_msg, &dup, &used);
    attempts = std::max(attempts, used);
    if (!r.ok()) return r.status();
    all_duplicates &= dup;
    last_response = *r;
  }
  if (duplicate != nullptr) *duplicate = all_duplicates;
  if (attempts_out != nullptr) *attempts_out = attempts;
  return last_response;
}

absl::StatusOr<v1::PushResponse> Client::PushShard(Shard& shard, v1::PushRequest header_msg, bool* duplicate,
                                                    int* attempts_out) {
  v1::PushHeader* h = header_msg.mutable_header();
  h->set_num_elements(shard.end - shard.begin);
  absl::Duration backoff = options_.retry_backoff;
  grpc::Status last;
  v1::PushRequest chunk_msg;
  for (int attempt = 1; attempt <= options_.max_push_attempts; ++attempt) {
    if (attempts_out != nullptr) *attempts_out = attempt;
    h->set_attempt(++push_attempts_for_key_);
    grpc::ClientContext ctx;
    Authenticate(ctx, options_.connection.token);
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    ctx.set_wait_for_ready(true);
    v1::PushResponse response;
    auto writer = shard.stubs->data->Push(&ctx, &response);
    // Shared memory: the gradients are in the segment already; the header
    // says so and the stream carries nothing else.
    h->set_shared_memory(grad_segment_ != nullptr);
    h->set_shared_memory_generation(grad_segment_ != nullptr ? grad_generation_ : 0);
    h->set_wire_format(h->shared_memory() ? v1::WIRE_FORMAT_F32 : options_.wire_format);
    bool ok = writer->Write(header_msg);
    for (size_t i = 0; ok && !h->shared_memory() && i < layout_.tensors().size(); ++i) {
      const ModelLayout::Tensor& t = layout_.tensors()[i];
      // The part of this tensor the shard owns.
      const uint64_t lo = std::max(t.offset, shard.begin), hi = std::min(t.offset + t.size, shard.end);
      if (lo >= hi) continue;
      for (uint64_t off = lo - t.offset; ok && off < hi - t.offset; off += options_.chunk_elements) {
        const uint64_t n = std::min<uint64_t>(options_.chunk_elements, hi - t.offset - off);
        v1::GradientChunk* c = chunk_msg.mutable_chunk();
        c->set_tensor(static_cast<uint32_t>(i));
        c->set_offset(off);
        std::string* data = c->mutable_data();
        const auto values = absl::MakeConstSpan(grad_.data() + t.offset + off, n);
        switch (h->wire_format()) {
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
        ok = writer->Write(chunk_msg);
      }
    }
    if (ok) writer->WritesDone();
    last = writer->Finish();
    if (last.ok()) {
      if (duplicate != nullptr) *duplicate = false;
      return response;
    }
    if (last.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
      if (duplicate != nullptr) *duplicate = true;
      response.set_window(version_);
      return response;
    }
    if (!Retryable(last.error_code())) break;
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(backoff));
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
  return FromGrpc(last, absl::StrFormat("push of window %d by worker %d to %s", version_, options_.worker,
                                        shard.address));
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
  Authenticate(ctx, options_.connection.token);
  ctx.set_deadline(absl::ToChronoTime(deadline));
  ctx.set_wait_for_ready(true);
  auto reader = shard.stubs->data->Pull(&ctx, request);
  v1::PullResponse msg;
  v1::ParametersHeader header;
  bool have_header = false;
  uint64_t received = 0;
  const uint64_t expect = shard.end - shard.begin;
  while (reader->Read(&msg)) {
    if (msg.has_header()) {
      header = msg.header();
      have_header = true;
      if (header.num_elements() != expect) {
        ctx.TryCancel();
        break;
      }
      continue;
    }
    const v1::GradientChunk& c = msg.chunk();
    if (!have_header || c.tensor() >= layout_.tensors().size()) {
      ctx.TryCancel();
      break;
    }
    const ModelLayout::Tensor& t = layout_.tensors()[c.tensor()];
    const uint64_t n = c.data().size() / sizeof(float);
    const uint64_t flat = t.offset + c.offset();
    if (c.offset() > t.size || n > t.size - c.offset() || flat < shard.begin || flat + n > shard.end) {
      ctx.TryCancel();
      break;
    }
    CopyFromLittleEndian(c.data().data(), absl::MakeSpan(staging_.data() + flat, n));
    received += n;
  }
  GRADACC_RETURN_IF_ERROR(
      FromGrpc(reader->Finish(), absl::StrFormat("pull of version >= %d from %s", min_version, shard.address)));
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
  if (!have_header || received != expect) {
    return absl::DataLossError(absl::StrFormat("pull of version >= %d from %s: incomplete parameters (%d of %d)",
                                               min_version, shard.address, received, expect));
  }
  *header_out = header;
  return absl::OkStatus();
}

absl::Status Client::Pull(uint64_t min_version, absl::Duration timeout, v1::ParametersHeader* header_out,
                          std::optional<uint64_t> pushed_key) {
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<v1::ParametersHeader> headers(shards_.size());
  uint64_t want = min_version;
  // Every shard must hand over the same version; a shard that lags (another
  // worker's window may be closing) is asked again for the newest one seen.
  for (int round = 0; round < 4; ++round) {
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
  const v1::ParametersHeader& header = headers[0];
  for (const auto& h : headers) {
    if (h.version() != header.version()) {
      return absl::UnavailableError("the shards did not settle on one version; try again");
    }
  }
  if (header_out != nullptr) *header_out = header;
  done_ = header.job_done();
  if (header.version() < version_) return absl::OkStatus();  // never go back
  if (pulled_in_place_) {
    if (params_.owned()) staging_ = std::move(params_);
    params_ = FloatBuffer::View(params_segment_->data(), layout_.num_elements());
  } else if (params_.owned()) {
    std::swap(params_, staging_);
  } else {
    params_ = std::move(staging_);
    staging_ = FloatBuffer(layout_.num_elements());
  }
  if (header.version() > version_) ZeroGradients();
  version_ = header.version();
  return absl::OkStatus();
}

absl::StatusOr<v1::JoinResponse> Client::Rejoin(absl::Time deadline) {
  v1::JoinResponse oldest;
  for (size_t i = 0; i < shards_.size(); ++i) {
    absl::Duration backoff = options_.retry_backoff;
    while (true) {
      const v1::JoinRequest request = JoinRequestFor(job_.job_id());
      v1::JoinResponse response;
      grpc::ClientContext ctx;
      Authenticate(ctx, options_.connection.token);
      ctx.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + options_.rpc_timeout)));
      ctx.set_wait_for_ready(true);
      absl::Status last =
          FromGrpc(shards_[i].stubs->data->Join(&ctx, request, &response), "rejoin " + shards_[i].address);
      if (last.ok()) {
        if (i == 0 || response.version() < oldest.version()) oldest = response;
        break;
      }
      if (!Retryable(static_cast<grpc::StatusCode>(last.code())) || absl::Now() + backoff >= deadline) return last;
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(backoff));
      backoff = std::min(backoff * 2, absl::Seconds(2));
    }
  }
  // A restarted server has new segments (or none): attach again.
  SetUpSharedMemory();
  return oldest;
}

absl::StatusOr<StepResult> Client::Step() {
  StepResult result;
  const uint64_t window = version_;
  result.window = window;
  const absl::Time deadline = absl::Now() + options_.window_timeout;
  bool need_push = true;
  while (true) {
    if (need_push) {
      auto pushed = Push(&result.duplicate, &result.push_attempts);
      if (pushed.ok()) {
        need_push = false;
      } else if (pushed.status().code() == absl::StatusCode::kAborted) {
        // Stale: the window closed without this contribution.
        result.stale = true;
        need_push = false;
      } else if (!Retryable(static_cast<grpc::StatusCode>(pushed.status().code())) &&
                 pushed.status().code() != absl::StatusCode::kFailedPrecondition) {
        return pushed.status();
      } else if (absl::Now() >= deadline) {
        return pushed.status();
      }
      // Otherwise (server gone, or it lost our membership in a restart):
      // fall through to rejoin and look at the server's version.
    }
    if (!need_push) {
      v1::ParametersHeader header;
      // Our contribution's key goes along: a server that restarted between
      // acknowledging it and this pull says so instead of waiting.
      absl::Status pulled =
          Pull(window + 1, deadline - absl::Now(), &header, result.stale ? std::nullopt : std::optional<uint64_t>(window));
      if (pulled.ok() && version_ > window) {
        result.version = version_;
        result.loss = header.loss();
        result.lr = header.lr();
        result.job_done = header.job_done();
        return result;
      }
      if (!pulled.ok() && !Retryable(static_cast<grpc::StatusCode>(pulled.code())) &&
          pulled.code() != absl::StatusCode::kFailedPrecondition) {
        return pulled;
      }
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrFormat("window %d did not close within %s", window, absl::FormatDuration(options_.window_timeout)));
      }
    }
    // The server went away: join again and see where it stands.
    ++result.reconnects;
    GRADACC_ASSIGN_OR_RETURN(v1::JoinResponse joined, Rejoin(deadline));
    if (joined.version() < window) {
      return absl::DataLossError(absl::StrFormat(
          "the server is at version %d but this worker already holds version %d: it lost state (restart it with "
          "--checkpoint_every=1 to make every broadcast version durable)",
          joined.version(), window));
    }
    // version == window: the server does not have our contribution (any
    // more): push it again, same key. version > window: it closed the
    // window; pull.
    need_push = joined.version() == window && !result.stale;
  }
}

absl::Status Client::ReportTestAccuracy(double accuracy, uint64_t step) {
  v1::ReportMetricRequest request;
  request.set_job_id(job_.job_id());
  request.set_worker(options_.worker);
  request.set_step(step);
  request.set_test_accuracy(accuracy);
  v1::ReportMetricResponse response;
  grpc::ClientContext ctx;
  Authenticate(ctx, options_.connection.token);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  return FromGrpc(shards_[0].stubs->control->ReportMetric(&ctx, request, &response), "report metric");
}

absl::StatusOr<v1::Status> Client::GetStatus() {
  v1::Status status;
  grpc::ClientContext ctx;
  Authenticate(ctx, options_.connection.token);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  GRADACC_RETURN_IF_ERROR(FromGrpc(shards_[0].stubs->control->GetStatus(&ctx, v1::GetStatusRequest(), &status), "status"));
  return status;
}

absl::Status Client::Leave() {
  const absl::Time deadline = absl::Now() + options_.rpc_timeout;
  absl::Status result;
  for (Shard& shard : shards_) {
    absl::Duration backoff = options_.retry_backoff;
    while (true) {
      v1::LeaveRequest request;
      request.set_job_id(job_.job_id());
      request.set_worker(options_.worker);
      v1::LeaveResponse response;
      grpc::ClientContext ctx;
      Authenticate(ctx, options_.connection.token);
      ctx.set_deadline(absl::ToChronoTime(deadline));
      ctx.set_wait_for_ready(true);
      absl::Status s = FromGrpc(shard.stubs->data->Leave(&ctx, request, &response), "leave " + shard.address);
      if (s.ok()) break;
      if (!Retryable(static_cast<grpc::StatusCode>(s.code())) || absl::Now() + backoff >= deadline) {
        result = s;
        break;
      }
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(backoff));
      backoff = std::min(backoff * 2, absl::Seconds(2));
    }
  }
  return result;
}

}  // namespace gradacc
