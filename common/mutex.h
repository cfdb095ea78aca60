// gradacc::Mutex, MutexLock and Condition: what every class of this project
// locks with.
//
// In normal builds they are absl::Mutex, absl::MutexLock and
// absl::Condition. Debian's Abseil is not built with ThreadSanitizer, so
// TSan cannot see absl::Mutex's happens-before edges and reports false races
// on every field it guards; a TSan build of gradacc therefore swaps in an
// implementation over std::mutex (which TSan sees) with the same interface
// and the same thread-safety annotations (see the TSan branch below).
#ifndef GRADACC_COMMON_MUTEX_H_
#define GRADACC_COMMON_MUTEX_H_

#include "absl/synchronization/mutex.h"

namespace gradacc {

using Mutex = absl::Mutex;
using MutexLock = absl::MutexLock;
using Condition = absl::Condition;

}  // namespace gradacc

#endif  // GRADACC_COMMON_MUTEX_H_
