// gradacc._core: the C++ half of the Python package `gradacc`
// (worker/python/gradacc). A thin pybind11 layer over the client library
// (Session), MPI (MpiEnv), safetensors I/O and job specs; the pure-Python
// modules build the user-facing API on it.
//
// Conventions: every blocking call (connect, step, status, leave, MPI
// collectives) runs without the GIL; every failure is raised as
// gradacc.errors.Error carrying the status code and the refusal's
// machine-readable reason and action (common/errors.h), never a bare
// RuntimeError. Arrays over the client's memory are created without copies;
// each holds a lease (a capsule) that keeps that memory allocated.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/job_spec.h"
#include "common/mutex.h"
#include "common/safetensors.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "google/rpc/error_details.pb.h"
#include "worker/cli/status_format.h"
#include "common/channel.h"
#include "worker/python/mpi_env.h"
#include "worker/python/session.h"

namespace py = pybind11;

namespace gradacc::python {
namespace {

// Raises gradacc.errors.Error for a failed status. Needs the GIL.
[[noreturn]] void Raise(const absl::Status& status) {
  py::dict metadata;
  if (auto payload = status.GetPayload(kErrorInfoTypeUrl); payload.has_value()) {
    google::rpc::ErrorInfo info;
    if (info.ParseFromString(std::string(*payload))) {
      for (const auto& [key, value] : info.metadata()) {
        if (key != "action") metadata[py::str(key)] = py::str(value);
      }
    }
  }
  py::object cls = py::module_::import("gradacc.errors").attr("Error");
  py::object error = cls(std::string(status.message()), absl::StatusCodeToString(status.code()),
                         static_cast<int>(status.code()), v1::ErrorReason_Name(ReasonOf(status)),
                         v1::ClientAction_Name(ActionOf(status)), metadata);
  PyErr_SetObject(cls.ptr(), error.ptr());
  throw py::error_already_set();
}

void Check(const absl::Status& status) {
  if (!status.ok()) Raise(status);
}

template <class T>
T Unwrap(absl::StatusOr<T> value) {
  if (!value.ok()) Raise(value.status());
  return *std::move(value);
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto written = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!written.ok()) Raise(absl::InternalError(absl::StrCat("cannot write JSON: ", written.ToString())));
  return json;
}

// The lease an array over the client's memory holds (its NumPy base).
struct LeaseHolder {
  std::shared_ptr<Session> session;
  uint64_t epoch;
  ~LeaseHolder() { session->ReleaseLease(epoch); }
};

// A flat float32 array over `lease`'s memory, without a copy.
py::array FlatView(const std::shared_ptr<Session>& session, Session::Lease lease, bool writeable) {
  auto* holder = new LeaseHolder{session, lease.epoch};
  py::capsule base(holder, [](void* p) { delete static_cast<LeaseHolder*>(p); });
  const auto n = static_cast<py::ssize_t>(session->layout().num_elements());
  py::array array(py::dtype::of<float>(), {n}, {static_cast<py::ssize_t>(sizeof(float))}, lease.data, base);
  if (!writeable) array.attr("setflags")(py::arg("write") = false);
  return array;
}

ClientOptions OptionsFrom(const std::string& server, uint32_t worker, const std::string& job_id,
                          const std::string& hostname, const std::string& tls_ca, const std::string& tls_cert,
                          const std::string& tls_key, const std::string& token, const std::string& token_file,
                          double connect_timeout_s, double rpc_timeout_s, double window_timeout_s,
                          bool shared_memory, const std::string& wire_format, uint64_t chunk_elements) {
  ClientOptions options;
  options.server = server;
  options.worker = worker;
  options.job_id = job_id;
  options.hostname = hostname;
  options.connection.tls_ca_file = tls_ca;
  options.connection.tls_cert_file = tls_cert;
  options.connection.tls_key_file = tls_key;
  if (!token.empty()) {
    options.connection.token = token;
  } else {
    // token_file, else $GRADACC_TOKEN; a token that cannot travel as a
    // header is refused without showing it.
    Check(LoadToken(token_file, options.connection));
  }
  options.connect_timeout = absl::Seconds(connect_timeout_s);
  options.rpc_timeout = absl::Seconds(rpc_timeout_s);
  options.window_timeout = absl::Seconds(window_timeout_s);
  options.shared_memory = shared_memory;
  options.wire_format = Unwrap(ParseWireFormat(wire_format));
  if (chunk_elements > 0) options.chunk_elements = chunk_elements;
  return options;
}

py::dict StepDict(const StepResult& r) {
  py::dict d;
  d["window"] = r.window;
  d["version"] = r.version;
  d["duplicate"] = r.duplicate;
  d["stale"] = r.stale;
  d["reconnects"] = r.reconnects;
  d["push_attempts"] = r.push_attempts;
  d["loss"] = r.loss;
  d["lr"] = r.lr;
  d["job_done"] = r.job_done;
  d["replanned"] = r.replanned;
  d["skipped"] = r.skipped;
  d["loss_scale"] = r.loss_scale;
  return d;
}

// job.proto JSON (as the server reads it) -> protobuf text format, checked
// by the server's own validation (NormalizeJobSpec) first.
std::string JobTextFromJson(const std::string& json) {
  v1::JobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto parsed = google::protobuf::util::JsonStringToMessage(json, &spec, options);
  if (!parsed.ok()) Raise(absl::InvalidArgumentError(absl::StrCat("job spec: ", parsed.ToString())));
  v1::JobSpec normalized = spec;
  Check(NormalizeJobSpec(normalized));
  std::string text;
  google::protobuf::TextFormat::PrintToString(spec, &text);
  return text;
}

std::string JobJsonFromFile(const std::string& path) {
  v1::JobSpec spec = Unwrap(LoadJobSpecFile(path));
  return ToJson(spec);
}

void SaveSafetensors(const std::string& path, const std::vector<std::pair<std::string, py::array>>& tensors,
                     const std::map<std::string, std::string>& metadata) {
  std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> arrays;
  std::vector<NamedTensor> named;
  arrays.reserve(tensors.size());
  for (const auto& [name, array] : tensors) {
    arrays.emplace_back(array);
    const auto& a = arrays.back();
    NamedTensor t;
    t.name = name;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) t.shape.push_back(static_cast<uint64_t>(a.shape(i)));
    t.data = absl::MakeConstSpan(a.data(), static_cast<size_t>(a.size()));
    named.push_back(std::move(t));
  }
  Check(WriteSafetensorsFile(path, named, metadata));
}

