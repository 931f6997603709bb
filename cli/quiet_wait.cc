#include "cli/quiet_wait.h"

#include <algorithm>
#include <thread>

namespace lazypull::cli {

QuietOutcome WaitForQuiet(const std::function<MissSample()>& sample,
                          const std::atomic<bool>& stop,
                          const QuietOptions& options) {
  const uint64_t at_start = sample().misses;
  const auto start = std::chrono::steady_clock::now();
  const auto quiet = absl::ToChronoNanoseconds(options.quiet);
  while (!stop.load()) {
    const MissSample s = sample();
    if (s.misses - at_start >= options.busy_misses) return QuietOutcome::kBusy;
    const auto since = std::max(start, s.last);
    if (std::chrono::steady_clock::now() - since >= quiet) {
      return QuietOutcome::kQuiet;
    }
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(options.poll));
  }
  return QuietOutcome::kStopped;
}

const char* QuietOutcomeName(QuietOutcome o) {
  switch (o) {
    case QuietOutcome::kQuiet:
      return "no read has missed the cache for a while";
    case QuietOutcome::kBusy:
      return "enough reads have missed the cache since the prefetch";
    case QuietOutcome::kStopped:
      return "stopped";
  }
  return "?";
}

}  // namespace lazypull::cli
