#include "server/version_publisher.h"

#include <grpc/slice.h>

#include <algorithm>
#include <utility>

#include "common/errors.h"
#include "common/kernels.h"
#include "common/parallel.h"
#include "common/wire.h"

namespace gradacc {

namespace {

// Where each chunk goes: (tensor, offset in the tensor, first flat element,
// elements), and where its message starts in the snapshot's buffer.
struct Piece {
  uint32_t tensor;
  uint64_t offset, flat, n;
  size_t at;
};

std::vector<Piece> SnapshotPieces(const ModelLayout& layout, FlatRange range, uint64_t chunk_elements, size_t* total) {
  const uint64_t chunk = std::max<uint64_t>(1, chunk_elements);
  std::vector<Piece> pieces;
  *total = 0;
  for (size_t i = 0; i < layout.tensors().size(); ++i) {
    const ModelLayout::Tensor& t = layout.tensors()[i];
    const FlatRange part = PartOf(t, range.begin, range.end);
    for (uint64_t flat = part.begin; flat < part.end; flat += chunk) {
      const uint64_t n = std::min(chunk, part.end - flat);
      pieces.push_back({static_cast<uint32_t>(i), flat - t.offset, flat, n, *total});
      *total += ChunkPrefixSize(pieces.back().tensor, pieces.back().offset, n * sizeof(float)) + n * sizeof(float);
    }
  }
  return pieces;
}

// A pooled buffer lent to one slice; back to the pool when the slice goes.
struct Lent {
  std::shared_ptr<BufferPool> pool;
  FloatBuffer buffer;
};

grpc::Slice SliceOf(const std::shared_ptr<BufferPool>& memory, size_t bytes) {
  if (memory == nullptr || bytes == 0) return grpc::Slice(bytes);
  auto* lent = new Lent{memory, memory->Take()};
  if (lent->buffer.size() * sizeof(float) < bytes) {  // not this snapshot's pool
    delete lent;
    return grpc::Slice(bytes);
  }
  grpc_slice slice = grpc_slice_new_with_user_data(
      lent->buffer.data(), bytes,
      [](void* p) {
        auto* back = static_cast<Lent*>(p);
        back->pool->Return(std::move(back->buffer));
        delete back;
      },
      lent);
  return grpc::Slice(slice, grpc::Slice::STEAL_REF);
}

}  // namespace

size_t SnapshotBytes(const ModelLayout& layout, FlatRange range, uint64_t chunk_elements) {
  size_t total = 0;
  SnapshotPieces(layout, range, chunk_elements, &total);
  return total;
}

std::shared_ptr<const ParamSnapshot> MakeSnapshot(const ModelLayout& layout, FlatRange range,
                                                  absl::Span<const float> params, const SnapshotFields& fields,
                                                  uint64_t chunk_elements, bool with_chunks,
                                                  const std::shared_ptr<BufferPool>& memory) {
  auto snap = std::make_shared<ParamSnapshot>();
  snap->version = fields.version;
  v1::ParametersHeader* h = snap->header.mutable_header();
  h->set_version(fields.version);
  h->set_step(fields.version);
  h->set_job_done(fields.job_done);
  h->set_lr(fields.lr);
  h->set_loss(fields.loss);
  h->set_num_elements(range.size());
  if (fields.plan.id() != 0) *h->mutable_plan() = fields.plan;
  h->set_loss_scale(fields.loss_scale);
  h->set_skipped(fields.skipped);
  snap->has_chunks = with_chunks;
  if (!with_chunks) return snap;
  size_t total = 0;
  const std::vector<Piece> pieces = SnapshotPieces(layout, range, chunk_elements, &total);
  // One allocation; each chunk's message is a slice of it.
  grpc::Slice all = SliceOf(memory, total);
  char* const base = reinterpret_cast<char*>(const_cast<uint8_t*>(all.begin()));
  ParallelFor(
      pieces.size(),
      [&](size_t first, size_t last) {
        for (size_t i = first; i < last; ++i) {
          const Piece& p = pieces[i];
          char* data = WriteChunkPrefix(base + p.at, p.tensor, p.offset, p.n * sizeof(float));
          CopyToLittleEndian(params.subspan(p.flat - range.begin, p.n), data);
        }
      },
      /*min_per_thread=*/std::max<size_t>(1, kParallelMinElements / std::max<uint64_t>(1, chunk_elements)),
      /*align=*/1);
  snap->chunks.reserve(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    grpc::Slice message = all.sub(pieces[i].at, i + 1 < pieces.size() ? pieces[i + 1].at : total);
    snap->chunks.push_back({grpc::ByteBuffer(&message, 1), pieces[i].n * sizeof(float)});
  }
  return snap;
}

VersionPublisher::VersionPublisher(std::shared_ptr<const ParamSnapshot> initial, DeadlineQueue* deadlines,
                                   absl::Duration max_wait, bool keep_previous,
                                   std::shared_ptr<const ParamSnapshot> previous)
    : deadlines_(deadlines),
      max_wait_(max_wait),
      keep_previous_(keep_previous),
      current_(std::move(initial)),
      previous_(keep_previous ? std::move(previous) : nullptr) {}

std::shared_ptr<const ParamSnapshot> VersionPublisher::Current() const {
  MutexLock lock(&mu_);
  return current_;
}

std::shared_ptr<const ParamSnapshot> VersionPublisher::Exact(uint64_t version) const {
  MutexLock lock(&mu_);
  if (current_->version == version && !current_->retired) return current_;
  if (previous_ != nullptr && previous_->version == version && previous_->has_chunks) return previous_;
  return nullptr;
}

uint64_t VersionPublisher::Wait(uint64_t min_version, Callback done) {
  absl::StatusOr<std::shared_ptr<const ParamSnapshot>> answer;
  {
    MutexLock lock(&mu_);
    if (stopped_) {
      answer = Refusal(v1::ERROR_REASON_SHUTTING_DOWN, "server is shutting down");
    } else if (current_->version >= min_version || current_->job_done()) {
      answer = current_;
    } else {
      const uint64_t id = next_id_++;
      const uint64_t timer = deadlines_->Schedule(absl::Now() + max_wait_, [this, id] { Expire(id); });
      parked_[id] = Parked{min_version, std::move(done), timer};
      return id;
    }
  }
  done(std::move(answer));
  return 0;
}

bool VersionPublisher::Cancel(uint64_t id) {
  uint64_t timer;
  {
    MutexLock lock(&mu_);
    auto it = parked_.find(id);
    if (it == parked_.end()) return false;
    timer = it->second.timer;
    parked_.erase(it);
  }
  deadlines_->Cancel(timer);
  return true;
}

void VersionPublisher::Expire(uint64_t id) {
  Callback done;
  {
    MutexLock lock(&mu_);
    auto it = parked_.find(id);
    if (it == parked_.end()) return;
    done = std::move(it->second.done);
    parked_.erase(it);
  }
  done(Refusal(v1::ERROR_REASON_PULL_TIMEOUT,
               "the requested version was not published within the server's pull bound (--max_pull_wait_s)"));
}

std::vector<VersionPublisher::Ready> VersionPublisher::Publish(std::shared_ptr<const ParamSnapshot> snapshot) {
  std::vector<Ready> ready;
  std::vector<uint64_t> timers;
  {
    MutexLock lock(&mu_);
    if (keep_previous_ && current_->version < snapshot->version) previous_ = std::move(current_);
    current_ = snapshot;
    for (auto it = parked_.begin(); it != parked_.end();) {
      if (it->second.min_version <= snapshot->version || snapshot->job_done()) {
        timers.push_back(it->second.timer);
        ready.push_back([done = std::move(it->second.done), snapshot] { done(snapshot); });
        it = parked_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (uint64_t t : timers) deadlines_->Cancel(t);
  return ready;
}

bool VersionPublisher::Retire() {
  std::shared_ptr<const ParamSnapshot> old;  // let go outside the lock
  MutexLock lock(&mu_);
  if (keep_previous_ || !current_->has_chunks || current_.use_count() != 1) return false;
  auto header_only = std::make_shared<ParamSnapshot>();
  header_only->version = current_->version;
  header_only->header = current_->header;
  header_only->has_chunks = false;
  header_only->retired = true;
  old = std::exchange(current_, std::move(header_only));
  return true;
}

void VersionPublisher::Complete(std::shared_ptr<const ParamSnapshot> with_chunks) {
  MutexLock lock(&mu_);
  if (current_->version == with_chunks->version) current_ = std::move(with_chunks);
}

std::vector<VersionPublisher::Ready> VersionPublisher::Stop() {
  std::vector<Ready> ready;
  std::vector<uint64_t> timers;
  {
    MutexLock lock(&mu_);
    stopped_ = true;
    for (auto& [id, p] : parked_) {
      timers.push_back(p.timer);
      ready.push_back([done = std::move(p.done)] {
        done(Refusal(v1::ERROR_REASON_SHUTTING_DOWN, "server is shutting down"));
      });
    }
    parked_.clear();
  }
  for (uint64_t t : timers) deadlines_->Cancel(t);
  return ready;
}

}  // namespace gradacc
