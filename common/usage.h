// --help for gradacc's binaries and subcommands.
//
// Abseil's --help lists only the flags defined in a file whose name contains
// the program's name; gradacc's flags live in main.cc files (and the CLI's
// subcommands share one binary), so `--help` printed "No flags matched." and
// exited 1. Every binary calls InitUsage first and answers HelpRequested
// itself: its own flags, each with its meaning and default, exit 0.
// Abseil's other help flags (--helpfull, --help=substring) see the same
// flags. Free functions; call them from main before parsing flags.
#ifndef GRADACC_COMMON_USAGE_H_
#define GRADACC_COMMON_USAGE_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace gradacc {

// Sets the program's usage message and makes Abseil's help flags report
// gradacc's own flags (any flag not defined inside Abseil).
void InitUsage(absl::string_view usage);

// True when the command line asks for help: --help or -help (without a
// value), --helpshort or -h, anywhere before a lone "--".
bool HelpRequested(int argc, char** argv);

// `usage`, then one entry per flag: "--name=<default>" and its meaning.
// With `names`, exactly those flags in that order (a subcommand's); without,
// every gradacc flag of the program, sorted by name.
std::string FlagsHelp(absl::string_view usage, const std::vector<std::string>& names = {});

}  // namespace gradacc

#endif  // GRADACC_COMMON_USAGE_H_
