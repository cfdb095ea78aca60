#include "server/request_validator.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/errors.h"

namespace gradacc {
namespace {

constexpr uint64_t kMaxSamples = uint64_t{1} << 40;

}  // namespace

RequestValidator::RequestValidator(const v1::JobSpec* spec, const ModelLayout* layout, uint32_t num_workers,
                                   FlatRange range, uint32_t shard, uint32_t num_shards)
    : spec_(spec), layout_(layout), num_workers_(num_workers), range_(range), shard_(shard),
      num_shards_(num_shards) {}

absl::Status RequestValidator::CheckCaller(absl::string_view job_id, uint32_t worker) const {
  if (!job_id.empty() && job_id != spec_->job_id()) {
    return Refusal(v1::ERROR_REASON_UNKNOWN_JOB,
                   absl::StrCat("unknown job '", job_id, "'; this server runs job '", spec_->job_id(), "'"));
  }
  if (worker >= num_workers_) {
    return Refusal(v1::ERROR_REASON_UNKNOWN_WORKER,
                   absl::StrFormat("unknown worker %d: job '%s' has %d workers (0..%d)", worker, spec_->job_id(),
                                   num_workers_, num_workers_ - 1),
                   {{"worker", absl::StrCat(worker)}});
  }
  return absl::OkStatus();
}

absl::Status RequestValidator::CheckCovers(uint32_t worker,
                                           const google::protobuf::RepeatedField<uint32_t>& covers) const {
  for (int i = 0; i < covers.size(); ++i) {
    const uint32_t c = covers[i];
    if (c >= num_workers_ || c == worker || (i > 0 && c <= covers[i - 1])) {
      return Refusal(v1::ERROR_REASON_COVERS,
                     absl::StrFormat("covers must list other workers of this job in increasing order; got %s for "
                                     "worker %d",
                                     absl::StrJoin(covers, ","), worker));
    }
  }
  if (!covers.empty() && spec_->window().max_workers() > 0) {
    return Refusal(v1::ERROR_REASON_UNSUPPORTED,
                   "hierarchical reduction (covers) needs a fixed membership, not an elastic job");
  }
  return absl::OkStatus();
}

absl::Status RequestValidator::CheckJoin(const v1::JoinRequest& request) const {
  if (absl::Status s = CheckCaller(request.job_id(), request.worker()); !s.ok()) return s;
  return CheckCovers(request.worker(), request.covers());
}

absl::Status RequestValidator::CheckManifest(const v1::PushHeader& h) const {
  const auto& tensors = layout_->tensors();
  if (static_cast<size_t>(h.tensors_size()) != tensors.size()) {
    return Refusal(v1::ERROR_REASON_MANIFEST, absl::StrFormat("push lists %d tensors; job '%s' has %d",
                                                              h.tensors_size(), spec_->job_id(), tensors.size()));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const v1::TensorShape& got = h.tensors(static_cast<int>(i));
    if (got.name() != tensors[i].name) {
      return Refusal(v1::ERROR_REASON_MANIFEST,
                     absl::StrFormat("push lists tensor %d as '%s'; the job's tensor %d is '%s'", i, got.name(), i,
                                     tensors[i].name),
                     {{"tensor", tensors[i].name}});
    }
    if (!std::equal(got.shape().begin(), got.shape().end(), tensors[i].shape.begin(), tensors[i].shape.end())) {
      return Refusal(v1::ERROR_REASON_MANIFEST,
                     absl::StrFormat("push says tensor '%s' has shape [%s]; the job says [%s]", got.name(),
                                     absl::StrJoin(got.shape(), ","), absl::StrJoin(tensors[i].shape, ",")),
                     {{"tensor", tensors[i].name}});
    }
  }
  return absl::OkStatus();
}

absl::Status RequestValidator::CheckPushHeader(const v1::PushHeader& h) const {
  if (absl::Status s = CheckCaller(h.job_id(), h.worker()); !s.ok()) return s;
  if (h.num_elements() != range_.size()) {
    return Refusal(v1::ERROR_REASON_SIZE,
                   num_shards_ > 1
                       ? absl::StrFormat("push declares %d elements; shard %d of %d owns %d (elements [%d, %d))",
                                         h.num_elements(), shard_, num_shards_, range_.size(), range_.begin,
                                         range_.end)
                       : absl::StrFormat("push declares %d elements; the model has %d", h.num_elements(),
                                         range_.size()));
  }
  if (h.samples() > kMaxSamples) {
    return Refusal(v1::ERROR_REASON_SAMPLES, absl::StrCat("push declares an absurd sample count ", h.samples()));
  }
  // (A loss-scaling job's overflowing window may bring a non-finite loss:
  // it is skipped, not refused.)
  if (!std::isfinite(h.loss_sum()) && !spec_->has_loss_scaling()) {
    return Refusal(v1::ERROR_REASON_NOT_FINITE, "push declares a loss sum that is NaN or Inf");
  }
  if (!v1::WireFormat_IsValid(h.wire_format())) {
    return Refusal(v1::ERROR_REASON_WIRE_FORMAT, absl::StrCat("unknown wire format ", h.wire_format()));
  }
  if (h.tensors_size() > 0) {
    if (absl::Status s = CheckManifest(h); !s.ok()) return s;
  }
  if (absl::Status s = CheckUntouched(h); !s.ok()) return s;
  return CheckCovers(h.worker(), h.covers());
}

absl::Status RequestValidator::CheckUntouched(const v1::PushHeader& h) const {
  const auto& untouched = h.untouched_tensors();
  const size_t tensors = layout_->tensors().size();
  for (int i = 0; i < untouched.size(); ++i) {
    if (untouched[i] >= tensors || (i > 0 && untouched[i] <= untouched[i - 1])) {
      return Refusal(v1::ERROR_REASON_BAD_VALUE,
                     absl::StrFormat("untouched_tensors must list tensor indices below %d in increasing order; "
                                     "entry %d is %d%s",
                                     tensors, i, untouched[i], i > 0 ? absl::StrCat(" after ", untouched[i - 1]) : ""),
                     {{"field", "untouched_tensors"}});
    }
  }
  return absl::OkStatus();
}

}  // namespace gradacc
