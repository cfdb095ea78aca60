// Fashion-MNIST (or any MNIST-format) data: gzip-compressed IDX files, read
// with zlib. Images stay as bytes (47 MB for the training set) and are
// scaled to [0, 1] (x / 255.0f) per micro-batch. Immutable once loaded;
// thread-safe to read.
#ifndef GRADACC_WORKER_TRAINING_DATASET_H_
#define GRADACC_WORKER_TRAINING_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace gradacc {

inline constexpr char kDefaultDataDir[] = "/usr/share/datasets/fashion-mnist";

struct Dataset {
  uint64_t size = 0;
  uint32_t rows = 0, cols = 0;
  std::vector<uint8_t> images;  // size * rows * cols
  std::vector<uint8_t> labels;  // size, 0..9

  uint32_t features() const { return rows * cols; }
  // Writes the scaled pixels of samples `indices` (row-major, one sample a
  // row) into `x` and their labels into `y`.
  void Gather(absl::Span<const uint32_t> indices, float* x, uint8_t* y) const;
};

// Reads an images file (magic 0x00000803) and its labels file (0x00000801);
// `limit` > 0 keeps only the first `limit` samples.
absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path, const std::string& labels_path,
                                       uint64_t limit = 0);
// "train" or "t10k" from a Fashion-MNIST folder.
absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir, const std::string& split, uint64_t limit = 0);

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_DATASET_H_
