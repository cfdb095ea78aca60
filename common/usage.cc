#include "common/usage.h"

#include <algorithm>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace gradacc {
namespace {

// Abseil defines a few flags of its own (--flagfile, --fromenv, the help
// flags); everything else in a gradacc binary is gradacc's.
bool IsGradaccFile(absl::string_view filename) { return !absl::StrContains(filename, "absl/"); }

void AppendFlag(const absl::CommandLineFlag& flag, std::string& out) {
  const std::string value = flag.DefaultValue();
  const bool quoted = flag.IsOfType<std::string>();
  absl::StrAppend(&out, "  --", flag.Name(), "  (default: ", quoted ? "\"" : "", value, quoted ? "\"" : "", ")\n      ",
                  flag.Help(), "\n");
}

}  // namespace

void InitUsage(absl::string_view usage) {
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  config.contains_help_flags = IsGradaccFile;
  config.contains_helpshort_flags = IsGradaccFile;
  absl::SetFlagsUsageConfig(config);
}

bool HelpRequested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-help" || arg == "--helpshort" || arg == "-helpshort" || arg == "-h") return true;
  }
  return false;
}

std::string FlagsHelp(absl::string_view usage, const std::vector<std::string>& names) {
  std::string out = absl::StrCat(absl::StripTrailingAsciiWhitespace(usage), "\n\nFlags:\n");
  if (!names.empty()) {
    for (const std::string& name : names) {
      if (const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name); flag != nullptr) AppendFlag(*flag, out);
    }
    return out;
  }
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!flag->IsRetired() && IsGradaccFile(flag->Filename())) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  for (const absl::CommandLineFlag* flag : flags) AppendFlag(*flag, out);
  return out;
}

}  // namespace gradacc
