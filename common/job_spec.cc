#include "common/job_spec.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/kernels.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"

namespace gradacc {
namespace {

class CollectingErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    errors_.push_back(absl::StrFormat("line %d column %d: %s", line + 1, column + 1, message));
  }
  std::string Joined() const { return absl::StrJoin(errors_, "; "); }

 private:
  std::vector<std::string> errors_;
};

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("job spec: ", field, ": ", why));
}

bool Finite(double v) { return std::isfinite(v); }

}  // namespace

absl::StatusOr<ModelLayout> ModelLayout::FromSpec(const v1::ModelSpec& model) {
  if (model.tensors().empty()) return Invalid("model.tensors", "the model has no tensors");
  if (static_cast<size_t>(model.tensors_size()) > kMaxTensors) {
    return Invalid("model.tensors", absl::StrCat("more than ", kMaxTensors, " tensors"));
  }
  ModelLayout layout;
  absl::flat_hash_set<std::string> names;
  for (const v1::TensorSpec& t : model.tensors()) {
    if (t.name().empty()) return Invalid("model.tensors.name", "a tensor has no name");
    if (!names.insert(t.name()).second) {
      return Invalid("model.tensors.name", absl::StrCat("duplicate tensor name '", t.name(), "'"));
    }
    Tensor out;
    out.name = t.name();
    uint64_t size = 1;
    for (uint64_t d : t.shape()) {
      if (d == 0) {
        return Invalid("model.tensors.shape", absl::StrCat("tensor '", t.name(), "' has a zero dimension"));
      }
      if (d > kMaxModelElements || size > kMaxModelElements / d) {
        return Invalid("model.tensors.shape", absl::StrCat("tensor '", t.name(), "' is too large"));
      }
      size *= d;
      out.shape.push_back(d);
    }
    out.offset = layout.num_elements_;
    out.size = size;
    layout.num_elements_ += size;
    if (layout.num_elements_ > kMaxModelElements) {
      return Invalid("model.tensors", absl::StrCat("the model exceeds ", kMaxModelElements, " elements"));
    }
    layout.tensors_.push_back(std::move(out));
  }
  return layout;
}

int ModelLayout::Find(absl::string_view name) const {
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

std::pair<uint64_t, uint64_t> ShardRange(const ModelLayout& layout, uint32_t shard, uint32_t num_shards) {
  const uint64_t n = layout.num_elements();
  auto boundary = [&](uint64_t i) {
    uint64_t b = n * i / std::max(1u, num_shards);
    for (const ModelLayout::Tensor& t : layout.tensors()) {
      if (b > t.offset && b < t.offset + t.size && t.size <= kShardSplitLimit) return t.offset + t.size;
    }
    return b;
  };
  return {boundary(shard), boundary(shard + 1)};
}

absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path) {
  auto read = ReadFileToString(path);
  if (!read.ok()) return absl::NotFoundError(absl::StrCat("cannot open job file '", path, "'"));
  const std::string& text = *read;
  v1::JobSpec spec;
  if (absl::EndsWith(path, ".json")) {
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    auto status = google::protobuf::util::JsonStringToMessage(text, &spec, options);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("job file '", path, "' (JSON): ", std::string(status.message())));
    }
    return spec;
  }
  google::protobuf::TextFormat::Parser parser;
  CollectingErrors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &spec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("job file '", path, "' (text format): ", errors.Joined()));
  }
  return spec;
}

