#include "worker/dashboard/dashboard.h"

#include <grpcpp/grpcpp.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/http_server.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "worker/cli/status_format.h"
#include "worker/dashboard/dashboard_guard.h"
#include "worker/dashboard/dashboard_page.h"  // generated from dashboard.html

namespace gradacc {
namespace {

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

// The step records after `have` (and the last few before it again: late
// pushes update them) into `steps`.
void FetchSteps(v1::ControlPlane::Stub& stub, const std::string& token, uint64_t have, v1::GetStepsResponse& steps) {
  v1::GetStepsRequest request;
  request.set_from_step(have > 4 ? have - 4 : 0);
  grpc::ClientContext ctx;
  Authenticate(ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!stub.GetSteps(&ctx, request, &steps).ok()) steps.Clear();
}

}  // namespace

absl::string_view DashboardPage() {
  return absl::string_view(reinterpret_cast<const char*>(kDashboardPage), kDashboardPageSize);
}

absl::StatusOr<std::map<uint64_t, v1::StepRecord>> ReadLedger(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ledger '", path, "'"));
  std::map<uint64_t, v1::StepRecord> steps;
  std::string line;
  int skipped = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    v1::StepRecord r;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (!google::protobuf::util::JsonStringToMessage(line, &r, options).ok()) {
      // A line cut short by a kill stays a line of its own (the resumed
      // server appends its step again from the checkpoint).
      ++skipped;
      continue;
    }
    steps[r.step()] = std::move(r);
  }
  if (skipped > 0 && steps.empty()) {
    return absl::DataLossError(absl::StrCat("ledger '", path, "' holds no step record"));
  }
  return steps;
}

absl::StatusOr<std::unique_ptr<Dashboard>> Dashboard::Start(const DashboardOptions& options) {
  if (options.https_cert_file.empty() && !options.allow_remote_plaintext && !IsLoopbackListen(options.listen)) {
    return absl::FailedPreconditionError(
        absl::StrCat("refusing to serve the dashboard in plain HTTP on '", options.listen,
                     "': give it --https_cert/--https_key, listen on loopback, or pass --allow_remote_plaintext"));
  }
  std::unique_ptr<Dashboard> d(new Dashboard());
  d->options_ = options;
  if (!options.ledger.empty()) {
    auto steps = ReadLedger(options.ledger);
    if (!steps.ok()) return steps.status();
    MutexLock lock(&d->mu_);
    d->steps_ = std::move(*steps);
  }
  d->guard_ = std::make_unique<DashboardGuard>(options.listen, options.connection.token);
  Dashboard* self = d.get();
  HttpServerOptions http_options;
  http_options.listen = options.listen;
  http_options.tls_cert_file = options.https_cert_file;
  http_options.tls_key_file = options.https_key_file;
  auto http = HttpServer::Start(http_options, [self](const HttpRequest& request) {
    const bool data = request.path.rfind("/api/", 0) == 0;
    if (auto refused = self->guard_->Check(request, data); refused.has_value()) return *refused;
    HttpResponse r;
    if (request.path == "/" || request.path == "/index.html") {
      r.content_type = "text/html; charset=utf-8";
      r.body = std::string(DashboardPage());
    } else if (request.path == "/api/status") {
      r.content_type = "application/json";
      r.body = self->StatusJson();
    } else if (request.path == "/api/steps") {
      r.content_type = "application/json";
      r.body = self->StepsJson();
    } else {
      r.status = 404;
      r.body = "not found\n";
    }
    return r;
  });
  if (!http.ok()) return http.status();
  d->http_ = std::move(*http);
  if (!options.server.empty()) d->follower_ = std::thread([self] { self->FollowLoop(); });
  return d;
}

Dashboard::~Dashboard() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
    if (watch_ != nullptr) watch_->TryCancel();
  }
  if (follower_.joinable()) follower_.join();
  http_.reset();
}

int Dashboard::port() const { return http_->port(); }

Dashboard::View Dashboard::ViewLocked() const {
  View view;
  view.connected = connected_;
  view.status = have_status_ ? &status_ : nullptr;
  view.steps = steps_.size();
  return view;
}

bool Dashboard::WaitUntil(absl::FunctionRef<bool(const View&)> ready, absl::Duration timeout) {
  struct Args {
    Dashboard* self;
    absl::FunctionRef<bool(const View&)>* ready;
  } args{this, &ready};
  auto holds = [](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS { return (*a->ready)(a->self->ViewLocked()); };
  MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(Condition(+holds, &args), timeout);
}

std::string Dashboard::StatusJson() {
  MutexLock lock(&mu_);
  return absl::StrCat("{\"connected\":", connected_ ? "true" : "false",
                      ",\"status\":", have_status_ ? ToJson(status_) : "null",
                      ",\"display\":", have_status_ ? ToJson(StatusDisplay(status_)) : "null", "}");
}

std::string Dashboard::StepsJson() {
  v1::GetStepsResponse r;
  MutexLock lock(&mu_);
  for (const auto& [step, record] : steps_) *r.add_steps() = record;
  r.set_oldest_kept(steps_.empty() ? 0 : steps_.begin()->first);
  return ToJson(r);
}

void Dashboard::FollowLoop() {
  ConnectionOptions connection = options_.connection;
  connection.server = options_.server;
  auto made = MakeChannel(connection);
  if (!made.ok()) {
    absl::FPrintF(stderr, "gradacc: dashboard: %s\n", made.status().message());
    return;
  }
  auto stub = v1::ControlPlane::NewStub(*made);
  while (true) {
    grpc::ClientContext ctx;
    Authenticate(ctx, connection.token);
    {
      MutexLock lock(&mu_);
      if (stop_) return;
      watch_ = &ctx;  // the destructor cancels it
    }
    auto reader = stub->WatchStatus(&ctx, v1::WatchStatusRequest());
    v1::Status status;
    while (reader->Read(&status)) {
      uint64_t have = 0;
      {
        MutexLock lock(&mu_);
        have = steps_.empty() ? 0 : steps_.rbegin()->first;
      }
      v1::GetStepsResponse steps;
      FetchSteps(*stub, connection.token, have, steps);
      // Status and the steps it announces become visible together.
      MutexLock lock(&mu_);
      for (const v1::StepRecord& r : steps.steps()) steps_[r.step()] = r;
      connected_ = true;
      have_status_ = true;
      status_ = status;
    }
    reader->Finish();
    MutexLock lock(&mu_);
    watch_ = nullptr;
    connected_ = false;
    // The server is away: try again shortly (or stop).
    mu_.AwaitWithTimeout(Condition(&stop_), absl::Seconds(1));
    if (stop_) return;
  }
}

}  // namespace gradacc
