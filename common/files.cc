#include "common/files.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace gradacc {

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace gradacc
