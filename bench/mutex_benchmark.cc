// Micro-benchmark: what Debian's abseil (built without NDEBUG) charges per
// absl::Mutex acquisition for its lock-order (deadlock) checking, which
// cli/main.cc turns off in optimized builds. Two nested locks per
// iteration, as the fill path takes (a layer's flight map, then a flight),
// from 1 and 2 threads.
//
//   bazel build -c opt //bench:mutex_benchmark
//   bazel-bin/bench/mutex_benchmark
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"

namespace lazypull {
namespace {

absl::Mutex outer_mu;
absl::Mutex inner_mu;

// Arg: 1 = deadlock checking on (abseil's default here), 0 = off.
void BM_NestedLockPair(benchmark::State& state) {
  if (state.thread_index() == 0) {
    absl::SetMutexDeadlockDetectionMode(state.range(0)
                                            ? absl::OnDeadlockCycle::kAbort
                                            : absl::OnDeadlockCycle::kIgnore);
  }
  for (auto _ : state) {
    absl::MutexLock a(&outer_mu);
    absl::MutexLock b(&inner_mu);
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_NestedLockPair)->Arg(1)->Arg(0)->Threads(1)->Threads(2);

}  // namespace
}  // namespace lazypull

BENCHMARK_MAIN();
