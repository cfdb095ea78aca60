#include "common/safetensors.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "common/kernels.h"
#include "common/status_macros.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace gradacc {
namespace {

// Minimal JSON string escaping for tensor names and metadata.
std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

absl::Status Corrupt(absl::string_view why) {
  return absl::DataLossError(absl::StrCat("safetensors: ", why));
}

bool AsUint(const google::protobuf::Value& v, uint64_t* out) {
  if (v.kind_case() != google::protobuf::Value::kNumberValue) return false;
  const double d = v.number_value();
  if (!(d >= 0) || d > 9007199254740992.0 || d != static_cast<double>(static_cast<uint64_t>(d))) return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

}  // namespace

std::string EncodeSafetensors(const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (auto it = metadata.begin(); it != metadata.end(); ++it) {
      if (it != metadata.begin()) header += ",";
      header += JsonString(it->first) + ":" + JsonString(it->second);
    }
    header += "}";
    first = false;
  }
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    if (!first) header += ",";
    first = false;
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      absl::StrAppend(&shape, i ? "," : "", t.shape[i]);
    }
    const uint64_t bytes = t.data.size() * sizeof(float);
    absl::StrAppend(&header, JsonString(t.name), ":{\"dtype\":\"F32\",\"shape\":[", shape,
                    "],\"data_offsets\":[", offset, ",", offset + bytes, "]}");
    offset += bytes;
  }
  header += "}";
  // Pad with spaces so the data starts 8-byte aligned.
  while (header.size() % 8 != 0) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += header;
  const size_t data_start = out.size();
  out.resize(data_start + offset);
  char* p = out.data() + data_start;
  for (const NamedTensor& t : tensors) {
    CopyToLittleEndian(t.data, p);
    p += t.data.size() * sizeof(float);
  }
  return out;
}

absl::Status WriteSafetensorsFile(const std::string& path, const std::vector<NamedTensor>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  return WriteFileAtomically(path, EncodeSafetensors(tensors, metadata));
}

absl::StatusOr<SafetensorsContents> DecodeSafetensors(absl::string_view bytes) {
  if (bytes.size() < 8) return Corrupt("file shorter than its 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  if (header_len > bytes.size() - 8 || header_len > (uint64_t{100} << 20)) {
    return Corrupt(absl::StrCat("header length ", header_len, " exceeds the file"));
  }
  const std::string header(bytes.substr(8, header_len));
  const absl::string_view data = bytes.substr(8 + header_len);
  google::protobuf::Struct root;
  auto parsed = google::protobuf::util::JsonStringToMessage(header, &root);
  if (!parsed.ok()) return Corrupt(absl::StrCat("bad JSON header: ", std::string(parsed.message())));
  SafetensorsContents out;
  for (const auto& [name, value] : root.fields()) {
    if (value.kind_case() != google::protobuf::Value::kStructValue) {
      return Corrupt(absl::StrCat("entry '", name, "' is not an object"));
    }
    const auto& fields = value.struct_value().fields();
    if (name == "__metadata__") {
      for (const auto& [k, v] : fields) {
        if (v.kind_case() != google::protobuf::Value::kStringValue) {
          return Corrupt(absl::StrCat("metadata '", k, "' is not a string"));
        }
        out.metadata[k] = v.string_value();
      }
      continue;
    }
    auto dtype = fields.find("dtype");
    auto shape = fields.find("shape");
    auto offsets = fields.find("data_offsets");
    if (dtype == fields.end() || shape == fields.end() || offsets == fields.end()) {
      return Corrupt(absl::StrCat("tensor '", name, "' lacks dtype, shape or data_offsets"));
    }
    if (dtype->second.string_value() != "F32") {
      return absl::InvalidArgumentError(absl::StrCat("safetensors: tensor '", name, "' has dtype '",
                                                     dtype->second.string_value(), "'; only F32 is supported"));
    }
    LoadedTensor t;
    uint64_t elements = 1;
    for (const auto& d : shape->second.list_value().values()) {
      uint64_t v;
      if (!AsUint(d, &v)) return Corrupt(absl::StrCat("tensor '", name, "' has a bad shape"));
      if (v != 0 && elements > (uint64_t{1} << 40) / v) return Corrupt(absl::StrCat("tensor '", name, "' is too large"));
      elements *= v;
      t.shape.push_back(v);
    }
    const auto& off = offsets->second.list_value().values();
    uint64_t begin, end;
    if (off.size() != 2 || !AsUint(off[0], &begin) || !AsUint(off[1], &end) || begin > end) {
      return Corrupt(absl::StrCat("tensor '", name, "' has bad data_offsets"));
    }
    if (end > data.size()) {
      return Corrupt(absl::StrCat("tensor '", name, "' ends at byte ", end, " but the data has ", data.size(),
                                  " bytes (truncated file?)"));
    }
    if (end - begin != elements * sizeof(float)) {
      return Corrupt(absl::StrCat("tensor '", name, "': data_offsets do not match its shape"));
    }
    t.data.resize(elements);
    CopyFromLittleEndian(data.data() + begin, absl::MakeSpan(t.data));
    out.tensors.emplace(name, std::move(t));
  }
  return out;
}

absl::StatusOr<SafetensorsContents> ReadSafetensorsFile(const std::string& path) {
  GRADACC_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  auto result = DecodeSafetensors(bytes);
  if (!result.ok()) {
    return absl::Status(result.status().code(), absl::StrCat(path, ": ", result.status().message()));
  }
  return result;
}

}  // namespace gradacc
