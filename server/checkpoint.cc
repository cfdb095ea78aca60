#include "server/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "common/safetensors.h"
#include "common/status_macros.h"

namespace gradacc {
namespace {

constexpr char kPrefix[] = "ckpt-";
constexpr char kParams[] = "params.safetensors";
constexpr char kState[] = "state.binpb";
constexpr char kManifest[] = "MANIFEST";

uint32_t Crc(absl::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes uInt lengths: feed large buffers in pieces.
  while (!bytes.empty()) {
    const size_t n = std::min<size_t>(bytes.size(), 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(n));
    bytes.remove_prefix(n);
  }
  return static_cast<uint32_t>(crc);
}

// Only the files a checkpoint holds: a folder with anything else stays.
bool RemoveCheckpointDir(const std::string& path, Env* env = nullptr) {
  for (const char* f : {kParams, kState, kManifest}) (void)Env::OrDefault(env)->RemoveFile(absl::StrCat(path, "/", f));
  const absl::Status s = Env::OrDefault(env)->RemoveDirectory(path);
  return s.ok() || absl::IsNotFound(s);
}

std::string ManifestLine(absl::string_view file, absl::string_view bytes) {
  return absl::StrFormat("%s %d %08x\n", file, bytes.size(), Crc(bytes));
}

// Checks the manifest's own CRC and each file's size and CRC.
absl::Status Verify(const std::string& path, const std::string& manifest, const std::string& params,
                    const std::string& state) {
  const size_t last = manifest.rfind("manifest ");
  if (last == std::string::npos) return absl::DataLossError("MANIFEST has no checksum line (truncated?)");
  const std::string body = manifest.substr(0, last);
  uint32_t want = 0;
  if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(absl::string_view(manifest).substr(last + 9)), &want) ||
      want != Crc(body)) {
    return absl::DataLossError("MANIFEST checksum mismatch");
  }
  if (body != absl::StrCat("gradacc-checkpoint 1\n", ManifestLine(kParams, params), ManifestLine(kState, state))) {
    return absl::DataLossError(absl::StrFormat(
        "file sizes or checksums differ from MANIFEST (%s: %d bytes, crc %08x; %s: %d bytes, crc %08x)", kParams,
        params.size(), Crc(params), kState, state.size(), Crc(state)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint> LoadOne(const std::string& dir, const std::string& name, Env* env) {
  const std::string path = absl::StrCat(dir, "/", name);
  GRADACC_ASSIGN_OR_RETURN(std::string manifest, ReadFileToString(path + "/" + kManifest, env));
  GRADACC_ASSIGN_OR_RETURN(std::string params, ReadFileToString(path + "/" + kParams, env));
  GRADACC_ASSIGN_OR_RETURN(std::string state_bytes, ReadFileToString(path + "/" + kState, env));
  GRADACC_RETURN_IF_ERROR(Verify(path, manifest, params, state_bytes));
  Checkpoint c;
  c.name = name;
  if (!c.state.ParseFromString(state_bytes)) return absl::DataLossError("state.binpb does not parse");
  GRADACC_ASSIGN_OR_RETURN(ModelLayout layout, ModelLayout::FromSpec(c.state.job().model()));
  GRADACC_ASSIGN_OR_RETURN(SafetensorsContents tensors, DecodeSafetensors(params));
  const bool sharded = c.state.num_shards() > 1;
  const uint64_t size = sharded ? c.state.shard_end() - c.state.shard_begin() : layout.num_elements();
  c.params = FloatBuffer(size);
  if (sharded) {
    auto it = tensors.tensors.find("shard_params");
    if (it == tensors.tensors.end() || it->second.data.size() != size) {
      return absl::DataLossError("shard_params missing or resized");
    }
    std::copy(it->second.data.begin(), it->second.data.end(), c.params.data());
  }
  for (const ModelLayout::Tensor& t : sharded ? std::vector<ModelLayout::Tensor>() : layout.tensors()) {
    auto it = tensors.tensors.find(t.name);
    if (it == tensors.tensors.end() || it->second.data.size() != t.size) {
      return absl::DataLossError(absl::StrCat("tensor '", t.name, "' missing or resized"));
    }
    std::copy(it->second.data.begin(), it->second.data.end(), c.params.data() + t.offset);
  }
  for (const std::string& b : c.state.optimizer_buffers()) {
    auto it = tensors.tensors.find("optimizer/" + b);
    if (it == tensors.tensors.end() || it->second.data.size() != size) {
      return absl::DataLossError(absl::StrCat("optimizer buffer '", b, "' missing or resized"));
    }
    FloatBuffer buf(size);
    std::copy(it->second.data.begin(), it->second.data.end(), buf.data());
    c.optimizer.emplace_back(b, std::move(buf));
  }
  return c;
}

// ".tmp-ckpt-<20 digits>-<pid>": the temporary folder WriteCheckpoint
// makes. Sets `pid`.
bool IsTemporaryCheckpoint(const std::string& name, pid_t* pid) {
  const std::string prefix = absl::StrCat(".tmp-", kPrefix);
  if (name.rfind(prefix, 0) != 0) return false;
  const std::string rest = name.substr(prefix.size());
  if (rest.size() < 22 || rest[20] != '-') return false;
  uint64_t step;
  int64_t id;
  if (!absl::SimpleAtoi(rest.substr(0, 20), &step) || !absl::SimpleAtoi(rest.substr(21), &id) || id <= 0) {
    return false;
  }
  for (char c : rest.substr(21)) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  *pid = static_cast<pid_t>(id);
  return true;
}

}  // namespace

std::vector<std::string> RemoveTemporaryCheckpoints(const std::string& dir) {
  std::vector<std::string> notes;
  std::vector<std::pair<std::string, pid_t>> found;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return notes;
  while (dirent* e = ::readdir(d)) {
    pid_t pid = 0;
    if (IsTemporaryCheckpoint(e->d_name, &pid)) found.emplace_back(e->d_name, pid);
  }
  ::closedir(d);
  for (const auto& [name, pid] : found) {
    // Another live process may be writing it (two servers on one folder is
    // a mistake, but not ours to break); a pid that is ours is a leftover of
    // an earlier life under the same pid (PID 1 in a container).
    if (pid != ::getpid() && (::kill(pid, 0) == 0 || errno == EPERM)) {
      notes.push_back(absl::StrCat("temporary checkpoint folder ", dir, "/", name, " is left alone: process ", pid,
                                   " is alive"));
      continue;
    }
    const std::string path = absl::StrCat(dir, "/", name);
    notes.push_back(RemoveCheckpointDir(path)
                        ? absl::StrCat("removed ", path, ", a checkpoint that a killed server did not finish")
                        : absl::StrCat("cannot remove ", path, " (", std::strerror(errno), ")"));
  }
  if (!found.empty()) (void)SyncDirectory(dir);
  return notes;
}

std::vector<std::string> ListCheckpoints(const std::string& dir, Env* env) {
  std::vector<std::string> names;
  for (const std::string& n : Env::OrDefault(env)->ListDirectory(dir)) {
    uint64_t v;
    if (n.size() == 5 + 20 && n.rfind(kPrefix, 0) == 0 && absl::SimpleAtoi(n.substr(5), &v)) names.push_back(n);
  }
  std::sort(names.rbegin(), names.rend());
  return names;
}

absl::Status WriteCheckpoint(const std::string& dir, const ModelLayout& layout, const v1::CheckpointState& state,
                             absl::Span<const float> params,
                             const std::vector<std::pair<std::string, const FloatBuffer*>>& optimizer, int keep,
                             const std::function<void()>& before_rename, Env* env) {
  env = Env::OrDefault(env);
  GRADACC_RETURN_IF_ERROR(MakePrivateDirectory(dir, env));
  std::vector<NamedTensor> tensors;
  if (state.num_shards() > 1) {
    tensors.push_back({"shard_params", {params.size()}, params});
  } else {
    for (const ModelLayout::Tensor& t : layout.tensors()) {
      tensors.push_back({t.name, t.shape, params.subspan(t.offset, t.size)});
    }
  }
  v1::CheckpointState s = state;
  s.clear_optimizer_buffers();
  for (const auto& [name, buf] : optimizer) {
    tensors.push_back({"optimizer/" + name, {buf->size()}, buf->span()});
    s.add_optimizer_buffers(name);
  }
  const std::string params_bytes =
      EncodeSafetensors(tensors, {{"step", absl::StrCat(state.version())}, {"job_id", state.job().job_id()}});
  std::string state_bytes;
  if (!s.SerializeToString(&state_bytes)) return absl::InternalError("cannot serialise checkpoint state");
  const std::string body =
      absl::StrCat("gradacc-checkpoint 1\n", ManifestLine(kParams, params_bytes), ManifestLine(kState, state_bytes));
  const std::string manifest = absl::StrCat(body, absl::StrFormat("manifest %08x\n", Crc(body)));

  const std::string name = absl::StrFormat("%s%020d", kPrefix, state.version());
  const std::string final_path = absl::StrCat(dir, "/", name);
  const std::string tmp = absl::StrCat(dir, "/.tmp-", name, "-", ::getpid());
  RemoveCheckpointDir(tmp, env);
  GRADACC_RETURN_IF_ERROR(env->CreateDirectory(tmp));
  absl::Status st = env->WriteFileSynced(tmp + "/" + kParams, params_bytes);
  if (st.ok()) st = env->WriteFileSynced(tmp + "/" + kState, state_bytes);
  if (st.ok()) st = env->WriteFileSynced(tmp + "/" + kManifest, manifest);
  if (st.ok()) st = env->SyncDirectory(tmp);
  if (st.ok() && before_rename) before_rename();
  if (st.ok()) {
    RemoveCheckpointDir(final_path, env);  // a same-step checkpoint is replaced
    st = env->Rename(tmp, final_path);
  }
  if (st.ok()) st = env->SyncDirectory(dir);
  if (!st.ok()) {
    RemoveCheckpointDir(tmp, env);
    return st;
  }
  const std::vector<std::string> all = ListCheckpoints(dir, env);
  for (size_t i = std::max(keep, 1); i < all.size(); ++i) RemoveCheckpointDir(absl::StrCat(dir, "/", all[i]), env);
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint> LoadCheckpointOfVersion(const std::string& dir, uint64_t version, Env* env) {
  const std::string name = absl::StrFormat("%s%020d", kPrefix, version);
  const std::vector<std::string> names = ListCheckpoints(dir, env);
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    return absl::NotFoundError(absl::StrCat("no checkpoint of version ", version, " in '", dir, "'"));
  }
  return LoadOne(dir, name, env);
}

absl::StatusOr<Checkpoint> LoadNewestCheckpoint(const std::string& dir, std::vector<std::string>* notes,
                                                Env* env) {
  const std::vector<std::string> names = ListCheckpoints(dir, env);
  if (names.empty()) return absl::NotFoundError(absl::StrCat("no checkpoint in '", dir, "'"));
  for (const std::string& name : names) {
    auto c = LoadOne(dir, name, env);
    if (c.ok()) return c;
    if (notes != nullptr) {
      notes->push_back(absl::StrCat("checkpoint ", dir, "/", name, " is corrupt (", c.status().message(),
                                    "); falling back to the previous one"));
    }
  }
  return absl::DataLossError(absl::StrCat("every checkpoint in '", dir, "' is corrupt"));
}

}  // namespace gradacc
