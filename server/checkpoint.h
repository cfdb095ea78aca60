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

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/buffer.h"
#include "common/job_spec.h"
#include "common/env.h"
#include "gradacc/v1/checkpoint.pb.h"

namespace gradacc {

struct Checkpoint {
  std::string name;  // folder name, e.g. ckpt-00000000000000000012
  v1::CheckpointState state;
  FloatBuffer params;
  std::vector<std::pair<std::string, FloatBuffer>> optimizer;
};

// Files are created 0600 and folders 0700 (common/files.h). `before_rename`
// runs once the temporary folder is complete (a failpoint for tests). Every
// file operation goes through `env` (null: the real file system).
absl::Status WriteCheckpoint(const std::string& dir, const ModelLayout& layout, const v1::CheckpointState& state,
                             absl::Span<const float> params,
                             const std::vector<std::pair<std::string, const FloatBuffer*>>& optimizer, int keep,
                             const std::function<void()>& before_rename = nullptr, Env* env = nullptr);

// Removes the temporary folders (".tmp-ckpt-<step>-<pid>", nothing else)
// that a server killed while writing a checkpoint left in `dir`, unless
// their process is alive and not this one. Call before the first write.
// Returns a line for each folder removed or kept.
std::vector<std::string> RemoveTemporaryCheckpoints(const std::string& dir);

// The newest checkpoint that verifies. Every newer one that does not is
// skipped with a line in `notes` saying why. NOT_FOUND when the folder holds
// no checkpoint at all; DATA_LOSS when it holds only corrupt ones.
absl::StatusOr<Checkpoint> LoadNewestCheckpoint(const std::string& dir, std::vector<std::string>* notes,
                                                Env* env = nullptr);

// The checkpoint of exactly `version`, verified; NOT_FOUND when there is
// none (not kept), DATA_LOSS when it is corrupt.
absl::StatusOr<Checkpoint> LoadCheckpointOfVersion(const std::string& dir, uint64_t version, Env* env = nullptr);

// Folder names of the checkpoints in `dir`, newest first.
std::vector<std::string> ListCheckpoints(const std::string& dir, Env* env = nullptr);

}  // namespace gradacc

#endif  // GRADACC_SERVER_CHECKPOINT_H_
