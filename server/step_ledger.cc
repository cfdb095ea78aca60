#include "server/step_ledger.h"

#include <algorithm>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/files.h"
#include "common/log.h"
#include "google/protobuf/util/json_util.h"

namespace gradacc {
namespace {

constexpr size_t kKeep = 4096;

std::string JsonLine(const v1::StepRecord& record) {
  std::string line;
  google::protobuf::util::JsonPrintOptions json;
  json.add_whitespace = false;
  (void)google::protobuf::util::MessageToJsonString(record, &line, json);
  line += '\n';
  return line;
}

// The steps the ledger file has a whole line for. Lines are {"step":"N",...}
// (the JSON mapping prints fields in number order); any other line is
// parsed whole, and one that does not parse (cut by a kill) is skipped.
std::set<uint64_t> StepsIn(const std::string& text) {
  std::set<uint64_t> steps;
  constexpr absl::string_view kStart = "{\"step\":\"";
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    uint64_t step = 0;
    if (absl::StartsWith(line, kStart) && absl::EndsWith(line, "}")) {
      const absl::string_view rest = line.substr(kStart.size());
      if (absl::SimpleAtoi(rest.substr(0, rest.find('"')), &step)) steps.insert(step);
      continue;
    }
    v1::StepRecord r;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (google::protobuf::util::JsonStringToMessage(std::string(line), &r, options).ok()) steps.insert(r.step());
  }
  return steps;
}

}  // namespace

StepLedger::StepLedger(std::string path, Env* env)
    : path_(std::move(path)), env_(Env::OrDefault(env)) {
  if (!path_.empty()) writer_ = std::thread([this] { WriterLoop(); });
}

StepLedger::~StepLedger() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  if (writer_.joinable()) writer_.join();
}

void StepLedger::Append(v1::StepRecord record) {
  std::string line = path_.empty() ? "" : JsonLine(record);
  MutexLock lock(&mu_);
  records_.push_back(std::move(record));
  if (records_.size() > kKeep) records_.pop_front();
  if (!path_.empty()) {
    unlogged_.push_back(records_.back().step());
    unwritten_.push_back({std::move(line), true});
    ++queued_;
  }
}

std::vector<uint64_t> StepLedger::Recover(const google::protobuf::RepeatedPtrField<v1::StepRecord>& records) {
  std::vector<uint64_t> recovered;
  if (path_.empty() || records.empty()) return recovered;
  const std::string file = ReadFileToString(path_, env_).value_or("");
  const std::set<uint64_t> present = StepsIn(file);
  {
    MutexLock lock(&mu_);
    // A line cut short by the kill stays a line of its own.
    if (!file.empty() && file.back() != '\n') {
      unwritten_.push_back({"\n", false});
      ++queued_;
    }
    for (const v1::StepRecord& r : records) {
      if (present.count(r.step()) > 0) continue;
      v1::StepRecord copy = r;
      copy.set_recovered(true);
      unwritten_.push_back({JsonLine(copy), false});
      ++queued_;
      records_.push_back(std::move(copy));
      recovered.push_back(r.step());
    }
  }
  Flush();
  return recovered;
}

std::vector<v1::StepRecord> StepLedger::Unlogged() const {
  std::vector<v1::StepRecord> out;
  MutexLock lock(&mu_);
  for (const v1::StepRecord& r : records_) {
    if (std::find(unlogged_.begin(), unlogged_.end(), r.step()) != unlogged_.end()) out.push_back(r);
  }
  return out;
}

void StepLedger::NoteLate(const LateNote& late) {
  MutexLock lock(&mu_);
  for (auto it = records_.rbegin(); it != records_.rend(); ++it) {
    if (it->window() != late.window) continue;
    for (v1::ContributionRecord& c : *it->mutable_contributions()) {
      if (c.worker() == late.worker && c.contribution_key() == late.key) c.set_duplicates(c.duplicates() + 1);
    }
    v1::LateRecord* l = it->add_late();
    l->set_worker(late.worker);
    l->set_contribution_key(late.key);
    l->set_arrival_unix_micros(absl::ToUnixMicros(absl::Now()));
    l->set_outcome(late.outcome);
    if (!path_.empty()) {
      unwritten_.push_back({JsonLine(*it), false});
      ++queued_;
    }
    return;
  }
}

