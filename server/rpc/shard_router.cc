#include "server/rpc/shard_router.h"

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/errors.h"
#include "common/wire.h"

namespace gradacc {

absl::StatusOr<const ServedShard*> ShardRouter::Route(const grpc::CallbackServerContext* context,
                                                      bool job_wide) const {
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find(kShardMetadataKey);
  auto served = [this] {
    return absl::StrJoin(shards_, ", ", [](std::string* out, const ServedShard& s) { absl::StrAppend(out, s.index); });
  };
  if (it == metadata.end()) {
    if (shards_.size() == 1 || job_wide) return &shards_.front();
    return Refusal(v1::ERROR_REASON_WRONG_SHARD,
                   absl::StrCat("this address serves shards ", served(), " of the job: name the shard in the '",
                                kShardMetadataKey, "' metadata"));
  }
  uint32_t index = 0;
  const std::string value(it->second.data(), it->second.size());
  if (absl::SimpleAtoi(value, &index)) {
    for (const ServedShard& s : shards_) {
      if (s.index == index) return &s;
    }
  }
  return Refusal(v1::ERROR_REASON_WRONG_SHARD,
                 absl::StrCat("'", kShardMetadataKey, ": ", value, "' is not a shard served at this address (",
                              shards_.size() == 1 ? "shard " : "shards ", served(),
                              "): the worker's server list is not in shard order, or names another job's servers"));
}

}  // namespace gradacc
