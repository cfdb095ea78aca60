// Happens-before annotations for ThreadSanitizer, for orderings TSan cannot
// see: gRPC (Debian's, uninstrumented) runs the reactions of one RPC one at
// a time but on whichever thread, ordered by its own synchronisation. A
// reactor calls TsanRelease(this) before each StartRead/StartWrite/Finish
// (and at the end of its constructor) and TsanAcquire(this) at the top of
// each On* reaction. No-ops outside TSan builds (GRADACC_TSAN).
#ifndef GRADACC_COMMON_TSAN_H_
#define GRADACC_COMMON_TSAN_H_

#ifdef GRADACC_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace gradacc {

// The end of a server's RPCs: every reactor releases it in OnDone, and the
// server acquires it once gRPC has shut down (no reactor is left), before it
// destroys what reactors read (trainers, shard exchanges) — gRPC's own
// ordering of the two is invisible to TSan.
inline const char kTsanServerRpcsDone = 0;

inline void TsanAcquire(const void* addr) {
#ifdef GRADACC_TSAN
  __tsan_acquire(const_cast<void*>(addr));
#else
  (void)addr;
#endif
}

inline void TsanRelease(const void* addr) {
#ifdef GRADACC_TSAN
  __tsan_release(const_cast<void*>(addr));
#else
  (void)addr;
#endif
}

}  // namespace gradacc

#endif  // GRADACC_COMMON_TSAN_H_
