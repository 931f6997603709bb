// WaitForQuiet: when background fetch may start after a mount's prefetch.
//
// Background fetch first lets a starting workload run on what the prefetch
// brought (background fills would take CPU and link from it). It waits until
// no read has missed the cache for `quiet`, unless reads keep missing
// (`busy_misses` misses since the wait began: the workload needs more than
// was prefetched, and background fetch is what helps it).
//
// Thread-safety: WaitForQuiet blocks the calling thread; `sample` is called
// on it, `stop` may be set from any thread.
#ifndef LAZYPULL_CLI_QUIET_WAIT_H_
#define LAZYPULL_CLI_QUIET_WAIT_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>

#include "absl/time/time.h"

namespace lazypull::cli {

struct MissSample {
  uint64_t misses = 0;  // reads that missed the cache so far (monotonic)
  // When the latest of them began (steady clock), or the epoch for none.
  std::chrono::steady_clock::time_point last;
};

struct QuietOptions {
  absl::Duration quiet = absl::Milliseconds(300);
  uint64_t busy_misses = 4;
  absl::Duration poll = absl::Milliseconds(20);
};

enum class QuietOutcome {
  kQuiet,    // no miss for `quiet`
  kBusy,     // `busy_misses` misses since the wait began
  kStopped,  // `stop` was set
};

QuietOutcome WaitForQuiet(const std::function<MissSample()>& sample,
                          const std::atomic<bool>& stop,
                          const QuietOptions& options = {});

const char* QuietOutcomeName(QuietOutcome o);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_QUIET_WAIT_H_
