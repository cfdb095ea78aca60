#include "server/push_session.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/base/config.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/errors.h"
#include "common/kernels.h"

namespace gradacc {
namespace {

std::string Str(uint64_t v) { return absl::StrCat(v); }

constexpr char kParkedPayload[] = "type.gradacc/parked";

}  // namespace

absl::Status Parked() {
  absl::Status s(absl::StatusCode::kResourceExhausted, "push parked: the staging pool is full");
  s.SetPayload(kParkedPayload, absl::Cord("1"));
  return s;
}

bool IsParked(const absl::Status& status) { return status.GetPayload(kParkedPayload).has_value(); }

PushSession::PushSession(const ModelLayout* layout, FlatRange range, uint32_t shard, v1::PushHeader header,
                         std::unique_ptr<Accumulator::Push> push, BufferPool::Admission admission)
    : layout_(layout),
      range_(range),
      shard_(shard),
      header_(std::move(header)),
      pool_(nullptr),
      admission_(std::move(admission)),
      push_(std::move(push)) {
  covered_.resize(layout_->tensors().size());
}

double PushSession::sum_of_squares() const {
  double total = 0;
  for (const auto& [offset, squares] : squares_) total += squares;
  return total;
}

PushSession::PushSession(const ModelLayout* layout, FlatRange range, uint32_t shard, v1::PushHeader header,
                         FloatBuffer buffer, BufferPool* pool, BufferPool::Admission admission,
                         std::shared_ptr<ShmSegment> segment)
    : layout_(layout),
      range_(range),
      shard_(shard),
      header_(std::move(header)),
      buffer_(std::move(buffer)),
      pool_(pool),
      admission_(std::move(admission)),
      segment_(std::move(segment)) {
  covered_.resize(layout_->tensors().size());
  if (segment_ != nullptr) covered_elements_ = range_.size();
}

PushSession::~PushSession() {
  if (pool_ != nullptr && buffer_.owned() && buffer_.size() != 0) pool_->Return(std::move(buffer_));
}

absl::Status PushSession::CheckRange(const ModelLayout::Tensor& t, uint32_t tensor, uint64_t offset,
                                     uint64_t n) const {
  if (offset > t.size || n > t.size - offset) {
    return Refusal(v1::ERROR_REASON_CHUNK_RANGE,
                   absl::StrFormat("chunk [%d, %d) is past the end of tensor '%s' (%d elements)", offset, offset + n,
                                   t.name, t.size),
                   {{"tensor", t.name}});
  }
  // Sharded: only this server's flat elements may be pushed here.
  const uint64_t flat = t.offset + offset;
  if (flat < range_.begin || flat + n > range_.end) {
    return Refusal(v1::ERROR_REASON_OUTSIDE_SHARD,
                   absl::StrFormat("chunk [%d, %d) of tensor '%s' (flat [%d, %d)) is outside shard %d's elements "
                                   "[%d, %d)",
                                   offset, offset + n, t.name, flat, flat + n, shard_, range_.begin, range_.end),
                   {{"tensor", t.name}});
  }
  const std::map<uint64_t, uint64_t>& ranges = covered_[tensor];
  auto next = ranges.upper_bound(offset);
  auto prev = next == ranges.begin() ? ranges.end() : std::prev(next);
  const auto overlapping = next != ranges.end() && next->first < offset + n ? next
                           : prev != ranges.end() && prev->second > offset  ? prev
                                                                            : ranges.end();
  if (overlapping != ranges.end()) {
    return Refusal(v1::ERROR_REASON_OVERLAP,
                   absl::StrFormat("chunk [%d, %d) of tensor '%s' overlaps elements already received at [%d, %d)",
                                   offset, offset + n, t.name, overlapping->first, overlapping->second),
                   {{"tensor", t.name}});
  }
  return absl::OkStatus();
}

absl::Status PushSession::AddChunk(uint32_t tensor, uint64_t offset, absl::string_view bytes,
                                   absl::string_view name) {
  return AddChunkFrom(tensor, offset, bytes.size(), name, [bytes](char* dst) {
    if (!bytes.empty()) std::memcpy(dst, bytes.data(), bytes.size());
    return true;
  });
}

absl::Status PushSession::AddChunkFrom(uint32_t tensor, uint64_t offset, size_t bytes, absl::string_view name,
                                       absl::FunctionRef<bool(char*)> read) {
  if (segment_ != nullptr) {
    return Refusal(v1::ERROR_REASON_PROTOCOL,
                   "a shared-memory push carries no chunks (its gradients are in the worker's segment)");
  }
  const auto& tensors = layout_->tensors();
  if (tensor >= tensors.size()) {
    return Refusal(v1::ERROR_REASON_TENSOR_INDEX,
                   absl::StrFormat("chunk names tensor %d; the model has %d tensors (0..%d)", tensor, tensors.size(),
                                   tensors.size() - 1));
  }
  const ModelLayout::Tensor& t = tensors[tensor];
  if (!name.empty() && name != t.name) {
    return Refusal(v1::ERROR_REASON_TENSOR_NAME,
                   absl::StrFormat("chunk names tensor %d '%s', but tensor %d of this job is '%s'", tensor, name,
                                   tensor, t.name),
                   {{"tensor", t.name}});
  }
  const v1::WireFormat wire = header_.wire_format();
  const size_t width = wire == v1::WIRE_FORMAT_F32 ? sizeof(float) : 2;
  if (bytes == 0 || bytes % width != 0) {
    return Refusal(v1::ERROR_REASON_CHUNK_SIZE,
                   absl::StrFormat("chunk of tensor '%s' has %d bytes, not a positive multiple of %d (%s)", t.name,
                                   bytes, width, v1::WireFormat_Name(wire)),
                   {{"tensor", t.name}});
  }
  const uint64_t n = bytes / width;
  if (absl::Status s = CheckRange(t, tensor, offset, n); !s.ok()) return s;
  // Validated: the payload may now be written where it goes (a refusal
  // below discards the whole push, and takes it back out of the sum).
  const uint64_t local = t.offset + offset - range_.begin;
  absl::Span<float> dst;
  if (push_ != nullptr) {
    switch (push_->Reserve(local, n, wake_, &dst)) {
      case Accumulator::Push::Outcome::kParked:
        return Parked();
      case Accumulator::Push::Outcome::kClosed:
        return Closed();
      case Accumulator::Push::Outcome::kReady:
        break;
    }
  } else {
    dst = absl::MakeSpan(buffer_.data() + local, n);
  }
  int64_t bad = -1;
  bool complete;
#ifdef ABSL_IS_LITTLE_ENDIAN
  if (wire == v1::WIRE_FORMAT_F32) {
    // The one copy: from wherever the payload lies to its place.
    complete = read(reinterpret_cast<char*>(dst.data()));
    if (complete) bad = FirstNonFinite(dst);
  } else
#endif
  {
    // Compressed formats are widened exactly; accumulation is f32 either way.
    scratch_.resize(bytes);
    complete = read(scratch_.data());
    if (complete) {
      bad = wire == v1::WIRE_FORMAT_BF16  ? DecodeBf16(scratch_.data(), dst)
            : wire == v1::WIRE_FORMAT_F16 ? DecodeF16(scratch_.data(), dst)
                                          : CopyFromLittleEndian(scratch_.data(), dst);
    }
  }
  if (!complete) {
    return Refusal(v1::ERROR_REASON_PROTOCOL,
                   absl::StrFormat("chunk of tensor '%s' is shorter than its declared %d bytes", t.name, bytes),
                   {{"tensor", t.name}});
  }
  if (bad >= 0 && !accept_non_finite_) {
    return Refusal(v1::ERROR_REASON_NOT_FINITE,
                   absl::StrFormat("gradient of tensor '%s' is not finite at element %d (%f)", t.name, offset + bad,
                                   dst[bad]),
                   {{"tensor", t.name}});
  }
  squares_[local] = SumOfSquares(dst);
  if (push_ != nullptr && !push_->Place()) return Closed();
  // Merge with the neighbours so in-order chunking keeps one range per tensor.
  std::map<uint64_t, uint64_t>& ranges = covered_[tensor];
  uint64_t begin = offset, end = offset + n;
  auto next = ranges.upper_bound(offset);
  if (next != ranges.begin() && std::prev(next)->second == offset) {
    begin = std::prev(next)->first;
    ranges.erase(std::prev(next));
  }
  if (next != ranges.end() && next->first == end) {
    end = next->second;
    ranges.erase(next);
  }
  ranges[begin] = end;
  covered_elements_ += n;
  return absl::OkStatus();
}

absl::Status PushSession::Closed() const {
  return Refusal(v1::ERROR_REASON_STALE_WINDOW,
                 absl::StrFormat("stale: window %d closed without this contribution while it arrived; nothing was "
                                 "counted",
                                 header_.window()),
                 {{"window", Str(header_.window())}, {"open_window", Str(header_.window() + 1)}});
}

absl::Status PushSession::CheckComplete() const {
  if (segment_ != nullptr) {
    if (accept_non_finite_) return absl::OkStatus();
    // Chunks are checked as they arrive; a segment is checked here.
    const int64_t bad = FirstNonFiniteParallel(buffer_.span());
    if (bad < 0) return absl::OkStatus();
    const uint64_t flat = range_.begin + static_cast<uint64_t>(bad);
    const auto& t = *std::find_if(layout_->tensors().rbegin(), layout_->tensors().rend(),
                                  [&](const ModelLayout::Tensor& t) { return t.offset <= flat; });
    return Refusal(v1::ERROR_REASON_NOT_FINITE,
                   absl::StrFormat("gradient of tensor '%s' is not finite at element %d (%f); nothing was counted",
                                   t.name, flat - t.offset, buffer_[bad]),
                   {{"tensor", t.name}});
  }
  if (covered_elements_ == range_.size()) return absl::OkStatus();
  // Name the first gap.
  std::string gap;
  for (size_t i = 0; i < layout_->tensors().size() && gap.empty(); ++i) {
    const ModelLayout::Tensor& t = layout_->tensors()[i];
    const FlatRange part = PartOf(t, range_.begin, range_.end);
    if (part.empty()) continue;
    uint64_t expect = part.begin - t.offset;
    for (const auto& [b, e] : covered_[i]) {
      if (b != expect) break;
      expect = e;
    }
    if (expect != part.end - t.offset) gap = absl::StrFormat("tensor '%s' from element %d", t.name, expect);
  }
  return Refusal(v1::ERROR_REASON_MISSING_CHUNKS,
                 absl::StrFormat("incomplete push: received %d of %d elements; missing %s; nothing was counted",
                                 covered_elements_, range_.size(), gap),
                 {{"received", Str(covered_elements_)}});
}

}  // namespace gradacc
