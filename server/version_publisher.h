// VersionPublisher: the published parameter version and the pulls parked
// until a newer one exists (ps-lite's "the server may answer later").
//
// A version's snapshot (ParamSnapshot) is serialised once and shared,
// read-only, by every pull that asks for it. Publish makes a version
// visible and hands back the parked pulls it satisfies, to be answered by
// the caller outside every lock. A parked pull is bounded: the deadline
// queue finishes it with PULL_TIMEOUT.
//
// Thread-safe. Callbacks never run under the publisher's lock.
#ifndef GRADACC_SERVER_VERSION_PUBLISHER_H_
#define GRADACC_SERVER_VERSION_PUBLISHER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include <grpcpp/support/byte_buffer.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/job_spec.h"
#include "common/mutex.h"
#include "gradacc/v1/data.pb.h"
#include "server/buffer_pool.h"
#include "server/deadline_queue.h"

namespace gradacc {

// The parameters of one version, serialised once: every chunk is a
// PullResponse message as it goes on the wire (common/wire.h), a slice of
// one allocation, which every pull of the version writes without copying.
// When every member of the window moves data through shared memory the
// chunks are not built (has_chunks = false); a gRPC pull then has them
// built on demand.
struct ParamSnapshot {
  struct Chunk {
    grpc::ByteBuffer message;  // a serialised PullResponse, kind = chunk
    size_t payload_bytes = 0;
  };
  uint64_t version = 0;
  v1::PullResponse header;    // kind = header
  std::vector<Chunk> chunks;  // tensors in order
  bool has_chunks = true;
  // Retired: the version's chunks were given back for the next version's
  // (VersionPublisher::Retire); pulls of it wait for that one.
  bool retired = false;
  bool job_done() const { return header.header().job_done(); }
};

struct SnapshotFields {
  uint64_t version = 0;
  bool job_done = false;
  double lr = 0;
  double loss = 0;
  v1::WindowPlan plan;  // a job with a data plan: version's window's (id 0: none)
  float loss_scale = 0;  // a loss-scaling job: version's window's scale
  bool skipped = false;  // loss scaling: window version - 1 was skipped
};

// Bytes of a snapshot's chunks (messages and payloads) for these arguments.
size_t SnapshotBytes(const ModelLayout& layout, FlatRange range, uint64_t chunk_elements);

// Serialises `params` (the elements [range.begin, range.end) of the model)
// into a snapshot; `chunk_elements` per chunk, none when !with_chunks. The
// chunks are written into a buffer of `memory` (null: a fresh allocation),
// which goes back to it when the last pull of the version lets go: a fresh
// 64 MiB costs 16 Ki page faults on the step's path. Buffers of `memory`
// must hold SnapshotBytes; the copy is spread over ParallelFor's threads.
std::shared_ptr<const ParamSnapshot> MakeSnapshot(const ModelLayout& layout, FlatRange range,
                                                  absl::Span<const float> params, const SnapshotFields& fields,
                                                  uint64_t chunk_elements, bool with_chunks,
                                                  const std::shared_ptr<BufferPool>& memory = nullptr);

class VersionPublisher {
 public:
  using Callback = std::function<void(absl::StatusOr<std::shared_ptr<const ParamSnapshot>>)>;
  // A callback with its argument, ready to run outside the locks.
  using Ready = std::function<void()>;

  // `keep_previous` (sharded servers): the version before the current one
  // stays available to Exact (see PullRequest.exact_version); `previous` is
  // that version when the server starts (a resumed shard reads it from its
  // previous checkpoint), or null.
  VersionPublisher(std::shared_ptr<const ParamSnapshot> initial, DeadlineQueue* deadlines, absl::Duration max_wait,
                   bool keep_previous = false, std::shared_ptr<const ParamSnapshot> previous = nullptr);

  std::shared_ptr<const ParamSnapshot> Current() const;
  // The snapshot of exactly `version` when it is the current one or the
  // kept previous one (with its chunks); null otherwise.
  std::shared_ptr<const ParamSnapshot> Exact(uint64_t version) const;
  // Calls `done` with the snapshot of a version >= min_version (at once
  // when it exists or the job is done), else parks it. Returns an id for
  // Cancel, 0 when `done` already ran.
  uint64_t Wait(uint64_t min_version, Callback done);
  // True when the pull was parked and will not be called.
  bool Cancel(uint64_t id);
  // Makes `snapshot` current; returns the parked pulls it satisfies.
  std::vector<Ready> Publish(std::shared_ptr<const ParamSnapshot> snapshot);
  // While the next version is built: when nothing but the publisher holds
  // the current snapshot and no previous version is kept, replaces it by its
  // header alone (retired), so that its chunks' memory goes back to their
  // pool for the next version's — one snapshot's memory instead of two.
  // Pulls that come meanwhile get the retired snapshot (no chunks: a gRPC
  // pull asks the trainer thread, which answers after the next Publish);
  // Exact no longer returns it. Returns whether it was retired.
  bool Retire();
  // Replaces the current snapshot by the same version with its chunks.
  void Complete(std::shared_ptr<const ParamSnapshot> with_chunks);
  // Every parked pull finishes with SHUTTING_DOWN; later Waits too.
  std::vector<Ready> Stop();

 private:
  struct Parked {
    uint64_t min_version;
    Callback done;
    uint64_t timer;
  };
  void Expire(uint64_t id);

  DeadlineQueue* const deadlines_;
  const absl::Duration max_wait_;
  mutable Mutex mu_;
  const bool keep_previous_;
  std::shared_ptr<const ParamSnapshot> current_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const ParamSnapshot> previous_ ABSL_GUARDED_BY(mu_);  // keep_previous_ only
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Parked> parked_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_VERSION_PUBLISHER_H_
