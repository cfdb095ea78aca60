#include "worker/training/dataset.h"

#include <zlib.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gradacc {
namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzPtr = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

absl::Status ReadExact(gzFile f, void* out, size_t n, const std::string& path) {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    const unsigned chunk = n > (1u << 30) ? (1u << 30) : static_cast<unsigned>(n);
    const int got = gzread(f, p, chunk);
    if (got <= 0) {
      int err = 0;
      const char* msg = gzerror(f, &err);
      return absl::DataLossError(absl::StrCat("'", path, "' is truncated or corrupt",
                                              err != Z_OK && msg ? absl::StrCat(": ", msg) : ""));
    }
    p += got;
    n -= static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> ReadHeader(gzFile f, uint32_t magic, int dims, const std::string& path) {
  unsigned char buf[4];
  std::vector<uint32_t> out;
  for (int i = 0; i <= dims; ++i) {
    if (absl::Status s = ReadExact(f, buf, 4, path); !s.ok()) return s;
    out.push_back(uint32_t{buf[0]} << 24 | uint32_t{buf[1]} << 16 | uint32_t{buf[2]} << 8 | buf[3]);
  }
  if (out[0] != magic) {
    return absl::InvalidArgumentError(
        absl::StrFormat("'%s' is not an IDX file of the expected kind (magic 0x%08x, want 0x%08x)", path, out[0], magic));
  }
  out.erase(out.begin());
  return out;
}

GzPtr Open(const std::string& path) { return GzPtr(gzopen(path.c_str(), "rb")); }

}  // namespace

void Dataset::Gather(absl::Span<const uint32_t> indices, float* x, uint8_t* y) const {
  const uint32_t f = features();
  for (size_t i = 0; i < indices.size(); ++i) {
    const uint8_t* src = images.data() + uint64_t{indices[i]} * f;
    float* dst = x + i * f;
    for (uint32_t k = 0; k < f; ++k) dst[k] = static_cast<float>(src[k]) / 255.0f;
    y[i] = labels[indices[i]];
  }
}

absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path, const std::string& labels_path,
                                       uint64_t limit) {
  GzPtr images = Open(images_path);
  if (!images) return absl::NotFoundError(absl::StrCat("cannot open dataset file '", images_path, "'"));
  GzPtr labels = Open(labels_path);
  if (!labels) return absl::NotFoundError(absl::StrCat("cannot open dataset file '", labels_path, "'"));
  gzbuffer(images.get(), 1 << 20);
  auto idims = ReadHeader(images.get(), 0x00000803, 3, images_path);
  if (!idims.ok()) return idims.status();
  auto ldims = ReadHeader(labels.get(), 0x00000801, 1, labels_path);
  if (!ldims.ok()) return ldims.status();
  if ((*idims)[0] != (*ldims)[0]) {
    return absl::InvalidArgumentError(absl::StrFormat("'%s' has %d images but '%s' has %d labels", images_path,
                                                      (*idims)[0], labels_path, (*ldims)[0]));
  }
  if ((*idims)[1] == 0 || (*idims)[2] == 0 || (*idims)[1] > 4096 || (*idims)[2] > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("'", images_path, "' declares absurd image dimensions"));
  }
  Dataset d;
  d.rows = (*idims)[1];
  d.cols = (*idims)[2];
  const uint64_t total = (*idims)[0];
  d.size = limit > 0 && limit < total ? limit : total;
  d.images.resize(d.size * d.features());
  d.labels.resize(d.size);
  if (absl::Status s = ReadExact(images.get(), d.images.data(), d.images.size(), images_path); !s.ok()) return s;
  if (absl::Status s = ReadExact(labels.get(), d.labels.data(), d.labels.size(), labels_path); !s.ok()) return s;
  for (uint8_t l : d.labels) {
    if (l > 9) return absl::InvalidArgumentError(absl::StrCat("'", labels_path, "' has a label > 9"));
  }
  return d;
}

absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir, const std::string& split, uint64_t limit) {
  return LoadIdxDataset(absl::StrCat(dir, "/", split, "-images-idx3-ubyte.gz"),
                        absl::StrCat(dir, "/", split, "-labels-idx1-ubyte.gz"), limit);
}

}  // namespace gradacc