py::tuple LoadSafetensors(const std::string& path) {
  SafetensorsContents contents = Unwrap(ReadSafetensorsFile(path));
  py::dict tensors;
  for (auto& [name, t] : contents.tensors) {
    std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
    py::array_t<float> array(shape);
    std::memcpy(array.mutable_data(), t.data.data(), t.data.size() * sizeof(float));
    tensors[py::str(name)] = array;
  }
  return py::make_tuple(tensors, contents.metadata);
}

// Runs `f` without the GIL (a blocking call) and returns its result.
template <class F>
auto WithoutGil(F&& f) {
  py::gil_scoped_release release;
  return f();
}

using SessionClass = py::class_<Session, std::shared_ptr<Session>>;

std::shared_ptr<Session> ConnectSession(const std::string& server, uint32_t worker, const std::string& job_id,
                                        const std::string& hostname, const std::string& tls_ca,
                                        const std::string& tls_cert, const std::string& tls_key,
                                        const std::string& token, const std::string& token_file,
                                        double connect_timeout_s, double rpc_timeout_s, double window_timeout_s,
                                        bool shared_memory, const std::string& wire_format,
                                        uint64_t chunk_elements, bool hierarchical) {
  ClientOptions options = OptionsFrom(server, worker, job_id, hostname, tls_ca, tls_cert, tls_key, token,
                                      token_file, connect_timeout_s, rpc_timeout_s, window_timeout_s,
                                      shared_memory, wire_format, chunk_elements);
  if (hierarchical) Check(MpiInitialize());
  std::shared_ptr<Session> s =
      Unwrap(WithoutGil([&] { return Session::Connect(std::move(options), hierarchical); }));
  if (hierarchical) RegisterGroupSession(s);
  return s;
}

py::list TensorList(const Session& s) {
  py::list out;
  for (const ModelLayout::Tensor& t : s.layout().tensors()) {
    py::tuple shape(t.shape.size());
    for (size_t i = 0; i < t.shape.size(); ++i) shape[i] = t.shape[i];
    out.append(py::make_tuple(t.name, shape, t.offset, t.size));
  }
  return out;
}

py::dict StateDict(Session& s) {
  Session::State st = Unwrap(s.state());
  py::dict d;
  d["version"] = st.version;
  d["done"] = st.done;
  d["loss_scale"] = st.loss_scale;
  d["epoch"] = st.epoch;
  d["pending_samples"] = st.pending_samples;
  d["pending_micro_batches"] = st.pending_micro_batches;
  d["transport"] = st.transport;
  return d;
}

// Connecting and what is constant afterwards.
void BindSessionSetup(SessionClass& cls) {
  cls.def_static("connect", &ConnectSession, py::arg("server"), py::arg("worker"), py::arg("job_id"),
                 py::arg("hostname"), py::arg("tls_ca"), py::arg("tls_cert"), py::arg("tls_key"), py::arg("token"),
                 py::arg("token_file"), py::arg("connect_timeout_s"), py::arg("rpc_timeout_s"),
                 py::arg("window_timeout_s"), py::arg("shared_memory"), py::arg("wire_format"),
                 py::arg("chunk_elements"), py::arg("hierarchical"))
      .def_property_readonly("job_json", [](Session& s) { return ToJson(s.job()); })
      .def_property_readonly("tensors", &TensorList)
      .def_property_readonly("num_elements", [](Session& s) { return s.layout().num_elements(); })
      .def_property_readonly("worker", &Session::worker)
      .def_property_readonly("hierarchical", &Session::hierarchical)
      .def_property_readonly("leader", &Session::leader);
}

