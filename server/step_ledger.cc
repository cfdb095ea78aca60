#include "server/step_ledger.h"

#include <vector>

#include "absl/strings/str_format.h"
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

}  // namespace

StepLedger::StepLedger(std::string path) : path_(std::move(path)) {
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
    unwritten_.push_back(std::move(line));
    ++queued_;
  }
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
      unwritten_.push_back(JsonLine(*it));
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
  mu_.Await(Condition(
      +[](std::pair<StepLedger*, uint64_t>* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return a->first->written_ >= a->second || a->first->stop_;
      },
      &target));
}

void StepLedger::WriterLoop() {
  std::FILE* file = std::fopen(path_.c_str(), "a");
  if (file == nullptr) absl::FPrintF(stderr, "gradacc-server: cannot append to ledger '%s'\n", path_);
  MutexLock lock(&mu_);
  while (true) {
    mu_.Await(Condition(
        +[](StepLedger* l) ABSL_NO_THREAD_SAFETY_ANALYSIS { return !l->unwritten_.empty() || l->stop_; }, this));
    if (unwritten_.empty() && stop_) break;
    std::vector<std::string> lines(unwritten_.begin(), unwritten_.end());
    unwritten_.clear();
    mu_.Unlock();
    if (file != nullptr) {
      for (const std::string& line : lines) std::fwrite(line.data(), 1, line.size(), file);
      std::fflush(file);
    }
    mu_.Lock();
    written_ += lines.size();
  }
  if (file != nullptr) std::fclose(file);
}

}  // namespace gradacc
