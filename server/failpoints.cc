#include "server/failpoints.h"

#include <signal.h>

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace gradacc {

absl::StatusOr<Failpoints> Failpoints::Parse(const std::vector<std::string>& specs) {
  Failpoints f;
  for (const std::string& spec : specs) {
    const std::vector<std::string> parts = absl::StrSplit(spec, ':');
    Point p{Event::kPush, 0, 0, spec};
    bool ok = parts.size() >= 2 && absl::SimpleAtoi(parts[1], &p.window);
    if (ok && parts[0] == "push") {
      ok = parts.size() == 3 && absl::SimpleAtoi(parts[2], &p.count) && p.count > 0;
    } else if (ok && parts.size() == 2 && parts[0] == "mid_broadcast") {
      p.event = Event::kMidBroadcast;
    } else if (ok && parts.size() == 2 && parts[0] == "after_publish") {
      p.event = Event::kAfterPublish;
    } else if (ok && parts.size() == 2 && parts[0] == "before_checkpoint") {
      p.event = Event::kBeforeCheckpoint;
    } else if (ok && parts.size() == 2 && parts[0] == "mid_checkpoint") {
      p.event = Event::kMidCheckpoint;
    } else if (ok && parts.size() == 2 && parts[0] == "after_checkpoint") {
      p.event = Event::kAfterCheckpoint;
    } else {
      ok = false;
    }
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "failpoint '", spec,
          "' is not one of push:W:N, mid_broadcast:W, after_publish:W, before_checkpoint:W, mid_checkpoint:W, "
          "after_checkpoint:W"));
    }
    f.points_.push_back(std::move(p));
  }
  return f;
}

void Failpoints::MaybeKill(Event event, uint64_t window, uint64_t count) const {
  for (const Point& p : points_) {
    if (p.event != event || p.window != window || (event == Event::kPush && p.count != count)) continue;
    GRADACC_LOG(INFO, "failpoint %s reached: SIGKILL", p.text);
    std::fflush(stderr);
    ::raise(SIGKILL);
  }
}

}  // namespace gradacc
