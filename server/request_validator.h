// RequestValidator: the one place that decides whether a request names this
// job and a worker it has, and whether a push header is well-formed (sizes,
// counts, wire format, manifest), before any state is looked at. Join, push,
// pull, leave, attach and report all ask it, so they cannot drift apart.
// Every refusal carries its reason (common/errors.h).
//
// Immutable after construction; thread-safe.
#ifndef GRADACC_SERVER_REQUEST_VALIDATOR_H_
#define GRADACC_SERVER_REQUEST_VALIDATOR_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/job_spec.h"
#include "gradacc/v1/data.pb.h"
#include "gradacc/v1/job.pb.h"

namespace gradacc {

class RequestValidator {
 public:
  // `num_workers`: the worker ids the job accepts (max_workers when
  // elastic); `range`: the flat elements this server owns.
  RequestValidator(const v1::JobSpec* spec, const ModelLayout* layout, uint32_t num_workers, FlatRange range,
                   uint32_t shard, uint32_t num_shards);

  // UNKNOWN_JOB (a non-empty job_id that is not this job's) or
  // UNKNOWN_WORKER.
  absl::Status CheckCaller(absl::string_view job_id, uint32_t worker) const;
  // CheckCaller, then the header's own fields: SIZE, SAMPLES, NOT_FINITE
  // (loss; not in a loss-scaling job), WIRE_FORMAT, MANIFEST, BAD_VALUE (untouched_tensors), COVERS
  // (not other workers in increasing order).
  absl::Status CheckPushHeader(const v1::PushHeader& h) const;
  // CheckCaller and the covers of a join.
  absl::Status CheckJoin(const v1::JoinRequest& request) const;

  uint32_t num_workers() const { return num_workers_; }

 private:
  absl::Status CheckManifest(const v1::PushHeader& h) const;
  absl::Status CheckCovers(uint32_t worker, const google::protobuf::RepeatedField<uint32_t>& covers) const;
  // BAD_VALUE unless untouched_tensors are job tensor indices in increasing order.
  absl::Status CheckUntouched(const v1::PushHeader& h) const;

  const v1::JobSpec* const spec_;
  const ModelLayout* const layout_;
  const uint32_t num_workers_;
  const FlatRange range_;
  const uint32_t shard_;
  const uint32_t num_shards_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_REQUEST_VALIDATOR_H_
