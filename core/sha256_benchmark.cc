// Micro-benchmark: core's Sha256 (OpenSSL EVP; SHA-NI where the CPU has it)
// over 4 MiB buffers (a whole chunk / tar piece) and 64 KiB buffers (a small
// chunk: per-call overhead shows).
//
//   bazel build -c opt //core:sha256_benchmark
//   bazel-bin/core/sha256_benchmark --benchmark_min_time=1
#include <cstdint>
#include <random>
#include <string>

#include "benchmark/benchmark.h"
#include "core/digest.h"

namespace lazypull {
namespace {

std::string RandomBytes(size_t n) {
  std::mt19937_64 rng(42);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    for (size_t k = 0; k < 8 && i + k < n; ++k) {
      s[i + k] = static_cast<char>(v >> (8 * k));
    }
  }
  return s;
}

// One-shot: Sha256::Of.
void BM_Sha256Of(benchmark::State& state) {
  const std::string data = RandomBytes(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    Digest d = Sha256::Of(data);
    benchmark::DoNotOptimize(d);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          state.range(0));
}
BENCHMARK(BM_Sha256Of)->Arg(4 << 20)->Arg(64 << 10)->UseRealTime();

// Incremental: one reused hasher, Update + Finish (the verifier's pattern).
void BM_Sha256UpdateFinish(benchmark::State& state) {
  const std::string data = RandomBytes(static_cast<size_t>(state.range(0)));
  Sha256 h;
  for (auto _ : state) {
    h.Update(data);
    Digest d = h.Finish();
    benchmark::DoNotOptimize(d);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          state.range(0));
}
BENCHMARK(BM_Sha256UpdateFinish)->Arg(4 << 20)->Arg(64 << 10)->UseRealTime();

}  // namespace
}  // namespace lazypull
