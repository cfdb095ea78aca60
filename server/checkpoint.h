// Durable server state: checkpoints written atomically and verified when
// read back.
//
// A checkpoint is a folder <dir>/ckpt-<version, 20 digits>/ holding
//   params.safetensors  the parameters (one tensor per model tensor) and the
//                       optimizer's state ("optimizer/<buffer>", flat)
//   state.binpb         gradacc.v1.CheckpointState (step, ledger, job, ...)
//   MANIFEST            size and CRC-32 of both files, and its own CRC-32
// It is written into a temporary folder (files fsync'ed, folder fsync'ed),
// then renamed into place and the parent folder fsync'ed, so a crash leaves
// either the whole checkpoint or none. Free functions; thread-compatible.
#ifndef GRADACC_SERVER_CHECKPOINT_H_
#define GRADACC_SERVER_CHECKPOINT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/buffer.h"
#include "common/job_spec.h"
#include "gradacc/v1/checkpoint.pb.h"

namespace gradacc {

struct Checkpoint {
  std::string name;  // folder name, e.g. ckpt-00000000000000000012
  v1::CheckpointState state;
  FloatBuffer params;
  std::vector<std::pair<std::string, FloatBuffer>> optimizer;
};

absl::Status WriteCheckpoint(const std::string& dir, const ModelLayout& layout, const v1::CheckpointState& state,
                             absl::Span<const float> params,
                             const std::vector<std::pair<std::string, const FloatBuffer*>>& optimizer, int keep);

// The newest checkpoint that verifies. Every newer one that does not is
// skipped with a line in `notes` saying why. NOT_FOUND when the folder holds
// no checkpoint at all; DATA_LOSS when it holds only corrupt ones.
absl::StatusOr<Checkpoint> LoadNewestCheckpoint(const std::string& dir, std::vector<std::string>* notes);

// Folder names of the checkpoints in `dir`, newest first.
std::vector<std::string> ListCheckpoints(const std::string& dir);

}  // namespace gradacc

#endif  // GRADACC_SERVER_CHECKPOINT_H_