v1::GetStepsResponse StepLedger::Get(uint64_t from, uint64_t to) const {
  v1::GetStepsResponse r;
  MutexLock lock(&mu_);
  r.set_oldest_kept(records_.empty() ? 0 : records_.front().step());
  for (const v1::StepRecord& rec : records_) {
    if (rec.step() >= from && (to == 0 || rec.step() <= to)) *r.add_steps() = rec;
  }
  return r;
}

void StepLedger::Flush() {
  MutexLock lock(&mu_);
  std::pair<StepLedger*, uint64_t> target(this, queued_);
  // Bounded: a ledger on a full disk keeps its lines queued (and retried).
  mu_.AwaitWithTimeout(Condition(
                           +[](std::pair<StepLedger*, uint64_t>* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                             return a->first->written_ >= a->second || a->first->stop_;
                           },
                           &target),
                       absl::Seconds(30));
}

namespace {

// Appends `text`; false (and `error`, and `partial` when some bytes went
// out) on failure.
bool WriteAll(AppendableFile& file, const std::string& text, bool* partial, std::string* error) {
  size_t done = 0;
  const absl::Status s = file.Append(text, &done);
  if (s.ok()) return true;
  *partial = *partial || done > 0;
  *error = std::string(s.message());
  return false;
}

}  // namespace

void StepLedger::WriterLoop() {
  std::unique_ptr<AppendableFile> file;
  bool partial = false;  // the file may end in a line cut short by a failed write
  bool failing = false;
  absl::Duration backoff = absl::ZeroDuration();
  MutexLock lock(&mu_);
  while (true) {
    if (backoff > absl::ZeroDuration()) {
      mu_.AwaitWithTimeout(Condition(&stop_), backoff);
    } else {
      mu_.Await(Condition(
          +[](StepLedger* l) ABSL_NO_THREAD_SAFETY_ANALYSIS { return !l->unwritten_.empty() || l->stop_; }, this));
    }
    if (unwritten_.empty() && stop_) break;
    if (unwritten_.empty()) continue;
    std::vector<Line> lines(unwritten_.begin(), unwritten_.end());
    mu_.Unlock();
    size_t done = 0;
    std::string error;
    if (file == nullptr) {
      auto opened = env_->OpenAppendable(path_);
      if (opened.ok()) {
        file = *std::move(opened);
      } else {
        error = std::string(opened.status().message());
      }
    }
    if (file != nullptr) {
      // A line cut short by an earlier failure stays a line of its own.
      if (partial && WriteAll(*file, "\n", &partial, &error)) partial = false;
      while (!partial && done < lines.size() && WriteAll(*file, lines[done].text, &partial, &error)) ++done;
    }
    mu_.Lock();
    for (size_t k = 0; k < done; ++k) {
      if (unwritten_.front().append && !unlogged_.empty()) unlogged_.pop_front();
      unwritten_.pop_front();
    }
    written_ += done;
    if (done == lines.size()) {
      if (failing) GRADACC_LOG(INFO, "the ledger '%s' is written again", path_);
      failing = false;
      backoff = absl::ZeroDuration();
      continue;
    }
    // Nothing is lost: the lines stay queued, and every checkpoint carries
    // the records not yet in the file (Unlogged), so a resumed server
    // appends them even if this one dies first.
    if (!failing) {
      GRADACC_LOG(WARNING,
                  "LEDGER WRITE FAILED for '%s': %s; retrying (the records are kept, and carried "
                  "by the checkpoints)",
                  path_, error);
    }
    failing = true;
    backoff = std::min(absl::Seconds(10), std::max(absl::Milliseconds(500), backoff * 2));
    if (stop_) break;  // the final checkpoint carries what is left
  }
  written_ = queued_;  // Flush waits no more
}

}  // namespace gradacc