// The window: views of the memory, micro-batches, the step.
void BindSessionWindow(SessionClass& cls) {
  cls.def("state", &StateDict)
      .def("grad_flat",
           [](const std::shared_ptr<Session>& s) {
             Session::Lease lease = Unwrap(s->LeaseGrad());
             return py::make_tuple(FlatView(s, lease, /*writeable=*/true), lease.epoch);
           })
      .def("params_flat",
           [](const std::shared_ptr<Session>& s) {
             Session::Lease lease = Unwrap(s->LeaseParams());
             return py::make_tuple(FlatView(s, lease, /*writeable=*/false), lease.epoch);
           })
      .def("add_micro_batch", [](Session& s, uint64_t samples,
                                 double loss_sum) { Check(s.AddMicroBatch(samples, loss_sum)); })
      .def("discard", [](Session& s) { Check(s.Discard()); })
      .def("set_untouched",
           [](Session& s, std::vector<uint32_t> tensors) { Check(s.SetUntouched(std::move(tensors))); })
      .def("step", [](Session& s) { return StepDict(Unwrap(WithoutGil([&] { return s.Step(); }))); });
}

// The server: status, reports, leaving.
void BindSessionServer(SessionClass& cls) {
  cls.def("status_json", [](Session& s) { return ToJson(Unwrap(WithoutGil([&] { return s.GetStatus(); }))); })
      .def("status_text",
           [](Session& s) { return FormatStatusTable(Unwrap(WithoutGil([&] { return s.GetStatus(); }))); })
      .def("report_test_accuracy",
           [](Session& s, double accuracy, uint64_t step) {
             Check(WithoutGil([&] { return s.ReportTestAccuracy(accuracy, step); }));
           })
      .def("leave", [](Session& s) { Check(WithoutGil([&] { return s.Leave(); })); })
      .def("close", [](Session& s) { Check(s.Close()); });
}

void BindMpi(py::module_& m) {
  m.def("mpi_initialize", [] { Check(MpiInitialize()); });
  m.def("mpi_initialized", &MpiInitialized);
  m.def("mpi_finalize", &MpiFinalize);
  m.def("mpi_rank", &MpiRank);
  m.def("mpi_size", &MpiSize);
  m.def("mpi_barrier", [] { Check(WithoutGil([] { return MpiBarrier(); })); });
  m.def(
      "mpi_broadcast",
      [](py::array array, int root) {
        if (!(array.flags() & py::array::c_style)) {
          Raise(absl::InvalidArgumentError("mpi_broadcast: the array must be C-contiguous"));
        }
        if (!array.writeable()) Raise(absl::InvalidArgumentError("mpi_broadcast: the array must be writeable"));
        void* data = array.mutable_data();
        const size_t bytes = static_cast<size_t>(array.nbytes());
        Check(WithoutGil([&] { return MpiBroadcast(data, bytes, root); }));
      },
      py::arg("array"), py::arg("root") = 0);
  m.def("mpi_allreduce_sum", [](py::array_t<double, py::array::c_style> array) {
    double* data = array.mutable_data();
    const size_t n = static_cast<size_t>(array.size());
    Check(WithoutGil([&] { return MpiAllreduceSum(data, n); }));
  });
}

void BindFiles(py::module_& m) {
  m.def("save_safetensors", &SaveSafetensors, py::arg("path"), py::arg("tensors"),
        py::arg("metadata") = std::map<std::string, std::string>());
  m.def("load_safetensors", &LoadSafetensors, py::arg("path"));
  m.def("job_text_from_json", &JobTextFromJson, py::arg("json"));
  m.def("job_json_from_file", &JobJsonFromFile, py::arg("path"));
  // common/files.h: temporary file, fsync, rename, fsync of the folder; 0600.
  m.def(
      "write_file_atomically",
      [](const std::string& path, const py::bytes& bytes) {
        std::string data = bytes;
        Check(WithoutGil([&] { return WriteFileAtomically(path, data); }));
      },
      py::arg("path"), py::arg("bytes"));
}

}  // namespace
}  // namespace gradacc::python

PYBIND11_MODULE(_core, m) {
  namespace gp = gradacc::python;
  m.doc() = "gradacc's C++ client library, MPI and file formats (use the `gradacc` package, not this module)";
  // gRPC's mutexes in this process are Abseil's (common/mutex.h says why).
  gradacc::SkipMutexDeadlockDetectionInOptimizedBuilds();
  gp::SessionClass session(m, "Session");
  gp::BindSessionSetup(session);
  gp::BindSessionWindow(session);
  gp::BindSessionServer(session);
  gp::BindMpi(m);
  gp::BindFiles(m);
}
