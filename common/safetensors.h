// Reading and writing safetensors files (https://github.com/huggingface/safetensors):
// 8-byte little-endian header length, a JSON header, then the raw data.
// gradacc writes and reads F32 tensors only. Free functions; thread-safe.
#ifndef GRADACC_COMMON_SAFETENSORS_H_
#define GRADACC_COMMON_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace gradacc {

struct NamedTensor {
  std::string name;
  std::vector<uint64_t> shape;
  absl::Span<const float> data;  // product(shape) elements
};

// Serialises tensors (in the given order) with optional string metadata.
std::string EncodeSafetensors(const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes atomically: a temporary file in the same folder, fsync, rename.
absl::Status WriteSafetensorsFile(const std::string& path,
                                  const std::vector<NamedTensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

struct LoadedTensor {
  std::vector<uint64_t> shape;
  std::vector<float> data;
};

struct SafetensorsContents {
  std::map<std::string, LoadedTensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Parses a safetensors image; every tensor must be F32. Offsets are checked
// against the buffer, so a truncated or corrupt file is an error, not a crash.
absl::StatusOr<SafetensorsContents> DecodeSafetensors(absl::string_view bytes);
absl::StatusOr<SafetensorsContents> ReadSafetensorsFile(const std::string& path);

}  // namespace gradacc

#endif  // GRADACC_COMMON_SAFETENSORS_H_