namespace {

// GradScaler's defaults for the fields left 0, and its own checks.
absl::Status NormalizeLossScaling(v1::LossScaling& ls) {
  if (ls.init_scale() == 0) ls.set_init_scale(65536.0);
  if (ls.growth_factor() == 0) ls.set_growth_factor(2.0);
  if (ls.backoff_factor() == 0) ls.set_backoff_factor(0.5);
  if (ls.growth_interval() == 0) ls.set_growth_interval(2000);
  const float init = static_cast<float>(ls.init_scale());
  if (!(ls.init_scale() > 0) || !std::isfinite(init) || init == 0) {
    return Invalid("loss_scaling.init_scale", "must be > 0 and finite as a float32");
  }
  if (!(ls.growth_factor() > 1) || !Finite(ls.growth_factor())) {
    return Invalid("loss_scaling.growth_factor", "must be > 1 (GradScaler's rule)");
  }
  if (!(ls.backoff_factor() > 0 && ls.backoff_factor() < 1)) {
    return Invalid("loss_scaling.backoff_factor", "must be in (0, 1) (GradScaler's rule)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status NormalizeJobSpec(v1::JobSpec& spec) {
  if (spec.job_id().empty()) spec.set_job_id("default");
  GRADACC_ASSIGN_OR_RETURN(ModelLayout layout, ModelLayout::FromSpec(spec.model()));
  (void)layout;

  v1::OptimizerSpec& opt = *spec.mutable_optimizer();
  if (opt.kind() == v1::OptimizerSpec::KIND_UNSPECIFIED) opt.set_kind(v1::OptimizerSpec::KIND_SGD);
  if (!(opt.lr() > 0) || !Finite(opt.lr())) return Invalid("optimizer.lr", "must be a finite number > 0");
  if (opt.kind() == v1::OptimizerSpec::KIND_SGD) {
    const v1::SgdOptions& s = opt.sgd();
    if (!(s.momentum() >= 0) || !Finite(s.momentum())) return Invalid("optimizer.sgd.momentum", "must be >= 0");
    if (!Finite(s.dampening())) return Invalid("optimizer.sgd.dampening", "must be finite");
    if (!(s.weight_decay() >= 0) || !Finite(s.weight_decay())) {
      return Invalid("optimizer.sgd.weight_decay", "must be >= 0");
    }
    if (s.nesterov() && (s.momentum() <= 0 || s.dampening() != 0)) {
      return Invalid("optimizer.sgd.nesterov", "requires momentum > 0 and dampening = 0 (as torch.optim.SGD)");
    }
  } else {
    v1::AdamOptions& a = *opt.mutable_adam();
    if (a.beta1() == 0) a.set_beta1(0.9);
    if (a.beta2() == 0) a.set_beta2(0.999);
    if (a.eps() == 0) a.set_eps(1e-8);
    if (!(a.beta1() >= 0 && a.beta1() < 1)) return Invalid("optimizer.adam.beta1", "must be in [0, 1)");
    if (!(a.beta2() >= 0 && a.beta2() < 1)) return Invalid("optimizer.adam.beta2", "must be in [0, 1)");
    if (!(a.eps() > 0) || !Finite(a.eps())) return Invalid("optimizer.adam.eps", "must be > 0");
    if (!(a.weight_decay() >= 0) || !Finite(a.weight_decay())) {
      return Invalid("optimizer.adam.weight_decay", "must be >= 0");
    }
  }

  if (spec.total_steps() == 0) return Invalid("total_steps", "must be > 0");
  if (spec.total_steps() > (uint64_t{1} << 40)) return Invalid("total_steps", "is absurdly large");

  v1::LrSchedule& sched = *spec.mutable_schedule();
  if (sched.kind() == v1::LrSchedule::KIND_UNSPECIFIED) sched.set_kind(v1::LrSchedule::KIND_CONSTANT);
  if (sched.warmup_steps() > 0) {
    if (!(sched.warmup_start_factor() > 0 && sched.warmup_start_factor() <= 1)) {
      return Invalid("schedule.warmup_start_factor", "must be in (0, 1] when warmup_steps > 0");
    }
  }
  switch (sched.kind()) {
    case v1::LrSchedule::KIND_STEP:
      if (sched.step_size() == 0) return Invalid("schedule.step_size", "must be > 0 for a STEP schedule");
      if (!(sched.gamma() > 0) || !Finite(sched.gamma())) return Invalid("schedule.gamma", "must be > 0");
      break;
    case v1::LrSchedule::KIND_COSINE:
      if (sched.t_max() == 0) {
        if (spec.total_steps() <= sched.warmup_steps()) {
          return Invalid("schedule.t_max", "total_steps leave no steps after warmup");
        }
        sched.set_t_max(spec.total_steps() - sched.warmup_steps());
      }
      if (!(sched.eta_min() >= 0) || !Finite(sched.eta_min())) return Invalid("schedule.eta_min", "must be >= 0");
      break;
    default:
      break;
  }

  v1::WindowRule& window = *spec.mutable_window();
  if (window.num_workers() == 0) return Invalid("window.num_workers", "must be >= 1");
  if (window.num_workers() > kMaxWorkers) {
    return Invalid("window.num_workers", absl::StrCat("must be <= ", kMaxWorkers));
  }
  if (window.micro_batches() == 0) window.set_micro_batches(1);
  if (spec.data_plan().samples() > 0) {
    if (window.max_workers() == 0) return Invalid("data_plan", "needs elastic membership (window.max_workers > 0)");
    if (window.micro_batch_size() == 0) return Invalid("data_plan", "needs window.micro_batch_size");
  }

  if (!(spec.clipping().max_norm() >= 0) || !Finite(spec.clipping().max_norm())) {
    return Invalid("clipping.max_norm", "must be >= 0");
  }
  if (!v1::Reduction_IsValid(spec.reduction())) return Invalid("reduction", "unknown reduction");
  if (spec.has_loss_scaling()) GRADACC_RETURN_IF_ERROR(NormalizeLossScaling(*spec.mutable_loss_scaling()));
  return absl::OkStatus();
}

v1::ModelSpec MlpModelSpec(uint64_t inputs, const std::vector<uint64_t>& hidden, uint64_t classes) {
  v1::ModelSpec model;
  std::vector<uint64_t> widths = hidden;
  widths.push_back(classes);
  uint64_t fan_in = inputs;
  for (size_t i = 0; i < widths.size(); ++i) {
    const std::string prefix = absl::StrCat("fc", i + 1);
    v1::TensorSpec* w = model.add_tensors();
    w->set_name(prefix + ".weight");
    w->add_shape(widths[i]);
    w->add_shape(fan_in);
    w->mutable_init()->mutable_fan_in_uniform()->set_fan_in(fan_in);
    v1::TensorSpec* b = model.add_tensors();
    b->set_name(prefix + ".bias");
    b->add_shape(widths[i]);
    b->mutable_init()->mutable_fan_in_uniform()->set_fan_in(fan_in);
    fan_in = widths[i];
  }
  return model;
}

v1::JobSpec DefaultJobSpec() {
  v1::JobSpec spec;
  spec.set_job_id("default");
  *spec.mutable_model() = MlpModelSpec(784, {256, 128}, 10);
  v1::OptimizerSpec& opt = *spec.mutable_optimizer();
  opt.set_kind(v1::OptimizerSpec::KIND_ADAM);
  opt.set_lr(2e-3);
  opt.mutable_adam()->set_beta1(0.9);
  opt.mutable_adam()->set_beta2(0.999);
  opt.mutable_adam()->set_eps(1e-8);
  spec.mutable_schedule()->set_kind(v1::LrSchedule::KIND_COSINE);
  spec.mutable_window()->set_num_workers(4);
  spec.mutable_window()->set_micro_batches(2);
  spec.mutable_window()->set_micro_batch_size(16);
  spec.set_reduction(v1::REDUCTION_MEAN_OVER_SAMPLES);
  spec.set_seed(42);
  (*spec.mutable_worker_hints())["model"] = "mlp";
  (*spec.mutable_worker_hints())["hidden"] = "256,128";
  (*spec.mutable_worker_hints())["dataset"] = "fashion-mnist";
  (*spec.mutable_worker_hints())["train_samples"] = "60000";
  spec.set_total_steps(3 * StepsPerEpoch(spec).value());
  return spec;
}

absl::StatusOr<uint64_t> StepsPerEpoch(const v1::JobSpec& spec) {
  auto it = spec.worker_hints().find("train_samples");
  uint64_t samples = 0;
  if (it == spec.worker_hints().end() || !absl::SimpleAtoi(it->second, &samples) || samples == 0) {
    return absl::FailedPreconditionError(
        "the job has no worker_hints[\"train_samples\"], so epochs cannot be turned into steps");
  }
  const uint64_t window = uint64_t{spec.window().num_workers()} * std::max(1u, spec.window().micro_batches()) *
                          spec.window().micro_batch_size();
  if (window == 0) return absl::FailedPreconditionError("the job sets no window.micro_batch_size");
  return (samples + window - 1) / window;
}

FlatRange PartOf(const ModelLayout::Tensor& t, uint64_t begin, uint64_t end) {
  FlatRange r{std::max(t.offset, begin), std::min(t.offset + t.size, end)};
  if (r.empty()) r = FlatRange{};
  return r;
}

TensorsOfRange TensorsIn(const ModelLayout& layout, FlatRange range) {
  TensorsOfRange out;
  out.bounds.push_back(0);
  const auto& tensors = layout.tensors();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const FlatRange part = PartOf(tensors[i], range.begin, range.end);
    if (part.empty()) continue;
    out.ids.push_back(static_cast<uint32_t>(i));
    out.bounds.push_back(part.end - range.begin);
  }
  return out;
}

uint64_t SplitMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double UniformAt(uint64_t seed, uint64_t j) {
  const uint64_t bits = SplitMix64(seed + j * 0x9E3779B97F4A7C15ull);
  return static_cast<double>(bits >> 40) * (1.0 / 16777216.0);
}

absl::StatusOr<FloatBuffer> InitialParameters(const v1::JobSpec& spec, const std::string& base_dir) {
  GRADACC_ASSIGN_OR_RETURN(ModelLayout layout, ModelLayout::FromSpec(spec.model()));
  FloatBuffer params(layout.num_elements());
  if (!spec.model().safetensors_path().empty()) {
    std::string path = spec.model().safetensors_path();
    if (!base_dir.empty() && path[0] != '/') path = base_dir + "/" + path;
    GRADACC_ASSIGN_OR_RETURN(SafetensorsContents file, ReadSafetensorsFile(path));
    for (const ModelLayout::Tensor& t : layout.tensors()) {
      auto it = file.tensors.find(t.name);
      if (it == file.tensors.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("initial parameters '", path, "' have no tensor '", t.name, "'"));
      }
      if (it->second.shape != t.shape) {
        return absl::InvalidArgumentError(absl::StrCat("initial parameters '", path, "': tensor '", t.name,
                                                       "' has shape [", absl::StrJoin(it->second.shape, ","),
                                                       "], the job says [", absl::StrJoin(t.shape, ","), "]"));
      }
      if (FirstNonFinite(it->second.data) >= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("initial parameters '", path, "': tensor '", t.name, "' holds NaN or Inf"));
      }
      std::copy(it->second.data.begin(), it->second.data.end(), params.data() + t.offset);
    }
    return params;
  }
  for (size_t i = 0; i < layout.tensors().size(); ++i) {
    const ModelLayout::Tensor& t = layout.tensors()[i];
    const v1::Initializer& init = spec.model().tensors(static_cast<int>(i)).init();
    const uint64_t seed = init.seed() != 0 ? init.seed() : spec.seed() + 1000003ull * (i + 1);
    float* out = params.data() + t.offset;
    auto uniform = [&](double low, double high) {
      for (uint64_t j = 0; j < t.size; ++j) {
        out[j] = static_cast<float>(low + (high - low) * UniformAt(seed, j));
      }
    };
    switch (init.kind_case()) {
      case v1::Initializer::KIND_NOT_SET:
      case v1::Initializer::kZeros:
        break;
      case v1::Initializer::kConstant:
        std::fill(out, out + t.size, init.constant());
        break;
      case v1::Initializer::kUniform:
        uniform(init.uniform().low(), init.uniform().high());
        break;
      case v1::Initializer::kNormal:
        for (uint64_t j = 0; j < t.size; ++j) {
          const double u1 = UniformAt(seed, 2 * j);
          const double u2 = UniformAt(seed, 2 * j + 1);
          const double z = std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(2.0 * M_PI * u2);
          out[j] = static_cast<float>(init.normal().mean() + init.normal().stddev() * z);
        }
        break;
      case v1::Initializer::kFanInUniform: {
        uint64_t fan_in = init.fan_in_uniform().fan_in();
        if (fan_in == 0) {
          fan_in = 1;
          for (size_t d = 1; d < t.shape.size(); ++d) fan_in *= t.shape[d];
        }
        const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
        uniform(-bound, bound);
        break;
      }
    }
  }
  return params;
}

}  // namespace gradacc
