// Early-return helpers for absl::Status / absl::StatusOr (Abseil 20220623
// ships none).
#ifndef GRADACC_COMMON_STATUS_MACROS_H_
#define GRADACC_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define GRADACC_CONCAT_INNER_(a, b) a##b
#define GRADACC_CONCAT_(a, b) GRADACC_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function unless it is OK.
#define GRADACC_RETURN_IF_ERROR(expr)                    \
  do {                                                   \
    ::absl::Status gradacc_status_ = (expr);             \
    if (!gradacc_status_.ok()) return gradacc_status_;   \
  } while (false)

// `GRADACC_ASSIGN_OR_RETURN(auto x, F());` declares x from F()'s value or
// returns F()'s error.
#define GRADACC_ASSIGN_OR_RETURN(lhs, expr) \
  GRADACC_ASSIGN_OR_RETURN_IMPL_(GRADACC_CONCAT_(gradacc_so_, __LINE__), lhs, expr)

#define GRADACC_ASSIGN_OR_RETURN_IMPL_(so, lhs, expr) \
  auto so = (expr);                                   \
  if (!so.ok()) return std::move(so).status();        \
  lhs = std::move(so).value()

#endif  // GRADACC_COMMON_STATUS_MACROS_H_
